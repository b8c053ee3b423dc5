"""`opskit run --scheduled`: standing approvals, the maintenance window, the journal's mark."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import datetime

from opskit.store import DONE, Journal
from test_engine import env  # noqa: F401 - a fixture

UPKEEP = """
name: upkeep
targets: [docker, ai]
schedule:
  on: "Sun 03:00"
  APPROVE
steps:
  - id: make
    test.resource: {name: x}
  - id: wipe
    test.destroy: {name: x, state: absent}
"""


def upkeep(approve: str = "") -> str:
    return UPKEEP.replace("APPROVE", approve)


def test_a_scheduled_run_is_journaled_as_such_and_history_says_so(env):  # noqa: F811
    env.project.runbook("upkeep", upkeep("approve: {steps: [wipe]}"))
    done = env.run("run", "upkeep", "--scheduled")
    assert done.code == 0, done.out + done.err
    assert "passes its gate by the runbook's standing approval" in done.out
    assert sorted(env.world.calls("apply")) == ["ai/x", "ai/x", "docker/x", "docker/x"]
    runs = env.runs()
    assert len(runs) == 1 and runs[0].scheduled and runs[0].status == "succeeded"
    history = json.loads(env.run("history", "--json").out)
    assert history[0]["scheduled"] is True
    table = env.run("history").out
    assert " BY " in table.splitlines()[0] and " timer " in table.splitlines()[1]
    assert "(scheduled: started by its timer)" in env.run("show-run", runs[0].id).out
    # a run by hand is not scheduled
    assert env.run("run", "upkeep", "--yes").code == 0
    newest = json.loads(env.run("history", "--json").out)[0]
    assert newest["scheduled"] is False and " hand " in env.run("history").out.splitlines()[1]


def test_a_gate_not_covered_fails_closed_before_any_change(env):  # noqa: F811
    env.project.runbook("upkeep", upkeep())
    done = env.run("run", "upkeep", "--scheduled")
    assert done.code == 3, done.out + done.err
    assert "needs approval" in done.err and "wipe" in done.err
    assert env.world.calls("apply") == []  # nothing changed
    (row,) = env.runs()
    assert row.scheduled and row.status == "needs approval" and row.exit_code == 3
    assert set(env.steps(row.id).values()) == {"not run"}


def test_approvals_by_risk_and_a_cap_on_targets_changed(env):  # noqa: F811
    env.project.runbook("upkeep", upkeep("approve: {risk: [destructive], max_targets: 1}"))
    done = env.run("run", "upkeep", "--scheduled")
    assert done.code == 3 and "2 targets would change" in done.err, done.err
    assert env.world.calls("apply") == []
    assert env.run("run", "upkeep", "--scheduled", "--limit", "ai").code == 0
    assert sorted(env.world.calls("apply")) == ["ai/x", "ai/x"]


def test_scheduled_refuses_yes_and_needs_a_schedule(env):  # noqa: F811
    env.project.runbook("upkeep", upkeep("approve: {steps: [wipe]}"))
    env.project.runbook(
        "plain", "name: plain\ntargets: [ai]\nsteps:\n  - id: make\n    test.resource: {name: x}\n"
    )
    assert env.run("run", "upkeep", "--scheduled", "--yes").code == 2
    done = env.run("run", "plain", "--scheduled")
    assert done.code == 2 and "has no schedule" in done.err


def test_dry_run_says_whether_a_scheduled_run_would_pass(env):  # noqa: F811
    env.project.runbook("upkeep", upkeep())
    done = env.run("run", "upkeep", "--scheduled", "--dry-run")
    assert done.code == 3 and "would need approval" in done.err
    env.project.runbook("upkeep", upkeep("approve: {steps: [wipe]}"))
    done = env.run("run", "upkeep", "--scheduled", "--dry-run")
    assert done.code == 0 and "would pass its gates" in done.out
    assert env.world.calls("apply") == [] and env.runs() == []


def test_outside_its_window_it_refuses_to_start(env):  # noqa: F811
    # A window that opened more than an hour ago and lasted a minute.
    start = datetime.now().astimezone().replace(microsecond=0).timestamp() - 3600
    opened = datetime.fromtimestamp(start).strftime("%Y-%m-%d %H:%M:%S")
    window = f'window: {{start: "{opened}", duration: 1m}}'
    env.project.runbook("upkeep", upkeep(f"approve: {{steps: [wipe]}}\n  {window}"))
    done = env.run("run", "upkeep", "--scheduled")
    assert done.code == 6, done.out + done.err
    assert "outside its maintenance window" in done.err and "never again" in done.err
    assert env.world.read()["calls"] == []  # not even planned: nothing was asked
    (row,) = env.runs()
    assert row.scheduled and row.status == "refused" and row.exit_code == 6


WINDOWED = """
name: windowed
targets: [ai]
schedule:
  on: "*:*:0/10"
  window: {duration: 4s}
