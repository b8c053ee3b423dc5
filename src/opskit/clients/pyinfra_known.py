"""What a host answered pyinfra, kept while nothing may have changed it (the pyinfra bridge's
memory of facts and of the operations its probes listed)."""

from __future__ import annotations

import copy
import json
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pyinfra.api.command import PyinfraCommand

    from .ssh import CommandResult, HostShell, SSHPool

T = TypeVar("T")
_lock = threading.Lock()


class KnownFacts:
    """The answers to fact commands on one host, kept for a whole plan or run (per SSHPool)
    while nothing was sent there that may have changed it (the pool's count of changes per
    host, which every HostShell keeps: pyinfra's commands, uploads, any other step's). So a
    step's operation, evaluated by the probe, the engine's re-probe and the apply, asks the host
    its facts once: the re-probe's answers are the apply's, and the plan's are the re-probe's
    where nothing ran on that host in between. A probe's whole finding is kept too (`found`):
    the same probe again, with nothing sent to the host since, would ask nothing the host has
    not answered already, so it is answered at once, without evaluating the operation again."""

    def __init__(self, pool: SSHPool, endpoint: Any) -> None:
        self.pool, self.endpoint = pool, endpoint
        self.seen = -1
        self.answers: dict[str, CommandResult] = {}
        self.values: dict[str, Any] = {}
        # Operations listed while probing: (key, the host's count then) -> their commands.
        self.listings: dict[str, tuple[int, list[PyinfraCommand]]] = {}
        self.findings: dict[str, Any] = {}  # a probe's work (its key) -> what it found

    def listed(self, key: str, commands: list[PyinfraCommand], asked_at: int) -> None:
        """Keep what a probe listed, unless something changed the host while it was asked."""
        if self.generation() == asked_at:
            self.listings[key] = (asked_at, commands)

    def listing(self, key: str) -> list[PyinfraCommand] | None:
        """What the probe listed for this operation, if nothing changed the host since."""
        found = self.listings.pop(key, None)
        if found is None or found[0] != self.generation():
            return None
        return found[1]

    def generation(self) -> int:
        return self.pool.generation(self.endpoint)

    def get(self, command: str) -> CommandResult | None:
        if self.seen != self.generation():
            return None
        return self.answers.get(command)

    def keep(self, command: str, result: CommandResult, asked_at: int) -> None:
        if self._fresh(asked_at):
            self.answers[command] = result

    def value(self, key: str) -> Any:
        """A fact's value as pyinfra processed it (keyed by fact, arguments, host data)."""
        if self.seen != self.generation():
            return _MISSING
        return self.values.get(key, _MISSING)

    def keep_value(self, key: str, value: Any, asked_at: int) -> None:
        if self._fresh(asked_at):
            self.values[key] = value

    def found(self, key: str) -> Any:
        """What a probe's work found (keyed by the work and all it depends on but the host),
        if nothing changed the host since it ran."""
        if self.seen != self.generation():
            return _MISSING
        return self.findings.get(key, _MISSING)

    def keep_found(self, key: str, value: Any, asked_at: int) -> None:
        if self._fresh(asked_at):
            self.findings[key] = value

    def _fresh(self, asked_at: int) -> bool:
        now = self.generation()
        if now != asked_at:
            return False  # something changed the host while it was asked: it may be stale
        if self.seen != now:
            self.answers.clear()
            self.values.clear()
            self.findings.clear()
            self.seen = now
        return True


_MISSING = object()

_facts_kept: weakref.WeakKeyDictionary[SSHPool, dict[Any, KnownFacts]] = weakref.WeakKeyDictionary()


def _known_facts(shell: HostShell) -> KnownFacts:
    endpoint = shell.endpoint
    with _lock:
        per_pool = _facts_kept.setdefault(shell.pool, {})
        key = (endpoint.host, endpoint.port)
        found = per_pool.get(key)
        if found is None:
            found = per_pool[key] = KnownFacts(shell.pool, endpoint)
        return found


async def kept(shell: HostShell, key: list[Any], probe: Callable[[], Awaitable[T]]) -> T:
    """What a probe's work found on the host of `shell`, kept with the host's answers while
    nothing may have changed it: `key` names the work and all it depends on but the host
    (arguments, host data, inputs), so the same probe again would ask the host nothing it has
    not answered already and is answered at once, without pyinfra evaluating it again (the
    engine's re-probe of a step planned in the same session). Anything that may have changed
    the host (any step there, a connection opened again, a gate that waited on a person, a
    lock another run held) makes it run afresh."""
    known = _known_facts(shell)
    text = json.dumps(key, sort_keys=True, default=str)
    found = known.found(text)
    if found is not _MISSING:
        return copy.deepcopy(found)  # type: ignore[no-any-return]
    asked_at = known.generation()
    result = await probe()
    known.keep_found(text, copy.deepcopy(result), asked_at)
    return result
