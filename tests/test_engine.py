"""The engine with recording actions: dry runs, saved plans, gates, rollouts, journal, locks."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fakes
from opskit.engine import session
from opskit.engine.session import Request
from opskit.report.progress import Reporter
from opskit.store import Journal
from opskit.workspace import Workspace

TESTS = Path(__file__).resolve().parent

RUNBOOK = """
name: deploy
targets: tag:monitored
params:
  thing: {default: app}
steps:
  - id: first
    test.resource: {name: "{{ params.thing }}-1"}
  - id: second
    test.resource: {name: "{{ params.thing }}-2"}
"""

GATED = """
name: gated
targets: [docker, ai]
steps:
  - id: make
    test.resource: {name: x}
  - id: wipe
    test.destroy: {name: x, state: absent}
"""


class Env:
    def __init__(self, project, opskit, tmp_path: Path) -> None:
        self.project = project
        self.opskit = opskit
        self.world = fakes.World(tmp_path / "world.json")
        self.state = tmp_path / "state"

    def run(self, *args: str):
        return self.opskit(*args, cwd=self.project.root)

    def spawn(self, *args: str, **kw) -> subprocess.Popen[str]:
        code = (
            f"import sys; sys.path.insert(0, {str(TESTS)!r}); import fakes; fakes.install();"
            " from opskit.cli import main; main()"
        )
        return subprocess.Popen(
            [sys.executable, "-c", code, *args],
            cwd=self.project.root,
            env=os.environ.copy(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            **kw,
        )

    def journal(self) -> Journal:
        return Journal(self.state / "journal.db")

    def runs(self) -> list:
        j = self.journal()
        try:
            return j.runs()
        finally:
            j.close()

    def steps(self, run_id: str) -> dict[tuple[str, str], str]:
        j = self.journal()
        try:
            return {(s.target, s.step_id): s.status for s in j.steps(run_id)}
        finally:
            j.close()


@pytest.fixture
def env(project, opskit, tmp_path, monkeypatch) -> Env:
    monkeypatch.setenv(fakes.WORLD_ENV, str(tmp_path / "world.json"))
    monkeypatch.setenv("OPSKIT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("CI", raising=False)
    fakes.install()
    yield Env(project, opskit, tmp_path)
    fakes.uninstall()


MONITORED = ["docker", "homeassistant", "media", "ai", "dev", "pve"]


def test_dry_run_and_plan_change_nothing(env):
    env.project.runbook("deploy", RUNBOOK)
    for args in (("run", "deploy", "--dry-run"), ("plan", "deploy", "-o", "p.json")):
        result = env.run(*args)
        assert result.code == 0, result.err
        assert "12 to create" in result.out
    assert env.world.calls("apply") == []
    assert env.world.present() == set()
    calls = env.world.read()["calls"]
    assert calls and all(read_only for _, _, read_only in calls)  # every probe was read-only
    assert not env.state.joinpath("journal.db").exists()  # a dry run journals nothing


def test_run_applies_then_finds_nothing_to_do(env):
    env.project.runbook("deploy", RUNBOOK)
    first = env.run("run", "deploy")
    assert first.code == 0, first.err
    assert env.world.present() == {f"{t}/app-{n}" for t in MONITORED for n in (1, 2)}
    assert len(env.world.calls("apply")) == 12
    second = env.run("run", "deploy")
    assert second.code == 0
    assert "nothing to do" in second.out and "0 to create" in second.out
    assert len(env.world.calls("apply")) == 12
    run = env.runs()[-1]
    assert run.status == "succeeded" and set(env.steps(run.id).values()) == {"succeeded"}


def test_saved_plan_applies_exactly_then_says_nothing_to_do(env):
    env.project.runbook("deploy", RUNBOOK)
    assert env.run("plan", "deploy", "-p", "thing=web", "-o", "plan.json").code == 0
    applied = env.run("apply", "plan.json")
    assert applied.code == 0, applied.err
    assert env.world.present() == {f"{t}/web-{n}" for t in MONITORED for n in (1, 2)}
    again = env.run("apply", "plan.json")
    assert again.code == 0, again.err
    assert "nothing to do" in again.out and "applied before" in again.out
    assert len(env.world.calls("apply")) == 12


def _stale(env, mutate) -> str:
    env.project.runbook("deploy", RUNBOOK)
    assert env.run("plan", "deploy", "-o", "plan.json").code == 0
    mutate()
    result = env.run("apply", "plan.json")
    assert result.code == 4, (result.out, result.err)
    assert env.world.calls("apply") == []
    return result.err


def test_stale_when_the_runbook_changed(env):
    err = _stale(env, lambda: env.project.runbook("deploy", RUNBOOK + "    retries: 1\n"))
    assert "the runbook runbooks/deploy.yaml changed since the plan" in err


def test_stale_when_the_inventory_changed(env):
    inv = env.project.root / "inventory" / "homelab.yaml"
    err = _stale(env, lambda: inv.write_text(inv.read_text() + "\n# edited\n"))
    assert "the inventory inventory/homelab.yaml changed since the plan" in err


def test_stale_when_opskit_changed(env, monkeypatch):
    err = _stale(env, lambda: monkeypatch.setattr(session, "__version__", "99.0"))
    assert "made by opskit 0.1.0, this is 99.0" in err


def test_stale_when_the_world_changed(env):
    err = _stale(env, lambda: env.world.add("ai/app-1"))
    assert "step first on vm 110 (ai) expected create, found none" in err


def test_stale_when_the_plan_file_was_edited(env):
    def edit() -> None:
        path = env.project.root / "plan.json"
        data = json.loads(path.read_text())
        data["params"]["thing"] = "evil"
        path.write_text(json.dumps(data))

    assert "edited after it was made" in _stale(env, edit)


def test_gates_fail_closed_without_a_terminal(env):
    env.project.runbook("gated", GATED)
    result = env.run("run", "gated")
    assert result.code == 3
    assert "no terminal to ask" in result.err and "--approve" in result.err
    assert env.world.calls("apply") == []


def test_gates_pass_with_yes_or_the_plans_fingerprint(env):
    env.project.runbook("gated", GATED)
    plan = env.run("plan", "gated", "--format", "json", "-o", "plan.json")
    fingerprint = json.loads(plan.out)["fingerprint"]
    wrong = env.run("apply", "plan.json", "--approve", "0" * 64)
    assert wrong.code == 3 and "review the new plan" in wrong.err
    assert env.world.calls("apply") == []
    right = env.run("apply", "plan.json", "--approve", fingerprint)
    assert right.code == 0, right.err
    # make ran, then wipe (destructive, gated, approved) removed it again
    assert env.world.calls("apply") == ["docker/x", "docker/x", "ai/x", "ai/x"] or sorted(
        env.world.calls("apply")
    ) == ["ai/x", "ai/x", "docker/x", "docker/x"]
    assert env.world.present() == set()


def _request(env, answers: list[str], asked: list[str]) -> Request:
    def ask(question: str) -> str:
        asked.append(question)
        return answers.pop(0)

    ws = Workspace(env.project.runbooks, env.project.root / "inventory" / "homelab.yaml")
    return Request(
        workspace=ws, interactive=True, ask=ask, reporter=Reporter(out=open(os.devnull, "w"))
    )


@pytest.mark.parametrize(
    ("answers", "code", "present"),
    [
        (["yes", "yes"], 0, set()),
        (["no", "yes"], 3, {"docker/x"}),
        (["all"], 0, set()),
        (["quit"], 3, {"docker/x"}),  # quit: nothing new starts, ai never runs
        (["what?", "y", "n"], 3, {"ai/x"}),
    ],
)
def test_gates_ask_on_a_terminal(env, monkeypatch, answers, code, present):
    monkeypatch.chdir(env.project.root)
    env.project.runbook(
        "gated", GATED.replace("targets: [docker, ai]", "targets: [docker, ai]\nconcurrency: 1")
    )
    asked: list[str] = []
    req = _request(env, answers, asked)
    loaded, targets, plan = session.make_plan(req, "gated", {}, None)
    result = session.execute(req, loaded, targets, plan)
    assert result.exit_code == code
    assert env.world.present() == present
    assert (
        asked and "now:     - delete x" in asked[0] and "[y]es / [n]o / [a]ll / [q]uit" in asked[0]
    )


ROLLING = """
name: rolling
targets: tag:monitored
serial: 2
max_fail: 1
steps:
  - id: up
    test.resource: {name: svc}
