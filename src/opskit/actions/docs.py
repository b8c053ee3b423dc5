"""What `opskit explain` tells of a step kind: its arguments, risk, outputs and an example.

Everything comes from the kind's class (docstring, `Args`, `outputs`, `example`), so a kind
another package registers is explained the same way as opskit's own.
"""

from __future__ import annotations

import inspect
import json
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from ..errors import UsageError
from ..model import suggest_kind
from ..model.common import parse_duration
from ..render import SecretArg, Shell
from .base import Action

# What a risk means for a runbook's author (README: Gates).
RISK_MEANING: dict[str, str] = {
    "read": "It only looks, so it may also run among a runbook's preflight and verify checks.",
    "change": "It changes the world; it asks before it runs only when its step has `confirm`.",
    "destructive": "It asks at a gate before it runs; where nobody can answer, a run needs"
    " --yes or --approve with the plan's fingerprint.",
}
# What the engine registers for every step besides the kind's own outputs.
COMMON_OUTPUTS: dict[str, str] = {
    "ok": "whether the step succeeded (bool)",
    "changed": "whether it changed anything (bool)",
    "summary": "its one-line summary (str)",
}
# When the kind's own outputs are there: the engine applies a changing step only when the
# world still needs the change when its turn comes.
OUTPUTS_NOTE = (
    "A step that does not run (false `when`, a declined gate) registers nothing; a changing"
    " step that finds nothing left to change when it runs registers only ok and changed; a"
    " failed step may lack the outputs it got no answer for; a step with `loop` registers"
    " `results`, one entry per item."
)


@dataclass(frozen=True)
class ArgumentDoc:
    """One argument as a runbook writes it."""

    name: str
    type: str
    required: bool
    default: Any  # JSON; None when required
    description: str
    secret: bool = False  # must be '{{ secrets.NAME }}'
    shell: bool = False  # {{ values }} in it are shell-quoted
    fields: tuple[ArgumentDoc, ...] = ()  # a mapping's own keys (tls: ca, fingerprint, ...)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "required": self.required,
            "description": self.description,
            "secret": self.secret,
            "shell": self.shell,
        }
        if not self.required:
            out["default"] = self.default
        if self.fields:
            out["fields"] = [f.as_dict() for f in self.fields]
        return out


@dataclass(frozen=True)
class KindDoc:
    """A step kind, explained."""

    name: str
    risk: str
    summary: str
    description: str
    arguments: tuple[ArgumentDoc, ...]
    outputs: dict[str, str]
    example: str
    source: str  # module:Class, where a reader finds the code
    common_outputs: dict[str, str] = field(default_factory=lambda: dict(COMMON_OUTPUTS))

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "risk": self.risk,
            "risk_meaning": RISK_MEANING.get(self.risk, ""),
            "summary": self.summary,
            "description": self.description,
            "arguments": [a.as_dict() for a in self.arguments],
            "outputs": dict(self.outputs),
            "common_outputs": dict(self.common_outputs),
            "outputs_note": OUTPUTS_NOTE,
            "example": self.example,
            "source": self.source,
        }


def explain(name: str, catalog: Mapping[str, type[Action[Any]]]) -> KindDoc:
    """The kind called `name`; an unknown name is a usage error that suggests the likely one."""
    if name not in catalog:
        meant = suggest_kind(name, catalog)  # the loader's suggestion for an unknown kind
        hint = f" (did you mean {meant!r}?)" if meant else ""
        raise UsageError(f"unknown step kind {name!r}{hint}; `opskit explain` lists the kinds")
    return describe(catalog[name])


def every_kind(catalog: Mapping[str, type[Action[Any]]]) -> list[KindDoc]:
    return [describe(catalog[name]) for name in sorted(catalog)]


def describe(cls: type[Action[Any]]) -> KindDoc:
    summary, description = _docstring(cls)
    return KindDoc(
        name=cls.name,
        risk=cls.risk.value,
        summary=summary,
        description=description,
        arguments=tuple(_arguments(cls.Args)),
        outputs=dict(cls.outputs),
        example=inspect.cleandoc(cls.example) + "\n" if cls.example.strip() else "",
        source=f"{cls.__module__}:{cls.__qualname__}",
    )


def _docstring(cls: type[Any]) -> tuple[str, str]:
    """(first paragraph as one line, the rest) of the class's own docstring."""
    text = inspect.cleandoc(cls.__dict__.get("__doc__") or "")
    first, _, rest = text.partition("\n\n")
    return " ".join(first.split()), rest.strip()


def _arguments(model: type[BaseModel]) -> list[ArgumentDoc]:
    """The model's fields, the required ones first, else in the order the model declares."""
    out = []
    for name, info in model.model_fields.items():
        nested = _model_of(info.annotation)
        required = info.is_required()
        default = None if required else _default(info)
        out.append(
            ArgumentDoc(
                name=info.alias or name,
                type=_field_type(info, default, required),
                required=required,
                default=default,
                description=" ".join((info.description or "").split()),
                secret=_marked(info, SecretArg),
                shell=_marked(info, Shell),
                fields=tuple(_arguments(nested)) if nested is not None else (),
            )
        )
    return sorted(out, key=lambda a: not a.required)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
    return annotation if is_model else None


def _marked(info: FieldInfo, marker: type) -> bool:
    return any(isinstance(m, marker) for m in info.metadata)


def _default(info: FieldInfo) -> Any:
    """The default as JSON, as a runbook would write it (a duration as '30s')."""
    from pydantic import TypeAdapter
    from pydantic_core import to_jsonable_python

    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    hint: Any = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    try:
        return TypeAdapter(hint).dump_python(value, mode="json")
    except Exception:  # a type pydantic cannot serialize alone: its plain JSON
        return to_jsonable_python(value, fallback=str)


def _field_type(info: FieldInfo, default: Any, required: bool) -> str:
    parts = _type_parts(info.annotation, tuple(info.metadata))
    # `str | null` with default null says "optional" twice: the default says it.
    if not required and default is None and len(parts) > 1:
        parts = [p for p in parts if p != "null"]
    return " | ".join(parts)


def _type_parts(annotation: Any, metadata: tuple[Any, ...] = ()) -> list[str]:
    """The type as a reader of YAML thinks of it, split at its unions."""
    if any(getattr(m, "func", None) is parse_duration for m in metadata):
        return ["duration"]
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Annotated:
        return _type_parts(args[0], tuple(args[1:]))
    if origin is Union or origin is types.UnionType:
        return list(dict.fromkeys(p for a in args for p in _type_parts(a)))
    if origin is Literal:
        return [v if isinstance(v, str) else json.dumps(v) for v in args]
    if annotation is type(None):
        return ["null"]
    if annotation is Any:
        return ["any"]
    if origin in (list, tuple, set, frozenset):
        return [f"list[{' | '.join(_type_parts(args[0])) if args else 'any'}]"]
    if origin is dict or annotation is dict:
        value = " | ".join(_type_parts(args[1])) if len(args) == 2 else "any"
        return [f"dict[str, {value}]"]
    if _model_of(annotation) is not None:
        return ["mapping"]
    return [getattr(annotation, "__name__", str(annotation))]
