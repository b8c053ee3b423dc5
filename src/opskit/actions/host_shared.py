"""What every host.* kind shares: their common arguments (`become`), the way their pyinfra work
reaches the target (`on_host`, through the bridge in `clients.pyinfra_connector`) and how an
operation's report becomes an outcome or a change's text."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import Field

from ..model import Outcome
from .base import ActionArgs, ActionContext

if TYPE_CHECKING:
    from ..clients.pyinfra_connector import OpReport, PyinfraHost

T = TypeVar("T")

NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"


# Every host.* kind registers the commands its pyinfra operation ran.
COMMANDS_RAN = "the commands pyinfra ran, none when nothing changed (list[str])"


class HostArgs(ActionArgs):
    become: bool = Field(False, description="run through sudo as root (-n: never prompt)")


def _absolute(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"must be an absolute path, not {value!r}")
    return value


async def on_host(
    ctx: ActionContext, args: HostArgs, work: Callable[[PyinfraHost], T], inputs: str | None = None
) -> T:
    """Run `work` against the target through the pyinfra bridge. A probe naming its `inputs`
    (all its work depends on besides its arguments and the host: a template's checksum, a flag)
    is answered from what the same probe found, if nothing reached the host since
    (`pyinfra_known.kept`): the engine's re-probe of a step planned in the same session."""
    from ..clients.pyinfra_connector import run_pyinfra
    from ..clients.pyinfra_known import kept

    data: dict[str, Any] = {}
    if args.become:
        data["_sudo"] = True
    shell = ctx.shell()
    env = ctx.connections.transports.ssh.host_env if ctx.connections else ()
    if env:
        data["_env"] = dict(env)
    if not ctx.read_only or inputs is None:
        return await run_pyinfra(shell, work, host_data=data)
    what = [
        type(args).__qualname__,
        getattr(work, "__qualname__", ""),
        args.model_dump(mode="json"),
    ]
    return await kept(
        shell, [*what, data, inputs], lambda: run_pyinfra(shell, work, host_data=data)
    )


def _mode(value: Any) -> str | None:
    """pyinfra's modes are octal digits as an int (644); opskit shows '0644'."""
    if value is None or value is False:
        return None
    return str(value).zfill(4)


def _outcome(report: OpReport, what: str, done: str, outputs: dict[str, Any]) -> Outcome:
    outputs = {**outputs, "commands": report.commands}
    changed = report.executed and bool(report.commands)
    if not report.ok:
        return Outcome(
            ok=False,
            changed=changed,
            summary=f"{what}: failed",
            outputs=outputs,
            error=f"{what}: {report.error}",
        )
    return Outcome(
        ok=True, changed=changed, summary=done if changed else f"{what}: no change", outputs=outputs
    )


def _meta_changes(
    info: dict[str, Any], mode: str | None, owner: str | None, group: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(before, after) of mode, owner and group where the step names them and they differ."""
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    have = {"mode": _mode(info.get("mode")), "owner": info.get("user"), "group": info.get("group")}
    for key, want in (("mode", _mode(mode)), ("owner", owner), ("group", group)):
        if want is not None and have[key] != want:
            before[key], after[key] = have[key], want
    return before, after


def _changes_text(before: dict[str, Any], after: dict[str, Any]) -> str:
    return ", ".join(f"{k} {before[k]} -> {after[k]}" for k in after)
