"""Options and helpers shared by the commands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..workspace import Workspace
from . import INVENTORY_HELP, RUNBOOKS_HELP, use_lab_state, use_logging

F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")


def workspace(ctx: click.Context) -> Workspace:
    obj: dict[str, Any] = ctx.find_root().obj or {}
    return Workspace.discover(obj.get("runbooks"), obj.get("inventory"))


def _global_option(key: str, flag: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    """The callback of `flag` after the command: the same setting as `opskit FLAG X command`,
    kept where `workspace()` reads it; given before and after with different values, an error."""

    def remember(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if value is None:
            return
        root = ctx.find_root()
        if root.obj is None:
            root.obj = {}
        before = root.obj.get(key)
        if before is not None and Path(before).resolve() != Path(value).resolve():
            raise click.UsageError(
                f"{flag} given twice, as {before} before the command and {value} after it",
                ctx=ctx,
            )
        root.obj[key] = value

    return remember


def workspace_options(command: F) -> F:
    """`--runbooks`, `--inventory` and `-v` on a command too, so they may follow it as well
    as precede it (`opskit run health --inventory X -v`)."""
    for key, flag, metavar, text in reversed(
        [
            ("runbooks", "--runbooks", "DIR", RUNBOOKS_HELP),
            ("inventory", "--inventory", "FILE", INVENTORY_HELP),
        ]
    ):
        command = click.option(
            flag,
            metavar=metavar,
            help=text,
            expose_value=False,
            callback=_global_option(key, flag),
        )(command)
    return click.option(
        "-v",
        "--verbose",
        count=True,
        is_eager=True,
        expose_value=False,
        callback=use_logging,
        help="Log each SSH command, HTTP request and Proxmox task on stderr (-vv: more).",
    )(command)


def _inside_lab(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """`--lab` is handled before parsing (opskit.cli.run re-runs the command inside the lab);
    reaching a command with it means that did not happen."""
    import os

    if value and not os.environ.get("OPSKIT_LAB_ACTIVE"):
        raise click.UsageError("--lab works from the opskit command line (see `opskit lab up`)")


LIMIT_HELP = (
    "Only these targets (vm:ID, NAME, tag:X, ...; !SEL leaves those out, e.g."
    " 'tag:monitored,!docker')."
)

lab_option = click.option(
    "--lab",
    is_flag=True,
    expose_value=False,
    callback=_inside_lab,
    help="Run inside the lab (`opskit lab up`): its inventory, secrets, state and network.",
)


lab_state_option = click.option(
    "--lab",
    is_flag=True,
    is_eager=True,
    expose_value=False,
    callback=use_lab_state,
    help="The lab's runs (kept after `opskit lab down`; the lab need not be up).",
)
