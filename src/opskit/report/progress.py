"""Run progress: a live view on a terminal, plain lines in CI, JSON lines for machines.

Every reporter receives the same events (dicts with a "event" key) and writes them through
the redactor; the run's log file receives them too.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from ..errors import EXIT_STATUS
from ..secrets import redactor
from . import counted
from .logfile import LogFile

STATUS_WORDS = {
    "succeeded": "ok",
    "unchanged": "ok (unchanged)",
    "failed": "FAILED",
    "skipped": "skipped",
    "declined": "declined",
    "interrupted": "interrupted",
    "unknown": "OUTCOME UNKNOWN",
}


def describe(event: dict[str, Any]) -> str | None:
    """The plain line for an event, or None for events that only the live view shows."""
    kind = event["event"]
    if kind == "run":
        return (
            f"run {event['run_id']}: {event['runbook']} on {counted(event['targets'], 'target')}"
            f" ({counted(event['steps'], 'step')})"
        )
    if kind == "step" and event["status"] != "started":
        word = STATUS_WORDS.get(event["status"], event["status"])
        took = f" {event['duration']:.1f}s" if event.get("duration") is not None else ""
        text = f"[{event['target']}] {event['step']}: {word}{took}"
        said = summary_and_error(event.get("summary"), event.get("error"))
        return f"{text} - {said}" if said else text
    if kind == "retry":
        return (
            f"[{event['target']}] {event['step']}: attempt {event['attempt']} failed"
            f" ({event['error']}), retrying in {event['delay']:.1f}s"
        )
    if kind == "target" and event["status"] != "succeeded":
        return f"[{event['target']}] {event['status']}"
    if kind == "message":
        return str(event["text"])
    if kind == "done":
        return (
            f"run {event['run_id']} {event['status']} in {event['duration']:.1f}s:"
            f" {count_words(event['counts'])}"
            + (f"\nlog: {event['log']}" if event.get("log") else "")
            + (f" (each host's output: {event['host_logs']}/)" if event.get("host_logs") else "")
        )
    return None


def summary_and_error(summary: str | None, error: str | None) -> str:
    """A step's summary and its error as one text that says each thing once: a failing step
    often has its error as its summary too (`_failed(error)`, a client's exception), or one
    holds the other (`vm 110 is stopped` and `after 30s: vm 110 is stopped`)."""
    if summary and error and (summary in error or error in summary):
        return max(summary, error, key=len)
    return ": ".join(part for part in (summary, error) if part)


ALWAYS_COUNTED = ("succeeded", "unchanged", "failed", "skipped")


def count_words(counts: dict[str, int]) -> str:
    """Step counts by status as the summary line and `history` both say them:
    `7 ok, 1 unchanged, 0 failed, 2 skipped, 1 unknown, 3 not run`."""
    words = {"succeeded": "ok"}
    shown = [f"{counts.get(s, 0)} {words.get(s, s)}" for s in ALWAYS_COUNTED]
    order = ("declined", "unknown", "interrupted", "started", "pending", "not run")
    rest = sorted(
        (s for s in counts if s not in ALWAYS_COUNTED),
        key=lambda s: (order.index(s) if s in order else len(order), s),
    )
    return ", ".join(shown + [f"{counts[s]} {s}" for s in rest if counts[s]])


class Reporter:
    """Plain lines (CI, pipes), and the base of the others."""

    def __init__(self, out: TextIO | None = None, log: Path | None = None) -> None:
        self.out = out or sys.stdout
        self.log: LogFile | None = None
        if log is not None:
            self.log = LogFile(log, lambda text: self.emit({"event": "message", "text": text}))

    def emit(self, event: dict[str, Any]) -> None:
        line = describe(event)
        if line is not None:
            self._write_log(line)
            self.show(event, redactor.redact(line))

    def show(self, event: dict[str, Any], line: str) -> None:
        print(line, file=self.out, flush=True)

    def _write_log(self, line: str) -> None:
        if self.log is not None:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            self.log.write(redactor.redact(f"{stamp} {line}") + "\n", flush=True)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """While a gate asks a question, nothing else writes to the terminal."""
        yield

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None


class EventStream:
    """`--json`: one JSON object per line on stdout, every string redacted, and last one `done`.

    A run's own `done` (its counts and duration) is held back: the command's end
    (`opskit.cli.run`, where exit codes are decided) writes the one `done`, with the exit code
    the command really ends with, after an `error` event when it ended in an error."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.run_done: dict[str, Any] = {}  # the run's own `done`, held back for end()
        self.ended = False

    def write(self, event: dict[str, Any]) -> None:
        if self.ended:
            return
        if event["event"] == "done":
            self.run_done = event
            return
        self._print(event)

    def end(self, exit_code: int, error: str | None = None) -> None:
        if self.ended:
            return
        if error is not None:
            self._print({"event": "error", "message": error, "exit_code": exit_code})
        done = {**self.run_done, "event": "done"}
        if done.get("exit_code") != exit_code:
            done["status"] = EXIT_STATUS.get(exit_code, "failed")
        done["exit_code"] = exit_code
        self._print(done)
        self.ended = True

    def _print(self, event: dict[str, Any]) -> None:
        # Strings are redacted before encoding: a value JSON escapes still matches.
        payload = _redacted({"event": event["event"], "time": round(time.time(), 3), **event})
        print(json.dumps(payload, default=str), file=self.out, flush=True)


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redactor.redact(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(v) for v in value]
    return value


class JsonReporter(Reporter):
    """Events into the `--json` stream: the machine twin of the progress view."""

    def __init__(self, events: EventStream, log: Path | None = None) -> None:
        super().__init__(events.out, log)
        self.events = events

    def emit(self, event: dict[str, Any]) -> None:
        line = describe(event)
        if line is not None:
            self._write_log(line)
        self.events.write(event)


TAIL_LINES = 2  # lines of each running step's output the live view shows


class LiveReporter(Reporter):
    """On a terminal: finished steps scroll by, a live footer shows what runs now."""

    def __init__(self, out: TextIO | None = None, log: Path | None = None) -> None:
        super().__init__(out, log)
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=self.out, highlight=False)
        self.running: dict[tuple[str, str], float] = {}
        self.tails: dict[tuple[str, str], list[str]] = {}  # a running step's last lines
        self.started = time.monotonic()
        self.live = Live(
            console=self.console, refresh_per_second=4, transient=True, get_renderable=self._footer
        )
        self.live.start()

    def _footer(self) -> Any:
        from rich.text import Text

        now = time.monotonic()
        width = max(20, self.console.width - 6)
        lines = []
        for (target, step), since in list(self.running.items())[:12]:
            lines.append(f"  {target}  {step}  {now - since:.0f}s")
            lines += [f"    {line[:width]}" for line in self.tails.get((target, step), ())]
        more = len(self.running) - 12
        if more > 0:
            lines.append(f"  ... and {more} more")
        head = f"running {counted(len(self.running), 'step')}, {now - self.started:.0f}s elapsed"
        return Text("\n".join([head, *lines]), style="dim")

    def emit(self, event: dict[str, Any]) -> None:
        if event["event"] == "step":
            key = (event["target"], event["step"])
            if event["status"] == "started":
                self.running[key] = time.monotonic()
            else:
                self.running.pop(key, None)
                self.tails.pop(key, None)
        elif event["event"] == "output":
            key = (event["target"], event["step"])
            if key in self.running:
                said = [redactor.redact(" ".join(line["text"].split())) for line in event["lines"]]
                self.tails[key] = [*self.tails.get(key, []), *said][-TAIL_LINES:]
        super().emit(event)

    def show(self, event: dict[str, Any], line: str) -> None:
        style = None
        if event.get("status") in ("failed", "unknown") or event["event"] == "retry":
            style = "red"
        elif event.get("status") in ("succeeded", "unchanged"):
            style = "green"
        self.console.print(line, style=style, markup=False)

    @contextmanager
    def paused(self) -> Iterator[None]:
        self.live.stop()
        try:
            yield
        finally:
            self.live.start()

    def close(self) -> None:
        self.live.stop()
        super().close()


def reporter_for(*, events: EventStream | None, log: Path | None) -> Reporter:
    if events is not None:
        return JsonReporter(events, log=log)
    if sys.stdout.isatty():
        return LiveReporter(log=log)
    return Reporter(log=log)
