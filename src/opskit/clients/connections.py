"""The one door to the world: every client of a plan or run, made from one typed set of
transports, and the read-only check every request and command passes.

Actions reach hosts and services only through `Connections` (`ctx.connections`, behind the
context's `proxmox()`, `shell()`, `hub()` and `http()`): Proxmox, the Beszel hub, plain HTTP for
checks, SSH shells and file transfer, and the clients to come. Each is built from `Transports`
(an httpx transport, the SSH connection settings, an observer), so a test swaps the network for
fakes in one place. Every HTTP request goes through `DoorTransport` and every SSH command and file
through `HostShell`, and both ask one `Door` first: while planning, it refuses whatever is not
a read (`ReadOnlyRefused`), tells the observer what was sent or refused, and logs it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..errors import OpskitError, ReadOnlyRefused, SecretError

if TYPE_CHECKING:
    import httpx
    import socketio

    from ..model import Inventory, Target
    from .hub import HubClient
    from .proxmox import ProxmoxClient, ProxmoxSession
    from .ssh import Endpoint, SSHPool
    from .uptime_kuma import UptimeKumaClient

# httpx request extensions the clients set, read by DoorTransport (httpcore ignores them).
READS = "opskit.reads"  # True: this POST changes nothing (a login)
PARAMS = "opskit.params"  # the request's parameters as the client gave them (for observers)
CLIENT = "opskit.client"  # which client sent it: proxmox, hub, http
PATH = "opskit.path"  # the path as the client names it (Proxmox: below /api2/json)

log = logging.getLogger("opskit")


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Sent:
    """One request or command at the door, as an observer sees it (before it is sent)."""

    client: str  # proxmox, hub, http, ssh
    method: str  # the HTTP method; over SSH `run` or `put`
    where: str  # the URL's host (HTTP) or the inventory's name of the host (SSH)
    what: str  # the URL's path, the command (pyinfra's masked form), the remote path
    reads: bool  # changes nothing: a GET, a login, a command an action marks as a probe
    read_only: bool  # the door of a plan's probes
    refused: bool = False
    params: Mapping[str, object] = field(default_factory=dict)


@dataclass
class SSHSettings:
    """How SSH connections are made: the factory of the run's SSHPool (clients.ssh)."""

    trust_on_first_use: bool = False
    client_keys: list[str] | None = None  # None: the config's, the agent's, ~/.ssh's
    config: list[str] | None = None  # ssh_config files; None: ~/.ssh/config
    known_hosts: list[Path] | None = None  # None: ~/.ssh/known_hosts (and opskit's own)
    connect_limit: int = 50  # connections being opened at once
    # Environment of every host.* (pyinfra) command: tests put a stand-in systemctl on PATH.
    host_env: tuple[tuple[str, str], ...] = ()

    def pool(self, passwords: Callable[[Endpoint], str | None]) -> SSHPool:
        from ..store import state_dir
        from .host_keys import HostKeys
        from .ssh import SSHPool

        host_keys = HostKeys(
            state_dir() / "known_hosts", user_files=self.known_hosts, tofu=self.trust_on_first_use
        )
        return SSHPool(
            host_keys,
            connect_limit=self.connect_limit,
            client_keys=self.client_keys,
            passwords=passwords,
            config=self.config,
        )


@dataclass
class Transports:
    """Everything a plan or run reaches the world with; the defaults are the real network."""

    http: httpx.AsyncBaseTransport | None = None  # every HTTP client's (None: the network)
    ssh: SSHSettings = field(default_factory=SSHSettings)
    observe: Callable[[Sent], None] | None = None  # sees every request and command (tests)
    # makes each Socket.IO client (Uptime Kuma); None: python-socketio's, on the network
    socketio: Callable[[], socketio.AsyncClient] | None = None


