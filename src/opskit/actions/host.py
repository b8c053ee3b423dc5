"""Host state through pyinfra: host.directory, host.user, host.packages, host.download,
host.service (host.file, with its diffs, is host_file.py; what every host kind shares,
host_shared.py).

Each step is one pyinfra operation (files.put, files.directory, server.user, apt.packages,
systemd.service, and opskit's verified download), run through opskit's own SSH connection by the
bridge in `clients.pyinfra_connector`: pyinfra decides what is already true and which commands
would change the rest. A probe lists those commands without running them (pyinfra's facts are
its only reads); apply runs them. Plans show what changes: a unified diff for a file's content,
before and after for the rest.

pyinfra is imported only inside probe and apply: validating a runbook never loads it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import BeforeValidator, Field, field_validator

from ..model import Change, ChangeKind, Duration, Outcome, Risk
from .base import Action, ActionContext

if TYPE_CHECKING:
    from ..clients.pyinfra_connector import OpReport, PyinfraHost

from .host_shared import (
    COMMANDS_RAN,
    NAME,
    HostArgs,
    _absolute,
    _changes_text,
    _meta_changes,
    _mode,
    _outcome,
    on_host,
)

# --- host.directory ----------------------------------------------------------------------------


class DirectoryArgs(HostArgs):
    path: str = Field(..., description="absolute path")
    mode: str | None = Field(None, pattern=r"^0?[0-7]{3,4}$", description="octal mode")
    owner: str | None = Field(None, pattern=NAME, description="the owning user")
    group: str | None = Field(None, pattern=NAME, description="the owning group")
    recursive: bool = Field(False, description="apply owner and mode to everything below")

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, value: str) -> str:
        return _absolute(value)


class HostDirectory(Action[DirectoryArgs]):
    """A directory exists with a mode and owner: pyinfra's files.directory."""

    name: ClassVar[str] = "host.directory"
    risk: ClassVar[Risk] = Risk.CHANGE
    Args = DirectoryArgs
    outputs: ClassVar[dict[str, str]] = {
        "path": "the directory's path (str)",
        "commands": COMMANDS_RAN,
    }
    example: ClassVar[str] = """
        targets: vm:110
        steps:
          - id: dirs
            loop:
              - {path: /opt/proxmoxmcp, mode: "0755", owner: root}
              - {path: /var/lib/proxmoxmcp, mode: "0750", owner: proxmoxmcp}
            host.directory:
              path: "{{ item.path }}"
              mode: "{{ item.mode }}"
              owner: "{{ item.owner }}"
        """

    def describe(self) -> str:
        return f"directory {self.args.path}"

    def _work(self, h: PyinfraHost) -> tuple[dict[str, Any] | None, OpReport]:
        from pyinfra.facts.files import Directory
        from pyinfra.operations import files

        a = self.args
        info = h.fact(Directory, path=a.path)
        report = h.operation(
            files.directory,
            path=a.path,
            user=a.owner,
            group=a.group,
            mode=a.mode,
            recursive=a.recursive,
        )
        return (dict(info) if info else None), report

    async def probe(self, ctx: ActionContext) -> Change:
        a = self.args
        info, report = await on_host(ctx, a, self._work, inputs="")
        if not report.changes:
            return Change.none(f"{a.path} is up to date")
        wanted = {
            k: v
            for k, v in (("mode", _mode(a.mode)), ("owner", a.owner), ("group", a.group))
            if v is not None
        }
        if info is None:
            extra = f" ({_pairs(wanted)})" if wanted else ""
            return Change(
                kind=ChangeKind.CREATE,
                summary=f"create directory {a.path}{extra}",
                after=wanted or {"exists": True},
            )
        before, after = _meta_changes(info, a.mode, a.owner, a.group)
        return Change(
            kind=ChangeKind.UPDATE,
            summary=f"update {a.path} ({_changes_text(before, after)})",
            before=before,
            after=after,
        )

    async def apply(self, ctx: ActionContext) -> Outcome:
        a = self.args
        _, report = await on_host(ctx, a, self._work)
        return _outcome(
            report, f"directory {a.path}", f"directory {a.path} in place", {"path": a.path}
        )


def _pairs(values: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in values.items())


# --- host.user ---------------------------------------------------------------------------------


