"""Benchmark: Proxmox at scale against fakepve: plan over 200 guests within 2 s; start 50 stopped
VMs at least 5x faster than a sequential loop over proxmoxer, measured in the same run.

Method. The script serves fakepve (a faithful fake of the PVE API, from PyPI) itself, as a
separate process (`python -m fakepve guests.json`), so that the fake's CPU does not compete
with the client's for the GIL. It listens on 127.0.0.1 only, on a port picked free by binding
127.0.0.1:0 first, with a certificate made by fakepve.certs.make_cert for 127.0.0.1. Nothing
but 127.0.0.1 is ever contacted. Time is realistic: `--time-scale` real seconds per PVE second
(0.05: a PVE second is 50 ms) and every VM has `start_secs` = `--start-secs` (2), so a start
task runs ~0.1 s of real time, like the task round trips of a real start. `python -m fakepve`
takes no API token (neither flag, guests file nor environment), so both clients log in with
user and password (a ticket, one login each run), which is equally fair to both.

The fake holds `--guests` stopped VMs (vmids 1000..1199, node pve1). In a temporary project
directory the script writes an inventory of those guests (address 127.0.0.1; the first
`--start` of them tagged `batch`), pinning the certificate by its SHA-256 fingerprint, and a
runbook `bench`: `targets: all`, `concurrency: --concurrency` (50), one step
`proxmox.vm.start: {}`. Every opskit command is the console script next to the interpreter
(`.venv/bin/opskit`), a subprocess started in that directory, with a fresh, empty
$OPSKIT_STATE_DIR and its stdout to /dev/null; it must exit 0.

    plan       opskit plan bench -o plan.json       200 guests probed (read-only); the plan
                                                    must show 200 starts. One fake serves all
                                                    runs (planning changes nothing).
    opskit     opskit run bench --limit tag:batch --yes
                                                    50 VMs started, `concurrency` at a time
                                                    (opskit's client keeps up to 16
                                                    connections). Wall time of the whole
                                                    command: interpreter start-up, imports,
                                                    the plan (50 probes), the gate, the
                                                    journal, the starts and their tasks.
    proxmoxer  for vmid in ids: upid = prox.nodes('pve1').qemu(vmid).status.start.post()
               and poll prox.nodes('pve1').tasks(upid).status.get() every `--poll` (0.1 s)
                                                    until 'stopped'; in this process, timed
                                                    from ProxmoxAPI(...) (its login) to the
                                                    last task's end. Imports are not timed.
                                                    The loop polls at once after the POST and
                                                    does not sleep after the last poll
                                                    (proxmoxer.tools.Tasks.blocking_status
                                                    would: 0.1 s more per VM), so it is the
                                                    best sequential loop, not a strawman.

Each start run gets a freshly started fake (every VM stopped, no tasks, no tickets); after it,
the fake is asked (/cluster/resources) that exactly the batch runs and the rest is stopped, and
every start task ended OK. After `--warmup` untimed rounds the commands run in turns, `--runs`
times each. The table gives median, min and max wall time. Verdicts:

    plan 200 guests          median(plan) <= 2 s
    start 50: x faster       median(proxmoxer) / median(opskit) >= 5

Also printed: each client's CPU time (opskit's from os.wait4, proxmoxer's from process_time)
and the fake's (from /proc, on Linux), which tell waiting from working; the HTTP requests each
client sends (opskit's counted in-process once through the session API's request hook, as the
tests do; proxmoxer's counted by the loop); and where the opskit run's wall time goes, from
its journal: process start to run start (start-up, imports, the plan), run start to the
first step's start (the executor connects and re-probes the first target; the other targets'
re-probes overlap the steps), first step start to last step end, last step end to exit.
Exit code 0 on PASS, 1 on FAIL, 2 when a command fails or the fake's state is wrong.

Needs the bench extra (proxmoxer, requests) and fakepve[crypto] (the test extra):
`pip install -e '.[bench,test]'`.

    python bench/proxmox_scale.py              the table and the verdicts
    python bench/proxmox_scale.py --json       the same figures as JSON
    python bench/proxmox_scale.py --profile    also `opskit run bench ... --yes` once under
                                               cProfile: the top functions by cumulative time
    ... --profile --profile-command plan       the same for `opskit plan bench -o plan.json`
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from _common import (
    SCRUBBED_ENV,
    Profile,
    StateDirs,
    fail,
    journal_db,
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

TARGET_PLAN_S = 2.0
TARGET_RATIO = 5.0
HOST = "127.0.0.1"  # the only address this script contacts
NODE = "pve1"
USER = "root@pam"
FIRST_VMID = 1000
RUNBOOK = "bench"
BATCH_TAG = "batch"
PASSWORD_ENV = "OPSKIT_BENCH_PVE_PASSWORD"
FAKE_START_TIMEOUT = 30.0
# Variables that would make the runs use other files, time something else, or leave loopback.
_SCRUBBED_ENV = (*SCRUBBED_ENV, "OPSKIT_STATE_DIR", "PYTHONTRACEMALLOC", "PVE_USER", "PVE_PASS")
_PROXY_ENV = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


@dataclass
class Bench:
    name: str
    what: str
    samples_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)  # the client's CPU time (user + system)
    fake_cpu_s: list[float] = field(default_factory=list)  # fakepve's, when /proc tells it

    @property
    def median(self) -> float:
        return statistics.median(self.samples_s)

    def add(self, elapsed: float, cpu: float, fake_cpu: float | None) -> None:
        self.samples_s.append(elapsed)
        self.cpu_s.append(cpu)
        if fake_cpu is not None:
            self.fake_cpu_s.append(fake_cpu)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpu_s)

    @property
    def fake_cpu(self) -> float | None:
        return statistics.median(self.fake_cpu_s) if self.fake_cpu_s else None


@dataclass
class Workdir(StateDirs):
    root: Path
    runbooks: Path
    inventory: Path
    guests_json: Path
    certfile: Path
    keyfile: Path
    port: int
    password: str
    env: dict[str, str]
    vmids: list[int]
    batch: list[int]
    states: int = 0


def need_packages() -> None:
    try:
        import proxmoxer  # noqa: F401
        import requests  # noqa: F401
    except ImportError as exc:
        fail(
            f"{exc.name} is not installed: this benchmark compares opskit with proxmoxer;"
            " install the bench extra: pip install -e '.[bench]'"
        )
    try:
        import cryptography  # noqa: F401
        import fakepve  # noqa: F401
    except ImportError as exc:
        fail(f"{exc.name} is not installed: fakepve[crypto] comes with pip install -e '.[test]'")


def free_port() -> int:
    """A port the system picks on 127.0.0.1 (free now; fakepve binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# ----- the workload ------------------------------------------------------------------------


def write_guests(path: Path, vmids: list[int], start_secs: float) -> None:
    guests = [
        {
            "vmid": v,
            "name": f"bench{v}",
            "node": NODE,
            "status": "stopped",
            "start_secs": start_secs,
        }
        for v in vmids
    ]
    path.write_text(json.dumps({"guests": guests}), encoding="utf-8")


def write_inventory(path: Path, port: int, pin: str, vmids: list[int], batch: set[int]) -> None:
    lines = [
        "# opskit proxmox_scale benchmark: fakepve on loopback only",
        "version: 1",
        "proxmox:",
        "  lab:",
        f"    api_url: https://{HOST}:{port}/api2/json",
        f"    nodes: [{NODE}]",
        f"    user: {USER}",
        f"    password: env:{PASSWORD_ENV}",
        f'    tls: {{fingerprint: "{pin}"}}',
        "guests:",
    ]
    for v in vmids:
        tags = f", tags: [{BATCH_TAG}]" if v in batch else ""
        lines.append(f"  - {{vmid: {v}, name: bench{v}, node: {NODE}, address: {HOST}{tags}}}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_runbook(path: Path, concurrency: int) -> None:
    lines = [
        f"name: {RUNBOOK}",
        "description: start every guest (proxmox_scale benchmark)",
        "targets: all",
        f"concurrency: {concurrency}",
        "steps:",
        "  - id: start",
        "    proxmox.vm.start: {}",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_workdir(root: Path, args: argparse.Namespace) -> Workdir:
    from fakepve.certs import make_cert

    pki = root / "pki"
    pki.mkdir()
    certfile, keyfile, der = make_cert(str(pki), hosts=(HOST,))
    digest = hashlib.sha256(der).hexdigest().upper()
    pin = ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))
    vmids = list(range(FIRST_VMID, FIRST_VMID + args.guests))
    batch = vmids[: args.start]
    port = free_port()
    runbooks = root / "runbooks"
    runbooks.mkdir()
    inventory = root / "inventory.yaml"
    guests_json = root / "guests.json"
    write_guests(guests_json, vmids, args.start_secs)
    write_inventory(inventory, port, pin, vmids, set(batch))
    write_runbook(runbooks / f"{RUNBOOK}.yaml", args.concurrency)
    password = "bench-" + secrets.token_hex(12)
    pycache = root / "pycache"
    pycache.mkdir()
    env = scrubbed_env(_SCRUBBED_ENV, pycache)
    env[PASSWORD_ENV] = password
    return Workdir(
        root,
        runbooks,
        inventory,
        guests_json,
        Path(certfile),
        Path(keyfile),
        port,
        password,
        env,
        vmids,
        batch,
    )


# ----- the fake ----------------------------------------------------------------------------


class Fake:
    """`python -m fakepve` in a subprocess on 127.0.0.1:port; every VM stopped when started."""

    def __init__(self, python: str, work: Workdir, time_scale: float) -> None:
        self.python, self.work, self.time_scale = python, work, time_scale
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def __enter__(self) -> Fake:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        w = self.work
        cmd = [
            self.python,
            "-m",
            "fakepve",
            str(w.guests_json),
            "--host",
            HOST,
            "--port",
            str(w.port),
            "--user",
            USER,
            "--time-scale",
            repr(self.time_scale),
            "--cert",
            str(w.certfile),
            "--key",
            str(w.keyfile),
        ]
        env = dict(w.env, PVE_PASS=w.password)  # the password stays off the command line
        self.err = tempfile.TemporaryFile(mode="w+", dir=w.root)  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            cwd=w.root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.err,
        )
        self.starts += 1
        assert self.proc.stdout is not None
        deadline = time.monotonic() + FAKE_START_TIMEOUT
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                self._died(f"did not say it listens within {FAKE_START_TIMEOUT:.0f} s")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                self._died("exited before listening")
            line += chunk
        want = f"fakepve listening on https://{HOST}:{w.port}"
        if line.decode().strip() != want:
            self._died(f"said {line.decode().strip()!r}, not {want!r}")

    def _died(self, why: str) -> NoReturn:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.err.seek(0)
        sys.stderr.write(self.err.read()[-4000:])
        self.stop()
        fail(f"fakepve on {HOST}:{self.work.port} {why}")

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        self.err.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def cpu(self) -> float | None:
        """CPU seconds (user + system) the fake used so far, from /proc (Linux); else None."""
        if self.proc is None:
            return None
        try:
            with open(f"/proc/{self.proc.pid}/stat", encoding="ascii") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None


