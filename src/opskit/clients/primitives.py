"""Host primitives: a file, a directory, a user and a systemd unit on one host, each with a probe
form (what is there, read-only) and a change form, over the target's HostShell.

The step kinds that manage a host compose these instead of writing shell of their own:
beszel.agent, python.venv, proxmoxmcp.config, ssh.upload, and pyinfra's uploads for host.*
(the connector's put_file). `put_file` is the one way opskit writes a file to a host: the bytes
go over SFTP beside the file and are renamed into place (HostShell.put), with their mode, so a
file is never seen half-written nor readable by others for a moment; as another user (`become`)
they are staged in a private temporary file and moved into place by sudo. Changes raise
StepError with one line naming what failed; probes run as probes (read-only while planning).
"""

from __future__ import annotations

import hashlib
import secrets
import shlex
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import StepError
from .ssh import CommandResult, HostShell, sudo

q = shlex.quote


@dataclass(frozen=True)
class FileState:
    """A regular file on the host: what a checksum probe compares."""

    sha256: str
    mode: str  # "0644"
    owner: str
    group: str


def _as(command: str, become: bool) -> str:
    return sudo(command) if become else command


def tail(result: CommandResult) -> str:
    """The end of what a failed command said: its stderr, else its stdout, else its exit code."""
    text = (result.stderr.strip() or result.stdout.strip())[-400:]
    return text or f"exit code {result.rc}"


async def _run(shell: HostShell, command: str, become: bool, what: str, **kw: object) -> str:
    done = await shell.run(_as(command, become), timeout=kw.pop("timeout", 120), **kw)  # type: ignore[arg-type]
    if done.rc != 0:
        raise StepError(f"{what}: {tail(done)}")
    return done.stdout


# --- a file --------------------------------------------------------------------------------


async def file_state(shell: HostShell, path: str, *, become: bool = False) -> FileState | None:
    """Probe: the file's checksum, mode and owner, or None when there is no such file."""
    p = q(path)
    done = await shell.run(
        _as(f"test -f {p} && sha256sum {p} && stat -c '%a %U %G' {p}", become), probe=True
    )
    if done.rc != 0:
        return None
    lines = done.stdout.split("\n")
    mode, owner, group = lines[1].split()
    return FileState(lines[0].split()[0], mode.zfill(4), owner, group)


def same_file(
    have: FileState | None,
    data: bytes,
    mode: int,
    owner: str | None = None,
    group: str | None = None,
) -> bool:
    """Whether `have` is `data` with `mode` (and owner and group, where given)."""
    return (
        have is not None
        and have.sha256 == hashlib.sha256(data).hexdigest()
        and have.mode == f"{mode:04o}"
        and (owner is None or have.owner == owner)
        and (group is None or have.group == group)
    )


async def put_file(
    shell: HostShell,
    path: str,
    data: bytes,
    *,
    mode: int,
    owner: str | None = None,
    group: str | None = None,
    become: bool = False,
    parents: bool = False,
) -> None:
    """Write `data` to `path` atomically with `mode` (then owner and group, where given): the
    one way a file reaches a host."""
    directory = path.rpartition("/")[0] or "/"
    if parents:
        await _run(shell, f"mkdir -p {q(directory)}", become, f"cannot write {path}")
    who = f"{owner or ''}{':' + group if group else ''}"
    if not become:
        await shell.put(data, path, mode)
        if who:
            await _run(shell, f"chown {q(who)} {q(path)}", False, f"cannot write {path}")
        return
    # SFTP writes as the login user: stage the bytes where only it can read them, then let
    # root copy them beside the file and rename them into place.
    staged = f"/tmp/opskit-upload-{secrets.token_hex(8)}"
    await shell.put(data, staged, 0o600)
    beside = f"{directory}/.{path.rpartition('/')[2]}.opskit-{secrets.token_hex(4)}"
    chown = f" && chown {q(who)} {q(beside)}" if who else ""
    script = (
        f"cp {q(staged)} {q(beside)} && chmod {mode:04o} {q(beside)}{chown}"
        f" && mv -f {q(beside)} {q(path)} || {{ rm -f {q(beside)}; exit 1; }}"
    )
    try:
        await _run(shell, script, True, f"cannot write {path}")
    finally:
        await shell.run(f"rm -f {q(staged)}", timeout=60)


async def remove_files(shell: HostShell, paths: Iterable[str], *, become: bool = False) -> None:
    await _run(shell, "rm -f " + " ".join(q(p) for p in paths), become, "cannot remove files")


# --- a directory ---------------------------------------------------------------------------


