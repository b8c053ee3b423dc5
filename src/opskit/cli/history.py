"""history, show-run, unlock: what ran, how it ended, and the locks it holds."""

from __future__ import annotations

import time

import click

from ..errors import UsageError
from .common import json_option, lab_state_option
from .output import echo, emit_json, table


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _took(start: float, end: float | None) -> str:
    return f"{end - start:.1f}s" if end else "-"


@click.command()
@click.argument("runbook", required=False)
@click.option("-n", "--last", default=20, show_default=True, help="How many runs.")
@lab_state_option
@json_option
def history(runbook: str | None, last: int, as_json: bool) -> None:
    """Recent runs (of RUNBOOK), newest first."""
    from ..store import Journal

    journal = Journal.open_default()
    try:
        rows = journal.runs(runbook, last)
        counts = {r.id: journal.step_counts(r.id) for r in rows}
    finally:
        journal.close()
    if as_json:
        emit_json(
            [
                {
                    "id": r.id,
                    "runbook": r.runbook,
                    "status": r.shown_status,
                    "exit_code": r.exit_code,
                    "started_at": r.started_at,
                    "ended_at": r.ended_at,
                    "fingerprint": r.fingerprint,
                    "resumed_from": r.resumed_from,
                    "scheduled": r.scheduled,
                    "steps": counts[r.id],
                }
                for r in rows
            ]
        )
        return
    from ..store import state_dir

    in_labs = sorted(p.parent.name for p in (state_dir() / "labs").glob("*/journal.db"))
    lab_note = (
        f"runs in the lab ({', '.join(in_labs)}) are listed with  opskit history --lab"
        if in_labs
        else None
    )
    if not rows:
        echo("no runs yet" + (f"; {lab_note}" if lab_note else ""))
        return
    from ..report.progress import count_words

    table(
        ["RUN", "RUNBOOK", "STARTED", "BY", "TOOK", "STATUS", "EXIT", "STEPS"],
        [
            [
                r.id,
                r.runbook,
                _when(r.started_at),
                "timer" if r.scheduled else "hand",
                _took(r.started_at, r.ended_at),
                r.shown_status,
                _exit(r.exit_code),
                count_words(counts[r.id]),
            ]
            for r in rows
        ],
    )
    if lab_note:
        echo(lab_note)


def _exit(code: int | None) -> str:
    """A run still running, or killed (its process died without ending it), has no exit code
    opskit could record: `-` (null in JSON)."""
    return "-" if code is None else str(code)


@click.command("show-run")
@click.argument("run_id")
@lab_state_option
@json_option
def show_run(run_id: str, as_json: bool) -> None:
    """One run: its steps on each target, with status, attempts and errors.

    RUN_ID may be abbreviated: a unique start of it, or of its random suffix."""
    from ..store import Journal

    journal = Journal.open_default()
    try:
        row = journal.run(run_id)
        if row is None:
            raise UsageError(f"no run {run_id!r} in the journal (opskit history lists them)")
        steps = journal.steps(row.id)
    finally:
        journal.close()
    if as_json:
        emit_json(
            {
                "id": row.id,
                "runbook": row.runbook,
                "runbook_path": row.runbook_path,
                "status": row.shown_status,
                "exit_code": row.exit_code,
                "message": row.message,
                "params": row.params,
                "limit": row.limit,
                "fingerprint": row.fingerprint,
                "started_at": row.started_at,
                "ended_at": row.ended_at,
                "pid": row.pid,
                "resumed_from": row.resumed_from,
                "scheduled": row.scheduled,
                "steps": [
                    {
                        "target": s.target,
                        "step": s.step_id,
                        "section": s.section,
                        "action": s.action,
                        "status": s.status,
                        "attempts": s.attempts,
                        "change": s.change,
                        "summary": s.summary,
                        "error": s.error,
                        "started_at": s.started_at,
                        "ended_at": s.ended_at,
                    }
                    for s in steps
                ],
            }
        )
        return
    scheduled = " (scheduled: started by its timer)" if row.scheduled else ""
    echo(f"run {row.id}: {row.runbook} ({row.runbook_path}) {row.shown_status}{scheduled}")
    echo(
        f"started {_when(row.started_at)}, took {_took(row.started_at, row.ended_at)},"
        f" exit {_exit(row.exit_code)}"
    )
    if row.resumed_from:
        echo(f"resumes run {row.resumed_from}")
    if row.message:
        echo(row.message)
    current = None
    for s in steps:
        if s.target != current:
            current = s.target
            echo(f"\n{s.target}")
        tries = f" ({s.attempts} attempts)" if s.attempts > 1 else ""
        detail = s.error or s.summary or ""
        echo(f"  {s.status:12} {s.step_id}{tries}  {detail}".rstrip())


@click.command()
@click.argument("targets", nargs=-1)
@click.option("--force", is_flag=True, help="Break a lock even though its holder is running.")
@lab_state_option
@json_option
def unlock(targets: tuple[str, ...], force: bool, as_json: bool) -> None:
    """Clear target locks; with no TARGETS, list them."""
    from ..engine.locks import list_locks
    from ..engine.locks import unlock as clear
    from ..store import state_dir

    directory = state_dir() / "locks"
    if not targets:
        found = list_locks(directory)
        if as_json:
            emit_json(
                [
                    {"target": name, "held": held, "holder": holder.__dict__ if holder else None}
                    for name, holder, held in found
                ]
            )
            return
        rows = [
            [
                name,
                "held" if held else ("stale" if holder else "free"),
                holder.describe() if holder else "",
            ]
            for name, holder, held in found
        ]
        table(["TARGET", "STATE", "HOLDER"], rows) if rows else echo("no locks")
        return
    for target in targets:
        echo(clear(directory, target, force=force))
