"""What a step would change and what it did: Risk, Change, Outcome."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .inventory import LabMark


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


class _Lazy(BaseModel):
    """Built on first use: commands that never plan (validate, list) do not pay for these."""

    model_config = ConfigDict(defer_build=True)


class Change(_Lazy):
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


class Outcome(_Lazy):
    """What apply did. `outputs` become the step's registered value."""

    ok: bool
    changed: bool = False
    summary: str
    outputs: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


class PlannedStep(_Lazy):
    """One step for one target, as reviewed: rendered args (secrets as references) and change."""

    section: str
    id: str
    step: str = Field(description="the runbook step id (differs from id inside a loop)")
    action: str
    args: dict[str, Any]
    risk: Risk
    change: Change
    gate: str | None = Field(None, description="the question asked before running, if any")
    confirm: str | None = Field(None, description="the step's confirm question (asked on change)")
    when: str | bool | None = None
    skipped: bool = False
    deferred: bool = Field(False, description="args depend on an earlier step's outputs")


class TargetPlan(_Lazy):
    target: str
    label: str
    steps: list[PlannedStep]


class FileRef(_Lazy):
    path: str
    sha256: str


class Plan(_Lazy):
    """What a run would do, reviewable and replayable. The fingerprint covers everything
    but itself and `created_at`."""

    format_version: int = 1
    opskit_version: str
    runbook: str
    runbook_file: FileRef
    inventory_file: FileRef
    params: dict[str, Any]
    secrets: dict[str, str] = Field(description="references only, never values")
    limit: str | None = None
    lab: LabMark | None = Field(None, description="the lab it was made in: applied only there")
    concurrency: int = 10
    serial: int | str | None = None
    max_fail: int | str | None = None
    targets: list[TargetPlan]
    created_at: str = ""
    fingerprint: str = ""

    def __repr__(self) -> str:
        # Cheap on purpose: asyncio and loggers repr results, and a big plan is megabytes.
        return f"Plan({self.runbook!r}, {len(self.targets)} targets, {self.fingerprint[:12]!r})"

    def body(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"fingerprint", "created_at"})

    def compute_fingerprint(self) -> str:
        import hashlib
        import json

        canonical = json.dumps(
            self.body(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    def counts(self) -> dict[str, int]:
        """How many steps would create, update, delete, are unknown, or only check; how many
        are blocked; handlers (they run only when a step fails) apart from all of those."""
        out = {
            "create": 0,
            "update": 0,
            "delete": 0,
            "unknown": 0,
            "check": 0,
            "none": 0,
            "blocked": 0,
            "handlers": 0,
        }
        for t in self.targets:
            for s in t.steps:
                if s.skipped:
                    continue
                if s.change.blockers:
                    out["blocked"] += 1
                if s.section in ("handlers", "rescue"):
                    out["handlers"] += 1
                elif s.risk is Risk.READ:
                    out["check"] += 1
                else:
                    out[s.change.kind.value] += 1
        return out

    def blockers(self) -> list[str]:
        """Every reason the plan cannot run now, one line each (`TARGET: step ID: why`)."""
        return [
            f"{t.label}: step {s.id}: {b}"
            for t in self.targets
            for s in t.steps
            for b in s.change.blockers
        ]

    def gates(self) -> list[tuple[str, PlannedStep]]:
        """(target, step) of every step that asks before it runs."""
        return [(t.target, s) for t in self.targets for s in t.steps if s.gate and not s.skipped]

    def possible_gates(self) -> list[tuple[str, PlannedStep]]:
        """Gates, and the risky steps that may ask once earlier steps changed their world
        (planned as no change, after a step that changes the same target)."""
        found = []
        for t in self.targets:
            changed = False
            for s in t.steps:
                if s.skipped:
                    continue
                risky = s.risk is Risk.DESTRUCTIVE or s.confirm is not None
                if s.gate or (changed and risky):
                    found.append((t.target, s))
                if s.risk is not Risk.READ and s.change.kind is not ChangeKind.NONE:
                    changed = True
        return found