def proxmox_api(work: Workdir) -> Any:
    """A proxmoxer client of the fake: ticket login, the fake's certificate as the CA."""
    from proxmoxer import ProxmoxAPI

    return ProxmoxAPI(
        HOST,
        port=work.port,
        user=USER,
        password=work.password,
        verify_ssl=str(work.certfile),
        timeout=30,
    )


def check_fake(work: Workdir, started: list[int]) -> None:
    """The fake shows exactly `started` running, every other VM stopped, and one start task
    per started VM, each ended OK."""
    prox = proxmox_api(work)
    try:
        vms = prox.cluster.resources.get(type="vm")
        tasks = prox.nodes(NODE).tasks.get(limit=100000)
    finally:
        prox._store["session"].close()
    running = sorted(int(r["vmid"]) for r in vms if r.get("status") == "running")
    if running != sorted(started) or len(vms) != len(work.vmids):
        fail(
            f"the fake shows {len(running)} of {len(vms)} VMs running, expected exactly"
            f" {len(started)} of {len(work.vmids)}: {running[:10]}..."
        )
    starts = sorted(int(t["id"]) for t in tasks if t.get("type") == "qmstart")
    bad = [t["upid"] for t in tasks if t.get("status") != "OK"]
    if starts != sorted(started) or bad:
        fail(
            f"the fake shows {len(starts)} start tasks for {len(started)} VMs started;"
            f" not ended OK: {bad[:5]}"
        )


