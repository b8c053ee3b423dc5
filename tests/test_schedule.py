"""Schedules: OnCalendar as systemd reads it, windows, validate's located errors."""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from ruamel.yaml import YAML

from opskit import schedule
from opskit.model.schedule import Schedule

REPO = Path(__file__).resolve().parent.parent

# Every form a homelab writes, and systemd's own examples (systemd.time(7)).
EXPRESSIONS = [
    "*:0/15",
    "hourly",
    "daily",
    "weekly",
    "monthly",
    "yearly",
    "annually",
    "quarterly",
    "semiannually",
    "minutely",
    "Mon..Fri 02:00",
    "Mon-Fri 9:00",
    "Sat,Sun 03:30",
    "*-*-01 04:00",
    "*-02-29 00:00",
    "Mon *-*-1..7 03:00",
    "*-*~1 23:00",
    "*-*~07/1",
    "2026-12-24 18:00",
    "*:00/5",
    "03:15",
    "00:00",
    "Sun 03:00 UTC",
    "Sun 03:00 Europe/Berlin",
    "*-*-* 2:00 America/New_York",
    "*-*-* 00/6:00:00",
    "Mon,Wed,Fri 08:30:15",
    "*-01,07-15 12:00",
    "Tue *-*-* 1:2:3",
    "*-*-* *:*:0/30",
    "Fri *-*-13 13:13",
    "12,14:00",
    "Sun",
    "Mon 2026-*-* 00:00",
    "2027-*-* 00:00",
    "*-*-* 02:30",
    "*:0/30",
]
# Rejected by both.
INVALID = ["Mon 25:00", "bogus", "*-13-01", "Sat..Mon 01:00", "*:61", "Mon 02:00 Mars/Olympus"]
# Forms the parser lacks and systemd takes: systemd-analyze decides them.
PARSER_LACKS = ["02:00:00.5", "@1700000000"]