async def ensure_directory(
    shell: HostShell,
    path: str,
    *,
    mode: int,
    owner: str = "root",
    group: str = "root",
    become: bool = False,
) -> None:
    """A directory with `mode`, `owner` and `group`, created if missing (its parents too)."""
    p = q(path)
    await _run(
        shell,
        f"install -d -m {mode:04o} -o {q(owner)} -g {q(group)} {p} && chmod {mode:04o} {p}"
        f" && chown {q(owner)}:{q(group)} {p}",
        become,
        f"cannot prepare {path}",
    )


# --- a user --------------------------------------------------------------------------------


async def user_exists(shell: HostShell, name: str) -> bool:
    """Probe: whether the host knows the user."""
    done = await shell.run(f"id -u {q(name)} >/dev/null 2>&1", probe=True)
    return done.rc == 0


async def ensure_user(
    shell: HostShell,
    name: str,
    *,
    system: bool = True,
    home: str = "/nonexistent",
    login_shell: str = "/bin/false",
    groups_if_present: Iterable[str] = (),
    become: bool = False,
) -> None:
    """A user (a system user without a home or login by default), in each of
    `groups_if_present` that the host has."""
    who = q(name)
    flags = "--system " if system else ""
    script = (
        f"id -u {who} >/dev/null 2>&1 || useradd {flags}--home-dir {q(home)}"
        f" --shell {q(login_shell)} {who} || exit 1"
    )
    for g in groups_if_present:
        script += (
            f"; if getent group {q(g)} >/dev/null 2>&1; then usermod -aG {q(g)} {who} || exit 1; fi"
        )
    await _run(shell, script, become, f"cannot create user {name}")


# --- a systemd unit ------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitState:
    enabled: str  # what `systemctl is-enabled` says: enabled, disabled, "" (no such unit)...
    active: str  # what `systemctl is-active` says: active, inactive, failed, activating...


async def unit_state(shell: HostShell, unit: str, *, become: bool = False) -> UnitState:
    """Probe: whether the unit is enabled and active."""
    u = q(unit)
    done = await shell.run(
        _as(
            f"printf '%s\\n' \"$(systemctl is-enabled {u} 2>/dev/null)\""
            f' "$(systemctl is-active {u} 2>/dev/null)"',
            become,
        ),
        probe=True,
    )
    enabled, _, active = done.stdout.partition("\n")
    return UnitState(enabled.strip(), active.strip())


async def converge_unit(
    shell: HostShell,
    unit: str,
    have: UnitState,
    *,
    reload: bool = False,
    restart: bool = False,
    become: bool = False,
) -> list[str]:
    """The unit enabled and running: systemd reloaded first when its files changed (`reload`),
    restarted (stop, start) when what it runs changed (`restart` or `reload`), started when it
    was not. Waits out `activating`; what it did, in order (daemon-reload, enable, stop,
    start)."""
    steps: list[tuple[str, str]] = []
    if reload:
        steps.append(("daemon-reload", "systemctl daemon-reload"))
    if have.enabled != "enabled":
        steps.append(("enable", f"systemctl enable {q(unit)}"))
    if have.active == "active" and (restart or reload):
        steps += [("stop", f"systemctl stop {q(unit)}"), ("start", f"systemctl start {q(unit)}")]
    elif have.active != "active" or restart or reload:
        steps.append(("start", f"systemctl start {q(unit)}"))
    done = []
    for what, command in steps:
        await _run(shell, command, become, f"systemctl {what} failed")
        done.append(what)
    # `activating`: a unit still starting (or restarting after a failure) is given a while.
    u = q(unit)
    wait = (
        f'n=0; while [ "$(systemctl is-active {u})" = activating ] && [ $n -lt 100 ];'
        f" do sleep 0.1; n=$((n+1)); done; systemctl is-active {u}"
    )
    result = await shell.run(_as(wait, become), timeout=120)
    if result.stdout.strip() != "active":
        raise StepError(f"{unit} is {result.stdout.strip() or tail(result)} after starting it")
    return done


async def remove_unit(
    shell: HostShell,
    unit: str,
    have: UnitState,
    files: Iterable[str],
    *,
    reload: bool,
    become: bool = False,
) -> None:
    """Stop and disable the unit, delete its `files`, reload systemd when one was there."""
    if have.active == "active":
        await _run(shell, f"systemctl stop {q(unit)}", become, f"systemctl stop {unit} failed")
    if have.enabled == "enabled":
        await shell.run(_as(f"systemctl disable {q(unit)} >/dev/null 2>&1 || true", become))
    await remove_files(shell, files, become=become)
    if reload:
        await _run(shell, "systemctl daemon-reload", become, "systemctl daemon-reload failed")


async def remove_directory(shell: HostShell, path: str, *, become: bool = False) -> None:
    await _run(shell, f"rm -rf {q(path)}", become, f"cannot remove {path}")


async def remove_user(shell: HostShell, name: str, *, become: bool = False) -> None:
    await _run(shell, f"userdel {q(name)}", become, f"cannot remove user {name}")