# ----- running -----------------------------------------------------------------------------


@dataclass
class ChildRun:
    elapsed: float
    cpu: float  # user + system, from os.wait4
    spawned: float  # time.time() when started, for the journal's epoch times
    exited: float
    state: Path


def run_opskit(base: list[str], args: list[str], work: Workdir) -> ChildRun:
    """One opskit command in a fresh state dir; fails (exit 2) unless it exits 0."""
    state = work.fresh_state()
    child = run_child([*base, *args], work.root, dict(work.env, OPSKIT_STATE_DIR=str(state)))
    if child.returncode != 0:
        sys.stderr.write(child.output[-4000:])
        fail(f"opskit {' '.join(args)} exited {child.returncode}")
    return ChildRun(child.elapsed, child.cpu, child.spawned, child.exited, state)


def check_plan(path: Path, guests: int) -> None:
    plan = json.loads(path.read_text(encoding="utf-8"))
    kinds = Counter(s["change"]["kind"] for t in plan["targets"] for s in t["steps"])
    if len(plan["targets"]) != guests or kinds != Counter({"update": guests}):
        fail(
            f"the plan has {len(plan['targets'])} targets and changes {dict(kinds)}, expected"
            f" {guests} targets and {guests} updates (starts)"
        )


@dataclass
class LoopResult:
    elapsed: float
    cpu: float  # this process's CPU time during the loop
    requests: int
    polls: int


