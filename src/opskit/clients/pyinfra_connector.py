"""pyinfra over opskit's SSH: a pyinfra connector on the SSHPool, and the bridge from asyncio.

pyinfra is synchronous (gevent underneath); opskit's engine is asyncio. A host-state step runs
its pyinfra work in a worker thread (`run_pyinfra`), with a pyinfra State and Inventory of its
own holding one host, `@opskit/NAME`, whose connector is `OpskitConnector` (registered under
pyinfra's `pyinfra.connectors` entry points). Every command and upload that connector is asked
for goes back to the engine's loop with `asyncio.run_coroutine_threadsafe` and through the run's
SSHPool: the host's one connection and persistent shell, its host-key policy, SFTP on that same
connection. The worker thread blocks while the loop does the I/O; the loop never blocks.

Read-only is enforced at the door, not by care. While planning, a command runs only while a fact
is being read (opskit counts the facts its pyinfra host is asked for, `_count_facts`: its own
phase, not a look at pyinfra's call stack), and it runs as a probe; anything else, and every
upload, reaches the host's HostShell as a change, which the door refuses (`ReadOnlyRefused`).
Nothing an operation yields runs while planning: the bridge only lists it.

pyinfra keeps its current State (and Inventory) in a process-global context; several targets run
at once, each in its own thread, so those two contexts are made per thread on first use
(`_per_thread_context`). Its host and config contexts are greenlet-local already, which is
per thread here (no gevent hub is ever started: nothing on this path spawns a greenlet).
Nothing else needed serialising, and serialising would cost: 12 loopback hosts x 5 files with
20 ms per round trip planned in 2.4 s this way, 8 s with one pyinfra call at a time. Each
target keeps one State for the process (`TargetState`): making one costs ~1 ms (~12 ms before
pyinfra's table of connectors was memoised: it read the entry points three times).

Speed: a step evaluates its operation when planned, when the engine re-probes it and when it is
applied; pyinfra's own CLI evaluates it once. So what a host answered is kept (`KnownFacts`, per
host and SSHPool) while nothing was sent there that may change it, and the apply runs what the
re-probe listed, when nothing reached the host in between: a step in a run asks each fact once
and sends pyinfra's commands, no more.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import copy
import functools
import hashlib
import io
import json
import logging
import shlex
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from io import IOBase
from typing import TYPE_CHECKING, Any, TypeVar

from pyinfra.api.command import (
    FileDownloadCommand,
    FileUploadCommand,
    FunctionCommand,
    QuoteString,
    StringCommand,
)
from pyinfra.api.exceptions import ConnectError, PyinfraError
from pyinfra.api.facts import FactBase
from pyinfra.api.util import get_file_io
from pyinfra.connectors.base import BaseConnector
from pyinfra.connectors.util import (
    CommandOutput,
    OutputLine,
    extract_control_arguments,
    make_unix_command_for_host,
)
from typing_extensions import Unpack, override

from ..errors import HostStateError, OutcomeUnknown, StepError
from .connections import short
from .pyinfra_known import _MISSING, KnownFacts, _known_facts
from .ssh import CommandResult, HostShell

if TYPE_CHECKING:
    from pyinfra.api.arguments import ConnectorArguments
    from pyinfra.api.command import PyinfraCommand
    from pyinfra.api.host import Host
    from pyinfra.api.state import State

T = TypeVar("T")

CONNECTOR = "opskit"  # pyinfra inventory names: @opskit/NAME
LINK_KEY = "opskit_link"  # host data: the LinkSlot pointing at the call's HostLink
WORKERS = 64  # threads running pyinfra at once (they mostly wait on the loop)
FACTS, EXECUTE, IDLE = "facts", "execute", "idle"


class BridgeCancelled(BaseException):
    """The step waiting on this pyinfra work was cancelled (timeout, Ctrl-C): stop now.

    A BaseException, so pyinfra's `except Exception` around callbacks cannot swallow it."""


