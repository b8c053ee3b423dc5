"""`opskit inventory sync --uptime-kuma`: the inventory's services mapped to Uptime Kuma's monitors.

A service one monitor watches by URL or address (not by its name) gets `monitor: NAME` written
into the inventory, round-trip; the report names the services no monitor watches, those several
monitors watch, and the monitors that watch nothing in the inventory. Read-only in Uptime Kuma.
"""

from __future__ import annotations

import asyncio
import io
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .clients.uptime_kuma import Monitor
    from .model import Inventory


async def monitors(inventory: Inventory) -> list[Monitor]:
    """Uptime Kuma's monitors with their status, through the door, read-only."""
    from .clients.connections import Connections

    connections = Connections(inventory)
    try:
        async with await connections.uptime_kuma(read_only=True) as kuma:
            return await kuma.with_status()
    finally:
        await connections.aclose()


def map_monitors(text: str, inventory: Inventory, found: list[Monitor]) -> tuple[str, list[str]]:
    """The inventory's text with `monitor:` set where one monitor watches a service by URL or
    address, and what the mapping found, one line each."""
    from .clients.uptime_kuma import monitors_of
    from .sync import round_trip_yaml

    yaml = round_trip_yaml()
    doc = yaml.load(text)
    entries: dict[str, Any] = {
        str(e["name"]): e for section in ("guests", "hosts") for e in (doc.get(section) or [])
    }
    notes: list[str] = []
    unwatched: list[str] = []
    watched: set[int] = set()
    for host in inventory.all_hosts():
        mapped = monitors_of(inventory.target(host), found)
        for service, watching in mapped.items():
            where = f"{host.name}/{service}"
            watched |= {m.id for m in watching}
            if not watching:
                unwatched.append(where)
                continue
            names = [m.name for m in watching]
            if len(watching) > 1:
                notes.append(
                    f"{where}: watched by {', '.join(names)} (name one with `monitor:` to choose)"
                )
                continue
            declared = host.services[service].monitor
            if declared is None and names[0] != service:
                entries[host.name]["services"][service]["monitor"] = names[0]
                notes.append(f"{where}: monitor {names[0]!r}")
    if unwatched:
        notes.append("services no monitor watches: " + ", ".join(unwatched))
    idle = [m.name for m in found if m.id not in watched]
    if idle:
        notes.append("monitors that watch nothing in the inventory: " + ", ".join(idle))
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue(), notes


def sync_monitors(text: str, inventory: Inventory) -> tuple[str, list[str]]:
    return map_monitors(text, inventory, asyncio.run(monitors(inventory)))
