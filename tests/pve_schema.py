"""The official PVE API schema (../shared/pve/apischema.json), to hold requests against."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any


def _find_schema() -> Path:
    """../shared/pve/apischema.json beside the repository (CI puts shared/ there)."""
    here = Path(__file__).resolve().parent
    for directory in here.parents:
        candidate = directory / "shared" / "pve" / "apischema.json"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("shared/pve/apischema.json not found beside the repository")


SCHEMA = _find_schema()


@cache
def index() -> dict[str, dict[str, Any]]:
    """path template -> {METHOD: info}."""
    found: dict[str, dict[str, Any]] = {}

    def walk(nodes: list[dict[str, Any]]) -> None:
        for node in nodes:
            if "path" in node:
                found[node["path"]] = node.get("info", {})
            walk(node.get("children", []))

    walk(json.loads(SCHEMA.read_text()))
    return found


@cache
def _patterns() -> list[tuple[re.Pattern[str], str]]:
    out = []
    for template in index():
        regex = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        out.append((re.compile(regex), template))
    # the most specific (fewest placeholders) first
    out.sort(key=lambda p: p[1].count("{"))
    return out


def template_of(path: str) -> str | None:
    for regex, template in _patterns():
        if regex.match(path):
            return template
    return None


def _type_ok(spec: dict[str, Any], value: Any) -> str | None:
    kind = spec.get("type")
    text = value if isinstance(value, str) else None
    if kind == "integer":
        try:
            number = int(value)
        except (TypeError, ValueError):
            return f"{value!r} is not an integer"
        if "minimum" in spec and number < spec["minimum"]:
            return f"{number} < minimum {spec['minimum']}"
        if "maximum" in spec and number > spec["maximum"]:
            return f"{number} > maximum {spec['maximum']}"
    elif kind == "boolean":
        if str(value) not in ("0", "1", "true", "false", "True", "False"):
            return f"{value!r} is not a boolean"
    elif kind == "array":
        if not isinstance(value, list | tuple):
            return f"{value!r} is not an array"
    elif kind == "string" and text is not None:
        if "enum" in spec and text not in spec["enum"]:
            return f"{text!r} not in {spec['enum']}"
        if "pattern" in spec and not re.fullmatch(spec["pattern"], text):
            return f"{text!r} does not match {spec['pattern']}"
        if "maxLength" in spec and len(text) > spec["maxLength"]:
            return f"{text!r} longer than {spec['maxLength']}"
    return None


def problems(method: str, path: str, params: dict[str, Any] | None = None) -> list[str]:
    """Why a request would not conform to the schema ([] when it does)."""
    template = template_of(path)
    if template is None:
        return [f"{path}: no such path in the API"]
    info = index()[template].get(method)
    if info is None:
        return [f"{method} {template}: no such method (has {sorted(index()[template])})"]
    props = (info.get("parameters") or {}).get("properties", {})
    out = []
    for name, value in (params or {}).items():
        if value is None:
            continue
        spec = props.get(name)
        if spec is None:
            out.append(f"{method} {template}: no parameter {name!r}")
            continue
        wrong = _type_ok(spec, value)
        if wrong:
            out.append(f"{method} {template}: {name}: {wrong}")
    return out