"""


def test_rolling_batches_stop_at_max_fail(env):
    env.project.runbook("rolling", ROLLING)
    for target in ("media", "ai"):  # batch 2 (media, ai) fails twice: 2 > max_fail 1
        env.world.fail(f"{target}/svc")
    result = env.run("run", "rolling")
    assert result.code == 1
    assert "rollout stopped: 2 targets failed (max_fail 1); 2 targets not started" in result.out
    assert sorted(env.world.calls("apply")) == [
        "ai/svc",
        "docker/svc",
        "homeassistant/svc",
        "media/svc",
    ]
    statuses = env.steps(env.runs()[-1].id)
    assert statuses[("dev", "up")] == statuses[("pve", "up")] == "not run"


def test_one_failure_within_max_fail_goes_on(env):
    env.project.runbook("rolling", ROLLING)
    env.world.fail("docker/svc")
    result = env.run("run", "rolling")
    assert result.code == 1  # a target failed, but the rollout finished
    assert len(env.world.calls("apply")) == 6


POLICY = """
name: policy
targets: [ai]
steps:
  - id: flaky
    test.resource: {name: flaky}
    retries: 3
    interval: 10ms
    backoff: 2
  - id: broken
    test.resource: {name: broken}
    on_failure: continue
  - id: next
    test.resource: {name: next}
  - id: fatal
    test.resource: {name: fatal}
    on_failure: [undo]
  - id: never
    test.resource: {name: never}