class HostLink:
    """One target, as the connector sees it: its HostShell, the engine's loop, the phase."""

    def __init__(self, shell: HostShell, loop: asyncio.AbstractEventLoop) -> None:
        self.shell = shell
        self.loop = loop
        self.phase = IDLE
        # Facts being read (opskit's own count, kept by the host's get_fact, see _count_facts):
        # while planning, a command runs, as a probe, only while a fact is read.
        self.reading = 0
        self.asked = 0  # facts asked so far: an operation's listing is replayed only when it
        # read every fact before its first command (so running it would read the same)
        self.cancelled = threading.Event()
        self.failures: list[str] = []
        # The mode an upload is written with, when the step knows it: content and mode then
        # arrive together, in one rename. None: an existing file's mode, 0600 for a new one.
        self.upload_mode: int | None = None
        self._inflight: concurrent.futures.Future[Any] | None = None
        self._task: asyncio.Task[Any] | None = None  # the last call, on the loop
        self._facts = _known_facts(shell)

    @property
    def name(self) -> str:
        return self.shell.endpoint.name

    @property
    def read_only(self) -> bool:
        return self.shell.read_only

    @property
    def known(self) -> KnownFacts:
        return self._facts

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the engine's loop and wait for it (from the worker thread)."""
        if self.cancelled.is_set():
            coro.close()
            raise BridgeCancelled

        async def tracked() -> T:
            self._task = asyncio.current_task()
            return await coro

        future = asyncio.run_coroutine_threadsafe(tracked(), self.loop)
        self._inflight = future
        try:
            while True:
                try:
                    return future.result(timeout=1.0)
                except concurrent.futures.TimeoutError:
                    if self.loop.is_closed():  # nobody will ever finish it
                        raise BridgeCancelled from None
        except concurrent.futures.CancelledError:
            raise BridgeCancelled from None
        finally:
            self._inflight = None

    def cancel(self) -> None:
        """From the loop: the awaiting step is gone; stop the worker at its next call."""
        self.cancelled.set()
        inflight = self._inflight
        if inflight is not None:
            inflight.cancel()

    async def settled(self) -> None:
        """From the loop, after cancel(): the call in flight has ended (a command it was
        running stopped on the host, or found not stoppable), at most 30 s."""
        task = self._task
        if task is not None and not task.done():
            await asyncio.wait([task], timeout=30)

    def connect(self) -> None:
        self.call(self.shell.pool.session(self.shell.endpoint))

    def run(
        self,
        command: str,
        shown: str,
        *,
        timeout: float | None = None,
        stdin: str | None = None,
        pty: bool = False,
    ) -> CommandResult:
        # A probe is what opskit's own phase says it is: a fact being read, never a command an
        # operation yields (the door refuses those while planning). Applying, the facts an
        # operation reads as it runs are reads too (kept, and answered from what is kept);
        # executing while planning, nothing is.
        reads = self.phase == FACTS or (self.phase == EXECUTE and not self.read_only)
        probe = reads and self.reading > 0
        cacheable = probe and stdin is None and not pty
        if cacheable:
            known = self._facts.get(command)
            if known is not None:
                return known
        seen = self._facts.generation()
        result = self.call(
            self.shell.run(command, probe=probe, timeout=timeout, stdin=stdin, pty=pty, shown=shown)
        )
        if cacheable:
            self._facts.keep(command, result, seen)
        return result

    def put(self, data: bytes, path: str, *, become: bool = False) -> None:
        self.call(_put(self.shell, data, path, self.upload_mode, become))

    def failed(self, shown: str, result: CommandResult) -> None:
        tail = (result.stderr.strip() or result.stdout.strip())[-400:]
        message = f"{short(shown)} exited {result.rc}"
        self.failures.append(f"{message}: {tail}" if tail else message)


async def _put(shell: HostShell, data: bytes, path: str, mode: int | None, become: bool) -> None:
    """Upload through the one way files reach a host (primitives.put_file: atomic, its mode on
    arrival) with `mode`; without one, keep an existing file's mode and start a new one at 0600
    (the operation sets the mode it wants after): content that may be secret is never readable
    by others meanwhile."""
    from .primitives import put_file

    if mode is None:
        found = await shell.run(f"stat -c %a {shlex.quote(path)} 2>/dev/null", probe=True)
        text = found.stdout.strip()
        mode = int(text, 8) if found.rc == 0 and text.isdigit() else 0o600
    await put_file(shell, path, data, mode=mode, become=become)