class UserArgs(HostArgs):
    name: str = Field(
        ..., pattern=r"^[a-z_][a-z0-9_-]*\$?$", max_length=32, description="the login name"
    )
    system: bool = Field(False, description="a system user (useradd -r)")
    home: str | None = Field(None, description="home directory (default /home/NAME)")
    create_home: bool | None = Field(
        None, description="create the home directory (default: yes, except for system users)"
    )
    shell: str | None = Field(None, description="login shell, e.g. /usr/sbin/nologin")
    group: str | None = Field(None, pattern=NAME, description="primary group (must exist)")
    groups: list[Annotated[str, Field(pattern=NAME)]] = Field(
        default_factory=list, description="supplementary groups (must exist)"
    )
    append_groups: bool = Field(False, description="add to the groups, keep the others")
    uid: int | None = Field(None, ge=0, description="numeric user id")
    comment: str | None = Field(None, description="the GECOS field, e.g. a full name")


class HostUser(Action[UserArgs]):
    """A user exists (system users too) with home, shell and groups: pyinfra's server.user."""

    name: ClassVar[str] = "host.user"
    risk: ClassVar[Risk] = Risk.CHANGE
    Args = UserArgs
    outputs: ClassVar[dict[str, str]] = {
        "user": "the login name (str)",
        "commands": COMMANDS_RAN,
    }
    example: ClassVar[str] = """
        targets: vm:110
        steps:
          - id: user
            host.user:
              name: proxmoxmcp
              system: true
              home: /var/lib/proxmoxmcp
              shell: /usr/sbin/nologin
        """

    def describe(self) -> str:
        return f"user {self.args.name}"

    def _work(self, h: PyinfraHost) -> tuple[dict[str, Any] | None, list[OpReport]]:
        from pyinfra.facts.server import Users
        from pyinfra.operations import files, server

        a = self.args
        existing = h.fact(Users).get(a.name)
        create_home = a.create_home if a.create_home is not None else not a.system
        reports = [
            h.operation(
                server.user,
                user=a.name,
                present=True,
                home=a.home,
                shell=a.shell,
                group=a.group,
                groups=a.groups or None,
                append=a.append_groups,
                system=a.system,
                uid=a.uid,
                comment=a.comment,
                create_home=create_home,
                ensure_home=False,
            )
        ]
        home = a.home or (existing or {}).get("home") or f"/home/{a.name}"
        if create_home:
            # pyinfra would chown the home to a group named like the user: use the real one
            group = a.group or (existing or {}).get("group") or a.name
            reports.append(h.operation(files.directory, path=home, user=a.name, group=group))
        found = None
        if existing:
            found = {k: existing.get(k) for k in ("home", "shell", "group", "groups", "uid")}
        return found, reports

    def _wanted(self) -> dict[str, Any]:
        a = self.args
        wanted: dict[str, Any] = {"home": a.home, "shell": a.shell, "group": a.group, "uid": a.uid}
        if a.groups:
            wanted["groups"] = sorted(a.groups)
        return {k: v for k, v in wanted.items() if v is not None}

    async def probe(self, ctx: ActionContext) -> Change:
        a = self.args
        existing, reports = await on_host(ctx, a, self._work, inputs="")
        if not any(r.changes for r in reports):
            return Change.none(f"user {a.name} is up to date")
        wanted = self._wanted()
        if existing is None:
            kind = "system user" if a.system else "user"
            extra = f" ({_pairs(wanted)})" if wanted else ""
            return Change(
                kind=ChangeKind.CREATE,
                summary=f"create {kind} {a.name}{extra}",
                after={"user": a.name, "system": a.system, **wanted},
            )
        have = dict(existing)
        if "groups" in wanted:
            have["groups"] = sorted(have.get("groups") or [])
            if a.append_groups:
                wanted["groups"] = sorted(set(have["groups"]) | set(wanted["groups"]))
        before = {k: have.get(k) for k in wanted if have.get(k) != wanted[k]}
        after = {k: wanted[k] for k in before}
        what = ", ".join(before) or "home directory"
        return Change(
            kind=ChangeKind.UPDATE,
            summary=f"update user {a.name} ({what})",
            before=before,
            after=after,
        )

    async def apply(self, ctx: ActionContext) -> Outcome:
        a = self.args
        _, reports = await on_host(ctx, a, self._work)
        return _merged(reports, f"user {a.name}", f"user {a.name} in place", {"user": a.name})


