"""The lab's systemctl stand-in with real processes, its unit and state directories in a temp root.

It runs as the lab runs it: a script under the system's python3 in isolated mode (-I: the
standard library only, no venv).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

STAND_IN = Path(__file__).resolve().parent.parent / "src" / "opskit" / "lab" / "systemctl.py"
PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


class Systemd:
    def __init__(self, root: Path) -> None:
        self.units = root / "etc" / "systemd" / "system"
        self.vendor = root / "lib" / "systemd" / "system"
        self.state = root / "run" / "opskit-systemctl"
        self.units.mkdir(parents=True)
        self.vendor.mkdir(parents=True)
        self.root = root
        self.env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "OPSKIT_SYSTEMCTL_UNIT_PATH": f"{self.units}:{self.vendor}",
            "OPSKIT_SYSTEMCTL_STATE_DIR": str(self.state),
            "CALLER_ONLY": "the caller's environment does not reach services",
        }

    def unit(self, name: str, text: str, vendor: bool = False) -> Path:
        path = (self.vendor if vendor else self.units) / name
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    def __call__(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [PYTHON, "-I", str(STAND_IN), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"systemctl {' '.join(args)}: {done.returncode} {done.stderr}")
        return done

    def prop(self, unit: str, name: str) -> str:
        return self("show", "-p", name, "--value", unit, check=True).stdout.strip()

    def main_pid(self, unit: str) -> int:
        return int(self.prop(unit, "MainPID"))


def gone(pid: int) -> bool:
    """Not running (a zombie waiting for its parent counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2] in "ZX"


