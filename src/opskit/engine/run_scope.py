"""What a run must undo when it ends, however it ends: a run-scoped cleanup guarantee.

A step that opens something for the length of a run (an Uptime Kuma maintenance window) holds
it here: one entry in a ledger file of the run (`$OPSKIT_STATE_DIR/cleanups/RUN.json`), written
before the thing is opened. When the run ends (success, failure, Ctrl-C, SIGTERM, a closed
window) the engine closes every entry it holds, through the kind that opened it. A run killed
outright (SIGKILL, a power cut) leaves its ledger behind: the next run finds it at its start and
closes what it holds, unless it is `resume` of that run, which takes the entries over (the
resumed steps still need them) and closes them at its own end. A run still alive is left alone.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from ..localfile import write_atomic

if TYPE_CHECKING:
    from ..clients.connections import Connections
    from ..store import Journal

T = TypeVar("T")


@runtime_checkable
class Closes(Protocol):
    """A step kind that holds something for a run: it closes one ledger entry's `data`."""

    @classmethod
    async def close_held(cls, connections: Connections, data: Mapping[str, Any]) -> str: ...


@dataclass
class RunScope:
    """One run's ledger, and state its steps share across targets (one window per run)."""

    run_id: str
    runbook: str
    directory: Path
    kinds: Mapping[str, type]  # the catalog: kind name -> class (Closes for those that hold)
    say: Callable[[str], None] = lambda text: None
    deadline: float | None = None  # a scheduled run: when its maintenance window closes
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _shared: dict[str, object] = field(default_factory=dict)

    @property
    def ledger(self) -> Path:
        return self.directory / f"{self.run_id}.json"

    def shared(self, key: str, make: Callable[[], T]) -> T:
        """The run's one `key` object, made on first use (steps on many targets share it)."""
        if key not in self._shared:
            self._shared[key] = make()
        return self._shared[key]  # type: ignore[return-value]

    # ----- the ledger --------------------------------------------------------------------

    def hold(self, kind: str, key: str, data: Mapping[str, Any]) -> None:
        """Record that the run holds `key` of `kind` (before it is opened: a crash between the
        two leaves an entry whose close finds nothing, never a thing nobody closes)."""
        entries = _read(self.ledger)
        entries[f"{kind} {key}"] = {"kind": kind, "data": dict(data)}
        _write(self.ledger, entries)

    def release(self, kind: str, key: str) -> None:
        entries = _read(self.ledger)
        entries.pop(f"{kind} {key}", None)
        _write(self.ledger, entries)

    def held(self) -> dict[str, dict[str, Any]]:
        return _read(self.ledger)

    # ----- the run's two ends ------------------------------------------------------------

    async def begin(
        self, connections: Connections, journal: Journal, resumed_from: str | None
    ) -> None:
        """Close what killed runs left open; take over what the run being resumed held."""
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("*.json")):
            other = path.stem
            if other == self.run_id:
                continue
            row = journal.run(other)
            if row is not None and row.shown_status == "running":
                continue  # alive: its own end closes it
            entries = _read(path)
            if other == resumed_from:
                mine = _read(self.ledger)
                mine.update(entries)
                _write(self.ledger, mine)
                path.unlink(missing_ok=True)
                if entries:
                    self.say(f"resuming {other}: this run holds what it held ({_names(entries)})")
                continue
            left = await self._close(connections, entries, f"left open by run {other}")
            _write(path, left)

    async def end(self, connections: Connections) -> None:
        """Close everything the run holds; what cannot be closed stays for the next run."""
        entries = _read(self.ledger)
        if entries:
            _write(self.ledger, await self._close(connections, entries, "the run ended"))

    async def _close(
        self, connections: Connections, entries: dict[str, dict[str, Any]], why: str
    ) -> dict[str, dict[str, Any]]:
        from ..errors import OpskitError

        left: dict[str, dict[str, Any]] = {}
        for name, entry in entries.items():
            kind = self.kinds.get(str(entry.get("kind")))
            if not isinstance(kind, Closes):
                self.say(f"cannot close {name} ({why}): its kind is not installed")
                left[name] = entry
                continue
            try:
                said = await kind.close_held(connections, entry.get("data") or {})
            except (OpskitError, OSError) as exc:
                self.say(f"could not close {name} ({why}): {exc}; the next run tries again")
                left[name] = entry
                continue
            self.say(f"{said} ({why})")
        return left


def _names(entries: Mapping[str, Any]) -> str:
    return ", ".join(sorted(entries))


def _read(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, entries: Mapping[str, Any]) -> None:
    if not entries:
        path.unlink(missing_ok=True)
        return
    text = json.dumps(entries, indent=1, sort_keys=True)
    write_atomic(path, text, what="the run's ledger of what it holds open", parents=True)


def holds_for_run(kind: object) -> bool:
    """Whether a step kind holds what it opens for its run's length (the ledger closes it)."""
    return isinstance(kind, type) and isinstance(kind, Closes)


def run_scope(
    run_id: str,
    runbook: str,
    kinds: Mapping[str, type],
    say: Callable[[str], None],
    deadline: float | None = None,
) -> RunScope:
    """The scope of run `run_id`, its ledger in the state dir."""
    from ..store import state_dir

    return RunScope(run_id, runbook, state_dir() / "cleanups", kinds, say, deadline)