def _count_facts(host: Host, slot: LinkSlot, host_key: str) -> None:
    """Count the facts being read on `host`, for the link of the call in progress: every fact
    an operation or opskit asks goes through `host.get_fact`, so the count is opskit's own
    phase, not a reading of pyinfra's call stack. A fact already read while nothing changed
    the host is answered from what was kept (a copy), without pyinfra's work of asking it."""
    ask = host.get_fact

    def get_fact(fact: Any, *args: Any, **kwargs: Any) -> Any:
        link = slot.link
        if link is None:
            return ask(fact, *args, **kwargs)
        key = None
        reads = link.phase == FACTS or (link.phase == EXECUTE and not link.read_only)
        if reads and link.reading == 0 and not args:
            try:
                name = f"{fact.__module__}.{fact.__qualname__}"
                key = json.dumps([host_key, name, kwargs], sort_keys=True)
            except (TypeError, ValueError, AttributeError):
                key = None
        link.asked += 1
        if key is not None:
            found = link.known.value(key)
            if found is not _MISSING:
                return copy.deepcopy(found)
        seen = link.known.generation()
        link.reading += 1
        try:
            value = ask(fact, *args, **kwargs)
        finally:
            link.reading -= 1
        if key is not None:
            link.known.keep_value(key, copy.deepcopy(value), seen)
        return value

    host.get_fact = get_fact  # type: ignore[method-assign,assignment]


def _lines(text: str) -> list[str]:
    """Output lines as pyinfra's own connectors give them: split on newlines, none trailing."""
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


# --- the connector -----------------------------------------------------------------------------


class OpskitConnector(BaseConnector):
    """pyinfra's way to a host through opskit's SSHPool: only opskit's bridge makes these hosts
    (the HostLink in their data), so `pyinfra @opskit/...` on its own refuses to connect."""

    handles_execution = True

    def __init__(self, state: State, host: Host) -> None:
        super().__init__(state, host)
        self.slot: LinkSlot | None = host.data.get(LINK_KEY)

    @override
    @staticmethod
    def make_names_data(name: str) -> Iterator[tuple[str, dict[str, Any], list[str]]]:
        yield f"@{CONNECTOR}/{name}", {}, []

    def _link(self) -> HostLink:
        if not isinstance(self.slot, LinkSlot) or self.slot.link is None:
            raise ConnectError("@opskit hosts are reached only through opskit's runbooks")
        return self.slot.link

    @override
    def connect(self) -> None:
        self._link().connect()

    @override
    def disconnect(self) -> None:
        pass  # the SSHPool owns the connection: it closes with the run

    @override
    def run_shell_command(
        self,
        command: StringCommand,
        print_output: bool = False,
        print_input: bool = False,
        **arguments: Unpack[ConnectorArguments],
    ) -> tuple[bool, CommandOutput]:
        link = self._link()
        control = extract_control_arguments(arguments)
        unix = make_unix_command_for_host(self.state, self.host, command, **arguments)
        stdin = control.get("_stdin")
        if stdin is not None and not isinstance(stdin, str):
            stdin = "".join(line if line.endswith("\n") else line + "\n" for line in stdin)
        result = link.run(
            unix.get_raw_value(),
            unix.get_masked_value(),
            timeout=control.get("_timeout") or None,
            stdin=stdin,
            pty=bool(control.get("_get_pty")),
        )
        codes = control.get("_success_exit_codes")
        ok = result.rc in set(codes) if codes else result.rc == 0
        if not ok:
            link.failed(unix.get_masked_value(), result)
        lines = [OutputLine("stdout", line) for line in _lines(result.stdout)]
        lines += [OutputLine("stderr", line) for line in _lines(result.stderr)]
        return ok, CommandOutput(lines)

    @override
    def put_file(
        self,
        filename_or_io: str | IOBase,
        remote_filename: str,
        remote_temp_filename: str | None = None,
        print_output: bool = False,
        print_input: bool = False,
        **arguments: Unpack[ConnectorArguments],
    ) -> bool:
        link = self._link()
        with get_file_io(filename_or_io, "rb") as handle:  # type: ignore[arg-type]
            data = handle.read()
        if isinstance(data, str):
            data = data.encode()
        # opskit's host kinds become root through sudo (HostArgs.become): the upload is moved
        # into place by sudo, the same way as every other file opskit writes
        become = any(arguments.get(k) for k in ("_sudo", "_su_user", "_doas", "_dzdo"))
        try:
            link.put(data, remote_filename, become=become)
        except OutcomeUnknown:
            raise  # the file may have been replaced: the step's outcome is unknown, not failed
        except StepError as exc:
            link.failures.append(str(exc))
            return False
        return True

    @override
    def get_file(
        self,
        remote_filename: str,
        filename_or_io: str | IOBase,
        remote_temp_filename: str | None = None,
        print_output: bool = False,
        print_input: bool = False,
        **arguments: Unpack[ConnectorArguments],
    ) -> bool:
        ok, output = self.run_shell_command(
            StringCommand("base64", QuoteString(remote_filename)), **arguments
        )
        if not ok:
            return False
        data = base64.b64decode("".join(output.stdout_lines))
        with get_file_io(filename_or_io, "wb") as handle:  # type: ignore[arg-type]
            handle.write(data)
        return True


