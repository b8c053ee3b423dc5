"""Benchmark: the same host state (a directory and K files) on N real sshd hosts, first apply and
no-change apply: opskit's host.* steps against pyinfra, opskit's ssh.upload and Ansible.

Target: opskit's host-state steps run at the orchestrator's speed: `opskit run` of host.directory
+ K host.file steps no slower than pyinfra doing the same (median over median, in both cases).

Method. Real OpenSSH sshd (tests/sshd.py) serves the `--hosts` addresses 127.0.0.151 and up (the
fan-out benchmark uses 101-150, the tests lower ones); nothing but loopback is contacted. The lab
is bench/fanout.py's: every tool logs in as root with a throwaway client key found only through
~/.ssh/config or named explicitly, and checks the host key (one known_hosts file, or the pinned
key in opskit's inventory); HOME is a temporary home, no ssh-agent. Each peer gives every host
the same state, in its own directory (the "hosts" are all this machine):

    ROOT/hNNN/            a directory, mode 0750
    ROOT/hNNN/fKK.conf    K files of `--size` bytes each (distinct text), mode 0640

where ROOT is a fresh temporary directory under /tmp (root's /tmp: sshd logs in as root) made
before each peer's first apply and removed after its second. The peers:

    opskit         opskit run hoststate --yes -p root=ROOT: host.directory + K host.file steps
                   (pyinfra's files.directory and files.put through opskit's connector: one
                   connection and one persistent shell per host); targets all, concurrency N;
                   a fresh $OPSKIT_STATE_DIR per run (the journal on)
    pyinfra        pyinfra -y --parallel N INVENTORY.py DEPLOY.py: files.directory + K files.put
                   (its own SSH connector, ssh_known_hosts_file per host, strict checking)
    ssh.upload     opskit run of ssh.run `mkdir` (creates: guard) + K ssh.upload steps: opskit's
                   non-pyinfra path, an internal reference
    ansible        ansible-playbook of file + K copy tasks (forks N, gathering off, pipelining on,
                   the default ControlPersist with a fresh control_path_dir per run); left out
                   with --skip-ansible

Each peer's run is two subprocesses, each timed from start to exit: `create` (nothing there yet:
everything created) then `no change` (the same command again: nothing to do). After each, the
benchmark checks the result on disk itself: exactly the directory and the K files on every host,
contents byte for byte, modes, owner root, no temporary leftovers; after `no change` also that
no file or directory was touched (inode, mtime and ctime as `create` left them). Each tool must
also say what it did: opskit's journal holds every step succeeded (create), or its plan shows
every step unchanged and it says "nothing to do" (no change: then it starts no run and journals
nothing); pyinfra's grand total shows every operation a success (create) or without change, none
an error; Ansible's recap every task ok on every host, all of them changed or none.

The peers run in turns, one round after another, so that background noise falls on all alike;
Ansible, the slowest, runs fewer times (--ansible-runs; --quick: 1 run of pyinfra and Ansible).
One untimed warm-up round of opskit, pyinfra and ssh.upload comes first. Between runs the
benchmark waits until sshd has no connection left; before and after, it measures how busy the
machine is without it (other people's load) and warns when that is more than a fifth of a CPU.

The login shell. sshd runs every command through the login user's shell, and Debian's bash then
reads ~/.bashrc, even for `sh -c ...`. On this machine root's runs `pyenv init` (about 0.3 s and
0.1 s of CPU a time): that would bill a tool for every channel it opens, this machine's dotfiles
rather than the tool (pyinfra and Ansible open one per command, opskit one shell per host). So
the sshd runs with `SetEnv SHLVL=1` (tests/sshd.py's default: bash then counts itself nested
and reads no ~/.bashrc), as bench/fanout.py's do. --login-rc leaves it out.

The table gives per case the median, min and max wall time, opskit's speed-up over each peer (its
median / opskit's: above 1, opskit is faster) and two CPU figures in seconds (medians): `client`
is the child's own and its waited-for descendants', `all cpu` the whole machine's busy time during
the run (/proc/stat, every CPU: the client plus sshd). Exit code 0 when the target is met, 1 when
not, 2 when a tool fails or leaves the wrong state.

    python bench/host_state.py                    5 runs, Ansible 3 (about 6 minutes)
    python bench/host_state.py --quick            1 run of pyinfra and Ansible
    python bench/host_state.py --login-rc --quick with root's ~/.bashrc (about 8 minutes)
    python bench/host_state.py --skip-ansible     without Ansible
    python bench/host_state.py --json             the same figures as JSON
    python bench/host_state.py --profile          also both opskit runs once under cProfile,
                                                  every thread (the pyinfra work runs in a pool),
                                                  CPU time
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import stat
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    SCRUBBED_ENV,
    Profile,
    fail,
    journal_counts,
    load_profile,
    opskit_command,
    print_profile_report,
    print_ratio_verdicts,
    print_table,
    profile_json,
    run_child,
    scratch_dir,
    spread,
)

# The fan-out benchmark's lab (home, key, known_hosts, ssh config, scrubbed environment) and its
# helpers for sshd's connections and Ansible's ControlPersist masters; it also puts tests/ on
# sys.path for tests/sshd.py.
from fanout import (
    Lab,
    check_login_shell,
    exit_masters,
    host_name,
    machine_cpu,
    make_lab,
    pyinfra_host_data,
    settle,
    write_ansible_setup,
)
from sshd import Sshd

FIRST_HOST = 151  # 127.0.0.151 and up: no other benchmark or test uses them
MAX_HOSTS = 50
RUNBOOK = "hoststate"
UPLOAD_RUNBOOK = "hoststate-upload"
DIR_MODE = 0o750
FILE_MODE = 0o640
CASES = ("create", "no change")
BUSY = 0.2  # CPUs busy without the benchmark: above this, the figures are suspect
ROOT_ENV = "HOSTSTATE_ROOT"  # where pyinfra's deploy file finds ROOT
_SCRUBBED_ENV = (*SCRUBBED_ENV, ROOT_ENV)

# `opskit OPSKIT_ARGS` under cProfile in every thread: each thread started after this gets a
# profiler of its own on its first event (host.* work runs in a thread pool), merged at the end.
# Each counts its thread's CPU time (time.thread_time), not wall time: 20 threads waiting on the
# event loop, or on the GIL, would otherwise count 20 times over.
_PROFILE_CHILD = """\
import cProfile, pstats, sys, threading, time
sys.argv = {argv!r}
profilers = []

