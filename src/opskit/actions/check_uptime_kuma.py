"""check.uptime_kuma: a monitor, or every monitor watching a target's services, is up in Uptime
Kuma; and `monitor_states`, what `opskit status` shows of a target's monitors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from ..model import Outcome
from .base import ActionArgs, ActionContext, Check

if TYPE_CHECKING:
    from ..clients.connections import Connections
    from ..clients.uptime_kuma import Monitor
    from ..model import Target


class KumaCheckArgs(ActionArgs):
    monitor: str | None = Field(
        None, description="a monitor's name (default: every monitor watching the target's services)"
    )
    service: str | None = Field(None, description="only the monitors of this service of the target")
    maintenance_ok: bool = Field(
        False, description="a monitor under maintenance passes (else it fails: it is not watched)"
    )


@dataclass(frozen=True)
class MonitorState:
    """One monitor as `opskit status` shows it."""

    service: str | None  # the target's service it watches (None: named directly)
    monitor: str
    id: int
    status: str  # up, down, pending, maintenance, unknown
    maintenance: bool
    active: bool
    message: str


def _state(service: str | None, m: Monitor) -> MonitorState:
    return MonitorState(service, m.name, m.id, m.status_name, m.maintenance, m.active, m.message)


async def monitor_states(
    connections: Connections, target: Target, service: str | None = None
) -> list[MonitorState]:
    """The Uptime Kuma monitors watching `target`'s services (one state each), read-only: for
    `opskit status` and `health`."""
    from ..clients.uptime_kuma import monitors_of

    async with await connections.uptime_kuma(read_only=True) as kuma:
        mapped = monitors_of(target, await kuma.with_status())
    return [
        _state(name, m)
        for name, watching in mapped.items()
        if service is None or name == service
        for m in watching
    ]


class CheckUptimeKuma(Check[KumaCheckArgs]):
    """Uptime Kuma says the target's monitors are up (their latest heartbeat), and active."""

    name: ClassVar[str] = "check.uptime_kuma"
    Args = KumaCheckArgs
    outputs: ClassVar[dict[str, str]] = {
        "monitors": "each monitor checked: {name, id, status, maintenance, service} (list)",
    }
    example: ClassVar[str] = """
        targets: docker
        steps:
          - id: watched
            check.uptime_kuma: {service: traefik}   # or {monitor: "Traefik"}; {} for all
            register: kuma                          # later: {{ kuma.monitors[0].status }}
        """

    def describe(self) -> str:
        what = self.args.monitor or self.args.service or "the target's monitors"
        return f"Uptime Kuma: {what} up"

    async def apply(self, ctx: ActionContext) -> Outcome:
        a = self.args
        if ctx.connections is None:
            return Outcome(ok=False, summary="no connections", error="no connections")
        if a.monitor is not None:
            async with await ctx.uptime_kuma() as kuma:
                named = [m for m in await kuma.with_status() if m.name == a.monitor]
            states = [_state(None, m) for m in named]
            if not states:
                error = f"Uptime Kuma has no monitor named {a.monitor!r}"
                return Outcome(ok=False, summary=error, error=error)
        else:
            states = await monitor_states(ctx.connections, ctx.target, a.service)
            if not states:
                what = f"service {a.service} of {ctx.target.name}" if a.service else ctx.target.name
                error = f"no Uptime Kuma monitor watches {what}"
                return Outcome(ok=False, summary=error, error=error)
        bad = [
            s
            for s in states
            if not s.active or not (s.status == "up" or (a.maintenance_ok and s.maintenance))
        ]
        outputs = {
            "monitors": [
                {
                    "name": s.monitor,
                    "id": s.id,
                    "status": s.status,
                    "maintenance": s.maintenance,
                    "service": s.service,
                }
                for s in states
            ]
        }
        shown = ", ".join(f"{s.monitor} {s.status}" for s in states)
        if bad:
            error = "; ".join(
                f"monitor {s.monitor} is {s.status if s.active else 'paused'}"
                + (f": {s.message}" if s.message and s.status != "up" else "")
                for s in bad
            )
            return Outcome(ok=False, summary=f"Uptime Kuma: {shown}", outputs=outputs, error=error)
        return Outcome(ok=True, summary=f"Uptime Kuma: {shown}", outputs=outputs)
