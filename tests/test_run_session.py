"""One session for a whole `opskit run`: its plan, its gates and its execution share one SSH
connection per host (counted in real sshd's own log), and a running step's output reaches the
`--json` stream and the per-host log while it runs."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opskit.engine import session
from sshd import Sshd
from sshproject import Project

HOSTS = ["127.0.0.81", "127.0.0.82", "127.0.0.83"]

# Every probe asks the host (creates, unless), every step acts on it: planning connects first.
WORK_ON_EVERY_HOST = """
name: rb
targets: tag:web
steps:
  - id: make
    ssh.run: {cmd: "mkdir -p WORK/{{ target.name }} && touch WORK/{{ target.name }}/made",
              creates: "WORK/{{ target.name }}/made"}
  - id: note
    ssh.upload: {dest: "WORK/{{ target.name }}/note", content: "hello\\n", mode: "0640"}
  - id: once
    ssh.run:
      cmd: "echo x >> WORK/{{ target.name }}/log"
      unless: "test -s WORK/{{ target.name }}/log"
  - id: risky
    ssh.run: {cmd: "touch WORK/{{ target.name }}/risky"}
    confirm: "Really?"
verify:
  - id: there
    check.command: {cmd: "test -e WORK/{{ target.name }}/risky"}
"""


@pytest.fixture
def sshd(tmp_path):
    server = Sshd(tmp_path / "sshd", HOSTS, log=tmp_path / "sshd.log").start()
    yield server
    server.stop()


@pytest.fixture
def project(tmp_path, sshd, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setenv("OPSKIT_STATE_DIR", str(tmp_path / "state"))
    return Project(tmp_path, sshd, HOSTS)


def _logins_settled(sshd: Sshd, expected: int) -> dict[str, int]:
    """sshd's count, once it has logged as many logins as `expected` (or more)."""
    deadline = time.monotonic() + 10
    while sum(sshd.logins().values()) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return sshd.logins()


def _cli_project(project: Project, sshd: Sshd) -> None:
    """The inventory names the client key itself: the CLI finds it without the test's help."""
    entries = "".join(
        f"  - {{name: h{n}, address: {a}, tags: [web], ssh: {{user: root, port: {sshd.port},"
        f' identity: {sshd.client_key}, host_key: "{sshd.pinned}"}}}}\n'
        for n, a in enumerate(HOSTS)
    )
    (project.root / "inventory" / "homelab.yaml").write_text("hosts:\n" + entries)


def test_a_run_that_plans_and_executes_logs_in_once_per_host(project, sshd, opskit):
    """`opskit run`: every probe and every step (commands, an upload over SFTP, a check) on
    each host go through one SSH handshake, the plan's, counted by sshd itself."""
    _cli_project(project, sshd)
    project.runbook(WORK_ON_EVERY_HOST)
    assert sshd.logins() == dict.fromkeys(HOSTS, 0)
    args = ["--runbooks", str(project.root / "runbooks")]
    args += ["--inventory", str(project.root / "inventory" / "homelab.yaml")]
    done = opskit(*args, "run", "rb", "--yes")
    assert done.code == 0, done.out + done.err
    for n in range(len(HOSTS)):
        assert (project.work / f"h{n}" / "risky").exists()
        assert (project.work / f"h{n}" / "note").read_text() == "hello\n"
    assert _logins_settled(sshd, len(HOSTS)) == dict.fromkeys(HOSTS, 1)
    # A plan alone connects too (its probes ask the hosts): one more login per host.
    planned = opskit(*args, "plan", "rb")
    assert planned.code == 0, planned.out + planned.err
    assert _logins_settled(sshd, 2 * len(HOSTS)) == dict.fromkeys(HOSTS, 2)


def test_a_question_at_a_gate_keeps_the_connections(project, sshd):
    """Asked at a gate while the run holds its connections, then run on: still one login per
    host, the gate's step and the rest done."""
    project.runbook(WORK_ON_EVERY_HOST)
    asked: list[str] = []

    def ask(question: str) -> str:
        asked.append(question)
        return "y"

    req = project.request(interactive=True, ask=ask)
    with session.Session(req) as s:
        loaded, targets, plan = session.make_plan(req, "rb", {}, None, session=s)
        result = session.execute(req, loaded, targets, plan, session=s)
    assert result.exit_code == 0, result
    assert len(asked) == len(HOSTS) and all("Really?" in q for q in asked)
    assert _logins_settled(sshd, len(HOSTS)) == dict.fromkeys(HOSTS, 1)


# Prints a line every second until the test lets it end (WORK/go): it can only end once the
# test has seen its lines, so they arrived while it ran.
TICKS = """
name: ticks
targets: h0
secrets:
  token: env:OPSKIT_TEST_TICK_TOKEN
steps:
  - id: ticks
    ssh.run:
      cmd: >-
        echo "token {{ secrets.token }}"; i=0;
        while [ ! -e WORK/go ]; do i=$((i+1)); echo "tick $i"; echo "err $i" >&2; sleep 1; done;
        echo finished
      timeout: 2m
      STDIN
  - id: after
    ssh.run: {cmd: "echo after"}
"""
TOKEN = "tick-token-8b1f4e"