steps:
  - id: quick
    test.resource: {name: quick}
  - id: slow
    test.resource: {name: slow, sleep: 5}
  - id: third
    test.resource: {name: third}
  - id: fourth
    test.resource: {name: fourth}
always:
  - id: cleanup
    test.resource: {name: cleanup}
"""


def _at_window_start(period: float = 10.0) -> None:
    """Wait for the next window of `*:*:0/10` (it opens each 10 s, for 4 s) to open."""
    wait = period - (time.time() % period)
    time.sleep(wait + 0.05)


def _interrupted_by_the_window(env) -> tuple[str, set[str]]:  # noqa: F811
    env.project.runbook("windowed", WINDOWED)
    _at_window_start()
    done = env.run("run", "windowed", "--scheduled")
    assert done.code == 130, done.out + done.err
    assert "the maintenance window closed" in done.out
    (row,) = env.runs()
    assert row.status == "interrupted" and row.scheduled
    assert "the maintenance window closed" in (row.message or "")
    steps = env.steps(row.id)
    finished = {step for (_, step), status in steps.items() if status in DONE}
    # honest: the running step finished in its grace, nothing after it started, the
    # always-step ran
    assert {"quick", "slow", "cleanup"} <= finished
    assert steps[("ai", "third")] == steps[("ai", "fourth")] == "not run"
    applied = env.world.calls("apply")
    assert "ai/third" not in applied and "ai/cleanup" in applied
    return row.id, finished


def test_a_window_closing_mid_run_then_resume_finishes_exactly_the_rest(env):  # noqa: F811
    run_id, finished = _interrupted_by_the_window(env)
    before = len(env.world.calls("apply"))
    done = env.run("resume", run_id)
    assert done.code == 0, done.out + done.err
    assert env.world.calls("apply")[before:] == ["ai/third", "ai/fourth"]
    newest = env.runs()[0]
    assert newest.resumed_from == run_id and newest.status == "succeeded"
    statuses = env.steps(newest.id)
    assert {s for (_, s), st in statuses.items() if st == "skipped"} == finished


def test_the_next_window_continues_an_interrupted_scheduled_run(env):  # noqa: F811
    run_id, _ = _interrupted_by_the_window(env)
    before = len(env.world.calls("apply"))
    _at_window_start()
    done = env.run("run", "windowed", "--scheduled")
    assert done.code == 0, done.out + done.err
    assert f"continuing scheduled run {run_id}" in done.out
    assert env.world.calls("apply")[before:] == ["ai/third", "ai/fourth"]
    newest = env.runs()[0]
    assert newest.resumed_from == run_id and newest.scheduled and newest.status == "succeeded"


def test_a_journal_of_an_older_opskit_is_migrated_in_place(tmp_path):
    path = tmp_path / "journal.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO meta VALUES ('schema_version', '1');"
        "CREATE TABLE runs (id TEXT PRIMARY KEY, runbook TEXT NOT NULL, runbook_path TEXT,"
        " runbook_sha TEXT, inventory_path TEXT, inventory_sha TEXT, fingerprint TEXT,"
        " params TEXT, limit_sel TEXT, status TEXT NOT NULL, exit_code INTEGER, message TEXT,"
        " started_at REAL NOT NULL, ended_at REAL, pid INTEGER, host TEXT, opskit_version TEXT,"
        " resumed_from TEXT, plan TEXT);"
        "INSERT INTO runs (id, runbook, status, started_at) VALUES ('old-1', 'x', 'succeeded', 1);"
    )
    old.commit()
    old.close()
    journal = Journal(path)
    try:
        (row,) = journal.runs()
        assert row.id == "old-1" and row.scheduled is False
        version = journal.db.execute("SELECT value FROM meta WHERE key='schema_version'")
        assert version.fetchone()[0] == "2"
    finally:
        journal.close()
    Journal(path).close()  # opened again: nothing left to migrate
