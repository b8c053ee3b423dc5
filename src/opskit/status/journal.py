"""The journal and the locks as `opskit status` reads them: read-only, never creating either."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from .model import LockSeen, RunSeen

RECENT = 500  # runs looked at for each host's last run of each runbook


def last_runs(state: Path, names: list[str]) -> dict[str, list[RunSeen]]:
    """For each host, the newest run of each runbook that had steps on it (newest first)."""
    from ..store import process_alive

    path = state / "journal.db"
    if not path.exists():
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = db.execute(
            "SELECT r.id, r.runbook, r.status, r.started_at, r.ended_at, r.pid, r.host,"
            " s.target, s.status, COUNT(*) FROM runs r JOIN steps s ON s.run_id = r.id"
            " WHERE r.id IN (SELECT id FROM runs ORDER BY started_at DESC LIMIT ?)"
            " GROUP BY r.id, s.target, s.status ORDER BY r.started_at DESC",
            (RECENT,),
        ).fetchall()
    finally:
        db.close()
    wanted = set(names)
    found: dict[str, dict[str, RunSeen]] = {}
    for run_id, runbook, status, started, ended, pid, host, target, step_status, count in rows:
        if target not in wanted:
            continue
        per_host = found.setdefault(target, {})
        seen = per_host.get(runbook)
        if seen is None:
            if status == "running" and not process_alive(pid, host):
                status = "killed"
            seen = per_host[runbook] = RunSeen(runbook, run_id, status, started, ended)
        if seen.run_id == run_id:
            seen.steps[step_status] = seen.steps.get(step_status, 0) + int(count)
    return {
        name: sorted(runs.values(), key=lambda r: -r.started_at) for name, runs in found.items()
    }


def locks_held(state: Path) -> dict[str, LockSeen]:
    """Each target's lock file that a live run holds (by its file's name, the target's)."""
    from ..engine.locks import list_locks

    held = {}
    for name, holder, now in list_locks(state / "locks"):
        if now:
            held[name.removesuffix(".lock")] = LockSeen(
                holder.run_id if holder else None,
                holder.pid if holder else None,
                holder.since if holder else None,
                True,
            )
    return held
