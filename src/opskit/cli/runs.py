"""run, plan, apply, resume: plan and execute runbooks."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import EXIT_OK, EXIT_PLAN_CHANGES, StepError
from ..report import counted
from .common import LIMIT_HELP, json_option, lab_option, workspace, workspace_options
from .output import echo

if TYPE_CHECKING:
    from ..engine.executor import RunResult
    from ..engine.session import Request, Session
    from ..model.plan import Plan


def _duration(value: str | None) -> float:
    from ..errors import UsageError
    from ..model import parse_duration

    if value is None:
        return 0.0
    try:
        return parse_duration(value)
    except Exception:
        raise UsageError(f"bad duration {value!r} (e.g. 30s, 5m)") from None


def _request(*, tofu: bool = False, **kw: Any) -> Request:
    from ..engine.session import Request, interactive

    ctx = click.get_current_context()
    req = Request(workspace=workspace(ctx), interactive=interactive(), **kw)
    req.settings.transports.ssh.trust_on_first_use = tofu
    return req


tofu_option = click.option(
    "--trust-on-first-use",
    "tofu",
    is_flag=True,
    help="Accept (and record) the SSH host key of hosts seen for the first time.",
)


def executes(func: Callable[..., None]) -> Callable[..., None]:
    """The options of every command that executes, turned into one `req` argument."""

    @functools.wraps(func)
    def wrapper(
        *args: Any,
        yes: bool,
        approve: str | None,
        as_json: bool,
        lock_wait: str | None,
        grace: str,
        tofu: bool,
        **kwargs: Any,
    ) -> None:
        from . import open_events

        events = open_events() if as_json else None  # ended by opskit.cli.run, however it ends
        req = _request(
            yes=yes,
            approve=approve,
            events=events,
            lock_wait=_duration(lock_wait),
            grace=_duration(grace),
            tofu=tofu,
        )
        func(*args, req=req, **kwargs)

    options = [
        click.option("--yes", "-y", is_flag=True, help="Approve every gate without asking."),
        click.option(
            "--approve",
            metavar="FINGERPRINT",
            help="Approve the gates of the plan with this fingerprint.",
        ),
        json_option,
        click.option(
            "--lock-wait",
            metavar="DURATION",
            help="Wait this long for targets locked by another run.",
        ),
        click.option(
            "--grace",
            metavar="DURATION",
            default="30s",
            show_default=True,
            help="After Ctrl-C, how long running steps may finish.",
        ),
        tofu_option,
        lab_option,
        workspace_options,
    ]
    decorated: Callable[..., None] = wrapper
    for option in reversed(options):
        decorated = option(decorated)
    return decorated


def _exit(result: RunResult) -> None:
    click.get_current_context().exit(result.exit_code)


param_option = click.option(
    "-p", "--param", "params", multiple=True, metavar="NAME=VALUE", help="Set a param."
)
limit_option = click.option("--limit", metavar="SELECTOR", help=LIMIT_HELP)


def _without_blocked(plan: Plan, limit: str | None) -> str:
    """How to run the targets that have no blocker, when there are some: the --limit that
    leaves out those that do (a host down at 3 a.m. need not hold the others back)."""
    import shlex

    blocked = [t.target for t in plan.targets if any(s.change.blockers for s in t.steps)]
    others = len(plan.targets) - len(blocked)
    if not blocked or not others:
        return ""
    selector = ",".join([*([limit] if limit else []), *(f"!{name}" for name in blocked)])
    return (
        f"\n{counted(others, 'other target')} can run without "
        + ("it" if len(blocked) == 1 else "them")
        + f": --limit {shlex.quote(selector)}"
    )


def _show_plan(req: Request, plan: Plan) -> None:
    from ..report.plan import render_plan

    if req.events is not None:  # the first event of the stream
        req.events.write({"event": "plan", "plan": plan.model_dump(mode="json")})
    else:
        echo(render_plan(plan, "text").rstrip("\n"))


def _say(req: Request, text: str) -> None:
    if req.events is not None:
        req.events.write({"event": "message", "text": text})
    else:
        echo(text)


def _warn(text: str) -> None:
    echo(f"warning: {text}", err=True)


@click.command()
@click.argument("runbook")
@param_option
@limit_option
@click.option("--dry-run", is_flag=True, help="Plan and show; change nothing.")
@click.option(
    "--scheduled",
    is_flag=True,
    help="Run as the runbook's timer does: nobody at a terminal, only its standing approvals"
    " (schedule.approve), within its maintenance window, journaled as scheduled.",
)
@click.option(
    "--notify",
    is_flag=True,
    help="Tell the runbook's schedule.notify receivers how this run ended (scheduled runs"
    " always do).",
)
@executes
def run(
    runbook: str,
    params: tuple[str, ...],
    limit: str | None,
    dry_run: bool,
    scheduled: bool,
    notify: bool,
    req: Request,
) -> None:
    """Plan RUNBOOK, ask at its gates, and execute it.

    Exit codes: 0 done (or nothing to do), 1 a step failed or the plan has blockers, 2 usage
    error, 3 a gate declined or nobody to ask, 5 a target locked, 6 outside its maintenance
    window (--scheduled), 74 the journal could not be written (a full disk: nothing started
    after it), 130 interrupted.
    """
    from ..engine.session import Session
    from ..workspace import parse_param_args

    ctx = click.get_current_context()
    if scheduled:
        from ..errors import UsageError
        from ..schedule import run_scheduled

        if req.yes or req.approve:
            raise UsageError(
                "--scheduled passes only the runbook's standing approvals (schedule.approve):"
                " drop --yes and --approve"
            )
        code = run_scheduled(
            req,
            runbook,
            parse_param_args(params),
            limit,
            dry_run=dry_run,
            show=lambda plan: _show_plan(req, plan),
            say=lambda text: _say(req, text),
            warn=_warn,
        )
        ctx.exit(code)
    with Session(req) as session:  # the plan's connections are the run's
        _run(req, session, runbook, parse_param_args(params), limit, dry_run, notify)


def _run(
    req: Request,
    session: Session,
    runbook: str,
    given: dict[str, Any],
    limit: str | None,
    dry_run: bool,
    notify: bool,
) -> None:
    from ..engine.session import execute, make_plan
    from ..report.plan import nothing_to_do

    ctx = click.get_current_context()
    loaded, targets, plan = make_plan(req, runbook, given, limit, session=session)
    if notify and (loaded.runbook.schedule is None or loaded.runbook.schedule.notify is None):
        from ..errors import UsageError

        raise UsageError(f"--notify: runbook {loaded.name!r} has no schedule.notify to send to")
    _show_plan(req, plan)
    found = plan.blockers()
    if found:
        said = "nothing was changed (dry run)" if dry_run else "nothing was run"
        raise StepError(
            f"the plan has blockers; {said}: {counted(len(found), 'blocker')}:\n  "
            + "\n  ".join(found)
            + _without_blocked(plan, limit)
        )
    if dry_run:
        if req.events is None:
            echo("dry run: nothing was changed")
        ctx.exit(EXIT_OK)
    if not targets or (nothing_to_do(plan) and not plan.counts()["check"]):
        if req.events is None:
            echo("nothing to do")
        ctx.exit(EXIT_OK)
    if not notify:
        _exit(execute(req, loaded, targets, plan, session=session))
    from ..errors import GateError, OpskitError
    from ..schedule import notify_run

    try:
        result = execute(req, loaded, targets, plan, session=session)
    except OpskitError as exc:
        status = "needs approval" if isinstance(exc, GateError) else "failed"
        notify_run(
            req, loaded, status, None, message=str(exc), say=lambda t: _say(req, t), warn=_warn
        )
        raise
    notify_run(
        req,
        loaded,
        result.status,
        result.run_id,
        result=result,
        say=lambda t: _say(req, t),
        warn=_warn,
    )
    _exit(result)


@click.command()
@click.argument("runbook")
@param_option
@limit_option
@click.option("-o", "--out", type=click.Path(path_type=Path), help="Save the plan (JSON) here.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "md", "json"]),
    default="text",
    show_default=True,
    help="How to print the plan.",
)
@click.option(
    "--detailed-exitcode",
    "detailed",
    is_flag=True,
    help="Exit 0 when the plan changes nothing, 2 when it has changes, 1 on any error"
    " (blockers and usage errors included), as Terraform's plan does: for CI gates.",
)
@tofu_option
@lab_option
@workspace_options
def plan(
    runbook: str,
    params: tuple[str, ...],
    limit: str | None,
    out: Path | None,
    fmt: str,
    detailed: bool,
    tofu: bool,
) -> None:
    """Plan RUNBOOK and print it for review; -o saves it for `opskit apply`.

    Exit codes: 0 planned, 1 the plan has blockers (it could not be applied), 2 usage error,
    74 the plan file could not be written (it is left as it was); with --detailed-exitcode:
    0 no changes, 2 changes, 1 any error.
    """
    from ..engine.session import make_plan
    from ..report.plan import nothing_to_do, render_plan
    from ..workspace import parse_param_args

    _, _, made = make_plan(_request(tofu=tofu), runbook, parse_param_args(params), limit)
    if out is not None:
        from ..localfile import write_atomic

        write_atomic(out, render_plan(made, "json"), what="the plan file")
    echo(render_plan(made, fmt).rstrip("\n"))
    found = made.blockers()
    if found:
        saved = f" (saved to {out} for review)" if out is not None else ""
        raise StepError(
            f"the plan cannot be applied{saved}: it has {counted(len(found), 'blocker')}:\n  "
            + "\n  ".join(found)
        )
    if out is not None and fmt != "json":
        from ..place import lab_command

        command = f"opskit apply {out}"
        if made.lab is not None:
            command = lab_command(made.lab, command)
        echo(f"saved to {out}: apply exactly this with  {command}")
    if detailed and not nothing_to_do(made):
        click.get_current_context().exit(EXIT_PLAN_CHANGES)


@click.command()
@click.argument("plan_file", type=click.Path(path_type=Path))
@executes
def apply(plan_file: Path, req: Request) -> None:
    """Apply a saved plan exactly, or refuse it as stale.

    Exit codes: 0 done (or already applied), 1 a step failed or blockers, 2 usage error, 3 a
    gate declined or not approved, 4 stale: the plan file, runbook, inventory, opskit or the
    world changed, or it is applied outside the place it was made (a lab's plan outside that
    lab), 5 a target locked, 74 the journal could not be written, 130 interrupted.
    """
    from ..engine.session import Session, check_saved_plan, execute, read_plan

    saved = read_plan(plan_file)
    with Session(req) as session:  # the check's connections are the run's
        loaded, targets = check_saved_plan(req, saved, str(plan_file), session=session)
        result = execute(req, loaded, targets, saved, session=session)
    _exit(result)


@click.command()
@click.argument("run_id")
@click.option("--force", is_flag=True, help="Resume even though the runbook changed.")
@executes
def resume(run_id: str, force: bool, req: Request) -> None:
    """Run what run RUN_ID left unfinished; steps that succeeded are not run again.

    RUN_ID may be abbreviated: a unique start of it, or of its random suffix.

    Exit codes: as `opskit run`, and 4 when the runbook changed since (--force resumes anyway).
    """
    from ..engine.session import resume as resume_run

    _exit(resume_run(req, run_id, force))
