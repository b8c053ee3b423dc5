"""Scheduled runs on systemd timers: OnCalendar expressions, maintenance windows, standing
approvals, and the units `opskit schedule install` writes.

OnCalendar expressions are read by the `oncalendar` parser (pure Python, in process: validate
stays fast and a scheduled run needs nothing else). Where it lacks a form systemd knows
(fractional seconds, `@EPOCH`), `systemd-analyze calendar` decides when it is installed:
systemd is what will run the timer. tests/test_schedule.py holds the two to the same answers.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any

from .errors import EXIT_WINDOW, OpskitError, UsageError, WindowClosed

if TYPE_CHECKING:
    import subprocess

    from .engine.executor import RunResult
    from .engine.session import Request
    from .model.plan import Plan, PlannedStep
    from .model.schedule import Approve, Schedule
    from .workspace import LoadedRunbook

SYSTEMD_ANALYZE = "systemd-analyze"
# Present while systemd runs as the init system (sd_booted(3) looks at the same place).
SYSTEMD_RUN_DIR = Path("/run/systemd/system")
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
SYSTEM_ENV_DIR = Path("/etc/opskit")
UNIT_PREFIX = "opskit-"
# The first line of every unit opskit writes: `remove` deletes only files that carry it.
MARKER = "# Written by opskit schedule install"
# A scheduled run that finds its window closed exits with this (SuccessExitStatus= of the unit).
WINDOW_EXIT = EXIT_WINDOW


class CalendarError(ValueError):
    """An OnCalendar expression neither the parser nor systemd accepts."""


# --- time zones ------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def local_zone() -> tzinfo:
    """The zone systemd reads an expression without one in: $TZ, else /etc/localtime."""
    from zoneinfo import ZoneInfo

    name = os.environ.get("TZ", "").lstrip(":")
    try:
        if name.startswith("/"):
            with open(name, "rb") as f:
                return ZoneInfo.from_file(f, key=name)
        if name:
            return ZoneInfo(name)
        with open("/etc/localtime", "rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError):
        zone = datetime.now().astimezone().tzinfo
        return zone if zone is not None else UTC


def now() -> datetime:
    return datetime.now(local_zone())


# --- OnCalendar ------------------------------------------------------------------------------


def check_expression(expression: str) -> str | None:
    """Why systemd would refuse `expression` as OnCalendar=, or None when it is good."""
    from oncalendar import OnCalendarError, TzIterator

    if not expression.strip():
        return "empty OnCalendar expression"
    if "\n" in expression:
        return "one OnCalendar expression per item (give a list for several)"
    try:
        TzIterator(expression, now())
    except OnCalendarError as exc:
        verdict = systemd_accepts(expression)
        if verdict:
            return None  # a form the parser lacks; systemd, which runs the timer, takes it
        checked = " (systemd-analyze calendar agrees)" if verdict is False else ""
        return f"bad OnCalendar expression {expression!r}: {str(exc).lower()}{checked}"
    return None


@lru_cache(maxsize=256)
def systemd_accepts(expression: str) -> bool | None:
    """systemd's own verdict on an expression, or None when systemd-analyze is missing."""
    import shutil
    import subprocess

    if shutil.which(SYSTEMD_ANALYZE) is None:
        return None
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "calendar", expression], capture_output=True, text=True, timeout=30
    )
    return done.returncode == 0


def next_elapses(expressions: Sequence[str], after: datetime, count: int) -> list[datetime]:
    """The next `count` times (strictly after `after`, timezone-aware) any expression
    elapses, as systemd computes them, merged and in order."""
    from oncalendar import OnCalendarError, TzIterator

    found: set[datetime] = set()
    for expression in expressions:
        try:
            iterator: Iterator[datetime] = TzIterator(expression, after)
            for _, when in zip(range(count), iterator, strict=False):
                found.add(when)
        except OnCalendarError:
            found.update(systemd_elapses(expression, after, count))
    return sorted(found)[:count]


_ELAPSE = re.compile(r"^\s*(?:Next elapse|Iter\. #\d+): (.+)$")
_IN_UTC = re.compile(r"^\s*\(in UTC\): (.+)$")