def proxmoxer_loop(work: Workdir, vmids: list[int], poll: float) -> LoopResult:
    """The usual script: start each VM and wait for its task, one after the other."""
    start, cpu = time.perf_counter(), time.process_time()
    prox = proxmox_api(work)  # logs in: POST /access/ticket
    requests, polls = 1, 0
    try:
        for vmid in vmids:
            upid = prox.nodes(NODE).qemu(vmid).status.start.post()
            requests += 1
            while True:
                status = prox.nodes(NODE).tasks(upid).status.get()
                requests += 1
                polls += 1
                if status["status"] == "stopped":
                    break
                time.sleep(poll)
            if status.get("exitstatus") != "OK":
                fail(f"proxmoxer: start of {vmid} ended {status.get('exitstatus')!r}")
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        prox._store["session"].close()
    return LoopResult(elapsed, cpu, requests, polls)


@dataclass
class Phases:
    """Where one `opskit run`'s wall time went, from its journal (seconds)."""

    startup_and_plan: float  # process spawned -> run row started
    reprobe: float  # run started -> first step started: connect again, probe every target again
    execution: float  # first step started -> last step ended
    step_median: float  # one target's step once started (its status again, POST, task polls)
    step_max: float
    finish: float  # last step ended -> process exited
    steps_succeeded: int


def phases(run: ChildRun) -> Phases:
    db = journal_db(run.state)
    try:
        (started,) = db.execute("SELECT started_at FROM runs").fetchone()
        steps = db.execute(
            "SELECT started_at, ended_at, status FROM steps WHERE started_at IS NOT NULL"
        ).fetchall()
    finally:
        db.close()
    durations = [e - s for s, e, _ in steps]
    first, last = min(s for s, _, _ in steps), max(e for _, e, _ in steps)
    return Phases(
        startup_and_plan=started - run.spawned,
        reprobe=first - started,
        execution=last - first,
        step_median=statistics.median(durations),
        step_max=max(durations),
        finish=run.exited - last,
        steps_succeeded=sum(1 for *_, st in steps if st == "succeeded"),
    )


def median_phases(found: list[Phases]) -> dict[str, float]:
    keys = [k for k in vars(found[0]) if k != "steps_succeeded"]
    return {k: round(statistics.median(getattr(p, k) for p in found), 3) for k in keys}


