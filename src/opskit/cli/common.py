"""Options and helpers shared by the commands."""

from __future__ import annotations

from typing import Any

import click

from ..workspace import Workspace

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")


def workspace(ctx: click.Context) -> Workspace:
    obj: dict[str, Any] = ctx.find_root().obj or {}
    return Workspace.discover(obj.get("runbooks"), obj.get("inventory"))
