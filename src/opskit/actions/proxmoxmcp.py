"""ProxmoxMCP-Plus: proxmoxmcp.config, its config.json and its environment file, from the inventory.

config.json gets the Proxmox host, port and API token of the inventory's cluster (the target's,
or the one named), with `verify_ssl` on; the environment file gets PROXMOX_API_KEY and the
service's non-secret variables. Both hold secrets, so both are 0600, written atomically inside a
directory other users cannot enter, and never read back into any output.

The API key is the runbook's secret (`{{ secrets.NAME }}`), the token the inventory's reference,
resolved here as the Proxmox client resolves it. Plans probe with the values that resolve, so the
installed files are compared exactly: a second run plans no change, a rotated key or token plans
an update, naming the key that changed, never a value. A review without the credentials plans
them as known after apply.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from ..errors import OpskitError
from ..model import Change, ChangeKind, Outcome, Risk
from ..render import SECRET
from ..secrets import has_marker
from .base import Action, ActionArgs, ActionContext

_PATH = r"^/[A-Za-z0-9._/-]*[A-Za-z0-9._-]$"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BARE = re.compile(r"^[A-Za-z0-9._~+/=:@,%-]*$")
API_KEY = "PROXMOX_API_KEY"


class ConfigArgs(ActionArgs):
    path: str = Field("/etc/proxmoxmcp/config.json", pattern=_PATH, description="config.json")
    env_file: str = Field(
        "/etc/proxmoxmcp/proxmoxmcp.env",
        pattern=_PATH,
        description="the environment file (PROXMOX_API_KEY and `environment`), root's",
    )
    cluster: str | None = Field(None, description="the inventory's cluster (default: the target's)")
    api_key: Annotated[str, SECRET] = Field(
        ..., description="PROXMOX_API_KEY, the key clients present: '{{ secrets.NAME }}'"
    )
    environment: dict[str, str] = Field(
        default_factory=dict, description="more variables for the environment file (not secrets)"
    )
    settings: dict[str, Any] = Field(
        default_factory=dict, description="merged into config.json (logging, jobs, mcp, ...)"
    )
    verify_ssl: bool = Field(True, description="check the Proxmox certificate (keep it on)")
    owner: str = Field("proxmoxmcp", pattern=r"^[a-z_][a-z0-9_-]*$", description="reads config")
    group: str = Field(
        "proxmoxmcp",
        pattern=r"^[a-z_][a-z0-9_-]*$",
        description="config.json's group, and the group that may enter its directories",
    )
    backup: bool = Field(
        True, description="keep a replaced file as FILE.previous, for a rollback to restore"
    )

    @field_validator("environment")
    @classmethod
    def _names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _ENV_NAME.match(name) or name == API_KEY:
                raise ValueError(f"bad environment variable name {name!r}")
            if "\n" in str(text) or "\r" in str(text):
                raise ValueError(f"{name}: a value cannot span lines")
        return value


@dataclass
class FileState:
    """A file on the host: its digest, mode, owner and text (kept in memory, never shown)."""

    sha256: str
    mode: str
    owner: str
    group: str
    text: str = field(repr=False)


class Config(Action[ConfigArgs]):
    """ProxmoxMCP-Plus's config.json and environment file, from the inventory's cluster."""

    name: ClassVar[str] = "proxmoxmcp.config"
    risk: ClassVar[Risk] = Risk.CHANGE
    Args = ConfigArgs
    outputs: ClassVar[dict[str, str]] = {
        "written": "the files written (list[str])",
        "changes": "what differed: file and keys, never values (list[str])",
    }
    example: ClassVar[str] = """
        targets: vm:110
        secrets:
          api_key: env:PROXMOXMCP_API_KEY
        steps:
          - id: config
            proxmoxmcp.config:
              api_key: "{{ secrets.api_key }}"
              environment: {API_HOST: 0.0.0.0, API_PORT: "8811"}
              settings:
                jobs: {sqlite_path: /var/lib/proxmoxmcp/jobs.sqlite3}
            register: config          # later: {{ config.changes }}
        """

    def describe(self) -> str:
        return f"ProxmoxMCP-Plus config {self.args.path} and {self.args.env_file}"

    # ----- what is wanted --------------------------------------------------------------

    def _cluster(self, ctx: ActionContext) -> tuple[str, str, int, str, str, str]:
        """(cluster, host, port, user, token name, token value) from the inventory."""
        from ..errors import SecretError
        from ..secrets import placeholder, resolve

        inventory = ctx.connections.inventory if ctx.connections else None
        name = self.args.cluster or ctx.target.cluster
        if inventory is None or not inventory.proxmox:
            raise OpskitError("the inventory defines no Proxmox cluster (proxmox: ...)")
        if name is None:
            if len(inventory.proxmox) != 1:
                raise OpskitError("several Proxmox clusters: give the step a cluster")
            name = next(iter(inventory.proxmox))
        spec = inventory.proxmox.get(name)
        if spec is None:
            raise OpskitError(f"unknown Proxmox cluster {name!r}")
        if spec.token_id is None or spec.token is None:
            raise OpskitError(
                f"ProxmoxMCP-Plus logs in with an API token: give cluster {name} token_id"
                " and token in the inventory"
            )
        url = urlsplit(spec.api_url)
        user, _, token_name = spec.token_id.partition("!")
        secret = f"proxmox.{name}.token"
        try:
            value = resolve(secret, spec.token)
        except SecretError:
            if not ctx.read_only:
                raise
            value = placeholder(secret)  # a review without credentials: compared when applied
        port = url.port or (443 if url.scheme == "https" else 80)
        return name, url.hostname or "", port, user, token_name, value

    def _wanted(self, ctx: ActionContext) -> tuple[bytes, bytes]:
        a = self.args
        _, host, port, user, token_name, token = self._cluster(ctx)
        config: dict[str, Any] = {
            "proxmox": {
                "host": host,
                "port": port,
                "verify_ssl": a.verify_ssl,
                "service": "PVE",
                "timeout": 30,
            },
            "auth": {"user": user, "token_name": token_name, "token_value": token},
            "logging": {"level": "INFO"},
        }
        _merge(config, a.settings)
        text = json.dumps(config, indent=2, sort_keys=True) + "\n"
        if "\n" in a.api_key:
            raise OpskitError("the ProxmoxMCP API key spans lines: check its secret")
        variables = {**a.environment, API_KEY: a.api_key}
        env = (
            "# ProxmoxMCP-Plus, written by opskit: secrets, mode 0600, read by systemd only\n"
            + "".join(f"{k}={_env_value(v)}\n" for k, v in sorted(variables.items()))
        )
        return text.encode(), env.encode()

    # ----- what is there ---------------------------------------------------------------

    async def _state(self, ctx: ActionContext, path: str) -> FileState | None:
        p = shlex.quote(path)
        done = await ctx.shell().run(
            f"test -f {p} && stat -c '%a %U %G' {p} && sha256sum {p} && cat {p}", probe=True
        )
        if done.rc != 0:
            return None
        stat, digest, text = [*done.stdout.split("\n", 2), "", ""][:3]
        mode, owner, group = stat.split()
        return FileState(digest.split()[0], mode.zfill(4), owner, group, text)

    def _differences(
        self,
        name: str,
        have: FileState | None,
        want: bytes,
        owner: str,
        group: str,
        keys: Callable[[str, str], list[str]],
        pending: set[str],
    ) -> list[str]:
        if have is None:
            return [f"{name}: new"]
        found = []
        if have.sha256 != hashlib.sha256(want).hexdigest():
            changed = keys(have.text, want.decode())
            # A secret that did not resolve differs from any value: compared when applied.
            changed = [k for k in changed if k not in pending]
            if changed or not pending:
                found.append(f"{name}: {', '.join(changed) if changed else 'content'}")
        if have.mode != "0600":
            found.append(f"{name}: mode {have.mode} -> 0600")
        if (have.owner, have.group) != (owner, group):
            found.append(f"{name}: owner {have.owner}:{have.group} -> {owner}:{group}")
        return found

    async def _plan(self, ctx: ActionContext) -> tuple[list[str], list[str], bytes, bytes, bool]:
        """(what differs, what is compared only when applied, config, environment, new)."""
        a = self.args
        config, env = self._wanted(ctx)
        pending = set()
        if has_marker(config.decode()):
            pending.add("auth.token_value")
        if has_marker(a.api_key):
            pending.add(API_KEY)
        if pending and not ctx.read_only:
            raise OpskitError(f"secrets did not resolve: {', '.join(sorted(pending))}")
        have_config = await self._state(ctx, a.path)
        have_env = await self._state(ctx, a.env_file)
        found = self._differences(
            "config.json", have_config, config, a.owner, a.group, _json_keys, pending
        ) + self._differences("environment", have_env, env, "root", "root", _env_keys, pending)
        fresh = have_config is None and have_env is None
        return found, sorted(pending), config, env, fresh

    async def probe(self, ctx: ActionContext) -> Change:
        found, later, _, _, fresh = await self._plan(ctx)
        a = self.args
        note = f" ({', '.join(later)} compared when applying: not resolved here)" if later else ""
        if fresh:
            return Change(
                kind=ChangeKind.CREATE,
                summary=f"create {a.path} and {a.env_file}",
                after={"changes": found},
            )
        if found:
            # Which keys changed, never their values: both files hold secrets.
            return Change(
                kind=ChangeKind.UPDATE,
                summary="update " + "; ".join(found) + note,
                after={"changes": found},
            )
        if later:
            return Change.unknown(
                f"{a.path} and {a.env_file} match but for {', '.join(later)}: known after apply"
                " (not resolved while planning)"
            )
        return Change.none(f"{a.path} and {a.env_file} are up to date")

    # ----- apply -----------------------------------------------------------------------

    async def apply(self, ctx: ActionContext) -> Outcome:
        a = self.args
        found, _, config, env, _ = await self._plan(ctx)
        if not found:
            return Outcome(ok=True, summary=f"{a.path} and {a.env_file} are up to date")
        from ..clients.primitives import ensure_directory, put_file

        shell = ctx.shell()
        # The files are created before their owner is set: nobody but root and the service's
        # group may enter the directory meanwhile.
        for d in sorted({a.path.rsplit("/", 1)[0], a.env_file.rsplit("/", 1)[0]}):
            await ensure_directory(shell, d, mode=0o750, owner="root", group=a.group)
        written = []
        for path, data, owner, group in (
            (a.path, config, a.owner, a.group),
            (a.env_file, env, "root", "root"),
        ):
            if a.backup:
                # The first replaced version since the last confirmed deploy is what a
                # rollback restores: a later change must not overwrite it.
                p = shlex.quote(path)
                keep = f"if [ -f {p} ] && [ ! -e {p}.previous ]; then cp -p {p} {p}.previous; fi"
                await shell.run(keep)
            await put_file(shell, path, data, mode=0o600, owner=owner, group=group)
            written.append(path)
        return Outcome(
            ok=True,
            changed=True,
            summary=f"wrote {a.path} and {a.env_file}: " + "; ".join(found),
            outputs={"written": written, "changes": found},
        )


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _env_value(value: str) -> str:
    """One value as systemd's EnvironmentFile reads it."""
    text = str(value)
    if _BARE.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _json_keys(have: str, want: str) -> list[str]:
    """Dotted keys whose values differ (secret keys named like any other, values never)."""
    try:
        old, new = _flatten(json.loads(have)), _flatten(json.loads(want))
    except ValueError:
        return ["not JSON"]
    return sorted(k for k in old.keys() | new.keys() if old.get(k, ...) != new.get(k, ...))


def _env_keys(have: str, want: str) -> list[str]:
    def parse(text: str) -> dict[str, str]:
        pairs = (line.partition("=") for line in text.splitlines() if "=" in line)
        return {k.strip(): v for k, _, v in pairs if not k.lstrip().startswith("#")}

    old, new = parse(have), parse(want)
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
