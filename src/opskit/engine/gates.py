"""Confirmation gates: ask before a risky step runs; fail closed without a terminal."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from typing import Literal

from ..model import Change
from ..model.plan import PlannedStep
from ..report.progress import Reporter
from ..secrets import redactor

Answer = Literal["yes", "no", "quit"]
ANSWERS = "[y]es / [n]o / [a]ll / [q]uit"


def ask_terminal(question: str) -> str:
    """One line from the terminal (stdin); EOF reads as quit."""
    sys.stdout.write(question)
    sys.stdout.flush()
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
    ) -> None:
        self.approve_all = approved
        self.interactive = interactive
        self.reporter = reporter
        self.ask = ask
        self.lock = asyncio.Lock()

    async def check(
        self, label: str, step: PlannedStep, question: str, change: Change | None = None
    ) -> Answer:
        """Ask `question` before `step` runs, showing its change (as probed just now)."""
        if self.approve_all:
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
                    reply = (await _in_thread(self.ask, text)).strip().lower()
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


async def _in_thread(function: Callable[[str], str], arg: str) -> str:
    """Run a blocking prompt in a daemon thread, so an abandoned prompt never holds exit up."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[str] = loop.create_future()

    def work() -> None:
        try:
            result = function(arg)
        except BaseException as exc:  # handed to the awaiting task
            loop.call_soon_threadsafe(_settle, future, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, future, result, None)

    threading.Thread(target=work, daemon=True, name="opskit-gate").start()
    return await future


def _settle(future: asyncio.Future[str], result: str | None, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result or "")