def start(*_):
    profiler = cProfile.Profile(time.thread_time)
    profilers.append(profiler)
    profiler.enable()

threading.setprofile(start)
main_profiler = cProfile.Profile(time.thread_time)
code = 0
main_profiler.enable()
try:
    from opskit.cli import main
    main()
except SystemExit as exc:
    code = exc.code
finally:
    main_profiler.disable()
    threading.setprofile(None)
    # Let the pool's threads end, so that no call is left open (it would be closed with the
    # main thread's clock).
    bridge = sys.modules.get("opskit.clients.pyinfra_connector")
    if getattr(bridge, "_executor", None) is not None:
        bridge._executor.shutdown(wait=True)
    stats = pstats.Stats(main_profiler)
    for profiler in profilers:
        stats.add(profiler)
    stats.dump_stats({out!r})
sys.exit(code)
"""

# ----- the state -----------------------------------------------------------------------------


@dataclass
class Wanted:
    """What every host ends up with: ROOT/NAME/ holding these files, for these host names."""

    names: list[str]  # host directory names (h151, ...), one per host
    files: dict[str, bytes]  # file name -> content


def make_files(count: int, size: int) -> dict[str, bytes]:
    """`count` files of `size` bytes of distinct text (no braces: opskit renders content)."""
    files = {}
    for i in range(1, count + 1):
        text, n = "", 0
        while len(text) < size:
            text += f"file {i:02d} line {n:03d} {hashlib.sha256(f'{i}/{n}'.encode()).hexdigest()}\n"
            n += 1
        files[f"f{i:02d}.conf"] = text[: size - 1].encode() + b"\n"
    return files


Snapshot = dict[str, tuple[int, int, int]]  # path -> (inode, mtime_ns, ctime_ns)


def check_disk(root: Path, wanted: Wanted) -> str | Snapshot:
    """The state on disk: a problem, or what each path looks like (to compare later)."""
    found: Snapshot = {}
    if sorted(p.name for p in root.iterdir()) != sorted(wanted.names):
        return f"{root} holds {sorted(p.name for p in root.iterdir())}, not one directory per host"
    for name in wanted.names:
        directory = root / name
        info = directory.lstat()
        if not stat.S_ISDIR(info.st_mode) or stat.S_IMODE(info.st_mode) != DIR_MODE:
            return f"{directory}: not a directory of mode {DIR_MODE:04o} ({info.st_mode:o})"
        found[str(directory)] = (info.st_ino, info.st_mtime_ns, info.st_ctime_ns)
        entries = sorted(p.name for p in directory.iterdir())
        if entries != sorted(wanted.files):
            return f"{directory} holds {entries}, not {sorted(wanted.files)}"
        for file_name, content in wanted.files.items():
            path = directory / file_name
            info = path.lstat()
            if not stat.S_ISREG(info.st_mode) or stat.S_IMODE(info.st_mode) != FILE_MODE:
                return f"{path}: not a regular file of mode {FILE_MODE:04o} ({info.st_mode:o})"
            if info.st_uid != 0 or info.st_gid != 0:
                return f"{path}: owned by {info.st_uid}:{info.st_gid}, not root"
            if path.read_bytes() != content:
                return f"{path}: its content differs from what was given"
            found[str(path)] = (info.st_ino, info.st_mtime_ns, info.st_ctime_ns)
    return found


# ----- the peers -----------------------------------------------------------------------------


# One invocation of a peer for a case and ROOT: argv, extra environment, a check of its output
# (stdout and stderr) returning a problem or None, and a clean-up called after it, untimed.
RunSpec = tuple[list[str], dict[str, str], Callable[[str], str | None], Callable[[], None]]


@dataclass
class Peer:
    name: str
    label: str  # what runs, for the table
    runs: int
    start: Callable[[str, Path], RunSpec]  # (case, ROOT), called before each invocation
    samples_s: dict[str, list[float]] = field(default_factory=dict)
    client_cpu_s: dict[str, list[float]] = field(default_factory=dict)
    machine_cpu_s: dict[str, list[float]] = field(default_factory=dict)

    def median(self, case: str) -> float:
        return statistics.median(self.samples_s[case])


def _nothing() -> None:
    return None


def write_inventory(lab: Lab, project: Path) -> Path:
    inventory = project / "inventory.yaml"
    lines = ["# opskit host-state benchmark: loopback sshd hosts only", "version: 1", "hosts:"]
    for address in lab.hosts:
        lines.append(
            f"  - {{name: {host_name(address)}, address: {address},"
            f' ssh: {{user: root, port: {lab.port}, host_key: "{lab.pinned}"}}}}'
        )
    inventory.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return inventory


def write_runbooks(lab: Lab, runbooks: Path, wanted: Wanted) -> None:
    """The two opskit runbooks: host.* (pyinfra) and ssh.* (SFTP); content inline, JSON-quoted."""
    base = "{{ params.root }}/{{ target.name }}"
    head = (
        "targets: all\n"
        f"concurrency: {len(lab.hosts)}\n"
        "params:\n"
        "  root: {description: the directory that holds one directory per host}\n"
        "steps:\n"
    )
    dir_mode, file_mode = f"{DIR_MODE:04o}", f"{FILE_MODE:04o}"
    host = [f'  - id: dir\n    host.directory: {{path: "{base}", mode: "{dir_mode}"}}\n']
    upload = [
        f'  - id: dir\n    ssh.run: {{cmd: "mkdir -m {dir_mode} {base}", creates: "{base}"}}\n'
    ]
    for i, (file_name, content) in enumerate(wanted.files.items(), 1):
        body = f'path: "{base}/{file_name}", content: {json.dumps(content.decode())}'
        host.append(f'  - id: f{i:02d}\n    host.file: {{{body}, mode: "{file_mode}"}}\n')
        body = f'dest: "{base}/{file_name}", content: {json.dumps(content.decode())}'
        upload.append(f'  - id: f{i:02d}\n    ssh.upload: {{{body}, mode: "{file_mode}"}}\n')
    what = f"a directory and {len(wanted.files)} files on every host (host-state benchmark)"
    runbooks.joinpath(f"{RUNBOOK}.yaml").write_text(
        f"name: {RUNBOOK}\ndescription: {what}, host.*\n{head}{''.join(host)}", encoding="utf-8"
    )
    runbooks.joinpath(f"{UPLOAD_RUNBOOK}.yaml").write_text(
        f"name: {UPLOAD_RUNBOOK}\ndescription: {what}, ssh.*\n{head}{''.join(upload)}",
        encoding="utf-8",
    )


def opskit_args(runbooks: Path, inventory: Path, runbook: str, root: Path) -> list[str]:
    return [
        "--runbooks",
        str(runbooks),
        "--inventory",
        str(inventory),
        "run",
        runbook,
        "--yes",
        "-p",
        f"root={root}",
    ]


@dataclass
class OpskitProject:
    runbooks: Path
    inventory: Path
    files: list[str]  # names of the files each host gets


def write_opskit_project(lab: Lab, wanted: Wanted) -> OpskitProject:
    project = lab.root / "opskit"
    runbooks = project / "runbooks"
    runbooks.mkdir(parents=True)
    write_runbooks(lab, runbooks, wanted)
    return OpskitProject(runbooks, write_inventory(lab, project), list(wanted.files))


def opskit_peer(
    lab: Lab, project: OpskitProject, name: str, runbook: str, label: str, runs: int
) -> Peer:
    expected = len(lab.hosts) * (len(project.files) + 1)

    def start(case: str, root: Path) -> RunSpec:
        state = lab.fresh("state")
        argv = [
            *opskit_command(sys.executable),
            *opskit_args(project.runbooks, project.inventory, runbook, root),
        ]

        def check(output: str) -> str | None:
            if case == "create":
                counts = journal_counts(state)
                if counts["steps"] != expected or counts.get("steps succeeded") != expected:
                    return f"the journal holds {counts}, not {expected} steps succeeded"
                return None
            # Nothing to change: opskit plans, says so and starts no run (no journal entry).
            unchanged = (
                f"Plan: 0 to create, 0 to update, 0 to delete, 0 checks, {expected} unchanged."
            )
            if unchanged not in output or "nothing to do" not in output:
                return f"its plan does not show {expected} steps unchanged and nothing to do"
            if (state / "journal.db").exists() and journal_counts(state)["steps"] != 0:
                return f"the journal holds {journal_counts(state)}, not nothing"
            return None

        return argv, {"OPSKIT_STATE_DIR": str(state)}, check, lambda: shutil.rmtree(state)

    return Peer(name, label, runs, start)


def write_local_files(lab: Lab, wanted: Wanted) -> dict[str, Path]:
    """The files as local sources for pyinfra and Ansible: file name -> its local copy."""
    local = lab.root / "files"
    local.mkdir()
    paths = {}
    for file_name, content in wanted.files.items():
        paths[file_name] = local / file_name
        paths[file_name].write_bytes(content)
    return paths


def pyinfra_peer(lab: Lab, local: dict[str, Path], runs: int) -> Peer:
    work = lab.root / "pyinfra"
    work.mkdir()
    data = pyinfra_host_data(lab)
    hosts = ",\n".join(
        f"    ({a!r}, {{**{data!r}, 'hoststate_name': {host_name(a)!r}}})" for a in lab.hosts
    )
    (work / "inventory.py").write_text(f"hosts = [\n{hosts},\n]\n")
    mode_dir, mode_file = f"{DIR_MODE:o}", f"{FILE_MODE:o}"
    puts = "".join(
        f"files.put(name={f'f{i:02d}'!r}, src={str(path)!r}, dest=f'{{base}}/{file_name}',"
        f" mode={mode_file!r})\n"
        for i, (file_name, path) in enumerate(local.items(), 1)
    )
    (work / "deploy.py").write_text(
        "import os\n\nfrom pyinfra import host\nfrom pyinfra.operations import files\n\n"
        f"base = os.environ[{ROOT_ENV!r}] + '/' + host.data.hoststate_name\n"
        f"files.directory(name='dir', path=base, mode={mode_dir!r})\n{puts}"
    )
    pyinfra = Path(sys.executable).parent / "pyinfra"
    if not pyinfra.is_file():
        fail(f"{pyinfra} is missing: pip install pyinfra")
    argv = [
        str(pyinfra),
        "-y",
        "--parallel",
        str(len(lab.hosts)),
        str(work / "inventory.py"),
        str(work / "deploy.py"),
    ]
    operations = len(lab.hosts) * (len(local) + 1)

    def start(case: str, root: Path) -> RunSpec:
        def check(output: str) -> str | None:
            # pyinfra's results: Grand total  HOSTS  SUCCESS  ERROR  NO CHANGE ("-" for none)
            total = re.search(r"Grand total\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$", output, re.M)
            n = str(operations)
            wanted = (n, n, "-", "-") if case == "create" else (n, "-", "-", n)
            if total is None or total.groups() != wanted:
                found = " ".join(total.groups()) if total else "none"
                return (
                    f"its grand total ({found}) does not show {n} operations, no error,"
                    f" {'all a success' if case == 'create' else 'all without change'}"
                )
            return None

        return argv, {ROOT_ENV: str(root)}, check, _nothing

    return Peer("pyinfra", "pyinfra deploy: files.directory + files.put", runs, start)


def ansible_peer(lab: Lab, local: dict[str, Path], runs: int) -> Peer:
    work = lab.root / "ansible"
    work.mkdir()
    config = write_ansible_setup(lab, work, len(lab.hosts), pipelining=True)
    base = "{{ root }}/{{ inventory_hostname }}"
    tasks = [
        "    - name: dir\n      ansible.builtin.file:"
        f' {{path: "{base}", state: directory, mode: "{DIR_MODE:04o}"}}\n'
    ]
    for i, (file_name, path) in enumerate(local.items(), 1):
        tasks.append(
            f"    - name: f{i:02d}\n      ansible.builtin.copy:"
            f' {{src: "{path}", dest: "{base}/{file_name}", mode: "{FILE_MODE:04o}"}}\n'
        )
    playbook = work / "hoststate.yml"
    playbook.write_text(f"- hosts: all\n  gather_facts: false\n  tasks:\n{''.join(tasks)}")
    program = Path(sys.executable).parent / "ansible-playbook"
    if not program.is_file():
        fail(f"{program} is missing: pip install ansible-core (the bench extra)")
    task_count = len(tasks)

    def start(case: str, root: Path) -> RunSpec:
        control = lab.fresh("cp")  # no master of an earlier run is reused
        argv = [str(program), "-e", json.dumps({"root": str(root)}), str(playbook)]
        changed = task_count if case == "create" else 0

        def check(output: str) -> str | None:
            recap = re.findall(
                r"ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", output
            )
            good = [r for r in recap if r == (str(task_count), str(changed), "0", "0")]
            if len(good) != len(lab.hosts):
                return (
                    f"the recap shows {len(good)} of {len(lab.hosts)} hosts with every task ok,"
                    f" {changed} changed"
                )
            return None

        env = {"ANSIBLE_CONFIG": str(config), "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control)}
        return argv, env, check, lambda: exit_masters(control)

    return Peer("ansible", "ansible-playbook: file + copy tasks", runs, start)


# ----- running -------------------------------------------------------------------------------


def invoke(peer: Peer, case: str, root: Path, lab: Lab, timed: bool) -> None:
    argv, extra_env, check, cleanup = peer.start(case, root)
    try:
        busy = machine_cpu()
        child = run_child(argv, lab.root, {**lab.env, **extra_env}, merge_output=True)
        busy = machine_cpu() - busy
        problem = f"exited {child.returncode}" if child.returncode != 0 else check(child.output)
        if problem is not None:
            sys.stderr.write(child.output[-4000:])
            fail(f"{peer.name} ({case}): {problem}")
    finally:
        cleanup()
    settle(lab.sshd_pids)
    if timed:
        peer.samples_s.setdefault(case, []).append(child.elapsed)
        peer.client_cpu_s.setdefault(case, []).append(child.cpu)
        peer.machine_cpu_s.setdefault(case, []).append(busy)


def run_pair(peer: Peer, lab: Lab, wanted: Wanted, timed: bool, say: Any) -> None:
    """Both cases in a fresh ROOT, the disk checked after each; ROOT removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="hoststate-", dir="/tmp"))
    try:
        invoke(peer, "create", root, lab, timed)
        created = check_disk(root, wanted)
        if isinstance(created, str):
            fail(f"{peer.name} (create): {created}")
        invoke(peer, "no change", root, lab, timed)
        again = check_disk(root, wanted)
        if isinstance(again, str):
            fail(f"{peer.name} (no change): {again}")
        touched = sorted(p for p in created if again.get(p) != created[p])
        if touched:
            fail(f"{peer.name} (no change): it touched {len(touched)} paths, e.g. {touched[0]}")
        if timed:
            create, same = peer.samples_s["create"][-1], peer.samples_s["no change"][-1]
            say(f"  create {create:.2f} s, no change {same:.2f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure(
    peers: list[Peer], warm: list[Peer], lab: Lab, wanted: Wanted, warmup: int, say: Any
) -> None:
    for round_ in range(warmup):
        for peer in warm:
            say(f"warm-up {round_ + 1}: {peer.name}")
            run_pair(peer, lab, wanted, False, say)
    for round_ in range(max(p.runs for p in peers)):
        for peer in peers:
            if round_ < peer.runs:
                say(f"run {round_ + 1}/{peer.runs}: {peer.name}")
                run_pair(peer, lab, wanted, True, say)


