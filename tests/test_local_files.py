"""opskit's own files on this machine when they cannot be written: the journal on a disk that
fills up mid-run (a real tmpfs, in a mount namespace of the test's own), a saved plan, the
logs. One clear message and exit 74, nothing acting unrecorded, and resume once there is room."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from labkit import require_root
from opskit.errors import LocalFileError
from opskit.localfile import write_atomic
from opskit.report.logfile import LogFile
from opskit.store import Journal

TESTS = Path(__file__).resolve().parent

# Two targets, two slow steps each, then a third; the disk fills while the first ones run.
FILLING = """
name: filling
targets: [ai, dev]
steps:
  - id: one
    test.resource: {name: one, sleep: 1.5}
  - id: two
    test.resource: {name: two, sleep: 0.2}
  - id: three
    test.resource: {name: three}
"""

# Run inside `unshare --mount`: a 1 MiB tmpfs holds the state directory; once both targets'
# step `one` is applying, the disk is filled; then, with room again, the run is resumed.
SCENARIO = r"""
import json, os, subprocess, sys, time
state, world, project, tests = sys.argv[1:5]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", state], check=True)
code = ("import sys; sys.path.insert(0, %r); import fakes; fakes.install();"
        " from opskit.cli import main; main()") % tests
env = dict(os.environ, OPSKIT_STATE_DIR=os.path.join(state, "s"))
def opskit(*args):
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
def applied():
    try:
        calls = json.load(open(world))["calls"]
    except (OSError, ValueError):
        return []
    return [c[1] for c in calls if c[0] == "apply"]
run = opskit("run", "filling", "--yes")
deadline = time.time() + 60
while not {"ai/one", "dev/one"} <= set(applied()) and time.time() < deadline:
    time.sleep(0.05)
filler = os.path.join(state, "filler")
with open(filler, "wb") as f:  # every block the tmpfs has left
    try:
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    except OSError:
        pass
out, err = run.communicate(timeout=120)
applied_full = applied()
history = subprocess.run([sys.executable, "-c", code, "history", "--json"], cwd=project,
                         env=env, capture_output=True, text=True)
os.unlink(filler)
resumed = opskit("resume", json.loads(history.stdout)[0]["id"], "--yes")
rout, rerr = resumed.communicate(timeout=120)
print(json.dumps({"code": run.returncode, "out": out, "err": err, "applied_full": applied_full,
                  "history": history.stdout, "history_code": history.returncode,
                  "resume_code": resumed.returncode, "resume_out": rout, "resume_err": rerr,
                  "applied": applied()}))
"""


def test_a_disk_that_fills_mid_run_stops_the_run_cleanly_and_resume_finishes_it(project, tmp_path):
    require_root()
    project.runbook("filling", FILLING)
    state = tmp_path / "mnt"
    state.mkdir()
    world = tmp_path / "world.json"
    import fakes

    env = dict(os.environ, **{fakes.WORLD_ENV: str(world)})
    env.pop("OPSKIT_STATE_DIR", None)
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", SCENARIO]
        + [str(p) for p in (state, world, project.root, TESTS)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    said = seen["out"] + seen["err"]
    # One clear message and exit 74, no traceback, no "bug in opskit".
    assert seen["code"] == 74, said
    assert "Traceback" not in said and "internal error" not in said
    assert "cannot write the journal" in said and "No space left on device" in said
    assert "starting nothing new" in said
    assert "opskit resume" in said
    # The steps already running went on to their end; nothing started once the journal
    # could not say so.
    assert {"ai/one", "dev/one"} <= set(seen["applied_full"])
    assert not [key for key in seen["applied_full"] if key.endswith("/three")], seen
    # Reads still work on the full disk; the run is not shown succeeded.
    assert seen["history_code"] == 0, seen
    row = json.loads(seen["history"])[0]
    assert row["status"] in ("killed", "interrupted"), row
    # With room again, resume runs what was left, and only that.
    assert seen["resume_code"] == 0, seen["resume_out"] + seen["resume_err"]
    applied = seen["applied"]
    assert applied.count("ai/three") == 1 and applied.count("dev/three") == 1, applied
    assert applied.count("ai/one") == 1 and applied.count("dev/one") == 1, applied


# --- the journal: a commit that fails keeps what waits, and drops the starts it held ----------


class _FailingCommits:
    """A sqlite3 connection whose COMMITs fail while `full` is set (a full disk's answer)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.full = False

    def execute(self, sql: str, *args):
        if self.full and sql.strip().upper().startswith("UPDATE"):
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.db, name)

    def __enter__(self):
        return self.db.__enter__()

    def __exit__(self, *exc):
        return self.db.__exit__(*exc)


