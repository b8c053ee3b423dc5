"""host.file: a file's content, mode and owner on a host, through pyinfra's files.put, and the
plan's unified diff of it, secrets hidden.

The upload itself goes the one way files reach a host (clients.primitives.put_file, through the
pyinfra connector). A plan made without the secrets a file holds compares it but for them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, field_validator, model_validator

from ..errors import OpskitError, RenderError
from ..model import Change, ChangeKind, Outcome, Risk
from ..secrets import has_marker, marker_pattern, replace_markers
from .base import Action, ActionContext
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

if TYPE_CHECKING:
    from ..clients.pyinfra_connector import OpReport, PyinfraHost

DIFF_LIMIT = 256 * 1024  # bytes of a file shown as a diff; larger or binary: checksums
HIDDEN = "‹hidden: this line may hold a secret›"


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
            from pyinfra.facts.files import File, Sha1File
            from pyinfra.operations import files

            from ..clients.pyinfra_connector import stream
            from ..clients.pyinfra_ops import FileBytes
            from ..errors import HostStateError

            plan = FilePlan()
            info = h.fact(File, path=a.path)
            if info is False:
                raise HostStateError(f"{h.link.name}: {a.path} exists and is not a file")
            plan.info = dict(info) if info else None
            payload = data
            if h.read_only and info and int(info.get("size") or 0) <= DIFF_LIMIT:
                # The content for a diff only when it differs: the checksum files.put asks
                # anyway says so first (pyinfra decides on SHA-1; asked once, see the bridge).
                same = (
                    not has_marker(data.decode("utf-8", "replace"))
                    and h.fact(Sha1File, path=a.path) == hashlib.sha1(data).hexdigest()
                )
                plan.remote = None if same else h.fact(FileBytes, path=a.path)
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
        # the content is what the work depends on besides its arguments and the host
        plan = await on_host(ctx, a, self._work(data), inputs=hashlib.sha256(data).hexdigest())
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