# --- the bridge --------------------------------------------------------------------------------


@dataclass
class OpReport:
    """What an operation would do (planning) or did (apply)."""

    commands: list[str] = field(default_factory=list)  # masked; uploads as "upload PATH"
    uploads: list[str] = field(default_factory=list)
    executed: bool = False
    ok: bool = True
    error: str | None = None

    @property
    def changes(self) -> bool:
        return bool(self.commands)


def _operation_key(op: Callable[..., Any], kwargs: Mapping[str, Any], host_key: str) -> str:
    """The same operation with the same arguments for the same host data: content given as a
    stream is told by its checksum (a plan's placeholders are not a run's secrets)."""

    def value(item: Any) -> Any:
        if isinstance(item, io.BytesIO):
            return {"sha256": hashlib.sha256(item.getvalue()).hexdigest()}
        return repr(item)

    name = f"{getattr(op, '__module__', '')}.{getattr(op, '__qualname__', repr(op))}"
    return json.dumps([name, host_key, kwargs], sort_keys=True, default=value)


def describe(command: PyinfraCommand) -> str:
    if isinstance(command, StringCommand):
        return command.get_masked_value()
    if isinstance(command, FileUploadCommand):
        return f"upload {command.dest}"
    if isinstance(command, FileDownloadCommand):
        return f"download {command.src}"
    if isinstance(command, FunctionCommand):
        return f"python {getattr(command.function, '__name__', 'callback')}"
    return repr(command)


class PyinfraHost:
    """The pyinfra side of one target, for the work a step runs in the bridge's thread."""

    def __init__(self, state: State, host: Host, link: HostLink, host_key: str = "") -> None:
        self.state, self.host, self.link = state, host, link
        self.host_key = host_key  # the host data (sudo, environment) its commands depend on

    @property
    def read_only(self) -> bool:
        return self.link.read_only

    def fact(self, fact: type[FactBase[T]], **kwargs: Any) -> T:
        self.link.phase = FACTS
        try:
            return self.host.get_fact(fact, **kwargs)
        finally:
            self.link.phase = IDLE

    def operation(self, op: Callable[..., Any], **kwargs: Any) -> OpReport:
        """Add the operation; planning: list its commands (facts run, nothing else);
        applying: run it, through pyinfra's own executor. Applying right after a probe listed
        the same operation (the engine's re-probe), with nothing sent to the host in between,
        runs the commands listed: pyinfra's evaluation, facts and all, is done once."""
        from pyinfra.api.operations import run_host_op

        key = _operation_key(op, kwargs, self.host_key)
        known = self.link.known
        asked_at = known.generation()
        listed = None if self.read_only else known.listing(key)
        before = len(self.host.op_hash_order)
        self.link.phase = FACTS  # an operation may read facts while it is added
        try:
            op(**kwargs)
        finally:
            self.link.phase = IDLE
        if len(self.host.op_hash_order) == before:
            return OpReport()
        op_hash = self.host.op_hash_order[-1]
        data = self.state.get_op_data_for_host(self.host, op_hash)
        seen: list[PyinfraCommand] = []
        generate = data.command_generator
        if listed is not None:
            generate = listed.__iter__
        replayable = True

        def recording() -> Iterator[PyinfraCommand]:
            nonlocal replayable
            first: int | None = None  # facts asked when the first command came
            for command in generate():
                if first is None:
                    first = self.link.asked
                seen.append(command)
                yield command
            if first is not None and self.link.asked != first:
                replayable = False  # a fact read after a command: running, its answer may differ

        data.command_generator = recording
        report = OpReport()
        if self.read_only:
            self.link.phase = FACTS
            try:
                for _ in data.command_generator():
                    pass
            finally:
                self.link.phase = IDLE
            if replayable:
                known.listed(key, list(seen), asked_at)
        else:
            self.link.phase = EXECUTE
            failures = len(self.link.failures)
            try:
                report.ok = run_host_op(self.state, self.host, op_hash)
            finally:
                self.link.phase = IDLE
            report.executed = True
            if not report.ok:
                report.error = "; ".join(self.link.failures[failures:]) or "a command failed"
        report.commands = [describe(c) for c in seen]
        report.uploads = [c.dest for c in seen if isinstance(c, FileUploadCommand)]
        return report


