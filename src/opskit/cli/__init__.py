"""The `opskit` command line: parse, call the core, render. Exit codes are decided here."""

from __future__ import annotations

import atexit
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, NoReturn

import click

from .. import __version__
from ..errors import (
    EXIT_CODES,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PLAN_CHANGES,
    EXIT_USAGE,
    LoadError,
    OpskitError,
)

# Given before the command (here) or after it (cli.common.workspace_options), same meaning.
RUNBOOKS_HELP = (
    "Runbooks directory, searched first (then $OPSKIT_RUNBOOKS, ./runbooks, the project's)."
)
INVENTORY_HELP = "Inventory file (default: $OPSKIT_INVENTORY, else inventory/homelab.yaml)."

if TYPE_CHECKING:
    from types import FrameType

    from ..report.progress import EventStream


def use_lab_state(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """`--lab` reaching a command in this process: one that acts was already re-run inside
    the lab (run() below, OPSKIT_LAB_ACTIVE set there); one that only reads state (history,
    show-run, unlock) reads the lab's, kept outside the lab so it outlives `opskit lab down`,
    whether the lab is up or not."""
    if value and not os.environ.get("OPSKIT_LAB_ACTIVE"):
        from ..lab.core import lab_state_dir

        os.environ["OPSKIT_STATE_DIR"] = str(lab_state_dir())


def use_logging(ctx: click.Context, param: click.Parameter, value: int) -> None:
    """-v / -vv, or OPSKIT_LOG: what opskit does over SSH and HTTP, logged (opskit.logs)."""
    if value or os.environ.get("OPSKIT_LOG"):
        from ..logs import configure

        configure(value)


class LazyGroup(click.Group):
    """Subcommands live in their own modules, imported only when invoked."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module_name, _, attr = self.lazy[name].rpartition(".")
            from importlib import import_module

            command: click.Command = getattr(import_module(module_name), attr)
            return command
        return super().get_command(ctx, name)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        given = list(args)  # the parser consumes its list
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            moved = _option_after_its_command(ctx, self, exc.option_name, given)
            if moved is None:
                raise
            raise click.UsageError(moved, ctx=ctx) from None

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError:
            if args and not args[0].startswith("-") and _is_runbook(ctx, args[0]):
                name = args[0]
                raise click.UsageError(
                    f"no command {name!r}: {name} is a runbook; run it with"
                    f" `opskit run {name}` (or plan, show, validate it)",
                    ctx=ctx,
                ) from None
            if args and not args[0].startswith("-"):
                import difflib

                close = difflib.get_close_matches(args[0], self.list_commands(ctx), n=1)
                if close:
                    raise click.UsageError(
                        f"no command {args[0]!r}; did you mean {close[0]!r}?", ctx=ctx
                    ) from None
            raise


def _option_after_its_command(
    ctx: click.Context, group: click.Group, option: str, args: list[str]
) -> str | None:
    """For an option given before its command (`opskit --yes run health`), the message that
    says where it goes, with the line as it should be; None if no command named has it."""
    import shlex

    command: click.Command | None = group
    path: list[str] = []
    for name in args:  # the command named, down through its groups (inventory list)
        if not isinstance(command, click.Group):
            break
        if name.startswith("-") or name not in command.list_commands(ctx):
            if path:
                break
            continue  # before the command: the misplaced option's value, perhaps
        command, path = command.get_command(ctx, name), [*path, name]
    if not path or command is None:
        return None
    param = next(
        (
            p
            for p in command.params
            if isinstance(p, click.Option) and option in (*p.opts, *p.secondary_opts)
        ),
        None,
    )
    if param is None:
        return None
    at = next((i for i, a in enumerate(args) if a == option or a.startswith(option + "=")), None)
    if at is None:  # given inside a cluster of short flags (-yv): click's own message
        return None
    optional = getattr(param, "_flag_needs_value", False)  # --serve [ADDR]: its value may follow
    taken = 1 if param.is_flag or param.count or optional or "=" in args[at] else 1 + param.nargs
    given, rest = args[at : at + taken], args[:at] + args[at + taken :]
    line = shlex.join(["opskit", *rest, *given])
    where = " ".join(path)
    return f"{option} is an option of `opskit {where}`: it goes after the command ({line})"


def _is_runbook(ctx: click.Context, name: str) -> bool:
    """Whether `name` is one of the runbooks found (for `opskit health run`'s hint)."""
    from ..workspace import Workspace

    try:
        ws = Workspace.discover(ctx.params.get("runbooks_dir"), ctx.params.get("inventory_path"))
        return name in {path.stem for path in ws.runbook_paths()}
    except Exception:  # only a hint: whatever fails here, click's own message stands
        return False


@click.group(
    cls=LazyGroup,
    lazy={
        "validate": "opskit.cli.files.validate",
        "list": "opskit.cli.files.list_runbooks",
        "show": "opskit.cli.files.show",
        "schema": "opskit.cli.files.schema",
        "explain": "opskit.cli.explain.explain",
        "inventory": "opskit.cli.inventory.inventory",
        "run": "opskit.cli.runs.run",
        "plan": "opskit.cli.runs.plan",
        "apply": "opskit.cli.runs.apply",
        "resume": "opskit.cli.runs.resume",
        "history": "opskit.cli.history.history",
        "show-run": "opskit.cli.history.show_run",
        "unlock": "opskit.cli.history.unlock",
        "lab": "opskit.cli.lab.lab",
        "schedule": "opskit.cli.schedule.schedule",
        "status": "opskit.cli.status.status",
    },
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="\b\nExit codes:\n"
    + "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items()),
)
@click.version_option(__version__, "--version", prog_name="opskit", message="%(prog)s %(version)s")
@click.option("--runbooks", "runbooks_dir", metavar="DIR", help=RUNBOOKS_HELP)
@click.option("--inventory", "inventory_path", metavar="FILE", help=INVENTORY_HELP)
@click.option(
    "--lab",
    is_flag=True,
    is_eager=True,
    expose_value=False,
    callback=use_lab_state,
    help="The same as --lab after the command: inside the lab (`opskit lab up`).",
)
@click.option(
    "-v",
    "--verbose",
    count=True,
    is_eager=True,
    expose_value=False,
    callback=use_logging,
    help="Log each SSH command, HTTP request and Proxmox task on stderr (-vv: more);"
    " also OPSKIT_LOG=info|debug.",
)
@click.pass_context
def cli(ctx: click.Context, runbooks_dir: str | None, inventory_path: str | None) -> None:
    """Declarative runbooks for a Proxmox homelab: validate, show, plan and run them."""
    ctx.obj = {"runbooks": runbooks_dir, "inventory": inventory_path}


def main(argv: list[str] | None = None) -> None:
    """Entry point: every OpskitError ends in its message and exit code, never a traceback."""
    # SIGTERM stops opskit as Ctrl-C does (while a run executes, its own handler takes both).
    signal.signal(signal.SIGTERM, _as_ctrl_c)
    try:
        code = run(argv)
    except KeyboardInterrupt:  # a second Ctrl-C while the first one was being reported
        code = EXIT_INTERRUPTED
    # Decided and said: another Ctrl-C while Python winds down (joining threads) exits at once
    # with this code; once it stops handling signals (atexit runs just before), none is heard,
    # so that none ends it as killed by SIGINT instead.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _signum, _frame: _exit_now(code))
    atexit.register(_ignore_interrupts)
    sys.exit(code)


def _ignore_interrupts() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _as_ctrl_c(signum: int, frame: FrameType | None) -> None:
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # Started with SIGINT ignored (a shell script's `opskit ... &`): the terminal's Ctrl-C
        # stays ignored, as its starter meant, but SIGTERM still stops opskit.
        raise KeyboardInterrupt
    signal.raise_signal(signal.SIGINT)


def _exit_now(code: int) -> NoReturn:
    from contextlib import suppress

    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):  # a write the signal interrupted, a closed pipe: exit anyway
            stream.flush()
    os._exit(code)


# The JSON event stream of the command running, when it streams one (`--json` of run, apply,
# resume). run() ends it with the exit code it decides, so every way a command ends (done,
# an error, Ctrl-C) ends the stream the same way: an `error` event if it failed, one `done`.
_events: EventStream | None = None


def open_events() -> EventStream:
    global _events
    from ..report.progress import EventStream

    _events = EventStream()
    return _events


def run(argv: list[str] | None = None) -> int:
    global _events
    args = sys.argv[1:] if argv is None else argv
    lab_child: list[int] = []  # the exit code of the same command run inside the lab
    _events = None
    code, error = _run(argv, lab_child)
    if lab_child:
        return lab_child[0]  # already decided there, --detailed-exitcode included
    if _option_given(args, "--detailed-exitcode"):
        # Terraform's convention for CI: 0 no changes, 2 changes, 1 any error.
        known = {EXIT_OK: EXIT_OK, EXIT_PLAN_CHANGES: 2, EXIT_INTERRUPTED: EXIT_INTERRUPTED}
        code = known.get(code, 1)
    elif code == EXIT_PLAN_CHANGES:
        code = 2
    if _events is not None:
        _events.end(code, error)
        _events = None
    return code


def _run(argv: list[str] | None, lab_child: list[int]) -> tuple[int, str | None]:
    """The command's exit code and, when it ended in an error, the message said on stderr."""
    try:
        if _wants_lab(sys.argv[1:] if argv is None else argv):
            from ..lab.enter import run_in_lab

            args = sys.argv[1:] if argv is None else argv
            is_status = _subcommand(args) == "status"
            lab_child.append(
                run_in_lab(
                    args,
                    replace=argv is None,
                    broken_ok=is_status,
                    serve=_served_address(args) if is_status else None,
                )
            )
            return lab_child[0], None
        # Without standalone mode click returns ctx.exit()'s code instead of raising it.
        code = cli.main(args=argv, prog_name="opskit", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code), None
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE, _redact(exc.format_message())
    except (click.exceptions.Abort, KeyboardInterrupt):
        return _said(EXIT_INTERRUPTED, "interrupted")
    except LoadError as exc:
        return _said(exc.exit_code, "\n".join(str(problem) for problem in exc.problems))
    except OpskitError as exc:
        if exc.exit_code == 0:  # e.g. a saved plan already applied: said, not an error
            if _events is not None:
                _events.write({"event": "message", "text": str(exc)})
            else:
                click.echo(_redact(str(exc)))
            return 0, None
        return _said(exc.exit_code, str(exc), prefix="error: ")
    except BrokenPipeError:
        # The reader went away (`opskit list | head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0, None
    except Exception as exc:
        if os.environ.get("OPSKIT_DEBUG"):
            raise
        message = f"internal error: {type(exc).__name__}: {exc}"
        click.echo(
            _redact(
                f"{message}\nThis is a bug in opskit; rerun with OPSKIT_DEBUG=1 for the traceback."
            ),
            err=True,
        )
        return EXIT_INTERNAL, _redact(message)
    return (code if isinstance(code, int) else 0), None


def _said(code: int, message: str, *, prefix: str = "") -> tuple[int, str]:
    """The error's message, said once on stderr (redacted); returned for the event stream."""
    message = _redact(message)
    click.echo(prefix + message, err=True)
    return code, message


def _option_given(argv: list[str], option: str) -> bool:
    """`option` among the options (not after `--`)."""
    return option in (argv[: argv.index("--")] if "--" in argv else argv)


# Commands that only read opskit's state: with --lab they read the lab's (kept outside the
# lab, see opskit.cli.common.lab_state_option) in this process, up or not.
STATE_COMMANDS = frozenset({"history", "show-run", "unlock"})


def _wants_lab(argv: list[str]) -> bool:
    """`--lab` among the options of a command that acts, and not already inside the lab."""
    return (
        _option_given(argv, "--lab")
        and not os.environ.get("OPSKIT_LAB_ACTIVE")
        and _subcommand(argv) not in STATE_COMMANDS
    )


def _served_address(argv: list[str]) -> str | None:
    """The address of `opskit status --serve [ADDR]`, as its own options parse it; None
    without --serve (or where they do not parse: the command itself says why)."""
    if not _option_given(argv, "--serve"):
        return None
    from .status import status

    at = _subcommand_at(argv)
    if at is None:
        return None
    try:
        ctx = status.make_context("status", argv[at + 1 :], resilient_parsing=True)
    except click.ClickException:
        return None
    serve = ctx.params.get("serve")
    return serve if isinstance(serve, str) else None


def _subcommand(argv: list[str]) -> str | None:
    """The command's name: the first word that is neither an option nor an option's value."""
    at = _subcommand_at(argv)
    return None if at is None else argv[at]


def _subcommand_at(argv: list[str]) -> int | None:
    """Where the command's name is in `argv` (see _subcommand)."""
    words = iter(enumerate(argv))
    for at, word in words:
        if word in ("--runbooks", "--inventory"):
            next(words, None)
        elif not word.startswith("-"):
            return at
    return None


def _redact(text: str) -> str:
    from ..secrets import redactor

    return redactor.redact(text)
