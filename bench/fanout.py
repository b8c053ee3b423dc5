"""Benchmark: 10 commands on each of 50 real sshd hosts: opskit against its peers and the floor.

Targets: `opskit run` (journal on) within 1.03x of the handshake floor for this work (`floor/10`:
one handshake a host and the same 10 commands) and exactly one SSH login per host per run (counted
in sshd's own log: the plan's connection is the run's), at least 5x faster than pyinfra and than
one channel per command, at least 8x faster than Ansible's fastest variant. opskit against the
1-command `floor` is shown beside it, as a reference: the 9 more commands are work the hosts do
for any tool (`floor/10` took 1.1-1.4x of `floor` here), not a cost of opskit's.

Method. Real OpenSSH sshd (tests/sshd.py: 15 loopback addresses per sshd process, one port, a
throwaway host key and an authorized client key) serves the `--hosts` addresses 127.0.0.101 and
up; nothing but loopback is contacted. Every tool logs in as root with that client key and checks
the host key against one known_hosts file holding `[127.0.0.N]:PORT` for every host (no tool may
skip the check). The children run with HOME set to a temporary home whose .ssh/ holds the key
(under a name no tool looks for by itself), known_hosts and a config naming both, with no
ssh-agent (SSH_AUTH_SOCK unset) and stdout and stderr captured. Each peer runs the same commands
(COMMANDS) on every host:

    floor          a bare asyncssh script: connect to each host, run one command (one channel)
    floor/10       the same running the 10 commands as one script on that one channel: the
                   least any tool can do for this work over one handshake a host (the server
                   still runs every command): the floor the 1.03x target is measured against
    opskit         opskit run fan --yes: a runbook of 10 ssh.run steps, targets all, concurrency
                   50, the inventory pinning the host key; a fresh $OPSKIT_STATE_DIR per run (the
                   journal on); opskit finds the key through ~/.ssh/config (IdentityFile)
    opskit/guard   the same, its step 1 guarded by `creates:`: the plan connects
    opskit/dry     opskit run fan --dry-run: opskit's start-up, loading and plan alone, no
                   connection (a reference: the part of opskit's time that does not grow with
                   hosts or steps; "opskit less its own start-up" below subtracts it)
    asyncssh/chan  a bare asyncssh script: one connection per host, the 10 commands one after
                   another, each conn.run() on a channel of its own; all hosts at once
    pyinfra        pyinfra -y --parallel 50 INVENTORY.py DEPLOY.py: 10 server.shell operations
    ansible raw    ansible-playbook of 10 raw tasks; forks 50, gathering explicit, the default
                   ssh_args (ControlPersist 60s), a fresh control_path_dir per run
    ansible cmd    the same with 10 command tasks (python on the target; no shell, so
                   `echo $((6*7))` prints its argument as it is)

Each is a subprocess (the bare scripts as `python -c CODE`), timed from start to exit, and must
exit 0 having run every command on every host (opskit: the journal holds every step, succeeded;
Ansible: the recap; the bare scripts count their exit statuses). The peers run in turns, one
round after another, so that background noise falls on all alike; the slow peers run fewer
times (--quick, --ansible-command-runs). After Ansible, its ControlPersist masters are told to
exit (`ssh -O exit`) before the next run. One untimed warm-up round of the floor and opskit
comes first (it also checks that opskit finds the key through ~/.ssh/config).

The table gives the median, min and max wall time, each median over the floor's, opskit's
speed-up over it (its median / opskit's), and two CPU figures in seconds (medians): `client` is
the child's CPU and that of the descendants it waited for (Ansible's detached ControlPersist
masters are not counted), `all cpu` the whole machine's busy time during the run (/proc/stat,
every CPU): the client plus sshd, whose new connections and new session channels are what
costs. Between runs the benchmark waits until sshd has no connection left. Exit code 0 when
every target is met, 1 when one is missed, 2 when a tool fails.

    python bench/fanout.py                          all peers, 3 runs (Ansible command tasks 1)
    python bench/fanout.py --quick                  1 run of the slow peers
    python bench/fanout.py --skip-ansible-command   without the 5-minute peer
    python bench/fanout.py --only-floor             the floor and opskit alone
    python bench/fanout.py --json                   the same figures as JSON
    python bench/fanout.py --profile                also `opskit run` once under cProfile
    python bench/fanout.py --split-cores            the sshds on CPU 0, every client on the rest
    python bench/fanout.py --login-rc               the hosts read root's ~/.bashrc for commands

The login shell. sshd runs every command through the login user's shell, and Debian's bash then
reads ~/.bashrc, even for `sh -c ...`. On this machine root's runs `pyenv init`: about 100
processes and 0.1 s of CPU for every session channel, and more when many start at once (they
contend for pyenv's lock), which made the same floor/10 take 14-20 s from one run to the next.
That would bill every tool for this machine's dotfiles rather than for its own work: it made the
floor four times slower than its commands and sshd's logins, which hid most of opskit's own cost
in a ratio over it, and it billed pyinfra, Ansible and one channel per command ten times a host.
So the sshds run with `SetEnv SHLVL=1` (tests/sshd.py's default: bash then counts itself
nested and reads no ~/.bashrc), and the benchmark checks it over SSH before it starts; a freshly
installed Debian or Ubuntu target does as little there. --login-rc leaves it out, for the
figures with this machine's dotfiles.

Layouts. By default the 50 sshds and the client share every CPU, so each CPU-second a client
spends is one the sshds' logins do not get: a client's own CPU counts against it twice. On a
real fan-out the hosts are other machines. `--split-cores` pins every sshd (and so every login
and command it forks) to CPU 0 and the benchmark with its children to the other CPUs: the hosts
have their own CPU, the control machine its own, as they would. Then the hosts' work is what
bounds the run, and `floor/10` is the least any tool can take for these 10 commands.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
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
    profile_command,
    profile_json,
    run_child,
    scratch_dir,
    scrubbed_env,
    spread,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from sshd import Sshd

FLOOR_RATIO = 1.03  # opskit / floor/10 (one handshake a host, the same commands), at most
PYINFRA_SPEEDUP = 5.0  # pyinfra / opskit, at least
CHANNEL_SPEEDUP = 5.0  # one channel per command / opskit, at least
ANSIBLE_SPEEDUP = 8.0  # Ansible's fastest variant / opskit, at least
FIRST_HOST = 101
MAX_HOSTS = 50
CONCURRENCY = 50
RUNBOOK = "fan"
COMMANDS = [
    "uname -a",
    "id -u",
    "hostname",
    "cat /etc/os-release",
    "ls /",
    "uptime",
    "df -h /",
    "echo $((6*7))",
    "date",
    "true",
]
FLOOR_COMMAND = "uname -a"
SCRIPT = "\n".join(COMMANDS)  # floor/10: every command, one channel
KEY_NAME = "fanout_ed25519"  # not a default name: found only through IdentityFile
# Variables that would make the children use other files or an agent, or time something else.
_SCRUBBED_ENV = (
    *SCRUBBED_ENV,
    "SSH_AUTH_SOCK",
    "SSH_AGENT_PID",
    "OPSKIT_STATE_DIR",
    "XDG_STATE_HOME",
    "XDG_CONFIG_HOME",
    "PYTHONTRACEMALLOC",
    "PYTHONPYCACHEPREFIX",
)

# One connection per host; COMMANDS one after another, each on a channel of its own.
# argv: hosts (comma-separated), port, key, known_hosts, commands (JSON). Prints "ok N".
_ASYNCSSH_CHILD = """\
import asyncio, json, sys
import asyncssh
hosts, port, key, known = sys.argv[1].split(","), int(sys.argv[2]), sys.argv[3], sys.argv[4]
commands = json.loads(sys.argv[5])

