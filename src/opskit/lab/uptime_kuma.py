"""The lab's Uptime Kuma: a python-socketio server speaking its API, as 1.23.x or 2.x speaks it.

Written from the real server's `server/server.js`, `server/socket-handlers/
maintenance-socket-handler.js` and its models (read, not copied), and checked against
transcripts of the real 1.23.17 and 2.0.2 (tests/data/uptime_kuma/). What it follows:

- on connect it pushes `info` (with `version`); a login (`login`, `loginByToken`) answers
  `{ok, token}` and pushes `monitorList`, `info`, `maintenanceList`, then `heartbeatList` per
  monitor; events before a login answer `{ok: false}` ("You are not logged in.");
- `add` (2.x requires `conditions`, 1.23 refuses it), `getMonitor` with its `maintenance` flag
  (true at once while a manual window covering it is active), `deleteMonitor`;
- windows: `addMaintenance` -> `{maintenanceID}`, `addMonitorMaintenance` (replaces the links),
  `getMaintenance` (status under-maintenance / inactive), `getMonitorMaintenance`,
  `getMaintenanceList` (pushes `maintenanceList`), `pause`, `resume`, `deleteMaintenance`;
- 2.x answers `msg` with i18n keys and pushes `updateMonitorIntoList` / `deleteMonitorFromList`
  instead of the whole list after a change.

Every event received is logged (`log`, and a JSON line per event in `--log FILE`), a password
never: tests read it to prove a dry run sent nothing that changes.
"""

from __future__ import annotations

import json
import secrets as _random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PASSWORD_FIELDS = ("password", "token", "newPassword", "currentPassword")
MUTATING = frozenset(
    {
        "setup",
        "add",
        "editMonitor",
        "deleteMonitor",
        "pauseMonitor",
        "resumeMonitor",
        "addMaintenance",
        "editMaintenance",
        "addMonitorMaintenance",
        "pauseMaintenance",
        "resumeMaintenance",
        "deleteMaintenance",
    }
)
Handler = Callable[..., Awaitable[Any]]
VERSIONS = {"1": "1.23.17", "2": "2.0.2"}


@dataclass
class KumaState:
    """The server's data: one user, monitors, windows and their links."""

    dialect: str = "1"
    username: str = "admin"
    password: str = "admin-password-1"
    monitors: dict[int, dict[str, Any]] = field(default_factory=dict)
    windows: dict[int, dict[str, Any]] = field(default_factory=dict)
    links: dict[int, list[int]] = field(default_factory=dict)  # window -> monitors
    status: dict[int, int] = field(default_factory=dict)  # monitor -> its checks' status
    next_id: dict[str, int] = field(default_factory=lambda: {"monitor": 1, "maintenance": 1})
    tokens: set[str] = field(default_factory=set)
    twofa: str | None = None  # the 2FA code a login must carry (the real one: a TOTP's)

    def new_id(self, kind: str) -> int:
        n = self.next_id[kind]
        self.next_id[kind] = n + 1
        return n

    def under_maintenance(self, monitor_id: int) -> bool:
        for wid, linked in self.links.items():
            window = self.windows.get(wid)
            if window and monitor_id in linked and _window_status(window) == "under-maintenance":
                return True
        parent = self.monitors.get(monitor_id, {}).get("parent")
        return parent is not None and self.under_maintenance(int(parent))

    def monitor_json(self, monitor_id: int) -> dict[str, Any]:
        m = dict(self.monitors[monitor_id])
        m["maintenance"] = self.under_maintenance(monitor_id)
        return m

    def monitor_list(self) -> dict[str, dict[str, Any]]:
        return {str(i): self.monitor_json(i) for i in sorted(self.monitors)}

    def window_json(self, window_id: int) -> dict[str, Any]:
        w = dict(self.windows[window_id])
        w["status"] = _window_status(w)
        return w

    def window_list(self) -> dict[str, dict[str, Any]]:
        return {str(i): self.window_json(i) for i in sorted(self.windows)}

    def beat(self, monitor_id: int) -> dict[str, Any]:
        status = 3 if self.under_maintenance(monitor_id) else self.status.get(monitor_id, 1)
        return {
            "monitorID": monitor_id,
            "status": status,
            "msg": {1: "OK", 0: "down", 2: "pending", 3: "Maintenance"}.get(status, ""),
            "time": "2026-12-01 00:00:00.000",
            "ping": 1 if status == 1 else None,
            "important": False,
            "duration": 60,
        }


