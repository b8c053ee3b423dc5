"""Proxmox VE REST client: httpx (async, keep-alive), token or ticket auth, tasks awaited.

Every request goes through `ENDPOINTS`, one table of (method, path template, parameters), so a
test can hold each against the official API schema (../shared/pve/apischema.json).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import (
    ConnectFailed,
    OpskitError,
    ProxmoxAnswerLost,
    ProxmoxError,
    ProxmoxUnreachable,
    TaskFailed,
    TaskOutcomeUnknown,
    TaskTimeout,
)
from .connections import CLIENT, PARAMS, PATH, READS
from .net import connect_reason, tls_reason

if TYPE_CHECKING:
    import httpx

TICKET_RENEW = 110 * 60.0  # PVE tickets live 2 hours: renew 10 minutes before
GET_RETRIES = 3
IN_FLIGHT = 8  # requests at once per cluster: more only queue inside httpx, at a CPU cost
MAX_CONNECTIONS = 16  # kept open per cluster
TASK_POLL_MAX = 2.0

log = logging.getLogger("opskit.proxmox")


def _not_sent() -> tuple[type[Exception], ...]:
    import httpx

    # Errors httpx raises before a request's first byte is written.
    return (
        httpx.ConnectError,
        httpx.ConnectTimeout,
        httpx.PoolTimeout,
        httpx.ProxyError,
        httpx.UnsupportedProtocol,
        httpx.LocalProtocolError,
    )


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # template: {node}, {kind} (qemu|lxc), {vmid}, {upid}, {snapname}, {action}
    params: frozenset[str] = frozenset()
    kinds: tuple[str, ...] = ("qemu", "lxc")  # for {kind}
    actions: tuple[str, ...] = ()  # for {action}


def _e(method: str, path: str, *params: str, **kw: Any) -> Endpoint:
    return Endpoint(method, path, frozenset(params), **kw)


ENDPOINTS: dict[str, Endpoint] = {
    "login": _e("POST", "/access/ticket", "username", "password"),
    "version": _e("GET", "/version"),
    "nodes": _e("GET", "/nodes"),
    "resources": _e("GET", "/cluster/resources", "type"),
    "status": _e("GET", "/nodes/{node}/{kind}/{vmid}/status/current"),
    "start": _e("POST", "/nodes/{node}/{kind}/{vmid}/status/start"),
    "stop": _e("POST", "/nodes/{node}/{kind}/{vmid}/status/stop"),
    "shutdown": _e("POST", "/nodes/{node}/{kind}/{vmid}/status/shutdown", "timeout", "forceStop"),
    "reboot": _e("POST", "/nodes/{node}/{kind}/{vmid}/status/reboot", "timeout"),
    "suspend": _e("POST", "/nodes/{node}/{kind}/{vmid}/status/suspend"),
    "resume": _e("POST", "/nodes/{node}/{kind}/{vmid}/status/resume"),
    "reset": _e("POST", "/nodes/{node}/qemu/{vmid}/status/reset", kinds=("qemu",)),
    "snapshots": _e("GET", "/nodes/{node}/{kind}/{vmid}/snapshot"),
    "snapshot": _e("POST", "/nodes/{node}/{kind}/{vmid}/snapshot", "snapname", "description"),
    "rollback": _e("POST", "/nodes/{node}/{kind}/{vmid}/snapshot/{snapname}/rollback", "start"),
    "delsnapshot": _e("DELETE", "/nodes/{node}/{kind}/{vmid}/snapshot/{snapname}"),
    "clone_qemu": _e(
        "POST",
        "/nodes/{node}/qemu/{vmid}/clone",
        "newid",
        "name",
        "full",
        "target",
        "storage",
        "pool",
        "description",
        kinds=("qemu",),
    ),
    "clone_lxc": _e(
        "POST",
        "/nodes/{node}/lxc/{vmid}/clone",
        "newid",
        "hostname",
        "full",
        "target",
        "storage",
        "pool",
        "description",
        kinds=("lxc",),
    ),
    "agent_ping": _e("POST", "/nodes/{node}/qemu/{vmid}/agent/ping", kinds=("qemu",)),
    "agent_exec": _e(
        "POST", "/nodes/{node}/qemu/{vmid}/agent/exec", "command", "input-data", kinds=("qemu",)
    ),
    "agent_exec_status": _e(
        "GET", "/nodes/{node}/qemu/{vmid}/agent/exec-status", "pid", kinds=("qemu",)
    ),
    "tasks": _e("GET", "/nodes/{node}/tasks", "vmid", "source"),
    "task_status": _e("GET", "/nodes/{node}/tasks/{upid}/status"),
    "task_log": _e("GET", "/nodes/{node}/tasks/{upid}/log", "start", "limit"),
}


@dataclass
class TaskResult:
    upid: str
    exitstatus: str
    warnings: int = 0


@dataclass
class Credentials:
    token_id: str | None = None
    token_secret: str | None = None
    user: str | None = None
    password: str | None = None

    def __post_init__(self) -> None:
        if not (self.token_id and self.token_secret) and not (self.user and self.password):
            raise OpskitError("Proxmox credentials need token_id and token, or user and password")


def _form(params: Mapping[str, Any]) -> dict[str, str | list[str]]:
    """PVE's form encoding: booleans as 0/1, arrays as the key repeated."""
    out: dict[str, str | list[str]] = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, list | tuple):
            out[key] = [str(v) for v in value]
        elif isinstance(value, bool):
            out[key] = str(int(value))
        else:
            out[key] = str(value)
    return out


