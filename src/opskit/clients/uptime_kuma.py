"""Uptime Kuma's Socket.IO API (1.23.x and 2.x): login, monitors, their status, maintenance windows.

Every event passes the door first (`Door.enter`): while planning only the events that change
nothing pass (a login, `getMonitor`, `getMaintenance`, ...). Uptime Kuma answers each event
through its callback with `{ok, msg, ...}`; on 2.x `msg` is an i18n key, so only `ok` is trusted.
After a login the server pushes the monitor list (2.x: then incremental updates), the
maintenance list and the heartbeats; the client keeps the latest of each.

A fresh 2.x may drop an event sent before its first `info` push: the client waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..errors import UptimeKumaAuthError, UptimeKumaError, UptimeKumaUnreachable
from .connections import Door, Sent

if TYPE_CHECKING:
    import socketio

    from ..model import Target
    from ..model.inventory import Service

log = logging.getLogger("opskit")

# Events that change nothing in Uptime Kuma: all that passes the door while planning.
READS = frozenset(
    {
        "needSetup",
        "login",
        "loginByToken",
        "logout",
        "getMonitor",
        "getMonitorBeats",
        "getMaintenance",
        "getMaintenanceList",
        "getMonitorMaintenance",
    }
)
LOGIN_WAIT = 5.0  # seconds before a login is sent once more
# Heartbeat statuses (Uptime Kuma's src/util.js).
DOWN, UP, PENDING, MAINTENANCE = 0, 1, 2, 3
STATUS_NAMES = {DOWN: "down", UP: "up", PENDING: "pending", MAINTENANCE: "maintenance"}


@dataclass(frozen=True)
class KumaLogin:
    """How to log in; every value already resolved from its secret reference."""

    username: str | None = None
    password: str | None = None
    totp: str | None = None  # the current 2FA code
    token: str | None = None  # a stored JWT (loginByToken)


@dataclass
class Monitor:
    """One monitor as the monitor list shows it, with its latest heartbeat."""

    id: int
    name: str
    type: str
    url: str | None
    hostname: str | None
    port: int | None
    active: bool
    maintenance: bool
    status: int | None = None  # the latest heartbeat's, None before the first
    message: str = ""

    @property
    def status_name(self) -> str:
        return "unknown" if self.status is None else STATUS_NAMES.get(self.status, "unknown")

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Monitor:
        return cls(
            id=int(data["id"]),
            name=str(data.get("name") or ""),
            type=str(data.get("type") or ""),
            url=data.get("url") or None,
            hostname=data.get("hostname") or None,
            port=int(data["port"]) if str(data.get("port") or "").isdigit() else None,
            active=bool(data.get("active", True)),
            maintenance=bool(data.get("maintenance", False)),
        )


@dataclass
class Window:
    """A maintenance window as Uptime Kuma shows it."""

    id: int
    title: str
    strategy: str
    active: bool
    status: str  # under-maintenance, inactive, scheduled, ended, unknown
    description: str = ""

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Window:
        return cls(
            id=int(data["id"]),
            title=str(data.get("title") or ""),
            strategy=str(data.get("strategy") or ""),
            active=bool(data.get("active")),
            status=str(data.get("status") or "unknown"),
            description=str(data.get("description") or ""),
        )


@dataclass
class _Pushed:
    """What the server pushed: the latest lists, and an event per push kind seen."""

    info: dict[str, Any] = field(default_factory=dict)
    monitors: dict[int, dict[str, Any]] = field(default_factory=dict)
    windows: dict[int, dict[str, Any]] = field(default_factory=dict)
    beats: dict[int, dict[str, Any]] = field(default_factory=dict)
    listed: set[int] = field(default_factory=set)  # monitors whose heartbeat list came
    seen: dict[str, asyncio.Event] = field(default_factory=dict)

    def event(self, name: str) -> asyncio.Event:
        return self.seen.setdefault(name, asyncio.Event())


class UptimeKumaClient:
    """One logged-in Socket.IO session; `async with` connects, logs in and disconnects."""

    def __init__(
        self,
        url: str,
        login: KumaLogin,
        door: Door,
        *,
        factory: Callable[[], socketio.AsyncClient] | None = None,
        timeout: float = 15.0,
        verify: Any = True,
        shared: bool = False,
    ) -> None:
        self.url = url.rstrip("/")
        # shared: one session of a plan or run (Connections closes it); `async with` only
        # connects it when it is not (or no longer) connected
        self.shared = shared
        self.where = urlsplit(self.url).netloc
        self._login = login
        self.door = door
        self.timeout = timeout
        self._factory = factory
        self._verify = verify
        self._sio: socketio.AsyncClient | None = None
        self._session: Any = None
        self._connecting = asyncio.Lock()
        self._pushed = _Pushed()
        self.token: str | None = None  # the JWT the login answered (to store, as a secret)

    # ----- the session -------------------------------------------------------------------

    async def __aenter__(self) -> UptimeKumaClient:
        async with self._connecting:  # the targets of a run share it: one of them connects
            if not self.connected:
                await self.aclose()
                self._pushed = _Pushed()
                await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self.shared:
            await self.aclose()

    @property
    def connected(self) -> bool:
        return self._sio is not None and bool(self._sio.connected)

    @property
    def version(self) -> str:
        """The server's version, from its `info` push (e.g. 1.23.17, 2.0.2)."""
        return str(self._pushed.info.get("version") or "")

    @property
    def major(self) -> int:
        """1 for 1.23.x, 2 for 2.x: what a new monitor must carry differs."""
        head = self.version.split(".", 1)[0]
        return int(head) if head.isdigit() else 1

    async def connect(self) -> None:
        try:
            await self._connect()
        except BaseException:
            await self.aclose()  # a refused login leaves no socket open
            raise

    async def _connect(self) -> None:
        import socketio

        sio = self._factory() if self._factory else self._new_client(socketio)
        self._sio = sio
        pushed = self._pushed

        async def on_info(data: dict[str, Any]) -> None:
            pushed.info = dict(data or {})
            pushed.event("info").set()
            if pushed.info.get("version"):  # only after a login: the first hides it
                pushed.event("version").set()

        async def on_monitor_list(data: dict[str, Any]) -> None:
            pushed.monitors = {int(k): dict(v) for k, v in (data or {}).items()}
            pushed.event("monitorList").set()

        async def on_monitor_update(data: dict[str, Any]) -> None:  # 2.x
            for k, v in (data or {}).items():
                pushed.monitors[int(k)] = dict(v)

        async def on_monitor_delete(monitor_id: Any) -> None:  # 2.x
            pushed.monitors.pop(int(monitor_id), None)

        async def on_maintenance_list(data: dict[str, Any]) -> None:
            pushed.windows = {int(k): dict(v) for k, v in (data or {}).items()}
            pushed.event("maintenanceList").set()

        async def on_heartbeat_list(
            monitor_id: Any, beats: list[Any], overwrite: Any = False
        ) -> None:
            if beats:
                pushed.beats[int(monitor_id)] = dict(beats[-1])
            pushed.listed.add(int(monitor_id))
            pushed.event("heartbeatList").set()

        async def on_heartbeat(beat: dict[str, Any]) -> None:
            mid = beat.get("monitorID") if isinstance(beat, dict) else None
            if mid is not None:
                pushed.beats[int(mid)] = dict(beat)

        for name, handler in (
            ("info", on_info),
            ("monitorList", on_monitor_list),
            ("updateMonitorIntoList", on_monitor_update),
            ("deleteMonitorFromList", on_monitor_delete),
            ("maintenanceList", on_maintenance_list),
            ("heartbeatList", on_heartbeat_list),
            ("heartbeat", on_heartbeat),
        ):
            sio.on(name, handler)
        started = time.monotonic()
        try:
            await sio.connect(
                self.url, transports=["websocket"], wait_timeout=max(1, int(self.timeout))
            )
        except (socketio.exceptions.ConnectionError, OSError) as exc:
            raise UptimeKumaUnreachable(
                f"Uptime Kuma at {self.url}: cannot connect ({_reason(exc)})"
            ) from None
        await self._wait("info", self.timeout)
        await self._log_in()
        await self._wait("monitorList", self.timeout)
        await self._wait("version", self.timeout)
        log.info(
            "Uptime Kuma %s %s: logged in in %.0f ms",
            self.url,
            self.version,
            (time.monotonic() - started) * 1000,
        )

    def _new_client(self, socketio: Any) -> socketio.AsyncClient:
        import aiohttp

        ssl: Any = self._verify if self._verify is not True else True
        connector = aiohttp.TCPConnector(ssl=ssl)
        # trust_env off: a proxy variable must not send lab traffic elsewhere
        session = aiohttp.ClientSession(connector=connector, trust_env=False)
        self._session = session
        # handle_sigint off: the run's own handlers decide what Ctrl-C does
        return socketio.AsyncClient(
            reconnection=False,
            http_session=session,
            handle_sigint=False,
            request_timeout=max(1, int(self.timeout)),
        )

    async def aclose(self) -> None:
        sio, self._sio = self._sio, None
        if sio is not None:
            # the server may have gone first: nothing left to close cleanly
            with contextlib.suppress(Exception):
                await sio.disconnect()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _wait(self, push: str, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._pushed.event(push).wait(), seconds)
        except TimeoutError:
            raise UptimeKumaUnreachable(
                f"Uptime Kuma at {self.url}: no {push!r} push within {seconds:g}s"
            ) from None

    async def _log_in(self) -> None:
        login = self._login
        if login.token:
            answer = await self.call("loginByToken", login.token, check=False, shown={})
            if answer.get("ok"):
                self.token = login.token
                return
            if not login.password:
                raise UptimeKumaAuthError(
                    f"Uptime Kuma at {self.url}: the stored token was refused"
                )
        if not (login.username and login.password):
            raise UptimeKumaAuthError(f"Uptime Kuma at {self.url}: no username and password")
        data = {"username": login.username, "password": login.password, "token": login.totp or ""}
        shown = {"username": login.username}
        try:
            # 2.x registers its handlers after its first push: a login sent in between is lost
            answer = await self.call("login", data, check=False, shown=shown, wait=LOGIN_WAIT)
        except UptimeKumaUnreachable:
            answer = await self.call("login", data, check=False, shown=shown)
        if answer.get("tokenRequired"):
            raise UptimeKumaAuthError(
                f"Uptime Kuma at {self.url}: the login needs a 2FA code (uptime_kuma.totp)"
            )
        if not answer.get("ok"):
            raise UptimeKumaAuthError(
                f"Uptime Kuma at {self.url}: login as {login.username} refused"
                f" ({answer.get('msg') or 'no reason'})"
            )
        self.token = answer.get("token")

    # ----- one event ---------------------------------------------------------------------

    async def call(
        self,
        event: str,
        *args: Any,
        check: bool = True,
        shown: Mapping[str, object] | None = None,
        wait: float | None = None,
    ) -> dict[str, Any]:
        """Send `event` with `args` and return its answer; through the door first. `shown` is
        what observers see of the arguments (never a password)."""
        if self._sio is None:
            raise UptimeKumaError(f"Uptime Kuma at {self.url}: not connected")
        reads = event in READS
        params = dict(shown) if shown is not None else {"args": list(args)}
        self.door.enter(
            Sent(
                client="uptime_kuma",
                method=event,
                where=self.where,
                what=event,
                reads=reads,
                read_only=self.door.read_only,
                params=params,
            )
        )
        import socketio

        started = time.monotonic()
        try:
            answer = await self._sio.call(
                event, args if len(args) != 1 else args[0], timeout=wait or self.timeout
            )
        except socketio.exceptions.TimeoutError:
            raise UptimeKumaUnreachable(
                f"Uptime Kuma at {self.url}: no answer to {event} within {wait or self.timeout:g}s"
            ) from None
        except socketio.exceptions.SocketIOError as exc:
            raise UptimeKumaUnreachable(f"Uptime Kuma at {self.url}: {event}: {exc}") from None
        if log.isEnabledFor(logging.INFO):
            ok = answer.get("ok") if isinstance(answer, dict) else None
            log.info(
                "Uptime Kuma %s -> ok=%s in %.0f ms", event, ok, (time.monotonic() - started) * 1000
            )
        if not isinstance(answer, dict):
            raise UptimeKumaError(
                f"Uptime Kuma at {self.url}: {event} answered {type(answer).__name__}"
            )
        if check and not answer.get("ok"):
            raise UptimeKumaError(
                f"Uptime Kuma at {self.url} refused {event}: {answer.get('msg') or 'no reason'}"
            )
        return answer

    # ----- monitors ----------------------------------------------------------------------

    def monitors(self) -> list[Monitor]:
        """Every monitor, as last pushed, each with its latest heartbeat."""
        found = []
        for mid, data in sorted(self._pushed.monitors.items()):
            monitor = Monitor.of(data)
            beat = self._pushed.beats.get(mid)
            if beat is not None:
                monitor.status = int(beat.get("status", PENDING))
                monitor.message = str(beat.get("msg") or "")
            found.append(monitor)
        return found

    async def with_status(self) -> list[Monitor]:
        """Every monitor with its latest heartbeat: waits for the heartbeat lists the server
        pushes after a login (1.23 sends them half a second after the rest)."""
        pushed = self._pushed
        deadline = time.monotonic() + self.timeout
        while not set(pushed.monitors) <= pushed.listed:
            left = deadline - time.monotonic()
            if left <= 0:
                break  # a monitor without a list: its status stays unknown
            pushed.event("heartbeatList").clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pushed.event("heartbeatList").wait(), left)
        return self.monitors()

    async def monitor(self, monitor_id: int) -> Monitor:
        """One monitor as the server says now (`maintenance` turns true at once)."""
        answer = await self.call("getMonitor", monitor_id)
        monitor = Monitor.of(answer["monitor"])
        beat = self._pushed.beats.get(monitor.id)
        if beat is not None:
            monitor.status = int(beat.get("status", PENDING))
            monitor.message = str(beat.get("msg") or "")
        return monitor

    async def add_monitor(self, monitor: Mapping[str, Any]) -> int:
        """Add a monitor; 2.x needs `conditions`, 1.23 refuses it: set for the server's."""
        data = dict(monitor)
        if self.major >= 2:
            data.setdefault("conditions", [])
        else:
            data.pop("conditions", None)
        data.setdefault("accepted_statuscodes", ["200-299"])
        data.setdefault("notificationIDList", {})
        data.setdefault("interval", 60)
        data.setdefault("maxretries", 0)
        answer = await self.call("add", data)
        return int(answer["monitorID"])

    async def delete_monitor(self, monitor_id: int) -> None:
        await self.call("deleteMonitor", monitor_id)

    # ----- maintenance windows -----------------------------------------------------------

    async def add_window(
        self, title: str, description: str = "", *, until: float | None = None
    ) -> int:
        """A window active at once: manual (its monitors are under maintenance until it is
        paused or deleted), or, `until` an epoch time, single (it ends by itself then, even if
        nobody deletes it)."""
        data: dict[str, Any] = {
            "title": title,
            "description": description,
            "strategy": "manual",
            "active": True,
            "intervalDay": 1,
            "dateRange": [],
            "timeRange": [{"hours": 0, "minutes": 0}, {"hours": 0, "minutes": 0}],
            "weekdays": [],
            "daysOfMonth": [],
            "cron": "30 3 * * *",
            "durationMinutes": 60,
            "timezoneOption": "SAME_AS_SERVER",
        }
        if until is not None:
            data["strategy"] = "single"
            data["timezoneOption"] = "UTC"
            data["dateRange"] = [_utc(time.time() - 60), _utc(until)]
        answer = await self.call("addMaintenance", data)
        return int(answer["maintenanceID"])

    async def link_monitors(self, window_id: int, monitor_ids: list[int]) -> None:
        """The window covers exactly these monitors (the server replaces the links)."""
        await self.call("addMonitorMaintenance", window_id, [{"id": m} for m in monitor_ids])

    async def window(self, window_id: int) -> Window | None:
        """The window, or None when there is none with that id."""
        answer = await self.call("getMaintenance", window_id, check=False)
        data = answer.get("maintenance")
        if not answer.get("ok") or not data:
            return None
        return Window.of(data)

    async def window_monitors(self, window_id: int) -> list[int]:
        answer = await self.call("getMonitorMaintenance", window_id)
        return sorted(int(m["id"]) for m in answer.get("monitors") or [])

    async def windows(self) -> list[Window]:
        """Every window (the server pushes the list in answer to getMaintenanceList)."""
        self._pushed.event("maintenanceList").clear()
        await self.call("getMaintenanceList")
        await self._wait("maintenanceList", self.timeout)
        return [Window.of(w) for _, w in sorted(self._pushed.windows.items())]

    async def pause_window(self, window_id: int) -> None:
        await self.call("pauseMaintenance", window_id)

    async def resume_window(self, window_id: int) -> None:
        await self.call("resumeMaintenance", window_id)

    async def delete_window(self, window_id: int) -> None:
        await self.call("deleteMaintenance", window_id)