# ----- requests opskit sends (in-process, once) ----------------------------------------------


def _endpoint(method: str, path: str) -> str:
    path = re.sub(r"/qemu/\d+/", "/qemu/{vmid}/", path)
    path = re.sub(r"/tasks/[^/]+/", "/tasks/{upid}/", path)
    return f"{method} {path}"


def opskit_requests(work: Workdir, limit: str | None, execute: bool) -> Counter[str]:
    """The Proxmox requests of one plan (and run) through opskit's session API, counted by the
    request hook the tests use (the login included; the TLS pin's certificate fetch is no
    HTTP request)."""
    from opskit.clients.connections import Sent, Transports
    from opskit.engine import session
    from opskit.planner import ProbeSettings
    from opskit.report.progress import Reporter
    from opskit.store import Journal
    from opskit.workspace import Workspace

    sent: Counter[str] = Counter()

    def count(request: Sent) -> None:
        if request.client == "proxmox":
            sent[_endpoint(request.method, request.what)] += 1

    state = work.fresh_state()
    saved = {k: os.environ.get(k) for k in (PASSWORD_ENV, "OPSKIT_STATE_DIR")}
    os.environ.update({PASSWORD_ENV: work.password, "OPSKIT_STATE_DIR": str(state)})
    cwd = os.getcwd()
    os.chdir(work.root)
    try:
        with open(os.devnull, "w") as devnull:
            req = session.Request(
                workspace=Workspace(work.runbooks, work.inventory),
                yes=True,
                settings=ProbeSettings(Transports(observe=count)),
                reporter=Reporter(out=devnull),
                journal=Journal(state / "journal.db"),
            )
            loaded, targets, plan = session.make_plan(req, RUNBOOK, {}, limit)
            if execute:
                result = session.execute(req, loaded, targets, plan)
                if result.exit_code != 0:
                    fail(f"the counted in-process run exited {result.exit_code}")
            assert req.journal is not None
            req.journal.close()
    finally:
        os.chdir(cwd)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return sent


# ----- profile -----------------------------------------------------------------------------


def profile_run(python: str, work: Workdir, opskit_args: list[str]) -> Profile:
    """One opskit command under cProfile, in a fresh state dir: (wall s, pstats rows)."""
    out = work.root / "run.prof"
    run = run_opskit(profile_command(python, opskit_args, out), [], work)
    return load_profile(run.elapsed, out)


# ----- report ------------------------------------------------------------------------------


def print_benches(benches: list[Bench]) -> None:
    columns = [("name", 10, ""), ("median s", 9, ".3f"), ("min", 7, ".3f"), ("max", 7, ".3f")]
    rows = [
        [b.name, b.median, min(b.samples_s), max(b.samples_s), b.cpu, b.fake_cpu, b.what]
        for b in benches
    ]
    print_table([*columns, ("cpu s", 7, ".3f"), ("fake cpu", 8, ".3f")], "what", rows)


