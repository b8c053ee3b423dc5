"""The homelab inventory: Proxmox clusters, guests, Tailscale hosts, groups, services."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from .common import Duration, Name, SecretRef, StrictModel, did_you_mean, user_error

SHA256_FINGERPRINT = r"^([0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2}$|^[0-9A-Fa-f]{64}$"
LOCAL = "local"  # the controller itself, as a target
# What `kind:` selects: a Proxmox guest's kind, or a Tailscale host that is not a guest.
TARGET_KINDS = ("qemu", "lxc", "host")


class TLS(StrictModel):
    """How to trust an HTTPS endpoint: system CAs (default), a CA file, or a pinned certificate."""

    ca: str | None = Field(None, description="path to a CA bundle (PEM)")
    fingerprint: str | None = Field(
        None,
        pattern=SHA256_FINGERPRINT,
        description="pinned SHA-256 fingerprint of the server certificate (AA:BB:...)",
    )
    insecure: bool = Field(False, description="turn verification off (warned on every run)")

    @model_validator(mode="after")
    def _one_way(self) -> TLS:
        if self.insecure and (self.ca or self.fingerprint):
            raise user_error(
                "tls", "'insecure: true' cannot be combined with 'ca' or 'fingerprint'"
            )
        return self


class ProxmoxCluster(StrictModel):
    api_url: str = Field(
        ...,
        pattern=r"^https?://[^/\s]+(/.*)?$",
        description="e.g. https://pve1.example.ts.net:8006/api2/json",
    )
    nodes: list[Name] = Field(default_factory=list)
    token_id: str | None = Field(
        None, pattern=r"^[^@\s]+@[^!\s]+![A-Za-z0-9_.-]+$", description="USER@REALM!TOKENID"
    )
    token: SecretRef | None = Field(None, description="the API token secret, as a reference")
    user: str | None = Field(None, description="USER@REALM for ticket login")
    password: SecretRef | None = None
    tls: TLS = Field(default_factory=TLS)
    timeout: Duration = 30.0
    unverified: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _auth(self) -> ProxmoxCluster:
        if (self.token_id is None) != (self.token is None):
            raise user_error("auth", "'token_id' and 'token' go together: give both or neither")
        if (self.user is None) != (self.password is None):
            raise user_error("auth", "'user' and 'password' go together: give both or neither")
        return self


class HealthCheck(StrictModel):
    """How to tell that a service is healthy, from the controller."""

    check: Literal["http", "tcp", "mcp"] = "http"
    url: str | None = Field(None, description="full URL; otherwise built from scheme/port/path")
    scheme: Literal["http", "https"] = "http"
    port: int | None = Field(None, ge=1, le=65535, description="defaults to the service's port")
    path: str | None = Field(
        None, description="default /, for mcp /mcp (with `via: openapi` the proxy's root)"
    )
    method: Literal["GET", "HEAD", "POST"] = "GET"
    expect: int | list[int] = 200
    json_match: dict[str, Any] | None = Field(
        None, alias="json", description="dotted JSON fields that must equal these values"
    )
    contains: str | None = None
    banner: str | None = Field(None, description="for tcp: a regex the first line must match")
    tls: TLS = Field(default_factory=TLS)
    # check: mcp (check.mcp): the handshake over streamable HTTP, or an OpenAPI proxy
    via: Literal["mcp", "openapi"] = Field(
        "mcp", description="for mcp: the MCP handshake, or an OpenAPI proxy (mcpo) in front"
    )
    bearer: SecretRef | None = Field(None, description="for mcp: the bearer key, a reference")
    min_tools: int | None = Field(None, ge=0, description="for mcp: at least this many tools")
    tools: list[str] = Field(default_factory=list, description="for mcp: tools that must exist")

    def path_or_default(self) -> str:
        if self.path is not None:
            return self.path
        return "/mcp" if self.check == "mcp" and self.via == "mcp" else "/"


Protocol = Literal["http", "https", "websocket", "ssh", "tcp", "mcp"]


class Service(StrictModel):
    description: str = ""
    port: int | None = Field(None, ge=1, le=65535)
    protocols: list[Protocol] = Field(default_factory=lambda: list[Protocol](["http"]))
    behind: str | None = Field(None, description="name of the reverse proxy service in front")
    url: str | None = Field(None, description="public URL (e.g. through Traefik)")
    health: HealthCheck | None = None
    monitor: str | None = Field(
        None,
        description="the Uptime Kuma monitor that watches it, by name (default: a monitor named"
        " like the service, or whose URL is the service's)",
    )
    unverified: list[str] = Field(default_factory=list)


class UptimeKuma(StrictModel):
    """The Uptime Kuma instance that watches the homelab (its API is Socket.IO)."""

    url: str = Field(..., pattern=r"^https?://[^/\s]+/?$", description="e.g. https://uptime.lan")
    username: str | None = Field(None, description="the login (default: a stored token alone)")
    password: SecretRef | None = Field(None, description="its password, as a secret reference")
    totp: SecretRef | None = Field(
        None, description="a command or file giving the current 2FA code, as a secret reference"
    )
    token: SecretRef | None = Field(
        None, description="a stored login token (the JWT a login answers), as a secret reference"
    )
    tls: TLS = Field(default_factory=TLS)
    timeout: Duration = 15.0
    unverified: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _login(self) -> UptimeKuma:
        if self.token is None and (self.username is None or self.password is None):
            raise user_error("uptime_kuma", "give 'username' and 'password', or a 'token'")
        return self


class SSH(StrictModel):
    user: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    host_key: str | None = Field(
        None,
        pattern=r"^(ssh-(ed25519|rsa)|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]+$",
        description="pinned public host key, 'TYPE BASE64'",
    )

    @field_validator("host_key")
    @classmethod
    def _key_blob(cls, value: str | None) -> str | None:
        """The base64 must hold a key of the type it names (as OpenSSH's blob starts)."""
        if value is None:
            return value
        import base64
        import binascii

        kind, _, data = value.partition(" ")
        try:
            blob = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{data[:20]}... is not valid base64") from None
        size = int.from_bytes(blob[:4], "big") if len(blob) >= 4 else -1
        if blob[4 : 4 + size] != kind.encode() or len(blob) <= 4 + size:
            raise ValueError(
                f"not a {kind} public key (copy the line from"
                " /etc/ssh/ssh_host_*_key.pub or ssh-keyscan)"
            )
        return value

    jump: str | None = Field(None, description="jump host, [user@]host[:port]")
    password: SecretRef | None = Field(None, description="login password, as a secret reference")
    identity: str | None = Field(
        None, description="private key file for this host (default: ~/.ssh/config and agent)"
    )


class _HostBase(StrictModel):
    name: Name
    address: str | None = Field(None, description="IP or DNS name; default the Tailscale name")
    tailscale: str | None = Field(None, description="MagicDNS name, e.g. ai.tail1234.ts.net")
    description: str = ""
    ssh: SSH = Field(default_factory=SSH)
    tags: list[Name] = Field(default_factory=list)
    groups: list[Name] = Field(default_factory=list)
    services: dict[Name, Service] = Field(default_factory=dict)
    vars: dict[str, Any] = Field(default_factory=dict)
    unverified: list[str] = Field(
        default_factory=list,
        description="fields that only the live world knows; placeholders until inventory sync",
    )

    @field_validator("tailscale")
    @classmethod
    def _strip_dot(cls, value: str | None) -> str | None:
        return value.rstrip(".") if value else value


class Guest(_HostBase):
    """A Proxmox guest: a QEMU VM or an LXC container."""

    vmid: int = Field(..., ge=100, le=999_999_999)
    node: Name | None = None
    kind: Literal["qemu", "lxc"] = "qemu"
    cluster: Name | None = Field(None, description="defaults to the only cluster")


class Host(_HostBase):
    """A machine on the tailnet that is not a Proxmox guest (a node, a laptop, a VPS)."""

    os: str | None = None


class Group(StrictModel):
    description: str = ""
    members: list[str] = Field(default_factory=list, description="target selectors")
    vars: dict[str, Any] = Field(default_factory=dict)


class Defaults(StrictModel):
    ssh: SSH = Field(default_factory=SSH, description="unset user/port: ~/.ssh/config decides")


class LabMark(StrictModel):
    """On the lab's own inventory (written by `opskit lab up`): where it may be acted on."""

    name: str = Field(..., description="the lab's name ($OPSKIT_LAB_NAME, default olab)")
    netns: str = Field(..., description="the lab's controller network namespace")


class Inventory(StrictModel):
    version: Literal[1] = 1
    lab: LabMark | None = Field(
        None, description="set only on a lab's inventory: opskit acts on it inside that lab alone"
    )
    tailnet: str | None = Field(None, description="the tailnet's MagicDNS suffix")
    defaults: Defaults = Field(default_factory=Defaults)
    proxmox: dict[Name, ProxmoxCluster] = Field(default_factory=dict)
    uptime_kuma: UptimeKuma | None = Field(
        None, description="the Uptime Kuma that watches the services (maintenance windows, checks)"
    )
    guests: list[Guest] = Field(default_factory=list)
    hosts: list[Host] = Field(default_factory=list)
    groups: dict[Name, Group] = Field(default_factory=dict)
    vars: dict[str, Any] = Field(default_factory=dict)
    unverified: list[str] = Field(default_factory=list)

    # ----- lookups ---------------------------------------------------------------------------

    def all_hosts(self) -> list[Guest | Host]:
        return [*self.guests, *self.hosts]

    def by_name(self) -> dict[str, Guest | Host]:
        return {h.name: h for h in self.all_hosts()}

    def group_names(self) -> set[str]:
        names = set(self.groups)
        for h in self.all_hosts():
            names.update(h.groups)
        return names

    def tag_names(self) -> set[str]:
        return {t for h in self.all_hosts() for t in h.tags}

    def groups_of(self, host: Guest | Host) -> list[str]:
        """The groups a host belongs to, declared on the host or by a group's members."""
        found = list(host.groups)
        for name, group in self.groups.items():
            if (
                name not in found
                and group.members
                and host.name in self.select(group.members, frozenset({name}))
            ):
                found.append(name)
        return found

    def targets(
        self, selector: str | list[str], limit: str | list[str] | None = None
    ) -> list[Target]:
        """Resolved targets for a selector (narrowed by `limit`), in inventory order."""
        names = self.select(selector)
        if limit is not None:
            allowed = set(self.select(limit))
            names = [n for n in names if n in allowed]
        hosts = self.by_name()
        return [self.target(hosts[n]) if n != LOCAL else local_target() for n in names]

    def target(self, host: Guest | Host) -> Target:
        groups = self.groups_of(host)
        merged: dict[str, Any] = dict(self.vars)
        for g in groups:
            if g in self.groups:
                merged.update(self.groups[g].vars)
        merged.update(host.vars)
        d = self.defaults.ssh
        guest = host if isinstance(host, Guest) else None
        return Target(
            name=host.name,
            kind=guest.kind if guest else "host",
            vmid=guest.vmid if guest else None,
            node=guest.node if guest else None,
            cluster=self._cluster_of(guest) if guest else None,
            address=host.address or host.tailscale or host.name,
            tailscale=host.tailscale,
            ssh_user=host.ssh.user or d.user,
            ssh_port=host.ssh.port or d.port,
            ssh_password=host.ssh.password or d.password,
            ssh_identity=host.ssh.identity or d.identity,
            host_key=host.ssh.host_key,
            jump=host.ssh.jump or d.jump,
            tags=list(host.tags),
            groups=groups,
            services=dict(host.services),
            vars=merged,
            unverified=list(host.unverified),
        )

    def _cluster_of(self, guest: Guest) -> str | None:
        if guest.cluster:
            return guest.cluster
        return next(iter(self.proxmox)) if len(self.proxmox) == 1 else None

    def select(self, selector: str | list[str], _seen: frozenset[str] = frozenset()) -> list[str]:
        """Names of the hosts matching a selector, in inventory order. Raises SelectorError."""
        items = _split_selector(selector)
        include = [i for i in items if not i.startswith("!")]
        exclude = [i[1:] for i in items if i.startswith("!")]
        chosen: set[str] = set()
        if include:
            for item in include:
                chosen |= self._match(item, _seen)
        else:
            chosen = {h.name for h in self.all_hosts()}
        for item in exclude:
            chosen -= self._match(item, _seen)
        ordered = [LOCAL] if LOCAL in chosen else []
        return ordered + [h.name for h in self.all_hosts() if h.name in chosen]

    def _match(self, item: str, seen: frozenset[str]) -> set[str]:
        hosts = self.all_hosts()
        if item == "all":
            return {h.name for h in hosts}
        if item == LOCAL:
            return {LOCAL}
        kind, colon, value = item.partition(":")
        if not colon:
            names = {h.name for h in hosts}
            if item in names:
                return {item}
            raise SelectorError(f"unknown target {item!r}{did_you_mean(item, names | {LOCAL})}")
        if kind == "vm":
            try:
                vmid = int(value)
            except ValueError:
                raise SelectorError(f"bad vmid in {item!r}") from None
            found = {g.name for g in self.guests if g.vmid == vmid}
            if not found:
                known = ", ".join(str(g.vmid) for g in self.guests)
                raise SelectorError(f"no guest with vmid {vmid} in the inventory (known: {known})")
            return found
        if kind == "tag":
            found = {h.name for h in hosts if value in h.tags}
            if not found:
                raise SelectorError(
                    f"no host has tag {value!r}{did_you_mean(value, self.tag_names())}"
                )
            return found
        if kind == "group":
            if value not in self.group_names():
                raise SelectorError(
                    f"unknown group {value!r}{did_you_mean(value, self.group_names())}"
                )
            if value in seen:
                raise SelectorError(f"group {value!r} includes itself")
            found = {h.name for h in hosts if value in h.groups}
            group = self.groups.get(value)
            if group and group.members:
                found |= set(self.select(group.members, seen | {value})) - {LOCAL}
            return found
        if kind == "kind":
            # Every kind `opskit inventory list` shows: a guest's qemu/lxc, or host.
            if value == "host":
                return {h.name for h in self.hosts}
            if value in ("qemu", "lxc"):
                return {g.name for g in self.guests if g.kind == value}
            raise SelectorError(
                f"unknown kind {value!r} in {item!r} (kinds: {', '.join(TARGET_KINDS)})"
                + did_you_mean(value, TARGET_KINDS)
            )
        raise SelectorError(
            f"bad selector {item!r} (use all, local, NAME, vm:ID, tag:X, group:X,"
            " kind:qemu|lxc|host, and !SEL to exclude)"
        )


class Target(StrictModel):
    """One resolved target: what templates see as `target`."""

    name: str
    kind: Literal["qemu", "lxc", "host", "local"]
    vmid: int | None = None
    node: str | None = None
    cluster: str | None = None
    address: str
    tailscale: str | None = None
    ssh_user: str | None = None  # None: ~/.ssh/config, else the local user
    ssh_port: int | None = None  # None: ~/.ssh/config, else 22
    ssh_password: str | None = None  # a secret reference, resolved when connecting
    ssh_identity: str | None = None  # a private key file
    host_key: str | None = None
    jump: str | None = None
    tags: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)
    services: dict[str, Service] = Field(default_factory=dict)
    vars: dict[str, Any] = Field(default_factory=dict)
    unverified: list[str] = Field(default_factory=list)

    def label(self) -> str:
        return f"vm {self.vmid} ({self.name})" if self.vmid is not None else self.name


def local_target() -> Target:
    return Target(name=LOCAL, kind="local", address="127.0.0.1")


class SelectorError(ValueError):
    """A target selector names nothing in the inventory."""


_SELECTOR_SPLIT = re.compile(r"[,\s]+")


def _split_selector(selector: str | list[str]) -> list[str]:
    raw = selector if isinstance(selector, list) else [selector]
    items: list[str] = []
    for part in raw:
        items.extend(p for p in _SELECTOR_SPLIT.split(str(part).strip()) if p)
    if not items:
        raise SelectorError("empty target selector")
    return items


Selector = Annotated[
    str | list[str],
    Field(description="all, local, NAME, vm:ID, tag:X, group:X, kind:qemu|lxc|host; !SEL excludes"),
]
