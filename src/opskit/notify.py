"""Notifications of runs: apprise URLs (ntfy, Gotify, Discord, Telegram, e-mail, webhooks) and an
Uptime Kuma push URL as a heartbeat; every text through the one redactor.

URLs are secret references (a URL carries its token), resolved only when a notice is sent and
registered with the redactor like any secret, so neither a URL nor a runbook's secret reaches
a message, the console or the journal. A notice that cannot be sent is a warning: it never
changes how the run ended.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .secrets import placeholder, redactor, resolve_optional

if TYPE_CHECKING:
    from .clients.connections import Transports
    from .model.schedule import Notify

Event = Literal["failure", "success", "approval"]
HEARTBEAT_TIMEOUT = 10.0
MSG_LIMIT = 200  # Uptime Kuma shows `msg` in one line


def event_for(status: str) -> Event:
    """The notice a run's end calls for."""
    if status == "succeeded":
        return "success"
    if status in ("declined", "needs approval"):
        return "approval"
    return "failure"


@dataclass
class Notice:
    """What a person needs to know about one run, and nothing secret."""

    runbook: str
    status: str  # succeeded, failed, interrupted, declined, needs approval, locked, refused
    run_id: str | None = None
    scheduled: bool = True
    failed_targets: list[str] = field(default_factory=list)
    first_error: str | None = None
    detail: list[str] = field(default_factory=list)  # e.g. the gates that need approval
    log: str | None = None

    @property
    def event(self) -> Event:
        return event_for(self.status)

    @property
    def title(self) -> str:
        how = "scheduled run" if self.scheduled else "run"
        return redactor.redact(f"opskit: {how} of {self.runbook} {self.status}")

    @property
    def body(self) -> str:
        lines = [f"runbook: {self.runbook}", f"status: {self.status}"]
        if self.run_id:
            lines.append(f"run: {self.run_id}")
        if self.failed_targets:
            lines.append("failed targets: " + ", ".join(self.failed_targets))
        if self.first_error:
            lines.append(f"first error: {_first_line(self.first_error)}")
        lines += self.detail[:10]
        if self.event == "approval":
            lines.append(
                "a person may run it at a terminal (opskit run, answering its gates), or add"
                " the steps to the runbook's schedule.approve"
            )
        if self.log:
            lines.append(f"log: {self.log}")
        return redactor.redact("\n".join(lines))

    @property
    def heartbeat_message(self) -> str:
        said = f"{self.status}"
        if self.run_id:
            said += f" {self.run_id}"
        if self.first_error:
            said += f": {_first_line(self.first_error)}"
        return redactor.redact(said)[:MSG_LIMIT]


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def send(
    notice: Notice,
    spec: Notify,
    warn: Callable[[str], None],
    transports: Transports | None = None,
) -> list[str]:
    """Send `notice` where `spec` says; the names of the receivers reached (URLs are never
    named: `notify.urls[0]`, `notify.heartbeat`). Outside any event loop; `asend` inside one."""
    import asyncio

    return asyncio.run(asend(notice, spec, warn, transports))


async def asend(
    notice: Notice,
    spec: Notify,
    warn: Callable[[str], None],
    transports: Transports | None = None,
) -> list[str]:
    """`send`, awaited: the heartbeat goes through the one door (`transports`, the run's)."""
    reached: list[str] = []
    if notice.event in spec.on:
        for i, ref in enumerate(spec.urls):
            name = f"notify.urls[{i}]"
            if _apprise(name, ref, notice, warn):
                reached.append(name)
    if spec.heartbeat is not None and await _heartbeat(spec.heartbeat, notice, warn, transports):
        reached.append("notify.heartbeat")
    return reached


def _resolved(name: str, ref: str, warn: Callable[[str], None]) -> str | None:
    from .errors import SecretError

    try:
        return resolve_optional(name, ref)
    except SecretError as exc:
        warn(f"notification not sent: {exc}")
        return None


def _apprise(name: str, ref: str, notice: Notice, warn: Callable[[str], None]) -> bool:
    url = _resolved(name, ref, warn)
    if url is None:
        return False
    import warnings

    with warnings.catch_warnings():
        # apprise's plugins import modules Python deprecates (imghdr) as they load
        warnings.simplefilter("ignore", DeprecationWarning)
        return _apprise_send(name, ref, url, notice, warn)


def _apprise_send(
    name: str, ref: str, url: str, notice: Notice, warn: Callable[[str], None]
) -> bool:
    import apprise

    # apprise logs its failures with the URL in them: they stay out of our output.
    quiet = logging.getLogger("apprise")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    sender = apprise.Apprise()
    if not sender.add(url):
        warn(f"notification not sent: {name} ({ref.split(':')[0]}:...) is not a URL apprise knows")
        return False
    kind = {
        "failure": apprise.NotifyType.FAILURE,
        "success": apprise.NotifyType.SUCCESS,
        "approval": apprise.NotifyType.WARNING,
    }[notice.event]
    try:
        ok = bool(sender.notify(title=notice.title, body=notice.body, notify_type=kind))
    except Exception as exc:  # a plugin's bug must not end the run's report
        warn(redactor.redact(f"notification to {name} failed: {type(exc).__name__}"))
        return False
    if not ok:
        warn(f"notification to {name} failed (the receiver refused it or did not answer)")
    return ok


def heartbeat_url(push_url: str, notice: Notice, ping_ms: float | None = None) -> str:
    """The push URL with `status=up|down`, `msg=` and `ping=` set (an Uptime Kuma push
    monitor's URL is shown with `?status=up&msg=OK&ping=`: those are replaced)."""
    parts = urlsplit(push_url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("status", "msg", "ping")]
    query += [
        ("status", "up" if notice.event == "success" else "down"),
        ("msg", notice.heartbeat_message),
        ("ping", "" if ping_ms is None else f"{ping_ms:.0f}"),
    ]
    return urlunsplit(parts._replace(query=urlencode(query)))


async def _heartbeat(
    ref: str, notice: Notice, warn: Callable[[str], None], transports: Transports | None
) -> bool:
    url = _resolved("notify.heartbeat", ref, warn)
    if url is None:
        return False
    import httpx

    from .clients.connections import CLIENT, PATH, Connections

    # The push token is the URL's path: hidden wherever a log or an observer would show it.
    path = urlsplit(url).path
    redactor.add("notify.heartbeat", path)
    connections = Connections(None, transports=transports)
    try:
        async with httpx.AsyncClient(
            transport=connections.transport(False), timeout=HEARTBEAT_TIMEOUT, trust_env=False
        ) as client:
            answer = await client.get(
                heartbeat_url(url, notice),
                extensions={CLIENT: "heartbeat", PATH: placeholder("notify.heartbeat")},
            )
    except httpx.HTTPError as exc:
        warn(f"heartbeat not sent (notify.heartbeat): {type(exc).__name__}")
        return False
    finally:
        await connections.aclose()
    if answer.status_code >= 400:
        warn(f"heartbeat refused (notify.heartbeat): HTTP {answer.status_code}")
        return False
    return True
