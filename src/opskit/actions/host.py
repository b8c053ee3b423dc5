"""Host state through pyinfra: host.file, host.directory, host.user, host.packages,
host.download, host.service.

Each step is one pyinfra operation (files.put, files.directory, server.user, apt.packages,
systemd.service, and opskit's verified download), run through opskit's own SSH connection by the
bridge in `clients.pyinfra_connector`: pyinfra decides what is already true and which commands
would change the rest. A probe lists those commands without running them (pyinfra's facts are
its only reads); apply runs them. Plans show what changes: a unified diff for a file's content,
before and after for the rest.

pyinfra is imported only inside probe and apply: validating a runbook never loads it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, TypeVar

from pydantic import BeforeValidator, Field, field_validator, model_validator

from ..errors import OpskitError, RenderError
from ..model import Change, ChangeKind, Duration, Outcome, Risk
from ..secrets import has_marker, marker_pattern, replace_markers
from .base import Action, ActionArgs, ActionContext

if TYPE_CHECKING:
    from ..clients.pyinfra_connector import OpReport, PyinfraHost

T = TypeVar("T")

NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"
DIFF_LIMIT = 256 * 1024  # bytes of a file shown as a diff; larger or binary: checksums
HIDDEN = "‹hidden: this line may hold a secret›"


# Every host.* kind registers the commands its pyinfra operation ran.
COMMANDS_RAN = "the commands pyinfra ran, none when nothing changed (list[str])"


class HostArgs(ActionArgs):
    become: bool = Field(False, description="run through sudo as root (-n: never prompt)")


def _absolute(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"must be an absolute path, not {value!r}")
    return value


async def on_host(ctx: ActionContext, args: HostArgs, work: Callable[[PyinfraHost], T]) -> T:
    """Run `work` against the target through the pyinfra bridge."""
    from ..clients.pyinfra_connector import run_pyinfra

    data: dict[str, Any] = {}
    if args.become:
        data["_sudo"] = True
    shell = ctx.shell()
    env = ctx.connections.transports.ssh.host_env if ctx.connections else ()
    if env:
        data["_env"] = dict(env)
    return await run_pyinfra(shell, work, host_data=data)


def _mode(value: Any) -> str | None:
    """pyinfra's modes are octal digits as an int (644); opskit shows '0644'."""
    if value is None or value is False:
        return None
    return str(value).zfill(4)


def _outcome(report: OpReport, what: str, done: str, outputs: dict[str, Any]) -> Outcome:
    outputs = {**outputs, "commands": report.commands}
    changed = report.executed and bool(report.commands)
    if not report.ok:
        return Outcome(
            ok=False,
            changed=changed,
            summary=f"{what}: failed",
            outputs=outputs,
            error=f"{what}: {report.error}",
        )
    return Outcome(
        ok=True, changed=changed, summary=done if changed else f"{what}: no change", outputs=outputs
    )


