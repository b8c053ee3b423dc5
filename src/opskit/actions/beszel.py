"""Beszel: the agent on hosts (beszel.agent), its record in the hub (beszel.hub.system), checks.

The agent is installed the way Beszel's own installer (supplemental/scripts/install-agent.sh)
does it, minus the guessing: a pinned version from a release base URL, the archive checked on the
host against the release's sha256 checksums file before anything is installed, `/opt/beszel-agent`,
a system user `beszel`, and a systemd unit with the installer's sandboxing. The hub's public key is
public: it goes in the unit (`KEY`) as the installer puts it; the agent's `TOKEN` is a secret: it
goes in an EnvironmentFile of mode 0600, never in the unit, whose `Environment=` lines any local
user can read through `systemctl show`.

Secrets arrive as `‹secret:NAME›` placeholders while planning (they are resolved only when a run
starts); what depends on one is reported as known after apply, and the engine probes again with
the values before it applies.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import shlex
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from ..errors import OpskitError, SecretsPending, StepError
from ..model import Change, ChangeKind, Duration, Outcome, Risk
from ..model.inventory import TLS
from ..render import SECRET
from ..secrets import marked
from .base import Action, ActionArgs, ActionContext, Check

if TYPE_CHECKING:
    from ..clients.hub import HubClient
    from ..clients.primitives import UnitState
    from ..clients.ssh import CommandResult, HostShell

DEFAULT_RELEASES = "https://github.com/henrygd/beszel/releases/download"
DEFAULT_PORT = 45876
SERVICE = "beszel-agent.service"
# `uname -m` -> the release's architecture, as Beszel's installer maps it (armv6l is "arm").
ARCHES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "armv7",
    "armv6l": "arm",
}
_KEY_LINE = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com"
    r"|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( [^\r\n]*)?$"
)
_TOKEN = re.compile(r"^[A-Za-z0-9._~+/=:@-]+$")  # written to an EnvironmentFile unquoted
_VERSION = r"^v?[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]+)?$"
_PATH = r"^/[A-Za-z0-9._/-]*[A-Za-z0-9._-]$"
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


# --- the agent on a host ---------------------------------------------------------------------


class AgentArgs(ActionArgs):
    state: Literal["present", "absent"] = Field(
        "present",
        description="present: installed and running; absent: removed (binary, unit, token"
        " file, user)",
    )
    version: str | None = Field(
        None, pattern=_VERSION, description="the version to pin (needed for present)"
    )
    release_url: str = Field(
        DEFAULT_RELEASES,
        pattern=_URL,
        description="release base: <this>/v<version>/beszel-agent_linux_<arch>.tar.gz",
    )
    key: Annotated[str | None, SECRET] = Field(
        None,
        description="the hub's public key line: '{{ secrets.NAME }}' (default: ask the hub)",
    )
    token: Annotated[str | None, SECRET] = Field(
        None, description="the agent's TOKEN (with hub_url: it also connects out to the hub)"
    )
    hub_url: str | None = Field(None, pattern=_URL, description="the hub (HUB_URL, the key)")
    hub_email: Annotated[str | None, SECRET] = Field(
        None, description="a hub login, to ask the hub its key: '{{ secrets.NAME }}'"
    )
    hub_password: Annotated[str | None, SECRET] = Field(
        None, description="its password: '{{ secrets.NAME }}'"
    )
    hub_auth: Literal["auto", "superuser", "user"] = Field(
        "auto", description="log in as a superuser, a hub user, or try both (auto)"
    )
    hub_tls: TLS = Field(default_factory=TLS, description="how to trust an https:// hub")
    listen: str = Field(
        str(DEFAULT_PORT),
        pattern=r"^([0-9]{1,5}|[A-Za-z0-9.:\[\]-]*:[0-9]{1,5}|/[A-Za-z0-9._/-]+)$",
        description="LISTEN: a port, host:port, or a unix socket path",
    )
    install_dir: str = Field("/opt/beszel-agent", pattern=_PATH, description="holds the binary")
    unit_dir: str = Field(
        "/etc/systemd/system", pattern=_PATH, description="where beszel-agent.service goes"
    )
    env_file: str = Field("/etc/beszel-agent.env", pattern=_PATH, description="holds TOKEN")
    user: str = Field(
        "beszel", pattern=r"^[a-z_][a-z0-9_-]*$", description="the system user it runs as"
    )
    become: bool = Field(False, description="run through sudo (-n: never prompt)")
    timeout: Duration = Field(300.0, description="for the download")

    @field_validator("listen", mode="before")
    @classmethod
    def _listen_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _enough(self) -> AgentArgs:
        if self.state == "present":
            if self.version is None:
                raise ValueError("state present needs the version to pin (version: X.Y.Z)")
            if self.key is None and not (self.hub_url and self.hub_email and self.hub_password):
                raise ValueError(
                    "the hub's key: give key, or hub_url, hub_email and hub_password to ask"
                    " the hub for it"
                )
        return self


@dataclass
class HostState:
    """What the probe read on the host."""

    arch: str
    binary: str | None  # `beszel-agent -v` output; None: no binary
    user: bool
    enabled: str
    active: str
    unit: str | None  # the unit file's text
    env: tuple[str, str] | None  # (mode, sha256) of the EnvironmentFile

    @property
    def service(self) -> UnitState:
        from ..clients.primitives import UnitState

        return UnitState(self.enabled, self.active)

    @property
    def version(self) -> str | None:
        if self.binary is None:
            return None
        found = re.search(r"([0-9]+\.[0-9]+\.[0-9]+\S*)", self.binary)
        return found.group(1) if found else "unknown"


@dataclass
class Wanted:
    version: str
    arch: str
    unit: str
    key_known: bool
    env: str | None  # the EnvironmentFile's text; None: no file
    env_known: bool


class Agent(Action[AgentArgs]):
    """The Beszel agent, pinned to a version, as a systemd service (or removed: state absent).

    The archive is downloaded on the host (curl, else wget), checked against the release's
    sha256 checksums file and only then installed, by an atomic rename. A second run changes
    nothing: the probe compares the installed binary's version, the unit file, the
    EnvironmentFile and whether the service is enabled and active."""

    name: ClassVar[str] = "beszel.agent"
    risk: ClassVar[Risk] = Risk.CHANGE
    Args = AgentArgs
    outputs: ClassVar[dict[str, str]] = {
        "version": "the version installed (str)",
        "arch": "the release's architecture for the host: amd64, arm64, ... (str)",
        "done": "what it did, in order: binary, user, unit file, start, ... (list[str])",
        "sha256": "the downloaded archive's SHA-256, when it installed a binary (hex str)",
    }
    example: ClassVar[str] = """
        targets: tag:monitored
        secrets:
          hub_key: env:BESZEL_HUB_KEY       # the hub's public key line (ssh-ed25519 ...)
        steps:
          - id: agent
            beszel.agent:
              version: "0.18.8"
              key: "{{ secrets.hub_key }}"
              listen: 45876
            register: agent           # later: {{ agent.done }}, {{ agent.version }}
        """

    # ----- paths -------------------------------------------------------------------------

    @property
    def binary(self) -> str:
        return f"{self.args.install_dir}/beszel-agent"

    @property
    def unit_path(self) -> str:
        return f"{self.args.unit_dir}/{SERVICE}"

    def describe(self) -> str:
        a = self.args
        if a.state == "absent":
            return "remove the Beszel agent"
        return f"Beszel agent {a.version and a.version.lstrip('v')} listening on {a.listen}"

    def _sh(self, command: str) -> str:
        if not self.args.become:
            return command
        from ..clients.ssh import sudo

        return sudo(command)

    # ----- reading the host --------------------------------------------------------------

    async def _state(self, shell: HostShell) -> HostState:
        a = self.args
        script = f"""b={shlex.quote(self.binary)}; u={shlex.quote(self.unit_path)}