async def host(address):
    async with asyncssh.connect(address, port=port, username="root", client_keys=[key],
                                known_hosts=known, agent_path=None, config=[]) as conn:
        ok = 0
        for command in commands:
            done = await conn.run(command, check=False)
            ok += done.exit_status == 0
        return ok

async def main():
    results = await asyncio.gather(*(host(a) for a in hosts), return_exceptions=True)
    errors = [f"{a}: {r!r}" for a, r in zip(hosts, results) if isinstance(r, BaseException)]
    print("ok", sum(r for r in results if isinstance(r, int)))
    for error in errors:
        print(error, file=sys.stderr)
    return 1 if errors else 0

sys.exit(asyncio.run(main()))
"""

# ----- the lab -------------------------------------------------------------------------------


@dataclass
class Lab:
    root: Path
    hosts: list[str]
    port: int
    pinned: str  # "TYPE BASE64" of the host key
    home: Path
    key: Path
    known_hosts: Path
    ssh_config: Path
    env: dict[str, str]
    sshd_pids: list[int]
    sshd: Sshd
    counter: int = 0

    def fresh(self, kind: str) -> Path:
        """A new, empty directory, short enough for a ControlPath socket inside it."""
        self.counter += 1
        path = self.root / f"{kind}{self.counter}"
        path.mkdir()
        return path


def make_lab(root: Path, sshd: Sshd) -> Lab:
    home = root / "home"
    dot_ssh = home / ".ssh"
    dot_ssh.mkdir(parents=True, mode=0o700)
    key = dot_ssh / KEY_NAME
    assert sshd.client_key is not None
    shutil.copyfile(sshd.client_key, key)
    os.chmod(key, 0o600)
    shutil.copyfile(str(sshd.client_key) + ".pub", str(key) + ".pub")
    known_hosts = dot_ssh / "known_hosts"
    known_hosts.write_text("".join(f"[{a}]:{sshd.port} {sshd.pinned}\n" for a in sshd.addresses))
    ssh_config = dot_ssh / "config"
    ssh_config.write_text(
        "Host 127.0.0.*\n"
        f"    IdentityFile {key}\n"
        f"    UserKnownHostsFile {known_hosts}\n"
        "    StrictHostKeyChecking yes\n"
    )
    env = scrubbed_env(_SCRUBBED_ENV)
    for name in [n for n in env if n.startswith("ANSIBLE_")]:
        env.pop(name)
    env["HOME"] = str(home)
    env.setdefault("LANG", "C.UTF-8")  # Ansible refuses a locale that is not UTF-8
    if "UTF-8" not in env.get("LC_ALL", "UTF-8").upper():
        env["LC_ALL"] = "C.UTF-8"
    pids = [p.pid for p in sshd.processes]
    return Lab(
        root,
        sshd.addresses,
        sshd.port,
        sshd.pinned,
        home,
        key,
        known_hosts,
        ssh_config,
        env,
        pids,
        sshd,
    )


# ----- the peers -----------------------------------------------------------------------------


# One run of a peer: argv, extra environment, a check of its output (stdout and stderr) that
# returns a problem or None, and a clean-up called after the run, outside the timing.
RunSpec = tuple[list[str], dict[str, str], Callable[[str], str | None], Callable[[], None]]


@dataclass
class Peer:
    name: str
    label: str  # what runs, for the table
    runs: int
    start: Callable[[], RunSpec]  # called before each run
    samples_s: list[float] = field(default_factory=list)
    client_cpu_s: list[float] = field(default_factory=list)
    machine_cpu_s: list[float] = field(default_factory=list)
    # SSH logins (handshakes) per host in each timed run, from sshd's log: {count: hosts}
    logins: list[dict[int, int]] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples_s)


def _nothing() -> None:
    return None


def asyncssh_peer(lab: Lab, name: str, label: str, commands: list[str], runs: int) -> Peer:
    argv = [
        sys.executable,
        "-c",
        _ASYNCSSH_CHILD,
        ",".join(lab.hosts),
        str(lab.port),
        str(lab.key),
        str(lab.known_hosts),
        json.dumps(commands),
    ]
    expected = len(lab.hosts) * len(commands)

    def check(output: str) -> str | None:
        found = re.search(r"^ok (\d+)$", output, re.MULTILINE)
        if found is None or int(found.group(1)) != expected:
            return f"expected ok {expected} (commands that exited 0)"
        return None

    return Peer(name, label, runs, lambda: (argv, {}, check, _nothing))


GUARDED = "fanguard"  # the same, its first step guarded (`creates:`): the plan asks every host


def write_opskit_project(lab: Lab) -> tuple[Path, Path]:
    project = lab.root / "opskit"
    runbooks = project / "runbooks"
    if runbooks.is_dir():
        return runbooks, project / "inventory.yaml"
    runbooks.mkdir(parents=True)
    inventory = project / "inventory.yaml"
    lines = ["# opskit fanout benchmark: loopback sshd hosts only", "version: 1", "hosts:"]
    for address in lab.hosts:
        name = "h" + address.rsplit(".", 1)[1]
        lines.append(
            f"  - {{name: {name}, address: {address},"
            f' ssh: {{user: root, port: {lab.port}, host_key: "{lab.pinned}"}}}}'
        )
    inventory.write_text("\n".join(lines) + "\n", encoding="utf-8")
    steps = [
        f"  - id: c{i:02d}\n    ssh.run: {{cmd: {json.dumps(c)}}}"
        for i, c in enumerate(COMMANDS, 1)
    ]
    for name in (RUNBOOK, GUARDED):
        if name == GUARDED:  # a probe that asks the host: planning connects
            steps[0] = steps[0].replace("}", ', creates: "/nonexistent-fanout"}', 1)
        runbooks.joinpath(f"{name}.yaml").write_text(
            f"name: {name}\n"
            f"description: {len(COMMANDS)} commands on every host (fanout benchmark)\n"
            f"targets: all\nconcurrency: {CONCURRENCY}\nsteps:\n" + "\n".join(steps) + "\n",
            encoding="utf-8",
        )
    return runbooks, inventory


def opskit_args(runbooks: Path, inventory: Path, runbook: str = RUNBOOK) -> list[str]:
    return ["--runbooks", str(runbooks), "--inventory", str(inventory), "run", runbook, "--yes"]


def opskit_peer(lab: Lab, runs: int, runbook: str = RUNBOOK, dry: bool = False) -> Peer:
    runbooks, inventory = write_opskit_project(lab)
    argv = [*opskit_command(sys.executable), *opskit_args(runbooks, inventory, runbook)]
    if dry:
        argv[-1] = "--dry-run"
    expected = len(lab.hosts) * len(COMMANDS)

    def start() -> RunSpec:
        state = lab.fresh("state")

        def check(output: str) -> str | None:
            if dry:
                kinds = r"(\d+) (?:to create|to update|to delete|known after apply)"
                planned = sum(int(n) for n in re.findall(kinds, output))
                if planned != expected:
                    return f"the dry run plans {planned} steps, not {expected}"
                return None
            counts = journal_counts(state)
            if counts["steps"] != expected or counts.get("steps succeeded") != expected:
                return f"the journal holds {counts}, not {expected} steps succeeded"
            return None

        return argv, {"OPSKIT_STATE_DIR": str(state)}, check, lambda: shutil.rmtree(state)

    if dry:
        label = "opskit run fan --dry-run: its start-up, load and plan; no connection"
        return Peer("opskit/dry", label, runs, start)
    if runbook == GUARDED:
        label = "the same, step 1 guarded (creates:): the plan connects"
        return Peer("opskit/guard", label, runs, start)
    return Peer("opskit", "opskit run fan --yes (journal on)", runs, start)


def host_name(address: str) -> str:
    """The name a peer's inventory gives the host at `address` (h101 for 127.0.0.101)."""
    return "h" + address.rsplit(".", 1)[1]