class ProxmoxSession:
    """What every client of one cluster shares: the API's address and credentials, the
    connection pool (`transport`), the login ticket and the requests in flight."""

    def __init__(
        self,
        api_url: str,
        credentials: Credentials,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.credentials = credentials
        self.timeout = timeout
        self.transport = transport
        self.ticket: tuple[str, str, float] | None = None  # (ticket, csrf, issued)
        self.login_lock = asyncio.Lock()
        self.in_flight = asyncio.Semaphore(IN_FLIGHT)

    def client(self, transport: httpx.AsyncBaseTransport | None = None) -> ProxmoxClient:
        """A client of this cluster through `transport` (Connections gives it the door's)."""
        return ProxmoxClient(self, transport=transport or self.transport)


class ProxmoxClient:
    """One cluster's API through one transport: Connections makes one that reads (planning:
    its door refuses every change) and one that may change, sharing one ProxmoxSession."""

    def __init__(
        self,
        session: ProxmoxSession,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: Any = True,
    ) -> None:
        import httpx

        self.session = session
        self.api_url = session.api_url
        self.credentials = session.credentials
        limits = httpx.Limits(
            max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS
        )
        self._http = httpx.AsyncClient(
            base_url=self.api_url,
            verify=verify,
            timeout=session.timeout,
            transport=transport,
            trust_env=False,  # never through a proxy from the environment
            limits=limits,
            headers={"Accept": "application/json"},
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    # ----- requests --------------------------------------------------------------------

    async def call(self, name: str, params: Mapping[str, Any] | None = None, **path: Any) -> Any:
        """The `data` of endpoint `name`, with path values and parameters."""
        endpoint = ENDPOINTS[name]
        unknown = set(params or {}) - endpoint.params
        if unknown:
            raise OpskitError(f"bug: {name} takes no parameters {sorted(unknown)}")
        return await self.request(endpoint.method, endpoint.path.format(**path), params or {})

    async def request(self, method: str, path: str, params: Mapping[str, Any] | None = None) -> Any:
        import httpx

        params = params or {}
        extensions = {CLIENT: "proxmox", PARAMS: params, PATH: path}
        attempt = 0
        relogged = False
        while True:
            attempt += 1
            headers = await self._auth_headers(method)
            try:
                async with self.session.in_flight:
                    if method in ("GET", "DELETE"):
                        response = await self._http.request(
                            method,
                            path,
                            params=_form(params),
                            headers=headers,
                            extensions=extensions,
                        )
                    else:
                        response = await self._http.request(
                            method,
                            path,
                            data=_form(params),
                            headers=headers,
                            extensions=extensions,
                        )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # Nothing reached the server: safe to try again, whatever the method (but a
                # certificate TLS refuses stays refused).
                if attempt <= GET_RETRIES and tls_reason(exc) is None:
                    await _backoff(attempt)
                    continue
                raise ProxmoxUnreachable(method, path, self._unreachable(exc)) from None
            except httpx.TransportError as exc:
                if method == "GET" and attempt <= GET_RETRIES:
                    await _backoff(attempt)
                    continue
                if method != "GET" and not isinstance(exc, _not_sent()):
                    # Written (or partly): Proxmox may have acted on it. Not retried.
                    raise ProxmoxAnswerLost(method, path, exc) from None
                raise ProxmoxError(method, path, 0, f"{type(exc).__name__}: {exc}") from None
            if response.status_code == 401 and self.credentials.user and not relogged:
                # The ticket expired or was revoked: log in again, once.
                relogged = True
                await self._login(force=True)
                continue
            transient = response.status_code in (502, 503, 504, 596)  # 596: pveproxy lost a node
            if transient and method == "GET" and attempt <= GET_RETRIES:
                await _backoff(attempt)
                continue
            if response.status_code >= 400:
                raise _error(method, path, response)
            try:
                body = response.json()
            except ValueError:
                raise ProxmoxError(
                    method, path, response.status_code, "answer is not JSON"
                ) from None
            return body.get("data") if isinstance(body, dict) else body

    def _unreachable(self, exc: Exception) -> str:
        """'cannot connect to Proxmox at HOST:PORT: connection refused', or what TLS said."""
        from urllib.parse import urlsplit

        url = urlsplit(self.api_url)
        where = f"Proxmox at {url.hostname}:{url.port or 8006}"
        tls = tls_reason(exc)
        if tls is not None:
            return f"{where}: {tls}"
        return str(ConnectFailed(where, connect_reason(exc) or f"{type(exc).__name__}: {exc}"))

    async def get(self, path: str, **params: Any) -> Any:
        return await self.request("GET", path, params)

    async def _auth_headers(self, method: str) -> dict[str, str]:
        c = self.credentials
        if c.token_id and c.token_secret:
            return {"Authorization": f"PVEAPIToken={c.token_id}={c.token_secret}"}
        await self._login()
        assert self.session.ticket is not None
        ticket, csrf, _ = self.session.ticket
        headers = {"Cookie": f"PVEAuthCookie={ticket}"}
        if method != "GET":
            headers["CSRFPreventionToken"] = csrf
        return headers

    async def _login(self, force: bool = False) -> None:
        import httpx

        session = self.session
        async with session.login_lock:
            if not force and session.ticket and time.monotonic() - session.ticket[2] < TICKET_RENEW:
                return
            c = self.credentials
            path = ENDPOINTS["login"].path
            # A login changes nothing: the door lets it through while planning.
            shown = {"username": c.user, "password": "(hidden)"}
            try:
                response = await self._http.post(
                    path,
                    data={"username": c.user or "", "password": c.password or ""},
                    extensions={READS: True, CLIENT: "proxmox", PARAMS: shown, PATH: path},
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                raise ProxmoxUnreachable("POST", path, self._unreachable(exc)) from None
            except httpx.TransportError as exc:
                raise ProxmoxError("POST", path, 0, f"{type(exc).__name__}: {exc}") from None
            if response.status_code >= 400:
                raise _error("POST", path, response)
            data = response.json()["data"]
            session.ticket = (data["ticket"], data["CSRFPreventionToken"], time.monotonic())

    # ----- tasks -------------------------------------------------------------------------

    async def wait_task(self, node: str, upid: str, timeout: float) -> TaskResult:
        """Poll the task until it stops; OK or WARNINGS succeed, anything else raises TaskFailed
        with the end of its log; past `timeout` TaskTimeout names the UPID."""
        started = time.monotonic()
        deadline = started + timeout
        delay = 0.05
        log.info("Proxmox task %s on %s: started", upid, node)
        while True:
            try:
                status = await self.call("task_status", node=node, upid=upid)
            except ProxmoxError as exc:
                log.info("Proxmox task %s: its end could not be read (%s)", upid, exc)
                raise TaskOutcomeUnknown(upid, exc) from None
            if status.get("status") == "stopped":
                exit_status = str(status.get("exitstatus", ""))
                log.info(
                    "Proxmox task %s on %s: %s in %.1f s",
                    upid,
                    node,
                    exit_status or "?",
                    time.monotonic() - started,
                )
                if exit_status == "OK":
                    return TaskResult(upid, exit_status)
                if exit_status.startswith("WARNINGS"):
                    count = exit_status.partition(":")[2].strip()
                    return TaskResult(upid, exit_status, int(count) if count.isdigit() else 1)
                raise TaskFailed(upid, exit_status, await self.task_log(node, upid))
            if time.monotonic() >= deadline:
                log.info("Proxmox task %s on %s: still running after %g s", upid, node, timeout)
                raise TaskTimeout(upid, timeout)
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, TASK_POLL_MAX)

    async def task_log(self, node: str, upid: str, limit: int = 500) -> list[str]:
        try:
            lines = await self.call("task_log", {"start": 0, "limit": limit}, node=node, upid=upid)
        except OpskitError:
            return []
        return [str(line.get("t", "")) for line in lines or []]


async def _backoff(attempt: int) -> None:
    await asyncio.sleep(min(0.25 * 2 ** (attempt - 1), 4.0) * random.uniform(0.8, 1.2))


def _error(method: str, path: str, response: httpx.Response) -> ProxmoxError:
    message = response.reason_phrase or ""
    errors: Mapping[str, str] | None = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        message = str(body.get("message") or message)
        if isinstance(body.get("errors"), dict):
            errors = body["errors"]
    return ProxmoxError(method, path, response.status_code, message or "error", errors)
