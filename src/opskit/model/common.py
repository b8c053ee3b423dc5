"""Shared building blocks of opskit's models: strict base, durations, names, suggestions."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError


def user_error(kind: str, message: str, **ctx: Any) -> PydanticCustomError:
    """A validation error with a finished message; `ctx` carries data for the loader (e.g. key)."""
    # PydanticCustomError fills '{name}' from its context; prefixed keys never clash with text.
    return PydanticCustomError(kind, message, {f"opskit_{k}": v for k, v in ctx.items()} or None)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class StrictModel(BaseModel):
    """A model whose unknown keys are errors that name the closest known key."""

    # Built on first validation, not at import: a command pays only for the models it uses.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, defer_build=True)

    # Keys a subclass accepts besides its fields (none by default).
    _extra_keys: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def known_keys(cls) -> list[str]:
        return sorted(cls.key_set())

    @classmethod
    def key_set(cls) -> frozenset[str]:
        """Every key the model accepts: its fields (by alias) and its extra keys. Computed once
        per class: it is asked on every validation, thousands of times in a long run."""
        found = _KEY_SETS.get(cls)
        if found is None:
            keys = set(cls._extra_keys)
            for name, field in cls.model_fields.items():
                keys.add(field.alias or name)
            found = _KEY_SETS[cls] = frozenset(keys)
        return found

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            known = cls.key_set()
            for key in data:
                if not isinstance(key, str):
                    raise user_error(
                        "key_type", f"keys must be strings, not {type(key).__name__}", key=key
                    )
                if key not in known:
                    raise user_error(
                        "unknown_key", f"unknown key {key!r}{did_you_mean(key, known)}", key=key
                    )
        return data


# A model's fields are fixed when its class is made; keyed by the class itself, not inherited.
_KEY_SETS: dict[type[StrictModel], frozenset[str]] = {}


# --- durations -------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_HINT = "use seconds as a number, or 500ms, 30s, 5m, 1h30m"


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string like '30s', '5m', '1h30m', '250ms'."""
    if isinstance(value, bool):
        raise _bad_duration(value)
    if isinstance(value, int | float):
        if value < 0:
            raise user_error("duration", "a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text and _DURATION_PART.sub("", text) == "":
            return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
        try:
            number = float(text)
        except ValueError:
            pass
        else:
            if number >= 0:
                return number
    raise _bad_duration(value)


def _bad_duration(value: Any) -> PydanticCustomError:
    return user_error("duration", f"bad duration {value!r} ({DURATION_HINT})")


def format_duration(seconds: float) -> str:
    if seconds < 1 and seconds != 0:
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    if whole != seconds:
        return f"{seconds:g}s"
    parts: list[str] = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size or (unit == "s" and not parts):
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(parts)


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": r"^(\d+(\.\d+)?(ms|s|m|h|d))+$"},
            ],
            "description": "seconds, or a duration like 500ms, 30s, 5m, 1h30m",
        }
    ),
]

# --- counts and percentages (serial, batch, max_fail) -------------------------------------


def parse_count_or_percent(value: Any) -> int | str:
    """An int >= 0, or a percentage string '25%' (kept as a string)."""
    if isinstance(value, bool):
        raise user_error("count", "expected a count or a percentage like '25%'")
    if isinstance(value, int):
        if value < 0:
            raise user_error("count", "a count cannot be negative")
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("%"):
            try:
                pct = float(text[:-1])
            except ValueError:
                pct = -1
            if 0 < pct <= 100:
                return f"{pct:g}%"
            raise user_error("count", f"bad percentage {value!r} (between 0% and 100%)")
        if text.isdigit():
            return int(text)
    raise user_error("count", f"expected a count or a percentage like '25%', got {value!r}")


CountOrPercent = Annotated[
    int | str,
    BeforeValidator(parse_count_or_percent),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^\d+(\.\d+)?%$"},
            ]
        }
    ),
]


def resolve_count(value: int | str, total: int) -> int:
    """A count, or a percentage of `total` rounded up (at least 1 when total > 0)."""
    if isinstance(value, int):
        return value
    pct = float(value.rstrip("%"))
    return max(1, -(-int(pct * total) // 100)) if total else 0


# --- names -------------------------------------------------------------------------------

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
IDENT_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"

Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=128)]
Identifier = Annotated[str, Field(pattern=IDENT_PATTERN, max_length=64)]

# A secret reference: env:NAME, file:PATH or cmd:COMMAND (resolved late, see opskit.secrets).
SECRET_REF_PATTERN = r"^(optional:)?(env:[A-Za-z_][A-Za-z0-9_]*|file:.+|cmd:.+)$"


def _check_secret_ref(value: Any) -> Any:
    if isinstance(value, str) and not re.match(SECRET_REF_PATTERN, value, re.S):
        raise user_error(
            "secret_ref",
            f"bad secret reference {value[:40]!r} (use env:NAME, file:PATH or cmd:COMMAND,"
            " optionally prefixed with optional:)",
        )
    return value


SecretRef = Annotated[
    str,
    BeforeValidator(_check_secret_ref),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": SECRET_REF_PATTERN,
            "description": "env:NAME, file:PATH or cmd:COMMAND; resolved only when used;"
            " `optional:` before it gives null (not an error) when the variable or file is missing",
        }
    ),
]
