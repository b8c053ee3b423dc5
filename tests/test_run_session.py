"""One session for a whole `opskit run`: its plan, its gates and its execution share one SSH
connection per host (counted in real sshd's own log), and a running step's output reaches the
`--json` stream and the per-host log while it runs."""

from __future__ import annotations

import time

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
