"""SSH to many hosts: one connection and one persistent shell per host, host keys verified.

sshd charges for every session channel (a fork and a login shell), not for the command; so each
host gets one connection and on it one `sh` that runs every command in a subshell with stdin
from /dev/null, framed by a random marker that carries the exit status. Commands that need stdin,
a terminal or a sudo password get a channel of their own.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import secrets
import shlex
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import HostKeyError, SSHAnswerLost, SSHError
from .host_keys import HostKeys
from .hostprocs import PACKAGE_MANAGERS

if TYPE_CHECKING:
    import asyncssh

    from ..model import Target
    from .connections import Door

log = logging.getLogger("opskit.ssh")

OUTPUT_CAP = 1024 * 1024  # bytes of stdout and of stderr kept per command
CONNECT_TIMEOUT = 30.0
LINE_CAP = 64 * 1024  # bytes of one streamed line; a longer one is passed on in pieces
# Ciphers offered first, before asyncssh's own order (chacha20-poly1305 first). asyncssh runs
# ChaCha20-Poly1305 as three calls into `cryptography` per packet, AES-GCM as one (AES-NI in
# OpenSSL): about 4 us a packet against 24 us, which is 40% of the client's CPU per command on
# the persistent shell. AES-GCM is also immune to Terrapin (CVE-2023-48795). A `Ciphers` line
# in the ssh_config files the pool reads wins over this (see `_config_sets_ciphers`).
CIPHERS_FIRST = "^aes128-gcm@openssh.com,aes256-gcm@openssh.com"

# A command's output as it arrives, one line at a time: output(stream, line), stream being
# "stdout" or "stderr", the line without its newline.
Output = Callable[[str, str], None]


@dataclass(frozen=True)
class Cut:
    """A command cut short (its timeout, or its step's): whether it was stopped on the host
    (every process it started seen gone) and what was found."""

    command: str
    stopped: bool
    why: str


# How a command cut short is stopped, from a channel of its own: every process under the host's
# persistent shell (the shell included, which is replaced anyway) is frozen, so that none forks
# away, and looked for again until no new one appears; then TERM, KILL after 2 s, and "stopped"
# only when /proc shows each one gone. Needs Linux's /proc; another user's process (sudo) stays.
# A package manager among them is left to finish (dpkg cut mid-install breaks packages): none is
# touched, and the command may still be running.
_STOP = r"""root={pid}
[ -r /proc/$root/stat ] || {{ echo "no /proc/$root"; exit 3; }}
under() {{
  list=$(for s in /proc/[0-9]*/stat; do
    {{ read -r l < "$s"; }} 2>/dev/null || continue
    p=${{s#/proc/}}
    set -- ${{l##*) }}
    echo "${{p%/stat}}:$2"
  done)
  found=" $root "
  grew=1
  while [ -n "$grew" ]; do
    grew=
    for pair in $list; do
      case "$found" in *" ${{pair#*:}} "*)
        case "$found" in *" ${{pair%:*}} "*) ;; *) found="$found${{pair%:*}} "; grew=1;; esac;;
      esac
    done
  done
  echo $found | tr ' ' '\n' | sort -n | tr '\n' ' '
}}
alive() {{
  for p in $all; do
    {{ read -r l < /proc/$p/stat; }} 2>/dev/null || continue
    case "${{l##*) }}" in Z*) ;; *) printf '%s ' "$p";; esac
  done
}}
all=$(under)
for p in $all; do
  {{ read -r c < /proc/$p/comm; }} 2>/dev/null || continue
  case "$c" in {package_managers})
    echo "left to finish: $c (pid $p) would be cut short mid-install"; exit 5;;
  esac
done
kill -STOP $all 2>/dev/null
for i in 1 2 3 4 5; do
  more=$(under)
  [ "$more" = "$all" ] && break
  all=$more
  kill -STOP $all 2>/dev/null
