"""validate, list, show, schema: commands about runbook and inventory files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import EXIT_USAGE, LoadError
from ..workspace import shown_path
from .common import LIMIT_HELP, json_option, workspace, workspace_options
from .output import echo, emit_json, table


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@json_option
@workspace_options
@click.pass_context
def validate(ctx: click.Context, paths: tuple[Path, ...], as_json: bool) -> None:
    """Check runbooks and the inventory (default: all of them) without touching anything.

    Problems print as FILE:LINE:COL: MESSAGE; the exit code is 2 if there are any.
    """
    from ..validate import check_files, files_to_check

    ws = workspace(ctx)
    results: list[dict[str, Any]] = []
    for check in check_files(ws, files_to_check(ws, paths)):
        results.append(
            {
                "file": str(check.file),
                "ok": check.ok,
                "summary": check.summary,
                "problems": [
                    {"line": p.line, "col": p.col, "message": p.message} for p in check.problems
                ],
            }
        )
        if as_json:
            continue
        for problem in check.problems:
            echo(str(problem), err=True)
        if check.ok:
            echo(f"ok  {check.file}" + (f"  ({check.summary})" if check.summary else ""))
    failed = sum(not r["ok"] for r in results)
    if as_json:
        emit_json({"ok": failed == 0, "files": results})
    elif failed:
        echo(f"{failed} of {len(results)} files have problems", err=True)
    if failed:
        ctx.exit(EXIT_USAGE)


@click.command("list")
@json_option
@workspace_options
@click.pass_context
def list_runbooks(ctx: click.Context, as_json: bool) -> None:
    """The runbooks, with description, targets and schedule."""
    ws = workspace(ctx)
    rows: list[dict[str, Any]] = []
    for path in ws.runbook_paths():
        try:
            loaded = ws.load(path)
        except LoadError:
            rows.append(
                {
                    "name": path.stem,
                    "file": str(path),
                    "valid": False,
                    "description": f"invalid: see opskit validate {path}",
                    "targets": None,
                    "target_count": 0,
                    "schedule": None,
                }
            )
            continue
        rb = loaded.runbook
        rows.append(
            {
                "name": rb.name,
                "file": str(path),
                "valid": True,
                "description": rb.description,
                "targets": rb.targets,
                "target_count": len(ws.inventory.select(rb.targets)),
                "schedule": ", ".join(rb.schedule.on) if rb.schedule else None,
            }
        )
    if as_json:
        emit_json(rows)
        return
    several = len(ws.runbook_dirs) > 1  # then say where each one came from
    table(
        ["NAME", "DESCRIPTION", "TARGETS", "SCHEDULE", *(["FROM"] if several else [])],
        [
            [
                r["name"],
                r["description"],
                "" if r["targets"] is None else f"{_selector(r['targets'])} ({r['target_count']})",
                r["schedule"] or "",
                *([shown_path(Path(r["file"]).parent)] if several else []),
            ]
            for r in rows
        ],
    )


def _selector(value: str | list[str]) -> str:
    return value if isinstance(value, str) else ", ".join(value)


@click.command()
@click.argument("runbook")
@click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE", help="Set a param.")
@click.option("--limit", metavar="SELECTOR", help=LIMIT_HELP)
@json_option
@workspace_options
@click.pass_context
def show(
    ctx: click.Context, runbook: str, params: tuple[str, ...], limit: str | None, as_json: bool
) -> None:
    """The runbook's steps rendered for each target. Secrets show as their names."""
    from ..workspace import parse_param_args, render_target, resolve_params, targets_for

    ws = workspace(ctx)
    loaded = ws.load(runbook)
    values = resolve_params(loaded.runbook, parse_param_args(params))
    targets = targets_for(loaded, ws.inventory, limit)
    rendered = [(t, render_target(loaded, values, t, ws.catalog)) for t in targets]
    rb = loaded.runbook
    if as_json:
        emit_json(
            {
                "runbook": rb.name,
                "file": str(loaded.path),
                "description": rb.description,
                "params": values,
                "secrets": dict(rb.secrets),
                "targets": [
                    {
                        "target": t.name,
                        "vmid": t.vmid,
                        "address": t.address,
                        "steps": [s.as_dict() for s in steps],
                    }
                    for t, steps in rendered
                ],
            }
        )
        return
    echo(f"{rb.name}: {rb.description}" if rb.description else rb.name)
    if values:
        echo("params: " + ", ".join(f"{k}={v!r}" for k, v in values.items()))
    if rb.secrets:
        echo(
            "secrets: "
            + ", ".join(f"{k} ({ref.partition(':')[0]})" for k, ref in rb.secrets.items())
        )
    echo(f"targets: {_selector(rb.targets)} -> {len(targets)}")
    for target, steps in rendered:
        echo()
        echo(f"{target.label()}  {target.address}")
        if not steps:
            echo("  (nothing to do)")
        width = max((len(s.id) for s in steps), default=0)
        for s in steps:
            flags = []
            if s.skipped:
                flags.append("skipped: when is false")
            elif isinstance(s.when, str):
                flags.append(f"when {s.when}")
            if s.confirm:
                flags.append(f"confirm: {s.confirm}")
            if s.risk.value != "read":
                flags.append(s.risk.value)
            extra = f"  [{'; '.join(flags)}]" if flags else ""
            section = "" if s.section == "steps" else f"{s.section}: "
            echo(f"  {section}{s.id.ljust(width)}  {s.description}{extra}")


@click.command()
@click.argument("kind", type=click.Choice(["runbook", "inventory", "status"]))
@click.pass_context
def schema(ctx: click.Context, kind: str) -> None:
    """JSON Schema for runbook or inventory files (for editors), or of `status --json`."""
    from ..schema import inventory_schema, runbook_schema

    if kind == "status":
        import json
        from importlib.resources import files

        emit_json(json.loads(files("opskit.status").joinpath("status.schema.json").read_text()))
    elif kind == "inventory":
        emit_json(inventory_schema())
    else:
        emit_json(runbook_schema(workspace(ctx).catalog))
