"""A run's own effects, as a plan sees them: what each step's probe reads of its target and
what its apply changes there, so that a probe made moot by an earlier step of the same target
(a VM it starts, a snapshot it takes, a file it writes) plans as "known after apply", its
condition checked again when the step runs, instead of blocking the plan.

Terraform's "known after apply" is the model: the plan says what it cannot know yet, and why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .model import Change, ChangeKind, Risk

if TYPE_CHECKING:
    from .actions import Action
    from .workspace import RenderedStep

POWER = "power"  # the guest's power state (running, stopped) and so whether its host answers
SNAPSHOTS = "snapshots"  # the guest's snapshots
HOST = "host"  # the host itself, reached over SSH: its files, packages, users, services

ORDER = (POWER, SNAPSHOTS, HOST)  # the most telling cause first
_POWER = frozenset({POWER, HOST})
_ON_HOST = (frozenset({POWER, HOST}), frozenset({HOST}))
# kind -> (what its probe reads, what its apply changes); by kind, then by prefix.
KINDS: Mapping[str, tuple[frozenset[str], frozenset[str]]] = {
    **dict.fromkeys(
        (
            "proxmox.vm.start",
            "proxmox.vm.shutdown",
            "proxmox.vm.stop",
            "proxmox.vm.reboot",
            "proxmox.vm.reset",
            "proxmox.vm.suspend",
            "proxmox.vm.resume",
        ),
        (frozenset({POWER}), _POWER),
    ),
    "proxmox.vm.snapshot": (frozenset({SNAPSHOTS}), frozenset({SNAPSHOTS})),
    "proxmox.vm.delete_snapshot": (frozenset({SNAPSHOTS}), frozenset({SNAPSHOTS})),
    "proxmox.vm.rollback": (frozenset({SNAPSHOTS}), _POWER),
    "proxmox.agent.exec": (frozenset({POWER}), frozenset({HOST})),
    "guest.reboot": (frozenset({POWER, HOST}), _POWER),
}
PREFIXES: Mapping[str, tuple[frozenset[str], frozenset[str]]] = {
    "ssh.": _ON_HOST,
    "host.": _ON_HOST,
    "apt.": _ON_HOST,
    "python.": _ON_HOST,
    "beszel.agent": _ON_HOST,
    "proxmoxmcp.": _ON_HOST,
}
NOTHING: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())
# Kinds whose "nothing to do" is decided by what an earlier step may change: a reboot only when
# the upgrade before it left /var/run/reboot-required, a start after a step that powers the
# guest off. Other kinds keep a "nothing to do" (their own file, user or package is theirs).
DECIDED_BY: Mapping[str, frozenset[str]] = {
    "guest.reboot": frozenset({HOST, POWER}),
    **dict.fromkeys(
        (k for k, (reads, _) in KINDS.items() if reads == frozenset({POWER})), frozenset({POWER})
    ),
    "proxmox.vm.delete_snapshot": frozenset({SNAPSHOTS}),
}


def facets(kind: str, action: type[Action[Any]] | None = None) -> tuple[frozenset[str], ...]:
    """(reads, changes) of a step kind: the class's own, else the tables above."""
    reads, changes = KINDS.get(kind) or next(
        (v for prefix, v in PREFIXES.items() if kind.startswith(prefix)), NOTHING
    )
    if action is not None:
        reads = action.reads if action.reads is not None else reads
        changes = action.changes if action.changes is not None else changes
    return reads, changes


def decided_by(kind: str, action: type[Action[Any]] | None = None) -> frozenset[str]:
    if action is not None and action.decided_by is not None:
        return action.decided_by
    return DECIDED_BY.get(kind, frozenset())


@dataclass
class Effects:
    """What the earlier steps of one target's plan will change, in plan order."""

    pending: dict[str, str] = field(default_factory=dict)  # facet -> the first step changing it

    def moot(self, rendered: RenderedStep, change: Change) -> tuple[str, str] | None:
        """(step id, facet) of the earlier step whose change makes this probe's answer moot:
        a blocker from what the step reads, or a "nothing to do" decided by it."""
        if rendered.skipped or rendered.risk is Risk.READ:
            return None
        if change.blockers:
            reads, _ = facets(rendered.action, _cls(rendered))
        elif change.kind is ChangeKind.NONE:
            reads = decided_by(rendered.action, _cls(rendered))
        else:
            return None
        for facet in sorted(reads, key=lambda f: (ORDER.index(f) if f in ORDER else 9, f)):
            if facet in self.pending:
                return self.pending[facet], facet
        return None

    def planned(self, rendered: RenderedStep, change: Change) -> None:
        """Record a step's planned change: what it changes, later probes cannot know."""
        if rendered.skipped or rendered.risk is Risk.READ or change.kind is ChangeKind.NONE:
            return
        _, changes = facets(rendered.action, _cls(rendered))
        for facet in changes:
            self.pending.setdefault(facet, rendered.id)


def _cls(rendered: RenderedStep) -> type[Action[Any]] | None:
    return type(rendered.instance) if rendered.instance is not None else None


def after_apply(change: Change, step: str, facet: str) -> Change:
    """A probe's answer made moot by an earlier step: what it found blocks nothing now, it is
    checked again when the step runs; so is a "nothing to do" the earlier step decides (see
    DECIDED_BY). A change it found stays the plan's best estimate."""
    found = "; ".join(change.blockers) or change.summary
    return Change.unknown(
        f"known after apply: step {step} changes the {_words(facet)} first; checked again"
        f" when it runs (now: {found})",
        before=change.before,
        after=change.after,
    )


def _words(facet: str) -> str:
    return {POWER: "guest's power", SNAPSHOTS: "guest's snapshots", HOST: "host"}.get(facet, facet)
