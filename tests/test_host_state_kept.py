"""What the pyinfra bridge keeps of a host (its answers, a probe's finding) and when it forgets
it, through the whole engine against real OpenSSH sshd on loopback: the re-probe of a step
planned in the same session is answered without evaluating the step again, and anything that
may have changed the host (a step through any client, a gate that waited on a person, a lock
another run held, a plan made by another process) makes the next probe ask the host afresh.

The "hosts" are this machine (loopback sshd, logged in as root), so a test's own kind can change
a host's files directly, without SSH, as Proxmox's rollback or power would.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import pytest

from opskit import actions
from opskit.actions import Action, ActionArgs, ActionContext
from opskit.engine import session
from opskit.model import Change, ChangeKind, Outcome, Risk
from sshd import Sshd
from sshproject import Project

HOSTS = ["127.0.0.81", "127.0.0.82"]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = Sshd(tmp_path_factory.mktemp("sshd"), HOSTS).start()
    yield server
    server.stop()


@pytest.fixture
def project(tmp_path, sshd, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setenv("OPSKIT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    made = Project(tmp_path, sshd, HOSTS)
    (made.work / "h0").mkdir()
    return made


@pytest.fixture
def evaluations(monkeypatch):
    """How many times a host.* step's pyinfra work ran (plan, re-probe or apply)."""
    from opskit.clients import pyinfra_connector

    counted: list[str] = []
    real = pyinfra_connector._in_thread

    def counting(link, work, data):
        counted.append("read-only" if link.read_only else "apply")
        return real(link, work, data)

    monkeypatch.setattr(pyinfra_connector, "_in_thread", counting)
    return counted


class UnlinkArgs(ActionArgs):
    path: str


class Unlink(Action[UnlinkArgs]):
    """Removes a file of the host without SSH (the host is this machine)."""

    name: ClassVar[str] = "test.unlink"
    risk: ClassVar[Risk] = Risk.CHANGE
    Args = UnlinkArgs

    def describe(self) -> str:
        return f"unlink {self.args.path}"

    async def probe(self, ctx: ActionContext) -> Change:
        return Change(kind=ChangeKind.DELETE, summary=f"remove {self.args.path}")

    async def apply(self, ctx: ActionContext) -> Outcome:
        Path(self.args.path).unlink(missing_ok=True)
        return Outcome(ok=True, changed=True, summary=f"removed {self.args.path}")


@pytest.fixture
def unlink_kind():
    actions.register(Unlink)
    yield
    actions.unregister(Unlink.name)


def _in_one_session(project: Project, **request):
    """`opskit run` as the CLI does it: the plan and the execution share one session."""
    req = project.request(**request)
    with session.Session(req) as s:
        loaded, targets, plan = session.make_plan(req, "rb", {}, None, session=s)
        return plan, session.execute(req, loaded, targets, plan, session=s)


def _statuses(project: Project, run_id: str) -> dict[str, str]:
    return {step: s.status for (_, step), s in project.steps(run_id).items()}


TWO_STEPS = """
name: rb
targets: h0
steps:
  - id: dir
    host.directory: {path: "WORK/h0/d", mode: "0750"}
  - id: file
    host.file: {path: "WORK/h0/d/f.conf", content: "f\\n", mode: "0640"}
"""


def test_the_re_probe_of_a_step_planned_in_the_same_session_is_not_evaluated_again(
    project, evaluations
):
    """In one session nothing reached h0 between the plan and the first step: its re-probe is
    answered from what the plan found, and its apply runs what the plan listed. The second
    step's re-probe comes after the first changed the host: evaluated afresh."""
    project.runbook(TWO_STEPS)
    plan, result = _in_one_session(project, yes=True)
    assert result.exit_code == 0, result
    assert [s.change.kind for s in plan.targets[0].steps] == [ChangeKind.CREATE] * 2
    assert (project.work / "h0" / "d" / "f.conf").read_text() == "f\n"
    # plan: dir, file; run: dir applied (no re-probe evaluation), file re-probed and applied
    assert evaluations == ["read-only", "read-only", "apply", "read-only", "apply"]


def test_a_plan_and_a_run_with_connections_of_their_own_re_probe_every_step(project, evaluations):
    """Without the plan's pool (a plan saved, applied by another process: `opskit apply` plans
    afresh, and so does this run's own), every step is probed again before it runs."""
    project.runbook(TWO_STEPS)
    plan = project.plan()
    assert len(evaluations) == 2
    evaluations.clear()
    _, result = project.run()
    assert result.exit_code == 0, result
    assert evaluations == ["read-only"] * 2 + ["read-only", "apply", "read-only", "apply"]
    assert [s.change.kind for s in plan.targets[0].steps] == [ChangeKind.CREATE] * 2