class Stream:
    """`opskit run ... --json` as a child; its events as they arrive."""

    def __init__(self, root: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        env["OPSKIT_TEST_TICK_TOKEN"] = TOKEN
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "opskit", *args],
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.seen: list[dict] = []

    def until(self, found, timeout: float = 60.0) -> dict:
        """Read events until one satisfies `found` (the bound only ends a hung test)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            for event in self.seen:
                if found(event):
                    return event
            left = deadline - time.monotonic()
            assert left > 0, f"not seen; events: {self.seen}"
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                line = self.proc.stdout.readline()
                assert line, f"the stream ended first; events: {self.seen}"
                self.seen.append(json.loads(line))

    def finish(self) -> int:
        out, err = self.proc.communicate(timeout=60)
        self.seen += [json.loads(line) for line in out.splitlines()]
        assert self.proc.returncode == 0, err.decode()
        return self.proc.returncode


def _texts(events: list[dict], step: str, stream: str = "stdout") -> list[str]:
    return [
        line["text"]
        for e in events
        if e["event"] == "output" and e["step"] == step
        for line in e["lines"]
        if line["stream"] == stream
    ]


@pytest.mark.parametrize("channel", ["persistent shell", "own channel"])
def test_a_running_steps_lines_reach_the_stream_and_the_host_log_while_it_runs(
    project, sshd, channel
):
    _cli_project(project, sshd)
    stdin = 'stdin: "x\\n"' if channel == "own channel" else ""
    project.runbook(TICKS.replace("STDIN", stdin))
    state = project.root / "state"
    stream = Stream(project.root, "run", "rb", "--yes", "--json")
    try:
        started = stream.until(lambda e: e["event"] == "run")
        stream.until(lambda e: "tick 2" in _texts([e], "ticks"))
        # Two ticks out, and the step has not ended: it cannot before WORK/go exists.
        ends = [e for e in stream.seen if e["event"] == "step" and e["step"] == "ticks"]
        assert [e["status"] for e in ends] == ["started"]
        said = _texts(stream.seen, "ticks")
        assert said[:3] == ["token ‹secret:token›", "tick 1", "tick 2"], said
        assert "err 1" in _texts(stream.seen, "ticks", "stderr")
        log = (state / "logs" / started["run_id"] / "h0.log").read_text()
        assert "ticks: running\n-- stdout\ntoken ‹secret:token›\ntick 1\n" in log, log
        assert "\ntick 2\n" in log, log
        assert "-- stderr\nerr 1\n" in log and "token ‹secret:token›" in log
        assert "ticks: succeeded" not in log
        (project.work / "go").touch()
        stream.finish()
    finally:
        if stream.proc.poll() is None:
            stream.proc.kill()
            stream.proc.wait()
    events = stream.seen
    kinds = [(e["event"], e.get("step"), e.get("status")) for e in events]
    end = kinds.index(("step", "ticks", "succeeded"))
    last_output = max(
        i for i, e in enumerate(events) if e["event"] == "output" and e["step"] == "ticks"
    )
    assert last_output < end  # every line is out before the step's end event
    assert _texts(events, "ticks")[-1] == "finished"
    assert TOKEN not in json.dumps(events)
    log = (state / "logs" / started["run_id"] / "h0.log").read_text()
    assert TOKEN not in log and "finished\n== " in log and "ticks: succeeded" in log
    assert log.count("tick 1\n") == 1  # streamed once, not again at the end


def test_the_live_view_shows_each_running_steps_last_lines_redacted():
    import io

    from opskit.report.progress import TAIL_LINES, LiveReporter
    from opskit.secrets import redactor

    redactor.add("tok", "live-secret-77")
    view = LiveReporter(out=io.StringIO())
    try:
        view.emit({"event": "step", "target": "h0", "step": "upgrade", "status": "started"})
        lines = [{"stream": "stdout", "text": f"unpacking {n} live-secret-77"} for n in range(5)]
        view.emit({"event": "output", "target": "h0", "step": "upgrade", "lines": lines})
        footer = str(view._footer())
        assert "h0  upgrade" in footer
        shown = [line.strip() for line in footer.splitlines() if "unpacking" in line]
        assert shown == [f"unpacking {n} ‹secret:tok›" for n in range(5)][-TAIL_LINES:]
        end = {"event": "step", "target": "h0", "step": "upgrade", "status": "succeeded"}
        view.emit({**end, "summary": "ok", "error": None, "duration": 1.0})
        assert "unpacking" not in str(view._footer())
    finally:
        view.close()