verify:
  - id: look
    wait: {duration: 1ms}
always:
  - id: cleanup
    test.resource: {name: cleanup}
handlers:
  - id: undo
    test.resource: {name: undo}
"""


def test_retries_on_failure_handlers_and_always(env):
    env.project.runbook("policy", POLICY)
    env.world.fail("ai/flaky", 2)
    env.world.fail("ai/broken", 99)
    env.world.fail("ai/fatal", 99)
    result = env.run("run", "policy")
    assert result.code == 1
    applies = env.world.calls("apply")
    assert applies.count("ai/flaky") == 3  # two failures, then success
    assert applies.count("ai/broken") == 1 and "ai/next" in applies  # continue
    assert "ai/undo" in applies and "ai/never" not in applies  # handler, then abort
    assert applies[-1] == "ai/cleanup"  # always, even after the failure
    statuses = env.steps(env.runs()[-1].id)
    assert statuses[("ai", "look")] == "not run"  # verify only after success
    assert statuses[("ai", "flaky")] == "succeeded" and statuses[("ai", "fatal")] == "failed"
    j = env.journal()
    flaky = next(s for s in j.steps(env.runs()[-1].id) if s.step_id == "flaky")
    j.close()
    assert flaky.attempts == 3


def test_preflight_failure_changes_nothing(env):
    env.project.runbook(
        "pre",
        """
        name: pre
        targets: [ai]
        preflight:
          - id: hub
            check.tcp: {host: 127.0.0.1, port: 9, timeout: 1s}
        steps:
          - id: make
            test.resource: {name: x}
        """,
    )
    result = env.run("run", "pre")
    assert result.code == 1
    assert "preflight failed" in result.out
    assert env.world.calls("apply") == []


def test_a_change_past_its_timeout_is_unknown_not_retried(env):
    """Cut short by its timeout, a change may have happened, or may still be happening (a
    Proxmox task, a request in flight: only an SSH command is stopped, see test_ssh_actions):
    the step is unknown, not retried blindly, and resume probes it again."""
    env.project.runbook(
        "slow",
        "name: slow\ntargets: [ai]\nsteps:\n  - id: s\n    test.resource: {name: s, sleep: 5}\n"
        "    timeout: 200ms\n    retries: 2\n    interval: 0s\n",
    )
    started = time.monotonic()
    result = env.run("run", "slow")
    assert result.code == 1 and time.monotonic() - started < 4
    assert "timed out after 200ms; what it started may still be going on" in result.out
    assert "resume probes it again" in result.out
    assert env.world.calls("apply") == ["ai/s"]  # once, though it allows retries


def test_when_uses_registered_outputs_at_run_time(env):
    env.project.runbook(
        "reg",
        """
        name: reg
        targets: [ai]
        steps:
          - id: make
            test.resource: {name: a}
            register: made
          - id: follow
            test.resource: {name: "{{ made.name }}-b"}
            when: "made.changed"
          - id: skip
            test.resource: {name: c}
            when: "not made.changed"
        """,
    )
    plan = env.run("run", "reg", "--dry-run")
    assert "? follow" in plan.out and "known after apply" in plan.out
    result = env.run("run", "reg")
    assert result.code == 0, result.err
    assert env.world.present() == {"ai/a", "ai/a-b"}


def test_json_event_stream(env):
    env.project.runbook("deploy", RUNBOOK)
    result = env.run("run", "deploy", "--json", "--limit", "ai")
    lines = [json.loads(line) for line in result.out.splitlines()]
    kinds = [e["event"] for e in lines]
    assert kinds[0] == "plan" and kinds[1] == "run" and kinds[-1] == "done"
    assert lines[-1]["status"] == "succeeded" and lines[-1]["exit_code"] == 0
    assert {e["step"] for e in lines if e["event"] == "step"} == {"first", "second"}


def test_plan_formats_are_deterministic(env):
    env.project.runbook("deploy", RUNBOOK)
    one = env.run("plan", "deploy", "--format", "md")
    two = env.run("plan", "deploy", "--format", "md")
    assert one.code == 0 and one.out == two.out
    assert "| `+` | `first` | test.resource | create app-1 |" in one.out
    data = json.loads(env.run("plan", "deploy", "--format", "json").out)
    assert data["format_version"] == 1 and len(data["fingerprint"]) == 64


# --- resume ------------------------------------------------------------------------------


def test_resume_runs_exactly_the_unfinished_steps(env):
    env.project.runbook("deploy", RUNBOOK)
    env.world.fail("ai/app-2", 1)
    first = env.run("run", "deploy")
    assert first.code == 1
    run_id = env.runs()[-1].id
    resumed = env.run("resume", run_id)
    assert resumed.code == 0, resumed.err
    applies = env.world.calls("apply")
    assert applies.count("ai/app-2") == 2 and applies.count("ai/app-1") == 1
    assert len(applies) == 13
    latest = env.runs()[0]
    assert latest.resumed_from == run_id
    statuses = env.steps(latest.id)
    assert statuses[("ai", "second")] == "succeeded" and statuses[("docker", "first")] == "skipped"


def test_resume_keeps_the_runs_own_params_null_defaults_included(env):
    """A param left at its null default is journaled as null: resume takes it back as the run
    had it (it used to refuse it: `param version: expected a string, got None`, exit 2)."""
    env.project.runbook(
        "deploy",
        RUNBOOK.replace(
            "thing: {default: app}", "thing: {default: app}\n  version: {type: str, default: null}"
        ).replace('"{{ params.thing }}-2"', '"{{ params.thing }}-{{ params.version or 2 }}"'),
    )
    env.world.fail("ai/app-2", 1)
    assert env.run("run", "deploy").code == 1
    run = env.runs()[0]
    assert run.params == {"thing": "app", "version": None}
    resumed = env.run("resume", run.id)
    assert resumed.code == 0, resumed.err
    assert env.runs()[0].params == run.params
    assert "ai/app-2" in env.world.present()


def test_resume_refuses_a_changed_runbook_unless_forced(env):
    env.project.runbook("deploy", RUNBOOK)
    env.world.fail("ai/app-2", 1)
    env.run("run", "deploy")
    run_id = env.runs()[-1].id
    env.project.runbook("deploy", RUNBOOK.replace("app", "ap"))
    refused = env.run("resume", run_id)
    assert refused.code == 4 and "--force" in refused.err
    forced = env.run("resume", run_id, "--force")
    assert forced.code == 0, forced.err


def test_history_and_show_run(env):
    env.project.runbook("deploy", RUNBOOK)
    env.run("run", "deploy", "--limit", "ai")
    history = json.loads(env.run("history", "--json").out)
    assert history[0]["runbook"] == "deploy" and history[0]["status"] == "succeeded"
    shown = json.loads(env.run("show-run", history[0]["id"][:12], "--json").out)
    assert [s["step"] for s in shown["steps"]] == ["first", "second"]
    assert env.run("show-run", "nope").code == 2


THREE = """
name: three
targets: [docker, ai]
steps:
  - id: a
    test.resource: {name: a}
  - id: b
    test.resource: {name: b}
  - id: c
    test.resource: {name: c}
