"""`opskit status`: the homelab at a glance (a table per host, JSON, a page)."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from ..errors import EXIT_FAILED, EXIT_OK, UsageError
from ..model.common import parse_duration
from .common import json_option, lab_option, workspace, workspace_options
from .output import emit_json

DEFAULT_SERVE = "127.0.0.1:8470"


def _seconds(text: str, what: str) -> float:
    try:
        return float(parse_duration(text))
    except ValueError as exc:
        raise UsageError(f"{what}: {exc}") from None


@click.command()
@click.argument("selector", required=False, default="all")
@json_option
@click.option("--watch", is_flag=True, help="Redraw in place every --interval.")
@click.option("--interval", default="5s", show_default=True, help="Between redraws (--watch).")
@click.option("--timeout", default="3s", show_default=True, help="Each probe's time to answer.")
@click.option(
    "--serve",
    "serve",
    is_flag=False,
    flag_value=DEFAULT_SERVE,
    default=None,
    metavar="[ADDR]",
    help=f"Serve the overview as a web page (default {DEFAULT_SERVE}; loopback needs no"
    " login, any other address the token in $OPSKIT_STATUS_TOKEN).",
)
@click.option(
    "--plans",
    "plans",
    multiple=True,
    metavar="DIR",
    help="Where saved plans wait for review, for the page (default: ./plans and"
    " $OPSKIT_STATE_DIR/plans).",
)
@lab_option
@workspace_options
@click.pass_context
def status(
    ctx: click.Context,
    selector: str,
    as_json: bool,
    watch: bool,
    interval: str,
    timeout: str,
    serve: str | None,
    plans: tuple[str, ...],
) -> None:
    """Every host of the inventory (or SELECTOR): Proxmox state, uptime, CPU and memory; each
    service's health (MCP servers with their tools, the Beszel agent in the hub); the last run
    of each runbook and the locks held; each figure's source and age.

    Read-only: every probe at once, each within --timeout. Exit 0 when all is healthy, 1 when
    something is not."""
    from ..model.inventory import SelectorError

    ws = workspace(ctx)
    inventory = ws.inventory
    try:
        names = [n for n in inventory.select(selector) if n != "local"]
    except SelectorError as exc:
        raise UsageError(str(exc)) from None
    limit = _seconds(timeout, "--timeout")
    if serve is not None:
        from ..status.web import serve as serve_page

        serve_page(serve, inventory, names, limit, list(plans), ws)
        return
    if watch:
        _watch(inventory, names, limit, _seconds(interval, "--interval"), as_json)
        return
    overview = _collect(inventory, names, limit)
    if as_json:
        emit_json(overview.as_dict())
    else:
        from ..status.render import print_overview

        print_overview(overview)
    ctx.exit(EXIT_OK if overview.healthy else EXIT_FAILED)


def _collect(inventory: Any, names: list[str], timeout: float) -> Any:
    from ..status import collect

    return asyncio.run(collect(inventory, names, timeout=timeout))


def _watch(
    inventory: Any, names: list[str], timeout: float, interval: float, as_json: bool
) -> None:
    """Redraw in place (rich Live) until Ctrl-C; with --json, one overview a line."""
    import json
    import time

    from rich.console import Console
    from rich.live import Live

    from ..status.render import renderable

    if as_json:
        while True:
            overview = _collect(inventory, names, timeout)
            click.echo(json.dumps(overview.as_dict(), default=str))
            time.sleep(interval)
    overview = _collect(inventory, names, timeout)
    console = Console(highlight=False)
    with Live(renderable(overview), console=console, auto_refresh=False) as live:
        while True:
            time.sleep(interval)
            overview = _collect(inventory, names, timeout)
            live.update(renderable(overview), refresh=True)