def systemd_elapses(expression: str, after: datetime, count: int) -> list[datetime]:
    """`systemd-analyze calendar --iterations=COUNT --base-time=AFTER EXPRESSION`, parsed."""
    import shutil
    import subprocess

    if shutil.which(SYSTEMD_ANALYZE) is None:
        raise CalendarError(
            f"OnCalendar expression {expression!r} needs systemd-analyze, which is not installed"
        )
    done = subprocess.run(
        [
            SYSTEMD_ANALYZE,
            "calendar",
            f"--iterations={count}",
            f"--base-time=@{int(after.timestamp())}",
            expression,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        raise CalendarError(f"bad OnCalendar expression {expression!r}: {done.stderr.strip()}")
    return [when.astimezone(after.tzinfo) for when in parse_systemd_calendar(done.stdout)]


def parse_systemd_calendar(text: str) -> list[datetime]:
    """The elapse times in `systemd-analyze calendar` output, in UTC (its `(in UTC)` line
    where the local zone is another, else the line itself, which is then UTC)."""
    times: list[str] = []
    for line in text.splitlines():
        if m := _ELAPSE.match(line):
            times.append(m.group(1))
        elif (m := _IN_UTC.match(line)) and times:
            times[-1] = m.group(1)
    out = []
    for shown in times:
        if shown.strip() == "never":
            continue
        # "Wed 2026-12-02 00:15:00 UTC"
        _, day, clock, zone = shown.split()
        if zone != "UTC":
            raise CalendarError(f"systemd-analyze gave a time outside UTC: {shown!r}")
        out.append(datetime.fromisoformat(f"{day}T{clock}+00:00"))
    return out


# --- maintenance windows ---------------------------------------------------------------------


@dataclass(frozen=True)
class WindowState:
    open: bool
    opened_at: datetime | None = None  # the elapse that opened the current window
    closes_at: datetime | None = None
    next_open: datetime | None = None  # when closed: when it opens next


def window_state(schedule: Schedule, at: datetime | None = None) -> WindowState:
    """Whether the schedule's window is open at `at` (default: now). A window opens at each
    elapse of its start and stays open `duration`: [elapse, elapse + duration)."""
    when = at or now()
    if schedule.window is None:
        return WindowState(open=True)
    length = timedelta(seconds=schedule.window.duration)
    best: WindowState | None = None
    upcoming: list[datetime] = []
    for expression in schedule.window_start:
        # The first elapse after (when - length) opened the window if it came by now.
        first = next_elapses([expression], when - length, 1)
        if not first:
            continue
        if first[0] <= when:
            state = WindowState(True, first[0], first[0] + length)
            if best is None or (state.closes_at or when) > (best.closes_at or when):
                best = state
        else:
            upcoming.append(first[0])
    if best is not None:
        return best
    return WindowState(open=False, next_open=min(upcoming) if upcoming else None)


# --- standing approvals ----------------------------------------------------------------------


def approves(approve: Approve, step: PlannedStep) -> bool:
    """Whether the runbook's standing approvals cover this gated step."""
    return step.step in approve.steps or step.risk.value in approve.risk


def changed_targets(plan: Plan) -> list[str]:
    """Targets the plan would change (a step that is not a check, with a change planned)."""
    from .model import ChangeKind, Risk

    return [
        t.target
        for t in plan.targets
        if any(
            s.risk is not Risk.READ and s.change.kind is not ChangeKind.NONE and not s.skipped
            for s in t.steps
            if s.section != "handlers"
        )
    ]


def needs_approval(approve: Approve, plan: Plan) -> list[str]:
    """Why a scheduled run of `plan` may not pass its gates unattended, one line each
    (empty: the standing approvals cover every gate)."""
    reasons = [
        f"{target}: step {s.id}: {s.gate or f'{s.risk.value}, may ask once earlier steps ran'}"
        for target, s in plan.possible_gates()
        if not approves(approve, s)
    ]
    changed = changed_targets(plan)
    if approve.max_targets is not None and len(changed) > approve.max_targets:
        reasons.append(
            f"{len(changed)} targets would change ({', '.join(changed[:5])}"
            f"{', ...' if len(changed) > 5 else ''}), more than approve.max_targets"
            f" {approve.max_targets}"
        )
    return reasons


# --- units -----------------------------------------------------------------------------------


def unit_name(runbook: str, suffix: str) -> str:
    return f"{UNIT_PREFIX}{runbook}.{suffix}"


def default_unit_dir(user: bool) -> Path:
    if not user:
        return SYSTEM_UNIT_DIR
    return _config_home() / "systemd" / "user"


def default_env_dir(user: bool) -> Path:
    return _config_home() / "opskit" if user else SYSTEM_ENV_DIR


def _config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")


def opskit_command() -> list[str]:
    """The absolute command of the opskit running now: its script, else the interpreter
    with `-m opskit` (never resolving the venv's python symlink, which would leave the venv)."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is not None and script.name == "opskit" and os.access(script, os.X_OK):
        return [os.path.abspath(script)]
    return [os.path.abspath(sys.executable), "-m", "opskit"]


def systemd_quote(word: str) -> str:
    """One word of an ExecStart= line or an Environment= assignment: `%` doubled (a
    specifier otherwise), `$` doubled (a variable otherwise), quoted when it holds space."""
    text = word.replace("%", "%%").replace("$", "$$")
    if re.search(r"[\s\"'\\;]", text) or not text:
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def timespan(seconds: float) -> str:
    """Seconds as a systemd time span: 90 -> '1min 30s'."""
    whole = round(seconds)
    parts = []
    for unit, size in (("h", 3600), ("min", 60), ("s", 1)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return " ".join(parts) or "0"


@dataclass
class UnitSet:
    """The two units of one scheduled runbook, and the secrets file they read."""

    runbook: str
    timer: tuple[Path, str]
    service: tuple[Path, str]
    env_file: Path
    env_text: str  # what the env file gets when it is missing: comments only, no value

    @property
    def units(self) -> list[tuple[Path, str]]:
        return [self.timer, self.service]


@dataclass
class UnitSettings:
    """Where units go and what they run."""

    unit_dir: Path
    env_dir: Path
    user: bool = False
    command: list[str] = field(default_factory=opskit_command)
    templates: Path | None = None  # deploy/opskit/ of the project or of opskit itself


DEFAULT_TIMEOUT = 3600.0  # systemd stops a run after this long unless the schedule says
STOP_MARGIN = 60.0  # after SIGTERM: the run's grace, always-steps, then this much


def render_units(
    *,
    runbook: str,
    description: str,
    runbook_path: Path,
    runbooks_dir: Path,
    inventory_path: Path,
    state_dir: Path,
    schedule: Schedule,
    secret_refs: Iterable[str],
    settings: UnitSettings,
    grace: float = 30.0,
) -> UnitSet:
    """The timer and service of one runbook, from the templates in deploy/opskit/."""
    templates = settings.templates or find_templates([])
    timer_name, service_name = unit_name(runbook, "timer"), unit_name(runbook, "service")
    env_file = settings.env_dir / f"{runbook}.env"
    timeout = schedule.timeout
    if timeout is None:
        timeout = DEFAULT_TIMEOUT
        if schedule.window is not None:
            # The window stops the run itself; systemd's timeout is the backstop behind it.
            timeout = schedule.window.duration + grace + STOP_MARGIN
    exec_start = [
        *settings.command,
        "--runbooks",
        str(runbooks_dir.resolve()),
        "--inventory",
        str(inventory_path.resolve()),
        "run",
        str(runbook_path.resolve()),
        "--scheduled",
    ]
    if schedule.lock_wait:
        exec_start += ["--lock-wait", f"{int(schedule.lock_wait)}s"]
    environment = {"OPSKIT_STATE_DIR": str(state_dir.resolve()), "PYTHONUNBUFFERED": "1"}
    values = {
        "runbook": runbook,
        "runbook_path": str(runbook_path.resolve()),
        "description": _one_line(description) or runbook,
        "on_calendar": "\n".join(f"OnCalendar={e}" for e in schedule.on),
        "randomized_delay": (
            f"RandomizedDelaySec={timespan(schedule.randomized_delay)}"
            if schedule.randomized_delay
            else ""
        ),
        "service": service_name,
        "after": "" if settings.user else "After=network-online.target",
        "wants": "" if settings.user else "Wants=network-online.target",
        "environment": "\n".join(
            f"Environment={systemd_quote(f'{k}={v}')}" for k, v in environment.items()
        ),
        "env_file": systemd_quote(str(env_file)),
        "exec_start": " ".join(systemd_quote(w) for w in exec_start),
        "timeout": timespan(timeout),
        "stop_timeout": timespan(grace + STOP_MARGIN),
        "window_exit": str(WINDOW_EXIT),
        "wanted_by": "timers.target",
    }
    needed = sorted({ref.split(":", 2)[-1] for ref in secret_refs if _is_env_ref(ref)})
    env_text = (
        f"# Secrets of the scheduled runbook {runbook} ({service_name}), as NAME=value lines.\n"
        "# opskit created this file empty and never writes a value into it; keep it mode 0600.\n"
        + (
            "# The runbook reads: " + ", ".join(needed) + "\n"
            if needed
            else "# The runbook reads no environment variable.\n"
        )
    )
    return UnitSet(
        runbook=runbook,
        timer=(settings.unit_dir / timer_name, _fill(templates / "opskit.timer", values)),
        service=(settings.unit_dir / service_name, _fill(templates / "opskit.service", values)),
        env_file=env_file,
        env_text=env_text,
    )


def _is_env_ref(ref: str) -> bool:
    return ref.removeprefix("optional:").startswith("env:")


def _one_line(text: str) -> str:
    return " ".join(text.split()).replace("%", "%%")


def find_templates(roots: Iterable[Path]) -> Path:
    """deploy/opskit/ of the runbook's project (a homelab may adapt its units), else of
    opskit's own source tree."""
    own = Path(__file__).resolve().parents[2]
    for root in [*roots, own]:
        candidate = root / "deploy" / "opskit"
        if (candidate / "opskit.timer").is_file() and (candidate / "opskit.service").is_file():
            return candidate
    raise UsageError(
        "no unit templates: deploy/opskit/opskit.timer and opskit.service are missing"
        f" (looked in the project and in {own})"
    )


def _fill(template: Path, values: dict[str, str]) -> str:
    """The template with `${name}` filled; a line that was only a placeholder and came out
    empty is dropped (an optional setting not given)."""
    lines = []
    for line in template.read_text(encoding="utf-8").splitlines():
        filled = Template(line).substitute(values)
        if not filled.strip() and line.strip().startswith("${"):
            continue
        lines.append(filled)
    return "\n".join(lines).rstrip("\n") + "\n"


def is_own_unit(path: Path) -> bool:
    """A unit opskit wrote (its name and its first line say so), never anyone else's."""
    if not path.name.startswith(UNIT_PREFIX) or path.suffix not in (".timer", ".service"):
        return False
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().startswith(MARKER)
    except (OSError, UnicodeDecodeError):
        return False


def systemd_running() -> bool:
    return SYSTEMD_RUN_DIR.is_dir()


def write_if_changed(path: Path, text: str, mode: int = 0o644) -> str:
    """'unchanged', 'updated' or 'written': the file holds `text` afterwards, written
    atomically (a half-written unit never meets daemon-reload)."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return "unchanged"
        action = "updated"
    except FileNotFoundError:
        action = "written"
    from .localfile import write_atomic

    write_atomic(path, text, what="the unit file", mode=mode, parents=True)
    return action


def create_env_file(path: Path, text: str) -> str:
    """'created' (0600, comments only) or 'kept': an existing file is never touched."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return "kept"
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return "created"


def systemctl(user: bool, *args: str) -> subprocess.CompletedProcess[str]:
    import subprocess

    command = ["systemctl", *(["--user"] if user else []), *args]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise UsageError("systemd runs here but systemctl is not on PATH") from None


def verify_units(paths: Sequence[Path], user: bool = False) -> tuple[bool, str] | None:
    """`systemd-analyze verify` of unit files: (ok, what it said), None when not installed."""
    import shutil
    import subprocess

    if shutil.which(SYSTEMD_ANALYZE) is None:
        return None
    command = [SYSTEMD_ANALYZE, *(["--user"] if user else []), "verify", *map(str, paths)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    return done.returncode == 0 and not done.stderr.strip(), (done.stdout + done.stderr).strip()


def describe_time(when: datetime | None) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S %Z") if when is not None else "-"


def as_json_time(when: datetime | None) -> Any:
    return when.isoformat() if when is not None else None


# --- the scheduled run -----------------------------------------------------------------------


def run_scheduled(
    req: Request,
    name: str,
    given: Mapping[str, Any],
    limit: str | None,
    *,
    dry_run: bool = False,
    show: Callable[[Plan], None] = lambda plan: None,
    say: Callable[[str], None] = lambda text: None,
    warn: Callable[[str], None] = lambda text: None,
) -> int:
    """`opskit run RUNBOOK --scheduled`, what the timer starts: nobody at a terminal, the
    window and the standing approvals enforced, the run journaled as scheduled. An
    interrupted scheduled run (its window closed) is continued, not started over."""
    from .engine.session import Session, execute, make_plan, resume
    from .errors import GateError, LockError, StepError

    loaded = req.workspace.load(name)
    block = loaded.runbook.schedule
    if block is None:
        raise UsageError(
            f"runbook {loaded.name!r} has no schedule: a scheduled run needs one (schedule:)"
        )
    req.interactive = False
    req.scheduled = True
    req.standing = block.approve
    if block.lock_wait and not req.lock_wait:
        req.lock_wait = block.lock_wait
    state = window_state(block)
    if not state.open:
        opens = describe_time(state.next_open) if state.next_open else "never again"
        message = f"outside its maintenance window (it opens next at {opens}): not started"
        if not dry_run:
            _journal_refusal(req, loaded, "refused", WINDOW_EXIT, message)
        raise WindowClosed(f"{loaded.name}: {message}")
    if state.closes_at is not None:
        req.deadline = state.closes_at.timestamp()
        say(f"maintenance window open until {describe_time(state.closes_at)}")
    unfinished = None if dry_run else _interrupted_run(req, loaded)
    plan = None
    session = Session(req)  # the plan's connections are the run's
    try:
        if unfinished is not None:
            say(f"continuing scheduled run {unfinished} (interrupted when its window closed)")
            result = resume(req, unfinished, session=session)
        else:
            loaded, targets, plan = make_plan(req, name, given, limit, session=session)
            show(plan)
            found = plan.blockers()
            if found:
                raise StepError(
                    f"the plan has blockers; nothing was run: {len(found)}:\n  "
                    + "\n  ".join(found)
                )
            if dry_run:
                reasons = needs_approval(block.approve, plan)
                if reasons:
                    raise GateError(
                        "a scheduled run would need approval (schedule.approve does not cover):"
                        "\n  " + "\n  ".join(reasons)
                    )
                say("dry run: a scheduled run would pass its gates; nothing was changed")
                return 0
            result = execute(req, loaded, targets, plan, session=session)
    except OpskitError as exc:
        session.close()
        if not dry_run:
            if isinstance(exc, GateError):
                status = "needs approval"
            else:
                status = "locked" if isinstance(exc, LockError) else "failed"
            run_id = _journal_refusal(req, loaded, status, exc.exit_code, str(exc), plan)
            notify_run(req, loaded, status, run_id, message=str(exc), say=say, warn=warn)
        raise
    finally:
        session.close()
    notify_run(req, loaded, result.status, result.run_id, result=result, say=say, warn=warn)
    return result.exit_code


def notify_run(
    req: Request,
    loaded: LoadedRunbook,
    status: str,
    run_id: str | None,
    *,
    message: str | None = None,
    result: RunResult | None = None,
    say: Callable[[str], None] = lambda text: None,
    warn: Callable[[str], None] = lambda text: None,
) -> None:
    """Tell the runbook's `schedule.notify` receivers how the run ended: run ID, runbook,
    failed targets, the first error (or why it did not start), never a secret."""
    from .notify import Notice, send
    from .secrets import redactor
    from .store import Journal, state_dir

    block = loaded.runbook.schedule
    if block is None or block.notify is None:
        return
    failed: list[str] = []
    first_error = None
    detail: list[str] = []
    if message:
        first, *rest = message.strip().splitlines() or [""]
        first_error = first
        detail = [line.strip() for line in rest if line.strip()]
    if result is not None:
        failed = [t for t, s in result.targets.items() if s in ("failed", "interrupted")]
        journal = req.journal or Journal.open_default(redact=redactor.redact)
        try:
            errors = sorted(
                (s.ended_at or 0.0, f"[{s.target}] {s.step_id}: {s.error}")
                for s in journal.steps(result.run_id)
                if s.status == "failed" and s.error
            )
            row = journal.run(result.run_id)
        finally:
            if req.journal is None:
                journal.close()
        if errors:
            first_error = errors[0][1]
        if row is not None and row.message:
            detail.append(row.message)
    log = state_dir() / "logs" / f"{run_id}.log" if run_id else None
    notice = Notice(
        runbook=loaded.name,
        status=status,
        run_id=run_id,
        scheduled=req.scheduled,
        failed_targets=failed,
        first_error=first_error,
        detail=detail,
        log=str(log) if log is not None and log.exists() else None,
    )
    reached = send(notice, block.notify, warn, req.settings.transports)
    if reached:
        say(f"notified ({notice.event}): {', '.join(reached)}")


def _interrupted_run(req: Request, loaded: LoadedRunbook) -> str | None:
    """The last scheduled run of this runbook, when its window closed on it (journaled
    interrupted, not resumed since, the runbook unchanged): the next window continues it."""
    from .planner import file_ref
    from .secrets import redactor
    from .store import Journal

    journal = req.journal or Journal.open_default(redact=redactor.redact)
    try:
        last = journal.runs(loaded.name, 1, scheduled=True)
        if not last or last[0].status != "interrupted":
            return None
        row = last[0]
        resumed = journal.db.execute(
            "SELECT 1 FROM runs WHERE resumed_from = ? LIMIT 1", (row.id,)
        ).fetchone()
        path = Path(row.runbook_path)
        if resumed or not path.is_file() or file_ref(path).sha256 != row.runbook_sha:
            return None
        return row.id
    finally:
        if req.journal is None:
            journal.close()


def _journal_refusal(
    req: Request,
    loaded: LoadedRunbook,
    status: str,
    code: int,
    message: str,
    plan: Plan | None = None,
) -> str:
    """A scheduled run that did not start (window closed, needs approval, locked, failed
    before its first step) still has a record: `history` and `schedule list` show it."""
    from . import __version__
    from .engine.session import new_run_id
    from .planner import file_ref
    from .secrets import redactor
    from .store import Journal

    run_id = new_run_id()
    journal = req.journal or Journal.open_default(redact=redactor.redact)
    try:
        runbook_ref = file_ref(loaded.path)
        inventory_ref = file_ref(req.workspace.inventory_path)
        journal.start_run(
            run_id,
            runbook=loaded.name,
            runbook_path=str(loaded.path.resolve()),
            runbook_sha=runbook_ref.sha256,
            inventory_path=str(req.workspace.inventory_path),
            inventory_sha=inventory_ref.sha256,
            fingerprint=plan.fingerprint if plan is not None else "",
            params=plan.params if plan is not None else {},
            limit=plan.limit if plan is not None else None,
            opskit_version=__version__,
            plan=plan.model_dump(mode="json") if plan is not None else {},
            steps=[
                (tp.target, s.id, seq, s.section, s.action, s.change.kind.value, s.change.summary)
                for tp in (plan.targets if plan is not None else [])
                for seq, s in enumerate(tp.steps)
            ],
            scheduled=True,
        )
        journal.finish_run(run_id, status, code, message)
    finally:
        if req.journal is None:
            journal.close()
    return run_id