def _window_status(window: dict[str, Any]) -> str:
    """As the real server's Maintenance.getStatus: inactive, scheduled (before its start),
    ended (after its end), under-maintenance (manual, or single in its range)."""
    import time

    if not window.get("active"):
        return "inactive"
    now = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())  # windows here are in UTC
    start, *rest = [*(window.get("dateRange") or []), None][:2]
    end = rest[0] if rest else None
    if start and now < str(start):
        return "scheduled"
    if end and now > str(end):
        return "ended"
    if window.get("strategy") in ("manual", "single"):
        return "under-maintenance"
    return "unknown"


def monitor_record(data: dict[str, Any], monitor_id: int) -> dict[str, Any]:
    """A monitor as the list shows it: the fields a client reads, with the server's defaults."""
    return {
        "id": monitor_id,
        "name": data.get("name", ""),
        "description": data.get("description"),
        "pathName": data.get("name", ""),
        "parent": data.get("parent"),
        "childrenIDs": [],
        "url": data.get("url", "https://"),
        "method": data.get("method", "GET"),
        "hostname": data.get("hostname"),
        "port": data.get("port"),
        "maxretries": data.get("maxretries", 0),
        "weight": data.get("weight", 2000),
        "active": True,
        "forceInactive": False,
        "type": data.get("type", "http"),
        "interval": data.get("interval", 60),
        "retryInterval": data.get("retryInterval", 60),
        "resendInterval": data.get("resendInterval", 0),
        "keyword": data.get("keyword"),
        "accepted_statuscodes": data.get("accepted_statuscodes", ["200-299"]),
        "notificationIDList": data.get("notificationIDList", {}),
        "tags": [],
        "pushToken": data.get("pushToken"),
    }


