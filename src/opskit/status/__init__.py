"""`opskit status`: the homelab at a glance, from every source opskit knows, read-only.

    collect(inventory, names, timeout) -> Overview
        Proxmox     one /cluster/resources and one /nodes per cluster: each guest's state,
                    uptime, CPU and memory; a node's own
        services    each service's health check of the inventory (check.http, check.tcp,
                    check.mcp with the tools it lists), run through a read-only door
        SSH         each host's sshd greets (its banner; no login)
        Beszel      the hub's `systems` records: is each host's agent there, and up
        monitors    sources of monitor states (Uptime Kuma's, MONITOR_SOURCES below)
        journal     the last run of each runbook on each host, and the locks held

Every probe starts at once and has `timeout` seconds, so one system that never answers
delays nothing else past it. Each figure says where it came from and when (`Figure`).
"""

from __future__ import annotations

from .kuma import source as _uptime_kuma
from .model import Figure, HostStatus, Overview, ServiceStatus
from .probes import MONITOR_SOURCES, MonitorSource, collect

MONITOR_SOURCES.append(_uptime_kuma)  # the inventory's `uptime_kuma:`, when it names one

__all__ = [
    "MONITOR_SOURCES",
    "Figure",
    "HostStatus",
    "MonitorSource",
    "Overview",
    "ServiceStatus",
    "collect",
]
