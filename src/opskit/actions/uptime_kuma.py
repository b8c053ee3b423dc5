"""uptime_kuma.maintenance: an Uptime Kuma maintenance window for the length of a run.

One window per run, whatever the number of targets: the first target's step opens it (manual
strategy, active at once, its title naming the runbook and the run), each target's step adds
the monitors watching that target's services (or those it lists). The run holds it in its
ledger (engine/run_scope.py) from before it is opened, so it is closed when the run ends, on
success, failure or interrupt; one left by a killed run is closed by `resume` (at its end) or
by the next run (at its start).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from ..errors import OpskitError
from ..model import Change, ChangeKind, Outcome, Risk
from .base import Action, ActionArgs, ActionContext

if TYPE_CHECKING:
    import asyncio

    from ..clients.connections import Connections
    from ..clients.uptime_kuma import Monitor, UptimeKumaClient

KIND = "uptime_kuma.maintenance"


class MaintenanceArgs(ActionArgs):
    monitors: list[str] | None = Field(
        None,
        description="the monitors to cover, by name (default: those watching the target's"
        " services: the service's `monitor:`, else a monitor named like it or reaching its URL)",
    )
    title: str | None = Field(
        None, description="the window's title (default: 'opskit: RUNBOOK, run RUN_ID')"
    )
    description: str = Field(
        "Opened by opskit for the length of a run; closed when it ends.",
        description="the window's description in Uptime Kuma",
    )
    until: Literal["run", "window"] = Field(
        "run",
        description="run: a manual window, open until the run closes it; window: in a scheduled"
        " run, a window that also ends by itself when the runbook's schedule window closes"
        " (other runs: manual)",
    )


@dataclass
class _RunWindow:
    """The run's one window, shared by its targets' steps."""

    id: int | None = None
    title: str = ""
    monitors: set[int] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=lambda: _lock())


def _lock() -> asyncio.Lock:
    import asyncio  # here: `opskit explain` imports every kind's module, and no event loop

    return asyncio.Lock()


class Maintenance(Action[MaintenanceArgs]):
    """Put the target's Uptime Kuma monitors under maintenance until the run ends.

    The window is one per run (manual strategy, active at once); each target adds its monitors.
    It is closed (deleted) when the run ends, in success, failure or interrupt; a window left
    by a killed run is closed by `opskit resume` of that run, at its end, or by the next run,
    at its start. A resume does this step again on each target it has work left on (a new
    window, or the one it took over). Needs the inventory's `uptime_kuma:` (url, username,
    password as a secret reference). While planning only read events are sent."""

    name: ClassVar[str] = KIND
    risk: ClassVar[Risk] = Risk.CHANGE
    Args = MaintenanceArgs
    outputs: ClassVar[dict[str, str]] = {
        "window": "the maintenance window's id in Uptime Kuma (int)",
        "title": "its title (str)",
        "monitors": "the names of the monitors this target put under maintenance (list)",
    }
    example: ClassVar[str] = """
        targets: tag:monitored
        steps:
          - id: quiet
            description: no alerts while guests reboot
            uptime_kuma.maintenance: {}     # the monitors watching each target's services
            register: window                # later: {{ window.window }}, {{ window.monitors }}
          - id: reboot
            proxmox.vm.reboot: {}
        """

    def describe(self) -> str:
        listed = f" {', '.join(self.args.monitors)}" if self.args.monitors else ""
        return f"Uptime Kuma maintenance window{listed} for the run"

    def _chosen(
        self, ctx: ActionContext, kuma: UptimeKumaClient
    ) -> tuple[list[Monitor], list[str]]:
        """The monitors to cover, and the names listed that no monitor has."""
        from ..clients.uptime_kuma import monitors_of

        monitors = kuma.monitors()
        if self.args.monitors is not None:
            by_name = {m.name: m for m in monitors}
            missing = [n for n in self.args.monitors if n not in by_name]
            return [by_name[n] for n in self.args.monitors if n in by_name], missing
        found: dict[int, Monitor] = {}
        for watching in monitors_of(ctx.target, monitors).values():
            for m in watching:
                found[m.id] = m
        return sorted(found.values(), key=lambda m: m.id), []

    async def probe(self, ctx: ActionContext) -> Change:
        async with await ctx.uptime_kuma() as kuma:
            chosen, missing = self._chosen(ctx, kuma)
        if missing:
            return Change.none(
                "Uptime Kuma has no monitor named " + ", ".join(map(repr, missing)),
                blockers=[f"no Uptime Kuma monitor named {n!r}" for n in missing],
            )
        if not chosen:
            return Change.none(f"no Uptime Kuma monitor watches {ctx.target.name}")
        names = [m.name for m in chosen]
        return Change(
            kind=ChangeKind.CREATE,
            summary="maintenance window for the run over " + ", ".join(names),
            after={"monitors": names},
        )

    async def apply(self, ctx: ActionContext) -> Outcome:
        scope = ctx.run
        if scope is None:
            raise OpskitError(f"{KIND} holds its window for a run: it runs only in one")
        window = scope.shared(KIND, _RunWindow)
        async with window.lock, await ctx.uptime_kuma() as kuma:
            chosen, missing = self._chosen(ctx, kuma)
            if missing:
                raise OpskitError(
                    "Uptime Kuma has no monitor named " + ", ".join(map(repr, missing))
                )
            if not chosen:
                return Outcome(
                    ok=True,
                    summary=f"no Uptime Kuma monitor watches {ctx.target.name}",
                    outputs={"window": window.id, "title": window.title, "monitors": []},
                )
            opened = False
            if window.id is None:
                await self._adopt(scope.held(), kuma, window)
            if window.id is None:
                window.title = self.args.title or f"opskit: {scope.runbook}, run {scope.run_id}"
                # Held before it is opened: a crash in between leaves a close with nothing to do.
                scope.hold(KIND, scope.run_id, {"title": window.title})
                until = scope.deadline if self.args.until == "window" else None
                window.id = await kuma.add_window(window.title, self.args.description, until=until)
                scope.hold(KIND, scope.run_id, {"title": window.title, "id": window.id})
                opened = True
            window.monitors |= {m.id for m in chosen}
            await kuma.link_monitors(window.id, sorted(window.monitors))
        names = [m.name for m in chosen]
        how = "opened" if opened else "joined"
        return Outcome(
            ok=True,
            changed=True,
            summary=f"maintenance window {window.title!r} {how}: {', '.join(names)}",
            outputs={"window": window.id, "title": window.title, "monitors": names},
        )

    @staticmethod
    async def _adopt(
        held: Mapping[str, Mapping[str, Any]], kuma: UptimeKumaClient, window: _RunWindow
    ) -> None:
        """A resumed run goes on in the window of the run it resumes, if it is still open."""
        for entry in held.values():
            data = entry.get("data") or {}
            if entry.get("kind") != KIND or "id" not in data:
                continue
            found = await kuma.window(int(data["id"]))
            if found is not None and found.title == data.get("title"):
                window.id, window.title = found.id, found.title
                window.monitors = set(await kuma.window_monitors(found.id))
                return

    @classmethod
    async def close_held(cls, connections: Connections, data: Mapping[str, Any]) -> str:
        """Close (delete) the window a run held: by its id when its title still matches, and
        any other window of that title (opened before its id was recorded)."""
        title = str(data.get("title") or "")
        kuma = await connections.uptime_kuma(read_only=False)
        closed = 0
        async with kuma:
            for found in await kuma.windows():
                if found.title == title and title:
                    await kuma.delete_window(found.id)
                    closed += 1
        if not closed:
            return f"Uptime Kuma maintenance window {title!r} was already closed"
        return f"Uptime Kuma maintenance window {title!r} closed"
