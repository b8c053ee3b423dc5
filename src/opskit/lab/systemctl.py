#!/usr/bin/python3
"""systemctl for the lab's hosts, which have no systemd: unit files really start processes.

A lab host is an sshd in its own namespaces with no systemd, so this script stands in for
`/usr/bin/systemctl` there. It reads unit files (/etc/systemd/system, /run/systemd/system,
/lib/systemd/system, /usr/lib/systemd/system; drop-ins in UNIT.d/*.conf) and runs a service's
`ExecStart=` (with `ExecStartPre=`/`ExecStartPost=`/`ExecStop=`/`ExecReload=`) under a small
supervisor, one per unit, detached with setsid: `Environment=`, `EnvironmentFile=`, `User=`,
`Group=`, `SupplementaryGroups=`, `WorkingDirectory=`, `UMask=`, `StandardOutput=`,
`RuntimeDirectory=` and friends, `Restart=` with `RestartSec=` and the start limit, `Type=`
simple/exec/notify/oneshot/forking, `TimeoutStopSec=`, `KillSignal=`. Directives it does not
know (hardening such as ProtectSystem= or NoNewPrivileges=) are accepted and ignored.

State (supervisor and main pids, results, each unit's output) lives in /run/opskit-systemctl,
which is a private tmpfs per lab host: a "reboot" forgets it, like systemd. Enabling makes the
same symlinks systemd makes (/etc/systemd/system/TARGET.wants/UNIT), and `systemctl --lab-boot`,
which the lab runs when a host boots, starts every enabled unit.

Exit codes and messages follow systemd's where callers look at them: `is-active` 0 or 3,
`status` 0, 3 or 4, an unknown unit 5 for start/stop with systemd's wording. For tests the roots
move with environment variables: OPSKIT_SYSTEMCTL_UNIT_PATH (unit directories, ':'-separated;
the first is where enablement links go) and OPSKIT_SYSTEMCTL_STATE_DIR.

Standard library only: any python3 runs it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fnmatch
import grp
import json
import os
import pwd
import re
import secrets
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from typing import IO, Any, NoReturn

DEFAULT_UNIT_PATH = (
    "/etc/systemd/system:/run/systemd/system:/lib/systemd/system:/usr/lib/systemd/system"
)
DEFAULT_STATE_DIR = "/run/opskit-systemctl"
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UNIT_SUFFIXES = (
    ".service",
    ".socket",
    ".device",
    ".mount",
    ".automount",
    ".swap",
    ".target",
    ".path",
    ".timer",
    ".slice",
    ".scope",
)
CLEAN_SIGNALS = {signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE}
VERSION = "systemd 252 (opskit lab stand-in)"

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_NOT_ACTIVE = 3  # is-active, status: the unit is not running
EXIT_NO_UNIT_STATUS = 4  # status: no such unit
EXIT_NO_UNIT = 5  # start, stop, restart: no such unit


class Failure(Exception):
    """A message for stderr and the exit code to end with."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def unit_dirs() -> list[str]:
    raw = os.environ.get("OPSKIT_SYSTEMCTL_UNIT_PATH") or DEFAULT_UNIT_PATH
    seen: set[str] = set()
    out = []
    for entry in raw.split(":"):
        if not entry:
            continue
        real = os.path.realpath(entry)
        if real not in seen:  # /lib is often /usr/lib
            seen.add(real)
            out.append(entry)
    return out


def config_dir() -> str:
    """Where enablement links go: the first unit directory (/etc/systemd/system)."""
    return unit_dirs()[0]


def state_dir() -> str:
    path = os.environ.get("OPSKIT_SYSTEMCTL_STATE_DIR") or DEFAULT_STATE_DIR
    os.makedirs(path, mode=0o755, exist_ok=True)
    return path


def unit_name(name: str) -> str:
    """systemctl's name mangling: a bare name is a service."""
    name = os.path.basename(name)
    return name if name.endswith(UNIT_SUFFIXES) else f"{name}.service"


# --- time spans --------------------------------------------------------------------------------

_SPAN_UNITS = {
    "us": 1e-6,
    "usec": 1e-6,
    "ms": 1e-3,
    "msec": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}


def timespan(text: str | None, default: float) -> float:
    """systemd.time(7) spans: '90', '5s', '1min 30s', '500ms', 'infinity'."""
    if text is None or not text.strip():
        return default
    text = text.strip()
    if text == "infinity":
        return float("inf")
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text)
    if not parts:
        return default
    for number, suffix in parts:
        total += float(number) * _SPAN_UNITS.get(suffix or "s", 1.0)
    return total


# --- unit files --------------------------------------------------------------------------------


@dataclass
class Unit:
    """A unit as loaded: its file (None when not found), sections of key -> values."""

    name: str
    path: str | None = None
    masked: bool = False
    sections: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @property
    def found(self) -> bool:
        return self.path is not None

    @property
    def is_service(self) -> bool:
        return self.name.endswith(".service")

    def values(self, section: str, key: str) -> list[str]:
        return list(self.sections.get(section, {}).get(key, []))

    def get(self, section: str, key: str, default: str | None = None) -> str | None:
        values = self.values(section, key)
        return values[-1] if values else default

    def flag(self, section: str, key: str, default: bool = False) -> bool:
        value = self.get(section, key)
        if value is None:
            return default
        return value.strip().lower() in ("1", "yes", "true", "on")

    def specifiers(self, text: str) -> str:
        """%n, %N, %p, %i, %I, %t, %H, %%: the specifiers units commonly use."""
        stem = self.name.rsplit(".", 1)[0]
        prefix, _, instance = stem.partition("@")
        table = {
            "n": self.name,
            "N": stem,
            "p": prefix,
            "i": instance,
            "I": instance,
            "t": "/run",
            "H": socket.gethostname(),
            "%": "%",
        }
        return re.sub(r"%(.)", lambda m: table.get(m.group(1), m.group(0)), text)