done
kill -TERM $all 2>/dev/null
kill -CONT $all 2>/dev/null
n=0
while [ -n "$(alive)" ] && [ $n -lt 20 ]; do sleep 0.1; n=$((n + 1)); done
left=$(alive)
if [ -n "$left" ]; then kill -KILL $left 2>/dev/null; sleep 0.3; left=$(alive); fi
count=$(echo $all | wc -w)
[ -z "$left" ] && {{ echo "$count processes gone"; exit 0; }}
echo "still running: pid $left"
exit 4
"""


@dataclass(frozen=True)
class Endpoint:
    """Where to connect, and as whom. `name` is the inventory's name, for messages."""

    name: str
    host: str
    port: int | None = None  # None: ~/.ssh/config, else 22
    user: str | None = None  # None: ~/.ssh/config, else the local user
    pinned: str | None = None  # "ssh-ed25519 AAAA..." from the inventory
    jump: str | None = None  # [user@]host[:port]
    password_ref: str | None = None  # secret reference for password login
    identity: str | None = None  # private key file; None: the pool's keys, config, agent

    @classmethod
    def of(cls, target: Target) -> Endpoint:
        return cls(
            name=target.name,
            host=target.address,
            port=target.ssh_port,
            user=target.ssh_user,
            pinned=target.host_key,
            jump=target.jump,
            password_ref=target.ssh_password,
            identity=target.ssh_identity,
        )

    @property
    def key(self) -> tuple[str, str | None, int | None]:
        return (self.host, self.user, self.port)

    def where(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        shown = f"{user}{self.host}{port}"
        return self.name if shown == self.name else f"{self.name} ({shown})"


@dataclass
class CommandResult:
    rc: int
    stdout: str
    stderr: str
    duration: float
    truncated: bool = False


# --- the persistent shell ---------------------------------------------------------------------


class Shell:
    """One `sh` on one channel; commands run one at a time, each in a subshell. The shell says
    its PID first (read with the first command's answer: no round trip of its own), so that a
    command cut short can be stopped."""

    def __init__(self, process: asyncssh.SSHClientProcess[bytes]) -> None:
        self.process = process
        self.lock = asyncio.Lock()
        self.dead = False
        self.pid: int | None = None
        self.greeting: bytes | None = f"OPSKIT-{secrets.token_hex(12)}-SHELL ".encode()
        process.stdin.write(b"printf '%s%d\\n' '" + self.greeting + b'\' "$$"\n')

    async def run(
        self, command: str, timeout: float | None, output: Output | None = None
    ) -> CommandResult:
        marker = "OPSKIT-" + secrets.token_hex(12)
        script = (
            f"( {command}\n) </dev/null; printf '\\n{marker} %d\\n' \"$?\";"
            f" printf '\\n{marker}\\n' >&2\n"
        )
        started = time.monotonic()
        self.process.stdin.write(script.encode())
        # asyncio.timeout, not wait_for: wait_for cancelled around a gather leaves the gather's
        # CancelledError unretrieved ("_GatheringFuture exception was never retrieved" at Ctrl-C).
        lines = _Lines.pair(output)
        async with asyncio.timeout(timeout):
            if self.greeting is not None:  # what a login script printed before it is dropped
                said = re.compile(re.escape(self.greeting) + rb"(\d*)\n")
                line = await self.process.stdout.readuntil(said, len(self.greeting) + 24)
                found = said.search(line)
                self.greeting = None
                self.pid = int(found[1]) if found and found[1] else None
            (out, out_cut, rest), (err, err_cut, _) = await asyncio.gather(
                _read_until(self.process.stdout, f"\n{marker} ".encode(), b"\n", lines[0]),
                _read_until(self.process.stderr, f"\n{marker}\n".encode(), b"", lines[1]),
            )
        for each in lines:
            if each is not None:
                each.end()
        return CommandResult(
            rc=int(rest.strip() or -1),
            stdout=out.decode("utf-8", "replace"),
            stderr=err.decode("utf-8", "replace"),
            duration=time.monotonic() - started,
            truncated=out_cut or err_cut,
        )

    def close(self) -> None:
        self.dead = True
        self.process.close()


class _Lines:
    """One stream of one command's output, cut into lines for an `Output` as it arrives."""

    def __init__(self, output: Output, stream: str) -> None:
        self.output, self.stream = output, stream
        self.pending = b""
        self.ended = False  # the pending line was passed on before its newline arrived

    @classmethod
    def pair(cls, output: Output | None) -> tuple[_Lines | None, _Lines | None]:
        if output is None:
            return None, None
        return cls(output, "stdout"), cls(output, "stderr")

    def feed(self, chunk: bytes) -> None:
        if self.ended:
            self.ended = False
            chunk = chunk[1:] if chunk.startswith(b"\n") else chunk
        self.pending += chunk
        if b"\n" in chunk:
            *lines, self.pending = self.pending.split(b"\n")
            for line in lines:
                self._say(line)
        while len(self.pending) > LINE_CAP:
            self._say(self.pending[:LINE_CAP])
            self.pending = self.pending[LINE_CAP:]

    def line_ends(self) -> None:
        """What is pending is a whole line: a newline follows it, held back by the reader
        because it may begin the end marker (it ends the line either way)."""
        if self.pending:
            self._say(self.pending)
            self.pending = b""
            self.ended = True

    def end(self) -> None:
        """The command ended: its last line, if it had no newline."""
        if self.pending:
            self._say(self.pending)
            self.pending = b""

    def _say(self, line: bytes) -> None:
        self.output(self.stream, line.decode("utf-8", "replace").rstrip("\r"))


async def _read_until(
    stream: asyncssh.SSHReader[bytes], end: bytes, then: bytes, lines: _Lines | None = None
) -> tuple[bytes, bool, bytes]:
    """(up to OUTPUT_CAP bytes before `end`, whether more was dropped, what follows `end` up to
    and including `then`). Reads in chunks, so any amount of output passes through; `lines`
    gets all of it as it arrives."""
    kept = bytearray()
    dropped = False
    pending = bytearray()
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            raise asyncio.IncompleteReadError(bytes(pending), None)
        pending += chunk
        at = pending.find(end)
        if at >= 0:
            body, rest = pending[:at], pending[at + len(end) :]
            while then and then not in rest:
                more = await stream.read(1024)
                if not more:
                    raise asyncio.IncompleteReadError(bytes(rest), None)
                rest += more
            room = OUTPUT_CAP - len(kept)
            kept += body[:room]
            if lines is not None and body:
                lines.feed(bytes(body))
            return bytes(kept), dropped or len(body) > room, bytes(rest)
        # keep what could be the start of `end`; the rest is output
        held = _held(pending, end)
        settled = len(pending) - held
        if settled > 0:
            room = OUTPUT_CAP - len(kept)
            kept += pending[: min(settled, max(room, 0))]
            dropped = dropped or settled > room
            if lines is not None:
                lines.feed(bytes(pending[:settled]))
            del pending[:settled]
        if lines is not None and held:
            lines.line_ends()  # `end` begins with a newline: what is before it is a line


def _lost(exc: BaseException) -> bool:
    """Whether `exc` says the connection or the channel went away (not an answer)."""
    import asyncssh

    return isinstance(
        exc, (asyncssh.SFTPConnectionLost, asyncssh.DisconnectError, ConnectionError, EOFError)
    )


def _answer_lost(endpoint: Endpoint, command: str, exc: BaseException) -> SSHAnswerLost:
    """The command was sent, and the connection or its shell ended before its end was read."""
    if isinstance(exc, asyncio.IncompleteReadError):
        why = "its shell's output ended"
    else:
        why = str(exc) or type(exc).__name__
    return SSHAnswerLost(
        f"{endpoint.where()}: the connection was lost while {_short(command)} ran, before its"
        f" end was read ({why}): it may have run to its end, part of the way, or not at all"
    )


def _held(pending: bytearray, end: bytes) -> int:
    """How many bytes at the end of `pending` may be the start of `end` (held back until more
    arrive); everything before them is output."""
    at = pending.find(end[:1], max(0, len(pending) - len(end) + 1))
    while at >= 0:
        if end.startswith(pending[at:]):
            return len(pending) - at
        at = pending.find(end[:1], at + 1)
    return 0


@dataclass
class Session:
    endpoint: Endpoint
    conn: asyncssh.SSHClientConnection
    shell: Shell | None = None
    sftp: asyncssh.SFTPClient | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


# --- the pool ----------------------------------------------------------------------------------


def _config_sets_ciphers(paths: list[str]) -> bool:
    """Whether any of the ssh_config files sets Ciphers, in any Host or Match block. An
    Include counts as setting it: what it pulls in is the config's to say."""
    for path in paths:
        try:
            with open(os.path.expanduser(path), encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        for line in text.splitlines():
            word = line.strip().replace("=", " ").split(None, 1)
            if word and word[0].lower() in ("ciphers", "include"):
                return True
    return False


class SSHPool:
    """Connections of one plan or run, one per (host, user, port), opened on first use."""

    def __init__(
        self,
        host_keys: HostKeys,
        *,
        connect_limit: int = 50,
        client_keys: list[str] | None = None,
        passwords: Callable[[Endpoint], str | None] | None = None,
        config: list[str] | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.host_keys = host_keys
        self.limit = asyncio.Semaphore(connect_limit)
        self.client_keys = client_keys
        self.passwords = passwords
        self.config = config
        self.connect_timeout = connect_timeout
        self.sessions: dict[tuple[str, str | None, int | None], Session] = {}
        self._opening: dict[tuple[str, str | None, int | None], asyncio.Future[Session]] = {}
        self.channels_opened = 0  # session channels: what sshd charges for
        # Per host (address, port): commands or files sent that may change it, `everywhere` for
        # all (a gate waited); what was read there stays true while the sum stays the same.
        self.changes: dict[tuple[str, int | None], int] = {}
        self.everywhere = 0

    @functools.cached_property
    def ciphers(self) -> str | None:
        """The encryption_algs to ask asyncssh for: ours first, unless the user's ssh_config
        names its own (then None: asyncssh takes the config's). Read on the first connection."""
        paths = self.config if self.config is not None else ["~/.ssh/config"]
        return None if _config_sets_ciphers(paths) else CIPHERS_FIRST

    def changed(self, endpoint: Endpoint) -> None:
        key = (endpoint.host, endpoint.port)
        self.changes[key] = self.changes.get(key, 0) + 1

    def changed_everywhere(self) -> None:
        self.everywhere += 1

    def generation(self, endpoint: Endpoint) -> int:
        return self.everywhere + self.changes.get((endpoint.host, endpoint.port), 0)

    async def session(self, endpoint: Endpoint) -> Session:
        key = endpoint.key
        found = self.sessions.get(key)
        if found is not None and not found.conn.is_closed():
            return found
        if found is not None:  # it ended (a reboot? a network that dropped it?): opened again,
            self.changed(endpoint)  # and what the host answered before may be gone
        if key in self._opening:
            return await asyncio.shield(self._opening[key])
        future: asyncio.Future[Session] = asyncio.get_running_loop().create_future()
        self._opening[key] = future
        try:
            conn = await self._connect(endpoint)
            session = Session(endpoint, conn)
            self.sessions[key] = session
            future.set_result(session)
            return session
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: other waiters get it through the shield
            raise
        finally:
            del self._opening[key]

    async def _connect(self, endpoint: Endpoint) -> asyncssh.SSHClientConnection:
        import asyncssh

        keys = self.host_keys
        pool = self

        class Client(asyncssh.SSHClient):
            def validate_host_public_key(
                self, host: str, addr: str, port: int, key: asyncssh.SSHKey
            ) -> bool:
                return keys.verify(endpoint, addr, port, key)

        options: dict[str, Any] = {
            "known_hosts": ([], [], []),  # every key goes to validate_host_public_key
            "client_factory": Client,
            "connect_timeout": self.connect_timeout,
            "keepalive_interval": 30,
            "config": self.config if self.config is not None else (),
        }
        if self.ciphers is not None:
            options["encryption_algs"] = self.ciphers
        if endpoint.user:
            options["username"] = endpoint.user
        if endpoint.port:
            options["port"] = endpoint.port
        if endpoint.identity is not None:
            options["client_keys"] = [os.path.expanduser(endpoint.identity)]
        elif self.client_keys is not None:
            options["client_keys"] = self.client_keys
        password = self.passwords(endpoint) if self.passwords else None
        if password:
            options["password"] = password
        if endpoint.jump:
            options["tunnel"] = await self._jump(endpoint.jump)
        async with self.limit:
            try:
                return await asyncssh.connect(endpoint.host, **options)
            except asyncssh.HostKeyNotVerifiable:
                problem = (
                    keys.problems.get(endpoint.name) or f"{endpoint.where()}: host key not trusted"
                )
                raise HostKeyError(problem) from None
            except asyncssh.PermissionDenied:
                raise SSHError(
                    f"{endpoint.where()}: authentication failed (no key or password was accepted)"
                ) from None
            except socket.gaierror as exc:
                raise SSHError(
                    f"{endpoint.where()}: cannot resolve {endpoint.host}: {exc.strerror}"
                ) from None
            except ConnectionRefusedError:
                raise SSHError(f"{endpoint.where()}: connection refused") from None
            except TimeoutError:
                raise SSHError(
                    f"{endpoint.where()}: no answer within {pool.connect_timeout:g}s"
                ) from None
            except (OSError, asyncssh.Error) as exc:
                raise SSHError(f"{endpoint.where()}: {exc}") from None

    async def _jump(self, spec: str) -> asyncssh.SSHClientConnection:
        user, _, rest = spec.rpartition("@")
        host, _, port = rest.partition(":")
        jump = Endpoint(name=spec, host=host, port=int(port) if port else None, user=user or None)
        return (await self.session(jump)).conn

    # ----- commands ----------------------------------------------------------------------

    async def run(
        self,
        endpoint: Endpoint,
        command: str,
        *,
        timeout: float | None = None,
        stdin: str | bytes | None = None,
        pty: bool = False,
        output: Output | None = None,
        cut: list[Cut] | None = None,
    ) -> CommandResult:
        """Run a shell command: through the host's persistent shell, or on a channel of its
        own when it needs stdin or a terminal. `output` gets its lines as they arrive.

        Cut short by its timeout, or cancelled (its step's timeout, Ctrl-C), a command on the
        persistent shell is stopped on the host, and `cut` is told whether it was. Past its
        timeout it is an SSHError when stopped, else SSHAnswerLost (it may still be running)."""
        import asyncssh

        session = await self.session(endpoint)
        if stdin is not None or pty:
            return await self._own_channel(session, command, timeout, stdin, pty, output)
        async with session.lock:
            if session.shell is None or session.shell.dead:
                session.shell = await self._open_shell(session)
            shell = session.shell
            try:
                return await shell.run(command, timeout, output)
            except TimeoutError:
                stop = await self._stop(session, shell, command, cut)
                where = f"{endpoint.where()}: command timed out after {timeout:g}s"
                if stop.stopped:
                    raise SSHError(f"{where} and was stopped: {_short(command)}") from None
                raise SSHAnswerLost(
                    f"{where} and may still be running there ({stop.why}): {_short(command)}"
                ) from None
            except (asyncio.IncompleteReadError, OSError, ValueError, asyncssh.Error) as exc:
                session.shell.close()
                if isinstance(exc, BrokenPipeError):  # refused before a byte of it left
                    raise SSHError(
                        f"{endpoint.where()}: the shell ended before {_short(command)} was sent:"
                        f" {exc}"
                    ) from None
                raise _answer_lost(endpoint, command, exc) from None
            except asyncio.CancelledError:  # its output is unread: the next gets a fresh shell
                await self._stop(session, shell, command, cut)
                raise

    async def _stop(
        self, session: Session, shell: Shell, command: str, cut: list[Cut] | None
    ) -> Cut:
        """Stop what `command` started under `shell` (from a channel of its own), then close the
        shell: the next command gets a fresh one. Told to `cut`."""
        import asyncssh

        why = "its shell's PID is not known"
        stopped = False
        try:
            if shell.pid is not None:
                self.channels_opened += 1
                stop = _STOP.format(pid=shell.pid, package_managers=PACKAGE_MANAGERS)
                script = "sh -c " + shlex.quote(stop)
                try:
                    done = await asyncio.wait_for(session.conn.run(script, check=False), 10)
                    said = str(done.stdout or "").strip().splitlines()
                    why = said[-1] if said else f"exit {done.exit_status}"
                    stopped = done.exit_status == 0
                except (TimeoutError, asyncssh.Error, OSError) as exc:
                    why = f"the look at its processes failed: {exc or type(exc).__name__}"
        finally:  # also when cancelled again meanwhile: its output stays unread
            shell.close()
        record = Cut(_short(command), stopped, why)
        if cut is not None:
            cut.append(record)
        log.info("SSH %s: %s cut short: %s", session.endpoint.name, record.command, why)
        return record

    async def _open_shell(self, session: Session) -> Shell:
        import asyncssh

        try:
            process = await session.conn.create_process("sh", encoding=None, term_type=None)
        except asyncssh.Error as exc:
            raise SSHError(f"{session.endpoint.where()}: cannot open a shell: {exc}") from None
        self.channels_opened += 1
        return Shell(process)

    async def _own_channel(
        self,
        session: Session,
        command: str,
        timeout: float | None,
        stdin: str | bytes | None,
        pty: bool,
        output: Output | None = None,
    ) -> CommandResult:
        import asyncssh

        started = time.monotonic()
        data = stdin.encode() if isinstance(stdin, str) else stdin
        self.channels_opened += 1
        term_type = "xterm" if pty else None
        try:
            done = await asyncio.wait_for(
                session.conn.run(
                    command, input=data, encoding=None, check=False, term_type=term_type
                )
                if output is None
                else _streamed(session.conn, command, data, term_type, output),
                timeout,
            )
        except TimeoutError:  # its channel is closed; what it started is not looked for
            where = session.endpoint.where()
            raise SSHAnswerLost(
                f"{where}: command timed out after {timeout:g}s and may still be running there"
                f" (on a channel of its own, it is not stopped): {_short(command)}"
            ) from None
        except asyncssh.ChannelOpenError as exc:  # refused before the command was sent
            raise SSHError(f"{session.endpoint.where()}: {exc}") from None
        except (asyncssh.Error, OSError, asyncio.IncompleteReadError) as exc:
            raise _answer_lost(session.endpoint, command, exc) from None
        if done.exit_status is None and done.exit_signal is None:
            # the channel closed without saying how the command ended: its connection was lost
            raise _answer_lost(session.endpoint, command, EOFError("no exit status"))
        out = _bytes(done.stdout)
        err = _bytes(done.stderr)
        return CommandResult(
            rc=done.exit_status if done.exit_status is not None else -1,
            stdout=out[:OUTPUT_CAP].decode("utf-8", "replace"),
            stderr=err[:OUTPUT_CAP].decode("utf-8", "replace"),
            duration=time.monotonic() - started,
            truncated=len(out) > OUTPUT_CAP or len(err) > OUTPUT_CAP,
        )

    async def aclose(self) -> None:
        for session in self.sessions.values():
            if session.shell is not None:
                session.shell.close()
            session.conn.close()
        for session in self.sessions.values():
            await session.conn.wait_closed()
        self.sessions.clear()


async def _streamed(
    conn: asyncssh.SSHClientConnection,
    command: str,
    data: bytes | None,
    term_type: str | None,
    output: Output,
) -> asyncssh.SSHCompletedProcess:
    """`conn.run` on a channel of its own, its output passed on line by line as it arrives."""
    import asyncssh

    process = await conn.create_process(command, encoding=None, term_type=term_type)
    try:
        if data:
            process.stdin.write(data)
        process.stdin.write_eof()
        out_lines, err_lines = _Lines.pair(output)
        assert out_lines is not None and err_lines is not None
        out, err = await asyncio.gather(
            _drained(process.stdout, out_lines), _drained(process.stderr, err_lines)
        )
        await process.wait_closed()
    finally:
        process.close()
    return asyncssh.SSHCompletedProcess(
        process.env,
        process.command,
        process.subsystem,
        process.exit_status,
        process.exit_signal,
        process.returncode,
        out,
        err,
    )


async def _drained(stream: asyncssh.SSHReader[bytes], lines: _Lines) -> bytes:
    kept = bytearray()
    while chunk := await stream.read(65536):
        lines.feed(chunk)
        kept += chunk[: max(0, OUTPUT_CAP + 1 - len(kept))]  # one more: it was cut
    lines.end()
    return bytes(kept)


class HostShell:
    """One target over SSH, as actions see it: every command and file passes the door first
    (while planning it lets through only commands marked as probes, and no file). Given an
    `output`, the lines of every command that is not a probe reach it as they arrive; `cut`
    hears of each command cut short, and whether it was stopped on the host."""

    def __init__(
        self,
        pool: SSHPool,
        endpoint: Endpoint,
        door: Door,
        output: Output | None = None,
        cut: list[Cut] | None = None,
    ) -> None:
        self.pool, self.endpoint, self.door = pool, endpoint, door
        self.output = output
        self.cut = cut  # told of each command cut short (its step's timeout looks)

    @property
    def read_only(self) -> bool:
        return self.door.read_only

    async def run(
        self,
        command: str,
        *,
        probe: bool = False,
        timeout: float | None = None,
        stdin: str | bytes | None = None,
        pty: bool = False,
        shown: str | None = None,
        quiet: bool = False,
    ) -> CommandResult:
        """Run a command; `shown` is how messages and logs show it (pyinfra's masked form).
        `quiet`: its lines are not streamed (a listing the step reads, not one for people)."""
        from .connections import Sent

        name = self.endpoint.name
        self.door.enter(
            Sent("ssh", "run", name, shown or command, reads=probe, read_only=self.read_only)
        )
        if not probe:
            self.pool.changed(self.endpoint)
        try:
            result = await self.pool.run(
                self.endpoint,
                command,
                timeout=timeout,
                stdin=stdin,
                pty=pty,
                output=None if probe or quiet else self.output,
                cut=self.cut,
            )
        except SSHAnswerLost as exc:
            if probe:  # a probe changes nothing: its lost answer is only a failure
                raise SSHError(str(exc)) from None
            raise
        finally:
            if not probe:  # and after: a read that overlapped it may have seen either world
                self.pool.changed(self.endpoint)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "SSH %s: %s -> exit %d in %.2f s%s",
                name,
                _logged(shown or command),
                result.rc,
                result.duration,
                " (probe)" if probe else "",
            )
        return result

    async def put(self, data: bytes, path: str, mode: int) -> None:
        """Write a file atomically over SFTP: a temporary file beside it, then a rename. The one
        way opskit writes a file to a host (clients.primitives.put_file builds on it)."""
        import asyncssh

        from .connections import Sent

        self.door.enter(
            Sent("ssh", "put", self.endpoint.name, path, reads=False, read_only=self.read_only)
        )
        session = await self.pool.session(self.endpoint)
        self.pool.changed(self.endpoint)
        temporary = f"{path}.opskit-{secrets.token_hex(4)}"
        started = time.monotonic()
        renaming = False
        try:
            if session.sftp is None:
                session.sftp = await session.conn.start_sftp_client()
                self.pool.channels_opened += 1
            # Created private: content that may be secret is never readable by others, not even
            # before the mode it is meant to have is set.
            private = asyncssh.SFTPAttrs(permissions=0o600)
            async with session.sftp.open(temporary, "wb", private) as handle:
                await handle.write(data)
            await session.sftp.chmod(temporary, mode)
            renaming = True
            await session.sftp.posix_rename(temporary, path)
        except (asyncssh.Error, OSError) as exc:
            # Until the rename, `path` is untouched whatever happened. A rename whose answer was
            # lost with the connection may have replaced it, or not (refused unsent: no loss).
            if renaming and not isinstance(exc, asyncssh.SFTPNoConnection) and _lost(exc):
                raise SSHAnswerLost(
                    f"{self.endpoint.where()}: the connection was lost while {path} was being"
                    f" replaced, before the answer was read ({exc}): it may hold its new"
                    " content or its old one"
                ) from None
            raise SSHError(f"{self.endpoint.where()}: cannot write {path}: {exc}") from None
        finally:
            self.pool.changed(self.endpoint)
        log.info(
            "SSH %s: wrote %s (%d bytes, mode %04o) in %.2f s",
            self.endpoint.name,
            path,
            len(data),
            mode,
            time.monotonic() - started,
        )


def _logged(command: str) -> str:
    """A command as a log line shows it: one line, secrets redacted."""
    from ..secrets import redactor

    one = " ".join(command.split())
    return redactor.redact(one if len(one) <= 300 else one[:297] + "...")


def _bytes(data: bytes | str | None) -> bytes:
    if data is None:
        return b""
    return data.encode() if isinstance(data, str) else bytes(data)


def _short(command: str, limit: int = 80) -> str:
    one = " ".join(command.split())
    return repr(one if len(one) <= limit else one[: limit - 3] + "...")


def sudo(command: str, *, password: bool = False, user: str = "root") -> str:
    """The command under sudo, never prompting. With `password`, the caller feeds it on stdin:
    `sudo -S -v` reads it (empty prompt) to validate, then the command runs under `sudo -n`
    with stdin from /dev/null, so the password is in no argv, no output, no command's stdin."""
    run = f"sudo -n -u {shlex.quote(user)} -- sh -c {shlex.quote(command)}"
    if password:
        return f"sudo -S -p '' -v && {run} </dev/null"
    return run
