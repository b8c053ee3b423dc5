"""Runbook -> Plan: every step rendered per target and probed, read-only; the fingerprint."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import __version__
from .actions import Action, ActionContext
from .clients.connections import Connections, Transports
from .effects import Effects, after_apply
from .errors import OpskitError, SecretError
from .model import Change, ChangeKind, Inventory, Risk, Target
from .model.plan import FileRef, Plan, PlannedStep, TargetPlan
from .workspace import LoadedRunbook, RenderedStep, render_target

# Probes in flight at once across all targets (each is read-only and usually cheap).
PROBE_CONCURRENCY = 50


def file_ref(path: Path) -> FileRef:
    return FileRef(path=str(path), sha256=hashlib.sha256(path.read_bytes()).hexdigest())


@dataclass
class ProbeSettings:
    """What a plan's or run's contexts carry besides their target; the engine and tests fill it."""

    transports: Transports = field(default_factory=Transports)  # how the world is reached
    root: Path | None = None  # the project's root, for local files runbooks name

    def connections(
        self, inventory: Inventory | None, say: Callable[[str], None] | None = None
    ) -> Connections:
        if say is None:
            return Connections(inventory, transports=self.transports)
        return Connections(inventory, say=say, transports=self.transports)


async def probe_step(
    rendered: RenderedStep,
    target: Target,
    settings: ProbeSettings | None = None,
    connections: Connections | None = None,
) -> Change:
    """A rendered step's change, asked of the world read-only. Failures become blockers."""
    if rendered.skipped:
        return Change.none("skipped: when is false")
    if rendered.deferred or rendered.instance is None:
        from .workspace import deferred_names

        names = deferred_names(rendered.args)
        what = ", ".join(names) if names else "an earlier step's outputs"
        return Change.unknown(f"known after apply: uses {what}")
    settings = settings or ProbeSettings()
    ctx = ActionContext(target=target, read_only=True, connections=connections, root=settings.root)
    try:
        return await rendered.instance.probe(ctx)
    except SecretError:
        raise  # a secret the inventory needs is missing: a usage error (2), not a blocker
    # The reason goes in the blocker only: the plan shows the summary beside its blockers.
    except OpskitError as exc:
        return Change.unknown("probe failed", blockers=[str(exc)])
    except Exception as exc:  # a broken action must not hide the rest of the plan
        return Change.unknown(
            "probe failed",
            blockers=[f"{type(exc).__name__} in the probe of {rendered.action}: {exc}"],
        )


def gate_for(rendered: RenderedStep, change: Change) -> str | None:
    """The question to ask before the step runs, or None. Nothing to change, nothing to ask."""
    if rendered.skipped:
        return None
    if rendered.risk is not Risk.READ and change.kind is ChangeKind.NONE:
        return None
    if rendered.confirm:
        return rendered.confirm
    if rendered.risk is Risk.DESTRUCTIVE:
        return f"{rendered.description}: {rendered.risk.value}, run it?"
    return None


def planned(rendered: RenderedStep, change: Change) -> PlannedStep:
    return PlannedStep(
        section=rendered.section,
        id=rendered.id,
        step=rendered.step.id if rendered.step else rendered.id,
        action=rendered.action,
        args=rendered.args,
        risk=rendered.risk,
        change=change,
        gate=gate_for(rendered, change),
        confirm=rendered.confirm,
        when=rendered.when,
        skipped=rendered.skipped,
        deferred=rendered.deferred,
    )


def probe_secrets(loaded: LoadedRunbook) -> dict[str, str | None] | None:
    """The secrets a plan's probes may log in with (a hub, an API): each one that resolves
    here; one that does not (a review without credentials) stays a placeholder, and the
    steps that need it plan as "known after apply". None: the runbook has no secrets."""
    from .errors import SecretError
    from .secrets import placeholder, resolve_optional

    if not loaded.runbook.secrets:
        return None
    values: dict[str, str | None] = {}
    for name, ref in loaded.runbook.secrets.items():
        try:
            values[name] = resolve_optional(name, ref)
        except SecretError:
            values[name] = placeholder(name)
    return values


