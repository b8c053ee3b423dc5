"""A runbook: typed params, a target selector, secret references and ordered steps."""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from .common import (
    CountOrPercent,
    Duration,
    Identifier,
    Name,
    SecretRef,
    StrictModel,
    did_you_mean,
    user_error,
)
from .inventory import Selector
from .schedule import Schedule, schedule_from

ParamType = Literal["str", "int", "float", "bool", "list", "duration"]
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


class Param(StrictModel):
    """A typed runbook parameter; without a default it is required."""

    type: ParamType = "str"
    default: Any = None
    description: str = ""
    choices: list[Any] | None = None
    pattern: str | None = Field(None, description="regex a str value must match in full")
    min: float | None = None
    max: float | None = None

    @property
    def required(self) -> bool:
        return "default" not in self.model_fields_set

    @model_validator(mode="after")
    def _default_is_valid(self) -> Param:
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise user_error("pattern", f"bad pattern {self.pattern!r}: {exc}") from None
        if not self.required and self.default is not None:
            try:
                self.default = self.coerce(self.default)
            except ValueError as exc:
                raise user_error("param_default", f"default: {exc}") from None
        return self

    def coerce(self, value: Any) -> Any:
        """The value as this param's type, checked; raises ValueError with a user message."""
        from .common import parse_duration

        typed: Any
        if self.type == "str":
            if isinstance(value, bool | list | dict) or value is None:
                raise ValueError(f"expected a string, got {value!r}")
            typed = str(value)
        elif self.type == "int":
            if isinstance(value, bool):
                raise ValueError(f"expected an integer, got {value!r}")
            try:
                typed = int(str(value).strip(), 10) if isinstance(value, str) else int(value)
            except (TypeError, ValueError):
                raise ValueError(f"expected an integer, got {value!r}") from None
            if isinstance(value, float) and value != typed:
                raise ValueError(f"expected an integer, got {value!r}")
        elif self.type == "float":
            if isinstance(value, bool):
                raise ValueError(f"expected a number, got {value!r}")
            try:
                typed = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"expected a number, got {value!r}") from None
        elif self.type == "bool":
            if isinstance(value, bool):
                typed = value
            elif str(value).lower() in _TRUE:
                typed = True
            elif str(value).lower() in _FALSE:
                typed = False
            else:
                raise ValueError(f"expected true or false, got {value!r}")
        elif self.type == "list":
            if isinstance(value, list):
                typed = value
            elif isinstance(value, str):
                typed = [v.strip() for v in value.split(",") if v.strip()]
            else:
                raise ValueError(f"expected a list, got {value!r}")
        else:  # duration
            try:
                typed = parse_duration(value)
            except Exception:
                raise ValueError(f"bad duration {value!r} (e.g. 30s, 5m, 1h30m)") from None
        if self.choices is not None and typed not in self.choices:
            options = ", ".join(repr(c) for c in self.choices)
            raise ValueError(f"{typed!r} is not one of {options}")
        if (
            self.pattern is not None
            and isinstance(typed, str)
            and not re.fullmatch(self.pattern, typed)
        ):
            raise ValueError(f"{typed!r} does not match {self.pattern!r}")
        if isinstance(typed, int | float) and not isinstance(typed, bool):
            if self.min is not None and typed < self.min:
                raise ValueError(f"{typed!r} is below the minimum {self.min:g}")
            if self.max is not None and typed > self.max:
                raise ValueError(f"{typed!r} is above the maximum {self.max:g}")
        return typed