class KumaServer:
    """The Socket.IO application over one `KumaState`; `app()` is its aiohttp application."""

    def __init__(
        self, state: KumaState, log_file: Path | None = None, data_file: Path | None = None
    ) -> None:
        import socketio

        self.state = state
        self.log: list[dict[str, Any]] = []
        self.log_file = log_file
        self.data_file = data_file  # where the state is kept across restarts (the real: SQLite)
        self.sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*")
        self._users: dict[str, bool] = {}  # sid -> logged in
        self._info_sent: set[str] = set()
        self._register()

    @property
    def version(self) -> str:
        return VERSIONS[self.state.dialect]

    def mutating(self) -> list[str]:
        """The events received that change something, in order."""
        return [e["event"] for e in self.log if e["event"] in MUTATING]

    def app(self) -> Any:
        from aiohttp import web

        app = web.Application()
        self.sio.attach(app)

        async def entry_page(request: web.Request) -> web.Response:
            return web.json_response({"type": "entryPage", "entryPage": "dashboard"})

        async def index(request: web.Request) -> web.Response:
            return web.Response(
                text="<!doctype html><title>Uptime Kuma</title>", content_type="text/html"
            )

        app.router.add_get("/api/entry-page", entry_page)
        app.router.add_get("/", index)
        return app

    # ----- answers -----------------------------------------------------------------------

    def _msg(self, v1: str, v2: str) -> dict[str, Any]:
        if self.state.dialect == "2":
            return {"msg": v2, "msgi18n": True}
        return {"msg": v1}

    def _record(self, sid: str, event: str, args: tuple[Any, ...]) -> None:
        entry = {"event": event, "args": [_masked(a) for a in args]}
        self.log.append(entry)
        if self.log_file is not None:
            with open(self.log_file, "a", encoding="utf-8") as out:
                out.write(json.dumps(entry) + "\n")

    async def _after_login(self, sid: str) -> None:
        """What the real server pushes after a login, in its order (2.x adds the monitor
        types and remote browsers, and answers the login only after these)."""
        st, emit = self.state, self.sio.emit
        two = st.dialect == "2"
        await emit("monitorList", st.monitor_list(), to=sid)
        if two:
            await emit("monitorTypeList", {}, to=sid)
        await emit("maintenanceList", st.window_list(), to=sid)
        await emit("info", self._info(logged_in=True), to=sid)
        for name in ("notificationList", "proxyList", "dockerHostList", "apiKeyList"):
            await emit(name, [], to=sid)
        if two:
            await emit("remoteBrowserList", [], to=sid)
        await emit("statusPageList", {}, to=sid)
        for mid in sorted(st.monitors):
            await emit("heartbeatList", (mid, [st.beat(mid)], True), to=sid)

    async def _logged_in(self, sid: str) -> None:
        self._users[sid] = True
        if self.state.dialect == "2":
            await self._after_login(sid)
        else:  # 1.23 answers first, then pushes
            self.sio.start_background_task(self._after_login, sid)

    def _info(self, logged_in: bool = False) -> dict[str, Any]:
        info: dict[str, Any] = {
            "primaryBaseURL": None,
            "serverTimezone": "UTC",
            "serverTimezoneOffset": "+00:00",
        }
        if logged_in:  # the first push, before a login, hides the version
            info.update({"version": self.version, "latestVersion": None, "isContainer": False})
            if self.state.dialect == "2":
                info["dbType"] = "sqlite"
        return info

    async def _monitors_changed(self, sid: str, changed: int | None, deleted: int | None) -> None:
        st = self.state
        if st.dialect == "2":
            if changed is not None:
                await self.sio.emit(
                    "updateMonitorIntoList", {str(changed): st.monitor_json(changed)}, to=sid
                )
            if deleted is not None:
                await self.sio.emit("deleteMonitorFromList", deleted, to=sid)
        else:
            await self.sio.emit("monitorList", st.monitor_list(), to=sid)

    async def _beats(self, sid: str, monitor_ids: list[int]) -> None:
        """A beat of each monitor whose status a window changed (the real one shows 3 at its
        next beat; the stand-in beats at once)."""
        for mid in monitor_ids:
            if mid in self.state.monitors:
                await self.sio.emit("heartbeat", self.state.beat(mid), to=sid)

    # ----- events ------------------------------------------------------------------------

    def _register(self) -> None:
        sio, st = self.sio, self.state

        async def connect(sid: str, environ: Any, auth: Any = None) -> None:
            self._users[sid] = False
            await sio.emit("info", self._info(), to=sid)
            if st.dialect == "2":
                await sio.emit("loginRequired", to=sid)

        async def disconnect(sid: str, *reason: Any) -> None:
            self._users.pop(sid, None)

        sio.on("connect", connect)
        sio.on("disconnect", disconnect)

        def handler(name: str, login: bool = True) -> Callable[[Handler], Handler]:
            def wrap(fn: Handler) -> Handler:
                async def on(sid: str, *args: Any) -> Any:
                    self._record(sid, name, args)
                    if login and not self._users.get(sid):
                        return {"ok": False, "msg": "You are not logged in."}
                    try:
                        return await fn(sid, *args)
                    except (KeyError, TypeError, ValueError) as exc:
                        return {"ok": False, "msg": str(exc)}
                    finally:
                        if name in MUTATING and self.data_file is not None:
                            save(self.state, self.data_file)

                sio.on(name, on)
                return fn

            return wrap

        @handler("needSetup", login=False)
        async def need_setup(sid: str) -> Any:
            return False

        @handler("login", login=False)
        async def login(sid: str, data: dict[str, Any]) -> Any:
            if data.get("username") != st.username or data.get("password") != st.password:
                return {
                    "ok": False,
                    **self._msg("Incorrect username or password.", "authIncorrectCreds"),
                }
            if st.twofa is not None and not data.get("token"):
                return {"tokenRequired": True}
            if st.twofa is not None and data.get("token") != st.twofa:
                return {"ok": False, **self._msg("Invalid Token!", "authInvalidToken")}
            token = "kuma-jwt-" + _random.token_hex(12)
            st.tokens.add(token)
            await self._logged_in(sid)
            return {"ok": True, "token": token}

        @handler("loginByToken", login=False)
        async def login_by_token(sid: str, token: str) -> Any:
            if token not in st.tokens:
                return {"ok": False, **self._msg("Invalid token.", "authInvalidToken")}
            await self._logged_in(sid)
            return {"ok": True}

        @handler("add")
        async def add(sid: str, data: dict[str, Any]) -> Any:
            if st.dialect == "2" and "conditions" not in data:
                return {
                    "ok": False,
                    "msg": "SQLITE_CONSTRAINT: NOT NULL constraint failed: monitor.conditions",
                }
            if st.dialect == "1" and "conditions" in data:
                return {
                    "ok": False,
                    "msg": "SQLITE_ERROR: table monitor has no column named conditions",
                }
            mid = st.new_id("monitor")
            st.monitors[mid] = monitor_record(data, mid)
            await self._monitors_changed(sid, mid, None)
            return {
                "ok": True,
                **self._msg("Added Successfully.", "successAdded"),
                "monitorID": mid,
            }

        @handler("getMonitor")
        async def get_monitor(sid: str, monitor_id: int) -> Any:
            if int(monitor_id) not in st.monitors:
                return {"ok": False, "msg": "Cannot read properties of null (reading 'toJSON')"}
            return {"ok": True, "monitor": st.monitor_json(int(monitor_id))}

        @handler("deleteMonitor")
        async def delete_monitor(sid: str, monitor_id: int) -> Any:
            st.monitors.pop(int(monitor_id), None)
            for linked in st.links.values():
                if int(monitor_id) in linked:
                    linked.remove(int(monitor_id))
            await self._monitors_changed(sid, None, int(monitor_id))
            return {"ok": True, **self._msg("Deleted Successfully.", "successDeleted")}

        @handler("addMaintenance")
        async def add_maintenance(sid: str, data: dict[str, Any]) -> Any:
            if data.get("strategy") not in (
                "manual",
                "single",
                "recurring-interval",
                "recurring-weekday",
                "recurring-day-of-month",
                "cron",
            ):
                return {"ok": False, "msg": "Invalid strategy"}
            wid = st.new_id("maintenance")
            st.windows[wid] = {
                "id": wid,
                "title": data.get("title", ""),
                "description": data.get("description", ""),
                "strategy": data["strategy"],
                "intervalDay": data.get("intervalDay", 1),
                "active": bool(data.get("active", True)),
                "dateRange": data.get("dateRange") or [None],
                "timeRange": data.get("timeRange") or [],
                "weekdays": data.get("weekdays") or [],
                "daysOfMonth": data.get("daysOfMonth") or [],
                "timeslotList": [],
                "cron": data.get("cron"),
                "duration": int(data.get("durationMinutes") or 0) * 60,
                "durationMinutes": int(data.get("durationMinutes") or 0),
                "timezone": "UTC",
                "timezoneOption": data.get("timezoneOption"),
                "timezoneOffset": "+00:00",
            }
            st.links[wid] = []
            await sio.emit("maintenanceList", st.window_list(), to=sid)
            return {
                "ok": True,
                **self._msg("Added Successfully.", "successAdded"),
                "maintenanceID": wid,
            }

        @handler("addMonitorMaintenance")
        async def add_monitor_maintenance(
            sid: str, window_id: int, monitors: list[dict[str, Any]]
        ) -> Any:
            before = list(st.links.get(int(window_id), []))
            st.links[int(window_id)] = [int(m["id"]) for m in monitors]
            await self._beats(sid, sorted(set(before) | set(st.links[int(window_id)])))
            return {"ok": True, **self._msg("Added Successfully.", "successAdded")}

        @handler("getMaintenance")
        async def get_maintenance(sid: str, window_id: int) -> Any:
            if int(window_id) not in st.windows:
                return {"ok": False, "msg": "Cannot read properties of null (reading 'toJSON')"}
            return {"ok": True, "maintenance": st.window_json(int(window_id))}

        @handler("getMonitorMaintenance")
        async def get_monitor_maintenance(sid: str, window_id: int) -> Any:
            linked = st.links.get(int(window_id), [])
            return {"ok": True, "monitors": [{"id": m} for m in linked if m in st.monitors]}

        @handler("getMaintenanceList")
        async def get_maintenance_list(sid: str) -> Any:
            await sio.emit("maintenanceList", st.window_list(), to=sid)
            return {"ok": True}

        async def set_active(sid: str, window_id: int, active: bool, v1: str, v2: str) -> Any:
            window = st.windows.get(int(window_id))
            if window is None:
                return {"ok": False, "msg": "Maintenance not found"}
            window["active"] = active
            await sio.emit("maintenanceList", st.window_list(), to=sid)
            await self._beats(sid, st.links.get(int(window_id), []))
            return {"ok": True, **self._msg(v1, v2)}

        @handler("pauseMaintenance")
        async def pause_maintenance(sid: str, window_id: int) -> Any:
            return await set_active(sid, window_id, False, "Paused Successfully.", "successPaused")

        @handler("resumeMaintenance")
        async def resume_maintenance(sid: str, window_id: int) -> Any:
            return await set_active(sid, window_id, True, "Resume Successfully", "successResumed")

        @handler("deleteMaintenance")
        async def delete_maintenance(sid: str, window_id: int) -> Any:
            st.windows.pop(int(window_id), None)
            linked = st.links.pop(int(window_id), [])
            await sio.emit("maintenanceList", st.window_list(), to=sid)
            await self._beats(sid, linked)
            return {"ok": True, **self._msg("Deleted Successfully.", "successDeleted")}


