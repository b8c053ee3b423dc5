"""Transcripts of an Uptime Kuma session: opskit's client driven through one flow, every event
sent, answered and pushed recorded as data (tests/data/uptime_kuma/*.json).

Recorded once by hand against the real 1.23.17 and 2.0.2 built from source (never by the
project's scripts), in a network namespace with nothing but loopback:

    unshare -n sh -c 'ip link set lo up; node server/server.js --host=127.0.0.1 --port=3001 \
        --data-dir=DIR & sleep 12; .venv/bin/python tests/kuma_transcript.py \
        http://127.0.0.1:3001 tests/data/uptime_kuma/1.23.17.json'

tests/test_uptime_kuma.py runs the same flow against the lab's stand-in, in each dialect, and
holds what it says to what the real server said.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

USER, PASSWORD = "opskit", "kuma-Passw0rd-for-tests"
# Values that differ from one run to the next: shown as their type only.
VOLATILE = {
    "time",
    "token",
    "ping",
    "msg",
    "localDateTime",
    "timezoneOffset",
    "duration",
    "timezone",
    "serverTimezone",
    "serverTimezoneOffset",
    "latestVersion",
    "dateRange",
    "timeslotList",
    "isContainer",
    "dbType",
    "primaryBaseURL",
    "pushToken",
    "end_date",
}


def shape(value: Any, key: str | None = None) -> Any:
    """The value with what varies between runs replaced by its type."""
    if key in VOLATILE:
        return f"<{type(value).__name__}>"
    if isinstance(value, dict):
        return {k: shape(v, k) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return value


def recording_factory(transcript: list[dict[str, Any]]) -> Any:
    """A python-socketio client factory whose clients write every event into `transcript`."""
    import socketio

    class Recording(socketio.AsyncClient):  # type: ignore[misc]
        async def _trigger_event(self, event: str, namespace: str, *args: Any) -> Any:
            if event not in ("connect", "disconnect", "__disconnect_final"):
                transcript.append({"push": event, "args": shape(list(args))})
            return await super()._trigger_event(event, namespace, *args)

        async def call(self, event: str, data: Any = None, **kw: Any) -> Any:
            sent = list(data) if isinstance(data, tuple) else [data]
            if event in ("login", "loginByToken"):
                sent = ["<credentials>"]
            transcript.append({"emit": event, "args": shape(sent)})
            answer = await super().call(event, data, **kw)
            transcript.append({"answer": event, "data": shape(answer)})
            return answer

    return lambda: Recording(reconnection=False, handle_sigint=False)


async def setup(url: str) -> None:
    """A fresh server asks for its first user (`needSetup`, `setup`)."""
    import socketio

    sio = socketio.AsyncClient(reconnection=False, handle_sigint=False)
    info = asyncio.Event()
    sio.on("info", lambda data: info.set())
    await sio.connect(url, transports=["websocket"])
    await asyncio.wait_for(info.wait(), 30)
    if await sio.call("needSetup", timeout=30):
        answer = await sio.call("setup", (USER, PASSWORD), timeout=30)
        assert answer["ok"], answer
    await sio.disconnect()


async def flow(url: str, transcript: list[dict[str, Any]], door: Any = None) -> dict[str, Any]:
    """The flow: log in, add two monitors, a window over one, its states, then undo it all.
    Returns what the client saw, for the caller to check."""
    from opskit.clients.connections import Door
    from opskit.clients.uptime_kuma import KumaLogin, UptimeKumaClient

    seen: dict[str, Any] = {}
    door = door or Door(False)
    login = KumaLogin(USER, PASSWORD)
    async with UptimeKumaClient(url, login, door, factory=recording_factory(transcript)) as kuma:
        seen["version"] = kuma.version
        seen["major"] = kuma.major
        a = await kuma.add_monitor(
            {"name": "flow-a", "type": "http", "url": "http://127.0.0.1:9/a"}
        )
        b = await kuma.add_monitor(
            {"name": "flow-b", "type": "http", "url": "http://127.0.0.1:9/b"}
        )
        # the other dialect's monitor: refused
        other = {
            "name": "flow-c",
            "type": "http",
            "url": "http://127.0.0.1:9/c",
            "accepted_statuscodes": ["200-299"],
            "notificationIDList": {},
            "interval": 60,
            "maxretries": 0,
        }
        if kuma.major < 2:
            other["conditions"] = []
        refused = await kuma.call("add", other, check=False)
        seen["other_dialect_refused"] = not refused.get("ok")
        wid = await kuma.add_window("opskit: flow, run 1")
        await kuma.link_monitors(wid, [a])
        seen["a_open"] = (await kuma.monitor(a)).maintenance
        seen["b_open"] = (await kuma.monitor(b)).maintenance
        seen["window_open"] = (await kuma.window(wid)).status  # type: ignore[union-attr]
        seen["linked"] = await kuma.window_monitors(wid)
        seen["titles"] = [w.title for w in await kuma.windows()]
        await kuma.pause_window(wid)
        seen["a_paused"] = (await kuma.monitor(a)).maintenance
        seen["window_paused"] = (await kuma.window(wid)).status  # type: ignore[union-attr]
        await kuma.resume_window(wid)
        seen["a_resumed"] = (await kuma.monitor(a)).maintenance
        await kuma.delete_window(wid)
        seen["window_deleted"] = await kuma.window(wid)
        seen["a_closed"] = (await kuma.monitor(a)).maintenance
        seen["names"] = sorted(m.name for m in kuma.monitors())
        await kuma.delete_monitor(a)
        await kuma.delete_monitor(b)
        token = kuma.token
    # a stored token logs in too
    async with UptimeKumaClient(url, KumaLogin(token=token), door) as again:
        seen["token_login"] = again.version == seen["version"]
    return seen


def main(argv: list[str]) -> int:
    url, out = argv
    transcript: list[dict[str, Any]] = []
    asyncio.run(setup(url))
    seen = asyncio.run(flow(url, transcript))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"seen": seen, "transcript": transcript}, indent=1) + "\n")
    print(json.dumps(seen, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
