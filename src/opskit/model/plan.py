"""What a step would change and what it did: Risk, Change, Outcome."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class Risk(StrEnum):
    READ = "read"  # looks, never changes (checks, waits)
    CHANGE = "change"  # changes the world in a way that is easy to undo or harmless
    DESTRUCTIVE = "destructive"  # stops, deletes, rolls back: gated by default


class ChangeKind(StrEnum):
    NONE = "none"
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    UNKNOWN = "unknown"  # known after apply

    @property
    def mark(self) -> str:
        return _MARKS[self]


_MARKS = {
    ChangeKind.NONE: " ",
    ChangeKind.CREATE: "+",
    ChangeKind.UPDATE: "~",
    ChangeKind.DELETE: "-",
    ChangeKind.UNKNOWN: "?",
}


class Change(BaseModel):
    """A probe's answer: what applying the step would change, read-only."""

    kind: ChangeKind
    summary: str
    before: Any = None
    after: Any = None
    blockers: list[str] = Field(
        default_factory=list, description="reasons the step cannot run now (e.g. a locked VM)"
    )

    @classmethod
    def none(cls, summary: str, **kw: Any) -> Change:
        return cls(kind=ChangeKind.NONE, summary=summary, **kw)

    @classmethod
    def unknown(cls, summary: str, **kw: Any) -> Change:
        return cls(kind=ChangeKind.UNKNOWN, summary=summary, **kw)


class Outcome(BaseModel):
    """What apply did. `outputs` become the step's registered value."""

    ok: bool
    changed: bool = False
    summary: str
    outputs: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
