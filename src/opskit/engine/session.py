"""The run commands' core: plan, check a saved plan is still true, gate, lock, execute, resume."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets as _random
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from .. import __version__
from ..clients.connections import Connections
from ..errors import GateError, NothingToDo, StalePlanError, StepError, UsageError
from ..model import ChangeKind, Inventory, Risk, Target
from ..model.plan import Plan, PlannedStep
from ..model.schedule import Approve
from ..place import plan_place_problem
from ..planner import ProbeSettings, build_plan, file_ref
from ..report import counted
from ..report.progress import EventStream, Reporter, reporter_for
from ..secrets import redactor, resolve_all
from ..store import DONE, Journal, state_dir
from ..workspace import LoadedRunbook, Workspace, resolve_params, targets_for
from .executor import Execution, RunOptions, RunResult
from .gates import Gatekeeper, ask_terminal
from .locks import TargetLocks

T = TypeVar("T")
CLOSE_WAIT = 10.0  # seconds the connections may take to close at the command's end


@dataclass
class Request:
    """How the user asked for a run (flags) and the seams tests use."""

    workspace: Workspace
    yes: bool = False
    approve: str | None = None
    interactive: bool = False
    events: EventStream | None = None  # --json: the event stream on stdout
    lock_wait: float = 0.0
    grace: float = 30.0
    ask: Callable[[str], str] = ask_terminal
    settings: ProbeSettings = field(default_factory=ProbeSettings)
    reporter: Reporter | None = None
    journal: Journal | None = None
    # A scheduled run (`run --scheduled`): the timer started it, the runbook's standing
    # approvals are the only ones, and it stops when its maintenance window closes.
    scheduled: bool = False
    standing: Approve | None = None
    deadline: float | None = None  # epoch seconds: the window closes


class Session:
    """One command's event loop and connections: its plan (or a saved plan's check), its gates
    and its execution share them, so a run logs in to each Proxmox cluster once and opens one
    SSH connection per host. Closed together when the command ends, however it ends."""

    def __init__(self, req: Request) -> None:
        self.req = req
        self._runner = asyncio.Runner()
        self._connections: list[Connections] = []

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def connections(self, inventory: Inventory) -> Connections:
        """The connections made for `inventory` (one inventory per command, but for a saved
        plan's or a resumed run's own)."""
        for made in self._connections:
            if made.inventory is inventory:
                return made
        made = self.req.settings.connections(inventory)
        self._connections.append(made)
        return made

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the session's loop (where its connections live)."""
        return self._runner.run(coro)

    def close(self) -> None:
        try:
            for made in self._connections:
                self._runner.run(_closed(made))
        finally:
            self._connections.clear()
            self._runner.close()


async def _closed(connections: Connections) -> None:
    # Bounded: a host that stopped answering must not hold the command's end up.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(CLOSE_WAIT):
            await connections.aclose()


def _session(req: Request, session: Session | None) -> contextlib.AbstractContextManager[Session]:
    """The caller's session, left open, or one of its own for this call alone."""
    return contextlib.nullcontext(session) if session is not None else Session(req)


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + _random.token_hex(3)