class Step(StrictModel):
    """One step: an id, exactly one action key with its arguments, and how to run it."""

    id: Name
    action: str = Field(..., description="the action kind (given as the step's action key)")
    args: dict[str, Any] = Field(default_factory=dict)
    description: str = ""
    when: str | bool | None = Field(None, description="Jinja2 expression; skip the step if false")
    confirm: str | bool | None = Field(None, description="ask before running (a question, or true)")
    timeout: Duration | None = None
    retries: int = Field(0, ge=0, le=1000)
    interval: Duration = 2.0
    backoff: float = Field(1.0, ge=1.0, le=10.0, description="multiply the interval each retry")
    on_failure: Literal["abort", "continue"] | list[Name] = "abort"
    register_as: Identifier | None = Field(None, alias="register")
    serial: CountOrPercent | None = None
    batch: CountOrPercent | None = None
    loop: str | list[Any] | None = Field(
        None, description="run once per item (`item` in templates)"
    )

    _extra_keys: ClassVar[frozenset[str]] = frozenset()
    # Keys the YAML spells differently: the action is its own key, not 'action'/'args'.
    _internal: ClassVar[frozenset[str]] = frozenset({"action", "args"})

    @classmethod
    def step_keys(cls) -> list[str]:
        return [k for k in cls.known_keys() if k not in cls._internal]

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, Mapping):
            return data
        # The kinds' names: a Catalog (a kind is looked up, not every package's listed) or any
        # collection of names; None checks no kind.
        actions: Collection[str] | None = (info.context or {}).get("actions")
        if "action" in data:
            # The explicit form, `action: KIND` with `args: {...}`, as a dumped step has.
            known = cls.key_set()
            for key in data:
                if not isinstance(key, str) or key not in known:
                    raise user_error(
                        "unknown_key",
                        f"unknown key {key!r}{did_you_mean(str(key), known)}",
                        key=key,
                    )
            kind = data["action"]
            if actions is not None and (not isinstance(kind, str) or kind not in actions):
                raise user_error(
                    "unknown_action",
                    f"unknown action kind {kind!r}{_kind_hint(str(kind), actions)}",
                    key="action",
                    value=True,
                )
            return data
        fields = cls.step_keys()
        extras = []
        for key in data:
            if not isinstance(key, str):
                raise user_error(
                    "key_type", f"keys must be strings, not {type(key).__name__}", key=key
                )
            if key not in fields:
                extras.append(key)
        if not extras:
            raise user_error(
                "no_action", "step has no action: add one key naming its kind, e.g. 'check.http:'"
            )
        if actions is not None:
            chosen = [k for k in extras if k in actions]
            stray = [k for k in extras if k not in actions]
            if len(chosen) > 1:
                raise user_error(
                    "two_actions",
                    f"a step has exactly one action; found {chosen[0]!r} and {chosen[1]!r}",
                    key=chosen[1],
                )
            if stray:
                key = stray[0]
                field_hint = did_you_mean(key, fields)
                # With no kind beside it, `shell:` or `service:` is a kind under another tool's
                # name (even though `service` is spelt close to `serial`), `retires:` a
                # misspelt field, and `check.htp:` a misspelt kind.
                meant = None
                if not chosen:
                    meant = suggest_kind(key, actions, spelling=False)
                    if meant is None and (_looks_like_action(key) or not field_hint):
                        meant = suggest_kind(key, actions)
                if meant is None and (chosen or not _looks_like_action(key)):
                    raise user_error("unknown_key", f"unknown key {key!r}{field_hint}", key=key)
                hint = f" (did you mean {meant!r}?)" if meant else field_hint
                raise user_error("unknown_action", f"unknown action kind {key!r}{hint}", key=key)
            action = chosen[0]
        else:
            if len(extras) > 1:
                raise user_error(
                    "two_actions",
                    f"a step has exactly one action; found {extras[0]!r} and {extras[1]!r}",
                    key=extras[1],
                )
            action = extras[0]
        out = {k: v for k, v in data.items() if k != action}
        args = data[action]
        if args is None:
            args = {}
        if not isinstance(args, Mapping):
            raise user_error(
                "args_type",
                f"the arguments of {action!r} must be a mapping (use {{}} for none)",
                key=action,
                value=True,
            )
        out["action"] = action
        out["args"] = dict(args)
        return out

    @model_validator(mode="after")
    def _one_rollout(self) -> Step:
        if self.serial is not None and self.batch is not None:
            raise user_error("rollout", "give 'serial' or 'batch', not both", key="batch")
        return self


def _looks_like_action(key: str) -> bool:
    return "." in key


def _kind_hint(name: str, actions: Iterable[str]) -> str:
    meant = suggest_kind(name, actions)
    return f" (did you mean {meant!r}?)" if meant else ""