def _utc(epoch: float) -> str:
    """A time as Uptime Kuma's date ranges take it (in the window's timezone: UTC here)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__


# ----- monitors <-> the inventory's services ----------------------------------------------


def _host_port(url: str | None) -> tuple[str, int | None] | None:
    if not url:
        return None
    try:
        parts = urlsplit(url if "://" in url else f"//{url}")
        return (parts.hostname or "").lower(), parts.port
    except ValueError:
        return None


def watches(
    monitor: Monitor,
    service_name: str,
    service: Service,
    addresses: tuple[str, ...],
) -> bool:
    """Whether `monitor` watches the service: named by the service's `monitor:`, else named
    like the service, or reaching its URL (or its host's address at its port)."""
    if service.monitor is not None:
        return monitor.name == service.monitor
    if monitor.name.lower() == service_name.lower():
        return True
    if service.url and monitor.url and monitor.url.rstrip("/") == service.url.rstrip("/"):
        return True
    # an http monitor has its URL; a port, ping or DNS monitor its hostname (and port)
    target = (
        ((monitor.hostname or "").lower(), monitor.port)
        if monitor.hostname
        else _host_port(monitor.url if monitor.url != "https://" else None)
    )
    if target is None or not target[0]:
        return False
    host, port = target
    names = {a.lower() for a in addresses if a}
    return host in names and (port is None or service.port is None or port == service.port)


def monitors_of(target: Target, monitors: list[Monitor]) -> dict[str, list[Monitor]]:
    """The monitors watching each of the target's services (services no monitor watches map
    to an empty list)."""
    addresses = tuple(a for a in (target.address, target.tailscale, target.name) if a)
    return {
        name: [m for m in monitors if watches(m, name, service, addresses)]
        for name, service in target.services.items()
    }