def _relative(path: Path) -> Path:
    """Paths in plans are relative to the working directory when they can be, so a plan made
    in one checkout applies in another."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path.resolve()


# --- planning --------------------------------------------------------------------------------


def make_plan(
    req: Request,
    runbook: str,
    given: Mapping[str, Any],
    limit: str | None,
    *,
    session: Session | None = None,
) -> tuple[LoadedRunbook, list[Target], Plan]:
    ws = req.workspace
    loaded = ws.load(runbook)
    if req.settings.root is None:
        req.settings.root = ws.root_for(loaded.path)
    loaded.path = _relative(loaded.path)
    params = resolve_params(loaded.runbook, given)
    targets = targets_for(loaded, ws.inventory, limit)
    with _session(req, session) as s:
        plan = s.run(
            build_plan(
                loaded,
                _relative(ws.inventory_path),
                params,
                targets,
                ws.catalog,
                limit=limit,
                settings=req.settings,
                inventory=ws.inventory,
                connections=s.connections(ws.inventory),
            )
        )
    return loaded, targets, plan


def read_plan(path: Path) -> Plan:
    from pydantic import ValidationError

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read plan {path}: {exc.strerror}") from None
    try:
        plan = Plan.model_validate_json(text)
    except ValidationError as exc:
        raise UsageError(
            f"{path} is not an opskit plan: {exc.errors()[0]['msg']} at"
            f" {'.'.join(str(p) for p in exc.errors()[0]['loc'])}"
        ) from None
    if plan.format_version != 1:
        raise UsageError(f"{path}: plan format {plan.format_version} is not supported")
    return plan


def check_saved_plan(
    req: Request, plan: Plan, plan_file: str = "plan.json", *, session: Session | None = None
) -> tuple[LoadedRunbook, list[Target]]:
    """The plan is applied where it was made (a lab's plan in that lab), and its runbook,
    inventory and opskit are those of the plan, and every probe still agrees.

    Raises StalePlanError (exit 4), or NothingToDo when the world already shows the plan's
    changes: the plan was applied before."""
    if plan.compute_fingerprint() != plan.fingerprint:
        raise StalePlanError("stale plan: the plan file was edited after it was made")
    misplaced = plan_place_problem(plan.lab, plan_file)
    if misplaced is not None:
        raise StalePlanError(misplaced)
    if plan.opskit_version != __version__:
        raise StalePlanError(
            f"stale plan: made by opskit {plan.opskit_version}, this is {__version__}"
        )
    for what, ref in (("runbook", plan.runbook_file), ("inventory", plan.inventory_file)):
        path = Path(ref.path)
        if not path.is_file():
            raise StalePlanError(f"stale plan: the {what} {ref.path} is gone")
        now = file_ref(path).sha256
        if now != ref.sha256:
            raise StalePlanError(
                f"stale plan: the {what} {ref.path} changed since the plan"
                f" (sha256 {ref.sha256[:12]} then, {now[:12]} now)"
            )
    ws = replace(req.workspace, inventory_path=Path(plan.inventory_file.path))
    req.workspace = ws  # the run uses the plan's inventory
    loaded = ws.load(plan.runbook_file.path)
    loaded.path = Path(plan.runbook_file.path)
    targets = targets_for(loaded, ws.inventory, plan.limit)
    if [t.name for t in targets] != [t.target for t in plan.targets]:
        raise StalePlanError("stale plan: the runbook's targets are not those planned")
    with _session(req, session) as s:
        fresh = s.run(
            build_plan(
                loaded,
                Path(plan.inventory_file.path),
                plan.params,
                targets,
                ws.catalog,
                limit=plan.limit,
                settings=req.settings,
                inventory=ws.inventory,
                connections=s.connections(ws.inventory),
            )
        )
    differences = compare(plan, fresh)
    if differences:
        if _changes(fresh) == 0:
            raise NothingToDo(
                "nothing to do: the world already shows every change this plan makes"
                " (it was applied before)"
            )
        shown = "\n  ".join(differences[:10])
        more = f"\n  ... and {len(differences) - 10} more" if len(differences) > 10 else ""
        raise StalePlanError(f"stale plan: the world changed since it was made:\n  {shown}{more}")
    return loaded, targets


def _changes(plan: Plan) -> int:
    c = plan.counts()
    return c["create"] + c["update"] + c["delete"] + c["unknown"]


def compare(plan: Plan, fresh: Plan) -> list[str]:
    """Where the fresh plan's probes no longer agree with the saved plan's."""
    differences: list[str] = []
    fresh_targets = {t.target: t for t in fresh.targets}
    for tp in plan.targets:
        now = {s.id: s for s in fresh_targets[tp.target].steps}
        for s in tp.steps:
            f = now.get(s.id)
            if f is None:
                differences.append(f"step {s.id} on {tp.label} is no longer planned")
                continue
            if s.risk is Risk.READ or ChangeKind.UNKNOWN in (s.change.kind, f.change.kind):
                continue
            if s.change.kind != f.change.kind:
                differences.append(
                    f"step {s.id} on {tp.label} expected {s.change.kind.value},"
                    f" found {f.change.kind.value}"
                )
            elif (s.change.before, s.change.after) != (f.change.before, f.change.after):
                differences.append(
                    f"step {s.id} on {tp.label} expected {s.change.summary!r},"
                    f" found {f.change.summary!r}"
                )
    return differences


# --- executing -------------------------------------------------------------------------------


def check_gates(req: Request, plan: Plan) -> bool:
    """Whether every gate is approved up front; fails closed without a terminal (exit 3).
    A scheduled run passes only the gates its standing approvals cover, and fails closed
    before any change when one is not."""
    if req.standing is not None:
        from ..schedule import needs_approval

        reasons = needs_approval(req.standing, plan)
        if reasons:
            raise GateError(
                "needs approval: the runbook's standing approvals (schedule.approve) do not"
                f" cover {counted(len(reasons), 'gate')} and nobody is there to ask; nothing"
                " was changed:\n  " + "\n  ".join(reasons[:10])
            )
        return False
    if req.approve is not None and req.approve != plan.fingerprint:
        raise GateError(
            f"--approve names fingerprint {req.approve[:16]}, but this plan's is"
            f" {plan.fingerprint[:16]}: review the new plan"
        )
    approved = req.yes or req.approve == plan.fingerprint
    gates = plan.possible_gates()
    if gates and not approved and not req.interactive:
        listed = "\n  ".join(
            f"{t}: {s.id}: {s.gate or f'{s.risk.value}, may change once earlier steps ran'}"
            for t, s in gates[:10]
        )
        raise GateError(
            f"{counted(len(gates), 'step')} ask{'s' if len(gates) == 1 else ''} for confirmation"
            " and there is no terminal to ask:\n"
            f"  {listed}\nreview the plan, then pass --yes or --approve {plan.fingerprint}"
        )
    return approved


def execute(
    req: Request,
    loaded: LoadedRunbook,
    targets: list[Target],
    plan: Plan,
    *,
    inventory: Inventory | None = None,
    resume: Mapping[tuple[str, str], str] | None = None,
    resume_outputs: Mapping[tuple[str, str], dict[str, Any]] | None = None,
    resumed_from: str | None = None,
    session: Session | None = None,
) -> RunResult:
    found = plan.blockers()
    if found:
        raise StepError("the plan has blockers; nothing was run:\n  " + "\n  ".join(found))
    approved = check_gates(req, plan)
    run_id = new_run_id()
    values = resolve_all(loaded.runbook.secrets)
    journal = req.journal or Journal.open_default(redact=redactor.redact)
    log = state_dir() / "logs" / f"{run_id}.log"
    reporter = req.reporter or reporter_for(events=req.events, log=log)
    ask = req.ask
    if req.events is not None and ask is ask_terminal:
        ask = functools.partial(ask_terminal, out=sys.stderr)  # stdout is the JSON stream
    locks = TargetLocks(
        state_dir() / "locks",
        run_id,
        say=lambda text: reporter.emit({"event": "message", "text": text}),
    )
    inventory = inventory or req.workspace.inventory
    try:
        locks.acquire([t.name for t in targets], req.lock_wait)
        if locks.waited and session is not None:  # another run had them since the plan
            session.connections(inventory).changed_everywhere()
        execution = Execution(
            loaded=loaded,
            plan=plan,
            targets=targets,
            catalog=req.workspace.catalog,
            secrets=values,
            journal=journal,
            reporter=reporter,
            gatekeeper=Gatekeeper(
                approved=approved,
                interactive=req.interactive,
                reporter=reporter,
                ask=ask,
                standing=_standing(req.standing),
            ),
            options=RunOptions(
                run_id=run_id,
                grace=req.grace,
                resume=resume or {},
                resume_outputs=resume_outputs or {},
                resumed_from=resumed_from,
                host_logs=state_dir() / "logs" / run_id,
                log=log if req.reporter is None else None,
                deadline=req.deadline,
                scheduled=req.scheduled,
            ),
            settings=req.settings,
            inventory=inventory,
            connections=session.connections(inventory) if session is not None else None,
        )
        if session is None:
            return asyncio.run(execution.run())
        return session.run(execution.run())
    finally:
        locks.release()
        if req.reporter is None:
            reporter.close()
        if req.journal is None:
            journal.close()


def _standing(approve: Approve | None) -> Callable[[PlannedStep], bool] | None:
    if approve is None:
        return None
    from ..schedule import approves

    return lambda step: approves(approve, step)


def resume(
    req: Request, run_id: str, force: bool = False, *, session: Session | None = None
) -> RunResult:
    """Run again what a run left unfinished: steps that succeeded are skipped."""
    journal = req.journal or Journal.open_default(redact=redactor.redact)
    try:
        row = journal.run(run_id)
        if row is None:
            raise UsageError(f"no run {run_id!r} in the journal (opskit history lists them)")
        if row.shown_status == "running":
            raise UsageError(f"run {row.id} is still running (pid {row.pid})")
        if row.status == "succeeded":
            raise NothingToDo(f"run {row.id} succeeded: nothing to resume")
        path = Path(row.runbook_path)
        if not path.is_file():
            raise UsageError(f"run {row.id}'s runbook {row.runbook_path} is gone")
        sha = file_ref(path).sha256
        if sha != row.runbook_sha and not force:
            raise StalePlanError(
                f"the runbook {row.runbook_path} changed since run {row.id};"
                " resume anyway with --force"
            )
        steps = journal.steps(row.id)
    finally:
        if req.journal is None:
            journal.close()
    status = {(s.target, s.step_id): s.status for s in steps}
    outputs = {(s.target, s.step_id): s.outputs or {} for s in steps if s.status in DONE}
    ws = replace(req.workspace, inventory_path=Path(row.inventory_path))
    req.workspace = ws
    with _session(req, session) as s:
        loaded, targets, plan = make_plan(req, str(path), row.params, row.limit, session=s)
        return execute(
            req,
            loaded,
            targets,
            plan,
            resume=status,
            resume_outputs=outputs,
            resumed_from=row.id,
            session=s,
        )


def interactive() -> bool:
    """A person can answer gates: stdin is a terminal (and CI is not set)."""
    import sys

    return sys.stdin.isatty() and not os.environ.get("CI")
