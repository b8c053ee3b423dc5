"""Uptime Kuma's monitors as a source of `opskit status`: each service's monitor state."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .model import Figure

if TYPE_CHECKING:
    from ..clients.connections import Connections
    from ..model import Inventory


class KumaMonitors:
    """The monitors watching each service of the inventory (as `check.uptime_kuma` finds
    them), read in one read-only session; a service's figure is its worst monitor's state."""

    def __init__(self, url: str) -> None:
        self.name = f"uptime-kuma {url}"

    async def monitors(
        self, connections: Connections, inventory: Inventory, timeout: float
    ) -> dict[tuple[str, str], Figure] | None:
        from ..clients.uptime_kuma import monitors_of
        from ..secrets import absent

        spec = inventory.uptime_kuma
        assert spec is not None
        refs = [r for r in (spec.password, spec.token) if r is not None]
        if refs and all(absent(f"optional:{r.removeprefix('optional:')}") for r in refs):
            return None  # its login is not given here (as the Beszel hub's without its login)
        async with await connections.uptime_kuma(read_only=True) as kuma:
            listed = await kuma.with_status()
        at = time.time()
        found: dict[tuple[str, str], Figure] = {}
        for host in inventory.all_hosts():
            target = inventory.target(host)
            for service, watching in monitors_of(target, listed).items():
                if not watching:
                    continue
                states = sorted(watching, key=lambda m: _RANK.get(m.status_name, 0), reverse=True)
                worst = states[0]
                value = "maintenance" if worst.maintenance else worst.status_name
                names = ", ".join(m.name for m in watching)
                found[(host.name, service)] = Figure(value, f"{self.name} ({names})", at)
        return found


# Which state of several monitors a service shows: the worst.
_RANK = {"up": 0, "maintenance": 1, "pending": 2, "unknown": 3, "down": 4}


def source(inventory: Inventory) -> KumaMonitors | None:
    """The inventory's Uptime Kuma as a monitor source, or None when it names none."""
    spec = inventory.uptime_kuma
    return None if spec is None else KumaMonitors(spec.url)
