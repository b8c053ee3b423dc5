"""Beszel's agent on a host: beszel.agent, pinned to a version, as a systemd service.

The agent is installed the way Beszel's own installer (supplemental/scripts/install-agent.sh)
does it, minus the guessing: a pinned version from a release base URL, the archive checked on the
host against the release's sha256 checksums file before anything is installed, `/opt/beszel-agent`,
a system user `beszel`, and a systemd unit with the installer's sandboxing. The hub's public key is
public: it goes in the unit (`KEY`) as the installer puts it; the agent's `TOKEN` is a secret: it
goes in an EnvironmentFile of mode 0600, never in the unit, whose `Environment=` lines any local
user can read through `systemctl show`. Applying composes the host primitives
(clients.primitives): the user, the two files, the unit.

Secrets arrive as `‹secret:NAME›` placeholders while planning (they are resolved only when a run
starts); what depends on one is reported as known after apply, and the engine probes again with
the values before it applies.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from ..errors import OpskitError, OutcomeUnknown, SecretsPending, StepError
from ..model import Change, ChangeKind, Duration, Outcome, Risk
from ..model.inventory import TLS
from ..render import SECRET
from ..secrets import marked
from .base import Action, ActionArgs, ActionContext
from .beszel import _URL, _VERSION, DEFAULT_PORT, _check_key, _require_known, hub_session

if TYPE_CHECKING:
    from ..clients.primitives import UnitState
    from ..clients.ssh import CommandResult, HostShell

DEFAULT_RELEASES = "https://github.com/henrygd/beszel/releases/download"
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
_TOKEN = re.compile(r"^[A-Za-z0-9._~+/=:@-]+$")  # written to an EnvironmentFile unquoted
_PATH = r"^/[A-Za-z0-9._/-]*[A-Za-z0-9._-]$"


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
        except OutcomeUnknown:
            raise  # a lost answer: whether its change was made is unknown (resume probes)
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
        except OutcomeUnknown:
            raise
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
