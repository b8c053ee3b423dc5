"""The Uptime Kuma stand-in for tests: served on loopback from a thread of the test process,
seeded with monitors for the shipped inventory's services; and `test.kuma_seen`, a kind that
writes what the client sees of every monitor (getMonitor's `maintenance`) to $KUMA_SEEN."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from pathlib import Path
from typing import Any, ClassVar

from opskit import actions
from opskit.actions.base import Action, ActionArgs, ActionContext
from opskit.lab.uptime_kuma import KumaServer, KumaState, seed, serve
from opskit.model import Change, Outcome, Risk

USER, PASSWORD = "opskit", "kuma-Passw0rd-for-tests"
SEEN_ENV = "KUMA_SEEN"
# Monitors for the shipped inventory: by name, by URL, by host and port, and two that watch
# nothing the tests patch (media's agent) or nothing in the inventory at all.
MONITORS: list[dict[str, Any]] = [
    {"name": "traefik", "type": "http", "url": "http://docker.tail0000.ts.net:8080/ping"},
    {"name": "Status page", "type": "http", "url": "https://uptime.tail0000.ts.net"},
    {"name": "AI livez", "type": "http", "url": "http://ai.tail0000.ts.net:8811/livez"},
    {"name": "media agent", "type": "port", "hostname": "media.tail0000.ts.net", "port": 45876},
    {"name": "router", "type": "ping", "hostname": "192.0.2.1"},
]
# What the patched targets (docker, ai) are watched by: the window must cover exactly these.
PATCHED = {"traefik", "Status page", "AI livez"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StandIn:
    """The stand-in in its own thread and event loop (the CLI runs its own loop)."""

    def __init__(self, dialect: str, monitors: list[dict[str, Any]] | None = None) -> None:
        self.state = KumaState(dialect=dialect, username=USER, password=PASSWORD)
        seed(self.state, MONITORS if monitors is None else monitors)
        self.server = KumaServer(self.state)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._runner = self._loop.run_until_complete(serve(self.server, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        pending = asyncio.all_tasks(self._loop)
        if pending:
            self._loop.run_until_complete(asyncio.wait(pending, timeout=5))
        self._loop.close()

    def __enter__(self) -> StandIn:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # what tests ask of it
    def names(self, ids: list[int]) -> set[str]:
        return {self.state.monitors[i]["name"] for i in ids if i in self.state.monitors}

    def under_maintenance(self) -> set[str]:
        return {
            m["name"] for i, m in self.state.monitors.items() if self.state.under_maintenance(i)
        }

    def windows(self) -> dict[int, dict[str, Any]]:
        return {i: self.state.window_json(i) for i in list(self.state.windows)}

    def mutating(self) -> list[str]:
        return self.server.mutating()


class SeenArgs(ActionArgs):
    pass


class Seen(Action[SeenArgs]):
    """Writes, per target, the monitors getMonitor says are under maintenance."""

    name: ClassVar[str] = "test.kuma_seen"
    risk: ClassVar[Risk] = Risk.CHANGE
    Args = SeenArgs

    async def probe(self, ctx: ActionContext) -> Change:
        return Change(kind="create", summary="look at Uptime Kuma")  # type: ignore[arg-type]

    async def apply(self, ctx: ActionContext) -> Outcome:
        async with await ctx.uptime_kuma() as kuma:
            found = sorted(
                m.name for m in [await kuma.monitor(m.id) for m in kuma.monitors()] if m.maintenance
            )
        path = Path(os.environ[SEEN_ENV])
        seen = json.loads(path.read_text()) if path.exists() else {}
        seen[ctx.target.name] = found
        path.write_text(json.dumps(seen))
        return Outcome(ok=True, changed=True, summary=", ".join(found))


def install() -> None:
    actions.register(Seen)


def uninstall() -> None:
    actions.unregister(Seen.name)


SHIPPED = (
    "uptime_kuma:\n  url: https://uptime.tail0000.ts.net\n  username: admin\n"
    "  password: env:UPTIME_KUMA_PASSWORD\n"
)


def point_at(inventory_text: str, url: str) -> str:
    """The shipped inventory's `uptime_kuma:` pointed at the stand-in."""
    assert SHIPPED in inventory_text
    ours = f"uptime_kuma:\n  url: {url}\n  username: {USER}\n  password: env:KUMA_TEST_PASSWORD\n"
    return inventory_text.replace(SHIPPED, ours)
