"""The lab end to end: namespaces, overlays, sshd per host, fakepve, safety, clean removal.

Everything runs through the real `opskit` command in subprocesses, as root, in a lab named for
this test process. The machine's network and files are compared before, during and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from labkit import REPO, Lab, lab_up, make_lab, require_root
from opskit.lab.core import alive

pytestmark = pytest.mark.integration

HOSTS = ["docker", "homeassistant", "media", "ai", "dev", "pve", "workstation"]


def machine_network() -> str:
    """The machine's own links, addresses and routes (brief forms: no counters or lifetimes)."""
    parts = []
    for args in (
        ["-br", "link"],
        ["-br", "addr"],
        ["route", "show", "table", "all"],
        ["-6", "route", "show", "table", "all"],
        ["rule"],
    ):
        parts.append(subprocess.run(["ip", *args], capture_output=True, text=True).stdout)
    return "\n".join(parts)


def tree_digest(*roots: str) -> str:
    """Names, modes, sizes and mtimes of everything under roots (what a lab host must not touch)."""
    digest = hashlib.sha256()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in [*sorted(filenames), ""]:
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                    digest.update(f"{path}:{st.st_mode}:{st.st_size}:{st.st_mtime_ns}".encode())
                except OSError:
                    continue
    return digest.hexdigest()


@pytest.fixture(scope="module")
def network_before() -> str:
    return machine_network()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, network_before: str) -> Iterator[Lab]:
    yield from lab_up(tmp_path_factory.mktemp("lab"))


def write_runbook(lab: Lab, name: str, text: str) -> Path:
    directory = lab.root.parent / "runbooks"
    directory.mkdir(exist_ok=True)
    (directory / f"{name}.yaml").write_text(textwrap.dedent(text).lstrip("\n"))
    return directory


