"""What the maintenance runbook needs of the engine, with recording actions: plans that know a
run's own effects, rescue steps, run values in templates, "not run" for steps that never ran;
and the pure parts of snapshot retention and apt's answers."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import ClassVar

import pytest

import fakes
from opskit import actions
from opskit.actions.patch import (
    _BUSY,
    _INST,
    _WAIT_IDLE,
    WAITING,
    AptUpgrade,
    UpgradeArgs,
    _sections,
    changed_packages,
    running,
    versions,
)
from opskit.actions.proxmox_snapshots import KEEP_MARK, SnapshotArgs, beyond, own_snapshots
from opskit.clients.ssh import CommandResult
from opskit.effects import HOST, POWER
from opskit.model import Risk
from opskit.runcontext import NotRun, strftime
from test_engine import Env
from test_explain import FakeShell, context


class PowerResource(fakes.Resource):
    """A resource whose change powers the target (as proxmox.vm.start does)."""

    name: ClassVar[str] = "test.power"
    reads: ClassVar[frozenset[str] | None] = frozenset({POWER})
    changes: ClassVar[frozenset[str] | None] = frozenset({POWER, HOST})


class HostResource(fakes.Resource):
    """A resource on the target's host, reached only while it runs (as host.* kinds are)."""

    name: ClassVar[str] = "test.onhost"
    reads: ClassVar[frozenset[str] | None] = frozenset({POWER, HOST})
    changes: ClassVar[frozenset[str] | None] = frozenset({HOST})
    decided_by: ClassVar[frozenset[str] | None] = frozenset({POWER})


class CheckResource(fakes.Resource):
    """A check that fails where the world says so."""

    name: ClassVar[str] = "test.check"
    risk: ClassVar[Risk] = Risk.READ


