"""What `opskit status` found: hosts, their services and figures, each with its source."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

# A host's or a service's state, worst last: what the table colours and the exit code read.
OK, OFF, UNKNOWN, UNHEALTHY = "ok", "off", "unknown", "unhealthy"


@dataclass
class Figure:
    """One value and where it came from: a live source (taken `at`, a Unix time) or the
    inventory (static, `at` None)."""

    value: Any
    source: str
    at: float | None = None
    error: str | None = None  # the source did not answer: why

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "value": self.value,
            "source": self.source,
            "age": None if self.at is None else round(max(0.0, now - self.at), 3),
            "error": self.error,
        }


@dataclass
class ServiceStatus:
    name: str
    check: str  # http, tcp, mcp, or none (no health check in the inventory)
    state: str = UNKNOWN
    summary: str = ""
    error: str | None = None
    source: str = ""
    at: float | None = None
    elapsed: float | None = None
    tools: list[str] | None = None  # mcp: the tools listed
    server: str | None = None  # mcp: the server's name and version
    monitor: Figure | None = None  # a monitor's state (Uptime Kuma), where a source has one

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "name": self.name,
            "check": self.check,
            "state": self.state,
            "summary": self.summary,
            "error": self.error,
            "source": self.source,
            "age": None if self.at is None else round(max(0.0, now - self.at), 3),
            "elapsed": self.elapsed,
            "tool_count": None if self.tools is None else len(self.tools),
            "tools": self.tools,
            "server": self.server,
            "monitor": None if self.monitor is None else self.monitor.as_dict(now),
        }


@dataclass
class RunSeen:
    runbook: str
    run_id: str
    status: str
    started_at: float
    ended_at: float | None
    steps: dict[str, int] = field(default_factory=dict)  # status -> count, on this host


@dataclass
class LockSeen:
    run_id: str | None
    pid: int | None
    since: float | None
    held: bool


@dataclass
class HostStatus:
    name: str
    kind: str  # qemu, lxc, host
    address: str
    vmid: int | None = None
    state: str = UNKNOWN
    figures: dict[str, Figure] = field(default_factory=dict)  # power, uptime, cpu, memory, ...
    ssh: ServiceStatus | None = None
    services: list[ServiceStatus] = field(default_factory=list)
    beszel: Figure | None = None  # the agent as the hub sees it
    runs: list[RunSeen] = field(default_factory=list)
    lock: LockSeen | None = None
    problems: list[str] = field(default_factory=list)

    def judge(self) -> str:
        """The host's state from its figures: off when its guest is, else the worst part."""
        power = self.figures.get("power")
        if power is not None and power.value not in (None, "running"):
            self.state = OFF
            return self.state
        self.problems = []
        if power is not None and power.error:
            self.problems.append(f"proxmox: {power.error}")
        parts = [p for p in [self.ssh, *self.services] if p is not None]
        for part in parts:
            if part.monitor is not None and part.monitor.value == "down" and part.state == OK:
                part.state, part.error = UNHEALTHY, f"{part.monitor.source}: down"
            if part.state == UNHEALTHY:
                self.problems.append(f"{part.name}: {part.error or part.summary}")
        if self.beszel is not None and self.beszel.value not in ("up", "registered"):
            self.problems.append(f"beszel: {self.beszel.error or self.beszel.value}")
        self.state = UNHEALTHY if self.problems else OK
        return self.state

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "vmid": self.vmid,
            "address": self.address,
            "state": self.state,
            "problems": list(self.problems),
            "figures": {k: f.as_dict(now) for k, f in self.figures.items()},
            "ssh": None if self.ssh is None else self.ssh.as_dict(now),
            "services": [s.as_dict(now) for s in self.services],
            "beszel": None if self.beszel is None else self.beszel.as_dict(now),
            "runs": [
                {
                    "runbook": r.runbook,
                    "run_id": r.run_id,
                    "status": r.status,
                    "started_at": r.started_at,
                    "ended_at": r.ended_at,
                    "age": round(max(0.0, now - r.started_at), 3),
                    "steps": dict(r.steps),
                }
                for r in self.runs
            ],
            "lock": None
            if self.lock is None
            else {
                "run_id": self.lock.run_id,
                "pid": self.lock.pid,
                "since": self.lock.since,
                "held": self.lock.held,
            },
        }


@dataclass
class Overview:
    hosts: list[HostStatus]
    started: float = field(default_factory=time.time)
    elapsed: float = 0.0
    timeout: float = 0.0
    lab: str | None = None
    sources: dict[str, Figure] = field(default_factory=dict)  # proxmox, beszel, journal

    @property
    def healthy(self) -> bool:
        return all(h.state in (OK, OFF) for h in self.hosts) and not any(
            f.error for f in self.sources.values() if f.value != "not configured"
        )

    def as_dict(self) -> dict[str, Any]:
        now = time.time()
        return {
            "version": 1,
            "time": round(now, 3),
            "healthy": self.healthy,
            "elapsed": round(self.elapsed, 3),
            "timeout": self.timeout,
            "lab": self.lab,
            "sources": {k: f.as_dict(now) for k, f in self.sources.items()},
            "hosts": [h.as_dict(now) for h in self.hosts],
        }