def test_up_builds_every_host_and_leaves_the_machine_network_alone(
    lab: Lab, network_before: str
) -> None:
    assert machine_network() == network_before
    state = lab.state
    assert [h["name"] for h in state["hosts"]] == HOSTS  # type: ignore[union-attr]
    # Every host answers SSH on its own address; fakepve and the mirror answer too.
    endpoints = [f"{lab.address(h)}:22" for h in HOSTS]
    services = {s["name"]: f"{s['address']}:{s['port']}" for s in state["services"]}  # type: ignore[union-attr]
    assert lab.answers(*endpoints, *services.values()) == dict.fromkeys(
        [*endpoints, *services.values()], True
    )
    # The machine has no route of its own to the lab (asked of the kernel: nothing is sent).
    route = subprocess.run(
        ["ip", "route", "get", lab.address("ai")], capture_output=True, text=True
    ).stdout
    assert "olab" not in route and f"{lab.name}-" not in route and " dev p" not in route
    status = lab.opskit("lab", "status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["up"] and all(h["ssh"] for h in report["hosts"])


def test_up_twice_is_harmless(lab: Lab) -> None:
    pids = [h["pid"] for h in lab.state["hosts"]]  # type: ignore[union-attr]
    again = lab.opskit("lab", "up")
    assert again.returncode == 0, again.stderr
    assert "already up" in again.stdout
    assert [h["pid"] for h in lab.state["hosts"]] == pids  # type: ignore[union-attr]


def test_each_host_answers_ssh_with_its_pinned_key(lab: Lab) -> None:
    runbooks = write_runbook(
        lab,
        "reach",
        """
        name: reach
        description: every lab host over SSH, keys pinned by the lab inventory
        targets: all
        steps:
          - id: ssh
            check.ssh: {}
          - id: whoami
            check.command: {cmd: "hostname", contains: "{{ target.name }}"}
    """,
    )
    done = lab.opskit("--runbooks", str(runbooks), "run", "reach", "--lab", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ssh ok: Linux") == len(HOSTS) and "0 failed" in done.stdout
    # A wrong pinned key is refused, naming the host: pin docker's key on ai.
    inventory = (lab.root / "inventory.yaml").read_text()
    keys = {h["name"]: h["host_key"] for h in lab.state["hosts"]}  # type: ignore[union-attr]
    tampered = lab.root.parent / "tampered.yaml"
    tampered.write_text(inventory.replace(keys["ai"], keys["docker"]))
    refused = lab.opskit(
        "--inventory",
        str(tampered),
        "--runbooks",
        str(runbooks),
        "run",
        "reach",
        "--lab",
        "--yes",
        "--limit",
        "ai",
    )
    assert refused.returncode == 1
    assert "ai" in refused.stdout + refused.stderr
    assert "host key" in (refused.stdout + refused.stderr).lower()


def test_changes_inside_hosts_never_reach_the_machine(lab: Lab) -> None:
    before = tree_digest("/opt", "/etc/systemd/system")
    passwd = Path("/etc/passwd").read_bytes()
    runbooks = write_runbook(
        lab,
        "scribble",
        """
        name: scribble
        description: what a deploy does to a host
        targets: ai
        steps:
          - id: user
            ssh.run: {cmd: "useradd --system --no-create-home labsvc"}
          - id: files
            ssh.run:
              cmd: >-
                mkdir -p /opt/labsvc && echo lab > /opt/labsvc/marker &&
                printf '[Service]\\nExecStart=/bin/true\\n' > /etc/systemd/system/labsvc.service
          - id: seen
            check.command: {cmd: "id labsvc && cat /opt/labsvc/marker", contains: "lab"}
    """,
    )
    done = lab.opskit("--runbooks", str(runbooks), "run", "scribble", "--lab", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert Path("/etc/passwd").read_bytes() == passwd
    assert tree_digest("/opt", "/etc/systemd/system") == before
    upper = lab.root / "hosts" / "ai" / "upper"
    assert (upper / "opt" / "labsvc" / "marker").read_text() == "lab\n"
    assert "labsvc" in (upper / "etc" / "passwd").read_text()
    assert (upper / "etc" / "systemd" / "system" / "labsvc.service").exists()
    # Another host does not see it: each host has its own layers.
    other = lab.root / "hosts" / "dev" / "upper" / "opt" / "labsvc"
    assert not other.exists()


def test_two_hosts_listen_on_the_same_port(lab: Lab) -> None:
    runbooks = write_runbook(
        lab,
        "listen",
        """
        name: listen
        description: a listener on 45876 on two hosts at once
        targets: [docker, ai]
        steps:
          - id: serve
            ssh.run:
              cmd: >-
                setsid python3 -m http.server 45876 --bind {{ target.address }}
                </dev/null >/dev/null 2>&1 & sleep 0.5
    """,
    )
    done = lab.opskit("--runbooks", str(runbooks), "run", "listen", "--lab", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    both = [f"{lab.address('docker')}:45876", f"{lab.address('ai')}:45876"]
    assert lab.answers(*both) == dict.fromkeys(both, True)


def test_proxmox_is_fakepve_with_the_inventory_guests(lab: Lab) -> None:
    done = lab.opskit(
        "run", "vm-power", "--lab", "--yes", "-p", "action=reboot", "--limit", "vm:110"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "reboot vm 110 (ai)" in done.stdout
    assert "vm 110 (ai) is running on pve" in done.stdout
    # The certificate is pinned by fingerprint in the lab inventory, and the hosts trust it.
    inventory = (lab.root / "inventory.yaml").read_text()
    assert "fingerprint:" in inventory and "SIMULATION" in inventory.splitlines()[0]
    runbooks = write_runbook(
        lab,
        "trust",
        """
        name: trust
        description: a lab host verifies the lab's Proxmox certificate with its own CA store
        targets: ai
        steps:
          - id: tls
            check.command:
              cmd: >-
                curl -sS -o /dev/null -w '%{http_code}'
                https://{{ params.pve }}:8006/api2/json/version
              contains: "401"
        params:
          pve: {type: str}
    """,
    )
    done = lab.opskit(
        "--runbooks",
        str(runbooks),
        "run",
        "trust",
        "--lab",
        "--yes",
        "-p",
        f"pve={lab.address('pve')}",
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_tailscale_stand_in_describes_the_lab(lab: Lab) -> None:
    done = lab.inside(str(lab.root / "bin" / "tailscale"), "status", "--json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    from opskit.sync import peers

    found = {p.host: p for p in peers(status)}
    assert set(found) >= {"docker", "ai", "pve"}
    assert status["Peer"] and all(n["DNSName"].endswith(".") for n in status["Peer"].values())
    assert found["ai"].ips == [lab.address("ai")] and found["ai"].online
    # The lab's inventory agrees with its Proxmox and its tailnet: a sync changes nothing.
    synced = lab.opskit("inventory", "sync", "--lab", "--dry-run")
    assert synced.returncode == 0, synced.stderr
    assert "already in sync" in synced.stdout


def test_refuses_a_range_the_machine_routes(tmp_path: Path) -> None:
    require_root()
    lab = make_lab(tmp_path)
    lab.env["OPSKIT_LAB_NAME"] = lab.name + "r"
    done = lab.opskit("lab", "up", "--range", "192.0.2.0/24")
    assert done.returncode == 2
    assert "192.0.2.0/24" in done.stderr and "routes" in done.stderr
    small = lab.opskit("lab", "up", "--range", "198.51.100.0/28")
    assert small.returncode == 2 and "too small" in small.stderr, small.stderr
    assert "Traceback" not in small.stderr
    assert not (tmp_path / "lab").exists() or not any((tmp_path / "lab").iterdir())


def test_without_root_every_lab_command_says_so(tmp_path: Path) -> None:
    require_root()
    lab = make_lab(tmp_path)
    for args in (["lab", "up"], ["lab", "status"], ["lab", "down"], ["run", "vm-power", "--lab"]):
        done = subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                os.path.join(os.path.dirname(os.sys.executable), "opskit"),
                *args,
            ],
            capture_output=True,
            text=True,
            env={**lab.env, "HOME": "/tmp"},
            cwd=str(Path(__file__).resolve().parent.parent),
        )
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "needs root" in done.stderr and "Traceback" not in done.stderr


def test_down_leaves_nothing_and_up_again_works(tmp_path: Path) -> None:
    require_root()
    lab = make_lab(tmp_path)
    lab.env["OPSKIT_LAB_NAME"] = lab.name = lab.name + "d"
    network = machine_network()
    runbooks = write_runbook(
        lab,
        "hello",
        """
        name: hello
        description: one command on one host
        targets: ai
        steps:
          - id: hello
            ssh.run: {cmd: "echo hello from $(hostname)"}
    """,
    )
    runs = []
    # --lab after the command, or before it as a newcomer may type it
    for where in (["run", "hello", "--lab"], ["--lab", "run", "hello"]):  # up, down, up, down
        up = lab.opskit("lab", "up")
        assert up.returncode == 0, up.stdout + up.stderr
        done = lab.opskit("--runbooks", str(runbooks), *where, "--yes")
        assert done.returncode == 0, done.stdout + done.stderr
        # Where the logs are is said at the end; the record is kept outside the lab.
        log = re.search(r"^log: (\S+)", done.stdout, re.M)
        assert log and Path(log[1]).is_file() and lab.state_dir in Path(log[1]).parents
        runs.append(re.search(r"run (\S+) succeeded", done.stdout)[1])  # type: ignore[index]
        pids = [h["pid"] for h in lab.state["hosts"]] + [  # type: ignore[union-attr]
            s["pid"]
            for s in lab.state["services"]  # type: ignore[union-attr]
        ]
        down = lab.opskit("lab", "down")
        assert down.returncode == 0, down.stderr
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert f"{lab.name}-" not in netns
        assert not any(alive(pid) for pid in pids)
        assert not lab.root.exists()
        assert not Path(f"/etc/netns/{lab.name}-ctl").exists()
        mounts = [p.read_text() for p in Path("/proc").glob("[0-9]*/mountinfo") if _readable(p)]
        assert not any(str(lab.root) in m for m in mounts)
        assert machine_network() == network
        assert "kept the lab's runs" in down.stdout
    # The lab is down and its runs are still there, with --lab on every command that reads them.
    for history in (
        lab.opskit("history", "--lab", "--json"),
        lab.opskit("--lab", "history", "--json"),
    ):
        assert history.returncode == 0, history.stderr
        assert [r["id"] for r in json.loads(history.stdout)] == runs[::-1]
    shown = lab.opskit("show-run", runs[0], "--lab")
    assert shown.returncode == 0 and "hello" in shown.stdout, shown.stdout + shown.stderr
    locks = lab.opskit("unlock", "--lab", "--json")
    assert locks.returncode == 0 and {x["target"] for x in json.loads(locks.stdout)} == {"ai"}
    outside = lab.opskit("history")
    assert outside.returncode == 0 and "opskit history --lab" in outside.stdout


def _readable(path: Path) -> bool:
    try:
        path.read_text()
        return True
    except OSError:
        return False


def test_down_cleans_up_after_a_crash(tmp_path: Path) -> None:
    """The lab's record gone (a crash mid-`up`): `down` still finds and removes everything."""
    require_root()
    lab = make_lab(tmp_path)
    lab.env["OPSKIT_LAB_NAME"] = lab.name = lab.name + "c"
    up = lab.opskit("lab", "up")
    assert up.returncode == 0, up.stderr
    pids = [h["pid"] for h in lab.state["hosts"]]  # type: ignore[union-attr]
    (lab.root / "lab.json").unlink()
    down = lab.opskit("lab", "down")
    assert down.returncode == 0, down.stderr
    assert not any(alive(pid) for pid in pids)
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"{lab.name}-" not in netns


def test_sudo_with_a_password_for_a_user_who_is_not_root(lab: Lab) -> None:
    """The path root never takes: a login user whose sudo asks for a password."""
    password = "lab-sudo-Pa55-" + lab.name
    runbooks = write_runbook(
        lab,
        "mkuser",
        """
        name: mkuser
        description: a login user with a password and sudo rights that ask for it
        targets: dev
        secrets:
          password: env:OPS_PASSWORD
        steps:
          - id: user
            ssh.run:
              cmd: >-
                useradd --create-home --shell /bin/sh ops &&
                echo ops:{{ secrets.password }} | chpasswd &&
                echo 'ops ALL=(ALL) ALL' > /etc/sudoers.d/ops && chmod 0440 /etc/sudoers.d/ops
    """,
    )
    lab.env["OPS_PASSWORD"] = password
    done = lab.opskit("--runbooks", str(runbooks), "run", "mkuser", "--lab", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    from opskit.sync import round_trip_yaml

    yaml = round_trip_yaml()
    doc = yaml.load((lab.root / "inventory.yaml").read_text())
    dev = next(g for g in doc["guests"] if g["name"] == "dev")
    dev["ssh"].update({"user": "ops", "password": "env:OPS_PASSWORD"})
    as_ops = lab.root.parent / "as-ops.yaml"
    with as_ops.open("w") as out:
        yaml.dump(doc, out)
    write_runbook(
        lab,
        "become",
        """
        name: become
        description: sudo with a password, fed on stdin
        targets: dev
        secrets:
          sudo: env:OPS_PASSWORD
        steps:
          - id: who
            ssh.run: {cmd: "id -un > /tmp/who", become: true, become_password: "{{ secrets.sudo }}"}
          - id: login
            check.command: {cmd: "whoami", contains: "ops"}
          - id: root
            check.command: {cmd: 'test "$(stat -c %U /tmp/who):$(cat /tmp/who)" = root:root'}
    """,
    )
    try:
        ran = lab.opskit(
            "--inventory",
            str(as_ops),
            "--runbooks",
            str(runbooks),
            "run",
            "become",
            "--lab",
            "--yes",
            "--json",
        )
    finally:
        del lab.env["OPS_PASSWORD"]
    assert ran.returncode == 0, ran.stdout + ran.stderr
    done_event = json.loads(ran.stdout.splitlines()[-1])
    assert done_event["counts"] == {"succeeded": 3}, ran.stdout
    assert password not in ran.stdout + ran.stderr
    for path in (lab.root / "state").rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path


def test_a_unit_started_through_the_stand_in_is_a_live_process_that_stop_ends(lab: Lab) -> None:
    runbooks = write_runbook(
        lab,
        "unit",
        """
        name: unit
        description: a service through the lab's systemctl
        targets: dev
        params:
          action: {type: str, choices: [start, stop]}
        steps:
          - id: unit
            when: params.action == 'start'
            ssh.upload:
              dest: /etc/systemd/system/labweb.service
              content: |
                [Unit]
                Description=a web server in the lab
                [Service]
                Environment=GREETING=hello ADDR={{ target.address }}
                ExecStart=/bin/sh -c 'echo "$GREETING" > /tmp/greeting; exec python3 \\
                  -m http.server 8123 --bind "$ADDR"'
                User=nobody
                Restart=on-failure
                [Install]
                WantedBy=multi-user.target
          - id: act
            ssh.run: {cmd: "systemctl daemon-reload && systemctl {{ params.action }} labweb"}
          - id: state
            check.command:
              cmd: "systemctl is-active labweb || true"
              contains: "{{ 'active' if params.action == 'start' else 'inactive' }}"
          - id: environment
            when: params.action == 'start'
            check.command: {cmd: "sleep 1; cat /tmp/greeting", contains: hello}
    """,
    )
    endpoint = f"{lab.address('dev')}:8123"
    start = lab.opskit(
        "--runbooks", str(runbooks), "run", "unit", "--lab", "--yes", "-p", "action=start"
    )
    assert start.returncode == 0, start.stdout + start.stderr
    deadline = time.monotonic() + 15
    while not lab.answers(endpoint)[endpoint] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert lab.answers(endpoint) == {endpoint: True}
    # It runs as nobody, with its Environment=, inside the host (its /tmp is the host's own).
    procs = [
        p
        for p in Path("/proc").glob("[0-9]*")
        if _cmdline(p).endswith("--bind " + lab.address("dev"))
    ]
    assert procs and all(p.stat().st_uid == 65534 for p in procs)
    stop = lab.opskit(
        "--runbooks", str(runbooks), "run", "unit", "--lab", "--yes", "-p", "action=stop"
    )
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert lab.answers(endpoint) == {endpoint: False}
    assert not any(alive(int(p.name)) for p in procs)


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


# Runs opskit with every connect attempt of the process recorded and refused unless it goes to
# loopback or a Unix socket: a connect that would leave through the machine's default route
# never happens, even if opskit tried one (the test then sees it in the record and fails).
GUARDED_OPSKIT = """
import ipaddress, socket, sys
record = open(sys.argv.pop(1), "a")
def guard(event, args):
    if event != "socket.connect":
        return
    sock, address = args
    if sock.family == socket.AF_UNIX:
        return
    host = address[0]
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        record.write(f"{host}:{address[1]}\\n"); record.flush()
        raise PermissionError(f"test guard: connect to {host} refused")
sys.addaudithook(guard)
from opskit.cli import main
sys.argv[0] = "opskit"
main()
"""


def guarded(lab: Lab, record: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`opskit ARGS` in the machine's own namespace, every outbound connect watched."""
    return subprocess.run(
        [sys.executable, "-c", GUARDED_OPSKIT, str(record), *args],
        cwd=REPO,
        env=lab.env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_a_lab_plan_never_acts_outside_the_lab(lab: Lab) -> None:
    plan = lab.root.parent / "lab-plan.json"
    done = lab.opskit(
        "plan", "vm-power", "-p", "action=reboot", "--limit", "vm:110", "-o", str(plan), "--lab"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # The hint names the command that applies it: in this lab, --lab included.
    assert f"OPSKIT_LAB_NAME={lab.name} opskit apply {plan} --lab" in done.stdout
    saved = json.loads(plan.read_text())
    assert saved["lab"] == {"name": lab.name, "netns": lab.controller_ns}

    record = lab.root.parent / "connects.txt"
    record.write_text("")
    applied = guarded(lab, record, "apply", str(plan), "--yes")
    assert applied.returncode == 4, applied.stdout + applied.stderr
    assert f"made in lab {lab.name!r}" in applied.stderr
    assert f"opskit apply {plan} --lab" in applied.stderr
    assert "Traceback" not in applied.stderr
    # The lab's inventory itself, from outside the lab: refused before any connection.
    env_inventory = ["--inventory", str(lab.root / "inventory.yaml")]
    for command in (
        ["run", "vm-power", "-p", "action=reboot", "--limit", "vm:110", "--yes"],
        ["plan", "health"],
        ["inventory", "sync", "--dry-run"],
    ):
        refused = guarded(lab, record, *env_inventory, *command)
        assert refused.returncode == 2, (command, refused.stdout + refused.stderr)
        assert "not inside that lab" in refused.stderr, refused.stderr
    assert record.read_text() == "", "a connect attempt left the machine's namespace"

    # Inside the lab the same plan applies; a plan of the real homelab does not apply there.
    inside = lab.opskit("apply", str(plan), "--yes", "--lab")
    assert inside.returncode == 0, inside.stdout + inside.stderr
    real = lab.root.parent / "real-plan.json"
    made = guarded(
        lab,
        record,
        "--inventory",
        str(REPO / "inventory" / "homelab.yaml"),
        "plan",
        "health",
        "--limit",
        "vm:110",
        "-o",
        str(real),
    )
    assert made.returncode == 0, made.stdout + made.stderr
    assert "--lab" not in made.stdout
    wrong = lab.opskit("apply", str(real), "--yes", "--lab")
    assert wrong.returncode == 4, wrong.stdout + wrong.stderr
    assert "made outside the lab" in wrong.stderr
    assert record.read_text() == ""
