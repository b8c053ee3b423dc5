"""run, plan, apply, resume: plan and execute runbooks."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import EXIT_OK
from .common import json_option, workspace
from .output import echo


def _request(ctx: click.Context, **kw: object):  # type: ignore[no-untyped-def]
    from ..engine.session import Request, interactive

    return Request(workspace=workspace(ctx), interactive=interactive(), **kw)  # type: ignore[arg-type]


def _duration(value: str | None) -> float:
    from ..errors import UsageError
    from ..model import parse_duration

    if value is None:
        return 0.0
    try:
        return parse_duration(value)
    except Exception:
        raise UsageError(f"bad duration {value!r} (e.g. 30s, 5m)") from None


param_option = click.option(
    "-p", "--param", "params", multiple=True, metavar="NAME=VALUE", help="Set a param."
)
limit_option = click.option(
    "--limit", metavar="SELECTOR", help="Only these targets (vm:ID, NAME, tag:X, ...)."
)
yes_option = click.option("--yes", "-y", is_flag=True, help="Approve every gate without asking.")
approve_option = click.option(
    "--approve", metavar="FINGERPRINT", help="Approve the gates of the plan with this fingerprint."
)
lock_option = click.option(
    "--lock-wait", metavar="DURATION", help="Wait this long for targets locked by another run."
)
grace_option = click.option(
    "--grace", metavar="DURATION", default="30s", show_default=True,
    help="After Ctrl-C, how long running steps may finish.",
)  # fmt: skip


def _finish(result) -> None:  # type: ignore[no-untyped-def]
    ctx = click.get_current_context()
    ctx.exit(result.exit_code)


@click.command()
@click.argument("runbook")
@param_option
@limit_option
@click.option("--dry-run", is_flag=True, help="Plan and show; change nothing.")
@yes_option
@approve_option
@json_option
@lock_option
@grace_option
@click.pass_context
def run(
    ctx: click.Context,
    runbook: str,
    params: tuple[str, ...],
    limit: str | None,
    dry_run: bool,
    yes: bool,
    approve: str | None,
    as_json: bool,
    lock_wait: str | None,
    grace: str,
) -> None:
    """Plan RUNBOOK, ask at its gates, and execute it."""
    from ..engine.session import execute, make_plan
    from ..report.plan import nothing_to_do, render_plan
    from ..workspace import parse_param_args

    req = _request(
        ctx, yes=yes, approve=approve, as_json=as_json, lock_wait=_duration(lock_wait),
        grace=_duration(grace),
    )  # fmt: skip
    loaded, targets, plan = make_plan(req, runbook, parse_param_args(params), limit)
    if as_json:  # the first line of the JSON-lines event stream
        echo(json.dumps({"event": "plan", "plan": plan.model_dump(mode="json")}))
    else:
        echo(render_plan(plan, "text").rstrip("\n"))
    if dry_run:
        if not as_json:
            echo("dry run: nothing was changed")
        ctx.exit(EXIT_OK)
    if not targets or (nothing_to_do(plan) and not plan.counts()["check"]):
        if not as_json:
            echo("nothing to do")
        ctx.exit(EXIT_OK)
    _finish(execute(req, loaded, targets, plan))


@click.command()
@click.argument("runbook")
@param_option
@limit_option
@click.option("-o", "--out", type=click.Path(path_type=Path), help="Save the plan (JSON) here.")
@click.option(
    "--format", "fmt", type=click.Choice(["text", "md", "json"]), default="text",
    show_default=True, help="How to print the plan.",
)  # fmt: skip
@click.pass_context
def plan(
    ctx: click.Context,
    runbook: str,
    params: tuple[str, ...],
    limit: str | None,
    out: Path | None,
    fmt: str,
) -> None:
    """Plan RUNBOOK and print it for review; -o saves it for `opskit apply`."""
    from ..engine.session import make_plan
    from ..report.plan import render_plan
    from ..workspace import parse_param_args

    req = _request(ctx)
    _, _, made = make_plan(req, runbook, parse_param_args(params), limit)
    if out is not None:
        out.write_text(render_plan(made, "json"), encoding="utf-8")
    echo(render_plan(made, fmt).rstrip("\n"))
    if out is not None and fmt != "json":
        echo(f"saved to {out}: apply exactly this with  opskit apply {out}")


@click.command()
@click.argument("plan_file", type=click.Path(path_type=Path))
@yes_option
@approve_option
@json_option
@lock_option
@grace_option
@click.pass_context
def apply(
    ctx: click.Context,
    plan_file: Path,
    yes: bool,
    approve: str | None,
    as_json: bool,
    lock_wait: str | None,
    grace: str,
) -> None:
    """Apply a saved plan exactly, or refuse it as stale (exit 4)."""
    from ..engine.session import check_saved_plan, execute, read_plan

    req = _request(
        ctx, yes=yes, approve=approve, as_json=as_json, lock_wait=_duration(lock_wait),
        grace=_duration(grace),
    )  # fmt: skip
    saved = read_plan(plan_file)
    loaded, targets = check_saved_plan(req, saved)
    _finish(execute(req, loaded, targets, saved))


@click.command()
@click.argument("run_id")
@click.option("--force", is_flag=True, help="Resume even though the runbook changed.")
@yes_option
@approve_option
@json_option
@lock_option
@grace_option
@click.pass_context
def resume(
    ctx: click.Context,
    run_id: str,
    force: bool,
    yes: bool,
    approve: str | None,
    as_json: bool,
    lock_wait: str | None,
    grace: str,
) -> None:
    """Run what run RUN_ID left unfinished; steps that succeeded are not run again."""
    from ..engine.session import resume as resume_run

    req = _request(
        ctx, yes=yes, approve=approve, as_json=as_json, lock_wait=_duration(lock_wait),
        grace=_duration(grace),
    )  # fmt: skip
    _finish(resume_run(req, run_id, force))