def _masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("***" if k in PASSWORD_FIELDS and v else _masked(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    if isinstance(value, str) and value.startswith("kuma-jwt-"):
        return "***"
    return value


def save(state: KumaState, path: Path) -> None:
    """The server's data on disk, as the real one keeps it in its database: a host's reboot
    (the lab's docker host, when a patch reboots it) finds its windows and links again."""
    data = {
        "monitors": {str(k): v for k, v in state.monitors.items()},
        "windows": {str(k): v for k, v in state.windows.items()},
        "links": {str(k): v for k, v in state.links.items()},
        "status": {str(k): v for k, v in state.status.items()},
        "next_id": state.next_id,
        "tokens": sorted(state.tokens),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data))
    partial.replace(path)


def load(state: KumaState, path: Path) -> None:
    data = json.loads(path.read_text())
    for name in ("monitors", "windows", "links", "status"):
        setattr(state, name, {int(k): v for k, v in data[name].items()})
    state.next_id = dict(data["next_id"])
    state.tokens = set(data["tokens"])


def seed(state: KumaState, monitors: list[dict[str, Any]]) -> None:
    """Monitors present from the start (the lab's: one per service the inventory names)."""
    for data in monitors:
        mid = state.new_id("monitor")
        state.monitors[mid] = monitor_record(data, mid)


async def serve(server: KumaServer, address: str, port: int) -> Any:
    """Start serving on ADDRESS:PORT in this event loop; returns the aiohttp runner (cleanup())."""
    from aiohttp import web

    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, address, port)
    await site.start()
    return runner