def pyinfra_host_data(lab: Lab) -> dict[str, Any]:
    """pyinfra's per-host data: root with the lab's key, the host key checked, no agent."""
    return {
        "ssh_port": lab.port,
        "ssh_user": "root",
        "ssh_key": str(lab.key),
        "ssh_known_hosts_file": str(lab.known_hosts),
        "ssh_strict_host_key_checking": "yes",
        "ssh_allow_agent": False,
        "ssh_look_for_keys": False,
    }


def write_ansible_setup(lab: Lab, work: Path, forks: int, *, pipelining: bool = False) -> Path:
    """Ansible's inventory and ansible.cfg for the lab's hosts in `work`; the cfg's path."""
    inventory = work / "inventory.yml"
    common = f"-o UserKnownHostsFile={lab.known_hosts} -o StrictHostKeyChecking=yes"
    inventory.write_text(
        json.dumps(
            {
                "all": {
                    "vars": {
                        "ansible_user": "root",
                        "ansible_port": lab.port,
                        "ansible_ssh_private_key_file": str(lab.key),
                        "ansible_ssh_common_args": common,
                    },
                    "hosts": {host_name(a): {"ansible_host": a} for a in lab.hosts},
                }
            },
            indent=1,
        )
    )
    config = work / "ansible.cfg"
    config.write_text(
        "[defaults]\n"
        f"inventory = {inventory}\n"
        f"forks = {forks}\n"
        "gathering = explicit\n"
        "host_key_checking = True\n"
        "interpreter_python = /usr/bin/python3\n"
        "retry_files_enabled = False\n"
        "[ssh_connection]\n"
        + ("pipelining = True\n" if pipelining else "")
        + f"control_path_dir = {lab.root}/cp\n"  # replaced per run through the environment
    )
    return config