class Door:
    """The read-only check, one per kind of context: while planning only reads pass."""

    def __init__(self, read_only: bool, observe: Callable[[Sent], None] | None = None) -> None:
        self.read_only = read_only
        self.observe = observe

    def enter(self, sent: Sent) -> None:
        """Let `sent` through, or refuse it (ReadOnlyRefused) when planning and not a read."""
        if log.isEnabledFor(logging.DEBUG):
            verdict = "refused" if self.read_only and not sent.reads else "passes"
            kind = "a read" if sent.reads else "a change"
            what = (
                _shown(sent) if sent.client == "ssh" else f"{sent.method} {sent.where}{sent.what}"
            )
            log.debug("door: %s %s (%s)", verdict, what, kind)
        if self.read_only and not sent.reads:
            if self.observe is not None:
                self.observe(replace(sent, refused=True))
            raise ReadOnlyRefused(f"planning is read-only: refused {_shown(sent)}")
        if self.observe is not None:
            self.observe(sent)


def _shown(sent: Sent) -> str:
    if sent.client == "uptime_kuma":
        return f"Uptime Kuma's {sent.method} at {sent.where}"
    if sent.client != "ssh":
        return f"{sent.method} {sent.what}"
    if sent.method == "put":
        return f"to write {sent.what} on {sent.where}"
    return f"to run {short(sent.what)} on {sent.where}"


def short(command: str, limit: int = 120) -> str:
    """A command on one line, cut to `limit`, in backticks: how messages show commands."""
    one = " ".join(command.split())
    return f"`{one}`" if len(one) <= limit else f"`{one[: limit - 3]}...`"


_door_class: type[httpx.AsyncBaseTransport] | None = None


def door_transport(
    door: Door, inner: httpx.AsyncBaseTransport, *, owns: bool
) -> httpx.AsyncBaseTransport:
    """An httpx transport that asks `door` before each request and logs each answer; it closes
    `inner` with itself when it `owns` it (not a pool a cluster's clients share)."""
    global _door_class
    if _door_class is None:
        _door_class = _make_door_class()
    return _door_class(door, inner, owns)  # type: ignore[call-arg]


def _make_door_class() -> type[httpx.AsyncBaseTransport]:
    import httpx  # here: `import opskit.cli` must not load httpx

    class DoorTransport(httpx.AsyncBaseTransport):
        def __init__(self, door: Door, inner: httpx.AsyncBaseTransport, owns: bool) -> None:
            self.door, self.inner, self.owns = door, inner, owns

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            door, inner = self.door, self.inner
            method = request.method
            reads = method in ("GET", "HEAD", "OPTIONS") or bool(request.extensions.get(READS))
            params = request.extensions.get(PARAMS)
            if params is None and door.observe is not None:
                params = dict(request.url.params)
            door.enter(
                Sent(
                    client=str(request.extensions.get(CLIENT, "http")),
                    method=method,
                    where=request.url.netloc.decode("ascii", "replace"),
                    what=str(request.extensions.get(PATH, request.url.path)),
                    reads=reads,
                    read_only=door.read_only,
                    params=params or {},
                )
            )
            started = time.monotonic()
            try:
                response = await inner.handle_async_request(request)
            except Exception as exc:
                if log.isEnabledFor(logging.INFO):
                    log.info(
                        "HTTP %s %s -> %s after %.0f ms",
                        method,
                        _url(request),
                        type(exc).__name__,
                        (time.monotonic() - started) * 1000,
                    )
                raise
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "HTTP %s %s -> %d in %.0f ms",
                    method,
                    _url(request),
                    response.status_code,
                    (time.monotonic() - started) * 1000,
                )
            return response

        async def aclose(self) -> None:
            if self.owns:
                await self.inner.aclose()

    return DoorTransport


def _url(request: httpx.Request) -> str:
    """The request line's URL without its query (a query may carry a token or a filter)."""
    url = request.url
    query = "?..." if url.query else ""
    return f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}{url.path}{query}"