def test_a_step_changing_the_host_without_ssh_makes_the_next_probe_ask_again(project, unlink_kind):
    """`again` finds the file up to date and keeps that; `gone` removes the file without SSH
    (as a rollback through Proxmox would): what the host answered before no longer counts, so
    `back` finds the file missing and creates it again."""
    path = project.work / "h0" / "f.conf"
    project.runbook(
        """
        name: rb
        targets: h0
        steps:
          - id: first
            host.file: {path: "WORK/h0/f.conf", content: "x\\n", mode: "0640"}
          - id: again
            host.file: {path: "WORK/h0/f.conf", content: "x\\n", mode: "0640"}
          - id: gone
            test.unlink: {path: "WORK/h0/f.conf"}
          - id: back
            host.file: {path: "WORK/h0/f.conf", content: "x\\n", mode: "0640"}
        """
    )
    _, result = _in_one_session(project, yes=True)
    assert result.exit_code == 0, result
    assert _statuses(project, result.run_id) == {
        "first": "succeeded",
        "again": "unchanged",
        "gone": "succeeded",
        "back": "succeeded",
    }
    assert path.read_text() == "x\n"
    assert oct(path.stat().st_mode & 0o777) == "0o640"


def test_a_gate_that_waited_on_a_person_makes_the_apply_ask_the_host_again(project):
    """While the gate's question waits, someone else puts the file there: the apply does not
    run what the probe listed before the wait (an upload) but asks the host again, and finds
    nothing to do."""
    path = project.work / "h0" / "f.conf"
    project.runbook(
        """
        name: rb
        targets: h0
        steps:
          - id: conf
            host.file: {path: "WORK/h0/f.conf", content: "x\\n", mode: "0640"}
            confirm: "Write it?"
        """
    )
    asked: list[str] = []
    inodes: list[int] = []

    def ask(question: str) -> str:
        asked.append(question)
        path.write_text("x\n")
        os.chmod(path, 0o640)
        inodes.append(path.stat().st_ino)
        return "y"

    plan, result = _in_one_session(project, interactive=True, ask=ask)
    assert result.exit_code == 0, result
    assert plan.targets[0].steps[0].change.kind is ChangeKind.CREATE
    assert len(asked) == 1 and "Write it?" in asked[0]
    conf = project.steps(result.run_id)[("h0", "conf")]
    assert conf.status == "succeeded"
    assert conf.outputs["changed"] is False and conf.outputs["commands"] == []
    assert path.stat().st_ino == inodes[0] and path.read_text() == "x\n"  # not written again


def test_a_lock_another_run_held_makes_the_run_ask_the_hosts_again(project):
    """Planned, then waiting for h0's lock while another run holds it (and puts the file
    there): the run does not take the plan's answers, it asks the host again, nothing to do."""
    from opskit.engine.locks import TargetLocks
    from opskit.store import state_dir

    path = project.work / "h0" / "f.conf"
    project.runbook(
        """
        name: rb
        targets: h0
        steps:
          - id: conf
            host.file: {path: "WORK/h0/f.conf", content: "x\\n", mode: "0640"}
        """
    )
    req = project.request(yes=True, lock_wait=60.0)
    other = TargetLocks(state_dir() / "locks", "another-run", say=lambda text: None)
    emit = req.reporter.emit
    inodes: list[int] = []

    def seen(event):
        if event.get("event") == "message" and "waiting for the lock on h0" in event["text"]:
            path.write_text("x\n")  # the other run's work
            os.chmod(path, 0o640)
            inodes.append(path.stat().st_ino)
            other.release()
        emit(event)

    req.reporter.emit = seen  # type: ignore[method-assign]
    with session.Session(req) as s:
        loaded, targets, plan = session.make_plan(req, "rb", {}, None, session=s)
        other.acquire(["h0"])
        result = session.execute(req, loaded, targets, plan, session=s)
    assert plan.targets[0].steps[0].change.kind is ChangeKind.CREATE
    assert result.exit_code == 0, result
    assert len(inodes) == 1, "the run did not wait for the lock"
    assert _statuses(project, result.run_id) == {"conf": "unchanged"}
    assert path.stat().st_ino == inodes[0]
