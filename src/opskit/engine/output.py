"""What running steps print, line by line: into each target's own log as it arrives, and to the
reporter (the live view, the `--json` stream) as `output` events, rate-limited per step.

Every line is redacted once, here, before any sink sees it. A step's lines reach its target's
log at once (flushed with its next event, at most OUTPUT_INTERVAL later), and the reporter in
one `output` event per step and interval, so a step printing thousands of lines costs a few
events a second, not one each.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..model import Outcome
from ..report.logfile import LogFile
from ..report.progress import Reporter
from ..secrets import redactor

OUTPUT_INTERVAL = 0.25  # seconds between two `output` events of one step, at least
EVENT_LINES = 100  # lines one `output` event carries; more are counted as dropped


@dataclass
class _Pending:
    """A step's lines since its last `output` event."""

    lines: list[dict[str, str]] = field(default_factory=list)
    dropped: int = 0
    last: float = float("-inf")  # when its last event was sent (loop time)
    flush: asyncio.TimerHandle | None = None


class StepOutput:
    """The run's sink for what its steps print; `close()` at the run's end."""

    def __init__(self, reporter: Reporter, host_logs: Path | None) -> None:
        self.reporter = reporter
        self.host_logs = host_logs
        self._logs: dict[str, LogFile] = {}
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._streamed: set[tuple[str, str]] = set()  # steps whose lines are in their log
        self._stream: dict[str, str] = {}  # the stream a target's log shows lines of now

    def line(self, target: str, step: str, stream: str, text: str) -> None:
        """One line a running step printed (`stream`: stdout or stderr)."""
        clean = redactor.redact(text)
        key = (target, step)
        log = self._log(target)
        if log is not None:
            if key not in self._streamed:
                self._streamed.add(key)
                self._stream.pop(target, None)
                log.write(f"== {time.strftime('%H:%M:%S')} {step}: running\n")
            if self._stream.get(target) != stream:  # as a finished step's output shows
                self._stream[target] = stream
                log.write(f"-- {stream}\n")
            log.write(f"{clean}\n")
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending()
        if len(pending.lines) < EVENT_LINES:
            pending.lines.append({"stream": stream, "text": clean})
        else:
            pending.dropped += 1
        if pending.flush is None:
            loop = asyncio.get_running_loop()
            wait = pending.last + OUTPUT_INTERVAL - loop.time()
            if wait <= 0:
                self._send(target, step)
            else:
                pending.flush = loop.call_later(wait, self._send, target, step)

    def _send(self, target: str, step: str) -> None:
        pending = self._pending.get((target, step))
        if pending is None:
            return
        if pending.flush is not None:
            pending.flush.cancel()
            pending.flush = None
        if not pending.lines:
            return
        log = self._logs.get(target)
        if log is not None:
            log.flush()  # the log has every line an event says
        event: dict[str, object] = {
            "event": "output",
            "target": target,
            "step": step,
            "lines": pending.lines,
        }
        if pending.dropped:
            event["dropped"] = pending.dropped
        pending.lines, pending.dropped = [], 0
        pending.last = asyncio.get_running_loop().time()
        self.reporter.emit(event)

    def finished(self, target: str, step: str, status: str, outcome: Outcome) -> None:
        """The step ended: its last lines are sent (before its end event), and its log gets
        its verdict, and what it printed unless its lines are there already."""
        self._send(target, step)
        self._pending.pop((target, step), None)
        streamed = (target, step) in self._streamed
        self._stream.pop(target, None)
        streams: list[tuple[str, str]] = []
        for name in ("stdout", "stderr"):
            text = outcome.outputs.get(name)
            if isinstance(text, str) and text and not streamed:
                streams.append((name, text))
        if self.host_logs is None or not (streams or outcome.error or streamed):
            return  # the journal has every step; this log is for what steps printed
        log = self._log(target)
        assert log is not None
        lines = [f"== {time.strftime('%H:%M:%S')} {step}: {status}: {outcome.summary}"]
        for stream, text in streams:
            lines += [f"-- {stream}", text.rstrip("\n")]
        if outcome.error:
            lines.append(f"-- error: {outcome.error}")
        log.write(redactor.redact("\n".join(lines)) + "\n", flush=True)

    def _log(self, target: str) -> LogFile | None:
        if self.host_logs is None:
            return None
        log = self._logs.get(target)
        if log is None:
            log = self._logs[target] = LogFile(self.host_logs / f"{target}.log", self._lost)
        return log

    def _lost(self, text: str) -> None:
        self.reporter.emit({"event": "message", "text": text})

    def close(self) -> None:
        for pending in self._pending.values():
            if pending.flush is not None:
                pending.flush.cancel()
        self._pending.clear()
        for log in self._logs.values():
            log.close()
        self._logs.clear()
