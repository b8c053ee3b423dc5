"""Benchmark: `opskit validate` over the shipped files within 0.3 s wall on the 2-core machine,
and 30 runbooks costing little more than 5 (within 1.3x).

Method. Three commands are timed as subprocesses, each started from the repository root:

    floor      python -c pass                  the interpreter's own start-up (site, .pth files)
    import     python -c "import opskit.cli"   what importing the CLI adds
    validate   opskit validate                 the whole command, as a user types it
    gen 5      opskit validate                 in a generated project: the shipped inventory
                                               and deploy/, and the 5 shipped runbooks
    gen 30     opskit validate                 the same with 30 runbooks: the shipped ones six
                                               times over, each under a name of its own
                                               (every shipped kind, 198 steps)

"python" is the interpreter running this script (run it with the venv's: `make bench`), and
`opskit` is the console script next to it (if missing: `python -c "from opskit.cli import main;
main()" validate`). After warm-up runs, the commands are run in turns, `--runs` times each, so
that background noise falls on all three alike; the table gives the median, min and max wall
time of each and its ratio to the floor. The verdicts are on the median of validate (within
300 ms) and on gen 30's median over gen 5's (within 1.3x: a runbook's cost is small next to the
process's, the kinds' models paid once). The exit code is 1 if a target is missed, 2 if a
command fails.

Bytecode. An installed opskit runs from cached bytecode, but the editable install's src/ has
none when PYTHONDONTWRITEBYTECODE is set (as on the development machine), and compiling
opskit's modules on every run would be timed too. So the runs get a bytecode cache of their
own (PYTHONPYCACHEPREFIX, a temporary directory, filled by the first runs) with writing
allowed: nothing is written into the repository or the venv.

    python bench/validate_speed.py              the table and the verdict
    python bench/validate_speed.py --json       the same figures as JSON
    python bench/validate_speed.py --profile    also the modules `opskit validate` spends its
                                                import time in (python -X importtime)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import (
    SCRUBBED_ENV,
    fail,
    opskit_command,
    pass_fail,
    print_table,
    scrubbed_env,
    spread,
    verdict_stream,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
TARGET_MS = 300.0
TARGET_RATIO = 1.3  # 30 generated runbooks against 5


@dataclass
class Bench:
    name: str
    cmd: list[str]
    cwd: Path = REPO_ROOT
    samples_ms: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples_ms)


def run_once(cmd: list[str], env: dict[str, str], cwd: Path = REPO_ROOT) -> float:
    """Wall time of one run in ms; output discarded (validate's stdout is a pipe, as in CI)."""
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    elapsed = (time.perf_counter() - start) * 1000.0
    if proc.returncode != 0:
        fail(f"{' '.join(cmd)} exited {proc.returncode} during timing")
    return elapsed


def check_works(bench: Bench, env: dict[str, str]) -> None:
    """One run with output kept, so a broken command fails loudly instead of timing an error."""
    proc = subprocess.run(bench.cmd, cwd=bench.cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        fail(f"{bench.name}: {' '.join(bench.cmd)} exited {proc.returncode}")


def measure(benches: list[Bench], runs: int, warmup: int, env: dict[str, str]) -> None:
    for bench in benches:
        check_works(bench, env)
    for _ in range(warmup):
        for bench in benches:
            run_once(bench.cmd, env, bench.cwd)
    for _ in range(runs):
        for bench in benches:
            bench.samples_ms.append(run_once(bench.cmd, env, bench.cwd))


def generated_project(where: Path, copies: int) -> Path:
    """A project of the shipped inventory and deploy/ with `copies` x the shipped runbooks,
    each copy named after its file (`vm-power-3`); one copy: the shipped runbooks themselves."""
    import shutil

    shutil.copytree(REPO_ROOT / "inventory", where / "inventory")
    shutil.copytree(REPO_ROOT / "deploy", where / "deploy")
    (where / "runbooks").mkdir()
    for path in sorted((REPO_ROOT / "runbooks").glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        for n in range(1, copies + 1):
            name = path.stem if copies == 1 else f"{path.stem}-{n}"
            renamed = [
                f"name: {name}" if line.startswith("name:") else line for line in text.split("\n")
            ]
            (where / "runbooks" / f"{name}.yaml").write_text("\n".join(renamed), encoding="utf-8")
    return where


@dataclass
class ImportRow:
    module: str
    depth: int
    self_us: int
    cumulative_us: int


# `-X importtime` logs only `import` statements: a module loaded by importlib.import_module (the
# CLI's lazy subcommands, entry-point actions) goes unlisted and its own imports show up at top
# level, unattributed. The profile therefore runs the CLI with import_module routed through
# __import__, so that those modules are listed where they are loaded.
_PROFILE_SHIM = """\
import importlib, sys
_import_module = importlib.import_module
def _logged_import_module(name, package=None):
    if package is not None or name.startswith("."):
        return _import_module(name, package)
    __import__(name)
    return sys.modules[name]
importlib.import_module = _logged_import_module
if "importlib.metadata" in sys.modules:
    sys.modules["importlib.metadata"].import_module = _logged_import_module
from opskit.cli import main
main()
"""


def import_profile(python: str, env: dict[str, str]) -> list[ImportRow]:
    """`python -X importtime` of `opskit validate` (through _PROFILE_SHIM), parsed from stderr."""
    cmd = [python, "-X", "importtime", "-c", _PROFILE_SHIM, "validate"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        fail(f"the -X importtime run of validate exited {proc.returncode}")
    rows: list[ImportRow] = []
    for line in proc.stderr.splitlines():
        # "import time:       123 |        456 |     package.module"
        if not line.startswith("import time:"):
            continue
        parts = line[len("import time:") :].split("|")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            continue  # the header line
        name = parts[2].rstrip()
        stripped = name.lstrip(" ")
        depth = (len(name) - len(stripped) - 1) // 2
        rows.append(ImportRow(stripped, depth, int(parts[0]), int(parts[1])))
    return rows


def by_package(rows: list[ImportRow]) -> list[tuple[str, int, int]]:
    """Self time summed per top-level package: (package, self µs, modules), largest first."""
    totals: dict[str, list[int]] = {}
    for row in rows:
        entry = totals.setdefault(row.module.split(".")[0], [0, 0])
        entry[0] += row.self_us
        entry[1] += 1
    return sorted(((p, t, n) for p, (t, n) in totals.items()), key=lambda x: -x[1])


def print_benches(benches: list[Bench], floor: float) -> None:
    columns = [("name", 10, ""), ("median ms", 10, ".1f"), ("min", 8, ".1f"), ("max", 8, ".1f")]
    rows = [
        [b.name, b.median, min(b.samples_ms), max(b.samples_ms), b.median / floor, _shown(b.cmd)]
        for b in benches
    ]
    print_table([*columns, ("x floor", 8, ".2f")], "command", rows)


def print_profile(rows: list[ImportRow], top: int) -> None:
    total = sum(r.self_us for r in rows)
    print(f"\nimport time of `opskit validate` (-X importtime, one run): {total / 1000:.1f} ms")
    print(f"top {top} modules by cumulative import time:")
    print(f"{'cumul ms':>9} {'self ms':>8}  module (indent = imported by the one above)")
    for r in sorted(rows, key=lambda r: -r.cumulative_us)[:top]:
        print(
            f"{r.cumulative_us / 1000:>9.1f} {r.self_us / 1000:>8.1f}  {'  ' * r.depth}{r.module}"
        )
    print("\nself import time by top-level package:")
    print(f"{'self ms':>9} {'modules':>8}  package")
    for package, self_us, count in by_package(rows)[:top]:
        print(f"{self_us / 1000:>9.1f} {count:>8}  {package}")


def _shown(cmd: list[str]) -> str:
    return " ".join(_short(c) for c in cmd)


def _short(arg: str) -> str:
    """Paths inside the repository shown relative to it, to keep the table narrow."""
    try:
        return str(Path(arg).relative_to(REPO_ROOT))
    except ValueError:
        return json.dumps(arg) if " " in arg else arg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs per command (15)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (3)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--profile", action="store_true", help="also profile validate's imports (-X importtime)"
    )
    parser.add_argument("--top", type=int, default=25, help="rows of the profile (25)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.top < 1:
        parser.error("--runs and --top must be at least 1, --warmup at least 0")

    python = sys.executable
    with (
        tempfile.TemporaryDirectory(prefix="opskit-bench-pycache-") as pycache,
        tempfile.TemporaryDirectory(prefix="opskit-bench-projects-") as projects,
    ):
        return run_bench(args, python, scrubbed_env(SCRUBBED_ENV, pycache), Path(projects))


def run_bench(args: argparse.Namespace, python: str, env: dict[str, str], projects: Path) -> int:
    validate_cmd = [*opskit_command(python), "validate"]
    few, many = (generated_project(projects / str(n), n) for n in (1, 6))
    benches = [
        Bench("floor", [python, "-c", "pass"]),
        Bench("import", [python, "-c", "import opskit.cli"]),
        Bench("validate", validate_cmd),
        Bench("gen 5", validate_cmd, few),
        Bench("gen 30", validate_cmd, many),
    ]
    measure(benches, args.runs, args.warmup, env)
    floor = benches[0].median
    validate = benches[2].median
    ratio = benches[4].median / benches[3].median
    passed = validate <= TARGET_MS
    ratio_passed = ratio <= TARGET_RATIO
    rows = import_profile(python, env) if args.profile else None

    if args.json:
        report: dict[str, object] = {
            "python": python,
            "cpus": os.cpu_count(),
            "runs": args.runs,
            "warmup": args.warmup,
            "bytecode_cached": True,
            "target_ms": TARGET_MS,
            "results": [
                {
                    "name": b.name,
                    "cmd": b.cmd,
                    **spread(b.samples_ms, "ms", 2),
                    "ratio_to_floor": round(b.median / floor, 3),
                    "samples_ms": [round(s, 2) for s in b.samples_ms],
                }
                for b in benches
            ],
            "validate_median_ms": round(validate, 2),
            "pass": passed,
            "target_ratio": TARGET_RATIO,
            "ratio_30_to_5": round(ratio, 3),
            "ratio_pass": ratio_passed,
        }
        if rows is not None:
            report["importtime"] = {
                "total_self_ms": round(sum(r.self_us for r in rows) / 1000, 2),
                "top_cumulative": [
                    {
                        "module": r.module,
                        "depth": r.depth,
                        "self_ms": r.self_us / 1000,
                        "cumulative_ms": r.cumulative_us / 1000,
                    }
                    for r in sorted(rows, key=lambda r: -r.cumulative_us)[: args.top]
                ],
                "self_by_package": [
                    {"package": p, "self_ms": t / 1000, "modules": n}
                    for p, t, n in by_package(rows)[: args.top]
                ],
            }
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{args.runs} runs each after {args.warmup} warm-up, bytecode cached, "
            f"cwd {REPO_ROOT}, {os.cpu_count()} CPUs, {python}"
        )
        print_benches(benches, floor)
        if rows is not None:
            print_profile(rows, args.top)
    print(
        f"validate median {validate:.0f} ms: {pass_fail(passed)} (target {TARGET_MS:.0f} ms)",
        file=verdict_stream(args.json),
    )
    print(
        f"30 runbooks against 5: {ratio:.2f}x: {pass_fail(ratio_passed)}"
        f" (target within {TARGET_RATIO}x)",
        file=verdict_stream(args.json),
    )
    return 0 if passed and ratio_passed else 1


if __name__ == "__main__":
    sys.exit(main())