def redacted(change: Change) -> Change:
    """A probe's answer with every secret value it may carry replaced by its placeholder."""
    from .secrets import redactor

    if not redactor:
        return change
    text = change.model_dump_json()
    clean = redactor.redact(text)
    return change if clean == text else Change.model_validate_json(clean)


async def plan_target(
    loaded: LoadedRunbook,
    params: Mapping[str, Any],
    target: Target,
    catalog: Mapping[str, type[Action[Any]]],
    limiter: asyncio.Semaphore,
    settings: ProbeSettings | None = None,
    connections: Connections | None = None,
    secrets: Mapping[str, str | None] | None = None,
    run: Mapping[str, Any] | None = None,
) -> TargetPlan:
    """The plan shows args with secrets as placeholders; probes get the values. A probe made
    moot by an earlier step of the target (opskit.effects) blocks nothing: known after apply."""
    shown = render_target(loaded, params, target, catalog, run=run)
    probed = (
        shown
        if secrets is None
        else render_target(loaded, params, target, catalog, secrets, run=run)
    )
    if [r.id for r in probed] != [r.id for r in shown]:
        probed = shown  # a loop over a secret: plan it as a review without credentials would
    steps = []
    effects = Effects()
    for show, r in zip(shown, probed, strict=True):
        async with limiter:
            change = redacted(await probe_step(r, target, settings, connections))
        moot = effects.moot(r, change)
        if moot is not None:
            change = after_apply(change, *moot)
        effects.planned(r, change)
        steps.append(planned(show, change))
    return TargetPlan(target=target.name, label=target.label(), steps=steps)


def planned_runs(loaded: LoadedRunbook, targets: list[Target]) -> dict[str, dict[str, Any]]:
    """`run` for each target's templates while planning: its id and start known after apply,
    the target's previous successful run of this runbook (from the journal, read-only)."""
    from .runcontext import previous_value
    from .store import read_last_successes
    from .workspace import Deferred

    found = read_last_successes(loaded.runbook.name)
    return {
        t.name: {
            "id": Deferred("run.id"),
            "started": Deferred("run.started"),
            "previous": previous_value(found.get(t.name)),
        }
        for t in targets
    }


async def build_plan(
    loaded: LoadedRunbook,
    inventory_path: Path,
    params: Mapping[str, Any],
    targets: list[Target],
    catalog: Mapping[str, type[Action[Any]]],
    *,
    limit: str | None = None,
    settings: ProbeSettings | None = None,
    inventory: Inventory | None = None,
    connections: Connections | None = None,
) -> Plan:
    """The plan: for each target, in order, every step's rendered args and probed change.
    Given `connections` (a run's, which executes next) are left open; else its own are made
    and closed."""
    rb = loaded.runbook
    settings = settings or ProbeSettings()
    limiter = asyncio.Semaphore(PROBE_CONCURRENCY)
    owned = connections is None
    if connections is None:
        connections = settings.connections(inventory)
    secrets = probe_secrets(loaded)
    runs = planned_runs(loaded, targets)
    try:
        planned_targets = await asyncio.gather(
            *(
                plan_target(
                    loaded,
                    params,
                    t,
                    catalog,
                    limiter,
                    settings,
                    connections,
                    secrets,
                    run=runs[t.name],
                )
                for t in targets
            ),
            return_exceptions=True,  # every target's probes end here, none left unretrieved
        )
        target_plans = [p for p in planned_targets if isinstance(p, TargetPlan)]
        for failed in planned_targets:
            if isinstance(failed, BaseException):
                raise failed
    finally:
        if owned:
            await connections.aclose()
    plan = Plan(
        opskit_version=__version__,
        runbook=rb.name,
        runbook_file=file_ref(loaded.path),
        inventory_file=file_ref(inventory_path),
        params=dict(params),
        secrets=dict(rb.secrets),
        limit=limit,
        lab=inventory.lab if inventory is not None else None,
        concurrency=rb.concurrency,
        serial=rb.serial if rb.serial is not None else rb.batch,
        max_fail=rb.max_fail,
        targets=list(target_plans),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    plan.fingerprint = plan.compute_fingerprint()
    return plan