def main(
    address: str,
    port: int,
    dialect: str,
    seed_file: Path | None,
    log_file: Path | None,
    password_file: Path | None,
    data_file: Path | None = None,
) -> None:
    import asyncio

    state = KumaState(dialect=dialect, username="admin")
    if password_file is not None:
        state.password = password_file.read_text().strip()
    if data_file is not None and data_file.exists():
        load(state, data_file)  # started again (the host rebooted): as it was
    elif seed_file is not None and seed_file.exists():
        seed(state, json.loads(seed_file.read_text()))
    server = KumaServer(state, log_file, data_file)

    async def forever() -> None:
        await serve(server, address, port)
        print(f"uptime-kuma stand-in ({server.version}) on http://{address}:{port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(forever())


DIALECT_ENV = "OPSKIT_LAB_KUMA"  # 1.23 or 2 (the default): which server the lab stands in for
SEED = "etc/opskit-lab/uptime-kuma-monitors.json"  # in the host's layers
LOG = "var/log/opskit-lab-uptime-kuma.jsonl"  # every event received, a JSON line each
DATA = "var/lib/opskit-lab/uptime-kuma.json"  # its monitors, windows and links, kept


def lab_monitors(inventory: Any, addresses: dict[str, str]) -> list[dict[str, Any]]:
    """One monitor per service the inventory checks, named `HOST SERVICE` and reaching the
    service's lab address and port, as a homelab's Uptime Kuma watches them."""
    monitors: list[dict[str, Any]] = []
    for host in inventory.all_hosts():
        address = addresses.get(host.name)
        for name, service in host.services.items():
            health = service.health
            port = (health.port if health else None) or service.port
            if address is None or port is None:
                continue
            if health is not None and health.check == "http":
                url = f"{health.scheme}://{address}:{port}{health.path}"
                monitors.append({"name": f"{host.name} {name}", "type": "http", "url": url})
            else:
                monitors.append(
                    {
                        "name": f"{host.name} {name}",
                        "type": "port",
                        "hostname": address,
                        "port": port,
                    }
                )
    return monitors


def lab_files(
    inventory: Any, addresses: dict[str, str], password: str, place: Callable[[str], Path]
) -> list[str]:
    """Write the stand-in's seed and password into its host's layers (`place(rel)` is the
    path of /REL there); the arguments its unit runs with."""
    import os

    seed_file = place(SEED)
    seed_file.parent.mkdir(parents=True, exist_ok=True)
    seed_file.write_text(json.dumps(lab_monitors(inventory, addresses), indent=1) + "\n")
    secret = place("etc/opskit-lab/uptime-kuma-password")
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    dialect = "1" if os.environ.get(DIALECT_ENV, "2").startswith("1") else "2"
    return [
        "--dialect",
        dialect,
        "--seed",
        f"/{SEED}",
        "--password-file",
        "/etc/opskit-lab/uptime-kuma-password",
        "--log",
        f"/{LOG}",
        "--data",
        f"/{DATA}",
    ]