_executor: concurrent.futures.ThreadPoolExecutor | None = None
_setup_lock = threading.Lock()
_context_ready = False


def _workers() -> concurrent.futures.ThreadPoolExecutor:
    global _executor
    with _setup_lock:
        if _executor is None:
            _executor = concurrent.futures.ThreadPoolExecutor(
                WORKERS, thread_name_prefix="opskit-pyinfra"
            )
        return _executor


def _per_thread_context() -> None:
    """pyinfra's `state` and `inventory` contexts, per thread instead of per process: the
    one place opskit writes into pyinfra's private parts, done once, before any pyinfra work.

    pyinfra 3.10 has no public way to make them per thread: its ContextManager offers get, set,
    use and reset of one process-wide container (`context._container`); only its host and config
    contexts are greenlet-local. So the two containers are replaced by thread-local ones. In one
    thread nothing changes: what pyinfra set, it reads back. Across threads each sees its own,
    so concurrent targets cannot add operations to one another's State. The pin (pyinfra
    3.10.x in pyproject.toml) holds the shape; test_host_state checks it. Serialising all pyinfra
    work instead would cost 3x (the module's docstring). Also here: the global arguments' and
    the connectors' tables memoised (below), and pyinfra's logger quiet (opskit reports
    failures itself, redacted; pyinfra's warnings would reach the console through logging's
    last resort)."""
    global _context_ready
    with _setup_lock:
        if _context_ready:
            return
        from pyinfra import context

        class Slot(threading.local):
            module: Any = None

        for manager in (context.ctx_state, context.ctx_inventory):
            if not hasattr(manager.context, "_container"):  # the pin should have caught it
                raise RuntimeError("pyinfra's contexts changed: opskit needs pyinfra 3.10.x")
            manager.context._container = Slot()
        # pyinfra computes the global arguments' names and types (typing.get_type_hints of a
        # TypedDict) for every operation and every fact read: a constant, a third of evaluating
        # an operation here. Computed once.
        from pyinfra.api import arguments

        arguments.all_global_arguments = functools.cache(arguments.all_global_arguments)
        # Every Inventory made (one per target) reads the installed packages' entry points
        # three times for its table of connectors, ~10 ms each here: a constant too. Each call
        # still gets a dict of its own.
        from pyinfra.api import connectors, inventory

        table = functools.cache(connectors.get_all_connectors)

        def get_all_connectors() -> dict[str, Any]:
            return dict(table())

        connectors.get_all_connectors = get_all_connectors
        # (the inventory module imported the function under its own name)
        inventory.get_all_connectors = get_all_connectors  # type: ignore[attr-defined]
        # Both computed now, under the lock: a cache fills on its first call's return, so the
        # first targets, starting together, would each compute them (20 hosts: 20 readings of
        # the entry points, about 0.7 s of CPU).
        arguments.all_global_arguments()
        table()
        logger = logging.getLogger("pyinfra")
        logger.addHandler(logging.NullHandler())
        logger.propagate = False
        _context_ready = True