def _parse_into(unit: Unit, path: str) -> None:
    with open(path, encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    section = ""
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            unit.sections.setdefault(section, {})
            continue
        key, eq, value = line.partition("=")
        if not eq:
            continue
        values = unit.sections.setdefault(section, {}).setdefault(key.strip(), [])
        value = value.strip()
        if value == "":
            values.clear()  # an empty assignment resets a list setting
        else:
            values.append(value)


def _template_of(name: str) -> str | None:
    stem, dot, suffix = name.rpartition(".")
    if "@" in stem and not stem.endswith("@"):
        return stem.split("@", 1)[0] + "@" + dot + suffix
    return None


def load_unit(name: str) -> Unit:
    name = unit_name(name)
    unit = Unit(name)
    candidates = [name]
    template = _template_of(name)
    if template:
        candidates.append(template)
    for candidate in candidates:
        for directory in unit_dirs():
            path = os.path.join(directory, candidate)
            if os.path.islink(path) and os.path.realpath(path) == "/dev/null":
                unit.masked = True
                unit.path = path
                return unit
            if os.path.isfile(path):
                unit.path = path
                _parse_into(unit, path)
                break
        if unit.path:
            break
    if unit.path is None:
        return unit
    dropins: dict[str, str] = {}
    for candidate in reversed(candidates):
        for directory in reversed(unit_dirs()):  # later entries win: the first dir overrides
            folder = os.path.join(directory, candidate + ".d")
            if os.path.isdir(folder):
                for entry in os.listdir(folder):
                    if entry.endswith(".conf"):
                        dropins[entry] = os.path.join(folder, entry)
    for entry in sorted(dropins):
        _parse_into(unit, dropins[entry])
    return unit


def known_units() -> list[str]:
    names: set[str] = set()
    for directory in unit_dirs():
        with contextlib.suppress(OSError):
            for entry in os.listdir(directory):
                if entry.endswith(UNIT_SUFFIXES) and not entry.endswith("@.service"):
                    names.add(entry)
    with contextlib.suppress(OSError):
        for entry in os.listdir(state_dir()):
            if entry.endswith(".json"):
                names.add(entry[: -len(".json")])
    return sorted(names)


def expand(patterns: list[str]) -> list[str]:
    out: list[str] = []
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            out.extend(n for n in known_units() if fnmatch.fnmatch(n, pattern))
        else:
            out.append(unit_name(pattern))
    return out


# --- enablement --------------------------------------------------------------------------------


def _install_targets(unit: Unit) -> list[tuple[str, str]]:
    """(TARGET.wants or TARGET.requires, target) pairs of the unit's [Install] section."""
    out = []
    for key, kind in (("WantedBy", "wants"), ("RequiredBy", "requires")):
        for value in unit.values("Install", key):
            for target in unit.specifiers(value).split():
                out.append((f"{target}.{kind}", target))
    return out


def _enablement_links(name: str) -> list[str]:
    found = []
    base = config_dir()
    with contextlib.suppress(OSError):
        for entry in os.listdir(base):
            if entry.endswith((".wants", ".requires")):
                link = os.path.join(base, entry, name)
                if os.path.lexists(link):
                    found.append(link)
    return found


def unit_file_state(unit: Unit) -> str:
    if unit.masked:
        return "masked"
    if not unit.found:
        return ""
    if _enablement_links(unit.name):
        return "enabled"
    if _install_targets(unit) or unit.values("Install", "Alias"):
        return "disabled"
    return "static"


def enable(unit: Unit) -> list[str]:
    if not unit.found or unit.masked:
        what = "is masked" if unit.masked else "does not exist"
        raise Failure(f"Failed to enable unit: Unit file {unit.name} {what}.")
    said = []
    assert unit.path is not None
    source = os.path.realpath(unit.path)
    for folder, _ in _install_targets(unit):
        link = os.path.join(config_dir(), folder, unit.name)
        if os.path.lexists(link):
            continue
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(source, link)
        said.append(f"Created symlink {link} → {source}.")
    if not _install_targets(unit):
        said.append(
            f"The unit files have no installation config (WantedBy=, RequiredBy=, Alias=\n"
            f"settings in the [Install] section): {unit.name} is static."
        )
    return said


def disable(unit: Unit) -> list[str]:
    said = []
    for link in _enablement_links(unit.name):
        os.unlink(link)
        said.append(f"Removed {link}.")
    return said


# --- processes ---------------------------------------------------------------------------------


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks, or None when it is gone (zombies included)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def alive(ref: list[int] | None) -> bool:
    """Whether [pid, start time] is still that process."""
    if not ref:
        return False
    return start_time(ref[0]) == ref[1]


def ref_of(pid: int) -> list[int] | None:
    started = start_time(pid)
    return None if started is None else [pid, started]


def kill_group(pgid: int, sig: int) -> None:
    """Signal a process group (a service runs in its own: its pid is the group's id)."""
    with contextlib.suppress(OSError):
        os.killpg(pgid, sig)


def signal_ref(ref: list[int] | None, sig: int) -> None:
    """Signal a process and its group, if [pid, start time] is still that process."""
    if ref and alive(ref):
        kill_group(ref[0], sig)
        with contextlib.suppress(OSError):
            os.kill(ref[0], sig)


def wait_gone(ref: list[int] | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(ref):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# --- state files -------------------------------------------------------------------------------


def state_path(name: str, suffix: str = ".json") -> str:
    return os.path.join(state_dir(), name + suffix)


def read_state(name: str) -> dict[str, Any]:
    try:
        with open(state_path(name), encoding="utf-8") as handle:
            data: dict[str, Any] = json.load(handle)
            return data
    except (OSError, ValueError):
        return {}


def write_state(name: str, **changes: Any) -> dict[str, Any]:
    state = read_state(name)
    state.update(changes)
    temporary = state_path(name, f".json.{os.getpid()}")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(state, handle)
    os.replace(temporary, state_path(name))
    return state


@contextlib.contextmanager
def unit_lock(name: str) -> Iterator[None]:
    import fcntl

    with open(state_path(name, ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def active_state(name: str) -> tuple[str, str]:
    """(ActiveState, SubState), checked against the processes the state file names."""
    state = read_state(name)
    active = state.get("active", "inactive")
    sub = state.get("sub", "dead")
    if active in ("active", "activating", "deactivating", "reloading"):
        supervised = alive(state.get("supervisor")) or alive(state.get("main"))
        if not supervised and sub != "exited":
            return "failed", "failed"  # the supervisor died without saying so
    return active, sub


# --- services: what a unit's [Service] says --------------------------------------------------


@dataclass
class Command:
    argv: list[str]
    ignore_failure: bool = False


@dataclass
class Service:
    unit: Unit
    kind: str
    env: dict[str, str]
    user: pwd.struct_passwd | None
    gid: int | None
    groups: list[int] | None
    cwd: str | None
    umask: int | None
    restart: str
    restart_sec: float
    stop_timeout: float
    kill_signal: int
    success_codes: set[int]
    output: str

    @classmethod
    def of(cls, unit: Unit) -> Service:
        s = "Service"
        user_name = unit.get(s, "User")
        user = None
        gid = None
        groups: list[int] | None = None
        if user_name:
            user_name = unit.specifiers(user_name)
            try:
                user = (
                    pwd.getpwnam(user_name)
                    if not user_name.isdigit()
                    else pwd.getpwuid(int(user_name))
                )
            except KeyError:
                raise Failure(f"{unit.name}: User={user_name}: no such user") from None
            gid = user.pw_gid
        group_name = unit.get(s, "Group")
        if group_name:
            try:
                gid = (
                    grp.getgrnam(group_name).gr_gid if not group_name.isdigit() else int(group_name)
                )
            except KeyError:
                raise Failure(f"{unit.name}: Group={group_name}: no such group") from None
        if user is not None:
            groups = os.getgrouplist(user.pw_name, gid if gid is not None else user.pw_gid)
        extra = [g for v in unit.values(s, "SupplementaryGroups") for g in v.split()]
        for name in extra:
            try:
                number = grp.getgrnam(name).gr_gid if not name.isdigit() else int(name)
            except KeyError:
                raise Failure(f"{unit.name}: SupplementaryGroups: no group {name}") from None
            groups = [*(groups or []), number]
        cwd = unit.get(s, "WorkingDirectory")
        if cwd is not None:
            cwd = unit.specifiers(cwd)
        umask = unit.get(s, "UMask")
        success = {0}
        for value in unit.values(s, "SuccessExitStatus"):
            success.update(int(v) for v in value.split() if v.isdigit())
        kill = unit.get(s, "KillSignal", "SIGTERM") or "SIGTERM"
        kill_signal = getattr(signal, kill if kill.startswith("SIG") else f"SIG{kill}", None)
        service = cls(
            unit=unit,
            kind=(unit.get(s, "Type") or "simple").strip(),
            env={},
            user=user,
            gid=gid,
            groups=groups,
            cwd=cwd,
            umask=int(umask, 8) if umask else None,
            restart=(unit.get(s, "Restart") or "no").strip(),
            restart_sec=timespan(unit.get(s, "RestartSec"), 0.1),
            stop_timeout=timespan(unit.get(s, "TimeoutStopSec") or unit.get(s, "TimeoutSec"), 10.0),
            kill_signal=int(kill_signal or signal.SIGTERM),
            success_codes=success,
            output=(unit.get(s, "StandardOutput") or "inherit").strip(),
        )
        service.env = service.environment()
        return service

    def environment(self) -> dict[str, str]:
        """What the service's processes see: systemd's clean environment, not the caller's."""
        env = {"PATH": SERVICE_PATH, "INVOCATION_ID": secrets.token_hex(16)}
        if "LANG" in os.environ:
            env["LANG"] = os.environ["LANG"]
        if self.user is not None:
            env.update(
                HOME=self.user.pw_dir,
                USER=self.user.pw_name,
                LOGNAME=self.user.pw_name,
                SHELL=self.user.pw_shell or "/bin/sh",
            )
        for value in self.unit.values("Service", "Environment"):
            for item in shlex.split(self.unit.specifiers(value)):
                key, eq, val = item.partition("=")
                if eq and key:
                    env[key] = val
        for value in self.unit.values("Service", "EnvironmentFile"):
            optional = value.startswith("-")
            path = self.unit.specifiers(value.lstrip("-").strip())
            try:
                with open(path, encoding="utf-8", errors="replace") as handle:
                    lines = handle.read().splitlines()
            except OSError as exc:
                if optional:
                    continue
                raise Failure(f"{self.unit.name}: EnvironmentFile={path}: {exc.strerror}") from None
            env.update(_environment_file(lines))
        for value in self.unit.values("Service", "PassEnvironment"):
            for key in value.split():
                if key in os.environ:
                    env[key] = os.environ[key]
        for value in self.unit.values("Service", "UnsetEnvironment"):
            for key in value.split():
                env.pop(key.partition("=")[0], None)
        return env

    def commands(self, key: str, extra: dict[str, str] | None = None) -> list[Command]:
        env = {**self.env, **(extra or {})}
        return [
            _command(self.unit.specifiers(value), env) for value in self.unit.values("Service", key)
        ]

    def directories(self) -> None:
        """RuntimeDirectory= and friends: made, owned by the service's user, named in env."""
        bases = {
            "RuntimeDirectory": ("/run", "RUNTIME_DIRECTORY"),
            "StateDirectory": ("/var/lib", "STATE_DIRECTORY"),
            "CacheDirectory": ("/var/cache", "CACHE_DIRECTORY"),
            "LogsDirectory": ("/var/log", "LOGS_DIRECTORY"),
            "ConfigurationDirectory": ("/etc", "CONFIGURATION_DIRECTORY"),
        }
        for key, (base, variable) in bases.items():
            made = []
            for value in self.unit.values("Service", key):
                for name in value.split():
                    path = os.path.join(base, self.unit.specifiers(name))
                    os.makedirs(path, mode=0o755, exist_ok=True)
                    if self.user is not None and key != "ConfigurationDirectory":
                        os.chown(path, self.user.pw_uid, self.gid if self.gid is not None else -1)
                    made.append(path)
            if made:
                self.env[variable] = ":".join(made)

    def popen(self, argv: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
        """Start one of the service's processes, as its user, in its own process group."""
        options = self.popen_options(log)
        try:
            return subprocess.Popen(argv, **options)
        finally:
            if options["stdout"] is not log and hasattr(options["stdout"], "close"):
                options["stdout"].close()  # the child has it

    def popen_options(self, log: IO[bytes]) -> dict[str, Any]:
        options: dict[str, Any] = {
            "env": self.env,
            "stdin": subprocess.DEVNULL,
            "stdout": log,
            "stderr": log,
            "close_fds": True,
            "process_group": 0,  # its own group: stop signals the whole group
        }
        if self.output in ("null",):
            options["stdout"] = subprocess.DEVNULL
        elif self.output.startswith(("file:", "append:", "truncate:")):
            how, _, path = self.output.partition(":")
            mode = {"file": "wb", "append": "ab", "truncate": "wb"}[how]
            options["stdout"] = open(path, mode)  # noqa: SIM115 - closed once the child has it
        if self.user is not None:
            options["user"] = self.user.pw_uid
            options["extra_groups"] = self.groups or []
        if self.gid is not None:
            options["group"] = self.gid
        if self.umask is not None:
            options["umask"] = self.umask
        if self.cwd:
            optional = self.cwd.startswith("-")
            cwd = self.cwd.lstrip("-")
            if cwd == "~":
                cwd = self.user.pw_dir if self.user is not None else "/root"
            if os.path.isdir(cwd):
                options["cwd"] = cwd
            elif not optional:
                raise Failure(f"{self.unit.name}: WorkingDirectory={cwd}: no such directory")
        return options

    def should_restart(self, clean: bool, signaled: bool) -> bool:
        policy = self.restart
        if policy == "always":
            return True
        if policy == "on-success":
            return clean
        if policy == "on-failure":
            return not clean
        if policy in ("on-abnormal", "on-abort"):
            return signaled and not clean
        return False


def _environment_file(lines: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for raw in lines:
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("export "):
            line = line[len("export ") :].strip()
        key, eq, value = line.partition("=")
        if not eq:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def _command(line: str, env: dict[str, str]) -> Command:
    """One Exec*= line: its prefixes (-, @, :, +, !), words, $VAR and ${VAR} from env."""
    ignore = False
    argv0 = None
    substitute = True
    while line and line[0] in "-@:+!":
        if line[0] == "-":
            ignore = True
        elif line[0] == ":":
            substitute = False
        elif line[0] == "@":
            argv0 = True
        line = line[1:]
    words = shlex.split(line)
    argv: list[str] = []
    for word in words:
        if substitute:
            whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
            if whole:
                argv.extend(env.get(whole.group(1), "").split())
                continue
            word = re.sub(
                r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word
            )
        argv.append(word)
    if argv0 and len(argv) >= 2:
        argv = [argv[0], *argv[2:]]  # the executable; argv[0] override is not kept
    if argv and not argv[0].startswith("/"):
        found = shutil.which(argv[0], path=env.get("PATH", SERVICE_PATH))
        if found:
            argv[0] = found
    return Command(argv, ignore)


def run_sync(service: Service, command: Command, log: IO[bytes], timeout: float | None) -> int:
    """An ExecStartPre/Post/Stop/Reload or oneshot command, run to its end."""
    if not command.argv:
        return 0
    try:
        process = service.popen(command.argv, log)
    except OSError as exc:
        log.write(f"{command.argv[0]}: {exc.strerror}\n".encode())
        log.flush()
        return 0 if command.ignore_failure else 203
    try:
        code = process.wait(timeout=None if timeout == float("inf") else timeout)
    except subprocess.TimeoutExpired:
        kill_group(process.pid, signal.SIGKILL)
        process.wait()
        return 0 if command.ignore_failure else 1
    return 0 if command.ignore_failure else (code if code >= 0 else 128 - code)


# --- the supervisor ----------------------------------------------------------------------------


class StopRequested(Exception):
    pass


class Supervisor:
    """Runs one service: starts it, waits on it, restarts it by its policy, stops it on SIGTERM.

    It reports the start's result to the `systemctl start` that spawned it on a pipe, then keeps
    the state file up to date."""

    def __init__(self, name: str, report_fd: int) -> None:
        self.name = name
        self.report = os.fdopen(report_fd, "w", encoding="utf-8")
        self.stopping = False
        self.interruptible = False
        self.main: subprocess.Popen[bytes] | None = None
        self.main_ref: list[int] | None = None  # the supervised process (forking: its PIDFile)
        self.log = open(state_path(name, ".log"), "ab")  # noqa: SIM115 - for the whole run

    def say(self, **message: Any) -> None:
        if not self.report.closed:
            with contextlib.suppress(OSError):
                self.report.write(json.dumps(message) + "\n")
                self.report.close()

    def on_term(self, signum: int, frame: Any) -> None:
        self.stopping = True
        if self.interruptible:
            raise StopRequested

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_term)
        signal.signal(signal.SIGINT, self.on_term)
        _become_subreaper()
        me = ref_of(os.getpid())
        write_state(
            self.name,
            active="activating",
            sub="start",
            supervisor=me,
            main=None,
            result="success",
            since=time.time(),
        )
        try:
            unit = load_unit(self.name)
            service = Service.of(unit)
            service.directories()
        except (Failure, OSError) as exc:
            return self.failed(str(exc), "resources")
        for command in service.commands("ExecStartPre"):
            if run_sync(service, command, self.log, service.stop_timeout) != 0:
                return self.failed(f"ExecStartPre {shlex.join(command.argv)} failed", "exit-code")
        if service.kind == "oneshot":
            return self.oneshot(service)
        restarts: list[float] = []
        burst = int(
            unit.get("Unit", "StartLimitBurst") or unit.get("Service", "StartLimitBurst") or 5
        )
        interval = timespan(
            unit.get("Unit", "StartLimitIntervalSec") or unit.get("Service", "StartLimitInterval"),
            10.0,
        )
        first = True
        while True:
            try:
                self.spawn(service)
            except (Failure, OSError, subprocess.SubprocessError) as exc:
                message = getattr(exc, "strerror", None) or str(exc)
                return self.failed(f"{self.name}: cannot run ExecStart: {message}", "exit-code")
            assert self.main is not None
            if first:
                self.say(ok=True, pid=self.main.pid)
                first = False
                for command in service.commands("ExecStartPost", {"MAINPID": str(self.main.pid)}):
                    run_sync(service, command, self.log, service.stop_timeout)
            try:
                code = self.wait_main()
            except StopRequested:
                return self.stop(service)
            signaled = code < 0
            clean = (not signaled and code in service.success_codes) or (
                signaled and -code in CLEAN_SIGNALS
            )
            kill_group(self.main.pid, signal.SIGTERM)  # what it left in its group goes too
            status = {
                "exit_code": code if code >= 0 else None,
                "exit_signal": -code if signaled else None,
            }
            if self.stopping:
                return self.stop(service)
            if not service.should_restart(clean, signaled):
                result = "success" if clean else ("signal" if signaled else "exit-code")
                write_state(
                    self.name,
                    active="inactive" if clean else "failed",
                    sub="dead" if clean else "failed",
                    main=None,
                    result=result,
                    since=time.time(),
                    **status,
                )
                return 0
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < interval] + [now]
            if len(restarts) > burst:
                write_state(
                    self.name,
                    active="failed",
                    sub="failed",
                    main=None,
                    result="start-limit-hit",
                    since=time.time(),
                    **status,
                )
                return 0
            count = int(read_state(self.name).get("restarts", 0)) + 1
            write_state(
                self.name,
                active="activating",
                sub="auto-restart",
                main=None,
                restarts=count,
                restart_times=restarts,
                **status,
            )
            try:
                self.interruptible = True
                if self.stopping:
                    raise StopRequested
                time.sleep(service.restart_sec)
                self.interruptible = False
            except StopRequested:
                self.interruptible = False
                write_state(self.name, active="inactive", sub="dead", main=None, since=time.time())
                return 0

    def spawn(self, service: Service) -> None:
        commands = service.commands("ExecStart")
        if not commands or not commands[0].argv:
            raise Failure("no ExecStart=")
        self.main = service.popen(commands[0].argv, self.log)
        main = self.main.pid
        if service.kind == "forking":
            code = self.main.wait()
            if code != 0:
                raise Failure(f"the forking ExecStart exited {code}")
            pid_file = service.unit.get("Service", "PIDFile")
            if pid_file:
                path = service.unit.specifiers(pid_file)
                with contextlib.suppress(OSError, ValueError), open(path, encoding="ascii") as f:
                    main = int(f.read().strip())
        write_state(self.name, active="active", sub="running", main=ref_of(main), since=time.time())
        self.main_ref = ref_of(main)

    def wait_main(self) -> int:
        """The main process's exit: code >= 0, or -signal. Raises StopRequested on SIGTERM."""
        assert self.main is not None
        self.interruptible = True
        try:
            if self.stopping:
                raise StopRequested
            if self.main.returncode is not None:  # forking: its child is polled
                while alive(self.main_ref):
                    time.sleep(0.2)
                return 0
            return self.main.wait()
        finally:
            self.interruptible = False

    def stop(self, service: Service) -> int:
        write_state(self.name, active="deactivating", sub="stop")
        ref = self.main_ref
        main_pid = ref[0] if ref else 0
        for command in service.commands("ExecStop", {"MAINPID": str(main_pid)}):
            run_sync(service, command, self.log, service.stop_timeout)
        if self.main is not None:
            signal_ref(ref, service.kill_signal)
            if self.main.returncode is None:
                kill_group(self.main.pid, service.kill_signal)
            deadline = time.monotonic() + min(service.stop_timeout, 3600.0)
            while self.main.poll() is None or alive(ref):
                if time.monotonic() > deadline:
                    signal_ref(ref, signal.SIGKILL)
                    if self.main.returncode is None:
                        kill_group(self.main.pid, signal.SIGKILL)
                    self.main.wait()
                    break
                time.sleep(0.02)
            kill_group(self.main.pid, signal.SIGKILL)  # leftovers in its group
        _reap_children()
        for command in service.commands("ExecStopPost"):
            run_sync(service, command, self.log, service.stop_timeout)
        write_state(
            self.name, active="inactive", sub="dead", main=None, result="success", since=time.time()
        )
        return 0

    def oneshot(self, service: Service) -> int:
        for command in service.commands("ExecStart"):
            code = run_sync(service, command, self.log, None)
            if code != 0:
                return self.failed(f"{shlex.join(command.argv)} exited {code}", "exit-code")
        for command in service.commands("ExecStartPost"):
            run_sync(service, command, self.log, service.stop_timeout)
        if service.unit.flag("Service", "RemainAfterExit"):
            write_state(
                self.name,
                active="active",
                sub="exited",
                main=None,
                supervisor=None,
                since=time.time(),
            )
        else:
            write_state(
                self.name,
                active="inactive",
                sub="dead",
                main=None,
                supervisor=None,
                since=time.time(),
            )
        self.say(ok=True, pid=0)
        return 0

    def failed(self, message: str, result: str) -> int:
        self.log.write(f"{message}\n".encode())
        self.log.flush()
        write_state(
            self.name,
            active="failed",
            sub="failed",
            main=None,
            result=result,
            since=time.time(),
            error=message,
        )
        self.say(ok=False, error=message)
        return 1


def _become_subreaper() -> None:
    """Orphans of the service become the supervisor's children, so stop can reap them."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _reap_children() -> None:
    with contextlib.suppress(ChildProcessError):
        while True:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return


# --- the verbs ---------------------------------------------------------------------------------


def _need_service(unit: Unit, verb: str) -> None:
    if unit.masked:
        raise Failure(f"Failed to {verb} {unit.name}: Unit {unit.name} is masked.")
    if not unit.found:
        raise Failure(f"Failed to {verb} {unit.name}: Unit {unit.name} not found.", EXIT_NO_UNIT)
    if not unit.is_service:
        raise Failure(f"Failed to {verb} {unit.name}: the lab's systemctl runs services only.")


def start(name: str) -> None:
    unit = load_unit(name)
    _need_service(unit, "start")
    with unit_lock(unit.name):
        active, _ = active_state(unit.name)
        if active in ("active", "activating", "reloading"):
            return
        read_end, write_end = os.pipe()
        log = open(state_path(unit.name, ".log"), "ab")  # noqa: SIM115
        try:
            subprocess.Popen(
                [
                    sys.executable,
                    os.path.abspath(__file__),
                    "--supervise",
                    unit.name,
                    str(write_end),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(write_end,),
                close_fds=True,
                start_new_session=True,
            )
        finally:
            os.close(write_end)
            log.close()
        unit_timeout = timespan(
            unit.get("Service", "TimeoutStartSec") or unit.get("Service", "TimeoutSec"), 90.0
        )
        reply = _read_reply(read_end, unit_timeout)
    if not reply.get("ok"):
        kind = (
            "a timeout was exceeded"
            if reply.get("timeout")
            else ("the control process exited with error code")
        )
        raise Failure(
            f"Job for {unit.name} failed because {kind}.\n"
            f'See "systemctl status {unit.name}" and "journalctl -xeu {unit.name}" for details.'
        )


def _read_reply(fd: int, timeout: float) -> dict[str, Any]:
    data = b""
    deadline = time.monotonic() + min(timeout, 3600.0)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return {"ok": False, "timeout": True}
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    try:
        reply: dict[str, Any] = json.loads(data.decode() or "{}")
    except ValueError:
        return {"ok": False}
    return reply


def stop(name: str, *, quiet_missing: bool = False) -> None:
    unit = load_unit(name)
    state = read_state(unit.name)
    if not unit.found and not state:
        if quiet_missing:
            return
        raise Failure(f"Failed to stop {unit.name}: Unit {unit.name} not loaded.", EXIT_NO_UNIT)
    with unit_lock(unit.name):
        state = read_state(unit.name)
        supervisor = state.get("supervisor")
        main = state.get("main")
        timeout = 10.0
        if unit.found and not unit.masked:
            with contextlib.suppress(Failure):
                timeout = Service.of(unit).stop_timeout
        if supervisor and alive(supervisor):
            os.kill(supervisor[0], signal.SIGTERM)
            if not wait_gone(supervisor, min(timeout, 3600.0) + 5):
                signal_ref(supervisor, signal.SIGKILL)
                wait_gone(supervisor, 5)
        if alive(main):  # the supervisor is gone but left its service behind
            signal_ref(main, signal.SIGTERM)
            if not wait_gone(main, min(timeout, 3600.0)):
                signal_ref(main, signal.SIGKILL)
                wait_gone(main, 5)
        if state.get("sub") == "exited" and unit.found and not unit.masked:
            service = Service.of(unit)
            with open(state_path(unit.name, ".log"), "ab") as log:
                for command in service.commands("ExecStop"):
                    run_sync(service, command, log, service.stop_timeout)
        if state:
            write_state(
                unit.name,
                active="inactive",
                sub="dead",
                main=None,
                supervisor=None,
                since=time.time(),
            )


def restart(name: str) -> None:
    unit = load_unit(name)
    _need_service(unit, "restart")
    stop(name, quiet_missing=True)
    start(name)


def reload(name: str) -> None:
    unit = load_unit(name)
    _need_service(unit, "reload")
    active, _ = active_state(unit.name)
    if active != "active":
        raise Failure(f"{unit.name} is not active, cannot reload.")
    service = Service.of(unit)
    main = read_state(unit.name).get("main") or [0]
    commands = service.commands("ExecReload", {"MAINPID": str(main[0])})
    if not commands:
        raise Failure(
            f"Failed to reload {unit.name}: Job type reload is not applicable for unit {unit.name}."
        )
    with open(state_path(unit.name, ".log"), "ab") as log:
        for command in commands:
            if run_sync(service, command, log, service.stop_timeout) != 0:
                raise Failure(
                    f"Job for {unit.name} failed because the control process exited with error"
                    " code."
                )


def properties(unit: Unit) -> dict[str, str]:
    state = read_state(unit.name)
    active, sub = active_state(unit.name) if unit.found or state else ("inactive", "dead")
    load = "masked" if unit.masked else ("loaded" if unit.found else "not-found")
    main = state.get("main") if active in ("active", "reloading", "deactivating") else None
    s = "Service"
    props = {
        "Id": unit.name,
        "Names": unit.name,
        "Description": unit.get("Unit", "Description") or unit.name,
        "LoadState": load,
        "ActiveState": active,
        "SubState": sub,
        "UnitFileState": unit_file_state(unit),
        "FragmentPath": unit.path or "" if not unit.masked else "",
        "MainPID": str(main[0] if main else 0),
        "ExecMainPID": str(main[0] if main else 0),
        "ExecMainStatus": str(state.get("exit_code") or 0),
        "Result": state.get("result", "success"),
        "NRestarts": str(state.get("restarts", 0)),
        "Type": unit.get(s, "Type") or "simple",
        "Restart": unit.get(s, "Restart") or "no",
        "User": unit.get(s, "User") or "",
        "Group": unit.get(s, "Group") or "",
        "WorkingDirectory": unit.get(s, "WorkingDirectory") or "",
        "ActiveEnterTimestamp": _timestamp(state.get("since")) if active == "active" else "",
        "StateChangeTimestamp": _timestamp(state.get("since")),
        "CanStart": "yes" if unit.found and unit.is_service and not unit.masked else "no",
        "CanStop": "yes" if unit.found and unit.is_service else "no",
        "CanReload": "yes" if unit.values(s, "ExecReload") else "no",
    }
    return props


def _timestamp(value: Any) -> str:
    if not isinstance(value, int | float):
        return ""
    return time.strftime("%a %Y-%m-%d %H:%M:%S %Z", time.localtime(value))


def show(names: list[str], wanted: list[str], value_only: bool) -> str:
    blocks = []
    for name in names:
        props = properties(load_unit(name))
        keys = wanted or list(props)
        lines = []
        for key in keys:
            value = props.get(key, "")
            lines.append(value if value_only else f"{key}={value}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def status(name: str) -> tuple[str, int]:
    unit = load_unit(name)
    state = read_state(unit.name)
    if not unit.found and not state:
        raise Failure(f"Unit {unit.name} could not be found.", EXIT_NO_UNIT_STATUS)
    props = properties(unit)
    active, sub = props["ActiveState"], props["SubState"]
    mark = "●" if active == "active" else ("×" if active == "failed" else "○")
    file_state = props["UnitFileState"] or "n/a"
    lines = [
        f"{mark} {unit.name} - {props['Description']}",
        f"     Loaded: {props['LoadState']} ({props['FragmentPath'] or '/dev/null'}; {file_state})",
        f"     Active: {active} ({sub})"
        + (f" since {props['StateChangeTimestamp']}" if props["StateChangeTimestamp"] else ""),
    ]
    if props["MainPID"] != "0":
        lines.append(f"   Main PID: {props['MainPID']}")
    if state.get("error"):
        lines.append(f"      Error: {state['error']}")
    tail = _log_tail(unit.name, 10)
    if tail:
        lines += ["", *tail]
    return "\n".join(lines), (EXIT_OK if active == "active" else EXIT_NOT_ACTIVE)


def _log_tail(name: str, count: int) -> list[str]:
    try:
        with open(state_path(name, ".log"), "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 16384))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return []
    return text.splitlines()[-count:]


def lab_boot() -> int:
    """Start every enabled unit, those named in After= of another first."""
    wanted: set[str] = set()
    base = config_dir()
    with contextlib.suppress(OSError):
        for entry in os.listdir(base):
            if entry.endswith((".wants", ".requires")):
                for name in os.listdir(os.path.join(base, entry)):
                    if name.endswith(".service"):
                        wanted.add(name)
    order: TopologicalSorter[str] = TopologicalSorter()
    for name in sorted(wanted):
        unit = load_unit(name)
        after = [a for v in unit.values("Unit", "After") for a in v.split() if a in wanted]
        order.add(name, *after)
    try:
        names = list(order.static_order())
    except CycleError:
        names = sorted(wanted)
    code = EXIT_OK
    for name in names:
        try:
            start(name)
            print(f"started {name}")
        except Failure as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            code = EXIT_FAILURE
    return code


def list_units(names: list[str]) -> str:
    rows = [("UNIT", "LOAD", "ACTIVE", "SUB", "DESCRIPTION")]
    for name in names or known_units():
        props = properties(load_unit(name))
        rows.append(
            (
                name,
                props["LoadState"],
                props["ActiveState"],
                props["SubState"],
                props["Description"],
            )
        )
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(r[i].ljust(width[i]) for i in range(4)) + "  " + r[4] for r in rows)


def list_unit_files() -> str:
    rows = [("UNIT FILE", "STATE")]
    for name in known_units():
        rows.append((name, unit_file_state(load_unit(name)) or "-"))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{r[0].ljust(width)}  {r[1]}" for r in rows)


def cat(name: str) -> str:
    unit = load_unit(name)
    if not unit.found or unit.path is None:
        raise Failure(f"No files found for {unit.name}.")
    with open(unit.path, encoding="utf-8", errors="replace") as handle:
        return f"# {unit.path}\n{handle.read()}"


def kill(name: str, sig: int) -> None:
    unit = load_unit(name)
    main = read_state(unit.name).get("main")
    if not alive(main):
        raise Failure(f"Failed to kill unit {unit.name}: No main process to kill")
    signal_ref(main, sig)


# --- command line ------------------------------------------------------------------------------

IGNORED_FLAGS = {
    "--no-pager",
    "--no-block",
    "--system",
    "--full",
    "-l",
    "--no-legend",
    "--plain",
    "--no-ask-password",
    "--no-reload",
    "--force",
    "-f",
    "--all",
    "-a",
    "--quiet",
    "-q",
    "--show-types",
    "--failed",
}


@dataclass
class Options:
    verb: str = "list-units"
    args: list[str] = field(default_factory=list)
    properties: list[str] = field(default_factory=list)
    value: bool = False
    quiet: bool = False
    now: bool = False
    signal: int = signal.SIGTERM


def parse_args(argv: list[str]) -> Options:
    opts = Options()
    words: list[str] = []
    items = iter(argv)
    for arg in items:
        if arg in ("-p", "--property"):
            opts.properties += next(items, "").split(",")
        elif arg.startswith("--property="):
            opts.properties += arg.partition("=")[2].split(",")
        elif arg.startswith("-p") and len(arg) > 2 and not arg.startswith("--"):
            opts.properties += arg[2:].split(",")
        elif arg == "--value":
            opts.value = True
        elif arg in ("-q", "--quiet"):
            opts.quiet = True
        elif arg == "--now":
            opts.now = True
        elif arg in ("-s", "--signal"):
            opts.signal = _signal(next(items, "SIGTERM"))
        elif arg.startswith("--signal="):
            opts.signal = _signal(arg.partition("=")[2])
        elif arg in ("-n", "--lines", "-t", "--type", "--state", "-o", "--output"):
            next(items, None)
        elif arg == "--user":
            raise Failure("Failed to connect to bus: the lab's systemctl has no user manager")
        elif arg in IGNORED_FLAGS or (arg.startswith("--") and "=" in arg):
            continue
        elif arg.startswith("-") and arg != "-":
            raise Failure(f"systemctl: unrecognized option '{arg}'")
        else:
            words.append(arg)
    if words:
        opts.verb, opts.args = words[0], words[1:]
    opts.properties = [p for p in opts.properties if p]
    return opts


def _signal(name: str) -> int:
    if name.isdigit():
        return int(name)
    found = getattr(signal, name if name.startswith("SIG") else f"SIG{name}", None)
    if found is None:
        raise Failure(f"Failed to parse signal string {name}.")
    return int(found)


def _need_units(opts: Options) -> list[str]:
    if not opts.args:
        raise Failure(f"Too few arguments: {opts.verb} needs a unit name.")
    return expand(opts.args)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--supervise"]:
        return Supervisor(argv[1], int(argv[2])).run()
    if argv[:1] == ["--lab-boot"]:
        return lab_boot()
    if argv[:1] == ["--version"]:
        print(VERSION)
        return EXIT_OK
    opts = parse_args(argv)
    verb = opts.verb
    if verb in (
        "start",
        "stop",
        "restart",
        "try-restart",
        "reload",
        "reload-or-restart",
        "condrestart",
        "force-reload",
    ):
        for name in _need_units(opts):
            if verb == "start":
                start(name)
            elif verb == "stop":
                stop(name)
            elif verb in ("restart",):
                restart(name)
            elif verb in ("try-restart", "condrestart"):
                if active_state(unit_name(name))[0] == "active":
                    restart(name)
            elif verb in ("reload-or-restart", "force-reload"):
                unit = load_unit(name)
                if unit.values("Service", "ExecReload") and active_state(unit.name)[0] == "active":
                    reload(name)
                else:
                    restart(name)
            else:
                reload(name)
        return EXIT_OK
    if verb in ("enable", "disable", "reenable"):
        for name in _need_units(opts):
            unit = load_unit(name)
            said: list[str] = []
            if verb in ("disable", "reenable"):
                said += disable(unit)
            if verb in ("enable", "reenable"):
                said += enable(unit)
            if not opts.quiet:
                for line in said:
                    print(line, file=sys.stderr)
            if opts.now:
                if verb == "disable":
                    stop(name, quiet_missing=True)
                else:
                    start(name)
        return EXIT_OK
    if verb in ("mask", "unmask"):
        for name in _need_units(opts):
            link = os.path.join(config_dir(), unit_name(name))
            if verb == "mask":
                if os.path.lexists(link) and not os.path.islink(link):
                    raise Failure(f"Failed to mask unit: File {link} already exists.")
                if not os.path.lexists(link):
                    os.symlink("/dev/null", link)
                    print(f"Created symlink {link} → /dev/null.", file=sys.stderr)
            elif os.path.islink(link) and os.path.realpath(link) == "/dev/null":
                os.unlink(link)
                print(f"Removed {link}.", file=sys.stderr)
        return EXIT_OK
    if verb == "is-active":
        states = [active_state(n)[0] for n in _need_units(opts)]
        if not opts.quiet:
            print("\n".join(states))
        return EXIT_OK if any(s in ("active", "reloading") for s in states) else EXIT_NOT_ACTIVE
    if verb == "is-failed":
        states = [active_state(n)[0] for n in _need_units(opts)]
        if not opts.quiet:
            print("\n".join(states))
        return EXIT_OK if "failed" in states else EXIT_FAILURE
    if verb == "is-enabled":
        code = EXIT_FAILURE
        for name in _need_units(opts):
            unit = load_unit(name)
            if not unit.found and not unit.masked:
                raise Failure(
                    f"Failed to get unit file state for {unit.name}: No such file or directory"
                )
            value = unit_file_state(unit)
            if not opts.quiet:
                print(value)
            if value in ("enabled", "static", "alias", "indirect", "generated"):
                code = EXIT_OK
        return code
    if verb == "status":
        code = EXIT_OK
        texts = []
        for name in _need_units(opts):
            text, one = status(name)
            texts.append(text)
            code = max(code, one)
        print("\n\n".join(texts))
        return code
    if verb == "show":
        names = expand(opts.args) if opts.args else []
        if not opts.args:
            print("Version=" + VERSION if not opts.properties else "")
            return EXIT_OK
        text = show(names, opts.properties, opts.value)
        if text:
            print(text)
        return EXIT_OK
    if verb == "cat":
        print("\n".join(cat(n) for n in _need_units(opts)))
        return EXIT_OK
    if verb == "kill":
        for name in _need_units(opts):
            kill(name, opts.signal)
        return EXIT_OK
    if verb == "reset-failed":
        for name in expand(opts.args) if opts.args else known_units():
            if active_state(name)[0] == "failed":
                write_state(name, active="inactive", sub="dead", result="success")
        return EXIT_OK
    if verb in ("daemon-reload", "daemon-reexec", "preset", "preset-all", "revert"):
        return EXIT_OK  # unit files are read at every call: nothing is cached
    if verb == "is-system-running":
        print("running")
        return EXIT_OK
    if verb in ("list-units", "list-timers", "list-sockets"):
        print(list_units(expand(opts.args)))
        return EXIT_OK
    if verb == "list-unit-files":
        print(list_unit_files())
        return EXIT_OK
    raise Failure(f"Unknown command verb '{verb}'.")


def run(argv: list[str]) -> NoReturn:
    try:
        code = main(argv)
    except Failure as exc:
        print(str(exc), file=sys.stderr)
        code = exc.code
    except KeyboardInterrupt:
        code = 130
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    run(sys.argv[1:])
