"""Beszel: the hub's records (beszel.hub.system) and the checks (check.beszel.hub,
check.beszel.agent); the agent itself is beszel_agent.py.

Secrets arrive as `‹secret:NAME›` placeholders while planning (they are resolved only when a run
starts); what depends on one is reported as known after apply, and the engine probes again with
the values before it applies.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field

from ..errors import OpskitError, SecretsPending
from ..model import Change, ChangeKind, Duration, Outcome, Risk
from ..model.inventory import TLS
from ..render import SECRET
from ..secrets import marked
from .base import Action, ActionArgs, ActionContext, Check

if TYPE_CHECKING:
    from ..clients.hub import HubClient

DEFAULT_PORT = 45876
_KEY_LINE = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com"
    r"|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( [^\r\n]*)?$"
)
_VERSION = r"^v?[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]+)?$"
_URL = r"^https?://[^\s/\"'%\\]+(/[^\s\"'%\\]*)?$"


def _require_known(what: str, *values: str | None) -> None:
    names = marked(*values)
    if names:
        raise SecretsPending(f"{what} needs the secret(s) {', '.join(names)}")


def _check_key(key: str) -> str:
    key = key.strip()
    if not _KEY_LINE.match(key):
        raise OpskitError(
            "the hub's key is not an SSH public key line (e.g. 'ssh-ed25519 AAAA...'):"
            " check BESZEL_HUB_KEY"
        )
    return key


# --- the hub ---------------------------------------------------------------------------------


class HubArgs(ActionArgs):
    hub_url: str = Field(..., pattern=_URL, description="the hub, e.g. http://docker:8090")
    email: Annotated[str, SECRET] = Field(
        ..., description="a hub superuser's or user's email: '{{ secrets.NAME }}'"
    )
    password: Annotated[str, SECRET] = Field(..., description="its password: '{{ secrets.NAME }}'")
    auth: Literal["auto", "superuser", "user"] = Field(
        "auto", description="log in as a superuser, a hub user, or try both (auto)"
    )
    tls: TLS = Field(
        default_factory=TLS,
        description="how to trust an https:// hub: system CAs, a CA file, or a pinned"
        " certificate fingerprint",
    )
    timeout: Duration = Field(15.0, description="for each request to the hub")


@asynccontextmanager
async def hub_session(
    ctx: ActionContext,
    url: str,
    email: str,
    password: str,
    *,
    auth: Literal["auto", "superuser", "user"] = "auto",
    tls: TLS | None = None,
    timeout: float = 15.0,
) -> AsyncIterator[HubClient]:
    """A logged-in hub client (read-only while planning), closed on exit."""
    _require_known(f"the hub {url}", email, password)
    verify: Any = True
    parts = urlsplit(url)
    if parts.scheme == "https":
        from ..clients.tls import ssl_context

        verify = await ssl_context(
            tls or TLS(), parts.hostname or "", parts.port or 443, timeout, service="Beszel hub"
        )
    client = ctx.hub(url, email, password, auth=auth, verify=verify, timeout=timeout)
    try:
        await client.login()
        yield client
    finally:
        await client.aclose()


def _session(ctx: ActionContext, a: HubArgs) -> Any:
    return hub_session(
        ctx, a.hub_url, a.email, a.password, auth=a.auth, tls=a.tls, timeout=a.timeout
    )


# What beszel.hub.system and check.beszel.hub register of the system's record (_ids).
SYSTEM_OUTPUTS = {
    "id": "the system record's id in the hub (str)",
    "name": "its name (str)",
    "status": "the hub's status for it: up, down, paused or pending ('' from a bare PocketBase)",
}


class SystemArgs(HubArgs):
    name: str | None = Field(None, description="the system's name (default: the target's name)")
    host: str | None = Field(
        None, description="where the hub reaches the agent (default: the target's address)"
    )
    port: int = Field(DEFAULT_PORT, ge=1, le=65535, description="the agent's port")
    users: list[str] | None = Field(
        None,
        description="hub users who see the system, by email or id (default: the logged-in user,"
        " or the hub's only user when a superuser logs in)",
    )
    token: Annotated[str | None, SECRET] = Field(
        None,
        description="the agent's TOKEN for its fingerprint record: '{{ secrets.NAME }}'"
        " (default: keep the record's, or a random one for a new record, as the hub's UI does)",
    )
    state: Literal["present", "absent"] = Field(
        "present", description="present: added or brought up to date; absent: removed"
    )


@dataclass
class _SystemPlan:
    change: Change
    system: dict[str, Any] | None = None
    fields: dict[str, Any] = field(default_factory=dict)  # systems fields to write
    fingerprint: dict[str, Any] | None = None
    token: str | None = None  # the fingerprint token to write (None: leave it)


class HubSystem(Action[SystemArgs]):
    """The target's `systems` record in the Beszel hub (and its `fingerprints` record),
    found by name: created, brought up to date, or removed (state: absent)."""

    name: ClassVar[str] = "beszel.hub.system"
    risk: ClassVar[Risk] = Risk.CHANGE
    Args = SystemArgs
    outputs: ClassVar[dict[str, str]] = SYSTEM_OUTPUTS
    example: ClassVar[str] = """
        targets: tag:monitored
        secrets:
          hub_email: env:BESZEL_HUB_EMAIL
          hub_password: env:BESZEL_HUB_PASSWORD
        steps:
          - id: register
            beszel.hub.system:
              hub_url: http://docker.tail0000.ts.net:8090
              email: "{{ secrets.hub_email }}"
              password: "{{ secrets.hub_password }}"
              port: 45876
            register: system          # later: {{ system.id }}, {{ system.status }}
        """

    def describe(self) -> str:
        a = self.args
        what = f"system {a.name}" if a.name else "the target's system"
        verb = "remove" if a.state == "absent" else "register"
        return f"{verb} {what} in the Beszel hub {urlsplit(a.hub_url).netloc}"

    def _what(self, ctx: ActionContext) -> str:
        return f"system {self.args.name or ctx.target.name}"

    async def probe(self, ctx: ActionContext) -> Change:
        try:
            async with _session(ctx, self.args) as hub:
                return (await self._plan(ctx, hub)).change
        except SecretsPending as exc:
            return Change.unknown(f"{self._what(ctx)}: known after apply ({exc})")

    async def apply(self, ctx: ActionContext) -> Outcome:
        a = self.args
        async with _session(ctx, a) as hub:
            plan = await self._plan(ctx, hub)
            change = plan.change
            if change.kind is ChangeKind.NONE:
                return Outcome(ok=True, summary=change.summary, outputs=_ids(plan.system))
            if change.kind is ChangeKind.DELETE:
                assert plan.system is not None
                # the fingerprint goes with it (cascadeDelete on fingerprints.system)
                await hub.delete("systems", plan.system["id"])
                return Outcome(ok=True, changed=True, summary=change.summary)
            system = plan.system
            if system is None:
                system = await hub.create("systems", plan.fields)
            elif plan.fields:
                system = await hub.update("systems", system["id"], plan.fields)
            if plan.fingerprint is None:
                token = plan.token or str(uuid.uuid4())
                await hub.create("fingerprints", {"system": system["id"], "token": token})
            elif plan.token is not None:
                await hub.update("fingerprints", plan.fingerprint["id"], {"token": plan.token})
            return Outcome(ok=True, changed=True, summary=change.summary, outputs=_ids(system))

    async def _plan(self, ctx: ActionContext, hub: HubClient) -> _SystemPlan:
        a = self.args
        _require_known(self._what(ctx), a.token)
        name = a.name or ctx.target.name
        system = await hub.system(name)
        if a.state == "absent":
            if system is None:
                return _SystemPlan(Change.none(f"no system {name} in the hub"))
            where = f"{system.get('host')}:{system.get('port')}"
            summary = f"remove system {name} ({where}) from the hub"
            return _SystemPlan(
                Change(kind=ChangeKind.DELETE, summary=summary, before=_shown(system)), system
            )
        want = {
            "name": name,
            "host": a.host or ctx.target.address,
            "port": str(a.port),
            "users": await self._users(hub),
        }
        if system is None:
            after = {**want, "fingerprint": "new token" if a.token is None else "given token"}
            summary = f"add system {name} ({want['host']}:{want['port']}) to the hub"
            return _SystemPlan(
                Change(kind=ChangeKind.CREATE, summary=summary, after=after),
                None,
                want,
                None,
                a.token,
            )
        have = _shown(system)
        fields = {k: v for k, v in want.items() if have.get(k) != v}
        fingerprint = await hub.fingerprint(system["id"])
        token: str | None = None
        differs = list(fields)
        if fingerprint is None:
            differs.append("fingerprint (missing)")
            token = a.token
        elif a.token is not None and fingerprint.get("token") != a.token:
            differs.append("token")
            token = a.token
        if not differs:
            return _SystemPlan(Change.none(f"system {name} is up to date"), system, {}, fingerprint)
        before = {k: have.get(k) for k in fields}
        after = dict(fields)
        if "token" in differs:
            before["token"], after["token"] = "(other)", "(given)"  # never the values
        summary = f"update system {name} in the hub ({', '.join(differs)})"
        change = Change(kind=ChangeKind.UPDATE, summary=summary, before=before, after=after)
        return _SystemPlan(change, system, fields, fingerprint, token)

    async def _users(self, hub: HubClient) -> list[str]:
        """The ids of the users to own the system, sorted."""
        from ..clients.hub import filter_literal

        given = self.args.users
        if given is None:
            if not hub.is_superuser:
                return [str(hub.account.get("id"))]
            found = await hub.records("users")
            if len(found) != 1:
                raise OpskitError(
                    f"the hub has {len(found)} users: name who sees the system (users: [EMAIL])"
                    if found
                    else "the hub has no users: create one in its UI first"
                )
            return [str(found[0]["id"])]
        ids = []
        for who in given:
            field_name = "email" if "@" in who else "id"
            found = await hub.records("users", f"{field_name} = {filter_literal(who)}")
            if not found:
                raise OpskitError(f"the hub has no user {who!r} (users: names emails or ids)")
            ids.append(str(found[0]["id"]))
        return sorted(set(ids))


def _shown(system: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": system.get("name"),
        "host": system.get("host"),
        "port": str(system.get("port") or ""),
        "users": sorted(system.get("users") or []),
    }


def _ids(system: dict[str, Any] | None) -> dict[str, Any]:
    if system is None:
        return {}
    return {"id": system.get("id"), "name": system.get("name"), "status": system.get("status")}


class HubCheckArgs(HubArgs):
    name: str | None = Field(None, description="the system's name (default: the target's name)")
    system: bool = Field(
        True, description="check the system record (false: only the hub, the login and the key)"
    )
    status: Literal["up", "down", "paused", "pending"] | None = Field(
        None,
        description="the status the system must have when the hub reports one (a Beszel hub"
        " always does; a bare PocketBase, which never connects to agents, does not)",
    )
    key: Annotated[str | None, SECRET] = Field(
        None, description="the hub's public key, to check with key_known: '{{ secrets.NAME }}'"
    )
    key_known: bool = Field(
        False,
        description="the hub's public key is known: `key` is an SSH public key line (the hub's"
        " own, if it serves it), or, without `key`, the hub serves it",
    )


class CheckHub(Check[HubCheckArgs]):
    """The Beszel hub answers, the login works, the target's system is registered (with a
    status, when asked) and, when asked, the hub's public key is known."""

    name: ClassVar[str] = "check.beszel.hub"
    Args = HubCheckArgs
    outputs: ClassVar[dict[str, str]] = {
        k: f"{v}; only with `system: true`" for k, v in SYSTEM_OUTPUTS.items()
    }
    example: ClassVar[str] = """
        targets: tag:monitored
        secrets:
          hub_email: env:BESZEL_HUB_EMAIL
          hub_password: env:BESZEL_HUB_PASSWORD
        steps:
          - id: hub-sees-it
            check.beszel.hub:
              hub_url: http://docker.tail0000.ts.net:8090
              email: "{{ secrets.hub_email }}"
              password: "{{ secrets.hub_password }}"
              status: up
            retries: 18               # the hub polls its agents about once a minute
            interval: 5s
        """

    def describe(self) -> str:
        a = self.args
        parts = [f"Beszel hub {urlsplit(a.hub_url).netloc} answers"]
        if a.key_known:
            parts.append("its key is known")
        if a.system:
            what = f"system {a.name}" if a.name else "the target's system"
            parts.append(f"{what} is registered" + (f" and {a.status}" if a.status else ""))
        return ", ".join(parts)

    async def apply(self, ctx: ActionContext) -> Outcome:
        from ..errors import HubError

        a = self.args
        outputs: dict[str, Any] = {}
        async with _session(ctx, a) as hub:
            found = ["login ok"]
            if a.key_known:
                served: str | None = None
                try:
                    served = await hub.public_key()
                except HubError as exc:
                    if a.key is None:
                        return _failed(f"the hub's public key is unknown: {exc}")
                if a.key is not None:
                    key = _check_key(a.key)
                    if served is not None and served.split()[:2] != key.split()[:2]:
                        return _failed(
                            "the key given (BESZEL_HUB_KEY) is not the hub's: agents would"
                            " refuse the hub"
                        )
                found.append("key known")
            if a.system:
                name = a.name or ctx.target.name
                record = await hub.system(name)
                if record is None:
                    return _failed(f"the hub has no system {name!r}")
                outputs = _ids(record)
                status = record.get("status") or ""
                if a.status and status and status != a.status:
                    return Outcome(
                        ok=False,
                        summary=f"system {name}: {status}",
                        outputs=outputs,
                        error=f"system {name}: the hub reports {status}, expected {a.status}",
                    )
                if a.status and not status:
                    status = "status not reported (not a Beszel hub?)"
                found.append(f"system {name} registered" + (f", {status}" if status else ""))
        return Outcome(ok=True, summary=", ".join(found), outputs=outputs)


