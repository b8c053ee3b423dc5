"""Commands and files over SSH: ssh.run, ssh.script, ssh.upload, check.ssh, check.command.

Probes run only guard commands (`creates:`, `unless:`, checksums), never the command itself.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from typing import Annotated, Any, ClassVar

from pydantic import Field, field_validator

from ..errors import OpskitError, OutcomeUnknown, StepError
from ..model import Change, ChangeKind, Duration, Outcome, Risk
from ..render import SECRET, SHELL
from .base import Action, ActionArgs, ActionContext, Check

OUTPUT_CAP = 64 * 1024  # characters of stdout/stderr registered per step


class Guards(ActionArgs):
    creates: str | None = Field(None, description="a path: if it exists, the command is not run")
    unless: Annotated[str | None, SHELL] = Field(
        None, description="a command: if it exits 0, the command is not run"
    )


class CommandArgs(Guards):
    expect: list[int] = Field(default_factory=lambda: [0], description="accepted exit codes")
    become: bool = Field(False, description="run through sudo (-n: never prompt)")
    become_user: str = Field("root", description="the user sudo runs it as")
    become_password: Annotated[str | None, SECRET] = Field(
        None, description="sudo password: '{{ secrets.NAME }}', fed on stdin"
    )
    env: dict[str, str] = Field(default_factory=dict, description="exported for the command")
    chdir: str | None = Field(None, description="the directory to run it in")
    timeout: Duration | None = Field(None, description="how long it may run (default: no limit)")
    output_cap: int = Field(OUTPUT_CAP, ge=0, description="characters of output registered")


def _prefix(args: CommandArgs) -> str:
    """cd and environment, quoted here: the one place these values meet the shell."""
    parts = [
        f"export {k}={shlex.quote(v)}"
        for k, v in sorted(args.env.items())
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)
    ]
    if args.chdir:
        parts.append(f"cd {shlex.quote(args.chdir)}")
    return "".join(f"{p} && " for p in parts)


async def guarded(ctx: ActionContext, guards: Guards, what: str) -> Change:
    """NONE when a guard says the work is done; otherwise the work is to do."""
    shell = ctx.shell()
    if guards.creates:
        done = await shell.run(f"test -e {shlex.quote(guards.creates)}", probe=True)
        if done.rc == 0:
            return Change.none(f"{guards.creates} exists")
    if guards.unless:
        done = await shell.run(guards.unless, probe=True)
        if done.rc == 0:
            return Change.none(f"unless: {_short(guards.unless)} succeeded")
    if guards.creates:
        return Change(
            kind=ChangeKind.CREATE,
            summary=f"{what} (creates {guards.creates})",
            after={"exists": guards.creates},
        )
    if guards.unless:
        return Change(kind=ChangeKind.UPDATE, summary=f"{what} (unless failed)")
    return Change.unknown(what)


def _short(text: str, limit: int = 60) -> str:
    one = " ".join(text.split())
    return one if len(one) <= limit else one[: limit - 3] + "..."


def _outcome(args: CommandArgs, result: Any, summary: str) -> Outcome:
    cap = args.output_cap
    outputs = {
        "rc": result.rc,
        "stdout": result.stdout[:cap],
        "stderr": result.stderr[:cap],
        "truncated": result.truncated or len(result.stdout) > cap or len(result.stderr) > cap,
    }
    text = f"{summary}: exit {result.rc} in {result.duration:.1f}s"
    if result.rc not in args.expect:
        tail = (result.stderr or result.stdout).strip()[-400:]
        error = f"exit code {result.rc}, expected {' or '.join(map(str, args.expect))}"
        return Outcome(
            ok=False,
            changed=True,
            summary=text,
            outputs=outputs,
            error=f"{error}: {tail}" if tail else error,
        )
    return Outcome(ok=True, changed=True, summary=text, outputs=outputs)


def _become(args: CommandArgs, command: str) -> tuple[str, str | None]:
    """(the command to send, what to feed on its stdin)."""
    from ..clients.ssh import sudo

    if not args.become:
        return command, None
    if args.become_password:
        return sudo(command, user=args.become_user, password=True), args.become_password + "\n"
    return sudo(command, user=args.become_user), None


class RunArgs(CommandArgs):
    cmd: Annotated[str, SHELL] = Field(..., description="a shell command; {{ values }} are quoted")
    stdin: str | None = Field(None, description="fed to the command (on a channel of its own)")
    pty: bool = Field(False, description="give the command a terminal")


# What ssh.run and ssh.script register.
COMMAND_OUTPUTS = {
    "rc": "the exit code (int)",
    "stdout": "standard output, its first `output_cap` characters (str)",
    "stderr": "standard error, likewise (str)",
    "truncated": "whether stdout or stderr was cut short (bool)",
}


class Run(Action[RunArgs]):
    """Run a shell command; `creates:` and `unless:` make it idempotent.

    The plan cannot know what a command changes: without a guard it is "known after apply",
    and the probe runs only the guards, never the command."""

    name: ClassVar[str] = "ssh.run"
    risk: ClassVar[Risk] = Risk.CHANGE
    Args = RunArgs
    outputs: ClassVar[dict[str, str]] = COMMAND_OUTPUTS
    example: ClassVar[str] = """
        targets: vm:110
        params:
          release: {type: str, default: "1.4.2"}
        steps:
          - id: unpack
            ssh.run:
              cmd: "tar -xzf /var/tmp/app-{{ params.release }}.tar.gz -C /opt/app"
              creates: "/opt/app/{{ params.release }}"   # done once that exists
            register: unpack          # later: {{ unpack.rc }}, {{ unpack.stdout }}
          - id: compose-up
            ssh.run:
              cmd: docker compose -f /opt/app/compose.yaml up -d
              unless: docker compose -f /opt/app/compose.yaml ps -q --status running | grep -q .
              become: true
        """

    def describe(self) -> str:
        return f"run {_short(self.args.cmd)}"

    async def probe(self, ctx: ActionContext) -> Change:
        return await guarded(ctx, self.args, f"run {_short(self.args.cmd)}")

    async def apply(self, ctx: ActionContext) -> Outcome:
        a = self.args
        if a.stdin is not None and a.become_password:
            raise OpskitError("ssh.run: stdin and become_password both need stdin: use one")
        command, feed = _become(a, _prefix(a) + a.cmd)
        stdin = feed if feed is not None else a.stdin
        result = await ctx.shell().run(command, timeout=a.timeout, stdin=stdin, pty=a.pty)
        return _outcome(a, result, f"run {_short(a.cmd)}")


class ScriptArgs(CommandArgs):
    script: str = Field(..., description="a local script (relative to the project)")
    args: list[str] = Field(default_factory=list, description="its arguments, each quoted")
    interpreter: str = Field(
        "sh", pattern=r"^[A-Za-z0-9_./-]+$", description="reads the script on stdin: sh, bash, ..."
    )


class Script(Action[ScriptArgs]):
    """Run a local script on the host with arguments (sent over the channel, not stored)."""

    name: ClassVar[str] = "ssh.script"
    risk: ClassVar[Risk] = Risk.CHANGE
    Args = ScriptArgs
    outputs: ClassVar[dict[str, str]] = COMMAND_OUTPUTS
    example: ClassVar[str] = """
        targets: vm:110
        steps:
          - id: is-current
            ssh.script:
              script: deploy/proxmoxmcp/proxmoxmcp-ctl
              args: [venv, is-current, "0.6.7"]
              expect: [0, 1]          # 1 is an answer, not a failure
            register: current         # later: {{ current.rc == 0 }}
        """

    def describe(self) -> str:
        return f"script {self.args.script}"

    def _read(self, ctx: ActionContext) -> str:
        path = ctx.path(self.args.script)
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise OpskitError(f"cannot read script {path}: {exc.strerror}") from None

    async def probe(self, ctx: ActionContext) -> Change:
        self._read(ctx)  # a missing script shows in the plan
        return await guarded(ctx, self.args, f"run script {self.args.script}")

    async def apply(self, ctx: ActionContext) -> Outcome:
        a = self.args
        if a.become_password:
            raise OpskitError("ssh.script sends the script on stdin: use become without a password")
        argv = " ".join(shlex.quote(x) for x in a.args)
        command, _ = _become(a, _prefix(a) + f"{a.interpreter} -s -- {argv}".rstrip())
        result = await ctx.shell().run(command, timeout=a.timeout, stdin=self._read(ctx))
        return _outcome(a, result, f"script {a.script}")


class UploadArgs(ActionArgs):
    src: str | None = Field(None, description="a local file (relative to the project)")
    content: str | None = Field(None, description="the file's content, instead of src")
    dest: str = Field(..., description="absolute path on the host")
    mode: str = Field("0644", pattern=r"^0?[0-7]{3,4}$", description="octal file mode")
    owner: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="chown to this user")
    group: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="and this group")

    @field_validator("dest")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"dest must be an absolute path, not {value!r}")
        return value


class Upload(Action[UploadArgs]):
    """Put a file on the host (SFTP), with mode and owner; the same bytes are no change."""

    name: ClassVar[str] = "ssh.upload"
    risk: ClassVar[Risk] = Risk.CHANGE
    Args = UploadArgs
    outputs: ClassVar[dict[str, str]] = {
        "sha256": "the SHA-256 of the bytes written (hex str)",
        "size": "how many bytes were written (int)",
    }
    example: ClassVar[str] = """
        targets: vm:110
        steps:
          - id: ctl
            ssh.upload:
              src: deploy/proxmoxmcp/proxmoxmcp-ctl    # relative to the project
              dest: /usr/local/bin/proxmoxmcp-ctl
              mode: "0755"
              owner: root
          - id: motd
            ssh.upload: {content: "Managed by opskit\\n", dest: /etc/motd}
        """

    def describe(self) -> str:
        return f"upload {self.args.dest}"

    def _data(self, ctx: ActionContext) -> bytes:
        a = self.args
        if (a.src is None) == (a.content is None):
            raise OpskitError("ssh.upload needs src or content (one of them)")
        if a.content is not None:
            return a.content.encode()
        path = ctx.path(a.src or "")
        try:
            return path.read_bytes()
        except OSError as exc:
            raise OpskitError(f"cannot read {path}: {exc.strerror}") from None

    async def _state(self, ctx: ActionContext) -> dict[str, Any] | None:
        from ..clients.primitives import file_state

        found = await file_state(ctx.shell(), self.args.dest)
        if found is None:
            return None
        return {
            "sha256": found.sha256,
            "mode": found.mode,
            "owner": found.owner,
            "group": found.group,
        }

    def _wanted(self, data: bytes) -> dict[str, Any]:
        a = self.args
        want: dict[str, Any] = {"sha256": hashlib.sha256(data).hexdigest(), "mode": a.mode.zfill(4)}
        if a.owner:
            want["owner"] = a.owner
        if a.group:
            want["group"] = a.group
        return want

    async def probe(self, ctx: ActionContext) -> Change:
        want = self._wanted(self._data(ctx))
        have = await self._state(ctx)
        if have is None:
            return Change(kind=ChangeKind.CREATE, summary=f"create {self.args.dest}", after=want)
        before = {k: have[k] for k in want}
        if before == want:
            return Change.none(f"{self.args.dest} is up to date")
        what = ", ".join(k for k in want if want[k] != before[k])
        return Change(
            kind=ChangeKind.UPDATE,
            summary=f"update {self.args.dest} ({what})",
            before=before,
            after=want,
        )

    async def apply(self, ctx: ActionContext) -> Outcome:
        a = self.args
        from ..clients.primitives import put_file

        data = self._data(ctx)
        try:
            await put_file(
                ctx.shell(), a.dest, data, mode=int(a.mode, 8), owner=a.owner, group=a.group
            )
        except OutcomeUnknown:
            raise  # the file may have been replaced: journaled unknown, probed again
        except StepError as exc:
            return Outcome(ok=False, changed=True, summary=f"wrote {a.dest}", error=str(exc))
        digest = hashlib.sha256(data).hexdigest()
        return Outcome(
            ok=True,
            changed=True,
            summary=f"wrote {a.dest} ({len(data)} bytes)",
            outputs={"sha256": digest, "size": len(data)},
        )


class SshCheckArgs(ActionArgs):
    timeout: Duration = Field(15.0, description="for the login and one command")


class CheckSsh(Check[SshCheckArgs]):
    """The host answers SSH, its key is trusted and login works."""

    name: ClassVar[str] = "check.ssh"
    Args = SshCheckArgs
    outputs: ClassVar[dict[str, str]] = {"uname": "the host's `uname -srm` (str)"}
    example: ClassVar[str] = """
        targets: vm:110
        steps:
          - id: ssh
            description: the VM answers SSH (it may still be booting)
            check.ssh: {}
            retries: 20
            interval: 3s
        """

    def describe(self) -> str:
        return "ssh reachable and authenticated"

    async def apply(self, ctx: ActionContext) -> Outcome:
        result = await ctx.shell().run("uname -srm", timeout=self.args.timeout)
        return Outcome(
            ok=result.rc == 0,
            summary=f"ssh ok: {result.stdout.strip()}",
            outputs={"uname": result.stdout.strip()},
            error=None if result.rc == 0 else result.stderr.strip(),
        )


class CommandCheckArgs(ActionArgs):
    cmd: Annotated[str, SHELL] = Field(..., description="a shell command; {{ values }} are quoted")
    expect: list[int] = Field(default_factory=lambda: [0], description="accepted exit codes")
    contains: str | None = Field(None, description="text its standard output must contain")
    matches: str | None = Field(None, description="regex its standard output must match")
    become: bool = Field(False, description="run through sudo (-n: never prompt)")
    timeout: Duration = Field(60.0, description="how long it may run")


class CheckCommand(Check[CommandCheckArgs]):
    """A command's exit code (and output) is as expected."""

    name: ClassVar[str] = "check.command"
    Args = CommandCheckArgs
    outputs: ClassVar[dict[str, str]] = {
        "rc": "the exit code (int)",
        "stdout": "standard output, its first 64 KiB (str)",
    }
    example: ClassVar[str] = """
        targets: vm:110
        steps:
          - id: active
            check.command: {cmd: systemctl is-active proxmoxmcp, contains: active}
            register: active          # later: {{ active.stdout }}
        """

    def describe(self) -> str:
        return f"{_short(self.args.cmd)} exits {'|'.join(map(str, self.args.expect))}"

    async def apply(self, ctx: ActionContext) -> Outcome:
        from ..clients.ssh import sudo

        a = self.args
        command = sudo(a.cmd) if a.become else a.cmd
        result = await ctx.shell().run(command, timeout=a.timeout)
        problems = []
        if result.rc not in a.expect:
            problems.append(f"exit code {result.rc}, expected {a.expect}")
        if a.contains is not None and a.contains not in result.stdout:
            problems.append(f"output does not contain {a.contains!r}")
        if a.matches is not None and not re.search(a.matches, result.stdout):
            problems.append(f"output does not match {a.matches!r}")
        outputs = {"rc": result.rc, "stdout": result.stdout[:OUTPUT_CAP]}
        summary = f"{_short(a.cmd)}: exit {result.rc}"
        if problems:
            return Outcome(ok=False, summary=summary, outputs=outputs, error="; ".join(problems))
        return Outcome(ok=True, summary=summary, outputs=outputs)