def _merged(reports: list[OpReport], what: str, done: str, outputs: dict[str, Any]) -> Outcome:
    from ..clients.pyinfra_connector import OpReport

    merged = OpReport(executed=True)
    for report in reports:
        merged.commands += report.commands
        merged.executed = merged.executed and report.executed
        if not report.ok:
            merged.ok, merged.error = False, report.error
    return _outcome(merged, what, done, outputs)


# --- host.packages -----------------------------------------------------------------------------


class PackagesArgs(HostArgs):
    packages: list[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9+.:~=-]*$")]] = Field(
        ..., min_length=1, description="Debian package names (NAME or NAME=VERSION)"
    )
    present: bool = Field(True, description="installed (true) or removed (false)")
    update: bool = Field(False, description="apt-get update before installing")
    cache_time: Duration | None = Field(
        None, description="skip the update when the cache is younger than this"
    )
    no_recommends: bool = Field(False, description="--no-install-recommends")


class HostPackages(Action[PackagesArgs]):
    """Debian packages installed or removed: pyinfra's apt.packages, never prompting.

    The cache update runs only when something is to be installed, so a host that has the
    packages plans no change."""

    name: ClassVar[str] = "host.packages"
    risk: ClassVar[Risk] = Risk.CHANGE
    Args = PackagesArgs
    outputs: ClassVar[dict[str, str]] = {
        "packages": "the packages as given (list[str])",
        "commands": COMMANDS_RAN,
    }
    example: ClassVar[str] = """
        targets: vm:110
        steps:
          - id: tools
            host.packages:
              packages: [curl, python3-venv]
              update: true
              cache_time: 1h          # no apt-get update if the lists are younger
              become: true
        """

    def describe(self) -> str:
        verb = "install" if self.args.present else "remove"
        return f"{verb} {', '.join(self.args.packages)}"

    def _work(self, update: bool) -> Callable[[PyinfraHost], tuple[dict[str, Any], OpReport]]:
        a = self.args

        def work(h: PyinfraHost) -> tuple[dict[str, Any], OpReport]:
            from pyinfra.facts.deb import DebPackages
            from pyinfra.operations import apt

            installed = h.fact(DebPackages) if h.read_only else {}
            report = h.operation(
                apt.packages,
                packages=list(a.packages),
                present=a.present,
                update=update,
                cache_time=int(a.cache_time) if update and a.cache_time else None,
                no_recommends=a.no_recommends,
                # a host without network fails in seconds, not after apt's two minutes
                extra_install_args="-o Acquire::Retries=0 -o Acquire::http::Timeout=20"
                " -o Acquire::https::Timeout=20",
            )
            return dict(installed), report

        return work

    async def probe(self, ctx: ActionContext) -> Change:
        a = self.args
        installed, report = await on_host(ctx, a, self._work(update=False), inputs="no update")
        if not report.changes:
            state = "installed" if a.present else "absent"
            return Change.none(f"{', '.join(a.packages)} {state}")
        names = [p.split("=", 1)[0] for p in a.packages]
        if a.present:
            todo = [n for n in names if n not in installed] or names
            before = {n: _version(installed.get(n)) for n in todo}
            after = {n: _pin(a.packages, n) for n in todo}
            update = " (after apt-get update)" if a.update else ""
            return Change(
                kind=ChangeKind.UPDATE,
                summary=f"install {', '.join(todo)}{update}",
                before=before,
                after=after,
            )
        todo = [n for n in names if n in installed]
        return Change(
            kind=ChangeKind.UPDATE,
            summary=f"remove {', '.join(todo or names)}",
            before={n: _version(installed.get(n)) for n in todo},
            after=dict.fromkeys(todo, "absent"),
        )

    async def apply(self, ctx: ActionContext) -> Outcome:
        a = self.args
        _, report = await on_host(ctx, a, self._work(update=a.update))
        if not report.ok and report.error:
            errors = re.findall(r"\bE: [^\n]*", report.error)  # apt's own error lines
            if errors:
                report.error = "apt-get failed: " + " ".join(e.strip() for e in errors)
        verb = "installed" if a.present else "removed"
        return _outcome(
            report,
            self.describe(),
            f"{verb} {', '.join(a.packages)}",
            {"packages": list(a.packages)},
        )


def _version(versions: Any) -> str:
    if not versions:
        return "absent"
    return ", ".join(sorted(str(v) for v in versions))


