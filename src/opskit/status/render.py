"""`opskit status` on a terminal: one table per host, redrawn in place with --watch."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..secrets import redactor
from .model import OFF, OK, UNHEALTHY, Figure, HostStatus, Overview, ServiceStatus

if TYPE_CHECKING:
    from rich.console import RenderableType

STYLE = {OK: "green", OFF: "dim", UNHEALTHY: "bold red", "unknown": "yellow"}


def age(seconds: float | None) -> str:
    """How old a figure is: `now`, `4s`, `3m`, `2h`, `5d`; `static` for the inventory's."""
    if seconds is None:
        return "static"
    if seconds < 1:
        return "now"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def uptime(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or seconds <= 0:
        return "-"
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {int(seconds) % 60}s"


def memory(value: Any) -> str:
    if not isinstance(value, dict) or not value.get("total"):
        return "-"
    gib = 1024**3
    return f"{value['used'] / gib:.1f}/{value['total'] / gib:.1f} GiB"


def headline(host: HostStatus, now: float) -> str:
    """`vm 110 ai  running  up 2h 3m  cpu 3%  mem 0.5/4.0 GiB  (proxmox pve, 0s)`."""
    label = f"vm {host.vmid} {host.name}" if host.vmid is not None else host.name
    parts = [label, f"[{STYLE.get(host.state, '')}]{host.state}[/]"]
    f = host.figures
    power = f.get("power")
    if power is not None:
        if power.error:
            parts.append(f"proxmox: {power.error}")
        else:
            parts.append(str(power.value))
            parts.append(f"up {uptime(f['uptime'].value if 'uptime' in f else None)}")
            cpu = f["cpu"].value if "cpu" in f else None
            parts.append(f"cpu {cpu * 100:.0f}%" if isinstance(cpu, int | float) else "cpu -")
            parts.append(f"mem {memory(f['memory'].value if 'memory' in f else None)}")
            if "proxmox lock" in f:
                parts.append(f"locked: {f['proxmox lock'].value}")
            parts.append(f"({power.source}, {age(now - power.at if power.at else None)})")
    else:
        parts.append(host.address)
    return "  ".join(parts)


def _detail(service: ServiceStatus) -> str:
    if service.tools is not None:
        names = ", ".join(service.tools[:4]) + (", ..." if len(service.tools) > 4 else "")
        who = f"{service.server}: " if service.server else ""
        return f"{who}{len(service.tools)} tools ({names})"
    return service.error or service.summary


def _row(service: ServiceStatus, now: float) -> list[str]:
    state = f"[{STYLE.get(service.state, '')}]{service.state}[/]"
    monitor = ""
    if service.monitor is not None:
        monitor = str(service.monitor.value if not service.monitor.error else service.monitor.error)
    return [
        service.name,
        service.check,
        state,
        _detail(service),
        monitor,
        service.source,
        age(None if service.at is None else now - service.at),
    ]


def _figure_row(name: str, figure: Figure, now: float) -> list[str]:
    state = "[yellow]unknown[/]" if figure.error else str(figure.value)
    return [name, "", state, figure.error or "", "", figure.source, age(_ago(figure, now))]


def _ago(figure: Figure, now: float) -> float | None:
    return None if figure.at is None else now - figure.at


def renderable(overview: Overview) -> RenderableType:
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table

    now = time.time()
    parts: list[RenderableType] = []
    for host in overview.hosts:
        table = Table(
            title=redactor.redact(headline(host, now)),
            title_justify="left",
            box=None,
            header_style="bold",
            pad_edge=False,
        )
        monitored = any(s.monitor is not None for s in host.services)
        for column in ("service", "check", "state", "detail", "monitor", "source", "age"):
            if column != "monitor" or monitored:
                table.add_column(column, overflow="fold")
        rows = [_row(s, now) for s in [*([host.ssh] if host.ssh else []), *host.services]]
        if host.beszel is not None:
            rows.append(_figure_row("beszel hub", host.beszel, now))
        for row in rows:
            if not monitored:
                del row[4]
            table.add_row(*(c if i == 2 else escape(redactor.redact(c)) for i, c in enumerate(row)))
        parts.append(table if rows else table.title or "")
        notes = []
        for run in host.runs:
            notes.append(
                f"last {run.runbook}: {run.status} {age(now - run.started_at)} ago ({run.run_id})"
            )
        if host.lock is not None:
            notes.append(f"locked by run {host.lock.run_id} (pid {host.lock.pid})")
        if notes:
            parts.append("  " + escape(redactor.redact("; ".join(notes))))
        parts.append("")
    unhealthy = [h.name for h in overview.hosts if h.state == UNHEALTHY]
    errors = [f"{k}: {f.error}" for k, f in overview.sources.items() if f.error]
    verdict = (
        "[bold red]unhealthy:[/] " + escape(", ".join(unhealthy + errors))
        if not overview.healthy
        else "[green]healthy[/]"
    )
    when = time.strftime("%H:%M:%S", time.localtime(overview.started))
    parts.append(
        f"{verdict}  ({len(overview.hosts)} hosts at {when} in {overview.elapsed:.2f}s,"
        f" timeout {overview.timeout:g}s{', lab ' + overview.lab if overview.lab else ''})"
    )
    return Group(*parts)


def print_overview(overview: Overview) -> None:
    import sys

    from rich.console import Console

    terminal = sys.stdout.isatty()
    # In a pipe or a log, lines as long as they are (no wrapping at 80 columns).
    console = Console(file=sys.stdout, highlight=False, width=None if terminal else 160)
    console.print(renderable(overview))