BASES = [
    ("UTC", datetime(2026, 3, 28, 12, 0, 7, tzinfo=UTC)),
    ("UTC", datetime(2026, 12, 31, 23, 45, 0, tzinfo=UTC)),  # exactly on an elapse
    # the days the clocks change, where an hour is skipped and one repeats
    ("Europe/Berlin", datetime(2026, 3, 28, 12, 0, 0, tzinfo=ZoneInfo("Europe/Berlin"))),
    ("Europe/Berlin", datetime(2026, 10, 25, 1, 50, 0, tzinfo=ZoneInfo("Europe/Berlin"))),
]


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        message = "systemd-analyze is missing (Debian's systemd package; make installs it)"
        if os.environ.get("OPSKIT_CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def systemd_times(expression: str, base: datetime, zone: str, count: int) -> list[datetime]:
    done = subprocess.run(
        [
            systemd_analyze(),
            "calendar",
            f"--iterations={count}",
            f"--base-time=@{int(base.timestamp())}",
            expression,
        ],
        capture_output=True,
        text=True,
        env={"TZ": zone, "PATH": os.environ["PATH"]},
    )
    assert done.returncode == 0, (expression, done.stderr)
    return schedule.parse_systemd_calendar(done.stdout)


def parser_times(expression: str, base: datetime, count: int) -> list[datetime]:
    """The parser alone (no systemd fallback), as next_elapses uses it."""
    from oncalendar import TzIterator

    out = []
    for _, when in zip(range(count), TzIterator(expression, base), strict=False):
        out.append(when.astimezone(UTC))
    return out


def shipped_expressions() -> list[str]:
    found = []
    for path in sorted((REPO / "runbooks").glob("*.yaml")):
        data = YAML(typ="safe").load(path.read_text())
        if data.get("schedule") is not None:
            block = Schedule.model_validate(
                {"on": data["schedule"]} if isinstance(data["schedule"], str) else data["schedule"]
            )
            found += block.on + (block.window.start or [] if block.window else [])
    return found


def test_the_shipped_health_runbook_is_scheduled():
    assert "*:0/15" in shipped_expressions()


@pytest.mark.parametrize(("zone", "base"), BASES, ids=lambda v: str(v))
def test_next_elapses_agree_with_systemd_analyze(zone, base):
    expressions = sorted(set(EXPRESSIONS + shipped_expressions()))
    assert len(expressions) >= 20
    for expression in expressions:
        theirs = systemd_times(expression, base, zone, 5)
        ours = parser_times(expression, base, 5)
        assert ours == theirs, (expression, zone, base, ours, theirs)
        # and the function opskit uses gives the same
        assert [t.astimezone(UTC) for t in schedule.next_elapses([expression], base, 5)] == theirs


def test_both_refuse_the_same_expressions():
    systemd_analyze()
    for expression in INVALID:
        problem = schedule.check_expression(expression)
        assert problem is not None and "systemd-analyze calendar agrees" in problem, expression
        assert schedule.systemd_accepts(expression) is False
    for expression in EXPRESSIONS:
        assert schedule.check_expression(expression) is None, expression
        assert schedule.systemd_accepts(expression) is True, expression


def test_forms_the_parser_lacks_are_decided_by_systemd():
    from oncalendar import OnCalendarError, TzIterator

    systemd_analyze()
    base = datetime(2026, 3, 28, 12, 0, 7, tzinfo=UTC)
    for expression in PARSER_LACKS:
        with pytest.raises(OnCalendarError):
            TzIterator(expression, base)
        assert schedule.check_expression(expression) is None
        assert schedule.next_elapses([expression], base, 3) == systemd_times(
            expression, base, "UTC", 3
        )


def test_several_expressions_merge_in_order():
    base = datetime(2026, 3, 28, 12, 0, 7, tzinfo=UTC)
    times = schedule.next_elapses(["12:30", "*:0/20"], base, 4)
    assert [t.strftime("%H:%M") for t in times] == ["12:20", "12:30", "12:40", "13:00"]


def test_window_open_closed_and_next():
    block = Schedule.model_validate({"on": "Sun 02:00", "window": "2h"})
    tz = ZoneInfo("Europe/Berlin")
    opened = datetime(2026, 11, 29, 2, 0, tzinfo=tz)  # a Sunday
    inside = schedule.window_state(block, opened + timedelta(minutes=90))
    assert inside.open and inside.opened_at == opened
    assert inside.closes_at == opened + timedelta(hours=2)
    at_close = schedule.window_state(block, opened + timedelta(hours=2))
    assert not at_close.open and at_close.next_open == opened + timedelta(days=7)
    before = schedule.window_state(block, opened - timedelta(seconds=1))
    assert not before.open and before.next_open == opened
    assert schedule.window_state(block, opened).open
    # a window of its own, apart from the schedule
    own = Schedule.model_validate(
        {"on": "*:0/15", "window": {"start": "Sat,Sun 01:00", "duration": "4h"}}
    )
    assert schedule.window_state(own, datetime(2026, 11, 28, 4, 59, tzinfo=tz)).open
    assert not schedule.window_state(own, datetime(2026, 11, 27, 4, 59, tzinfo=tz)).open
    # no window: always open
    assert schedule.window_state(Schedule.model_validate({"on": "daily"})).open


BAD = """
name: bad
description: bad schedules
targets: all
schedule:
  on: ["*:0/15", "Mon 25:00"]
  window: {start: bogus, duration: 1h}
  approve: {steps: [chek], risk: [change]}
  randomized_delay: 2h
steps:
  - id: check
    wait: {duration: 1s}
"""


def test_validate_locates_each_schedule_problem(opskit, project):
    path = project.runbook("bad", BAD)
    project.runbook(
        "bare",
        "name: bare\ntargets: all\nschedule: 'Sat..Mon 1:00'\n"
        "steps:\n  - id: w\n    wait: {duration: 1s}\n",
    )
    done = opskit("validate", cwd=project.root)
    assert done.code == 2
    lines = done.err.splitlines()
    expected = [
        f"{path}:5:18: schedule.on[1]: bad OnCalendar expression 'Mon 25:00': bad hour",
        f"{path}:6:19: schedule.window.start: bad OnCalendar expression 'bogus'",
        f"{path}:7:21: schedule.approve.steps[0]: approve names unknown step 'chek'"
        " (did you mean 'check'?)",
        f"{path}:8:21: schedule.randomized_delay: randomized_delay is as long as the window",
    ]
    for start in expected:
        assert any(line.startswith(start) for line in lines), (start, done.err)
    assert any(
        line.endswith(
            "bare.yaml:3:11: schedule: bad OnCalendar expression 'Sat..Mon 1:00':"
            " bad day-of-week (systemd-analyze calendar agrees)"
        )
        for line in lines
    ), done.err


def test_a_bare_string_and_a_block_are_the_same_schedule():
    from opskit.model import Runbook

    steps = [{"id": "w", "wait": {"duration": 1}}]
    bare = Runbook.model_validate(
        {"name": "a", "targets": "all", "schedule": "daily", "steps": steps}
    )
    block = Runbook.model_validate(
        {"name": "a", "targets": "all", "schedule": {"on": "daily"}, "steps": steps}
    )
    assert bare.schedule == block.schedule and bare.schedule is not None
    assert bare.schedule.on == ["daily"] and bare.schedule.window is None