class LinkSlot:
    """Host data pointing at the HostLink of the call in progress (pyinfra copies host data
    when it reads it: the copy is this same slot)."""

    def __init__(self) -> None:
        self.link: HostLink | None = None

    def __copy__(self) -> LinkSlot:
        return self


@dataclass
class TargetState:
    """One target's pyinfra State, kept for the process (a plan and its run share it): making a
    State and Inventory costs about a millisecond even with its connectors' table memoised."""

    state: State
    host: Host
    slot: LinkSlot
    key: str  # the target and its host data
    lock: threading.Lock = field(default_factory=threading.Lock)


# (target, its endpoint, host data) -> its State, for the process: a plan and the run after it
# (each with a pool of its own) share it, so a target pays for its State once. Bounded: a
# process planning for more targets than this (tests) starts afresh now and then.
_states: dict[str, TargetState] = {}
MAX_STATES = 2048


def _target_state(link: HostLink, data: Mapping[str, Any]) -> TargetState:
    from pyinfra.api.config import Config
    from pyinfra.api.inventory import Inventory
    from pyinfra.api.state import State

    key = json.dumps([link.name, link.shell.endpoint.key, data], sort_keys=True, default=str)
    with _setup_lock:
        found = _states.get(key)
    if found is not None:
        return found
    name = f"@{CONNECTOR}/{link.name}"
    slot = LinkSlot()
    inventory = Inventory(([(name, {LINK_KEY: slot, **data})], {}))  # type: ignore[no-untyped-call]
    config = Config(TEMP_DIR="/tmp")  # type: ignore[no-untyped-call]
    state = State(inventory, config, check_for_changes=False)
    host = inventory.get_host(name)
    _count_facts(host, slot, key)
    made = TargetState(state, host, slot, key)
    with _setup_lock:
        if len(_states) >= MAX_STATES:
            _states.clear()
        return _states.setdefault(key, made)


def _forget(target: TargetState) -> None:
    with _setup_lock:
        if _states.get(target.key) is target:
            del _states[target.key]


def _in_thread(link: HostLink, work: Callable[[PyinfraHost], T], data: Mapping[str, Any]) -> T:
    from pyinfra.context import ctx_host, ctx_state

    _per_thread_context()
    target = _target_state(link, data)
    with target.lock, ctx_state.use(target.state), ctx_host.use(target.host):
        target.slot.link = link
        try:
            target.host.connect(show_errors=False, raise_exceptions=True)
            return work(PyinfraHost(target.state, target.host, link, target.key))
        except PyinfraError as exc:
            _forget(target)  # a failed host stays failed in its State: start afresh
            raise HostStateError(_explain(link, exc)) from None
        except BaseException:
            _forget(target)
            raise
        finally:
            target.slot.link = None


def _explain(link: HostLink, exc: PyinfraError) -> str:
    if link.failures:  # pyinfra's own words ("No hosts remaining!") hide what failed
        return f"{link.name}: {link.failures[-1]}"
    return f"{link.name}: {exc}"


async def run_pyinfra(
    shell: HostShell,
    work: Callable[[PyinfraHost], T],
    *,
    host_data: Mapping[str, Any] | None = None,
) -> T:
    """Run `work` against the target of `shell` in a worker thread, its pyinfra commands going
    through `shell`'s pool on this loop. `host_data` sets pyinfra global arguments for every
    command (`_sudo`, `_env`). Cancelling this coroutine stops the work at its next command, and
    the command in flight on the host."""
    loop = asyncio.get_running_loop()
    link = HostLink(shell, loop)
    future = loop.run_in_executor(_workers(), _in_thread, link, work, dict(host_data or {}))
    try:
        return await future
    except asyncio.CancelledError:
        link.cancel()
        await link.settled()  # so that the step knows whether its command was stopped
        raise


def stream(data: bytes) -> io.BytesIO:
    """Content for files.put: in memory, so pyinfra caches no checksum by file name."""
    return io.BytesIO(data)
