"""JSON Schemas of the runbook and inventory files, so editors complete and check the YAML."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .model import Inventory, Runbook, Step

SCHEMA_DRAFT = "https://json-schema.org/draft/2020-12/schema"
# An action argument may be a template whose value is only known per target.
TEMPLATE = {"type": "string", "pattern": r"\{\{|\{%", "description": "a Jinja2 template"}


def _templatable(schema: dict[str, Any]) -> dict[str, Any]:
    """Every property of an Args schema also accepts a template string."""
    for name, prop in list(schema.get("properties", {}).items()):
        keep = {k: prop.pop(k) for k in ("title", "description", "default") if k in prop}
        schema["properties"][name] = {**keep, "anyOf": [prop, TEMPLATE]}
    return schema


def inventory_schema() -> dict[str, Any]:
    schema = Inventory.model_json_schema(by_alias=True)
    schema["$schema"] = SCHEMA_DRAFT
    schema["title"] = "opskit inventory"
    return schema


def runbook_schema(actions: Mapping[str, Any]) -> dict[str, Any]:
    """The runbook schema, with a step as its common keys plus exactly one action key."""
    schema = Runbook.model_json_schema(by_alias=True)
    defs = schema.setdefault("$defs", {})
    step = defs.pop("Step")
    common = {k: v for k, v in step["properties"].items() if k not in ("action", "args")}
    variants = []
    for name in sorted(actions):
        args_schema = actions[name].Args.model_json_schema(
            by_alias=True, ref_template="#/$defs/{model}"
        )
        for key, value in args_schema.pop("$defs", {}).items():
            defs.setdefault(key, _templatable(value))
        _templatable(args_schema)
        defs_name = "Args_" + name.replace(".", "_")
        defs[defs_name] = args_schema
        variants.append(
            {
                "title": name,
                "type": "object",
                "properties": {**common, name: {"$ref": f"#/$defs/{defs_name}"}},
                "required": ["id", name],
                "additionalProperties": False,
            }
        )
    defs["Step"] = {"description": Step.__doc__, "oneOf": variants}
    # A bare string stays a schedule: its OnCalendar expression (see model.schedule).
    schedule = schema["properties"]["schedule"]
    schedule["anyOf"].insert(0, {"type": "string", "description": "an OnCalendar expression"})
    # `window: 2h` is a window of that duration from each elapse of `on:` (see model.schedule).
    window = defs["Schedule"]["properties"]["window"]
    window["anyOf"].insert(
        0, {"type": ["string", "number"], "description": "its duration alone, e.g. 2h"}
    )
    schema["$schema"] = SCHEMA_DRAFT
    schema["title"] = "opskit runbook"
    return schema