e={shlex.quote(a.env_file)}; who={shlex.quote(a.user)}
printf 'arch=%s\\n' "$(uname -m)"
if [ -e "$b" ]; then
  if command -v timeout >/dev/null 2>&1; then v=$(timeout 20 "$b" -v 2>/dev/null)
  else v=$("$b" -v 2>/dev/null); fi
  printf 'binary=%s\\n' "$(printf '%s\\n' "$v" | head -n 1)"
else echo 'binary=-'; fi
if id -u "$who" >/dev/null 2>&1; then echo user=yes; else echo user=no; fi
printf 'enabled=%s\\n' "$(systemctl is-enabled {SERVICE} 2>/dev/null)"
printf 'active=%s\\n' "$(systemctl is-active {SERVICE} 2>/dev/null)"
if [ -f "$e" ]; then
  printf 'env=%s %s\\n' "$(stat -c %a "$e")" "$(sha256sum < "$e" | cut -d ' ' -f 1)"
else echo 'env=-'; fi
if [ -f "$u" ]; then echo unit=yes; cat "$u"; else echo unit=no; fi"""
        done = await shell.run(self._sh(script), probe=True, timeout=60)
        if done.rc != 0 or "\nunit=" not in done.stdout:
            from ..clients.primitives import tail

            raise OpskitError(f"cannot read the agent's state: {tail(done)}")
        head, _, rest = done.stdout.partition("\nunit=")
        values = dict(line.split("=", 1) for line in head.splitlines() if "=" in line)
        flag, _, unit = rest.partition("\n")
        env = values.get("env", "-")
        mode, _, digest = env.partition(" ")
        return HostState(
            arch=values.get("arch", "").strip(),
            binary=None if values.get("binary") == "-" else values.get("binary", ""),
            user=values.get("user") == "yes",
            enabled=values.get("enabled", "").strip(),
            active=values.get("active", "").strip(),
            unit=unit if flag.strip() == "yes" else None,
            env=None if env == "-" else (mode.zfill(4), digest.strip()),
        )

    # ----- what the host should have -------------------------------------------------------

    def _wanted(self, state: HostState, key: str | None) -> Wanted:
        a = self.args
        assert a.version is not None
        arch = ARCHES.get(state.arch)
        if arch is None:
            known = ", ".join(sorted(ARCHES))
            raise OpskitError(
                f"no Beszel agent build for this host's architecture {state.arch!r} ({known})"
            )
        key_known = key is not None and not marked(key)
        token_known = a.token is None or not marked(a.token)
        if key_known:
            assert key is not None
            key = _check_key(key)
        if a.token is not None and token_known and not _TOKEN.match(a.token):
            raise OpskitError("the agent's token has characters an EnvironmentFile would alter")
        env = f"TOKEN={a.token}\n" if a.token is not None else None
        return Wanted(
            version=a.version.lstrip("v"),
            arch=arch,
            unit=self.unit_text(key if key_known and key else _KEY_MARK),
            key_known=key_known,
            env=env,
            env_known=token_known,
        )

    def unit_text(self, key: str) -> str:
        """The unit: Beszel's installer's, with KEY and LISTEN (and HUB_URL with a token);
        TOKEN comes from the EnvironmentFile."""
        a = self.args
        env = [
            f'Environment="LISTEN={_unit_value(a.listen)}"',
            f'Environment="KEY={_unit_value(key)}"',
        ]
        if a.token is not None:
            if a.hub_url:
                env.append(f'Environment="HUB_URL={_unit_value(a.hub_url)}"')
            env.append(f"EnvironmentFile={a.env_file}")
        lines = [
            "# Managed by opskit (beszel.agent): changes here are undone by its next run.",
            "[Unit]",
            "Description=Beszel Agent Service",
            "Wants=network-online.target",
            "After=network-online.target",
            "",
            "[Service]",
            *env,
            f"ExecStart={self.binary}",
            f"User={a.user}",
            "Restart=on-failure",
            "RestartSec=5",
            "StateDirectory=beszel-agent",
            "",
            "# Sandboxing, as Beszel's installer sets it",
            "KeyringMode=private",
            "LockPersonality=yes",
            "ProtectClock=yes",
            "ProtectHome=read-only",
            "ProtectHostname=yes",
            "ProtectKernelLogs=yes",
            "ProtectSystem=strict",
            "RemoveIPC=yes",
            "RestrictSUIDSGID=true",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
        ]
        return "\n".join(lines) + "\n"

    def _differences(self, state: HostState, want: Wanted) -> tuple[list[str], list[str]]:
        """(what differs, what is known only after apply)."""
        differs: list[str] = []
        later: list[str] = []
        if state.version != want.version:
            differs.append(f"version {state.version or 'none'} -> {want.version}")
        if not state.user:
            differs.append(f"user {self.args.user}")
        if state.unit is None:
            differs.append("unit file")
        elif want.key_known:
            if state.unit != want.unit:
                differs.append("unit file")
        else:
            if _without_key(state.unit) != _without_key(want.unit):
                differs.append("unit file")
            else:
                later.append("KEY")
        if want.env is None:
            if state.env is not None:
                differs.append("token file (remove)")
        elif state.env is None or state.env[0] != "0600":
            differs.append("token file")
        elif want.env_known:
            if state.env[1] != hashlib.sha256(want.env.encode()).hexdigest():
                differs.append("token")
        else:
            later.append("TOKEN")
        if state.enabled != "enabled":
            differs.append("enable")
        if state.active != "active":
            differs.append("start")
        return differs, later

    # ----- probe -------------------------------------------------------------------------

    async def probe(self, ctx: ActionContext) -> Change:
        state = await self._state(ctx.shell())
        if self.args.state == "absent":
            return self._absent_change(state)
        try:
            key = await self._key(ctx)
        except SecretsPending:
            key = _KEY_MARK  # compared when applying
        want = self._wanted(state, key if key != _KEY_MARK else None)
        differs, later = self._differences(state, want)
        before = {
            "version": state.version,
            "enabled": state.enabled or None,
            "active": state.active or None,
            "user": state.user,
        }
        after = {"version": want.version, "enabled": "enabled", "active": "active", "user": True}
        if "unit file" in differs and state.unit is not None:
            after["unit_diff"] = _diff(state.unit, want.unit, want.key_known)
        if state.binary is None and state.unit is None:
            summary = f"install Beszel agent {want.version} ({want.arch})"
            return Change(kind=ChangeKind.CREATE, summary=summary, after=after)
        if differs:
            restart = " and restart" if state.active == "active" else ""
            summary = f"update Beszel agent{restart}: {', '.join(differs)}"
            if later:
                summary += f" ({' and '.join(later)} compared when applying: secrets)"
            return Change(kind=ChangeKind.UPDATE, summary=summary, before=before, after=after)
        if later:
            return Change.unknown(
                f"Beszel agent {want.version} installed and running; {' and '.join(later)}"
                " known after apply (secrets)"
            )
        return Change.none(f"Beszel agent {want.version} installed, enabled and running")

    def _absent_change(self, state: HostState) -> Change:
        left = [
            what
            for what, there in (
                ("binary", state.binary is not None),
                ("unit file", state.unit is not None),
                ("token file", state.env is not None),
                (f"user {self.args.user}", state.user),
            )
            if there
        ]
        if not left:
            return Change.none("no Beszel agent on the host")
        return Change(
            kind=ChangeKind.DELETE,
            summary=f"remove the Beszel agent ({', '.join(left)})",
            before={"version": state.version, "active": state.active or None},
        )

    async def _key(self, ctx: ActionContext) -> str:
        """The hub's public key: the argument, or the hub's own (GET /api/beszel/getkey)."""
        a = self.args
        if a.key is not None:
            _require_known("the hub's key", a.key)
            return a.key
        assert a.hub_url and a.hub_email and a.hub_password  # the model checks it
        async with hub_session(
            ctx, a.hub_url, a.hub_email, a.hub_password, auth=a.hub_auth, tls=a.hub_tls
        ) as hub:
            return await hub.public_key()

    # ----- apply -------------------------------------------------------------------------

    async def apply(self, ctx: ActionContext) -> Outcome:
        a, shell = self.args, ctx.shell()
        state = await self._state(shell)
        if a.state == "absent":
            return await self._remove(shell, state)
        want = self._wanted(state, await self._key(ctx))
        if not self._differences(state, want)[0]:
            return Outcome(ok=True, summary=f"Beszel agent {want.version} is up to date")
        done: list[str] = []
        outputs: dict[str, Any] = {"version": want.version, "arch": want.arch, "done": done}
        try:
            await self._converge(ctx, shell, state, want, done, outputs)
        except StepError as exc:
            error = str(exc)
            return Outcome(
                ok=False, changed=bool(done), summary=error, outputs=outputs, error=error
            )
        summary = f"Beszel agent {want.version}: {', '.join(done)}"
        return Outcome(ok=True, changed=True, summary=summary, outputs=outputs)

    async def _converge(
        self,
        ctx: ActionContext,
        shell: HostShell,
        state: HostState,
        want: Wanted,
        done: list[str],
        outputs: dict[str, Any],
    ) -> None:
        """The host primitives, composed: binary, user, unit and token files, the service."""
        from ..clients.primitives import converge_unit, ensure_user

        a = self.args
        new_binary = state.version != want.version
        if new_binary:
            outputs["sha256"] = await self._binary(ctx, shell, want)
            done.append(f"binary {want.version}")
        if not state.user:  # as Beszel's installer: in the docker and disk groups
            await ensure_user(shell, a.user, groups_if_present=("docker", "disk"), become=a.become)
            done.append(f"user {a.user}")
        files = await self._files(shell, state, want)
        done += files
        done += await converge_unit(
            shell, SERVICE, state.service, reload=bool(files), restart=new_binary, become=a.become
        )

    async def _binary(self, ctx: ActionContext, shell: HostShell, want: Wanted) -> str:
        """Download, verify and install the binary; its archive's sha256."""
        from ..clients.primitives import tail

        ctx.log(f"downloading Beszel agent {want.version} ({want.arch})")
        result = await self._install_binary(shell, want)
        if result.rc != 0:
            raise StepError(f"Beszel agent {want.version} not installed: {tail(result)}")
        return result.stdout.strip()

    async def _files(self, shell: HostShell, state: HostState, want: Wanted) -> list[str]:
        """The unit file and the token's EnvironmentFile as wanted; what changed."""
        from ..clients.primitives import put_file, remove_files

        a = self.args
        done = []
        if state.unit != want.unit:
            await put_file(
                shell, self.unit_path, want.unit.encode(), mode=0o644, become=a.become, parents=True
            )
            done.append("unit file")
        env_same = want.env is not None and state.env == (
            "0600",
            hashlib.sha256(want.env.encode()).hexdigest(),
        )
        if want.env is not None and not env_same:
            await put_file(
                shell, a.env_file, want.env.encode(), mode=0o600, become=a.become, parents=True
            )
            done.append("token file")
        elif want.env is None and state.env is not None:
            await remove_files(shell, [a.env_file], become=a.become)
            done.append("token file removed")
        return done

    async def _install_binary(self, shell: HostShell, want: Wanted) -> CommandResult:
        """Download, verify and install the binary, on the host. Nothing is installed unless
        the archive's sha256 is the one the release's checksums file names."""
        a = self.args
        base = f"{a.release_url.rstrip('/')}/v{want.version}"
        archive = f"beszel-agent_linux_{want.arch}.tar.gz"
        sums = f"beszel_{want.version}_checksums.txt"
        q = shlex.quote
        script = f"""set -u
url={q(f"{base}/{archive}")}; sums_url={q(f"{base}/{sums}")}; file={q(archive)}
dir={q(a.install_dir)}; bin={q(self.binary)}
tmp=$(mktemp -d) || exit 20
trap 'rm -rf "$tmp"' EXIT
fetch() {{
  if command -v curl >/dev/null 2>&1; then curl -fsSL --connect-timeout 20 --retry 2 -o "$2" "$1"
  elif command -v wget >/dev/null 2>&1; then wget -q -T 20 -O "$2" "$1"
  else echo "neither curl nor wget is installed" >&2; return 127; fi
}}
fetch "$sums_url" "$tmp/sums" || {{ echo "cannot download $sums_url" >&2; exit 21; }}
want=$(awk -v n="$file" '$2 == n || $2 == "*" n {{ print $1; exit }}' "$tmp/sums")
if [ ${{#want}} -ne 64 ] || [ -n "$(printf '%s' "$want" | tr -d 0-9a-fA-F)" ]; then
  echo "no sha256 for $file in $sums_url" >&2; exit 22
fi
fetch "$url" "$tmp/$file" || {{ echo "cannot download $url" >&2; exit 21; }}
got=$(sha256sum "$tmp/$file" | cut -d ' ' -f 1)
if [ "$got" != "$want" ]; then
  echo "sha256 mismatch: $file is $got, $sums_url says $want: refused" >&2; exit 23
fi
tar -xzf "$tmp/$file" -C "$tmp" beszel-agent >/dev/null 2>&1 && [ -f "$tmp/beszel-agent" ] &&
  [ ! -L "$tmp/beszel-agent" ] && [ -s "$tmp/beszel-agent" ] || {{
  echo "$file holds no beszel-agent" >&2; exit 24; }}
mkdir -p "$dir" && chmod 755 "$dir" || exit 25
stage=$(mktemp "$dir/.beszel-agent.XXXXXX") || exit 25
if cp "$tmp/beszel-agent" "$stage" && chmod 755 "$stage" && mv -f "$stage" "$bin"; then
  echo "$got"
else rm -f "$stage"; exit 25; fi"""
        return await shell.run(self._sh(script), timeout=self.args.timeout)

    async def _remove(self, shell: HostShell, state: HostState) -> Outcome:
        from ..clients.primitives import remove_directory, remove_unit, remove_user

        change = self._absent_change(state)
        if change.kind is ChangeKind.NONE:
            return Outcome(ok=True, summary=change.summary)
        a = self.args
        try:
            await remove_unit(
                shell,
                SERVICE,
                state.service,
                [self.unit_path, a.env_file],
                reload=state.unit is not None,
                become=a.become,
            )
            await remove_directory(shell, a.install_dir, become=a.become)
            if state.user:
                await remove_user(shell, a.user, become=a.become)
        except StepError as exc:
            return Outcome(ok=False, changed=True, summary=str(exc), error=str(exc))
        return Outcome(ok=True, changed=True, summary=change.summary)


_KEY_MARK = "ssh-ed25519 KEY-KNOWN-AFTER-APPLY"


def _unit_value(value: str) -> str:
    """A value inside `Environment="NAME=..."`: quotes and backslashes escaped, % doubled (a
    specifier otherwise)."""
    if "\n" in value or "\r" in value:
        raise OpskitError("a value for the agent's unit file spans lines")
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")


def _without_key(unit: str) -> str:
    return "\n".join(line for line in unit.splitlines() if not line.startswith('Environment="KEY='))


def _diff(have: str, want: str, key_known: bool) -> list[str]:
    if not key_known:
        have, want = _without_key(have) + "\n", _without_key(want) + "\n"
    lines = difflib.unified_diff(
        have.splitlines(), want.splitlines(), "installed", "wanted", lineterm="", n=1
    )
    return list(lines)[:80]
