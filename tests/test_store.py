"""The journal on its own: what is committed when, and what a reader sees."""

from __future__ import annotations

from opskit.store import Journal


def _run(j: Journal) -> None:
    j.start_run(
        "r1",
        runbook="rb",
        runbook_path="runbooks/rb.yaml",
        runbook_sha="s",
        inventory_path="i",
        inventory_sha="s",
        fingerprint="f",
        params={"p": 1},
        limit=None,
        opskit_version="0",
        plan={},
        steps=[
            ("t", "a", 0, "steps", "x", "update", "make a"),
            ("t", "b", 1, "steps", "x", "update", "make b"),
        ],
    )


def test_a_start_is_committed_before_the_step_acts_and_its_end_with_the_run(tmp_path):
    writer = Journal(tmp_path / "j.db")
    reader = Journal(tmp_path / "j.db")
    _run(writer)
    writer.step_started("r1", "t", "a", 1)
    writer.flush()  # what the engine does before the step acts
    assert {s.step_id: s.status for s in reader.steps("r1")} == {"a": "started", "b": "pending"}
    writer.attempt_finished("r1", "t", "a", 1, "failed", "boom")
    writer.step_finished("r1", "t", "a", "failed", summary="tried", error="boom")
    writer.finish_run("r1", "failed", 1)
    steps = {s.step_id: s for s in reader.steps("r1")}
    assert (steps["a"].status, steps["a"].error, steps["a"].summary) == ("failed", "boom", "tried")
    assert steps["b"].status == "not run"
    run = reader.run("r1")
    assert run is not None and (run.status, run.exit_code) == ("failed", 1)
    writer.close()
    reader.close()


def test_a_killed_run_keeps_its_started_step_and_shows_as_killed(tmp_path):
    writer = Journal(tmp_path / "j.db")
    _run(writer)
    writer.step_started("r1", "t", "a", 1)
    writer.flush()
    writer.db.execute("UPDATE runs SET pid = 999999 WHERE id = 'r1'")  # the process is gone
    reader = Journal(tmp_path / "j.db")
    run = reader.run("r1")
    assert run is not None and (run.status, run.shown_status) == ("running", "killed")
    assert reader.steps("r1")[0].status == "started"


def test_every_text_is_redacted(tmp_path):
    j = Journal(tmp_path / "j.db", redact=lambda text: text.replace("hunter2", "‹secret›"))
    _run(j)
    j.step_finished("r1", "t", "a", "failed", error="pw hunter2", outputs={"echo": "hunter2"})
    j.finish_run("r1", "failed", 1, "hunter2 again")
    j.close()
    assert b"hunter2" not in (tmp_path / "j.db").read_bytes()