"""


def _history_row(env, run_id: str) -> str:
    listed = env.run("history")
    assert listed.code == 0, listed.err
    (line,) = [line for line in listed.out.splitlines() if line.startswith(run_id)]
    return line


def _summary_counts(out: str, run_id: str) -> str:
    (line,) = [line for line in out.splitlines() if line.startswith(f"run {run_id} ")]
    return line.split(": ", 1)[1]


def test_the_summary_and_history_count_the_same_steps(env):
    """A failed run: the end-of-run summary counted targets as 'not run' where history counts
    steps; both now count the journal's steps, in the same words."""
    env.project.runbook("three", THREE)
    env.world.fail("ai/b", 1)
    ran = env.run("run", "three", "--json")
    assert ran.code == 1, ran.err
    done = json.loads(ran.out.splitlines()[-1])
    history = json.loads(env.run("history", "--json").out)
    assert history[0]["id"] == done["run_id"] and history[0]["exit_code"] == 1
    assert done["counts"] == history[0]["steps"] == {"succeeded": 4, "failed": 1, "not run": 1}
    # The text twins: the summary line's counts are the history row's.
    env.world.fail("ai/b", 1)
    env.project.runbook("three", THREE.replace("name: c}", "name: c2}"))
    text = env.run("run", "three")
    run_id = env.runs()[0].id
    counts = _summary_counts(text.out, run_id)
    assert counts == "1 ok, 3 unchanged, 1 failed, 0 skipped, 1 not run", text.out
    row = _history_row(env, run_id)
    assert row.split()[6:8] == ["failed", "1"], row  # STATUS, EXIT
    assert row.endswith(counts), row


