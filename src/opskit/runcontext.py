"""What templates know of the run itself while it runs: `run.id`, `run.started`, `run.previous`,
`failure` (in rescue, always and handler steps), and "not run" for a step that never ran.

While planning, `run.id` and `run.started` are known only after apply (workspace.Deferred) and
`failure` too; `run.previous` is known (the journal, read-only).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

NOT_RUN = "not run"


class NotRun(str):
    """The registered value of a step that did not run (an earlier step failed, its target
    stopped): falsy, `ok` and `changed` false, `status` and `summary` "not run", and any other
    output renders as `‹not run: NAME.x›` instead of failing the template."""

    path: str

    def __new__(cls, path: str) -> NotRun:
        obj = super().__new__(cls, f"‹not run: {path}›")
        obj.path = path
        return obj

    def __bool__(self) -> bool:
        return False

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(attr)
        if attr in ("ok", "changed", "ran"):
            return False
        if attr in ("status", "summary"):
            return NOT_RUN
        return NotRun(f"{self.path}.{attr}")

    def __getitem__(self, key: Any) -> Any:
        return self.__getattr__(key) if isinstance(key, str) else NotRun(f"{self.path}[{key!r}]")


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def previous_value(found: tuple[str, float] | None) -> dict[str, str] | None:
    """`run.previous`: the target's latest successful run of this runbook, or None."""
    if found is None:
        return None
    run_id, started = found
    return {"id": run_id, "started": iso(started)}


def run_values(run_id: str, started: float, previous: tuple[str, float] | None) -> dict[str, Any]:
    """`run` as templates see it while the run executes."""
    return {"id": run_id, "started": iso(started), "previous": previous_value(previous)}


def not_run(registered: Iterable[str]) -> dict[str, NotRun]:
    """Every registered name as "not run", until its step runs."""
    return {name: NotRun(name) for name in registered}


def failure_value(step: str, status: str, error: str | None, summary: str | None) -> dict[str, Any]:
    """`failure` in rescue (and always) steps: the first step or check of the target that
    failed, and why."""
    return {"step": step, "status": status, "error": error or "", "summary": summary or ""}


def no_failure() -> NotRun:
    return NotRun("failure")


def strftime(value: Any, fmt: str = "%Y-%m-%dT%H:%M:%SZ") -> Any:
    """The `strftime` filter: a time (ISO 8601 text as `run.started` is, epoch seconds, or a
    datetime) formatted in UTC; a value known only after apply stays so."""
    from .workspace import Deferred

    if isinstance(value, Deferred):
        return Deferred(f"{value.path} | strftime")
    if isinstance(value, NotRun):
        return value
    when: datetime
    if isinstance(value, datetime):
        when = value if value.tzinfo else value.replace(tzinfo=UTC)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        when = datetime.fromtimestamp(value, UTC)
    elif isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"strftime: {value!r} is not an ISO 8601 time") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    else:
        raise ValueError(f"strftime: {type(value).__name__} is not a time")
    return when.astimezone(UTC).strftime(fmt)