def print_requests(title: str, sent: Counter[str]) -> None:
    print(f"{title}: {sum(sent.values())}")
    for endpoint, n in sent.most_common():
        print(f"  {n:>5}  {endpoint}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per command (5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (1)")
    parser.add_argument("--guests", type=int, default=200, help="VMs in the fake, planned (200)")
    parser.add_argument("--start", type=int, default=50, help="stopped VMs to start (50)")
    parser.add_argument(
        "--concurrency", type=int, default=50, help="the runbook's concurrency (50)"
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=0.05,
        help="fakepve: real seconds per PVE second (0.05)",
    )
    parser.add_argument(
        "--start-secs", type=float, default=2.0, help="fakepve: PVE seconds a start takes (2)"
    )
    parser.add_argument(
        "--poll", type=float, default=0.1, help="the proxmoxer loop's poll interval, s (0.1)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--profile", action="store_true", help="also profile one opskit command once (cProfile)"
    )
    parser.add_argument(
        "--profile-command",
        choices=["run", "plan"],
        default="run",
        help="the command --profile runs (run: `run bench --limit tag:batch --yes`)",
    )
    parser.add_argument("--top", type=int, default=30, help="rows of the profile (30)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.top < 1:
        parser.error("--runs and --top must be at least 1, --warmup at least 0")
    if not 1 <= args.start <= args.guests <= 8999 or args.concurrency < 1:
        parser.error("need 1 <= --start <= --guests <= 8999 and --concurrency >= 1")
    if args.time_scale < 0 or args.start_secs < 0 or args.poll <= 0:
        parser.error("--time-scale and --start-secs must be >= 0, --poll > 0")
    need_packages()
    for name in _PROXY_ENV:  # requests would honour them: loopback only, never a proxy
        os.environ.pop(name, None)

    with scratch_dir("opskit-proxmox-scale-", args.keep) as root:
        return bench_all(args, sys.executable, make_workdir(root, args))


def bench_all(args: argparse.Namespace, python: str, work: Workdir) -> int:
    global_opts = ["--runbooks", str(work.runbooks), "--inventory", str(work.inventory)]
    base = [*opskit_command(python), *global_opts]
    plan_args = ["plan", RUNBOOK, "-o", "plan.json"]
    run_args = ["run", RUNBOOK, "--limit", f"tag:{BATCH_TAG}", "--yes"]
    plan = Bench("plan", f"opskit {' '.join(plan_args)}  ({args.guests} guests)")
    opskit = Bench(
        "opskit",
        f"opskit {' '.join(run_args)}  ({args.start} VMs, concurrency {args.concurrency},"
        " process start-up + plan + journal included)",
    )
    proxmoxer = Bench(
        "proxmoxer",
        f"sequential ProxmoxAPI loop: POST start, poll task every {args.poll:g} s"
        f"  ({args.start} VMs, login included)",
    )
    fake = Fake(python, work, args.time_scale)
    found_phases: list[Phases] = []
    loops: list[LoopResult] = []
    with fake:
        # Part 1: planning changes nothing, so one fake serves every plan.
        for round_ in range(args.warmup + args.runs):
            before = fake.cpu()
            run = run_opskit(base, plan_args, work)
            fake_cpu = _less(fake.cpu(), before)
            check_plan(work.root / "plan.json", args.guests)
            if round_ >= args.warmup:
                plan.add(run.elapsed, run.cpu, fake_cpu)
        check_fake(work, [])
        plan_sent = opskit_requests(work, None, execute=False)
        # Part 2: each start run on a freshly started fake, every VM stopped.
        for round_ in range(args.warmup + args.runs):
            timed = round_ >= args.warmup
            fake.restart()
            before = fake.cpu()
            run = run_opskit(base, run_args, work)
            fake_cpu = _less(fake.cpu(), before)
            check_fake(work, work.batch)
            p = phases(run)
            if p.steps_succeeded != len(work.batch):
                fail(f"the journal shows {p.steps_succeeded} starts succeeded, not {args.start}")
            if timed:
                opskit.add(run.elapsed, run.cpu, fake_cpu)
                found_phases.append(p)
            fake.restart()
            before = fake.cpu()
            loop = proxmoxer_loop(work, work.batch, args.poll)
            fake_cpu = _less(fake.cpu(), before)
            check_fake(work, work.batch)
            if timed:
                proxmoxer.add(loop.elapsed, loop.cpu, fake_cpu)
                loops.append(loop)
        fake.restart()
        run_sent = opskit_requests(work, f"tag:{BATCH_TAG}", execute=True)
        check_fake(work, work.batch)
        profile: Profile | None = None
        profiled = run_args if args.profile_command == "run" else plan_args
        if args.profile:
            fake.restart()
            profile = profile_run(python, work, [*global_opts, *profiled])

    benches = [plan, opskit, proxmoxer]
    ratio = proxmoxer.median / opskit.median
    found = [
        {
            "name": f"plan {args.guests} guests",
            "value": round(plan.median, 3),
            "target": f"<= {TARGET_PLAN_S:g} s",
            "pass": plan.median <= TARGET_PLAN_S,
        },
        {
            "name": f"start {args.start} VMs: opskit vs sequential proxmoxer",
            "value": round(ratio, 2),
            "target": f">= {TARGET_RATIO:g}x",
            "pass": ratio >= TARGET_RATIO,
        },
    ]
    passed = all(v["pass"] for v in found)
    loop_requests = statistics.median(r.requests for r in loops)
    loop_polls = statistics.median(r.polls for r in loops) / args.start
    mid = median_phases(found_phases)
    setting = (
        f"fakepve {fake_version()} in its own process on {HOST}:{work.port}, time scale"
        f" {args.time_scale:g} (a start task: {args.start_secs:g} PVE s ="
        f" {args.start_secs * args.time_scale:.2f} s), ticket login"
    )

    if args.json:
        report: dict[str, Any] = {
            "python": python,
            "cpus": os.cpu_count(),
            "fakepve": fake_version(),
            "guests": args.guests,
            "start": args.start,
            "concurrency": args.concurrency,
            "time_scale": args.time_scale,
            "start_secs": args.start_secs,
            "poll_s": args.poll,
            "runs": args.runs,
            "warmup": args.warmup,
            "fake_starts": fake.starts,
            "results": [
                {
                    "name": b.name,
                    "what": b.what,
                    **spread(b.samples_s),
                    "samples_s": [round(s, 3) for s in b.samples_s],
                    "cpu_median_s": round(b.cpu, 3),
                    "fake_cpu_median_s": None if b.fake_cpu is None else round(b.fake_cpu, 3),
                }
                for b in benches
            ],
            "ratio_proxmoxer_to_opskit": round(ratio, 2),
            "opskit_run_phases_median_s": mid,
            "requests": {
                "opskit_plan": dict(plan_sent),
                "opskit_run": dict(run_sent),
                "proxmoxer_loop_median": loop_requests,
                "proxmoxer_polls_per_vm": round(loop_polls, 2),
            },
            "verdicts": found,
            "pass": passed,
        }
        if profile is not None:
            report["profile"] = profile_json(profile, args.top, ["opskit", *profiled])
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{setting}; {args.runs} runs each after {args.warmup} warm-up, fresh state dir"
            f" per opskit run, fresh fake per start run; {os.cpu_count()} CPUs, {python}"
        )
        print_benches(benches)
        print(
            "opskit's time is the whole command: interpreter start-up, imports, plan, gate,"
            " journal and the starts; proxmoxer's is its loop in a warm process. cpu s: the"
            " client's CPU time (user + system); fake cpu: fakepve's, in its own process."
        )
        print(
            f"opskit run, median phases from its journal: start-up + plan"
            f" {mid['startup_and_plan']:.3f} s, run start to first step (connect, re-probe)"
            f" {mid['reprobe']:.3f} s, steps {mid['execution']:.3f} s (one step"
            f" {mid['step_median']:.3f} s, slowest {mid['step_max']:.3f} s), last step to exit"
            f" {mid['finish']:.3f} s"
        )
        print_requests(f"HTTP requests of one opskit plan ({args.guests} guests)", plan_sent)
        print_requests(f"HTTP requests of one opskit run ({args.start} starts)", run_sent)
        print(
            f"HTTP requests of one proxmoxer loop: {loop_requests:g}"
            f" ({loop_polls:.2f} task polls per VM)"
        )
        if profile is not None:
            print_profile_report(" ".join(profiled), profile, args.top)
    out = verdict_stream(args.json)
    print(
        f"plan {args.guests} guests: median {plan.median:.2f} s:"
        f" {pass_fail(found[0]['pass'])} (target {TARGET_PLAN_S:g} s)",
        file=out,
    )
    print(
        f"start {args.start} VMs: opskit {opskit.median:.2f} s, proxmoxer"
        f" {proxmoxer.median:.2f} s, {ratio:.1f}x faster:"
        f" {pass_fail(found[1]['pass'])} (target {TARGET_RATIO:g}x)",
        file=out,
    )
    return 0 if passed else 1


def _less(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


def fake_version() -> str:
    from fakepve import __version__

    return str(__version__)


if __name__ == "__main__":
    sys.exit(main())
