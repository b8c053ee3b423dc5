"""The probes of `opskit status`, all at once, each within the timeout, none changing anything."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..model.common import format_duration
from .journal import last_runs, locks_held
from .model import OK, UNHEALTHY, UNKNOWN, Figure, HostStatus, Overview, ServiceStatus

if TYPE_CHECKING:
    from ..actions.base import ActionContext
    from ..clients.connections import Connections, Transports
    from ..model import Inventory, Target

HUB_EMAIL = "optional:env:BESZEL_HUB_EMAIL"  # the hub's login, as install-beszel-agents has it
HUB_PASSWORD = "optional:env:BESZEL_HUB_PASSWORD"


class MonitorSource(Protocol):
    """Where monitor states come from (Uptime Kuma's monitors): a figure per (host, service)
    it watches. A factory in MONITOR_SOURCES makes one from the inventory, or None when the
    inventory names no such monitor."""

    name: str

    async def monitors(
        self, connections: Connections, inventory: Inventory, timeout: float
    ) -> dict[tuple[str, str], Figure] | None:
        """The figures, or None when the source is not configured here (its login unset)."""
        ...


MONITOR_SOURCES: list[Callable[[Inventory], MonitorSource | None]] = []


async def collect(
    inventory: Inventory,
    names: list[str],
    *,
    timeout: float = 3.0,
    transports: Transports | None = None,
) -> Overview:
    """The status of the hosts named (inventory order), every probe started at once."""
    from ..clients.connections import Connections

    started = time.monotonic()
    overview = Overview(
        hosts=[], timeout=timeout, lab=inventory.lab.name if inventory.lab else None
    )
    by_name = inventory.by_name()
    targets = {n: inventory.target(by_name[n]) for n in names if n in by_name}
    for name, target in targets.items():
        overview.hosts.append(
            HostStatus(name=name, kind=target.kind, address=target.address, vmid=target.vmid)
        )
    hosts = {h.name: h for h in overview.hosts}
    connections = Connections(inventory, say=lambda _line: None, transports=transports)
    jobs: list[Awaitable[None]] = []
    try:
        for cluster in inventory.proxmox:
            jobs.append(_proxmox(connections, cluster, targets, hosts, overview, timeout))
        for name, target in targets.items():
            if "controller" not in target.tags:
                ssh = hosts[name].ssh = ServiceStatus(name="ssh", check="tcp")
                jobs.append(_ssh(connections, target, ssh, timeout))
            for health in _health(target):
                service = ServiceStatus(name=health["service"], check=health["check"])
                hosts[name].services.append(service)
                jobs.append(_service(connections, target, health, service, timeout))
            for service_name, spec in target.services.items():
                if spec.health is None:
                    hosts[name].services.append(
                        ServiceStatus(
                            name=service_name, check="none", summary="no health check", state=OK
                        )
                    )
        jobs.append(_beszel(connections, inventory, targets, hosts, overview, timeout))
        for factory in MONITOR_SOURCES:
            source = factory(inventory)
            if source is not None:
                jobs.append(_monitors(source, connections, inventory, hosts, overview, timeout))
        jobs.append(_journal(names, hosts, overview))
        await asyncio.gather(*jobs)
    finally:
        await connections.aclose()
    for host in overview.hosts:
        host.judge()
    overview.elapsed = time.monotonic() - started
    return overview


async def _within(timeout: float, job: Awaitable[Any], what: str) -> Any:
    """`job`'s result, or TimeoutError worded for the figure (a source that never answered)."""
    try:
        return await asyncio.wait_for(job, timeout)
    except TimeoutError:
        raise TimeoutError(f"{what}: no answer within {format_duration(timeout)}") from None


def _said(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


# ----- Proxmox ----------------------------------------------------------------------------


async def _proxmox(
    connections: Connections,
    cluster: str,
    targets: dict[str, Target],
    hosts: dict[str, HostStatus],
    overview: Overview,
    timeout: float,
) -> None:
    guests = {t.vmid: n for n, t in targets.items() if t.vmid is not None and t.cluster == cluster}
    nodes = {n for n in targets if n in (connections.inventory.proxmox[cluster].nodes or [])}  # type: ignore[union-attr]
    if not guests and not nodes:
        return
    source = f"proxmox {cluster}"

    async def ask() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        client = await connections.proxmox(cluster, read_only=True)
        resources, listed = await asyncio.gather(
            client.call("resources", {"type": "vm"}), client.call("nodes")
        )
        return list(resources or []), list(listed or [])

    try:
        resources, listed = await _within(timeout, ask(), source)
    except Exception as exc:
        error = _said(exc)
        overview.sources[source] = Figure(None, source, time.time(), error=error)
        for name in [*guests.values(), *nodes]:
            hosts[name].figures["power"] = Figure(None, source, time.time(), error=error)
        return
    at = time.time()
    overview.sources[source] = Figure("answered", source, at)
    found = {int(r["vmid"]): r for r in resources if "vmid" in r}
    for vmid, name in guests.items():
        record = found.get(vmid)
        where = f"{source} /cluster/resources"
        if record is None:
            hosts[name].figures["power"] = Figure(
                None, where, at, error=f"no guest {vmid} in the cluster"
            )
            continue
        _figures(hosts[name], record, where, at)
        if record.get("lock"):
            hosts[name].figures["proxmox lock"] = Figure(record["lock"], where, at)
    for row in listed:
        name = str(row.get("node"))
        if name in nodes:
            _figures(hosts[name], row, f"{source} /nodes", at, node=True)


def _figures(
    host: HostStatus, row: dict[str, Any], where: str, at: float, *, node: bool = False
) -> None:
    status = row.get("status")
    if node:
        # A node is "online" where a guest is "running": the same thing for a host's state.
        host.figures["power"] = Figure("running" if status == "online" else status, where, at)
    else:
        host.figures["power"] = Figure(status, where, at)
    host.figures["uptime"] = Figure(row.get("uptime"), where, at)
    cpu = row.get("cpu")
    host.figures["cpu"] = Figure(None if cpu is None else round(float(cpu), 4), where, at)
    if row.get("maxmem"):
        host.figures["memory"] = Figure(
            {"used": row.get("mem") or 0, "total": row.get("maxmem")}, where, at
        )


# ----- services and SSH -------------------------------------------------------------------


def _health(target: Target) -> list[dict[str, Any]]:
    from ..workspace import target_context

    health: list[dict[str, Any]] = target_context(target)["health"]
    return health


def _context(connections: Connections, target: Target) -> ActionContext:
    from ..actions.base import ActionContext

    return ActionContext(target=target, read_only=True, connections=connections)


async def _run_check(
    connections: Connections,
    target: Target,
    kind: str,
    args: dict[str, Any],
    service: ServiceStatus,
    timeout: float,
) -> None:
    from .. import actions

    cls = actions.get(kind)
    service.source = kind
    started = time.monotonic()
    try:
        action = cls(cls.Args.model_validate({k: v for k, v in args.items() if v is not None}))
        # The check keeps its own time (the figure then says what it waited for); this is the
        # backstop, a little later.
        outcome = await _within(timeout + 0.75, action.apply(_context(connections, target)), kind)
    except Exception as exc:
        service.state, service.error = UNHEALTHY, _said(exc)
        service.summary = service.error
    else:
        service.state = OK if outcome.ok else UNHEALTHY
        service.summary, service.error = outcome.summary, outcome.error
        if kind == "check.mcp":
            service.tools = list(outcome.outputs.get("tools") or []) if outcome.ok else None
            who = [outcome.outputs.get("server_name"), outcome.outputs.get("server_version")]
            service.server = " ".join(str(w) for w in who if w) or None
    service.at = time.time()
    service.elapsed = round(time.monotonic() - started, 4)


async def _service(
    connections: Connections,
    target: Target,
    health: dict[str, Any],
    service: ServiceStatus,
    timeout: float,
) -> None:
    check = health["check"]
    if check == "tcp":
        args = {"host": health["host"], "port": health["port"], "banner": health["banner"]}
    elif check == "mcp":
        args = {
            "url": health["url"],
            "via": health["via"],
            "bearer_ref": health["bearer"],
            "min_tools": health["min_tools"],
            "tools": health["tools"],
            "tls": health["tls"],
        }
    else:
        args = {
            "url": health["url"],
            "method": health["method"],
            "expect": health["expect"],
            "json": health["json"],
            "contains": health["contains"],
            "tls": health["tls"],
        }
    if not args.get("url") and check != "tcp":
        service.state, service.error = UNKNOWN, "no URL (the service has no port)"
        return
    args["timeout"] = timeout
    await _run_check(connections, target, f"check.{check}", args, service, timeout)


async def _ssh(
    connections: Connections, target: Target, service: ServiceStatus, timeout: float
) -> None:
    """The host's sshd greets: reachable, without the cost of a login."""
    args = {"host": target.address, "port": target.ssh_port or 22, "banner": "^SSH-2\\.0-"}
    args["timeout"] = timeout
    await _run_check(connections, target, "check.tcp", args, service, timeout)
    if service.error and "banner '' does not match" in service.error:
        # The port took the connection and the server said nothing: a hung sshd, not a
        # wrong one.
        service.error = service.summary = (
            f"ssh {target.address}:{args['port']}: connected, no greeting within"
            f" {format_duration(timeout)}"
        )


# ----- Beszel -----------------------------------------------------------------------------


def _hub_url(inventory: Inventory) -> str | None:
    for host in inventory.all_hosts():
        service = host.services.get("beszel-hub")
        if service is not None and service.port:
            target = inventory.target(host)
            return f"http://{target.address}:{service.port}"
    return None


async def _beszel(
    connections: Connections,
    inventory: Inventory,
    targets: dict[str, Target],
    hosts: dict[str, HostStatus],
    overview: Overview,
    timeout: float,
) -> None:
    from ..secrets import resolve_optional

    watched = [n for n, t in targets.items() if "beszel-agent" in t.services]
    url = _hub_url(inventory)
    if not watched or url is None:
        return
    source = f"beszel hub {url}"
    try:
        email = resolve_optional("beszel.hub_email", HUB_EMAIL)
        password = resolve_optional("beszel.hub_password", HUB_PASSWORD)
    except Exception as exc:
        overview.sources["beszel"] = Figure(None, source, time.time(), error=_said(exc))
        return
    if not email or not password:
        overview.sources["beszel"] = Figure("not configured", source, None)
        return

    async def ask() -> list[dict[str, Any]]:
        async with connections.hub(True, url, email, password, timeout=timeout) as hub:
            await hub.login()
            return await hub.records("systems")

    try:
        systems = await _within(timeout, ask(), source)
    except Exception as exc:
        error = _said(exc)
        overview.sources["beszel"] = Figure(None, source, time.time(), error=error)
        for name in watched:
            hosts[name].beszel = Figure(None, source, time.time(), error=error)
        return
    at = time.time()
    overview.sources["beszel"] = Figure("answered", source, at)
    named = {str(s.get("name")): s for s in systems}
    for name in watched:
        record = named.get(name)
        if record is None:
            hosts[name].beszel = Figure("not registered", source, at)
        else:
            hosts[name].beszel = Figure(str(record.get("status") or "registered"), source, at)


# ----- monitors (Uptime Kuma) --------------------------------------------------------------


async def _monitors(
    source: MonitorSource,
    connections: Connections,
    inventory: Inventory,
    hosts: dict[str, HostStatus],
    overview: Overview,
    timeout: float,
) -> None:
    try:
        found = await _within(
            timeout, source.monitors(connections, inventory, timeout), source.name
        )
    except Exception as exc:
        overview.sources[source.name] = Figure(None, source.name, time.time(), error=_said(exc))
        return
    if found is None:
        overview.sources[source.name] = Figure("not configured", source.name, None)
        return
    overview.sources[source.name] = Figure("answered", source.name, time.time())
    for (host_name, service_name), figure in found.items():
        host = hosts.get(host_name)
        for service in host.services if host else []:
            if service.name == service_name:
                service.monitor = figure  # judged with the rest (HostStatus.judge)


# ----- the journal and locks --------------------------------------------------------------


async def _journal(names: list[str], hosts: dict[str, HostStatus], overview: Overview) -> None:
    from ..store import state_dir

    where = state_dir()
    try:
        runs, locks = await asyncio.to_thread(lambda: (last_runs(where, names), locks_held(where)))
    except Exception as exc:
        overview.sources["journal"] = Figure(
            None, f"journal {where}", time.time(), error=_said(exc)
        )
        return
    overview.sources["journal"] = Figure("read", f"journal {where}", time.time())
    for name, seen in runs.items():
        if name in hosts:
            hosts[name].runs = seen
    for name, lock in locks.items():
        if name in hosts:
            hosts[name].lock = lock
