"""Executes a Plan: rollout batches, gates, retries, timeouts, checks, journal, signals."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..actions import Action, ActionContext
from ..clients.connections import Connections
from ..errors import (
    EXIT_FAILED,
    EXIT_GATE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_LOCAL_FILE,
    EXIT_OK,
    LocalFileError,
    OpskitError,
    OutcomeUnknown,
    RenderError,
)
from ..model import Change, ChangeKind, Inventory, Outcome, Risk, Step, Target
from ..model.common import format_duration, resolve_count
from ..model.plan import Plan, PlannedStep, TargetPlan
from ..planner import ProbeSettings, gate_for, probe_step
from ..render import FAILURE_NAME
from ..report import counted
from ..report.progress import Reporter
from ..runcontext import failure_value, no_failure, not_run, run_values
from ..store import (
    DECLINED,
    DONE,
    FAILED,
    INTERRUPTED,
    SKIPPED,
    SUCCEEDED,
    UNCHANGED,
    UNKNOWN,
    Journal,
)
from ..workspace import LoadedRunbook, RenderedStep, base_context, render_step
from .gates import Gatekeeper
from .output import StepOutput
from .run_scope import RunScope, holds_for_run, run_scope

MAX_RETRY_DELAY = 300.0
JOURNAL_FLUSH = 0.5  # seconds a finished step's record may wait for a commit


@dataclass
class RunOptions:
    run_id: str
    grace: float = 30.0
    # Resume: statuses and outputs of (target, step id) from the run being resumed.
    resume: Mapping[tuple[str, str], str] = field(default_factory=dict)
    resume_outputs: Mapping[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    resumed_from: str | None = None
    host_logs: Path | None = None  # a directory: one log per target with every step's output
    log: Path | None = None  # the run's own log file (where the done event says it is)
    deadline: float | None = None  # epoch seconds its maintenance window closes: it stops then
    scheduled: bool = False  # a timer started it (journaled as such)


@dataclass
class RunResult:
    run_id: str
    status: str
    exit_code: int
    counts: dict[str, int]
    targets: dict[str, str]


@dataclass
class TargetRun:
    target: Target
    plan: TargetPlan
    context: dict[str, Any]
    planned: dict[str, PlannedStep]
    started: bool = False
    failed: bool = False
    declined: bool = False
    interrupted: bool = False
    failure: dict[str, Any] | None = None  # its first step or check that failed, and why

    @property
    def status(self) -> str:
        if not self.started:
            return "not run"
        if self.interrupted:
            return "interrupted"
        if self.failed:
            return "failed"
        if self.declined:
            return "declined"
        return "succeeded"


@dataclass
class ItemResult:
    status: str
    outputs: dict[str, Any]


class Execution:
    """One run of a plan. Build it, then `await execution.run()`."""

    def __init__(
        self,
        *,
        loaded: LoadedRunbook,
        plan: Plan,
        targets: list[Target],
        catalog: Mapping[str, type[Action[Any]]],
        secrets: Mapping[str, str | None],
        journal: Journal,
        reporter: Reporter,
        gatekeeper: Gatekeeper,
        options: RunOptions,
        settings: ProbeSettings | None = None,
        inventory: Inventory | None = None,
        connections: Connections | None = None,
    ) -> None:
        self.inventory = inventory
        self.loaded = loaded
        self.rb = loaded.runbook
        self.plan = plan
        self.catalog = catalog
        self.journal = journal
        self.reporter = reporter
        self.output = StepOutput(reporter, options.host_logs)  # what running steps print
        self.gates = gatekeeper
        gatekeeper.waited = self._gate_waited
        self.options = options
        self.run_id = options.run_id
        self.settings = settings or ProbeSettings()
        by_name = {t.name: t for t in targets}
        self.runs: list[TargetRun] = []
        started = time.time()
        previous = journal.last_successes(plan.runbook)
        registered = [s.register_as for _, _, s in self.rb.all_steps() if s.register_as]
        for tp in plan.targets:
            target = by_name[tp.target]
            run = run_values(self.run_id, started, previous.get(target.name))
            context = {
                **not_run(registered),  # until their steps run: handlers see "not run"
                **base_context(loaded, plan.params, target, secrets, run),
                FAILURE_NAME: no_failure(),
            }
            self.runs.append(TargetRun(target, tp, context, {s.id: s for s in tp.steps}))
        self.steps_by_id: dict[str, tuple[str, Step]] = {
            step.id: (section, step) for section, _, step in self.rb.all_steps()
        }
        self.stopping = False  # nothing new starts (Ctrl-C, a gate's quit, the journal lost)
        self.interrupted = False  # first Ctrl-C (SIGTERM, the window's end): its grace runs
        self.hard = False  # second Ctrl-C: cancel everything
        # The journal could not record a step's start: the run stops, said once.
        self.journal_lost: LocalFileError | None = None
        self.quit = False  # a gate was answered 'quit'
        self.window_closed = False  # the maintenance window closed mid-run
        self.preflight_failed = False
        self.applying: set[asyncio.Future[Any]] = set()  # what the grace period bounds
        self.probing: set[asyncio.Future[Any]] = set()  # re-probes, cancelled at Ctrl-C
        self.target_tasks: set[asyncio.Task[Any]] = set()
        self.wakeup = asyncio.Event()
        self._commit_pending: asyncio.Future[None] | None = None
        # The session's (its plan's, left open), or made and closed by the run itself.
        self.connections: Connections | None = connections
        self.scope: RunScope | None = None
        # A step's own `serial`/`batch`: at most that many targets run it at once.
        self.step_limits: dict[str, asyncio.Semaphore] = {}
        for _, _, step in self.rb.all_steps():
            size = step.serial if step.serial is not None else step.batch
            if size is not None:
                n = max(1, resolve_count(size, len(self.runs)))
                self.step_limits[step.id] = asyncio.Semaphore(n)

    # ----- the run -----------------------------------------------------------------------

    async def run(self) -> RunResult:
        loop = asyncio.get_running_loop()
        # Ours before the journal knows the run: every interrupt it records, it handles.
        previous = self._install_signals(loop)
        try:
            return await self._run_journaled()
        finally:
            self._restore_signals(loop, previous)

    async def _run_journaled(self) -> RunResult:
        started = time.monotonic()
        self.journal.start_run(
            self.run_id,
            runbook=self.plan.runbook,
            runbook_path=self.plan.runbook_file.path,
            runbook_sha=self.plan.runbook_file.sha256,
            inventory_path=self.plan.inventory_file.path,
            inventory_sha=self.plan.inventory_file.sha256,
            fingerprint=self.plan.fingerprint,
            params=self.plan.params,
            limit=self.plan.limit,
            opskit_version=self.plan.opskit_version,
            plan=self.plan.model_dump(mode="json"),
            steps=[
                (tp.target, s.id, seq, s.section, s.action, s.change.kind.value, s.change.summary)
                for tp in self.plan.targets
                for seq, s in enumerate(tp.steps)
            ],
            resumed_from=self.options.resumed_from,
            scheduled=self.options.scheduled,
        )
        self.reporter.emit(
            {
                "event": "run",
                "run_id": self.run_id,
                "runbook": self.plan.runbook,
                "targets": len(self.runs),
                "steps": sum(len(tp.steps) for tp in self.plan.targets),
                "fingerprint": self.plan.fingerprint,
            }
        )
        try:
            await self._execute()
        except BaseException as exc:
            # Ended by something else than its verdict (a bug, KeyboardInterrupt): the journal
            # says so rather than leave the run "running".
            stopped = isinstance(exc, KeyboardInterrupt | asyncio.CancelledError)
            with contextlib.suppress(LocalFileError):  # the error said is the one that ended it
                self.journal.finish_run(
                    self.run_id,
                    INTERRUPTED if stopped else FAILED,
                    EXIT_INTERRUPTED if stopped else EXIT_INTERNAL,
                    None if stopped else f"internal error: {type(exc).__name__}: {exc}",
                )
            raise
        if self.journal_lost is not None:
            self._end_journal_lost(self.journal_lost)
        status, code = self._verdict()
        message = None
        if self.preflight_failed:
            message = "preflight failed: nothing was changed"
        elif self.window_closed and status == "interrupted":
            message = (
                "the maintenance window closed: opskit resume continues it, and so does the"
                " next window's scheduled run"
            )
        self.journal.finish_run(self.run_id, status, code, message)
        # The summary counts what the journal holds, so it and `history` say the same.
        counts = self.journal.step_counts(self.run_id)
        for tr in self.runs:
            if tr.started:
                self.reporter.emit(
                    {"event": "target", "target": tr.target.name, "status": tr.status}
                )
        self.reporter.emit(
            {
                "event": "done",
                "run_id": self.run_id,
                "status": status,
                "exit_code": code,
                "counts": counts,
                "duration": time.monotonic() - started,
                "log": str(self.options.log) if self.options.log else None,
                "host_logs": str(self.options.host_logs)
                if self.options.host_logs and self.options.host_logs.is_dir()
                else None,
            }
        )
        return RunResult(
            self.run_id,
            status,
            code,
            counts,
            {t.target.name: t.status for t in self.runs},
        )

    def _end_journal_lost(self, error: LocalFileError) -> None:
        """The run stopped because the journal could not record a start: its end is written
        if it can be by now, and the error says what the journal holds and what to do."""
        message = f"run {self.run_id} stopped: {error.what_failed}"
        try:
            self.journal.finish_run(self.run_id, INTERRUPTED, EXIT_LOCAL_FILE, message)
        except LocalFileError:
            held = (
                "the journal could not record the run's end either (history shows it killed);"
                " what ran since its last commit is in the output above"
            )
        else:
            held = "the journal holds every step that ran, and which did not start"
        raise LocalFileError(
            f"{message}\n{held}. Once there is room: opskit resume {self.run_id} runs what is"
            " left (a step the journal holds as started is probed first)."
        )

    async def _execute(self) -> None:
        flusher = asyncio.ensure_future(self._flush_journal())
        closing = None
        if self.options.deadline is not None:
            closing = asyncio.get_running_loop().call_later(
                max(0.0, self.options.deadline - time.time()), self._window_closed
            )
        say = lambda text: self.reporter.emit({"event": "message", "text": text})  # noqa: E731
        owned = self.connections is None
        if self.connections is None:
            self.connections = self.settings.connections(self.inventory, say)
        else:
            # The plan's: its logins and SSH connections carry on, but the clusters' guests
            # are asked again (the run acts on the world as it is now).
            self.connections.forget_resources()
            said, self.connections.say = self.connections.say, say
        self.scope = run_scope(
            self.run_id, self.plan.runbook, self.catalog, say, self.options.deadline
        )
        try:
            await self.scope.begin(self.connections, self.journal, self.options.resumed_from)
            await self._guarded(self._phases())
        finally:
            if closing is not None:
                closing.cancel()
            try:
                await self.scope.end(self.connections)  # what the run held, closed
            finally:
                flusher.cancel()
                await asyncio.wait([flusher])  # ended, not left pending for the loop's shutdown
                self.output.close()
                if owned:
                    await self.connections.aclose()
                else:
                    self.connections.say = said

    async def _commit(self) -> None:
        """Group commit: every step that starts in this turn of the loop shares one commit."""
        if self._commit_pending is None:
            self._commit_pending = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(self._commit_now)
        await asyncio.shield(self._commit_pending)

    def _commit_now(self) -> None:
        future, self._commit_pending = self._commit_pending, None
        if future is None:
            return
        try:
            self.journal.flush()
        except Exception as exc:
            future.set_exception(exc)
        else:
            future.set_result(None)

    async def _flush_journal(self) -> None:
        """Finished steps wait for the next step's commit; never longer than this. A commit
        that fails keeps them waiting for the next (the next start's stops the run)."""
        while True:
            await asyncio.sleep(JOURNAL_FLUSH)
            with contextlib.suppress(LocalFileError):
                self.journal.flush()

    async def _guarded(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.target_tasks.add(task)
        try:
            await task
        except asyncio.CancelledError:
            if not self.hard:
                raise
        finally:
            self.target_tasks.discard(task)

    async def _phases(self) -> None:
        if self.rb.preflight:
            await self._all_targets(self._preflight_target, self.runs, rollout=False)
            if self.preflight_failed:
                self.reporter.emit(
                    {"event": "message", "text": "preflight failed: no target was changed"}
                )
                return
        await self._rollout()

    def _verdict(self) -> tuple[str, int]:
        if self.hard or (self.stopping and not self.quit):
            return "interrupted", EXIT_INTERRUPTED
        if self.preflight_failed or any(t.failed for t in self.runs):
            return "failed", EXIT_FAILED
        if self.quit or any(t.declined for t in self.runs):
            return "declined", EXIT_GATE
        return "succeeded", EXIT_OK

    def _not_run(self) -> int:
        return sum(1 for t in self.runs if not t.started)

    # ----- signals -----------------------------------------------------------------------

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> dict[int, Any]:
        """SIGINT and SIGTERM call `interrupt`; returns the handlers they had before."""
        previous: dict[int, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(sig)
            try:
                loop.add_signal_handler(sig, self.interrupt)
            except (RuntimeError, ValueError, NotImplementedError):
                continue  # not the main thread: the caller handles interruption
            previous[sig] = handler
        return previous

    @staticmethod
    def _restore_signals(loop: asyncio.AbstractEventLoop, previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            # remove_signal_handler leaves SIGTERM at its default (die at once): the caller's
            # own handler (asyncio.run's for Ctrl-C, the CLI's for SIGTERM) is back instead.
            if handler is not None:
                signal.signal(sig, handler)

    def interrupt(self) -> None:
        """First call: start nothing new, give running steps `grace` seconds, then run
        `always` steps. Second call: cancel everything now."""
        if not self.interrupted:
            self.interrupted = True
            self._stop_starting()
            self.reporter.emit(
                {
                    "event": "message",
                    "text": f"interrupted: starting nothing new; running steps get"
                    f" {format_duration(self.options.grace)} to finish, then always-steps run."
                    " Ctrl-C again to cancel everything.",
                }
            )
            asyncio.get_running_loop().call_later(self.options.grace, self._grace_over)
            return
        if not self.hard:
            self.hard = True
            self.reporter.emit({"event": "message", "text": "cancelling everything now"})
            for task in list(self.target_tasks):
                task.cancel()

    def _stop_starting(self) -> None:
        self.stopping = True
        self.wakeup.set()
        self.gates.interrupt()  # a question being asked: its step does not start
        for task in list(self.probing):
            task.cancel()  # read-only, and what it finds would not be acted on

    def _journal_failed(self, error: LocalFileError) -> None:
        """A commit of starts failed (a full disk, say): those steps do not act, and nothing
        new starts, since no step may act before the journal holds its start. Steps already
        running go on to their end (cutting them short would lose more than it saves);
        always-steps start only if their start can be recorded by then."""
        self.journal.forget_starts()
        if self.journal_lost is None:
            self.journal_lost = error
            self.reporter.emit(
                {
                    "event": "message",
                    "text": f"{error.what_failed}\nstarting nothing new (no step acts before"
                    " the journal records its start); running steps go on to their end",
                }
            )
        self._stop_starting()

    def _window_closed(self) -> None:
        """The maintenance window closed: stop as Ctrl-C stops a run (nothing new starts,
        running steps get the grace, always-steps run, journaled interrupted)."""
        self.window_closed = True
        self.reporter.emit(
            {"event": "message", "text": "the maintenance window closed: stopping the run"}
        )
        self.interrupt()

    def _grace_over(self) -> None:
        for task in list(self.applying):
            task.cancel()

    # ----- rollout -----------------------------------------------------------------------

    def _batches(self) -> list[list[TargetRun]]:
        size = self.plan.serial
        if size is None:
            return [self.runs]
        n = max(1, resolve_count(size, len(self.runs)))
        return [self.runs[i : i + n] for i in range(0, len(self.runs), n)]

    def _max_fail(self) -> int | None:
        if self.plan.max_fail is not None:
            return resolve_count(self.plan.max_fail, len(self.runs))
        return 0 if self.plan.serial is not None else None

    def _rollout_stopped(self) -> bool:
        limit = self._max_fail()
        failed = sum(1 for t in self.runs if t.failed)
        return self.stopping or (limit is not None and failed > limit)

    async def _rollout(self) -> None:
        limit = self._max_fail()
        for batch in self._batches():
            if self._rollout_stopped():
                break
            await self._all_targets(self._main_target, batch, rollout=True)
        failed = sum(1 for t in self.runs if t.failed)
        if limit is not None and failed > limit and self._not_run():
            self.reporter.emit(
                {
                    "event": "message",
                    "text": f"rollout stopped: {counted(failed, 'target')} failed"
                    f" (max_fail {limit}); {counted(self._not_run(), 'target')} not started",
                }
            )

    async def _all_targets(
        self, work: Callable[[TargetRun], Awaitable[None]], runs: list[TargetRun], *, rollout: bool
    ) -> None:
        """`work` on each target, `concurrency` at a time; a rollout stops starting targets
        once it is stopped (max_fail, Ctrl-C)."""
        limiter = asyncio.Semaphore(self.plan.concurrency)

        async def one(tr: TargetRun) -> None:
            async with limiter:
                if rollout and self._rollout_stopped():
                    return
                await work(tr)

        await asyncio.gather(*(one(tr) for tr in runs))

    async def _preflight_target(self, tr: TargetRun) -> None:
        ok = await self._run_section(tr, "preflight")
        if not ok:
            self.preflight_failed = True
            tr.failed = tr.failed or not tr.declined

    async def _main_target(self, tr: TargetRun) -> None:
        tr.started = True
        try:
            ok = await self._run_section(tr, "steps")
            if ok and not self.stopping:
                ok = await self._run_section(tr, "verify")
            if not ok and self.rb.rescue:
                await self._rescue(tr)
        except asyncio.CancelledError:
            tr.interrupted = True  # the second Ctrl-C: whatever it was doing did not finish
            raise
        finally:
            if self.rb.always and not self.hard:
                await self._run_section(tr, "always", always=True)

    async def _rescue(self, tr: TargetRun) -> None:
        """A step or check of the target failed: its rescue steps run, seeing `failure`. The
        target stays failed whatever they do; they only put its world back."""
        if not tr.failed or tr.interrupted or self.stopping:
            return
        failed = (tr.failure or {}).get("step", "?")
        ok = await self._run_section(tr, "rescue")
        outcome = "rescued it; the target is failed" if ok else "rescue failed too"
        self.reporter.emit(
            {"event": "message", "text": f"{tr.target.label()}: step {failed} failed, {outcome}"}
        )

    # ----- steps -------------------------------------------------------------------------

    async def _run_section(self, tr: TargetRun, section: str, *, always: bool = False) -> bool:
        """True when every step of the section succeeded (or was allowed to fail)."""
        ok = True
        for step in getattr(self.rb, section):
            if self.hard or (self.stopping and not always):
                tr.interrupted = tr.interrupted or (self.stopping and not self.quit)
                return False
            status = await self._run_step(tr, section, step)
            if status == DECLINED:
                return False
            if status == INTERRUPTED:
                tr.interrupted = True
                return False
            if status in (FAILED, UNKNOWN):
                tr.failed = True
                ok = False
                if step.on_failure == "continue" or always:
                    continue
                if isinstance(step.on_failure, list):
                    for handler_id in step.on_failure:
                        h_section, handler = self.steps_by_id[handler_id]
                        await self._run_step(tr, h_section, handler)
                return False
        return ok

    def _planned_ids(self, tr: TargetRun, section: str, step: Step) -> list[str]:
        ids = [s.id for s in tr.plan.steps if s.step == step.id and s.section == section]
        return ids or [step.id]

    async def _run_step(self, tr: TargetRun, section: str, step: Step) -> str:
        try:
            items = render_step(section, step, tr.context, self.catalog)
        except RenderError as exc:
            for sid in self._planned_ids(tr, section, step):
                self._finish(tr, sid, FAILED, error=f"render: {exc}")
            return FAILED
        results: list[ItemResult] = []
        status = SUCCEEDED
        for item in items:
            result = await self._run_item(tr, section, step, item)
            results.append(result)
            if result.status in (FAILED, UNKNOWN, DECLINED, INTERRUPTED):
                status = result.status
                if result.status not in (FAILED, UNKNOWN) or step.on_failure != "continue":
                    break
        if step.register_as:
            if step.loop is None:
                tr.context[step.register_as] = results[0].outputs if results else {}
            else:
                tr.context[step.register_as] = {"results": [r.outputs for r in results]}
        return status

    def _finish(
        self,
        tr: TargetRun,
        step_id: str,
        status: str,
        *,
        summary: str | None = None,
        error: str | None = None,
        outputs: dict[str, Any] | None = None,
        duration: float | None = None,
    ) -> None:
        planned = tr.planned.get(step_id)
        first = tr.failure is None and status in (FAILED, UNKNOWN)
        if first and planned is not None and planned.section in ("steps", "verify"):
            tr.failure = failure_value(step_id, status, error, summary)
            tr.context[FAILURE_NAME] = tr.failure
        self.journal.step_finished(
            self.run_id,
            tr.target.name,
            step_id,
            status,
            summary=summary,
            error=error,
            outputs=outputs,
        )
        self.reporter.emit(
            {
                "event": "step",
                "target": tr.target.name,
                "step": step_id,
                "status": status,
                "summary": summary,
                "error": error,
                "duration": duration,
            }
        )

    async def _run_item(
        self, tr: TargetRun, section: str, step: Step, item: RenderedStep
    ) -> ItemResult:
        key = (tr.target.name, item.id)
        prior = self.options.resume.get(key)
        if prior in DONE and not self._holds_again(tr, item):
            outputs = dict(self.options.resume_outputs.get(key) or {})
            self._finish(tr, item.id, SKIPPED, summary=f"done in run {self.options.resumed_from}")
            return ItemResult(SKIPPED, outputs)
        if item.skipped:
            self._finish(tr, item.id, SKIPPED, summary="when is false")
            return ItemResult(SKIPPED, {})
        planned = tr.planned.get(item.id)
        if planned is None:
            self._finish(tr, item.id, FAILED, error="not in the plan (its loop items changed)")
            return ItemResult(FAILED, {})
        question = planned.gate
        change = None
        if item.risk is not Risk.READ and item.instance is not None:
            # The world as it is now, after the earlier steps: nothing to change, nothing to do.
            found = await self._probe(tr, section, item)
            if found is None:
                return ItemResult(INTERRUPTED, {})
            change = found
            if change.blockers:
                self._finish(tr, item.id, FAILED, error="; ".join(change.blockers))
                return ItemResult(FAILED, {})
            if change.kind is ChangeKind.NONE:
                self._finish(tr, item.id, UNCHANGED, summary=change.summary)
                return ItemResult(UNCHANGED, {"ok": True, "changed": False})
            question = question or gate_for(item, change)
        if question and not self._stopped(section):
            answer = await self.gates.check(tr.target.label(), planned, question, change)
            if answer == "interrupted":
                return ItemResult(INTERRUPTED, {})  # never started: journaled "not run"
            if answer != "yes":
                if answer == "quit":
                    self.quit = True
                    self.stopping = True
                tr.declined = True
                self._finish(tr, item.id, DECLINED, summary=f"gate answered {answer}")
                return ItemResult(DECLINED, {})
        turn = self.step_limits.get(step.id) or contextlib.nullcontext()
        async with turn:
            if self._stopped(section):  # while it probed, asked or waited its turn: not started
                return ItemResult(DECLINED if self.quit else INTERRUPTED, {})
            return await self._attempts(tr, section, step, item)

    def _holds_again(self, tr: TargetRun, item: RenderedStep) -> bool:
        """A resume does again a step that holds something for its run (a maintenance window),
        on a target with work left: the run it resumes closed what it held when it ended (or, if
        it was killed, the resume took it over and the step joins it), so skipping the step as
        done would leave that work uncovered."""
        if not holds_for_run(self.catalog.get(item.action)):
            return False
        resume, name = self.options.resume, tr.target.name
        return any(
            resume.get((name, p.id)) not in DONE
            for p in tr.planned.values()
            if p.section in ("steps", "verify")
        )

    def _gate_waited(self) -> None:
        if self.connections is not None:
            self.connections.changed_everywhere()  # what hosts answered before may not hold

    def _stopped(self, section: str) -> bool:
        """Nothing new starts once the run is stopping, but its always-steps."""
        return self.stopping and section != "always"

    async def _probe(self, tr: TargetRun, section: str, item: RenderedStep) -> Change | None:
        """The step's change as probed now; None when the first Ctrl-C cancelled the probe."""
        task = asyncio.ensure_future(probe_step(item, tr.target, self.settings, self.connections))
        if section != "always":
            self.probing.add(task)
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the whole run is being cancelled
            return None
        finally:
            self.probing.discard(task)

    async def _attempts(
        self, tr: TargetRun, section: str, step: Step, item: RenderedStep
    ) -> ItemResult:
        assert item.instance is not None
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            self.journal.step_started(self.run_id, tr.target.name, item.id, attempt)
            try:
                await self._commit()  # the start is on disk before the step acts
            except LocalFileError as exc:
                self._journal_failed(exc)
                if attempt == 1:
                    return ItemResult(INTERRUPTED, {})  # not started: the journal says pending
                break  # its earlier attempt's outcome is the step's
            if attempt == 1:
                self.reporter.emit(
                    {
                        "event": "step",
                        "target": tr.target.name,
                        "step": item.id,
                        "status": "started",
                    }
                )
            outcome, status = await self._apply_once(tr, section, step, item)
            self.journal.attempt_finished(
                self.run_id, tr.target.name, item.id, attempt, status, outcome.error
            )
            # An unknown outcome is not retried blindly: the change may have happened (resume
            # probes first).
            done = status in (INTERRUPTED, UNKNOWN) or outcome.ok
            if done or attempt > step.retries or self.stopping:
                break
            delay = min(step.interval * step.backoff ** (attempt - 1), MAX_RETRY_DELAY)
            delay *= random.uniform(0.9, 1.1)  # jitter: targets retrying together spread out
            self.reporter.emit(
                {
                    "event": "retry",
                    "target": tr.target.name,
                    "step": item.id,
                    "attempt": attempt,
                    "error": outcome.error,
                    "delay": delay,
                }
            )
            await self._sleep(delay)
        outputs = {
            **outcome.outputs,
            "ok": outcome.ok,
            "changed": outcome.changed,
            "summary": outcome.summary,
        }
        self._host_log(tr, item.id, status, outcome)
        self._finish(
            tr,
            item.id,
            status,
            summary=outcome.summary,
            error=None if outcome.ok else outcome.error,
            outputs=outputs,
            duration=time.monotonic() - started,
        )
        return ItemResult(status, outputs)

    def _host_log(self, tr: TargetRun, step_id: str, status: str, outcome: Outcome) -> None:
        """The step's output in the target's own log, redacted like every other sink."""
        self.output.finished(tr.target.name, step_id, status, outcome)

    @staticmethod
    async def _bounded(work: Awaitable[Outcome], seconds: float | None) -> Outcome:
        # asyncio.timeout rather than wait_for: the work stays in this task, so cancelling it
        # (the grace period, a second Ctrl-C) leaves no inner task nor result behind.
        async with asyncio.timeout(seconds or None):
            return await work

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when the run is interrupted."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wakeup.wait(), seconds)

    async def _apply_once(
        self, tr: TargetRun, section: str, step: Step, item: RenderedStep
    ) -> tuple[Outcome, str]:
        assert item.instance is not None
        label = f"[{tr.target.name}] {item.id}"
        ctx = ActionContext(
            target=tr.target,
            read_only=False,
            log=lambda line: self.reporter.emit({"event": "message", "text": f"{label}: {line}"}),
            connections=self.connections,
            root=self.settings.root,
            output=functools.partial(self.output.line, tr.target.name, item.id),
            run=self.scope,
        )
        task = asyncio.ensure_future(self._bounded(item.instance.apply(ctx), step.timeout))
        if section != "always":
            self.applying.add(task)
        try:
            outcome = await task
        except TimeoutError:
            error = f"timed out after {format_duration(step.timeout or 0)}"
            if item.risk is Risk.READ:  # it changes nothing: a failure, retried as one
                return Outcome(ok=False, summary=error, error=error), FAILED
            stopped, left = _after_cut(ctx)
            if stopped:  # retrying cannot race it
                error += f"; {left}"
                return Outcome(ok=False, summary=error, error=error), FAILED
            error += f"; {left}; resume probes it again"
            return Outcome(ok=False, summary=error, error=error), UNKNOWN
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the whole run is being cancelled
            error = "interrupted: the grace period ran out"
            if item.risk is not Risk.READ:
                error += f"; {_after_cut(ctx)[1]}"
            return Outcome(ok=False, summary=error, error=error), INTERRUPTED
        except OutcomeUnknown as exc:
            if item.risk is Risk.READ:  # it changes nothing: a failure, retried as one
                return Outcome(ok=False, summary=str(exc), error=str(exc)), FAILED
            error = f"outcome unknown: {exc}; resume probes it again"
            return Outcome(ok=False, summary=error, error=error), UNKNOWN
        except OpskitError as exc:
            return Outcome(ok=False, summary=str(exc), error=str(exc)), FAILED
        except Exception as exc:  # an action's bug fails its step, not the run
            error = f"{item.action} failed: {type(exc).__name__}: {exc}"
            return Outcome(ok=False, summary=error, error=error), FAILED
        finally:
            self.applying.discard(task)
            if item.instance.risk is not Risk.READ and self.connections is not None:
                self.connections.changed(tr.target)  # what its host answered may not hold
        return outcome, (SUCCEEDED if outcome.ok else FAILED)


def _after_cut(ctx: ActionContext) -> tuple[bool, str]:
    """A changing step cut short: whether all it had running was stopped, and what it left
    behind, in its error's words."""
    if ctx.cut and all(c.stopped for c in ctx.cut):
        return True, f"its command was stopped on the host, {ctx.cut[-1].why}"
    unstopped = [c for c in ctx.cut if not c.stopped]
    if unstopped:
        last = unstopped[-1]
        return False, f"{last.command} may still be running on the host ({last.why})"
    return False, "what it started may still be going on"
