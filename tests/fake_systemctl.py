"""A test's `systemctl` for a host in a mount namespace: just enough of systemd for beszel.agent.

daemon-reload, enable, disable, is-enabled, start, stop, restart, is-active, for units in
/etc/systemd/system: ExecStart, Environment="K=V", EnvironmentFile=, User= (must exist).
State (enable links' stand-ins, pids, logs) lives in /var/lib/fake-systemd.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

UNITS = Path("/etc/systemd/system")
STATE = Path("/var/lib/fake-systemd")


def unit_file(name: str) -> Path:
    return UNITS / name


def parse(path: Path) -> tuple[list[str], dict[str, str], str | None]:
    command: list[str] = []
    env: dict[str, str] = {}
    user = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        key, _, value = line.partition("=")
        if key == "ExecStart":
            command = shlex.split(value)
        elif key == "User":
            user = value
        elif key == "Environment":
            for item in shlex.split(value.replace("%%", "%")):
                k, _, v = item.partition("=")
                env[k] = v
        elif key == "EnvironmentFile":
            for entry in Path(value.lstrip("-")).read_text().splitlines():
                k, eq, v = entry.partition("=")
                if eq and not k.startswith("#"):
                    env[k.strip()] = v.strip()
    return command, env, user


def pid_of(name: str) -> int | None:
    try:
        pid = int((STATE / f"{name}.pid").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    # a zombie is not running
    stat = Path(f"/proc/{pid}/stat").read_text().split()
    return None if stat[2] == "Z" else pid


def main(argv: list[str]) -> int:
    STATE.mkdir(parents=True, exist_ok=True)
    if not argv:
        return 1
    verb, names = argv[0], argv[1:]
    if verb == "daemon-reload":
        return 0
    name = names[0] if names else ""
    link = STATE / f"{name}.enabled"
    if verb == "enable":
        if not unit_file(name).exists():
            print(f"Failed to enable unit: Unit file {name} does not exist.", file=sys.stderr)
            return 1
        link.touch()
        return 0
    if verb == "disable":
        link.unlink(missing_ok=True)
        return 0
    if verb == "is-enabled":
        if not unit_file(name).exists():
            return 1
        print("enabled" if link.exists() else "disabled")
        return 0 if link.exists() else 1
    if verb == "is-active":
        print("active" if pid_of(name) else "inactive")
        return 0 if pid_of(name) else 3
    if verb in ("stop", "restart"):
        pid = pid_of(name)
        if pid:
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not pid_of(name):
                    break
                time.sleep(0.05)
        if verb == "stop":
            return 0
    if verb in ("start", "restart"):
        if pid_of(name):
            return 0
        command, env, user = parse(unit_file(name))
        if user:
            # The user must exist; the service runs as root all the same, because this
            # machine's venv Python (under /root, 0700) is not executable by other users.
            import pwd

            try:
                pwd.getpwnam(user)
            except KeyError:
                print(f"{name}: User={user} does not exist", file=sys.stderr)
                return 1
        log = open(STATE / f"{name}.log", "ab")  # noqa: SIM115 (the service keeps it)
        process = subprocess.Popen(
            command, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        (STATE / f"{name}.pid").write_text(str(process.pid))
        time.sleep(0.3)
        if process.poll() is not None:
            print(f"Job for {name} failed.", file=sys.stderr)
            return 1
        return 0
    print(f"fake systemctl: unknown verb {verb}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