def _journal_with_a_run(path: Path) -> Journal:
    journal = Journal(path)
    journal.start_run(
        "r1",
        runbook="rb",
        runbook_path="rb.yaml",
        runbook_sha="s",
        inventory_path="i.yaml",
        inventory_sha="s",
        fingerprint="f",
        params={},
        limit=None,
        opskit_version="0",
        plan={},
        steps=[
            ("ai", step, seq, "steps", "x", "create", None)
            for seq, step in enumerate(["one", "two"])
        ],
    )
    return journal


def test_a_failed_commit_keeps_the_finished_steps_and_forgets_the_starts(tmp_path):
    journal = _journal_with_a_run(tmp_path / "journal.db")
    failing = _FailingCommits(journal.db)
    journal.db = failing  # type: ignore[assignment]
    journal.step_started("r1", "ai", "one", 1)
    journal.flush()
    journal.attempt_finished("r1", "ai", "one", 1, "succeeded", None)
    journal.step_finished("r1", "ai", "one", "succeeded", summary="made")
    journal.step_started("r1", "ai", "two", 1)
    failing.full = True
    with pytest.raises(LocalFileError, match=r"cannot write the journal .*journal\.db"):
        journal.flush()
    journal.forget_starts()  # what the engine does: step two does not act
    failing.full = False
    journal.finish_run("r1", "interrupted", 74, "stopped")
    statuses = {s.step_id: s.status for s in journal.steps("r1")}
    # One's end, written by the later commit; two never said to have started.
    assert statuses == {"one": "succeeded", "two": "not run"}
    journal.close()


def test_a_journal_under_a_file_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(LocalFileError) as raised:
        Journal(tmp_path / "file" / "journal.db")
    assert str(raised.value).startswith(f"cannot write the journal {tmp_path}/file/journal.db: ")
    assert "Not a directory" in str(raised.value)


# --- files written whole or not at all -----------------------------------------------------


def test_write_atomic_leaves_the_old_file_when_the_write_fails(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text("old")
    # Its temporary cannot be made (a directory holds the name): as a full disk, for root too.
    (tmp_path / f".plan.json.{os.getpid()}.tmp").mkdir()
    with pytest.raises(LocalFileError, match=r"cannot write the plan file .*plan\.json: Is a dir"):
        write_atomic(plan, "new", what="the plan file")
    assert plan.read_text() == "old"


def test_write_atomic_replaces_whole_keeps_symlinks_and_writes_through_devices(tmp_path):
    real = tmp_path / "real.json"
    link = tmp_path / "link.json"
    link.symlink_to(real)
    write_atomic(link, "one", what="the plan file")
    assert link.is_symlink() and real.read_text() == "one"
    write_atomic(link, "two", what="the plan file")
    assert real.read_text() == "two" and sorted(p.name for p in tmp_path.iterdir()) == [
        "link.json",
        "real.json",
    ]
    # A device is written to, never renamed over.
    write_atomic(Path("/dev/null"), "x", what="the plan file")
    assert Path("/dev/null").is_char_device()
    with pytest.raises(LocalFileError, match=r"No such file or directory \(no directory "):
        write_atomic(tmp_path / "missing" / "plan.json", "x", what="the plan file")


def test_a_log_that_cannot_be_written_is_said_once_and_the_run_goes_on(tmp_path):
    said: list[str] = []
    (tmp_path / "logs").write_text("")  # its directory is a file
    log = LogFile(tmp_path / "logs" / "ai.log", said.append)
    log.write("line 1\n", flush=True)
    log.write("line 2\n", flush=True)
    assert len(said) == 1 and "cannot write the log" in said[0] and "goes on" in said[0]
    assert log.broken


def test_a_log_on_a_full_disk_is_said_once(tmp_path):
    said: list[str] = []
    log = LogFile(Path("/dev/full"), said.append)
    log.write("x" * 10, flush=True)
    log.write("y", flush=True)
    log.close()
    assert len(said) == 1 and "No space left on device" in said[0], said
