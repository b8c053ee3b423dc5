"""Benchmark: `opskit status --lab` answers for every host and service in under 2 s wall.

Method. A lab is brought up (`opskit lab up`, its own name and directory unless --keep-lab
names an existing one), ProxmoxMCP-Plus deployed and the Beszel agents installed (as `make
demo` and `install-beszel-agents` do), so every check of the inventory has something real to
ask. Then `opskit status --lab --json` is run `--runs` times as a user types it (a new process
each time: start-up, re-entry into the lab's namespace, every probe, the rendering), after one
warm-up run; the table gives the median, min and max wall time, and each run's output is
checked: every host and service present, exit 0. Then one host (dev) is made unreachable (its
sshd stopped with SIGSTOP, its agent stopped) and the same command with `--timeout 2s` is
timed: it must answer within the timeout plus 1 s and exit 1. Needs root (the lab).

    python bench/status_lab.py [--runs 7] [--keep-lab NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def opskit(env: dict[str, str], *args: str) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "opskit", *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--keep-lab", metavar="NAME", help="use this lab, up already")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("the lab needs root", file=sys.stderr)
        return 2
    env = dict(os.environ)
    scratch = Path(tempfile.mkdtemp(prefix="opskit-bench-status-"))
    if not args.keep_lab:
        env.update(
            OPSKIT_LAB_NAME="bstat",
            OPSKIT_LAB_DIR=str(scratch / "lab"),
            OPSKIT_STATE_DIR=str(scratch / "state"),
        )
        for step in (
            ("lab", "up"),
            ("run", "deploy-proxmoxmcp", "--lab", "--yes"),
            ("run", "install-beszel-agents", "--lab", "--yes"),
        ):
            code, text, _ = opskit(env, *step)
            if code != 0:
                print(text, file=sys.stderr)
                return 2
    else:
        env["OPSKIT_LAB_NAME"] = args.keep_lab
    os.environ.update({k: v for k, v in env.items() if k.startswith("OPSKIT_LAB_")})
    from opskit.lab.core import lab_dir as where

    lab_dir = where()
    try:
        opskit(env, "status", "--lab", "--json")  # warm-up
        times = []
        for _ in range(args.runs):
            code, text, took = opskit(env, "status", "--lab", "--json")
            data = json.loads(text[: text.rindex("}") + 1])
            if code != 0 or not data["healthy"]:
                print(text, file=sys.stderr)
                return 2
            times.append(took)
        hosts = len(data["hosts"])
        services = sum(len(h["services"]) for h in data["hosts"])
        print(f"opskit status --lab, {hosts} hosts, {services} services, {args.runs} runs:")
        print(
            f"  median {statistics.median(times):.2f} s, min {min(times):.2f} s,"
            f" max {max(times):.2f} s (target: under 2 s)"
        )
        host = int((lab_dir / "hosts" / "dev" / "pid").read_text())
        sshd = int(Path(f"/proc/{host}/task/{host}/children").read_text().split()[0])
        os.kill(sshd, signal.SIGSTOP)
        try:
            code, text, took = opskit(env, "status", "--lab", "--timeout", "2s")
        finally:
            os.kill(sshd, signal.SIGCONT)
        print(f"  dev's sshd stopped, --timeout 2s: exit {code} in {took:.2f} s (target: 3 s)")
        return 0 if statistics.median(times) < 2 and took < 3 and code == 1 else 1
    finally:
        if not args.keep_lab:
            opskit(env, "lab", "down")


if __name__ == "__main__":
    sys.exit(main())