def background(seconds: float = 2.0) -> float:
    """CPUs the machine keeps busy while the benchmark does nothing: other people's load."""
    busy = machine_cpu()
    time.sleep(seconds)
    return (machine_cpu() - busy) / seconds


# ----- profile -------------------------------------------------------------------------------


def profile_opskit(lab: Lab, project: OpskitProject, wanted: Wanted) -> dict[str, Profile]:
    """`opskit run hoststate` once per case under cProfile (every thread), a fresh state each."""
    found = {}
    root = Path(tempfile.mkdtemp(prefix="hoststate-", dir="/tmp"))
    try:
        for case in CASES:
            out = lab.root / f"{case.replace(' ', '-')}.prof"
            args = ["opskit", *opskit_args(project.runbooks, project.inventory, RUNBOOK, root)]
            code = _PROFILE_CHILD.format(argv=args, out=str(out))
            state = lab.fresh("state")
            env = {**lab.env, "OPSKIT_STATE_DIR": str(state)}
            child = run_child([sys.executable, "-c", code], lab.root, env, merge_output=True)
            if child.returncode != 0:
                sys.stderr.write(child.output[-4000:])
                fail(f"the profiled run ({case}) exited {child.returncode}")
            if isinstance(check_disk(root, wanted), str):
                fail(f"the profiled run ({case}) left the wrong state")
            settle(lab.sshd_pids)
            found[case] = load_profile(child.elapsed, out)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return found


