"""The journal: every run and step attempt in one SQLite file (WAL), written as it happens."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LocalFileError, UsageError

SCHEMA_VERSION = 2  # 2: runs.scheduled (a timer started it); older journals are migrated
OUTPUT_CAP = 16 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    runbook TEXT NOT NULL,
    runbook_path TEXT,
    runbook_sha TEXT,
    inventory_path TEXT,
    inventory_sha TEXT,
    fingerprint TEXT,
    params TEXT,
    limit_sel TEXT,
    status TEXT NOT NULL,
    exit_code INTEGER,
    message TEXT,
    started_at REAL NOT NULL,
    ended_at REAL,
    pid INTEGER,
    host TEXT,
    opskit_version TEXT,
    resumed_from TEXT,
    plan TEXT,
    scheduled INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_by_runbook ON runs (runbook, started_at);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL REFERENCES runs (id),
    target TEXT NOT NULL,
    step_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    section TEXT NOT NULL,
    action TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    change TEXT,
    summary TEXT,
    error TEXT,
    outputs TEXT,
    started_at REAL,
    ended_at REAL,
    PRIMARY KEY (run_id, target, step_id)
);
CREATE TABLE IF NOT EXISTS attempts (
    run_id TEXT NOT NULL,
    target TEXT NOT NULL,
    step_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    status TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    error TEXT,
    PRIMARY KEY (run_id, target, step_id, attempt)
);
"""

# Step statuses. "started" with no end means the process died or was killed mid-step;
# "unknown" that the step sent a change and lost its answer (it may have happened). Resume
# runs every step not DONE again, probing it first, so neither is trusted nor repeated blindly.
PENDING, STARTED, SUCCEEDED, UNCHANGED, FAILED = (
    "pending",
    "started",
    "succeeded",
    "unchanged",
    "failed",
)
SKIPPED, DECLINED, INTERRUPTED, NOT_RUN = "skipped", "declined", "interrupted", "not run"
UNKNOWN = "unknown"
DONE = frozenset({SUCCEEDED, UNCHANGED, SKIPPED})


