"""Confirmation gates: ask before a risky step runs; fail closed without a terminal."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from typing import Literal, TextIO

from ..model import Change
from ..model.plan import PlannedStep
from ..report.progress import Reporter
from ..secrets import redactor

# "interrupted": the run was interrupted while the question waited; its step does not run.
Answer = Literal["yes", "no", "quit", "interrupted"]
ANSWERS = "[y]es / [n]o / [a]ll / [q]uit"


def ask_terminal(question: str, out: TextIO | None = None) -> str:
    """One line from the terminal (stdin), asked on `out` (stdout); EOF reads as quit."""
    out = out or sys.stdout
    out.write(question)
    out.flush()
    line = sys.stdin.readline()
    return line.strip() if line else "quit"


class Gatekeeper:
    """Asks one question at a time; 'all' approves every later gate of the run."""

    def __init__(
        self,
        *,
        approved: bool,
        interactive: bool,
        reporter: Reporter,
        ask: Callable[[str], str] = ask_terminal,
        standing: Callable[[PlannedStep], bool] | None = None,
    ) -> None:
        self.approve_all = approved
        self.interactive = interactive
        self.reporter = reporter
        self.ask = ask
        # A scheduled run's standing approvals (the runbook's schedule.approve): which gates
        # it may pass with nobody there; every other gate fails closed.
        self.standing = standing
        self.lock = asyncio.Lock()
        self.asking: asyncio.Future[str | None] | None = None  # the answer being waited for
        # A question abandoned at Ctrl-C leaves its reader on the terminal; a later question
        # would race it for the next line typed, so none is asked.
        self.abandoned = False
        # Called as a person is asked and once they answered: time passed, any host may have
        # changed meanwhile (the run forgets what the hosts answered before).
        self.waited: Callable[[], None] | None = None

    def interrupt(self) -> None:
        """The run was interrupted: the question being asked, if any, is abandoned."""
        if self.asking is not None and not self.asking.done():
            self.asking.set_result(None)

    async def check(
        self, label: str, step: PlannedStep, question: str, change: Change | None = None
    ) -> Answer:
        """Ask `question` before `step` runs, showing its change (as probed just now)."""
        if self.approve_all:
            return "yes"
        if self.standing is not None and self.standing(step):
            self.reporter.emit(
                {
                    "event": "message",
                    "text": f"{label}: step {step.id} passes its gate by the runbook's standing"
                    " approval (schedule.approve)",
                }
            )
            return "yes"
        if not self.interactive:
            # Fail closed: nobody can answer, so nothing risky runs unapproved.
            self.reporter.emit(
                {
                    "event": "message",
                    "text": f"{label}: step {step.id} asks '{question}' and there is no terminal"
                    " to answer: declined (pass --yes or --approve FINGERPRINT)",
                }
            )
            return "no"
        async with self.lock:
            if self.approve_all:
                return "yes"
            if self.abandoned:
                self.reporter.emit(
                    {
                        "event": "message",
                        "text": f"{label}: step {step.id} not asked: the run was interrupted"
                        " at an earlier question",
                    }
                )
                return "interrupted"
            now = change or step.change
            text = f"\n{label}: step {step.id} ({step.action}, {step.risk.value})\n"
            if now.kind != step.change.kind:
                text += f"  planned: {step.change.kind.mark} {step.change.summary}\n"
                text += f"  now:     {now.kind.mark} {now.summary}\n"
            else:
                text += f"  planned: {now.kind.mark} {now.summary}\n"
            text = redactor.redact(f"{text}  {question} {ANSWERS} ")
            with self.reporter.paused():
                while True:
                    answer = await self._answer(text)
                    if answer is None:
                        return "interrupted"
                    reply = answer.strip().lower()
                    if reply in ("y", "yes"):
                        return "yes"
                    if reply in ("n", "no"):
                        return "no"
                    if reply in ("a", "all"):
                        self.approve_all = True
                        return "yes"
                    if reply in ("q", "quit"):
                        return "quit"
                    text = f"  please answer {ANSWERS} "

    async def _answer(self, text: str) -> str | None:
        """The line typed, or None when the run was interrupted while waiting for it."""
        if self.waited is not None:
            self.waited()
        self.asking = _in_thread(self.ask, text)
        try:
            answer = await self.asking
        except asyncio.CancelledError:
            self.abandoned = True  # the second Ctrl-C: the run is being cancelled
            raise
        finally:
            self.asking = None
            if self.waited is not None:
                self.waited()
        if answer is None:
            self.abandoned = True
        return answer


def _in_thread(function: Callable[[str], str], arg: str) -> asyncio.Future[str | None]:
    """Run a blocking prompt in a daemon thread, so an abandoned prompt never holds exit up."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[str | None] = loop.create_future()

    def work() -> None:
        try:
            result = function(arg)
        except BaseException as exc:  # handed to the awaiting task
            loop.call_soon_threadsafe(_settle, future, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, future, result, None)

    threading.Thread(target=work, daemon=True, name="opskit-gate").start()
    return future


def _settle(
    future: asyncio.Future[str | None], result: str | None, exc: BaseException | None
) -> None:
    if future.done():
        return  # abandoned (Ctrl-C): nobody waits for this answer
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result or "")