def _pin(packages: list[str], name: str) -> str:
    for p in packages:
        base, eq, version = p.partition("=")
        if base == name:
            return version if eq else "present"
    return "present"


# --- host.download -----------------------------------------------------------------------------


class DownloadArgs(HostArgs):
    url: str = Field(..., pattern=r"^(https?|ftp)://\S+$", description="fetched by the host")
    sha256: str = Field(..., pattern=r"^[0-9a-fA-F]{64}$", description="required: checked first")
    dest: str = Field(..., description="absolute path")
    mode: str | None = Field(
        "0644", pattern=r"^0?[0-7]{3,4}$", description="octal file mode (null: leave it)"
    )
    owner: str | None = Field(None, pattern=NAME, description="the owning user")
    group: str | None = Field(None, pattern=NAME, description="the owning group")

    @field_validator("dest")
    @classmethod
    def _absolute_dest(cls, value: str) -> str:
        return _absolute(value)

    @field_validator("sha256")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


class HostDownload(Action[DownloadArgs]):
    """A file from a URL, checked against its sha256 before it replaces anything."""

    name: ClassVar[str] = "host.download"
    risk: ClassVar[Risk] = Risk.CHANGE
    Args = DownloadArgs
    outputs: ClassVar[dict[str, str]] = {
        "path": "where the file is (str)",
        "sha256": "its SHA-256, as given (hex str)",
        "commands": COMMANDS_RAN,
    }
    example: ClassVar[str] = """
        targets: vm:110
        steps:
          - id: tool
            host.download:
              url: https://releases.example.org/tool/1.2.3/tool-linux-amd64.tar.gz
              # the release's published checksum: nothing else is accepted
              sha256: 0f3c5e1a9b2d4c6e8f0a1b3c5d7e9f1a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e
              dest: /opt/tool/tool-1.2.3.tar.gz
        """

    def describe(self) -> str:
        return f"download {self.args.dest}"

    def _work(self, h: PyinfraHost) -> tuple[dict[str, Any] | None, str | None, OpReport]:
        from pyinfra.facts.files import File, Sha256File

        from ..clients.pyinfra_ops import verified_download

        a = self.args
        info = h.fact(File, path=a.dest)
        digest = h.fact(Sha256File, path=a.dest) if info else None
        report = h.operation(
            verified_download,
            src=a.url,
            dest=a.dest,
            sha256sum=a.sha256,
            user=a.owner,
            group=a.group,
            mode=a.mode,
        )
        return (dict(info) if info else None), digest, report

    async def probe(self, ctx: ActionContext) -> Change:
        a = self.args
        info, digest, report = await on_host(ctx, a, self._work, inputs="")
        short = a.sha256[:12]
        if not report.changes:
            return Change.none(f"{a.dest} has sha256 {short}")
        if info is None:
            return Change(
                kind=ChangeKind.CREATE,
                summary=f"download {a.url} to {a.dest} (sha256 {short})",
                after={"sha256": a.sha256, "mode": _mode(a.mode)},
            )
        if digest != a.sha256:
            return Change(
                kind=ChangeKind.UPDATE,
                summary=f"download {a.url} over {a.dest} (sha256 differs)",
                before={"sha256": digest},
                after={"sha256": a.sha256},
            )
        before, after = _meta_changes(info, a.mode, a.owner, a.group)
        return Change(
            kind=ChangeKind.UPDATE,
            summary=f"update {a.dest} ({_changes_text(before, after)})",
            before=before,
            after=after,
        )

    async def apply(self, ctx: ActionContext) -> Outcome:
        a = self.args
        _, _, report = await on_host(ctx, a, self._work)
        if not report.ok and report.error and "sha256 mismatch" in report.error:
            report.error = report.error[report.error.index("sha256 mismatch") :]
        return _outcome(
            report,
            f"download {a.dest}",
            f"downloaded {a.dest}",
            {"path": a.dest, "sha256": a.sha256},
        )


# --- host.service ------------------------------------------------------------------------------