# What a step kind is called elsewhere (Ansible modules, pyinfra operations, shell habit),
# mapped to the opskit kind doing that job. Keys are lower case, `-` written `_`.
KIND_SYNONYMS: dict[str, str] = {
    **dict.fromkeys(("shell", "command", "cmd", "run", "exec", "raw", "sh", "bash"), "ssh.run"),
    "script": "ssh.script",
    **dict.fromkeys(("upload", "scp", "sftp", "put_file"), "ssh.upload"),
    **dict.fromkeys(
        ("copy", "template", "file", "files", "put", "lineinfile", "blockinfile"), "host.file"
    ),
    **dict.fromkeys(("directory", "dir", "mkdir", "folder"), "host.directory"),
    **dict.fromkeys(("user", "users", "useradd"), "host.user"),
    **dict.fromkeys(
        ("apt", "apt_get", "package", "packages", "pkg", "dpkg", "deb"), "host.packages"
    ),
    **dict.fromkeys(
        ("service", "services", "systemd", "systemd_service", "systemctl", "unit"),
        "host.service",
    ),
    **dict.fromkeys(("download", "get_url", "wget", "curl", "fetch"), "host.download"),
    **dict.fromkeys(("pip", "pipx", "venv", "virtualenv"), "python.venv"),
    **dict.fromkeys(("http", "https", "uri", "url", "healthcheck"), "check.http"),
    **dict.fromkeys(("tcp", "port", "wait_for", "socket"), "check.tcp"),
    **dict.fromkeys(("sleep", "pause", "delay"), "wait"),
    "ping": "check.ssh",
    **dict.fromkeys(("start", "poweron", "power_on", "boot"), "proxmox.vm.start"),
    **dict.fromkeys(("shutdown", "poweroff", "power_off"), "proxmox.vm.shutdown"),
    **dict.fromkeys(("reboot", "restart"), "proxmox.vm.reboot"),
    **dict.fromkeys(("stop", "halt", "kill"), "proxmox.vm.stop"),
    **dict.fromkeys(("snapshot", "snap"), "proxmox.vm.snapshot"),
    "clone": "proxmox.vm.clone",
    "rollback": "proxmox.vm.rollback",
    **dict.fromkeys(("guest_exec", "agent_exec", "qga"), "proxmox.agent.exec"),
}


def suggest_kind(name: str, known: Iterable[str], *, spelling: bool = True) -> str | None:
    """The known step kind a user most likely meant by `name`, or None.

    First what other tools call it (KIND_SYNONYMS), by the whole name, then by each dotted
    part, the first one first: `ssh.command` and `ansible.builtin.shell` are `ssh.run`,
    `systemd.service` is `host.service`, `apt` is `host.packages`. Otherwise (unless
    `spelling` is false) the closest spelling: `check.htp` is `check.http`. Only kinds in
    `known` are suggested.

    The one suggestion for an unknown kind (the loader's error; meant to serve `opskit
    explain` too): pure, stdlib only, the known kinds given by the caller.
    """
    kinds = set(known)
    word = name.strip().lower().replace("-", "_")
    parts = word.split(".")
    for candidate in (word, *parts):
        meant = KIND_SYNONYMS.get(candidate)
        if meant in kinds:
            return meant
    if not spelling:
        return None
    close = difflib.get_close_matches(name, sorted(kinds), n=1, cutoff=0.6)
    return close[0] if close else None


SECTIONS = ("preflight", "steps", "verify", "rescue", "always", "handlers")


class Runbook(StrictModel):
    name: Name
    description: str = ""
    params: dict[Identifier, Param] = Field(default_factory=dict)
    targets: Selector
    secrets: dict[Identifier, SecretRef] = Field(default_factory=dict)
    vars: dict[Identifier, Any] = Field(default_factory=dict)
    schedule: Schedule | None = Field(
        None,
        description="when it runs on its own: an OnCalendar expression, or a block with on:,"
        " window:, approve:, notify:, randomized_delay:, timeout:, lock_wait:",
    )
    concurrency: int = Field(10, ge=1, le=10_000, description="targets in parallel")
    serial: CountOrPercent | None = Field(None, description="rolling: targets per batch")
    batch: CountOrPercent | None = Field(None, description="rolling: batch size, e.g. 25%")
    max_fail: CountOrPercent | None = Field(None, description="failures that stop the rollout")
    preflight: list[Step] = Field(default_factory=list, description="checks before any change")
    steps: list[Step] = Field(..., min_length=1)
    verify: list[Step] = Field(default_factory=list, description="checks after the steps")
    rescue: list[Step] = Field(
        default_factory=list,
        description="run when a step or verify check failed (`failure` says which and why);"
        " the target still fails",
    )
    always: list[Step] = Field(default_factory=list, description="run even after a failure")
    handlers: list[Step] = Field(
        default_factory=list, description="steps run only when an on_failure names them"
    )

    @field_validator("schedule", mode="before")
    @classmethod
    def _bare_schedule(cls, value: Any) -> Any:
        return schedule_from(value)

    @model_validator(mode="after")
    def _one_rollout(self) -> Runbook:
        if self.serial is not None and self.batch is not None:
            raise user_error("rollout", "give 'serial' or 'batch', not both", key="batch")
        return self

    def all_steps(self) -> list[tuple[str, int, Step]]:
        """(section, index, step) in execution order."""
        return [
            (section, i, step)
            for section in SECTIONS
            for i, step in enumerate(getattr(self, section))
        ]
