"""schedule install, list, remove: runbooks on systemd timers of the controller."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..errors import OpskitError, UsageError
from .common import json_option, workspace, workspace_options
from .output import echo, emit_json, table

if TYPE_CHECKING:
    from ..schedule import UnitSet, UnitSettings
    from ..workspace import LoadedRunbook, Workspace

F = TypeVar("F", bound=Callable[..., Any])


def unit_options(command: F) -> F:
    """Where the units go: systemd's system directory, the user's (--user), or a directory
    given for tests and packaging (--unit-dir: written there, never enabled)."""
    for option in reversed(
        [
            click.option(
                "--user", is_flag=True, help="User units (~/.config/systemd/user), not system ones."
            ),
            click.option(
                "--unit-dir",
                type=click.Path(path_type=Path),
                metavar="DIR",
                help="Write units here instead (tests, packaging); systemctl is not called.",
            ),
            click.option(
                "--env-dir",
                type=click.Path(path_type=Path),
                metavar="DIR",
                help="Where each runbook's secrets file is (default /etc/opskit, or"
                " ~/.config/opskit with --user).",
            ),
        ]
    ):
        command = option(command)
    return command


@dataclass
class Scheduled:
    loaded: LoadedRunbook
    units: UnitSet


def _settings(user: bool, unit_dir: Path | None, env_dir: Path | None) -> UnitSettings:
    from ..schedule import UnitSettings, default_env_dir, default_unit_dir

    return UnitSettings(
        unit_dir=(unit_dir or default_unit_dir(user)).absolute(),
        env_dir=(env_dir or default_env_dir(user)).absolute(),
        user=user,
    )


def _scheduled(ws: Workspace, names: tuple[str, ...]) -> list[LoadedRunbook]:
    """The runbooks named (each must have a schedule), or every runbook that has one."""
    if names:
        loaded = [ws.load(name) for name in names]
        for rb in loaded:
            if rb.runbook.schedule is None:
                raise UsageError(
                    f"runbook {rb.name!r} has no schedule: give it one"
                    ' (schedule: "Sun 03:00") to run it on a timer'
                )
        return loaded
    return [rb for rb in (ws.load(p) for p in ws.runbook_paths()) if rb.runbook.schedule]


def _units(ws: Workspace, loaded: LoadedRunbook, settings: UnitSettings) -> UnitSet:
    from ..schedule import find_templates, render_units
    from ..store import state_dir

    rb = loaded.runbook
    assert rb.schedule is not None
    refs = list(rb.secrets.values())
    if rb.schedule.notify is not None:
        refs += rb.schedule.notify.urls
        refs += [rb.schedule.notify.heartbeat] if rb.schedule.notify.heartbeat else []
    settings.templates = find_templates([ws.root_for(loaded.path)])
    return render_units(
        runbook=rb.name,
        description=rb.description,
        runbook_path=loaded.path,
        runbooks_dir=loaded.path.resolve().parent,
        inventory_path=ws.inventory_path,
        state_dir=state_dir(),
        schedule=rb.schedule,
        secret_refs=refs,
        settings=settings,
    )


def _verify(sets: list[UnitSet], user: bool) -> None:
    """systemd's own check of the units, before any is written; and of each expression
    (the in-process parser may accept a form systemd refuses)."""
    from ..schedule import systemd_accepts, verify_units

    with tempfile.TemporaryDirectory(prefix="opskit-units-") as tmp:
        paths = []
        for unit_set in sets:
            for path, text in unit_set.units:
                (Path(tmp) / path.name).write_text(text, encoding="utf-8")
                paths.append(Path(tmp) / path.name)
        env = None
        if user and not os.environ.get("XDG_RUNTIME_DIR"):
            env = Path(tmp) / "runtime"
            env.mkdir(mode=0o700)
            os.environ["XDG_RUNTIME_DIR"] = str(env)  # the user manager it simulates needs one
        try:
            verdict = verify_units(paths, user)
        finally:
            if env is not None:
                del os.environ["XDG_RUNTIME_DIR"]
    if verdict is not None and not verdict[0]:
        raise UsageError(
            "systemd-analyze verify refuses the units (nothing was written):\n  "
            + verdict[1].replace(tmp + "/", "").replace("\n", "\n  ")
        )
    for unit_set in sets:
        for line in unit_set.timer[1].splitlines():
            if line.startswith("OnCalendar="):
                expression = line.removeprefix("OnCalendar=")
                if systemd_accepts(expression) is False:
                    raise UsageError(
                        f"runbook {unit_set.runbook}: systemd refuses OnCalendar={expression}"
                        " (nothing was written)"
                    )


@click.group()
def schedule() -> None:
    """Runbooks on systemd timers: install, list and remove their units."""


@schedule.command()
@click.argument("names", nargs=-1, metavar="[RUNBOOK]...")
@click.option("--dry-run", is_flag=True, help="Print the units; write nothing.")
@unit_options
@json_option
@workspace_options
@click.pass_context
def install(
    ctx: click.Context,
    names: tuple[str, ...],
    dry_run: bool,
    user: bool,
    unit_dir: Path | None,
    env_dir: Path | None,
    as_json: bool,
) -> None:
    """Write a timer and a service for each RUNBOOK with a schedule (default: all of them),
    then reload systemd and enable each timer, where systemd runs.

    Each service runs `opskit run RUNBOOK --scheduled` with this opskit, runbook and
    inventory by absolute path and this state directory; secrets come from a 0600
    EnvironmentFile that is created empty when missing and never given a value by opskit.
    Running it again with nothing changed changes nothing.

    Exit codes: 0 done, 1 systemctl failed, 2 usage error (no schedule, units systemd refuses),
    74 a unit file could not be written (no permission: root, or --user).
    """
    from ..schedule import create_env_file, systemd_running, write_if_changed

    ws = workspace(ctx)
    settings = _settings(user, unit_dir, env_dir)
    loaded = _scheduled(ws, names)
    sets = [_units(ws, rb, settings) for rb in loaded]
    if not sets:
        echo("no runbook has a schedule: nothing to install")
        return
    _verify(sets, user)
    if dry_run:
        if as_json:
            emit_json([_set_json(s, dry_run=True) for s in sets])
            return
        for unit_set in sets:
            for path, text in unit_set.units:
                echo(f"# {path}")
                echo(text)
            made = "exists, kept" if unit_set.env_file.exists() else "would be created empty, 0600"
            echo(f"# secrets: {unit_set.env_file} ({made})\n")
        echo("dry run: nothing was written")
        return
    results: list[dict[str, Any]] = []
    changed_any = False
    for unit_set in sets:
        actions = {str(path): write_if_changed(path, text) for path, text in unit_set.units}
        env_action = create_env_file(unit_set.env_file, unit_set.env_text)
        changed = any(a != "unchanged" for a in actions.values())
        changed_any = changed_any or changed
        results.append(
            {
                **_set_json(unit_set),
                "units": actions,
                "env_file_action": env_action,
                "changed": changed,
                "loose_env_file": _loose(unit_set.env_file),
            }
        )
    enable = unit_dir is None and systemd_running()
    if enable:
        _enable(sets, results, user, changed_any)
    for r in results:
        r["enabled"] = bool(r.get("enabled"))
    if as_json:
        emit_json(results)
        return
    for r in results:
        for path, action in r["units"].items():
            echo(f"{action:9}  {path}")
        env_said = "created empty, 0600" if r["env_file_action"] == "created" else "kept"
        echo(f"{'secrets':9}  {r['env_file']} ({env_said}: put NAME=value lines there)")
        if r["loose_env_file"]:
            echo(f"warning: {r['env_file']} is readable by others: chmod 600 it", err=True)
    timers = " ".join(r["timer"] for r in results)
    if enable:
        echo(f"enabled: {timers}")
    elif unit_dir is not None:
        echo(
            f"not enabled (--unit-dir): once the units are where systemd looks, run"
            f"  systemctl{' --user' if user else ''} daemon-reload &&"
            f" systemctl{' --user' if user else ''} enable --now {timers}"
        )
    else:
        echo(
            "systemd is not running here (no /run/systemd/system): the units are written but"
            f" not enabled; where systemd runs:  systemctl{' --user' if user else ''}"
            f" daemon-reload && systemctl{' --user' if user else ''} enable --now {timers}"
        )


def _set_json(unit_set: UnitSet, *, dry_run: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "runbook": unit_set.runbook,
        "timer": unit_set.timer[0].name,
        "service": unit_set.service[0].name,
        "unit_files": [str(p) for p, _ in unit_set.units],
        "env_file": str(unit_set.env_file),
    }
    if dry_run:
        out["contents"] = {str(p): text for p, text in unit_set.units}
        out["env_file_exists"] = unit_set.env_file.exists()
    return out


def _loose(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))
    except OSError:
        return False


def _enable(sets: list[UnitSet], results: list[dict[str, Any]], user: bool, changed: bool) -> None:
    from ..schedule import systemctl

    if changed:
        _check(systemctl(user, "daemon-reload"), "daemon-reload")
    for unit_set, result in zip(sets, results, strict=True):
        timer = unit_set.timer[0].name
        state = systemctl(user, "is-enabled", timer).stdout.strip()
        active = systemctl(user, "is-active", timer).stdout.strip()
        if result["changed"] or state != "enabled" or active != "active":
            _check(systemctl(user, "enable", "--now", timer), f"enable --now {timer}")
        result["enabled"] = True


def _check(done: Any, what: str) -> None:
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise OpskitError(f"systemctl {what} failed: {said[0] if said else done.returncode}")


@schedule.command("list")
@unit_options
@json_option
@workspace_options
@click.pass_context
def list_schedules(
    ctx: click.Context, user: bool, unit_dir: Path | None, env_dir: Path | None, as_json: bool
) -> None:
    """Each scheduled runbook: its schedule, the next two elapse times, the last scheduled
    run (result, time, run ID) and whether its units are installed as they should be."""
    from ..schedule import as_json_time, describe_time, next_elapses, now
    from ..store import Journal

    ws = workspace(ctx)
    settings = _settings(user, unit_dir, env_dir)
    rows: list[dict[str, Any]] = []
    journal = Journal.open_default()
    try:
        for loaded in _scheduled(ws, ()):
            rb = loaded.runbook
            assert rb.schedule is not None
            upcoming = next_elapses(rb.schedule.on, now(), 2)
            last = journal.runs(rb.name, 1, scheduled=True)
            rows.append(
                {
                    "runbook": rb.name,
                    "on": rb.schedule.on,
                    "window": rb.schedule.window.duration if rb.schedule.window else None,
                    "next": [as_json_time(t) for t in upcoming],
                    "next_shown": [describe_time(t) for t in upcoming],
                    "last_run": None
                    if not last
                    else {
                        "id": last[0].id,
                        "status": last[0].shown_status,
                        "exit_code": last[0].exit_code,
                        "started_at": last[0].started_at,
                    },
                    "units": _installed(_units(ws, loaded, settings)),
                }
            )
    finally:
        journal.close()
    if as_json:
        emit_json([{k: v for k, v in r.items() if k != "next_shown"} for r in rows])
        return
    if not rows:
        echo("no runbook has a schedule")
        return
    from .history import _when

    table(
        ["RUNBOOK", "SCHEDULE", "NEXT", "LAST SCHEDULED RUN", "UNITS"],
        [
            [
                r["runbook"],
                ", ".join(r["on"]) + (f" (window {_span(r['window'])})" if r["window"] else ""),
                ", ".join(r["next_shown"]) or "never",
                "-"
                if r["last_run"] is None
                else f"{r['last_run']['status']} {_when(r['last_run']['started_at'])}"
                f" {r['last_run']['id']}",
                r["units"],
            ]
            for r in rows
        ],
    )


def _span(seconds: float) -> str:
    from ..model import format_duration

    return format_duration(seconds)


def _installed(unit_set: UnitSet) -> str:
    """'installed', 'outdated' (the runbook changed since: install again) or 'not installed'."""
    states = []
    for path, text in unit_set.units:
        try:
            states.append("same" if path.read_text(encoding="utf-8") == text else "differs")
        except OSError:
            states.append("missing")
    if all(s == "same" for s in states):
        return "installed"
    if all(s == "missing" for s in states):
        return "not installed"
    return "outdated (opskit schedule install)"


@schedule.command()
@click.argument("names", nargs=-1, metavar="[RUNBOOK]...")
@click.option("--all", "everything", is_flag=True, help="Every unit opskit installed here.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@unit_options
@json_option
@workspace_options
def remove(
    names: tuple[str, ...],
    everything: bool,
    dry_run: bool,
    user: bool,
    unit_dir: Path | None,
    env_dir: Path | None,
    as_json: bool,
) -> None:
    """Remove the timer and service of each RUNBOOK (or --all of opskit's), after stopping
    and disabling the timer where systemd runs. Only units opskit wrote are touched; each
    secrets file is kept (it holds what you put there).

    Exit codes: 0 done, 1 systemctl failed, 2 usage error.
    """
    from ..schedule import UNIT_PREFIX, is_own_unit, systemctl, systemd_running, unit_name

    settings = _settings(user, unit_dir, env_dir)
    if bool(names) == everything:
        raise UsageError("name the runbooks whose units to remove, or give --all")
    if everything:
        found = (
            sorted(settings.unit_dir.glob(f"{UNIT_PREFIX}*")) if settings.unit_dir.is_dir() else []
        )
        paths = [p for p in found if is_own_unit(p)]
    else:
        paths = []
        for name in names:
            own = [settings.unit_dir / unit_name(name, s) for s in ("timer", "service")]
            present = [p for p in own if p.exists()]
            if not present:
                raise UsageError(f"no units of runbook {name!r} in {settings.unit_dir}")
            for path in present:
                if not is_own_unit(path):
                    raise UsageError(f"{path} was not written by opskit: left alone")
            paths += present
    timers = [p.name for p in paths if p.suffix == ".timer"]
    managed = unit_dir is None and systemd_running()
    if not dry_run:
        if managed and timers:
            _check(systemctl(user, "disable", "--now", *timers), "disable --now")
        for path in paths:
            path.unlink()
        if managed and paths:
            _check(systemctl(user, "daemon-reload"), "daemon-reload")
    if as_json:
        emit_json({"removed": [str(p) for p in paths], "dry_run": dry_run, "disabled": managed})
        return
    for path in paths:
        echo(f"{'would remove' if dry_run else 'removed'}  {path}")
    if not paths:
        echo(f"no units of opskit in {settings.unit_dir}")
    elif not dry_run:
        env_files = sorted(
            {
                settings.env_dir / f"{p.name[len(UNIT_PREFIX) :].rsplit('.', 1)[0]}.env"
                for p in paths
            }
        )
        kept = [str(p) for p in env_files if p.exists()]
        if kept:
            echo(f"kept the secrets file{'s' if len(kept) > 1 else ''}: {', '.join(kept)}")
