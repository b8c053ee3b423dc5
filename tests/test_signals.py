"""Ctrl-C and SIGTERM as a user meets them: opskit on a real terminal (a pty that is its
controlling terminal, so Ctrl-C is the byte 0x03 the terminal turns into SIGINT), running
`ssh.run` steps against real sshd hosts on loopback.

Each case: no traceback nor asyncio warning, the interrupt said once, exit 130, and a journal
that tells what happened (and lets the run be resumed).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from sshd import Sshd

HOSTS = ["127.0.0.71", "127.0.0.72"]
TESTS = Path(__file__).resolve().parent
LEAKS = ("Traceback", "never retrieved", "CancelledError", "Task was destroyed")
FIRST = "interrupted: starting nothing new"
SECOND = "cancelling everything now"

# `work` sleeps 30 s on a host, or 1 s once WORK/fast-HOST exists; `timeout` makes the shell
# bound its read of the command's output (the path that leaked a CancelledError).
SLOW = """
name: slow
targets: tag:web
steps:
  - id: work
    ssh.run:
      cmd: >-
        touch WORK/started-{{ target.name }};
        if [ -e WORK/fast-{{ target.name }} ]; then sleep 1; else sleep 30; fi
      timeout: 2m
  - id: after
    ssh.run: {cmd: "touch WORK/after-{{ target.name }}"}
always:
  - id: cleanup
    ssh.run: {cmd: "touch WORK/cleanup-{{ target.name }}"}
"""

# Planning asks each host a guard that takes 30 s.
PROBING = """
name: probing
targets: tag:web
steps:
  - id: guarded
    ssh.run: {cmd: "true", unless: "touch WORK/probing-{{ target.name }}; sleep 30"}
"""


# A confirmation gate on each host, one at a time.
GATED = """
name: gated
targets: tag:web
concurrency: 1
steps:
  - id: risky
    ssh.run: {cmd: "touch WORK/risky-{{ target.name }}"}
    confirm: "Really?"
always:
  - id: cleanup
    ssh.run: {cmd: "touch WORK/cleanup-{{ target.name }}"}
"""


def _take_terminal(interrupts_ignored: bool) -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    if interrupts_ignored:  # as a shell without job control starts `opskit ... &`
        signal.signal(signal.SIGINT, signal.SIG_IGN)


class Terminal:
    """`opskit ARGS` with a pty as its controlling terminal; everything it writes, kept."""

    def __init__(self, root: Path, *args: str, interrupts_ignored: bool = False) -> None:
        self.master, slave = os.openpty()
        # A wide terminal: the live view must not wrap the lines the tests look for.
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 250, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("CI", "SSH_AUTH_SOCK")}
        env["TERM"] = "xterm"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "opskit", *args],
            cwd=root,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,  # a session of its own, with this pty as its terminal
            preexec_fn=lambda: _take_terminal(interrupts_ignored),
        )
        os.close(slave)
        self.seen = b""

    def read(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.master], [], [], left)
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the child and all its children closed the terminal
                return
            if not chunk:
                return
            self.seen += chunk

    def ctrl_c(self) -> None:
        os.write(self.master, b"\x03")

    def finish(self, timeout: float = 60.0) -> tuple[int, str]:
        """(exit code, the text it wrote without terminal escapes)."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, f"still running; wrote:\n{self.text()[-3000:]}"
            self.read(0.2)
        self.read(0.5)
        os.close(self.master)
        return self.proc.returncode, self.text()

    def text(self) -> str:
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", self.seen.decode("utf-8", "replace"))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def hosts(tmp_path):
    server = Sshd(tmp_path / "sshd", HOSTS).start()
    yield server
    server.stop()


@pytest.fixture
def project(tmp_path, hosts, monkeypatch) -> Path:
    root = tmp_path / "project"
    work = root / "work"
    for sub in ("runbooks", "inventory", "work"):
        (root / sub).mkdir(parents=True)
    entries = "".join(
        f"  - {{name: h{n}, address: {address}, tags: [web], ssh: {{user: root,"
        f' port: {hosts.port}, identity: {hosts.client_key}, host_key: "{hosts.pinned}"}}}}\n'
        for n, address in enumerate(HOSTS)
    )
    (root / "inventory" / "homelab.yaml").write_text("hosts:\n" + entries)
    for name, text in (("slow", SLOW), ("probing", PROBING), ("gated", GATED)):
        (root / "runbooks" / f"{name}.yaml").write_text(text.replace("WORK", str(work)))
    monkeypatch.setenv("OPSKIT_STATE_DIR", str(tmp_path / "state"))
    return root


def _opskit(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "opskit", *args],
        cwd=root,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def _last_run(root: Path) -> dict:
    history = _opskit(root, "history", "--json")
    assert history.returncode == 0, history.stderr
    shown = _opskit(root, "show-run", json.loads(history.stdout)[0]["id"], "--json")
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def _statuses(run: dict) -> dict[tuple[str, str], str]:
    return {(s["target"], s["step"]): s["status"] for s in run["steps"]}