def state_dir() -> Path:
    """$OPSKIT_STATE_DIR, else the XDG state directory (~/.local/state/opskit)."""
    explicit = os.environ.get("OPSKIT_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "opskit"


@dataclass
class RunRow:
    id: str
    runbook: str
    runbook_path: str
    runbook_sha: str
    inventory_path: str
    inventory_sha: str
    fingerprint: str
    params: dict[str, Any]
    limit: str | None
    status: str
    exit_code: int | None
    message: str | None
    started_at: float
    ended_at: float | None
    pid: int | None
    host: str | None
    opskit_version: str
    resumed_from: str | None
    plan: dict[str, Any] | None
    scheduled: bool = False  # started by its timer (`opskit run --scheduled`)

    @property
    def shown_status(self) -> str:
        """'running' is only true while the process lives; otherwise it was killed."""
        if self.status == "running" and not process_alive(self.pid, self.host):
            return "killed"
        return self.status


@dataclass
class StepRow:
    run_id: str
    target: str
    step_id: str
    seq: int
    section: str
    action: str
    status: str
    attempts: int
    change: str | None
    summary: str | None
    error: str | None
    outputs: dict[str, Any] | None
    started_at: float | None
    ended_at: float | None


def process_alive(pid: int | None, host: str | None = None) -> bool:
    """Whether a process lives; one on another machine (or unknown) is assumed to."""
    if pid is None or (host and host != socket.gethostname()):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Journal:
    """One SQLite database; every text written passes through `redact` first."""

    def __init__(self, path: Path, redact: Callable[[str], str] = lambda s: s) -> None:
        self.path = path
        self.redact = redact
        with self._writing():
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(
                path, timeout=30, isolation_level=None, check_same_thread=False
            )
            self.db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a commit survives the process being killed (not a power cut).
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA busy_timeout=30000")
            self.db.executescript(_SCHEMA)
            self._migrate()
        # Records waiting for the next commit (see step_started): each with whether it is an
        # attempt's start, which forget_starts() drops when that commit failed.
        self._pending: list[tuple[str, tuple[Any, ...], bool]] = []

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """A full disk, a read-only or missing directory: one LocalFileError naming the file."""
        try:
            yield
        except (OSError, sqlite3.OperationalError, sqlite3.DatabaseError) as exc:
            raise LocalFileError.of(
                "the journal",
                self.path,
                exc,
                "or set OPSKIT_STATE_DIR to another directory",
            ) from exc

    def _migrate(self) -> None:
        """Bring a journal an older opskit wrote up to SCHEMA_VERSION, in place: columns are
        only ever added (with defaults), so the older opskit still reads it."""
        if self._version() >= SCHEMA_VERSION:
            return
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")  # two processes opening it: one migrates
            columns = {row[1] for row in self.db.execute("PRAGMA table_info(runs)")}
            if "scheduled" not in columns:
                self.db.execute("ALTER TABLE runs ADD COLUMN scheduled INTEGER NOT NULL DEFAULT 0")
            self.db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )

    def _version(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    @classmethod
    def open_default(cls, redact: Callable[[str], str] = lambda s: s) -> Journal:
        return cls(state_dir() / "journal.db", redact)

    def close(self) -> None:
        try:
            self.flush()
        except LocalFileError:
            pass  # said by the run it failed (a record that waits for room is lost here)
        finally:
            self.db.close()

    def flush(self) -> None:
        """Commit the records that wait (finished steps and attempts, starts). When the commit
        fails they still wait, for the next one: nothing the run did is dropped."""
        if self._pending:
            with self._writing(), self.db:
                self.db.execute("BEGIN")
                written = self._write_pending()
            del self._pending[:written]

    def _write_pending(self) -> int:
        for sql, args, _ in self._pending:
            self.db.execute(sql, args)
        return len(self._pending)

    def forget_starts(self) -> None:
        """The commit of these starts failed, so their steps do not act: no later commit may
        say they started."""
        self._pending = [entry for entry in self._pending if not entry[2]]

    def _text(self, value: Any) -> str | None:
        if value is None:
            return None
        text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
        return self.redact(text)

    # ----- writing -----------------------------------------------------------------------

    def start_run(
        self,
        run_id: str,
        *,
        runbook: str,
        runbook_path: str,
        runbook_sha: str,
        inventory_path: str,
        inventory_sha: str,
        fingerprint: str,
        params: dict[str, Any],
        limit: str | None,
        opskit_version: str,
        plan: dict[str, Any],
        steps: Iterable[tuple[str, str, int, str, str, str | None, str | None]],
        resumed_from: str | None = None,
        scheduled: bool = False,
    ) -> None:
        """The run and all its steps, pending, in one transaction."""
        with self._writing(), self.db:
            self.db.execute("BEGIN")
            self.db.execute(
                "INSERT INTO runs (id, runbook, runbook_path, runbook_sha, inventory_path,"
                " inventory_sha, fingerprint, params, limit_sel, status, started_at, pid, host,"
                " opskit_version, resumed_from, plan, scheduled)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    runbook,
                    runbook_path,
                    runbook_sha,
                    inventory_path,
                    inventory_sha,
                    fingerprint,
                    self._text(params),
                    limit,
                    time.time(),
                    os.getpid(),
                    socket.gethostname(),
                    opskit_version,
                    resumed_from,
                    self._text(plan),
                    int(scheduled),
                ),
            )
            self.db.executemany(
                "INSERT INTO steps (run_id, target, step_id, seq, section, action, status,"
                " change, summary) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                [
                    (run_id, t, s, seq, sec, act, chg, self._text(summ))
                    for t, s, seq, sec, act, chg, summ in steps
                ],
            )

    def step_started(self, run_id: str, target: str, step_id: str, attempt: int) -> None:
        """Queues the start of an attempt. The caller commits (flush()) before the step acts.

        The engine commits the starts of steps that begin together in one transaction, with
        the ends of steps that finished before them. A process killed before a step's end
        is committed leaves that step 'started', which resume re-probes: the journal may be
        cautious, it never claims what did not happen."""
        now = time.time()
        self._pending.append(
            (
                "UPDATE steps SET status = 'started', attempts = ?, started_at ="
                " COALESCE(started_at, ?) WHERE run_id = ? AND target = ? AND step_id = ?",
                (attempt, now, run_id, target, step_id),
                True,
            )
        )
        self._pending.append(
            (
                "INSERT OR REPLACE INTO attempts"
                " (run_id, target, step_id, attempt, status, started_at)"
                " VALUES (?, ?, ?, ?, 'started', ?)",
                (run_id, target, step_id, attempt, now),
                True,
            )
        )

    def attempt_finished(
        self, run_id: str, target: str, step_id: str, attempt: int, status: str, error: str | None
    ) -> None:
        self._pending.append(
            (
                "UPDATE attempts SET status = ?, ended_at = ?, error = ?"
                " WHERE run_id = ? AND target = ? AND step_id = ? AND attempt = ?",
                (status, time.time(), self._text(error), run_id, target, step_id, attempt),
                False,
            )
        )

    def step_finished(
        self,
        run_id: str,
        target: str,
        step_id: str,
        status: str,
        *,
        summary: str | None = None,
        error: str | None = None,
        outputs: dict[str, Any] | None = None,
    ) -> None:
        text = self._text(outputs)
        if text is not None and len(text) > OUTPUT_CAP:
            text = json.dumps({"truncated": text[:OUTPUT_CAP]})
        self._pending.append(
            (
                "UPDATE steps SET status = ?, summary = COALESCE(?, summary), error = ?,"
                " outputs = ?, ended_at = ? WHERE run_id = ? AND target = ? AND step_id = ?",
                (
                    status,
                    self._text(summary),
                    self._text(error),
                    text,
                    time.time(),
                    run_id,
                    target,
                    step_id,
                ),
                False,
            )
        )

    def finish_run(
        self, run_id: str, status: str, exit_code: int, message: str | None = None
    ) -> None:
        with self._writing(), self.db:
            self.db.execute("BEGIN")
            written = self._write_pending()
            # Steps a run leaves behind unfinished are said to be so, not left 'started'.
            self.db.execute(
                "UPDATE steps SET status = ? WHERE run_id = ? AND status = 'started'",
                (INTERRUPTED, run_id),
            )
            self.db.execute(
                "UPDATE steps SET status = ? WHERE run_id = ? AND status = 'pending'",
                (NOT_RUN, run_id),
            )
            self.db.execute(
                "UPDATE runs SET status = ?, exit_code = ?, message = ?, ended_at = ? WHERE id = ?",
                (status, exit_code, self._text(message), time.time(), run_id),
            )
        del self._pending[:written]

    # ----- reading -----------------------------------------------------------------------

    def runs(
        self, runbook: str | None = None, limit: int = 50, *, scheduled: bool | None = None
    ) -> list[RunRow]:
        """Recent runs, newest first; of one runbook; only scheduled (or manual) ones."""
        where: list[str] = []
        args: tuple[Any, ...] = ()
        if runbook:
            where.append("runbook = ?")
            args += (runbook,)
        if scheduled is not None:
            where.append("scheduled = ?")
            args += (int(scheduled),)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY started_at DESC LIMIT ?"
        return [self._run(r) for r in self.db.execute(sql, (*args, limit)).fetchall()]

    def run(self, run_id: str) -> RunRow | None:
        """A run by its id or an abbreviation of it (see `matching_runs`); None when no run
        matches, UsageError naming the candidates when several do."""
        ids = self.matching_runs(run_id)
        if len(ids) > 1:
            raise UsageError(self._ambiguous(run_id, ids))
        if not ids:
            return None
        row = self.db.execute("SELECT * FROM runs WHERE id = ?", (ids[0],)).fetchone()
        return self._run(row)

    def matching_runs(self, ref: str) -> list[str]:
        """The ids `ref` may stand for, newest first: the id itself, else every id that starts
        with it (`20261201-23`) or whose random suffix does (`4fd055`, `4fd`)."""
        ref = ref.strip()
        if not ref:
            return []
        rows = self.db.execute("SELECT id FROM runs ORDER BY started_at DESC").fetchall()
        ids = [r[0] for r in rows]
        if ref in ids:
            return [ref]
        return [i for i in ids if i.startswith(ref) or i.rpartition("-")[2].startswith(ref)]

    def _ambiguous(self, ref: str, ids: list[str], shown: int = 10) -> str:
        lines = [f"run {ref!r} is ambiguous: it abbreviates {len(ids)} runs (give more of it)"]
        for run_id in ids[:shown]:
            row = self._run(
                self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            )
            lines.append(f"  {row.id}  {row.runbook}  {row.shown_status}")
        if len(ids) > shown:
            lines.append(f"  ... and {len(ids) - shown} more (opskit history lists them)")
        return "\n".join(lines)

    def step_counts(self, run_id: str) -> dict[str, int]:
        """How many steps of the run ended in each status: what its summary line and
        `history` both show."""
        rows = self.db.execute(
            "SELECT status, COUNT(*) FROM steps WHERE run_id = ? GROUP BY status ORDER BY status",
            (run_id,),
        ).fetchall()
        return {str(status): int(n) for status, n in rows}

    def steps(self, run_id: str) -> list[StepRow]:
        rows = self.db.execute(
            "SELECT run_id, target, step_id, seq, section, action, status, attempts, change,"
            " summary, error, outputs, started_at, ended_at FROM steps WHERE run_id = ?"
            " ORDER BY target, seq",
            (run_id,),
        ).fetchall()
        return [
            StepRow(
                run_id=r[0],
                target=r[1],
                step_id=r[2],
                seq=r[3],
                section=r[4],
                action=r[5],
                status=r[6],
                attempts=r[7],
                change=r[8],
                summary=r[9],
                error=r[10],
                outputs=json.loads(r[11]) if r[11] else None,
                started_at=r[12],
                ended_at=r[13],
            )
            for r in rows
        ]

    def last_successes(self, runbook: str) -> dict[str, tuple[str, float]]:
        """Each target's latest finished run of `runbook` in which its steps and checks all
        succeeded: target -> (run id, started at)."""
        return last_successes(self.db, runbook)

    def _run(self, r: tuple[Any, ...]) -> RunRow:
        cols = [c[0] for c in self.db.execute("SELECT * FROM runs LIMIT 0").description]
        d = dict(zip(cols, r, strict=True))
        return RunRow(
            id=d["id"],
            runbook=d["runbook"],
            runbook_path=d["runbook_path"],
            runbook_sha=d["runbook_sha"],
            inventory_path=d["inventory_path"],
            inventory_sha=d["inventory_sha"],
            fingerprint=d["fingerprint"],
            params=json.loads(d["params"]) if d["params"] else {},
            limit=d["limit_sel"],
            status=d["status"],
            exit_code=d["exit_code"],
            message=d["message"],
            started_at=d["started_at"],
            ended_at=d["ended_at"],
            pid=d["pid"],
            host=d["host"],
            opskit_version=d["opskit_version"],
            resumed_from=d["resumed_from"],
            plan=json.loads(d["plan"]) if d["plan"] else None,
            scheduled=bool(d.get("scheduled")),
        )


# A target succeeded in a run when every step and check of it there did.
_SUCCESSES = """
SELECT s.target, r.id, r.started_at FROM runs r JOIN steps s ON s.run_id = r.id
WHERE r.runbook = ? AND r.ended_at IS NOT NULL AND s.section IN ('steps', 'verify')
GROUP BY r.id, s.target
HAVING SUM(s.status NOT IN ('succeeded', 'unchanged', 'skipped')) = 0
ORDER BY r.started_at
"""


def last_successes(db: sqlite3.Connection, runbook: str) -> dict[str, tuple[str, float]]:
    found: dict[str, tuple[str, float]] = {}
    for target, run_id, started in db.execute(_SUCCESSES, (runbook,)):
        found[str(target)] = (str(run_id), float(started))  # later runs replace earlier ones
    return found


def read_last_successes(runbook: str) -> dict[str, tuple[str, float]]:
    """`last_successes` from the default journal, read-only (a plan writes no journal): none
    when there is no journal yet."""
    path = state_dir() / "journal.db"
    if not path.is_file():
        return {}
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error:
        return {}
    try:
        return last_successes(db, runbook)
    except sqlite3.Error:
        return {}  # a journal being created, or of an older schema: no previous run known
    finally:
        db.close()