# --- processes: SIGKILL, Ctrl-C, locks ---------------------------------------------------

SLOW = """
name: slow
targets: [ai]
steps:
  - id: quick
    test.resource: {name: quick}
  - id: slow
    test.resource: {name: slow, sleep: SLEEP}
  - id: last
    test.resource: {name: last}
always:
  - id: cleanup
    test.resource: {name: cleanup}
"""


def _wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def test_sigkill_mid_run_leaves_an_honest_journal_then_resume(env):
    env.project.runbook("slow", SLOW.replace("SLEEP", "30"))
    proc = env.spawn("run", "slow")
    _wait_for(lambda: "ai/slow" in env.world.calls("apply"))
    proc.kill()
    proc.wait()
    run = env.runs()[0]
    assert run.status == "running" and run.shown_status == "killed"
    statuses = env.steps(run.id)
    assert statuses[("ai", "quick")] == "succeeded"
    assert statuses[("ai", "slow")] == "started"  # honest: it began and never ended
    assert statuses[("ai", "last")] == "pending"
    history = env.run("history")
    assert "killed" in history.out
    # Killed: no exit code was ever recorded (the process died before it could), shown '-'
    # and null, never invented.
    row = _history_row(env, run.id)
    assert row.split()[6:8] == ["killed", "-"], row
    (listed,) = [r for r in json.loads(env.run("history", "--json").out) if r["id"] == run.id]
    assert listed["status"] == "killed" and listed["exit_code"] is None
    assert listed["steps"] == {"succeeded": 1, "started": 1, "pending": 2}
    # The killed apply never finished: resume re-probes it, runs it and what followed, and
    # not what succeeded. (The runbook drops the sleep, so resuming needs --force.)
    env.project.runbook("slow", SLOW.replace("SLEEP", "0"))
    assert env.run("resume", run.id).code == 4
    resumed = env.spawn("resume", run.id, "--force")
    out, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, err
    applies = env.world.calls("apply")
    assert applies.count("ai/quick") == 1 and applies.count("ai/slow") == 2
    assert applies.count("ai/last") == 1 and env.world.present() >= {"ai/slow", "ai/last"}
    # The resumed run's summary and its history row agree.
    again = env.runs()[0]
    counts = _summary_counts(out, again.id)
    assert counts == "3 ok, 0 unchanged, 0 failed, 1 skipped", out
    assert _history_row(env, again.id).endswith(counts)


