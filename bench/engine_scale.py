"""Benchmark: 1,000 targets x 10 no-op steps, plan and apply, within 5 s wall and 300 MB peak.

Method. In a temporary directory the script writes an inventory of `--targets` hosts (the
`hosts:` list, every address 127.0.0.1) and a runbook `bench` of `--steps` steps that do
nothing (the registered kind `wait`, `duration: 0s`: no network connection is made), with
`targets: all` and `concurrency: 100`. Four commands are then timed as subprocesses of the
console script next to the interpreter (`.venv/bin/opskit`), started in that directory:

    plan       opskit plan bench -o plan.json    plan only, the plan saved
    apply      opskit apply plan.json --yes      the saved plan re-checked, then executed
    run        opskit run bench --yes            plan + apply in one command
    dry-run    opskit run bench --dry-run        plan + the review, nothing executed

Every run gets a fresh, empty $OPSKIT_STATE_DIR (the journal, logs and locks start from
nothing, as on a new machine) and its stdout goes to /dev/null (a 10,000-step run prints a
line per step); its exit code must be 0. After one warm-up round the commands are run in
turns, `--runs` times each, so that background noise falls on all of them alike. Each child is
reaped with os.wait4, which gives that child's own peak resident set size (ru_maxrss).

The table gives the median, min and max wall time and the highest peak RSS seen over the timed
runs, in MB (10^6 bytes, the stricter reading of "300 MB"). Two verdicts:

    plan + apply (run)       the median of `run --yes`: one command, as an operator runs it
    plan + apply (saved)     median(plan) + median(apply): the reviewed-plan workflow

each against 5 s wall and 300 MB peak. The journal's row count (steps) of the last `run` is
printed too, to show that the journal recorded every step. Exit code 0 on PASS, 1 on FAIL,
2 when a command fails or the journal does not hold every step.

Bytecode: as in validate_speed.py, the children get a bytecode cache of their own
(PYTHONPYCACHEPREFIX, a temporary directory, filled by the warm-up) with writing allowed.

    python bench/engine_scale.py              the table and the verdicts
    python bench/engine_scale.py --json       the same figures as JSON
    python bench/engine_scale.py --profile    also `opskit run bench --yes` once under
                                              cProfile: the top functions by cumulative time
    ... --profile --profile-command apply     the same for `opskit apply plan.json --yes`
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    SCRUBBED_ENV,
    Child,
    Profile,
    StateDirs,
    fail,
    journal_counts,
    load_profile,
    opskit_command,
    pass_fail,
    print_profile_report,
    print_table,
    profile_command,
    profile_json,
    run_child,
    scratch_dir,
    scrubbed_env,
    spread,
    verdict_stream,
)

TARGET_S = 5.0
TARGET_MB = 300.0
RUNBOOK = "bench"
CONCURRENCY = 100
# Variables that would make the runs use other files, or time something else.
_SCRUBBED_ENV = (*SCRUBBED_ENV, "OPSKIT_STATE_DIR", "PYTHONTRACEMALLOC")


@dataclass
class Bench:
    name: str
    args: list[str]  # after `opskit --runbooks D --inventory F`
    samples_s: list[float] = field(default_factory=list)
    peaks_kib: list[int] = field(default_factory=list)
    last_state: Path | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.samples_s)

    @property
    def peak_mb(self) -> float:
        return max(self.peaks_kib) * 1024 / 1e6


@dataclass
class Workdir(StateDirs):
    root: Path
    runbooks: Path
    inventory: Path
    env: dict[str, str]
    states: int = 0


# ----- the workload ------------------------------------------------------------------------


def write_inventory(path: Path, targets: int) -> None:
    lines = ["# opskit engine_scale benchmark: loopback hosts only", "version: 1", "hosts:"]
    lines += [f"  - {{name: h{i:04d}, address: 127.0.0.1}}" for i in range(1, targets + 1)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_runbook(path: Path, steps: int) -> None:
    lines = [
        f"name: {RUNBOOK}",
        f"description: {steps} no-op steps on every target (engine_scale benchmark)",
        "targets: all",
        f"concurrency: {CONCURRENCY}",
        "steps:",
    ]
    for i in range(1, steps + 1):
        lines += [f"  - id: s{i:02d}", "    wait: {duration: 0s}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_workdir(root: Path, targets: int, steps: int) -> Workdir:
    runbooks = root / "runbooks"
    runbooks.mkdir()
    inventory = root / "inventory.yaml"
    write_inventory(inventory, targets)
    write_runbook(runbooks / f"{RUNBOOK}.yaml", steps)
    pycache = root / "pycache"
    pycache.mkdir()
    return Workdir(root, runbooks, inventory, scrubbed_env(_SCRUBBED_ENV, pycache))


# ----- running -----------------------------------------------------------------------------


def run_in_state(cmd: list[str], work: Workdir, state: Path) -> Child:
    """One child in `state` as its $OPSKIT_STATE_DIR, stdout to /dev/null."""
    return run_child(cmd, work.root, dict(work.env, OPSKIT_STATE_DIR=str(state)))


def run_bench(bench: Bench, base: list[str], work: Workdir, timed: bool) -> None:
    state = work.fresh_state()
    child = run_in_state([*base, *bench.args], work, state)
    if child.returncode != 0:
        sys.stderr.write(child.output[-4000:])
        fail(f"{bench.name}: opskit {' '.join(bench.args)} exited {child.returncode}")
    if bench.last_state is not None:
        shutil.rmtree(bench.last_state, ignore_errors=True)
    bench.last_state = state
    if timed:
        bench.samples_s.append(child.elapsed)
        bench.peaks_kib.append(child.peak_kib)


def measure(benches: list[Bench], base: list[str], work: Workdir, runs: int, warmup: int) -> None:
    for round_ in range(warmup + runs):
        for bench in benches:  # plan first: it writes the plan.json that apply applies
            run_bench(bench, base, work, timed=round_ >= warmup)


# ----- profile -----------------------------------------------------------------------------


def profile_run(python: str, work: Workdir, opskit_args: list[str]) -> Profile:
    """One opskit command under cProfile, in a fresh state dir: (wall s, pstats rows)."""
    out = work.root / "run.prof"
    child = run_in_state(profile_command(python, opskit_args, out), work, work.fresh_state())
    if child.returncode != 0:
        sys.stderr.write(child.output[-4000:])
        fail(f"the profiled run exited {child.returncode}")
    return load_profile(child.elapsed, out)


# ----- report ------------------------------------------------------------------------------


def verdicts(by: dict[str, Bench]) -> list[dict[str, Any]]:
    run = by["run"]
    plan, apply = by["plan"], by["apply"]
    found = [
        ("plan + apply (run --yes)", run.median, run.peak_mb),
        (
            "plan + apply (plan -o, then apply)",
            plan.median + apply.median,
            max(plan.peak_mb, apply.peak_mb),
        ),
    ]
    return [
        {
            "name": name,
            "wall_s": round(wall, 3),
            "peak_mb": round(mb, 1),
            "pass": wall <= TARGET_S and mb <= TARGET_MB,
        }
        for name, wall, mb in found
    ]


def print_benches(benches: list[Bench]) -> None:
    columns = [("name", 8, ""), ("median s", 9, ".3f"), ("min", 7, ".3f"), ("max", 7, ".3f")]
    rows = [
        [
            b.name,
            b.median,
            min(b.samples_s),
            max(b.samples_s),
            b.peak_mb,
            f"opskit {' '.join(b.args)}",
        ]
        for b in benches
    ]
    print_table([*columns, ("peak MB", 8, ".1f")], "command", rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per command (5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (1)")
    parser.add_argument("--targets", type=int, default=1000, help="hosts (1000)")
    parser.add_argument("--steps", type=int, default=10, help="no-op steps (10)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--profile", action="store_true", help="also profile one command once (cProfile)"
    )
    parser.add_argument(
        "--profile-command",
        choices=["run", "apply", "plan", "dry-run"],
        default="run",
        help="the command --profile runs (run: `run bench --yes`)",
    )
    parser.add_argument("--top", type=int, default=30, help="rows of the profile (30)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.top < 1:
        parser.error("--runs and --top must be at least 1, --warmup at least 0")
    if not 1 <= args.targets <= 9999 or not 1 <= args.steps <= 99:
        parser.error("--targets must be 1..9999 and --steps 1..99")

    with scratch_dir("opskit-engine-scale-", args.keep) as root:
        return bench_all(args, sys.executable, make_workdir(root, args.targets, args.steps))


def bench_all(args: argparse.Namespace, python: str, work: Workdir) -> int:
    global_opts = ["--runbooks", str(work.runbooks), "--inventory", str(work.inventory)]
    base = [*opskit_command(python), *global_opts]
    benches = [
        Bench("plan", ["plan", RUNBOOK, "-o", "plan.json"]),
        Bench("apply", ["apply", "plan.json", "--yes"]),
        Bench("run", ["run", RUNBOOK, "--yes"]),
        Bench("dry-run", ["run", RUNBOOK, "--dry-run"]),
    ]
    by = {b.name: b for b in benches}
    measure(benches, base, work, args.runs, args.warmup)
    expected = args.targets * args.steps
    assert by["run"].last_state is not None and by["apply"].last_state is not None
    journal = {
        "run": journal_counts(by["run"].last_state),
        "apply": journal_counts(by["apply"].last_state),
    }
    found = verdicts(by)
    passed = all(v["pass"] for v in found)
    profile: Profile | None = None
    profiled = by[args.profile_command]
    if args.profile:  # after the timed runs: apply's plan.json is there
        profile = profile_run(python, work, [*global_opts, *profiled.args])

    if args.json:
        report: dict[str, Any] = {
            "python": python,
            "cpus": os.cpu_count(),
            "targets": args.targets,
            "steps": args.steps,
            "concurrency": CONCURRENCY,
            "runs": args.runs,
            "warmup": args.warmup,
            "target_s": TARGET_S,
            "target_mb": TARGET_MB,
            "results": [
                {
                    "name": b.name,
                    "cmd": ["opskit", *b.args],
                    **spread(b.samples_s),
                    "peak_mb": round(b.peak_mb, 1),
                    "samples_s": [round(s, 3) for s in b.samples_s],
                    "peaks_kib": b.peaks_kib,
                }
                for b in benches
            ],
            "verdicts": found,
            "journal": journal,
            "pass": passed,
        }
        if profile is not None:
            report["profile"] = profile_json(profile, args.top, ["opskit", *profiled.args])
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{args.targets} targets x {args.steps} no-op steps (wait 0s), concurrency"
            f" {CONCURRENCY}; {args.runs} runs each after {args.warmup} warm-up,"
            f" fresh state dir per run, {os.cpu_count()} CPUs, {python}"
        )
        print_benches(benches)
        for name, counts in journal.items():
            shown = ", ".join(f"{k} {v}" for k, v in counts.items())
            print(f"journal of the last {name}: {shown}")
        if profile is not None:
            print_profile_report(" ".join(profiled.args), profile, args.top)
    out = verdict_stream(args.json)
    for v in found:
        print(
            f"{v['name']}: {v['wall_s']:.2f} s, {v['peak_mb']:.0f} MB:"
            f" {pass_fail(v['pass'])} (target {TARGET_S:.0f} s, {TARGET_MB:.0f} MB)",
            file=out,
        )
    for name, counts in journal.items():
        if counts["steps"] != expected or counts.get("steps succeeded") != expected:
            print(
                f"error: the journal of the last {name} holds {counts['steps']} steps"
                f" ({counts.get('steps succeeded', 0)} succeeded), not {expected}",
                file=sys.stderr,
            )
            return 2
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