class Connections:
    """The clients of one plan or run, made on first use from the inventory and `Transports`,
    closed together: one Proxmox session per cluster, one SSH pool, HTTP through the door."""

    def __init__(
        self,
        inventory: Inventory | None,
        *,
        say: Callable[[str], None] = _stderr,
        transports: Transports | None = None,
    ) -> None:
        from ..place import check_inventory

        check_inventory(inventory)  # the one door: nothing made for a lab leaves it
        self.inventory = inventory
        self.say = say
        self.transports = transports or Transports()
        self._doors = {
            True: Door(True, self.transports.observe),
            False: Door(False, self.transports.observe),
        }
        self._proxmox: dict[tuple[str, bool], ProxmoxClient] = {}
        self._sessions: dict[str, ProxmoxSession] = {}
        self._inner: list[httpx.AsyncBaseTransport] = []
        self._resources: dict[str, list[dict[str, Any]]] = {}
        self._ssh: SSHPool | None = None
        self._kuma: dict[bool, UptimeKumaClient] = {}
        # Many probes ask for the same client at once: one of them makes it, all share it.
        self._lock = asyncio.Lock()

    def door(self, read_only: bool) -> Door:
        return self._doors[read_only]

    # ----- HTTP --------------------------------------------------------------------------

    def transport(
        self,
        read_only: bool,
        *,
        verify: Any = True,
        limits: httpx.Limits | None = None,
        shared: httpx.AsyncBaseTransport | None = None,
    ) -> httpx.AsyncBaseTransport:
        """The transport for an httpx client: through the door, to `shared` (a pool the
        connections close), else the test's transport or a new connection pool, which the
        client closes with itself."""
        import httpx

        if shared is not None:
            return door_transport(self.door(read_only), shared, owns=False)
        inner = self.transports.http or httpx.AsyncHTTPTransport(
            verify=verify, limits=limits or httpx.Limits(), trust_env=False
        )
        return door_transport(self.door(read_only), inner, owns=True)

    def hub(
        self,
        read_only: bool,
        url: str,
        email: str,
        password: str,
        *,
        auth: str = "auto",
        verify: Any = True,
        timeout: float = 15.0,
    ) -> HubClient:
        from .hub import AUTH_COLLECTIONS, HubClient

        if auth not in AUTH_COLLECTIONS:
            raise OpskitError(f"unknown hub login {auth!r}")
        return HubClient(
            url,
            email,
            password,
            auth=auth,  # type: ignore[arg-type]
            timeout=timeout,
            transport=self.transport(read_only, verify=verify),
        )

    # ----- Uptime Kuma -------------------------------------------------------------------

    async def uptime_kuma(self, read_only: bool) -> UptimeKumaClient:
        """The inventory's Uptime Kuma: one session per door for the whole plan or run
        (`async with` it: it connects and logs in once, again if it was cut, as a host reboot
        may cut it), closed with these connections. Its every event passes the door, so while
        planning only reads are sent. One login per session: Uptime Kuma limits logins."""
        async with self._lock:
            client = self._kuma.get(read_only)
            if client is None:
                client = self._kuma[read_only] = await self._uptime_kuma(read_only)
        return client

    async def _uptime_kuma(self, read_only: bool) -> UptimeKumaClient:
        from ..secrets import resolve
        from .tls import ssl_context
        from .uptime_kuma import KumaLogin, UptimeKumaClient

        spec = self.inventory.uptime_kuma if self.inventory is not None else None
        if spec is None:
            raise OpskitError("the inventory names no Uptime Kuma (uptime_kuma: {url: ...})")
        try:
            login = KumaLogin(
                username=spec.username,
                password=resolve("uptime_kuma.password", spec.password) if spec.password else None,
                totp=resolve("uptime_kuma.totp", spec.totp) if spec.totp else None,
                token=resolve("uptime_kuma.token", spec.token) if spec.token else None,
            )
        except SecretError as exc:
            raise SecretError(
                f"{exc} (the login of the inventory's uptime_kuma:, which this runbook's"
                " Uptime Kuma steps use; patch-guests runs without its window with"
                " -p kuma_window=false)"
            ) from None
        url = urlsplit(spec.url)
        verify: Any = True
        if url.scheme == "https":
            if spec.tls.insecure:
                self.say("warning: TLS verification is off for Uptime Kuma (insecure: true)")
                verify = False
            else:
                verify = await ssl_context(
                    spec.tls, url.hostname or "", url.port or 443, service="Uptime Kuma"
                )
        return UptimeKumaClient(
            spec.url,
            login,
            self.door(read_only),
            factory=self.transports.socketio,
            timeout=spec.timeout,
            verify=verify,
            shared=True,
        )

    # ----- Proxmox -----------------------------------------------------------------------

    def cluster_name(self, cluster: str | None) -> str:
        if self.inventory is None or not self.inventory.proxmox:
            raise OpskitError("the inventory defines no Proxmox cluster (proxmox: ...)")
        if cluster is None:
            if len(self.inventory.proxmox) != 1:
                raise OpskitError("several Proxmox clusters: the guest must name its cluster")
            return next(iter(self.inventory.proxmox))
        if cluster not in self.inventory.proxmox:
            raise OpskitError(f"unknown Proxmox cluster {cluster!r}")
        return cluster

    async def proxmox(self, cluster: str | None = None, *, read_only: bool = True) -> ProxmoxClient:
        """The cluster's client; read-only (the default) refuses every change."""
        name = self.cluster_name(cluster)
        client = self._proxmox.get((name, read_only))
        if client is not None:
            return client
        async with self._lock:
            if name not in self._sessions:
                self._sessions[name] = await self._proxmox_session(name)
            if (name, read_only) not in self._proxmox:
                self._proxmox[(name, read_only)] = self._sessions[name].client(
                    self.transport(read_only, shared=self._sessions[name].transport)
                )
        return self._proxmox[(name, read_only)]

    async def _proxmox_session(self, name: str) -> ProxmoxSession:
        import httpx

        from ..secrets import resolve
        from .proxmox import MAX_CONNECTIONS, Credentials, ProxmoxSession
        from .tls import ssl_context

        assert self.inventory is not None
        spec = self.inventory.proxmox[name]
        url = urlsplit(spec.api_url)
        if spec.tls.insecure:
            self.say(
                f"warning: TLS verification is off for Proxmox cluster {name}"
                " (insecure: true): anyone on the path can read its token"
            )
        # Secrets first: a missing one is the user's to fix (exit 2) before anything connects.
        credentials = Credentials(
            token_id=spec.token_id,
            token_secret=resolve(f"proxmox.{name}.token", spec.token) if spec.token else None,
            user=spec.user,
            password=resolve(f"proxmox.{name}.password", spec.password) if spec.password else None,
        )
        verify: Any = True
        if url.scheme == "https":
            verify = await ssl_context(
                spec.tls, url.hostname or "", url.port or 8006, service="Proxmox"
            )
        shared = self.transports.http
        if shared is None:
            limits = httpx.Limits(
                max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS
            )
            shared = httpx.AsyncHTTPTransport(verify=verify, limits=limits, trust_env=False)
        self._inner.append(shared)  # the cluster's pool: closed with these connections
        return ProxmoxSession(spec.api_url, credentials, timeout=spec.timeout, transport=shared)

    async def resources(self, client: ProxmoxClient, cluster: str) -> list[dict[str, Any]]:
        """The cluster's guests (/cluster/resources?type=vm), asked once per plan or run."""
        if cluster not in self._resources:
            async with self._lock:
                if cluster not in self._resources:
                    self._resources[cluster] = await client.call("resources", {"type": "vm"}) or []
        return self._resources[cluster]

    def forget_resources(self) -> None:
        self._resources.clear()

    # ----- SSH ---------------------------------------------------------------------------

    def ssh(self) -> SSHPool:
        """The run's SSH pool: opskit's known_hosts in the state dir, the SSH settings."""
        if self._ssh is None:
            self._ssh = self.transports.ssh.pool(self._ssh_password)
        return self._ssh

    def changed(self, target: Target) -> None:
        """A step changed `target` (through any client: Proxmox's power or rollback, a
        command): what its host answered before (pyinfra's facts) no longer counts."""
        if self._ssh is not None:
            from .ssh import Endpoint

            self._ssh.changed(Endpoint.of(target))

    def changed_everywhere(self) -> None:
        """Any host may have changed (a gate waited on a person, another run held the
        targets' locks): nothing any host answered before counts."""
        if self._ssh is not None:
            self._ssh.changed_everywhere()

    def _ssh_password(self, endpoint: Endpoint) -> str | None:
        if endpoint.password_ref is None:
            return None
        from ..secrets import resolve

        return resolve(f"ssh.{endpoint.name}.password", endpoint.password_ref)

    async def aclose(self) -> None:
        for kuma in self._kuma.values():
            await kuma.aclose()
        self._kuma.clear()
        for client in self._proxmox.values():
            await client.aclose()
        self._proxmox.clear()
        self._sessions.clear()
        for inner in self._inner:
            await inner.aclose()
        self._inner.clear()
        if self._ssh is not None:
            await self._ssh.aclose()
            self._ssh = None