def _failed(error: str) -> Outcome:
    return Outcome(ok=False, summary=error, error=error)


# --- the agent's port --------------------------------------------------------------------------


class AgentCheckArgs(ActionArgs):
    host: str | None = Field(None, description="default: the target's address")
    port: int = Field(DEFAULT_PORT, ge=1, le=65535, description="the agent's port")
    version: str | None = Field(None, pattern=_VERSION, description="the version it must run")
    timeout: Duration = Field(5.0, description="for the connection and the banner")


class CheckAgent(Check[AgentCheckArgs]):
    """The agent's port answers as a Beszel agent: an `SSH-2.0-beszel_<version>` banner."""

    name: ClassVar[str] = "check.beszel.agent"
    Args = AgentCheckArgs
    outputs: ClassVar[dict[str, str]] = {
        "banner": "the SSH identification line the port sent (str)",
        "version": "the agent's version from it, when it is a Beszel agent (str)",
    }
    example: ClassVar[str] = """
        targets: tag:monitored
        steps:
          - id: agent-answers
            check.beszel.agent: {port: 45876, version: "0.18.8"}
            register: agent           # later: {{ agent.version }}
        """

    def describe(self) -> str:
        a = self.args
        version = f" {a.version.lstrip('v')}" if a.version else ""
        return f"Beszel agent{version} answers on {a.host or 'target'}:{a.port}"

    async def apply(self, ctx: ActionContext) -> Outcome:
        import asyncio

        from ..model.common import format_duration

        a = self.args
        host = a.host or ctx.target.address
        where = f"{host}:{a.port}"
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, a.port), a.timeout
            )
        except TimeoutError:
            return _failed(f"{where}: no answer within {format_duration(a.timeout)}")
        except OSError as exc:
            import os

            return _failed(f"{where}: {os.strerror(exc.errno) if exc.errno else exc}")
        try:
            banner = await asyncio.wait_for(_banner(reader), a.timeout)
        except TimeoutError:
            return _failed(f"{where}: accepted, but sent no SSH banner")
        except (OSError, ValueError) as exc:
            return _failed(f"{where}: {exc}")
        finally:
            writer.close()
        outputs = {"banner": banner}
        if not banner.startswith("SSH-2.0-beszel_"):
            return Outcome(
                ok=False,
                summary=f"{where}: not a Beszel agent",
                outputs=outputs,
                error=f"{where} answers {banner!r}, not a Beszel agent (SSH-2.0-beszel_...)",
            )
        running = banner.removeprefix("SSH-2.0-beszel_").split()[0]
        outputs["version"] = running
        if a.version and running != a.version.lstrip("v"):
            return Outcome(
                ok=False,
                summary=f"{where}: Beszel agent {running}",
                outputs=outputs,
                error=f"{where} runs Beszel agent {running}, expected {a.version.lstrip('v')}",
            )
        return Outcome(ok=True, summary=f"{where}: Beszel agent {running}", outputs=outputs)


async def _banner(reader: Any) -> str:
    """The SSH identification line (RFC 4253 lets a server send other lines before it)."""
    for _ in range(10):
        raw = await reader.readline()
        if not raw:
            raise ValueError("closed without an SSH banner")
        line = str(raw.decode("utf-8", "replace")).rstrip("\r\n")
        if line.startswith("SSH-"):
            return line
    raise ValueError("no SSH banner in its first 10 lines")
