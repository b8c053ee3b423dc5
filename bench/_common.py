"""What the benchmark scripts share: timing children, summaries, tables, verdicts, profiles.

Plain standard library, imported by the scripts in this directory (a script's own directory is
first on sys.path, so `python bench/X.py` finds it). The method of each benchmark is described
in its own docstring; this module only holds the machinery that they have in common.
"""

from __future__ import annotations

import os
import pstats
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

# Variables that would make any opskit run use other files, or time something else.
SCRUBBED_ENV = (
    "OPSKIT_RUNBOOKS",
    "OPSKIT_INVENTORY",
    "PYTHONPROFILEIMPORTTIME",
    "PYTHONDONTWRITEBYTECODE",
)


def fail(message: str) -> NoReturn:
    """A command that should work did not: nothing meaningful to time (exit 2)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def opskit_command(python: str) -> list[str]:
    """The console script next to the interpreter, else the same entry point through -c."""
    bindir = Path(python).parent
    for name in ("opskit", "opskit.exe"):
        script = bindir / name
        if script.is_file() and os.access(script, os.X_OK):
            return [str(script)]
    return [python, "-c", "from opskit.cli import main; main()"]


def scrubbed_env(names: Iterable[str], pycache: str | Path | None = None) -> dict[str, str]:
    """This environment less `names`; with `pycache`, a bytecode cache of the children's own
    (PYTHONPYCACHEPREFIX, writing allowed), so that nothing is written into the repository or
    the venv and compiling is not timed after the first runs."""
    env = dict(os.environ)
    for name in names:
        env.pop(name, None)
    if pycache is not None:
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


@contextmanager
def scratch_dir(prefix: str, keep: bool, parent: str | None = None) -> Iterator[Path]:
    """A temporary directory, removed afterwards unless `keep` (then its path goes to stderr)."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield root
    finally:
        if keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


class StateDirs:
    """A fresh, empty state directory per run (root/state/0001, 0002, ...); for dataclasses
    that have the fields `root` and `states` (starting at 0)."""

    root: Path
    states: int

    def fresh_state(self) -> Path:
        self.states += 1
        path = self.root / "state" / f"{self.states:04d}"
        path.mkdir(parents=True)
        return path


# ----- running a child ---------------------------------------------------------------------


@dataclass
class Child:
    """One child process, reaped with os.wait4: its own resource usage, not its siblings'."""

    elapsed: float  # wall s, time.perf_counter() from spawn to reaping
    returncode: int
    usage: Any  # resource.struct_rusage
    output: str  # stderr, or stdout and stderr together (merge_output)
    spawned: float  # time.time() when started, for epoch times in a journal
    exited: float  # time.time() when reaped

    @property
    def cpu(self) -> float:
        """The child's CPU time (user + system), and that of the descendants it waited for."""
        return float(self.usage.ru_utime + self.usage.ru_stime)

    @property
    def peak_kib(self) -> int:
        """The child's peak resident set size (ru_maxrss, KiB on Linux)."""
        return int(self.usage.ru_maxrss)


def run_child(cmd: list[str], cwd: Path, env: dict[str, str], merge_output: bool = False) -> Child:
    """Run `cmd` to its end, stdin from /dev/null. Its stderr is kept (in a temporary file in
    `cwd`) and its stdout goes to /dev/null; with `merge_output` both are kept, together."""
    with tempfile.TemporaryFile(mode="w+", dir=cwd) as kept:
        spawned = time.time()
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=kept if merge_output else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if merge_output else kept,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        exited = time.time()
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        kept.seek(0)
        return Child(elapsed, proc.returncode, usage, kept.read(), spawned, exited)


def journal_db(state: Path) -> sqlite3.Connection:
    """The journal of one run's state directory, read-only."""
    return sqlite3.connect(f"file:{state / 'journal.db'}?mode=ro", uri=True)


def journal_counts(state: Path) -> dict[str, int]:
    """Rows of the journal's steps table by status, and the attempts, of one run's state."""
    db = journal_db(state)
    try:
        counts = {"steps": db.execute("SELECT count(*) FROM steps").fetchone()[0]}
        for status, n in db.execute("SELECT status, count(*) FROM steps GROUP BY status"):
            counts[f"steps {status}"] = n
        counts["attempts"] = db.execute("SELECT count(*) FROM attempts").fetchone()[0]
        counts["runs"] = db.execute("SELECT count(*) FROM runs").fetchone()[0]
        return counts
    finally:
        db.close()


# ----- figures -----------------------------------------------------------------------------


def spread(samples: Sequence[float], unit: str = "s", digits: int = 3) -> dict[str, float]:
    """Median, min and max of `samples`, rounded, keyed median_UNIT, min_UNIT, max_UNIT."""
    return {
        f"median_{unit}": round(statistics.median(samples), digits),
        f"min_{unit}": round(min(samples), digits),
        f"max_{unit}": round(max(samples), digits),
    }