def pyinfra_peer(lab: Lab, runs: int) -> Peer:
    work = lab.root / "pyinfra"
    work.mkdir()
    data = pyinfra_host_data(lab)
    hosts = ",\n".join(f"    ({a!r}, {data!r})" for a in lab.hosts)
    (work / "inventory.py").write_text(f"hosts = [\n{hosts},\n]\n")
    ops = "".join(
        f"server.shell(name={f'c{i:02d}'!r}, commands=[{c!r}])\n" for i, c in enumerate(COMMANDS, 1)
    )
    (work / "deploy.py").write_text(f"from pyinfra.operations import server\n\n{ops}")
    pyinfra = Path(sys.executable).parent / "pyinfra"
    if not pyinfra.is_file():
        fail(f"{pyinfra} is missing: pip install pyinfra")
    argv = [
        str(pyinfra),
        "-y",
        "--parallel",
        str(CONCURRENCY),
        str(work / "inventory.py"),
        str(work / "deploy.py"),
    ]

    expected = len(lab.hosts) * len(COMMANDS)

    def check(output: str) -> str | None:
        total = re.search(r"Grand total\s+(\d+)\s+(\d+)\s+-", output)
        if total is None or total.groups() != (str(expected), str(expected)):
            return f"its results do not show {expected} operations, all a success, none an error"
        return None

    return Peer(
        "pyinfra", "pyinfra deploy: 10 server.shell ops", runs, lambda: (argv, {}, check, _nothing)
    )