def test_ctrl_c_lets_the_running_step_finish_then_runs_always(env):
    env.project.runbook("slow", SLOW.replace("SLEEP", "1.5"))
    proc = env.spawn("run", "slow")
    _wait_for(lambda: "ai/slow" in env.world.calls("apply"))
    proc.send_signal(2)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    applies = env.world.calls("apply")
    assert "ai/last" not in applies and applies[-1] == "ai/cleanup"
    assert "ai/slow" in env.world.present()  # the running step finished in its grace period
    run = env.runs()[0]
    assert run.status == "interrupted"
    statuses = env.steps(run.id)
    assert statuses[("ai", "slow")] == "succeeded" and statuses[("ai", "last")] == "not run"


def test_second_ctrl_c_cancels_at_once(env):
    env.project.runbook("slow", SLOW.replace("SLEEP", "30"))
    proc = env.spawn("run", "slow")
    _wait_for(lambda: "ai/slow" in env.world.calls("apply"))
    proc.send_signal(2)
    time.sleep(0.3)
    proc.send_signal(2)
    proc.communicate(timeout=15)
    assert proc.returncode == 130
    assert "ai/cleanup" not in env.world.calls("apply")
    statuses = env.steps(env.runs()[0].id)
    assert statuses[("ai", "slow")] == "interrupted"


def test_two_runs_on_one_target(env):
    env.project.runbook("slow", SLOW.replace("SLEEP", "3"))
    env.project.runbook(
        "other", "name: other\ntargets: [ai]\nsteps:\n  - id: o\n    test.resource: {name: o}\n"
    )
    first = env.spawn("run", "slow")
    _wait_for(lambda: "ai/slow" in env.world.calls("apply"))
    refused = env.run("run", "other")
    assert refused.code == 5
    assert re.search(r"ai is locked by run \S+ \(pid \d+ on .+, since .+\)", refused.err)
    waited = env.spawn("run", "other", "--lock-wait", "30s")
    out, err = waited.communicate(timeout=60)
    assert waited.returncode == 0, err
    assert "waiting for the lock on ai" in out
    first.communicate(timeout=30)
    applies = env.world.calls("apply")
    assert applies.index("ai/o") > applies.index("ai/cleanup")  # strictly after the first run


def test_lock_of_a_dead_process_is_recovered(env):
    env.project.runbook("deploy", RUNBOOK)
    locks = env.state / "locks"
    locks.mkdir(parents=True)
    (locks / "ai.lock").write_text(
        json.dumps({"run_id": "old", "pid": 999999, "host": os.uname().nodename, "since": 1.0})
    )
    result = env.run("run", "deploy", "--limit", "ai")
    assert result.code == 0, result.err
    assert "recovered the lock on ai from run old (pid 999999" in result.out
    assert env.run("unlock").code == 0
    assert "ai" in env.run("unlock").out


# --- secrets -----------------------------------------------------------------------------