# ----- report --------------------------------------------------------------------------------


def verdicts(by: dict[str, Peer]) -> list[dict[str, Any]]:
    found = []
    for case in CASES:
        opskit, pyinfra = by["opskit"].median(case), by["pyinfra"].median(case)
        found.append(
            {
                "name": f"opskit no slower than pyinfra ({case})",
                "value": round(pyinfra / opskit, 2),
                "target": ">= 1x",
                "pass": opskit <= pyinfra,
            }
        )
    return found


def print_peers(peers: list[Peer], by: dict[str, Peer]) -> None:
    columns = [("case", 9, ""), ("name", 10, ""), ("runs", 4, ""), ("median s", 9, ".2f")]
    columns += [("min", 6, ".2f"), ("max", 6, ".2f"), ("opskit x", 9, ".2f")]
    columns += [("client cpu", 10, ".2f"), ("all cpu", 8, ".2f")]
    rows = []
    for case in CASES:
        opskit = by["opskit"].median(case)
        for p in peers:
            samples = p.samples_s[case]
            cpu = statistics.median(p.client_cpu_s[case])
            busy = statistics.median(p.machine_cpu_s[case])
            rows.append(
                [
                    case,
                    p.name,
                    len(samples),
                    p.median(case),
                    min(samples),
                    max(samples),
                    p.median(case) / opskit,
                    cpu,
                    busy,
                    p.label,
                ]
            )
    print_table(columns, "what", rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runs", type=int, default=5, help="timed runs of opskit, ssh.upload and pyinfra (5)"
    )
    parser.add_argument("--ansible-runs", type=int, default=3, help="timed runs of Ansible (3)")
    parser.add_argument("--quick", action="store_true", help="1 run of pyinfra and Ansible")
    parser.add_argument("--skip-ansible", action="store_true", help="leave out Ansible")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds (1; not Ansible)")
    parser.add_argument("--hosts", type=int, default=20, help="hosts (20)")
    parser.add_argument("--files", type=int, default=5, help="files per host (5)")
    parser.add_argument("--size", type=int, default=4096, help="bytes per file (4096)")
    parser.add_argument(
        "--login-rc",
        action="store_true",
        help="let bash read the login user's ~/.bashrc for commands over SSH, as fanout.py does",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--profile", action="store_true", help="also both opskit runs once under cProfile"
    )
    parser.add_argument("--top", type=int, default=30, help="rows of the profile (30)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    if min(args.runs, args.ansible_runs, args.top, args.files) < 1:
        parser.error("--runs, --ansible-runs, --files and --top must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    if args.size < 64:
        parser.error("--size must be at least 64")
    if not 1 <= args.hosts <= MAX_HOSTS:
        parser.error(f"--hosts must be 1..{MAX_HOSTS}")

    hosts = [f"127.0.0.{n}" for n in range(FIRST_HOST, FIRST_HOST + args.hosts)]
    with scratch_dir("hoststate-lab-", args.keep, "/tmp") as root:  # short: ControlPath sockets
        sshd = Sshd(root / "sshd", hosts, login_rc=args.login_rc)
        try:
            sshd.start()
            lab = make_lab(root, sshd)
            for name in _SCRUBBED_ENV:
                lab.env.pop(name, None)
            return bench_all(args, lab)
        finally:
            sshd.stop()


def bench_all(args: argparse.Namespace, lab: Lab) -> int:
    check_login_shell(lab, args.login_rc)
    wanted = Wanted([host_name(a) for a in lab.hosts], make_files(args.files, args.size))
    local = write_local_files(lab, wanted)
    project = write_opskit_project(lab, wanted)
    label = "opskit run: host.directory + host.file (journal on)"
    opskit = opskit_peer(lab, project, "opskit", RUNBOOK, label, args.runs)
    label = "opskit run: ssh.run mkdir + ssh.upload (journal on)"
    upload = opskit_peer(lab, project, "ssh.upload", UPLOAD_RUNBOOK, label, args.runs)
    pyinfra = pyinfra_peer(lab, local, 1 if args.quick else args.runs)
    peers = [opskit, pyinfra, upload]
    if not args.skip_ansible:
        peers.append(ansible_peer(lab, local, 1 if args.quick else args.ansible_runs))

    def say(text: str) -> None:
        if not args.quiet:
            print(text, file=sys.stderr, flush=True)

    before = background()
    if before > BUSY:
        say(
            f"warning: the machine is busy before the benchmark ({before:.2f} CPUs): figures suffer"
        )
    measure(peers, [opskit, pyinfra, upload], lab, wanted, args.warmup, say)
    after = background()
    if after > BUSY:
        say(f"warning: the machine is busy after the benchmark ({after:.2f} CPUs): figures suffer")
    by = {p.name: p for p in peers}
    found = verdicts(by)
    passed = all(v["pass"] for v in found)
    profiles = profile_opskit(lab, project, wanted) if args.profile else None
    setup = (
        f"{len(lab.hosts)} loopback sshd hosts x (1 directory + {args.files} files of"
        f" {args.size} bytes) ({len(lab.sshd_pids)} sshd processes, port {lab.port}),"
        f" concurrency {len(lab.hosts)}, {os.cpu_count()} CPUs, {sys.executable};"
        f" ~/.bashrc of commands over SSH: {'read' if args.login_rc else 'skipped'};"
        f" busy without the benchmark: {before:.2f} CPUs before, {after:.2f} after"
    )
    if args.json:
        report: dict[str, Any] = {
            "setup": setup,
            "hosts": len(lab.hosts),
            "files": args.files,
            "file_bytes": args.size,
            "cpus": os.cpu_count(),
            "login_rc": args.login_rc,
            "background_cpus": {"before": round(before, 2), "after": round(after, 2)},
            "results": [
                {
                    "case": case,
                    "name": p.name,
                    "what": p.label,
                    "runs": len(p.samples_s[case]),
                    **spread(p.samples_s[case]),
                    "opskit_speedup": round(p.median(case) / opskit.median(case), 2),
                    "samples_s": [round(s, 3) for s in p.samples_s[case]],
                    "client_cpu_s": [round(s, 2) for s in p.client_cpu_s[case]],
                    "machine_cpu_s": [round(s, 2) for s in p.machine_cpu_s[case]],
                }
                for case in CASES
                for p in peers
            ],
            "verdicts": found,
            "pass": passed,
        }
        if profiles is not None:
            report["profile"] = {
                case: profile_json(prof, args.top) for case, prof in profiles.items()
            }
        print(json.dumps(report, indent=2))
    else:
        print(setup)
        print_peers(peers, by)
        for case, prof in (profiles or {}).items():
            print_profile_report(f"run {RUNBOOK} --yes ({case}; all threads)", prof, args.top)
    print_ratio_verdicts(found, args.json)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