def _wait_for(path: Path, term: Terminal, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"no {path.name}; wrote:\n{term.text()[-3000:]}"
        term.read(0.05)


def _clean(text: str) -> None:
    for leak in LEAKS:
        assert leak not in text, f"{leak!r} in the output:\n{text}"


def _run_slow(project: Path, *extra: str) -> Terminal:
    term = Terminal(project, "run", "slow", "--yes", "--grace", "3s", *extra)
    for host in ("h0", "h1"):
        _wait_for(project / "work" / f"started-{host}", term)
    term.read(0.3)
    return term


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_one_interrupt_gives_grace_then_always_steps(project, how):
    """h0's step ends within the grace period and succeeds; h1's does not and is cancelled
    when the grace period runs out; both targets run their always-step; resume finishes."""
    work = project / "work"
    (work / "fast-h0").touch()
    term = _run_slow(project)
    try:
        if how == "ctrl-c":
            term.ctrl_c()
        else:
            term.proc.send_signal(signal.SIGTERM)
        code, out = term.finish()
    finally:
        term.kill()
    _clean(out)
    assert code == 130, out
    assert out.count(FIRST) == 1, out
    assert SECOND not in out
    assert out.count("interrupted: the grace period ran out") == 1, out
    assert "\ninterrupted\n" not in out  # the CLI adds no second word of its own
    assert {p.name for p in work.iterdir()} >= {"cleanup-h0", "cleanup-h1"}
    assert not list(work.glob("after-*"))  # nothing new started
    run = _last_run(project)
    assert run["status"] == "interrupted" and run["exit_code"] == 130
    statuses = _statuses(run)
    assert statuses[("h0", "work")] == "succeeded"
    assert statuses[("h1", "work")] == "interrupted"
    assert statuses[("h0", "after")] == statuses[("h1", "after")] == "not run"
    assert statuses[("h0", "cleanup")] == statuses[("h1", "cleanup")] == "succeeded"
    # Resume runs what was left: h1's step (fast now) and both `after` steps.
    (work / "fast-h1").touch()
    resumed = _opskit(project, "resume", run["id"], "--yes")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    statuses = _statuses(_last_run(project))
    assert statuses[("h0", "work")] == "skipped" and statuses[("h1", "work")] == "succeeded"
    assert {p.name for p in work.iterdir()} >= {"after-h0", "after-h1"}


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_second_interrupt_cancels_at_once(project, how):
    work = project / "work"
    term = _run_slow(project)
    started = time.monotonic()
    try:
        for _ in range(2):
            if how == "ctrl-c":
                term.ctrl_c()
            else:
                term.proc.send_signal(signal.SIGTERM)
            term.read(0.5)
        code, out = term.finish()
    finally:
        term.kill()
    _clean(out)
    assert code == 130, out
    assert time.monotonic() - started < 10, "the second interrupt did not cancel at once"
    assert out.count(FIRST) == 1 and out.count(SECOND) == 1, out
    assert not list(work.glob("cleanup-*")) and not list(work.glob("after-*"))
    run = _last_run(project)
    assert run["status"] == "interrupted" and run["exit_code"] == 130
    statuses = _statuses(run)
    assert statuses[("h0", "work")] == statuses[("h1", "work")] == "interrupted"
    assert "succeeded" not in statuses.values()
    history = json.loads(_opskit(project, "history", "--json").stdout)
    assert history[0]["status"] == "interrupted"


@pytest.mark.parametrize("how", ["ctrl-c", "ctrl-c twice", "sigterm", "sigterm, sigint ignored"])
@pytest.mark.parametrize("command", ["plan", "run"])
def test_an_interrupt_while_planning(project, command, how):
    """The probes are cancelled: one word, exit 130, nothing journaled (nothing ran). Started
    with SIGINT ignored, opskit still stops on SIGTERM."""
    term = Terminal(project, command, "probing", interrupts_ignored="ignored" in how)
    try:
        for host in ("h0", "h1"):
            _wait_for(project / "work" / f"probing-{host}", term)
        term.read(0.3)
        if how.startswith("sigterm"):
            term.proc.send_signal(signal.SIGTERM)
        else:
            term.ctrl_c()
            if how == "ctrl-c twice":
                time.sleep(0.05)
                term.ctrl_c()
        code, out = term.finish(timeout=20)
    finally:
        term.kill()
    _clean(out)
    assert code == 130, out
    assert out.count("interrupted") == 1, out
    history = _opskit(project, "history", "--json")
    assert json.loads(history.stdout) == []


def test_ctrl_c_at_a_gate_ends_the_question(project):
    """The step asking is not run (nothing new starts), the always-step runs, exit 130."""
    work = project / "work"
    term = Terminal(project, "run", "gated")
    try:
        deadline = time.monotonic() + 30
        while "[q]uit" not in term.text():
            assert time.monotonic() < deadline, term.text()
            term.read(0.1)
        term.ctrl_c()
        code, out = term.finish(timeout=20)
    finally:
        term.kill()
    _clean(out)
    assert code == 130, out
    assert out.count(FIRST) == 1 and SECOND not in out, out
    assert not list(work.glob("risky-*"))
    assert (work / "cleanup-h0").exists()
    run = _last_run(project)
    assert run["status"] == "interrupted"
    statuses = _statuses(run)
    assert statuses[("h0", "risky")] == statuses[("h1", "risky")] == "not run"
    assert statuses[("h0", "cleanup")] == "succeeded"