def test_a_secret_reaches_no_sink(env, monkeypatch):
    value = "s3cr3t-Value-" + os.urandom(4).hex()
    monkeypatch.setenv("OPSKIT_TEST_SECRET", value)
    env.project.runbook(
        "secret",
        """
        name: secret
        targets: [ai, docker]
        secrets:
          token: env:OPSKIT_TEST_SECRET
        steps:
          - id: use
            test.resource: {name: "x", echo: "token={{ secrets.token }}"}
            register: used
          - id: again
            test.resource: {name: "y", echo: "{{ used.echo }}"}
        """,
    )
    env.world.fail("docker/x", 1)  # the failure message carries the secret too
    outputs = []
    for fmt in ("text", "md", "json"):
        r = env.run("plan", "secret", "--format", fmt, "-o", f"plan.{fmt}")
        outputs += [r.out, r.err, (env.project.root / f"plan.{fmt}").read_text()]
    r = env.run("run", "secret", "--json")
    outputs += [r.out, r.err]
    r = env.run("run", "secret")
    outputs += [r.out, r.err]
    for run in env.runs():
        outputs.append(env.run("show-run", run.id, "--json").out)
    assert env.world.read()["calls"]  # the runs happened
    assert "token=‹secret:token›" in "".join(outputs)  # redacted, not missing
    blobs = [text.encode() for text in outputs]
    blobs += [p.read_bytes() for p in env.state.rglob("*") if p.is_file()]
    assert len(blobs) > 10
    for blob in blobs:
        assert value.encode() not in blob
    # the journal really holds the step outputs (so the check above could have failed)
    db = sqlite3.connect(env.state / "journal.db")
    assert db.execute("SELECT count(*) FROM steps WHERE outputs LIKE '%secret:token%'").fetchone()[
        0
    ]


def _read_until(fd: int, marker: bytes, timeout: float = 20.0) -> bytes:
    import select

    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} in {seen[-500:]!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    return seen


def test_gates_on_a_real_terminal(env):
    import pty

    env.project.runbook(
        "gated", GATED.replace("targets: [docker, ai]", "targets: [docker, ai]\nconcurrency: 1")
    )
    master, slave = pty.openpty()
    child_env = {k: v for k, v in os.environ.items() if k != "CI"}
    code = (
        f"import sys; sys.path.insert(0, {str(TESTS)!r}); import fakes; fakes.install();"
        " from opskit.cli import main; main()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "run", "gated"],
        cwd=env.project.root,
        env=child_env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    try:
        first = _read_until(master, b"[q]uit")
        assert b"vm 100 (docker): step wipe" in first and b"- delete x" in first
        os.write(master, b"y\n")
        second = _read_until(master, b"[q]uit")
        assert b"vm 110 (ai): step wipe" in second
        os.write(master, b"n\n")
        _read_until(master, b"declined")
        assert proc.wait(timeout=20) == 3
    finally:
        proc.kill()
        os.close(master)
    assert env.world.present() == {"ai/x"}


def test_unlock_refuses_a_live_holder_unless_forced(env, tmp_path):
    from opskit.engine.locks import TargetLocks, list_locks, unlock
    from opskit.errors import LockError

    locks_dir = tmp_path / "locks"
    held = TargetLocks(locks_dir, "run-a", say=lambda _: None)
    held.acquire(["ai"])
    try:
        other = TargetLocks(locks_dir, "run-b", say=lambda _: None)
        with pytest.raises(LockError, match="ai is locked by run run-a"):
            other.acquire(["docker", "ai"])
        assert [name for name, _, is_held in list_locks(locks_dir) if is_held] == ["ai"]
        with pytest.raises(LockError, match="which is running"):
            unlock(locks_dir, "ai")
        assert "broke the lock held by run run-a" in unlock(locks_dir, "ai", force=True)
        other.acquire(["ai"])  # the lock file was removed: a new run may lock again
        other.release()
    finally:
        held.release()
    assert unlock(locks_dir, "docker") == "docker: not locked"


def test_step_serial_limits_targets_running_it_at_once(env):
    env.project.runbook(
        "serial",
        """
        name: serial
        targets: tag:monitored
        concurrency: 6
        steps:
          - id: one-at-a-time
            test.resource: {name: s, sleep: 0.1}
            serial: 1
        """,
    )
    result = env.run("run", "serial", "--json")
    assert result.code == 0, result.err
    events = [json.loads(line) for line in result.out.splitlines()]
    running, most = 0, 0
    for e in events:
        if e["event"] == "step":
            running += 1 if e["status"] == "started" else -1
            most = max(most, running)
    assert most == 1 and len(env.world.calls("apply")) == 6