def ansible_peer(lab: Lab, module: str, runs: int) -> Peer:
    work = lab.root / "ansible"
    work.mkdir(exist_ok=True)
    config = work / "ansible.cfg"
    if not config.exists():
        write_ansible_setup(lab, work, CONCURRENCY)
    tasks = "".join(
        f"    - name: c{i:02d}\n      ansible.builtin.{module}: {json.dumps(c)}\n"
        for i, c in enumerate(COMMANDS, 1)
    )
    playbook = work / f"{module}.yml"
    playbook.write_text(f"- hosts: all\n  gather_facts: false\n  tasks:\n{tasks}")
    program = Path(sys.executable).parent / "ansible-playbook"
    if not program.is_file():
        fail(f"{program} is missing: pip install ansible-core (the bench extra)")
    argv = [str(program), str(playbook)]
    expected = len(lab.hosts)

    def start() -> RunSpec:
        control = lab.fresh("cp")  # no master of an earlier run is reused

        def check(output: str) -> str | None:
            recap = re.findall(r"ok=(\d+)\s+changed=\d+\s+unreachable=(\d+)\s+failed=(\d+)", output)
            good = [r for r in recap if r == (str(len(COMMANDS)), "0", "0")]
            if len(good) != expected:
                return f"the recap shows {len(good)} of {expected} hosts with every task ok"
            return None

        env = {"ANSIBLE_CONFIG": str(config), "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control)}
        return argv, env, check, lambda: exit_masters(control)

    return Peer(f"ansible {module}", f"ansible-playbook: 10 {module} tasks", runs, start)


def exit_masters(control: Path) -> None:
    """Ask every ControlPersist master of one Ansible run to exit (they outlive the run)."""
    for socket_path in control.iterdir():
        subprocess.run(
            ["ssh", "-o", f"ControlPath={socket_path}", "-O", "exit", "fanout-bench"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
            check=False,
        )
    deadline = time.monotonic() + 10
    while any(control.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)


# ----- running -------------------------------------------------------------------------------


def machine_cpu() -> float:
    """CPU seconds the whole machine has been busy (all CPUs), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def sessions(pids: list[int]) -> int:
    """Connection processes the sshd processes have not reaped yet."""
    return sum(len(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()) for pid in pids)


def settle(pids: list[int]) -> None:
    """Wait until every connection of the last run has ended, so that runs do not overlap."""
    deadline = time.monotonic() + 10
    while sessions(pids) and time.monotonic() < deadline:
        time.sleep(0.02)


def run_once(peer: Peer, lab: Lab, timed: bool) -> None:
    argv, extra_env, check, cleanup = peer.start()
    before = lab.sshd.logins()
    try:
        busy = machine_cpu()
        child = run_child(argv, lab.root, {**lab.env, **extra_env}, merge_output=True)
        busy = machine_cpu() - busy
        output = child.output
        problem = f"exited {child.returncode}" if child.returncode != 0 else check(output)
        if problem is not None:
            sys.stderr.write(output[-4000:])
            hint = ""
            if peer.name == "opskit" and "authentication failed" in output:
                hint = f" (did it read the IdentityFile of {lab.ssh_config}?)"
            fail(f"{peer.name}: {problem}{hint}")
    finally:
        cleanup()
    settle(lab.sshd_pids)
    if timed:
        peer.samples_s.append(child.elapsed)
        peer.client_cpu_s.append(child.cpu)
        peer.machine_cpu_s.append(busy)
        after = lab.sshd.logins()
        per_host = [after[a] - before.get(a, 0) for a in lab.hosts]
        peer.logins.append({n: per_host.count(n) for n in sorted(set(per_host))})


def measure(peers: list[Peer], warm: list[Peer], lab: Lab, warmup: int, say: Any) -> None:
    for round_ in range(warmup):
        for peer in warm:
            say(f"warm-up {round_ + 1}: {peer.name}")
            run_once(peer, lab, timed=False)
    for round_ in range(max(p.runs for p in peers)):
        for peer in peers:
            if round_ < peer.runs:
                say(f"run {round_ + 1}/{peer.runs}: {peer.name}")
                run_once(peer, lab, timed=True)
                say(f"  {peer.samples_s[-1]:.2f} s")


# ----- profile -------------------------------------------------------------------------------


def profile_opskit(lab: Lab) -> Profile:
    """`opskit run` once under cProfile, in a fresh state dir: (wall s, pstats rows)."""
    runbooks = lab.root / "opskit" / "runbooks"
    inventory = lab.root / "opskit" / "inventory.yaml"
    out = lab.root / "run.prof"
    cmd = profile_command(sys.executable, opskit_args(runbooks, inventory), out)
    state = lab.fresh("state")
    env = {**lab.env, "OPSKIT_STATE_DIR": str(state)}
    child = run_child(cmd, lab.root, env, merge_output=True)
    if child.returncode != 0:
        sys.stderr.write(child.output[-4000:])
        fail(f"the profiled run exited {child.returncode}")
    return load_profile(child.elapsed, out)


# ----- report --------------------------------------------------------------------------------


def verdicts(by: dict[str, Peer]) -> list[dict[str, Any]]:
    opskit = by["opskit"].median
    logins = by["opskit"].logins + by["opskit/guard"].logins
    work_floor = by["floor/10"].median
    found: list[dict[str, Any]] = [
        {
            "name": f"opskit within {FLOOR_RATIO:g}x of the handshake floor for this work"
            " (floor/10: one handshake a host, the same 10 commands)",
            "value": opskit / work_floor,
            "target": f"<= {FLOOR_RATIO:g}x",
            "pass": opskit <= FLOOR_RATIO * work_floor,
        },
        {
            "name": "opskit: SSH logins per host in a run (sshd's log), every timed run of both",
            "value": max((max(run) for run in logins), default=0),
            "target": "== 1",
            "pass": bool(logins) and all(list(run) == [1] for run in logins),
        },
    ]
    faster = [
        ("pyinfra", "pyinfra", PYINFRA_SPEEDUP),
        ("one channel per command", "asyncssh/chan", CHANNEL_SPEEDUP),
    ]
    ansible = [p for name, p in by.items() if name.startswith("ansible")]
    for title, name, speedup in faster:
        if name not in by:
            continue
        found.append(
            {
                "name": f"opskit at least {speedup:g}x faster than {title}",
                "value": by[name].median / opskit,
                "target": f">= {speedup:g}x",
                "pass": by[name].median >= speedup * opskit,
            }
        )
    if ansible:
        best = min(ansible, key=lambda p: p.median)
        found.append(
            {
                "name": f"opskit at least {ANSIBLE_SPEEDUP:g}x faster than Ansible's fastest"
                f" ({best.name}, of {', '.join(p.name for p in ansible)})",
                "value": best.median / opskit,
                "target": f">= {ANSIBLE_SPEEDUP:g}x",
                "pass": best.median >= ANSIBLE_SPEEDUP * opskit,
            }
        )
    for v in found:
        v["value"] = round(v["value"], 2)
    return found


def print_peers(peers: list[Peer], by: dict[str, Peer]) -> None:
    floor, opskit = by["floor"].median, by["opskit"].median
    columns = [("name", 15, ""), ("runs", 4, ""), ("median s", 9, ".2f"), ("min", 7, ".2f")]
    columns += [("max", 7, ".2f"), ("x floor", 8, ".2f"), ("opskit x", 9, ".2f")]
    columns += [("client cpu", 10, ".2f"), ("all cpu", 8, ".2f")]

    def row(p: Peer) -> list[Any]:
        cpu, busy = statistics.median(p.client_cpu_s), statistics.median(p.machine_cpu_s)
        shown = [p.name, len(p.samples_s), p.median, min(p.samples_s), max(p.samples_s)]
        return [*shown, p.median / floor, p.median / opskit, cpu, busy, p.label]

    print_table(columns, "what", [row(p) for p in peers])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per peer (3)")
    parser.add_argument(
        "--ansible-command-runs",
        type=int,
        default=1,
        help="timed runs of the Ansible command tasks, about 5 minutes each (1)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 run of the slow peers (pyinfra, one channel per command, Ansible)",
    )
    parser.add_argument(
        "--skip-ansible-command", action="store_true", help="leave out the Ansible command tasks"
    )
    parser.add_argument("--skip-ansible", action="store_true", help="leave out Ansible altogether")
    parser.add_argument(
        "--only-floor", action="store_true", help="only the floor and opskit (side by side)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds of floor+opskit (1)")
    parser.add_argument("--hosts", type=int, default=MAX_HOSTS, help="hosts (50)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--profile", action="store_true", help="also run `opskit run` once under cProfile"
    )
    parser.add_argument("--top", type=int, default=30, help="rows of the profile (30)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument(
        "--split-cores",
        action="store_true",
        help="the sshds on CPU 0, the clients on the other CPUs (hosts apart from the client)",
    )
    parser.add_argument(
        "--login-rc",
        action="store_true",
        help="let bash read the login user's ~/.bashrc for commands over SSH (this machine's"
        " dotfiles on every session channel)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.ansible_command_runs < 1 or args.warmup < 0 or args.top < 1:
        parser.error("--runs, --ansible-command-runs and --top must be at least 1")
    if not 1 <= args.hosts <= MAX_HOSTS:
        parser.error(f"--hosts must be 1..{MAX_HOSTS}")

    hosts = [f"127.0.0.{n}" for n in range(FIRST_HOST, FIRST_HOST + args.hosts)]
    with scratch_dir("fanout-", args.keep, "/tmp") as root:  # short: ControlPath sockets
        # the logins counted in sshd's log; ~/.bashrc read for commands only with --login-rc
        sshd = Sshd(root / "sshd", hosts, log=root / "sshd.log", login_rc=args.login_rc)
        try:
            sshd.start()
            lab = make_lab(root, sshd)
            if args.split_cores:
                split_cores(lab)
            return bench_all(args, lab)
        finally:
            sshd.stop()


def check_login_shell(lab: Lab, login_rc: bool) -> None:
    """That bash under sshd counts itself a top-level shell (reads ~/.bashrc) or not, as asked."""
    argv = [
        "ssh",
        "-F",
        str(lab.ssh_config),
        "-o",
        "BatchMode=yes",
        "-p",
        str(lab.port),
        f"root@{lab.hosts[0]}",
        'echo "$SHLVL"',
    ]
    done = subprocess.run(
        argv,
        env=lab.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    wanted = "1" if login_rc else "2"
    if done.returncode != 0 or done.stdout.strip() != wanted:
        fail(
            f"a command over SSH sees SHLVL {done.stdout.strip() or '?'}, not {wanted}"
            f" (exit {done.returncode}): {done.stderr.strip()[-300:]}"
        )


def split_cores(lab: Lab) -> None:
    """Every sshd on CPU 0 (what it forks inherits it); this process, and so every client it
    starts, on the other CPUs."""
    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2 or 0 not in cpus:
        fail(f"--split-cores needs CPU 0 and another CPU; this process may use {sorted(cpus)}")
    for pid in lab.sshd_pids:
        os.sched_setaffinity(pid, {0})
    os.sched_setaffinity(0, cpus - {0})


def bench_all(args: argparse.Namespace, lab: Lab) -> int:
    check_login_shell(lab, args.login_rc)
    slow = 1 if args.quick else args.runs
    floor = asyncssh_peer(
        lab, "floor", "asyncssh: connect, run 1 command", [FLOOR_COMMAND], args.runs
    )
    floor10 = asyncssh_peer(
        lab, "floor/10", "asyncssh: connect, the 10 commands as 1 script", [SCRIPT], args.runs
    )
    opskit = opskit_peer(lab, args.runs)
    dry = opskit_peer(lab, args.runs, dry=True)
    peers = [floor, floor10, opskit, opskit_peer(lab, args.runs, GUARDED), dry]
    if not args.only_floor:
        peers += [
            asyncssh_peer(
                lab, "asyncssh/chan", "asyncssh: 10 conn.run(), a channel each", COMMANDS, slow
            ),
            pyinfra_peer(lab, slow),
        ]
    if not args.skip_ansible and not args.only_floor:
        peers.append(ansible_peer(lab, "raw", slow))
        if not args.skip_ansible_command:
            peers.append(ansible_peer(lab, "command", min(args.ansible_command_runs, slow)))

    def say(text: str) -> None:
        if not args.quiet:
            print(text, file=sys.stderr, flush=True)

    # The warm-up also checks that opskit finds the key through ~/.ssh/config: at least once.
    measure(peers, [floor, opskit], lab, max(args.warmup, 1), say)
    by = {p.name: p for p in peers}
    found = verdicts(by)
    passed = all(v["pass"] for v in found)
    profile = profile_opskit(lab) if args.profile else None
    layout = (
        f"sshds on CPU 0, clients on CPU {','.join(map(str, sorted(os.sched_getaffinity(0))))}"
        if args.split_cores
        else "sshds and clients sharing every CPU"
    )
    setup = (
        f"{len(lab.hosts)} loopback sshd hosts x {len(COMMANDS)} commands"
        f" ({len(lab.sshd_pids)} sshd processes, port {lab.port}), concurrency {CONCURRENCY},"
        f" {os.cpu_count()} CPUs ({layout}), ~/.bashrc of commands over SSH:"
        f" {'read' if args.login_rc else 'skipped'}, {sys.executable}"
    )
    if args.json:
        report: dict[str, Any] = {
            "setup": setup,
            "hosts": len(lab.hosts),
            "commands": COMMANDS,
            "floor_command": FLOOR_COMMAND,
            "cpus": os.cpu_count(),
            "split_cores": args.split_cores,
            "login_rc": args.login_rc,
            "results": [
                {
                    "name": p.name,
                    "what": p.label,
                    "runs": len(p.samples_s),
                    **spread(p.samples_s),
                    "x_floor": round(p.median / floor.median, 2),
                    "opskit_speedup": round(p.median / opskit.median, 2),
                    "samples_s": [round(s, 3) for s in p.samples_s],
                    "client_cpu_s": [round(s, 2) for s in p.client_cpu_s],
                    "machine_cpu_s": [round(s, 2) for s in p.machine_cpu_s],
                    "ssh_logins_per_host": [
                        {str(n): hosts for n, hosts in run.items()} for run in p.logins
                    ],
                }
                for p in peers
            ],
            "verdicts": found,
            "pass": passed,
        }
        if profile is not None:
            report["profile"] = profile_json(profile, args.top)
        print(json.dumps(report, indent=2))
    else:
        print(setup)
        print_peers(peers, by)
        for p in peers:
            shown = "; ".join(
                ", ".join(f"{hosts} hosts x {n}" for n, hosts in run.items()) for run in p.logins
            )
            print(f"SSH logins per host, each run (sshd's log): {p.name}: {shown}")
        if profile is not None:
            print_profile_report(f"run {RUNBOOK} --yes", profile, args.top)
    print_ratio_verdicts(found, args.json)
    if not args.json:
        print(
            f"(reference) opskit over floor/10, the same commands in one script a host:"
            f" {opskit.median / floor10.median:.2f}x; floor/10 over the floor:"
            f" {floor10.median / floor.median:.2f}x"
        )
        print(
            f"(reference) opskit less its own start-up (opskit/dry: {dry.median:.2f} s), over"
            f" floor/10: {(opskit.median - dry.median) / floor10.median:.2f}x"
        )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