def _meta_changes(
    info: dict[str, Any], mode: str | None, owner: str | None, group: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(before, after) of mode, owner and group where the step names them and they differ."""
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    have = {"mode": _mode(info.get("mode")), "owner": info.get("user"), "group": info.get("group")}
    for key, want in (("mode", _mode(mode)), ("owner", owner), ("group", group)):
        if want is not None and have[key] != want:
            before[key], after[key] = have[key], want
    return before, after


def _changes_text(before: dict[str, Any], after: dict[str, Any]) -> str:
    return ", ".join(f"{k} {before[k]} -> {after[k]}" for k in after)


# --- host.file ---------------------------------------------------------------------------------


class FileArgs(HostArgs):
    path: str = Field(..., description="absolute path")
    content: str | None = Field(None, description="the file's content")
    template: str | None = Field(
        None, description="a Jinja2 template in the project's deploy/ directory"
    )
    vars: dict[str, Any] = Field(
        default_factory=dict,
        description="names the template sees besides `target`, e.g. params: '{{ params }}'",
    )
    mode: str = Field("0644", pattern=r"^0?[0-7]{3,4}$", description="octal file mode")
    owner: str | None = Field(None, pattern=NAME, description="the owning user")
    group: str | None = Field(None, pattern=NAME, description="the owning group")
    create_dirs: bool = Field(True, description="create missing parent directories")
    sensitive: bool = Field(
        False, description="the file holds secrets: hide lines the new content drops from diffs"
    )

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, value: str) -> str:
        return _absolute(value)

    @model_validator(mode="after")
    def _one_source(self) -> FileArgs:
        if (self.content is None) == (self.template is None):
            raise ValueError("give content or template (one of them)")
        return self


class FilePlan:
    """What the probe learnt, built in the bridge's thread."""

    def __init__(self) -> None:
        self.info: dict[str, Any] | None = None
        self.remote: bytes | None = None
        self.report: OpReport | None = None
        self.secrets_matched = False


class HostFile(Action[FileArgs]):
    """A file's content (text or a template from deploy/), mode and owner: pyinfra's files.put.

    The plan shows a unified diff. Secrets in the content show as their names. A plan made
    without them (a review without credentials) cannot compare their values: a file that
    matches but for them plans no change, and the run compares the real values."""

    name: ClassVar[str] = "host.file"
    risk: ClassVar[Risk] = Risk.CHANGE
    Args = FileArgs
    outputs: ClassVar[dict[str, str]] = {
        "path": "the file's path (str)",
        "size": "its size in bytes (int)",
        "sha256": "the SHA-256 of its content (hex str); left out when it holds a secret",
        "commands": COMMANDS_RAN,
    }
    example: ClassVar[str] = """
        targets: vm:110
        steps:
          - id: unit
            host.file:
              path: /etc/systemd/system/proxmoxmcp.service
              template: deploy/proxmoxmcp/proxmoxmcp.service   # sees target and vars
              mode: "0644"
              owner: root
              group: root
            register: unit            # later: {{ unit.changed }}, {{ unit.sha256 }}
          - id: motd
            host.file: {path: /etc/motd, content: "{{ target.name }}: managed by opskit\\n"}
        """

    def describe(self) -> str:
        return f"file {self.args.path}"

    def _data(self, ctx: ActionContext) -> bytes:
        a = self.args
        if a.content is not None:
            return a.content.encode()
        from ..render import render_text

        assert a.template is not None
        path = ctx.path(a.template).resolve()
        deploy = (ctx.root / "deploy").resolve() if ctx.root is not None else None
        if deploy is None or not path.is_relative_to(deploy):
            raise OpskitError(
                f"host.file template {a.template}: templates live in the project's deploy/"
                " directory"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise OpskitError(f"cannot read template {a.template}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise OpskitError(f"template {a.template} is not UTF-8 text") from None
        context = {"target": ctx.target.model_dump(mode="json", by_alias=True), **a.vars}
        try:
            return render_text(text, context).encode()
        except RenderError as exc:
            raise RenderError(f"template {a.template}: {exc}") from None

    def _work(self, data: bytes) -> Callable[[PyinfraHost], FilePlan]:
        a = self.args

        def work(h: PyinfraHost) -> FilePlan:
            from pyinfra.facts.files import File
            from pyinfra.operations import files

            from ..clients.pyinfra_connector import FileBytes, stream
            from ..errors import HostStateError

            plan = FilePlan()
            info = h.fact(File, path=a.path)
            if info is False:
                raise HostStateError(f"{h.link.name}: {a.path} exists and is not a file")
            plan.info = dict(info) if info else None
            payload = data
            if h.read_only and info and int(info.get("size") or 0) <= DIFF_LIMIT:
                plan.remote = h.fact(FileBytes, path=a.path)
                if plan.remote is not None and _matches_but_secrets(data, plan.remote):
                    payload = plan.remote  # the same but for secret values: compared at apply
                    plan.secrets_matched = True
            h.link.upload_mode = int(a.mode, 8)  # content and mode arrive together
            plan.report = h.operation(
                files.put,
                src=stream(payload),
                dest=a.path,
                user=a.owner,
                group=a.group,
                mode=a.mode,
                create_remote_dir=a.create_dirs,
            )
            return plan

        return work

    def _sensitive(self, data: bytes) -> bool:
        """Whether the content holds a secret: named so (`sensitive`), a secret's placeholder
        (raw or JSON-escaped) while planning or its value while running, or a template given one
        through `vars` (a filter may have changed how it looks)."""
        from ..secrets import redactor

        text = data.decode("utf-8", "replace")
        given = json.dumps(self.args.vars, default=str, ensure_ascii=False)
        return self.args.sensitive or any(
            _has_secret(t) or redactor.redact(t) != t for t in (text, given)
        )

    async def probe(self, ctx: ActionContext) -> Change:
        a = self.args
        data = self._data(ctx)
        plan = await on_host(ctx, a, self._work(data))
        assert plan.report is not None
        if not plan.report.changes:
            note = " (secret values are compared when applied)" if plan.secrets_matched else ""
            return Change.none(f"{a.path} is up to date{note}")
        after_text = _shown_text(data)
        sensitive = self._sensitive(data)
        if plan.info is None:
            after: Any = after_text if after_text is not None else _digest(data)
            owner = f", owner {a.owner}" if a.owner else ""
            what = f"{len(data)} bytes, mode {_mode(a.mode)}{owner}"
            return Change(kind=ChangeKind.CREATE, summary=f"create {a.path} ({what})", after=after)
        meta_before, meta_after = _meta_changes(plan.info, a.mode, a.owner, a.group)
        parts = _changes_text(meta_before, meta_after)
        if not plan.report.uploads:
            return Change(
                kind=ChangeKind.UPDATE,
                summary=f"update {a.path} ({parts})",
                before=meta_before,
                after=meta_after,
            )
        what = "content" + (f", {parts}" if parts else "")
        before_text = _shown_text(plan.remote) if plan.remote is not None else None
        if after_text is None or before_text is None:
            before = (
                _digest(plan.remote) if plan.remote is not None else {"size": plan.info.get("size")}
            )
            return Change(
                kind=ChangeKind.UPDATE,
                summary=f"update {a.path} ({what})",
                before=before,
                after=_digest(data),
            )
        known = not _has_secret(data.decode("utf-8", "replace"))  # values, not placeholders
        before_shown = _mask(before_text, after_text, sensitive, known)
        return Change(
            kind=ChangeKind.UPDATE,
            summary=f"update {a.path} ({what})",
            before=before_shown,
            after=after_text,
        )

    async def apply(self, ctx: ActionContext) -> Outcome:
        a = self.args
        data = self._data(ctx)
        plan = await on_host(ctx, a, self._work(data))
        assert plan.report is not None
        outputs: dict[str, Any] = {"path": a.path, "size": len(data)}
        if not self._sensitive(data):  # a checksum of a secret would let one guess it offline
            outputs["sha256"] = hashlib.sha256(data).hexdigest()
        return _outcome(
            plan.report, f"file {a.path}", f"wrote {a.path} ({len(data)} bytes)", outputs
        )


def _has_secret(text: str) -> bool:
    return has_marker(text)


def _digest(data: bytes) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _shown_text(data: bytes) -> str | None:
    """The content as a plan may show it: text, secrets redacted; None if binary or large."""
    from ..secrets import redactor

    if len(data) > DIFF_LIMIT:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return redactor.redact(text)


def _matches_but_secrets(wanted: bytes, remote: bytes) -> bool:
    """While planning, secrets are placeholders: does the file differ only where they are?"""
    try:
        want, have = wanted.decode("utf-8"), remote.decode("utf-8")
    except UnicodeDecodeError:
        return False
    if not has_marker(want):
        return False
    return marker_pattern(want).fullmatch(have) is not None


def _mask(before: str, after: str, sensitive: bool, values_known: bool) -> str:
    """The old content for a diff. In a file that holds secrets an old line may hold an old
    secret, so it shows only when the new content has it too (secrets redacted), when its key
    (`port=`, `"port":`) is one the new content sets without a secret, or when it is shaped like
    a new secret line: then as that line, its value "an old secret value" when the new values
    are known and differ; unknown (planning without the secrets), compared when applied.
    Other lines are hidden."""
    if not sensitive:
        return before
    after_lines = after.splitlines()
    plain = set(after_lines)
    secret_lines = [(marker_pattern(line), line) for line in after_lines if has_marker(line)]
    secret_keys = {_key(line) for _, line in secret_lines} - {None}
    plain_keys = {_key(line) for line in after_lines if not has_marker(line)} - {None}
    out = []
    for line in before.splitlines(keepends=True):
        body = line.rstrip("\n")
        end = line[len(body) :]
        if body in plain:
            out.append(line)
            continue
        for pattern, shown in secret_lines:
            if pattern.fullmatch(body):
                old = replace_markers(shown, "‹an old secret value›") if values_known else shown
                out.append(old + end)
                break
        else:
            key = _key(body)
            safe = key is not None and key in plain_keys and key not in secret_keys
            out.append(line if safe else HIDDEN + end)
    return "".join(out)


_KEY = re.compile(r"\s*[^\s=:]+\s*[=:]")


def _key(line: str) -> str | None:
    found = _KEY.match(line)
    return found.group(0).strip() if found else None


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
        info, report = await on_host(ctx, a, self._work)
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
        existing, reports = await on_host(ctx, a, self._work)
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
        installed, report = await on_host(ctx, a, self._work(update=False))
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

        from ..clients.pyinfra_connector import verified_download

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
        info, digest, report = await on_host(ctx, a, self._work)
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
        running, enabled, report = await on_host(ctx, a, self._work)
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