def print_table(
    columns: Sequence[tuple[str, int, str]], last: str, rows: Iterable[Sequence[Any]]
) -> None:
    """A table of fixed-width columns: (title, width, format spec of the values) each, the
    first left-aligned, the others right-aligned; then two spaces and a free-text column
    titled `last`, the last value of each row. A str value is shown as it is (no spec), None
    as "-"."""

    def line(values: Sequence[Any]) -> str:
        cells = []
        for i, ((_, width, spec), value) in enumerate(zip(columns, values, strict=False)):
            align = "<" if i == 0 else ">"
            value = "-" if value is None else value
            cells.append(format(value, f"{align}{width}{'' if isinstance(value, str) else spec}"))
        return " ".join(cells) + f"  {values[len(columns)]}"

    print(line([*(title for title, _, _ in columns), last]))
    for row in rows:
        print(line(row))


def verdict_stream(as_json: bool) -> TextIO:
    """Where verdict lines go: with --json stderr, so that stdout stays one JSON document."""
    return sys.stderr if as_json else sys.stdout


def pass_fail(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def print_ratio_verdicts(found: list[dict[str, Any]], as_json: bool) -> None:
    """One line per ratio target: `NAME: VALUEx: PASS|FAIL (target T)`."""
    out = verdict_stream(as_json)
    for v in found:
        print(
            f"{v['name']}: {v['value']:.2f}x: {pass_fail(v['pass'])} (target {v['target']})",
            file=out,
        )


# ----- profile -----------------------------------------------------------------------------

_PROFILE_CHILD = """\
import cProfile, sys
sys.argv = {argv!r}
profiler = cProfile.Profile()
code = 0
profiler.enable()
try:
    from opskit.cli import main
    main()
except SystemExit as exc:
    code = exc.code
finally:
    profiler.disable()
    profiler.dump_stats({out!r})
sys.exit(code)
"""

Profile = tuple[float, list[Any]]  # (wall s under the profiler, pstats rows)


@dataclass
class ProfileRow:
    function: str
    ncalls: int
    tottime: float
    cumtime: float


def profile_command(python: str, opskit_args: list[str], out: Path) -> list[str]:
    """`opskit OPSKIT_ARGS` run by `python` under cProfile, the stats dumped to `out`."""
    return [python, "-c", _PROFILE_CHILD.format(argv=["opskit", *opskit_args], out=str(out))]


def load_profile(elapsed: float, out: Path) -> Profile:
    return elapsed, list(pstats.Stats(str(out)).stats.items())  # type: ignore[attr-defined]


def profile_rows(raw: list[Any], key: str, top: int) -> list[ProfileRow]:
    rows = []
    for (filename, line, func), (_, ncalls, tottime, cumtime, _) in raw:
        rows.append(ProfileRow(_where(filename, line, func), ncalls, tottime, cumtime))
    rows.sort(key=lambda r: -getattr(r, key))
    return rows[:top]


def _where(filename: str, line: int, func: str) -> str:
    if filename == "~":
        return func  # a built-in
    parts = Path(filename).parts
    for anchor in ("site-packages", "src", "lib"):
        if anchor in parts:
            i = len(parts) - 1 - parts[::-1].index(anchor)
            filename = "/".join(parts[i + 1 :])
            break
    return f"{filename}:{line}({func})"


def print_profile(title: str, rows: list[ProfileRow]) -> None:
    print(f"\n{title}")
    print(f"{'ncalls':>9} {'tottime':>8} {'cumtime':>8}  function")
    for r in rows:
        print(f"{r.ncalls:>9} {r.tottime:>8.3f} {r.cumtime:>8.3f}  {r.function}")


def profile_json(profile: Profile, top: int, cmd: list[str] | None = None) -> dict[str, Any]:
    """The profile's figures for --json (with the command profiled, when given)."""
    report: dict[str, Any] = {} if cmd is None else {"cmd": cmd}
    report["wall_s"] = round(profile[0], 3)
    report["top_cumulative"] = [vars(r) for r in profile_rows(profile[1], "cumtime", top)]
    report["top_tottime"] = [vars(r) for r in profile_rows(profile[1], "tottime", top)]
    return report


def print_profile_report(command: str, profile: Profile, top: int) -> None:
    """The profile of `opskit COMMAND`: totals, then the top functions by both times."""
    wall, raw = profile
    total = sum(tt for _, (_, _, tt, _, _) in raw)
    print(
        f"\nprofile of `opskit {command}` (cProfile, one run):"
        f" {wall:.2f} s wall under the profiler, {total:.2f} s profiled"
    )
    print_profile(f"top {top} by cumulative time:", profile_rows(raw, "cumtime", top))
    print_profile(f"top {top} by own time:", profile_rows(raw, "tottime", top))