def eventually(check: Callable[[], object], what: str, timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        time.sleep(0.05)


@pytest.fixture
def systemd(tmp_path):
    s = Systemd(tmp_path)
    yield s
    for path in [*s.units.glob("*.service"), *s.vendor.glob("*.service")]:
        s("stop", path.name)


def test_start_runs_the_process_and_stop_ends_it(systemd):
    systemd.unit(
        "demo.service",
        """
        [Unit]
        Description=A demo
        [Service]
        ExecStart=/bin/sh -c 'sleep 300 & exec sleep 301'
        ProtectSystem=strict
        NoNewPrivileges=yes
        PrivateTmp=true
        """,
    )
    done = systemd("is-active", "demo")
    assert (done.returncode, done.stdout.strip()) == (3, "inactive")
    systemd("start", "demo", check=True)
    pid = systemd.main_pid("demo")
    assert pid > 0 and not gone(pid)
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", b"301"]
    done = systemd("is-active", "demo")
    assert (done.returncode, done.stdout.strip()) == (0, "active")
    shown = systemd("show", "--all", "--property", "Id", "--property", "SubState", "demo.service")
    assert shown.stdout == "Id=demo.service\nSubState=running\n"  # what pyinfra's facts parse
    status = systemd("status", "demo")
    assert status.returncode == 0 and "● demo.service - A demo" in status.stdout
    assert "Active: active (running)" in status.stdout
    child = int(
        subprocess.run(
            ["pgrep", "-P", str(pid), "-f", "sleep 300$"],  # this service's child, no other
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()[0]
    )
    systemd("start", "demo", check=True)  # already running: nothing happens
    assert systemd.main_pid("demo") == pid

    systemd("stop", "demo", check=True)
    assert gone(pid) and gone(child)  # the service and what it started
    done = systemd("is-active", "demo")
    assert (done.returncode, done.stdout.strip()) == (3, "inactive")
    assert systemd("status", "demo").returncode == 3


def test_restart_on_failure_restarts_and_a_clean_exit_does_not(systemd, tmp_path):
    flag = tmp_path / "exit-cleanly"
    systemd.unit(
        "flaky.service",
        f"""
        [Service]
        ExecStart=/bin/sh -c 'if [ -e {flag} ]; then exit 0; fi; exec sleep 300'
        Restart=on-failure
        RestartSec=100ms
        """,
    )
    systemd("start", "flaky", check=True)
    first = systemd.main_pid("flaky")
    os.kill(first, signal.SIGKILL)  # a crash
    second = eventually(
        lambda: (p := systemd.main_pid("flaky")) not in (0, first) and p, "a restart"
    )
    assert systemd.prop("flaky", "NRestarts") == "1"
    assert systemd.prop("flaky", "SubState") == "running"
    flag.touch()
    os.kill(int(second), signal.SIGTERM)  # SIGTERM is a clean end, as for systemd
    eventually(lambda: systemd.prop("flaky", "ActiveState") == "inactive", "inactive")
    assert systemd.prop("flaky", "NRestarts") == "1"


def test_restart_always_and_the_start_limit(systemd):
    systemd.unit(
        "quick.service",
        """
        [Unit]
        StartLimitBurst=3
        StartLimitIntervalSec=60
        [Service]
        ExecStart=/bin/true
        Restart=always
        RestartSec=50ms
        """,
    )
    systemd("start", "quick", check=True)
    eventually(lambda: systemd.prop("quick", "Result") == "start-limit-hit", "the start limit")
    assert systemd.prop("quick", "ActiveState") == "failed"
    assert systemd.prop("quick", "NRestarts") == "3"
    assert systemd("is-failed", "quick").returncode == 0
    systemd("reset-failed", "quick", check=True)
    assert systemd.prop("quick", "ActiveState") == "inactive"


def test_environment_working_directory_and_user(systemd, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("User= needs root")  # the lab runs as root
    nobody = pwd.getpwnam("nobody")
    out = tmp_path / "out"
    out.mkdir()
    os.chmod(out, 0o777)
    (tmp_path / "app.env").write_text('# comment\nFROM_FILE="from the file"\nexport SECOND=2\n')
    systemd.unit(
        "env.service",
        f"""
        [Service]
        User=nobody
        WorkingDirectory={out}
        Environment="GREETING=hello world" PLAIN=yes
        Environment=ARGS=one\\x20two
        EnvironmentFile={tmp_path}/app.env
        EnvironmentFile=-{tmp_path}/missing.env
        ExecStart=/bin/sh -c 'env > env.txt; id -u > uid.txt; pwd > pwd.txt; exec sleep 300'
        """,
    )
    systemd("start", "env", check=True)
    eventually(lambda: (out / "env.txt").exists() and (out / "pwd.txt").exists(), "the output")
    env = dict(line.split("=", 1) for line in (out / "env.txt").read_text().splitlines())
    assert env["GREETING"] == "hello world" and env["PLAIN"] == "yes"
    assert env["FROM_FILE"] == "from the file" and env["SECOND"] == "2"
    assert env["USER"] == "nobody" and env["HOME"] == nobody.pw_dir
    assert "CALLER_ONLY" not in env and "OPSKIT_SYSTEMCTL_STATE_DIR" not in env
    eventually(lambda: (out / "uid.txt").read_text().strip(), "uid.txt written")
    assert (out / "uid.txt").read_text().strip() == str(nobody.pw_uid)
    assert (out / "pwd.txt").read_text().strip() == str(out)
    status = Path(f"/proc/{systemd.main_pid('env')}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == [str(nobody.pw_uid)] * 4
    groups = next(line for line in status.splitlines() if line.startswith("Groups:"))
    assert "0" not in groups.split()[1:]  # root's groups were dropped too


def test_enable_is_enabled_disable_and_lab_boot(systemd, tmp_path):
    log = tmp_path / "order"
    for name, after in (("db", ""), ("web", "db.service")):
        systemd.unit(
            f"{name}.service",
            f"""
            [Unit]
            After={after}
            [Service]
            ExecStart=/bin/sh -c 'echo {name} >> {log}; exec sleep 300'
            [Install]
            WantedBy=multi-user.target
            """,
        )
    systemd.unit("static.service", "[Service]\nExecStart=/bin/sleep 300\n", vendor=True)
    assert systemd("is-enabled", "web").stdout.strip() == "disabled"
    assert systemd("is-enabled", "web").returncode == 1
    assert systemd("is-enabled", "static").stdout.strip() == "static"
    done = systemd("enable", "web", "db.service")
    assert done.returncode == 0 and "Created symlink" in done.stderr
    link = systemd.units / "multi-user.target.wants" / "web.service"
    assert link.is_symlink() and link.resolve() == systemd.units / "web.service"
    assert systemd("is-enabled", "web").stdout.strip() == "enabled"
    assert systemd.prop("web", "UnitFileState") == "enabled"
    assert systemd("is-active", "web").returncode == 3  # enabling does not start

    done = systemd("--lab-boot")  # what a lab host runs when it boots
    assert done.returncode == 0, done.stderr
    assert systemd("is-active", "web").returncode == 0
    assert systemd("is-active", "static").returncode == 3
    assert eventually(lambda: log.exists() and log.read_text().split(), "both ran") == ["db", "web"]

    systemd("disable", "--now", "web", check=True)
    assert not link.exists() and systemd("is-enabled", "web").stdout.strip() == "disabled"
    assert systemd("is-active", "web").returncode == 3


def test_oneshot_and_a_failing_start(systemd, tmp_path):
    record = tmp_path / "record"
    systemd.unit(
        "setup.service",
        f"""
        [Service]
        Type=oneshot
        RemainAfterExit=yes
        ExecStartPre=/bin/sh -c 'echo pre >> {record}'
        ExecStart=/bin/sh -c 'echo start >> {record}'
        ExecStop=/bin/sh -c 'echo stop >> {record}'
        """,
    )
    systemd("start", "setup", check=True)  # returns when the oneshot is done
    assert record.read_text() == "pre\nstart\n"
    assert systemd.prop("setup", "SubState") == "exited"
    assert systemd("is-active", "setup").returncode == 0
    systemd("stop", "setup", check=True)
    assert record.read_text() == "pre\nstart\nstop\n"

    systemd.unit("broken.service", "[Service]\nExecStart=/nonexistent/daemon --flag\n")
    done = systemd("start", "broken")
    assert done.returncode == 1
    assert "Job for broken.service failed because the control process exited" in done.stderr
    assert systemd.prop("broken", "ActiveState") == "failed"
    status = systemd("status", "broken")
    assert status.returncode == 3 and "No such file or directory" in status.stdout


def test_unknown_units_answer_as_systemd_does(systemd):
    done = systemd("start", "nosuch")
    assert done.returncode == 5
    assert done.stderr.strip() == "Failed to start nosuch.service: Unit nosuch.service not found."
    done = systemd("stop", "nosuch.service")
    assert done.returncode == 5 and "Unit nosuch.service not loaded." in done.stderr
    done = systemd("status", "nosuch")
    assert done.returncode == 4 and "Unit nosuch.service could not be found." in done.stderr
    done = systemd("is-active", "nosuch")
    assert (done.returncode, done.stdout.strip()) == (3, "inactive")
    assert systemd.prop("nosuch", "LoadState") == "not-found"
    done = systemd("enable", "nosuch")
    assert done.returncode == 1 and "does not exist" in done.stderr
    assert systemd("daemon-reload").returncode == 0
    assert systemd("frobnicate").returncode == 1


def test_restart_reload_and_drop_ins(systemd, tmp_path):
    reloaded = tmp_path / "reloaded"
    systemd.unit(
        "app.service",
        f"""
        [Service]
        ExecStart=/bin/sh -c 'trap "echo hup >> {reloaded}" HUP; while :; do sleep 0.1; done'
        ExecReload=/bin/kill -HUP $MAINPID
        """,
    )
    dropins = systemd.units / "app.service.d"
    dropins.mkdir()
    (dropins / "override.conf").write_text("[Service]\nEnvironment=FROM_DROPIN=1\n")
    systemd("start", "app", check=True)
    first = systemd.main_pid("app")
    environ = Path(f"/proc/{first}/environ").read_bytes().split(b"\0")
    assert b"FROM_DROPIN=1" in environ
    systemd("reload", "app", check=True)
    eventually(lambda: reloaded.exists() and "hup" in reloaded.read_text(), "the reload")
    assert systemd.main_pid("app") == first
    systemd("restart", "app", check=True)
    second = systemd.main_pid("app")
    assert second != first and gone(first) and not gone(second)


def test_the_stand_in_needs_only_the_standard_library():
    text = STAND_IN.read_text()
    assert text.startswith("#!/usr/bin/python3\n")
    assert "opskit" not in {
        line.split()[1].split(".")[0]
        for line in text.splitlines()
        if line.startswith(("import ", "from "))
    }
    assert shutil.which("pgrep"), "pgrep (procps) is needed by these tests"