@pytest.fixture
def env(project, opskit, tmp_path, monkeypatch):
    monkeypatch.setenv(fakes.WORLD_ENV, str(tmp_path / "world.json"))
    monkeypatch.setenv("OPSKIT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("CI", raising=False)
    fakes.install()
    actions.register(PowerResource)
    actions.register(HostResource)
    actions.register(CheckResource)
    yield Env(project, opskit, tmp_path)
    actions.unregister(CheckResource.name)
    actions.unregister(HostResource.name)
    actions.unregister(PowerResource.name)
    fakes.uninstall()


def _plan(env: Env, name: str, *args: str) -> dict:
    result = env.run("plan", name, "--format", "json", *args)
    assert result.code in (0, 1), result.err
    return json.loads(result.out)


def _steps(plan: dict, target: str = "ai") -> dict[str, dict]:
    return {s["id"]: s for t in plan["targets"] if t["target"] == target for s in t["steps"]}


# ----- plans that know a run's own effects ---------------------------------------------------

EFFECTS = """
name: effects
targets: ai
steps:
  - id: up
    test.power: {name: vm}
  - id: user
    test.onhost: {name: user, blocked: "ai: connection refused"}
  - id: file
    test.onhost: {name: file}
  - id: other
    test.resource: {name: other}
"""


def test_a_probe_an_earlier_step_makes_moot_is_known_after_apply(env):
    env.project.runbook("effects", EFFECTS)
    plan = _plan(env, "effects")
    steps = _steps(plan)
    assert steps["up"]["change"]["kind"] == "create"
    # The host is off now, so its probe is refused; the earlier step starts it: no blocker.
    user = steps["user"]["change"]
    assert user["kind"] == "unknown" and user["blockers"] == []
    assert "known after apply: step up changes the guest's power first" in user["summary"]
    assert "ai: connection refused" in user["summary"]
    # A change found stays the plan's estimate; the plan can run.
    assert steps["file"]["change"]["kind"] == "create"
    assert env.run("plan", "effects").code == 0


def test_with_nothing_changing_before_it_a_blocker_stays_a_blocker(env):
    env.project.runbook("effects", EFFECTS)
    env.world.add("ai/vm")  # already running: nothing makes the refusal moot
    plan = _plan(env, "effects")
    user = _steps(plan)["user"]["change"]
    assert user["blockers"] == ["ai: connection refused"]
    result = env.run("plan", "effects")
    assert result.code == 1 and "blocker" in result.out


def test_nothing_to_do_after_an_earlier_change_is_no_promise(env):
    env.project.runbook("effects", EFFECTS.replace(', blocked: "ai: connection refused"', ""))
    env.world.add("ai/user")
    env.world.add("ai/other")
    steps = _steps(_plan(env, "effects"))
    assert steps["user"]["change"]["kind"] == "unknown"  # present now; up decides that
    assert "(now: user is present)" in steps["user"]["change"]["summary"]
    assert steps["other"]["change"]["kind"] == "none"  # nothing before it decides this one
    env.world.add("ai/vm")
    steps = _steps(_plan(env, "effects"))
    assert steps["user"]["change"]["kind"] == "none"  # nothing before it changes: exact


# ----- rescue -------------------------------------------------------------------------------

RESCUE = """
name: rescued
targets: ai
steps:
  - id: snap
    test.resource: {name: snap}
    register: snap
  - id: patch
    test.resource: {name: patch}
  - id: after
    test.resource: {name: after}
    register: after
verify:
  - id: healthy
    wait: {duration: 1ms}
rescue:
  - id: rollback
    when: snap.ok
    test.resource: {name: "rolled-back-after-{{ failure.step }}"}
  - id: why
    test.resource: {name: "why", echo: "{{ failure.error }}"}
    register: why
  - id: saw
    test.resource: {name: "saw-{{ after.status | replace(' ', '-') }}-{{ after.ok }}"}
always:
  - id: cleanup
    test.resource: {name: "cleanup-{{ failure.step }}"}
"""


def test_rescue_runs_when_a_step_fails_sees_which_and_why_and_the_target_still_fails(env):
    env.project.runbook("rescued", RESCUE)
    env.world.fail("ai/patch", 99)
    result = env.run("run", "rescued", "--yes")
    assert result.code == 1, result.out + result.err
    applies = env.world.calls("apply")
    assert applies == [
        "ai/snap",
        "ai/patch",
        "ai/rolled-back-after-patch",
        "ai/why",
        "ai/saw-not-run-False",  # `after` never ran: "not run", not an undefined error
        "ai/cleanup-patch",
    ]
    assert "vm 110 (ai): step patch failed, rescued it; the target is failed" in result.out
    run_id = env.runs()[-1].id
    statuses = env.steps(run_id)
    assert statuses[("ai", "patch")] == "failed"
    assert statuses[("ai", "after")] == "not run" and statuses[("ai", "healthy")] == "not run"
    assert statuses[("ai", "rollback")] == "succeeded"
    j = env.journal()
    why = next(s for s in j.steps(run_id) if s.step_id == "why")
    j.close()
    assert why.outputs is not None and why.outputs["echo"] == "injected failure on ai/patch"


def test_a_failing_check_is_rescued_too_and_a_failing_rescue_says_so(env):
    env.project.runbook(
        "rescued",
        RESCUE.replace("wait: {duration: 1ms}", "test.check: {name: check}"),
    )
    env.world.fail("ai/check", 99)
    env.world.fail("ai/why", 99)
    result = env.run("run", "rescued", "--yes")
    assert result.code == 1
    assert "ai/rolled-back-after-healthy" in env.world.calls("apply")
    assert "vm 110 (ai): step healthy failed, rescue failed too" in result.out


def test_without_a_failure_rescue_does_not_run(env):
    env.project.runbook("rescued", RESCUE)
    result = env.run("run", "rescued", "--yes")
    assert result.code == 0, result.out
    applies = env.world.calls("apply")
    assert not any("rolled-back" in a for a in applies)
    assert applies[-1] == "ai/cleanup-‹not run: failure.step›"


def test_handlers_render_with_not_run_for_steps_that_did_not_run(env):
    env.project.runbook(
        "handled",
        """
        name: handled
        targets: ai
        steps:
          - id: fails
            test.resource: {name: fails}
            on_failure: [undo]
          - id: later
            test.resource: {name: later}
            register: rr
        handlers:
          - id: undo
            test.resource: {name: "undo-{{ rr.summary | replace(' ', '-') }}-{{ rr.stdout }}"}
        """,
    )
    env.world.fail("ai/fails", 99)
    result = env.run("run", "handled", "--yes")
    assert result.code == 1
    assert "'rr' is undefined" not in result.out + result.err
    assert env.world.calls("apply")[-1] == "ai/undo-not-run-‹not run: rr.stdout›"


# ----- run values ---------------------------------------------------------------------------

RUN_VALUES = """
name: stamped
targets: ai
steps:
  - id: stamp
    test.resource:
      name: "{{ run.id }}"
      echo: "{{ run.started | strftime('%Y') }} {{ run.previous.id if run.previous else 'first' }}"
    register: stamp
"""


def test_run_values_are_known_after_apply_in_a_plan_and_real_in_a_run(env):
    env.project.runbook("stamped", RUN_VALUES)
    planned = _steps(_plan(env, "stamped"))["stamp"]
    assert planned["change"]["kind"] == "unknown" and planned["deferred"]
    assert planned["args"]["name"] == "‹after apply: run.id›"
    # the plan says what it waits for
    assert planned["change"]["summary"] == "known after apply: uses run.id, run.started | strftime"
    assert env.run("run", "stamped", "--yes").code == 0
    first = env.runs()[-1]
    assert env.world.present() == {f"ai/{first.id}"}
    j = env.journal()
    echo = next(s for s in j.steps(first.id) if s.step_id == "stamp").outputs["echo"]
    j.close()
    assert echo == f"{strftime(first.started_at, '%Y')} first"
    # The target's previous successful run of this runbook: the plan knows it already.
    assert _steps(_plan(env, "stamped"))["stamp"]["args"]["echo"].endswith(f" {first.id}")
    assert env.run("run", "stamped", "--yes").code == 0
    second = env.runs()[0]
    j = env.journal()
    echo = next(s for s in j.steps(second.id) if s.step_id == "stamp").outputs["echo"]
    j.close()
    assert echo.endswith(f" {first.id}")


def test_a_failed_run_is_not_the_previous_successful_one(env):
    env.project.runbook("stamped", RUN_VALUES)
    assert env.run("run", "stamped", "--yes").code == 0
    good = env.runs()[0].id
    env.project.runbook("stamped", RUN_VALUES + "  - id: boom\n    test.resource: {name: boom}\n")
    env.world.fail("ai/boom", 99)
    assert env.run("run", "stamped", "--yes").code == 1
    assert _steps(_plan(env, "stamped"))["stamp"]["args"]["echo"].endswith(f" {good}")


def test_validate_knows_run_values_and_failure(env):
    env.project.runbook(
        "bad",
        """
        name: bad
        targets: ai
        steps:
          - id: a
            test.resource: {name: "{{ run.idd }}"}
          - id: b
            test.resource: {name: "{{ failure.step }}"}
        rescue:
          - id: c
            test.resource: {name: "{{ failure.step }} {{ run.started }}"}
        """,
    )
    result = env.run("validate", "runbooks/bad.yaml")
    assert result.code == 2
    text = result.out + result.err
    assert "undefined run value 'idd' (did you mean 'id'?)" in text
    assert "undefined variable 'failure'" in text
    assert text.count("bad.yaml:") == 2, text  # rescue may read failure


def test_strftime_formats_times_and_keeps_unknowns_unknown():
    assert strftime("2026-12-02T05:43:19Z", "%Y%m%d-%H%M%S") == "20261202-054319"
    assert strftime(0, "%Y-%m-%d") == "1970-01-01"
    from opskit.workspace import Deferred

    assert isinstance(strftime(Deferred("run.started"), "%Y"), Deferred)
    with pytest.raises(ValueError, match="not an ISO 8601 time"):
        strftime("last week", "%Y")
    gone = NotRun("rr")
    assert not gone and not gone.ok and gone.status == "not run" and gone.x == "‹not run: rr.x›"


# ----- snapshot retention and apt's answers --------------------------------------------------


def _snap(name: str, time: int, description: str = "") -> dict:
    return {"name": name, "snaptime": time, "description": description}


def test_retention_counts_only_opskits_own_snapshots_of_the_prefix():
    mark = f"{KEEP_MARK}patch-"
    listed = [
        _snap("patch-3", 30, f"run c\n{mark}"),
        _snap("patch-1", 10, mark),
        _snap("patch-hand", 5, "taken by hand before the patch"),  # the prefix, not marked
        _snap("patch-2", 20, f"run b\n{mark}"),
        _snap("other-1", 1, f"{KEEP_MARK}other-"),  # opskit's, another prefix
        _snap("patch-x", 2, f"{KEEP_MARK}patch-x"),  # marked for a longer prefix
    ]
    own = own_snapshots(listed, "patch-")
    assert own == ["patch-1", "patch-2", "patch-3"]
    assert beyond(own, 2, "patch-4") == ["patch-1", "patch-2"]
    assert beyond(own, 3) == []
    assert beyond(own, 1, "patch-3") == ["patch-1", "patch-2"]


def test_retention_orders_snapshots_of_one_second_by_their_parent_chain():
    # snaptime is in whole seconds: two runs a second apart or less tie, and their names (a
    # run ID's random part) say nothing of their order; the chain does.
    mark = f"{KEEP_MARK}keep-"
    listed = [
        {**_snap("keep-b", 7, mark), "parent": "keep-f"},  # taken from keep-f: the younger
        {**_snap("keep-f", 7, mark), "parent": "hand"},
        _snap("hand", 3, "by hand"),
        {**_snap("keep-a", 9, mark), "parent": "keep-b"},
        {"name": "current", "parent": "keep-a"},
    ]
    assert own_snapshots(listed, "keep-") == ["keep-f", "keep-b", "keep-a"]
    assert beyond(own_snapshots(listed, "keep-"), 2) == ["keep-f"]
    looped = [
        {**_snap("keep-x", 1, mark), "parent": "keep-y"},
        {**_snap("keep-y", 1, mark), "parent": "keep-x"},
    ]  # a broken chain ends the count, never the run
    assert sorted(own_snapshots(looped, "keep-")) == ["keep-x", "keep-y"]


def test_snapshot_args_need_a_prefix_the_name_starts_with():
    args = SnapshotArgs(name="patch-1", prefix="patch-", keep=2, description="before")
    assert args.marked_description() == f"before\n{KEEP_MARK}patch-"
    with pytest.raises(ValueError, match="keep needs a prefix"):
        SnapshotArgs(name="patch-1", keep=2)
    with pytest.raises(ValueError, match="does not start with prefix"):
        SnapshotArgs(name="manual", prefix="patch-", keep=2)


def test_apt_answers_read_as_what_changed():
    simulated = (
        "Reading package lists...\n"
        "Inst opskit-lab-demo [1.0] (1.1 lab:media [all])\n"
        "Inst newdep (2.0 lab:media [amd64])\n"
        "Conf opskit-lab-demo (1.1 lab:media [all])\n"
    )
    assert [m.groups() for m in _INST.finditer(simulated)] == [
        ("opskit-lab-demo", "1.0", "1.1"),
        ("newdep", None, "2.0"),
    ]
    before = versions("a 1.0 ii \nb 2.0 ii \nc 1.0 rc \n")
    after = versions("a 1.1 ii \nb 2.0 ii \nd 3.0 iU \n")
    assert before == {"a": "1.0", "b": "2.0"}
    assert changed_packages(before, after) == [
        {"package": "a", "from": "1.0", "to": "1.1"},
        {"package": "d", "from": None, "to": "3.0"},
    ]


def test_a_package_manager_running_is_found_and_waited_for(tmp_path: Path) -> None:
    """The host's look for apt and dpkg, run by the machine's own sh: a process named dpkg (a
    `sleep` under that name) is found, waited for until it is gone (a zombie, unreaped, is
    gone), or named when it outlasts the wait."""
    fake = tmp_path / "dpkg"
    fake.symlink_to(shutil.which("sleep") or "/bin/sleep")

    def sh(script: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)

    def wait(seconds: int) -> subprocess.CompletedProcess[str]:
        return sh(_WAIT_IDLE.format(seconds=seconds, busy=_BUSY, waiting=WAITING))

    long = subprocess.Popen([str(fake), "60"])
    try:
        listed = sh(_BUSY)
        assert listed.returncode == 0 and listed.stderr == ""
        assert f"{long.pid} dpkg" in listed.stdout.splitlines()
        assert f"dpkg (pid {long.pid})" in running(listed.stdout)
        outlasted = wait(1)
        assert outlasted.returncode == 75, outlasted
        head, found = _sections(outlasted.stdout, ("busy",))
        assert head.startswith(WAITING) and f"{long.pid} dpkg" in found["busy"].splitlines()
    finally:
        long.kill()
        long.wait()
    short = subprocess.Popen([str(fake), "1.5"])
    try:
        waited = wait(30)
        assert waited.returncode == 0, waited
        assert short.poll() is not None  # it ended before the wait did
        assert f"{short.pid} dpkg" in waited.stdout.splitlines()
    finally:
        short.kill()
        short.wait()
    assert running("90 apt-get\n126 dpkg\nnot a line\n") == "apt-get (pid 90), dpkg (pid 126)"
    assert _sections("sim\n== held\nh1\n== audit\nbroken\n", ("held", "busy", "audit")) == (
        "sim\n",
        {"held": "h1\n", "busy": "", "audit": "broken\n"},
    )


@pytest.mark.parametrize(
    ("busy", "audit", "simulated", "summary"),
    [
        ("", "", "", "nothing to upgrade"),
        ("", "", "Inst a [1.0] (1.1 s [all])\n", "upgrade 1 package: a 1.0 -> 1.1"),
        (
            "830 dpkg\n812 apt-get\n",
            "a\n",
            "",
            "wait for apt-get (pid 812), dpkg (pid 830), running on the host; then upgrade",
        ),
        (
            "",
            "a\nb\n",
            "Inst c [1] (2 s [all])\n",
            "finish what dpkg left half-done (a, b); then upgrade 1 package: c 1 -> 2",
        ),
    ],
    ids=["idle", "to-upgrade", "busy", "half-done"],
)
def test_an_upgrades_plan_says_what_it_waits_for_and_finishes_first(
    busy: str, audit: str, simulated: str, summary: str
) -> None:
    """The plan's look at the host: a package manager running is waited for (what it is doing
    shows as half-done, and is not called so); what dpkg left half-done is finished first."""
    import asyncio

    out = f"{simulated}== held\n== busy\n{busy}== audit\n{audit}"
    shell = FakeShell(lambda command, count: CommandResult(0, out, "", 0.01))
    change = asyncio.run(AptUpgrade(UpgradeArgs()).probe(context(shell=shell)))
    assert change.summary == summary
    assert change.kind == ("none" if summary.startswith("nothing") else "update")