def _restart_item(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() not in ("true", "false", "yes", "no"):
        raise ValueError(
            f"restart_on takes registered results ('{{{{ NAME }}}}' of a step with"
            f" register: NAME) or booleans, not {value!r}"
        )
    return value


RestartItem = Annotated[bool | dict[str, Any], BeforeValidator(_restart_item)]


def _changed(result: Any) -> bool:
    """A registered result changed something: a step's own, or any item's of a loop's."""
    if isinstance(result, bool):
        return result
    if isinstance(result, dict):
        items = result.get("results")
        if isinstance(items, list):
            return any(_changed(item) for item in items)
        return bool(result.get("changed"))
    return False


class ServiceArgs(HostArgs):
    name: str = Field(..., pattern=r"^[A-Za-z0-9:_.@\\-]+$", description="the systemd unit")
    running: bool = Field(True, description="started (true) or stopped (false)")
    enabled: bool | None = Field(True, description="started at boot; null: leave as is")
    restart_on: list[RestartItem] = Field(
        default_factory=list,
        description="restart when any of these earlier steps changed: '{{ NAME }}' of steps"
        " registered as NAME (or booleans)",
    )


class HostService(Action[ServiceArgs]):
    """A systemd unit running and enabled, restarted when earlier steps changed: pyinfra's
    systemd.service. `restart_on` takes the registered results of those steps, so the engine
    decides it from what they really did. Applying a change runs daemon-reload first."""

    name: ClassVar[str] = "host.service"
    risk: ClassVar[Risk] = Risk.CHANGE
    Args = ServiceArgs
    outputs: ClassVar[dict[str, str]] = {
        "unit": "the unit's full name, e.g. proxmoxmcp.service (str)",
        "commands": COMMANDS_RAN,
    }
    example: ClassVar[str] = """
        targets: vm:110
        steps:
          - id: unit
            host.file: {path: /etc/systemd/system/app.service, template: deploy/app.service}
            register: unit
          - id: service
            host.service:
              name: app
              restart_on: ["{{ unit }}"]   # restarted when the unit file changed
        """

    @property
    def unit(self) -> str:
        name = self.args.name
        return name if "." in name.rsplit("@", 1)[-1] else f"{name}.service"

    @property
    def restart(self) -> bool:
        return any(_changed(item) for item in self.args.restart_on)

    def describe(self) -> str:
        return f"service {self.unit}"

    def _work(self, h: PyinfraHost) -> tuple[bool | None, bool | None, OpReport]:
        from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus
        from pyinfra.operations import systemd

        a = self.args
        running = h.fact(SystemdStatus, services=[self.unit]).get(self.unit)
        enabled = h.fact(SystemdEnabled, services=[self.unit]).get(self.unit)
        report = h.operation(
            systemd.service,
            service=self.unit,
            running=a.running,
            restarted=self.restart,
            enabled=a.enabled,
            # with a change to apply, re-read unit files first (an earlier step may have
            # written this one); while planning it would be a change of its own
            daemon_reload=not h.read_only,
        )
        return running, enabled, report

    async def probe(self, ctx: ActionContext) -> Change:
        a = self.args
        running, enabled, report = await on_host(ctx, a, self._work, inputs="")
        if not report.changes:
            return Change.none(
                f"{self.unit} is {'running' if a.running else 'stopped'}"
                + (
                    f" and {'enabled' if a.enabled else 'disabled'}"
                    if a.enabled is not None
                    else ""
                )
            )
        verbs = []
        if a.running and not running:
            verbs.append("start")
        elif not a.running and running:
            verbs.append("stop")
        elif self.restart and running:
            verbs.append("restart")
        if a.enabled is True and not enabled:
            verbs.append("enable")
        elif a.enabled is False and enabled:
            verbs.append("disable")
        why = " (an earlier step changed)" if self.restart else ""
        before: dict[str, Any] = {"running": bool(running)}
        after: dict[str, Any] = {"running": a.running}
        if a.enabled is not None:
            before["enabled"], after["enabled"] = bool(enabled), a.enabled
        if "restart" in verbs:
            before["restarted"], after["restarted"] = False, True
        return Change(
            kind=ChangeKind.UPDATE,
            summary=f"{' and '.join(verbs or ['update'])} {self.unit}{why}",
            before=before,
            after=after,
        )

    async def apply(self, ctx: ActionContext) -> Outcome:
        _, _, report = await on_host(ctx, self.args, self._work)
        done = []
        for command in report.commands:
            words = command.split()
            if words[:1] == ["systemctl"] and len(words) > 1 and words[1] != "daemon-reload":
                done.append(words[1])
        done_text = f"{self.unit}: {', '.join(done) or 'updated'}"
        return _outcome(report, f"service {self.unit}", done_text, {"unit": self.unit})
