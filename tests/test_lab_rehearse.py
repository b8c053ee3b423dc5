"""The lab rehearses maintenance as it happens: a guest's power drives its host, snapshots and
rollbacks act on the host's layer, apt upgrades for real from the lab's mirror, and every
service of the inventory answers its health check.

All through the real `opskit` (and OpenSSH from the lab's controller, host keys pinned), as
root, in labs of their own. Proxmox is told what to do only by shipped or written runbooks, or
(for what opskit has no step for: a snapshot with RAM) by its API from inside the lab.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from labkit import REPO as REPO_ROOT
from labkit import Lab, lab_up
from opskit.lab.power import alive

pytestmark = pytest.mark.integration

ARCH = subprocess.run(
    ["dpkg", "--print-architecture"], capture_output=True, text=True
).stdout.strip()
UNIT = "opskit-lab-moltbot"  # a unit the lab enables on the ai host (its MoltBot stand-in)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from lab_up(tmp_path_factory.mktemp("rehearse"), suffix="h")


def run(lab: Lab, *args: str) -> tuple[int, str]:
    done = lab.opskit(*args)
    return done.returncode, done.stdout + done.stderr


def on(lab: Lab, host: str, command: str) -> str:
    """`command` over SSH on `host`; its output (it must succeed)."""
    done = lab.ssh(host, command)
    assert done.returncode == 0, (command, done.stdout, done.stderr)
    return done.stdout


def boot_id(lab: Lab, host: str) -> str:
    return on(lab, host, "cat /proc/sys/kernel/random/boot_id").strip()


def power(lab: Lab, action: str, *extra: str) -> tuple[int, str]:
    return run(
        lab,
        "run",
        "vm-power",
        "-p",
        f"action={action}",
        *extra,
        "--limit",
        "vm:110",
        "--lab",
        "--yes",
    )


def guest_status(lab: Lab, vmid: int = 110) -> str:
    """What Proxmox says, asked as a lab host asks it (curl, the lab's API token)."""
    return str(pve(lab, "GET", f"/nodes/pve/qemu/{vmid}/status/current")["status"])


def pve(lab: Lab, method: str, path: str, **params: str) -> object:
    token = (lab.root / "secrets" / "proxmox-token").read_text().strip()
    address = lab.address("pve")
    command = [
        "curl",
        "-sS",
        "--fail-with-body",
        "--cacert",
        str(lab.root / "pve" / "pve.crt"),
        "-X",
        method,
        "-H",
        f"Authorization: PVEAPIToken=root@pam!opskit={token}",
        *(arg for key, value in params.items() for arg in ("-d", f"{key}={value}")),
        f"https://{address}:8006/api2/json{path}",
    ]
    done = lab.inside(*command)
    assert done.returncode == 0, (path, done.stdout, done.stderr)
    return json.loads(done.stdout)["data"]


def wait_task(lab: Lab, upid: str) -> dict[str, object]:
    deadline = time.monotonic() + 30
    while True:
        task = pve(lab, "GET", f"/nodes/pve/tasks/{upid}/status")
        assert isinstance(task, dict)
        if task["status"] == "stopped":
            return task
        assert time.monotonic() < deadline, task
        time.sleep(0.1)


def wait_active(lab: Lab, host: str, unit: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while lab.ssh(host, f"systemctl is-active --quiet {unit}").returncode != 0:
        assert time.monotonic() < deadline, f"{unit} is not active on {host}"
        time.sleep(0.2)


def host_processes(lab: Lab, host: str) -> list[int]:
    """Every process in the host's PID namespace (found from outside it)."""
    pid = int((lab.root / "hosts" / host / "pid").read_text())
    first = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    namespace = os.readlink(f"/proc/{first[0]}/ns/pid")
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "ns" / "pid") == namespace:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def write_runbook(lab: Lab, text: str) -> Path:
    directory = lab.root.parent / "runbooks"
    directory.mkdir(exist_ok=True)
    name = text.split("name:", 1)[1].split()[0]
    (directory / f"{name}.yaml").write_text(textwrap.dedent(text).lstrip("\n"))
    return directory


# ----- power ------------------------------------------------------------------------------


def test_shutdown_ends_the_host_and_start_boots_it(lab: Lab) -> None:
    ssh = f"{lab.address('ai')}:22"
    moltbot = f"{lab.address('ai')}:18789"
    wait_active(lab, "ai", UNIT)
    first = boot_id(lab, "ai")
    on(lab, "ai", "touch /run/was-here /tmp/was-here")
    processes = host_processes(lab, "ai")
    assert len(processes) >= 3, processes  # sshd, the stand-ins and their supervisors

    code, text = power(lab, "shutdown")
    assert code == 0, text
    assert "vm 110 (ai) is stopped" in text
    # Powered off: nothing of the host runs, SSH is refused, its services do not answer.
    assert not any(alive(p) for p in processes)
    assert lab.answers(ssh, moltbot) == {ssh: False, moltbot: False}
    refused = lab.ssh("ai", "true")
    assert refused.returncode == 255 and "Connection refused" in refused.stderr
    # A guest Proxmox turned off is no fault of the lab's.
    status = json.loads(lab.opskit("lab", "status", "--json").stdout)
    ai = next(h for h in status["hosts"] if h["name"] == "ai")
    assert status["up"] and ai["power"] == "off" and not ai["ssh"], status
    assert "already up" in lab.opskit("lab", "up").stdout

    code, text = power(lab, "start")
    assert code == 0, text
    lab.wait_for_ssh("ai")
    # A new boot: another boot ID, empty /run and /tmp, the enabled unit running again.
    assert boot_id(lab, "ai") != first
    assert on(lab, "ai", "ls -A /run/was-here /tmp/was-here 2>&1 || true").count("No such") == 2
    wait_active(lab, "ai", UNIT)
    assert lab.answers(moltbot) == {moltbot: True}


def test_reboot_gives_a_new_boot_with_the_units_running_again(lab: Lab) -> None:
    lab.wait_for_ssh("ai")
    wait_active(lab, "ai", UNIT)
    before = boot_id(lab, "ai")
    on(lab, "ai", "touch /var/run/reboot-required")  # /var/run is /run
    old = host_processes(lab, "ai")
    code, text = power(lab, "reboot")
    assert code == 0, text
    assert "vm 110 (ai) is running" in text
    assert not any(alive(p) for p in old)
    lab.wait_for_ssh("ai")
    assert boot_id(lab, "ai") != before
    assert on(lab, "ai", "test -e /var/run/reboot-required && echo still || echo gone") == "gone\n"
    wait_active(lab, "ai", UNIT)
    assert on(lab, "ai", "ls /run").split() == ["opskit-systemctl", "sshd", "sshd.pid"]
    # The boot ID is the host's own: the machine's is another, and another host's too.
    machine = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert len({boot_id(lab, "ai"), boot_id(lab, "dev"), machine}) == 3


def test_a_shutdown_that_times_out_leaves_the_host_running(lab: Lab) -> None:
    # The lab's guests take 40 PVE seconds to power off; a 1 s timeout ends the task first.
    lab.wait_for_ssh("ai")
    before = boot_id(lab, "ai")
    code, text = power(lab, "shutdown", "-p", "timeout=1s")
    assert code == 1, text
    assert "got timeout" in text
    assert guest_status(lab) == "running"
    assert boot_id(lab, "ai") == before  # the same boot: nothing was stopped


# ----- snapshots --------------------------------------------------------------------------


SNAPSHOT_RUNBOOK = """
    name: snap
    description: a snapshot, a rollback and a delete of vm 110
    targets: vm:110
    params:
      action: {type: str, choices: [snapshot, rollback, delete]}
      start: {type: bool, default: false}
    steps:
      - id: take
        when: "params.action == 'snapshot'"
        proxmox.vm.snapshot: {name: prepatch}
      - id: back
        when: "params.action == 'rollback'"
        proxmox.vm.rollback: {name: prepatch, start: "{{ params.start }}"}
      - id: forget
        when: "params.action == 'delete'"
        proxmox.vm.delete_snapshot: {name: prepatch}
"""

STATE = "cat /etc/opskit-lab-note; ls /opt; test -e /etc/hostname && echo hostname-there; true"


def test_a_rollback_restores_the_host_as_it_was_at_the_snapshot(lab: Lab) -> None:
    runbooks = write_runbook(lab, SNAPSHOT_RUNBOOK)
    snap = ["--runbooks", str(runbooks), "run", "snap", "--lab", "--yes"]
    lab.wait_for_ssh("ai")
    on(lab, "ai", "echo before > /etc/opskit-lab-note")
    as_it_was = on(lab, "ai", STATE)
    assert "before" in as_it_was and "hostname-there" in as_it_was

    code, text = run(lab, *snap, "-p", "action=snapshot")
    assert code == 0, text
    copy = lab.root / "hosts" / "ai" / "snapshots" / "prepatch" / "upper"
    assert (copy / "etc" / "opskit-lab-note").read_text() == "before\n"
    # What a patch does: a file changed, one added, one deleted (a whiteout in the layer).
    on(lab, "ai", "echo after > /etc/opskit-lab-note && mkdir /opt/patched && rm /etc/hostname")
    assert on(lab, "ai", STATE) != as_it_was

    # As PVE does: the running guest is stopped, rolled back, and stays stopped.
    code, text = run(lab, *snap, "-p", "action=rollback")
    assert code == 0, text
    assert guest_status(lab) == "stopped"
    assert lab.ssh("ai", "true").returncode == 255
    code, text = power(lab, "start")
    assert code == 0, text
    lab.wait_for_ssh("ai")
    assert on(lab, "ai", STATE) == as_it_was

    # With start: true the guest comes back by itself, rolled back again.
    on(lab, "ai", "echo again > /etc/opskit-lab-note")
    code, text = run(lab, *snap, "-p", "action=rollback", "-p", "start=true")
    assert code == 0, text
    assert guest_status(lab) == "running"
    lab.wait_for_ssh("ai")
    assert on(lab, "ai", STATE) == as_it_was
    wait_active(lab, "ai", UNIT)

    code, text = run(lab, *snap, "-p", "action=delete")
    assert code == 0, text
    assert not copy.parent.exists()


def test_a_rollback_to_a_snapshot_with_ram_starts_the_guest(lab: Lab) -> None:
    """PVE's API: "VMs will be automatically started if the snapshot includes RAM". The lab
    cannot restore memory: the guest boots afresh from the restored layer."""
    lab.wait_for_ssh("docker")
    on(lab, "docker", "echo with-ram > /etc/opskit-lab-note")
    before = boot_id(lab, "docker")
    upid = pve(lab, "POST", "/nodes/pve/qemu/100/snapshot", snapname="ram", vmstate="1")
    assert wait_task(lab, str(upid))["exitstatus"] == "OK"
    on(lab, "docker", "echo later > /etc/opskit-lab-note")
    upid = pve(lab, "POST", "/nodes/pve/qemu/100/snapshot/ram/rollback")
    assert wait_task(lab, str(upid))["exitstatus"] == "OK"
    assert guest_status(lab, 100) == "running"
    lab.wait_for_ssh("docker")
    assert on(lab, "docker", "cat /etc/opskit-lab-note") == "with-ram\n"
    assert boot_id(lab, "docker") != before


def test_a_containers_rollback_ends_stopped(lab: Lab) -> None:
    lab.wait_for_ssh("dev")
    on(lab, "dev", "echo at-snapshot > /etc/opskit-lab-note")
    upid = pve(lab, "POST", "/nodes/pve/lxc/111/snapshot", snapname="plain")
    assert wait_task(lab, str(upid))["exitstatus"] == "OK"
    on(lab, "dev", "echo later > /etc/opskit-lab-note")
    upid = pve(lab, "POST", "/nodes/pve/lxc/111/snapshot/plain/rollback")
    assert wait_task(lab, str(upid))["exitstatus"] == "OK"
    current = pve(lab, "GET", "/nodes/pve/lxc/111/status/current")
    assert isinstance(current, dict) and current["status"] == "stopped"
    assert lab.ssh("dev", "true").returncode == 255
    upid = pve(lab, "POST", "/nodes/pve/lxc/111/status/start")
    assert wait_task(lab, str(upid))["exitstatus"] == "OK"
    lab.wait_for_ssh("dev")
    assert on(lab, "dev", "cat /etc/opskit-lab-note") == "at-snapshot\n"


# ----- apt --------------------------------------------------------------------------------


MACHINE_APT = (
    "/var/lib/dpkg",
    "/var/lib/apt",
    "/var/cache/apt",
    "/etc/apt",
    "/var/log/apt",
    "/usr/share/opskit-lab-demo",
    "/usr/share/opskit-lab-broken",
)
MACHINE_FILES = ("/var/log/dpkg.log", "/run/reboot-required", "/run/reboot-required.pkgs")


def machine_apt_state() -> str:
    """Names, modes, sizes, times and contents of the machine's dpkg and apt state."""
    digest = hashlib.sha256()
    paths: list[str] = list(MACHINE_FILES)
    for root in MACHINE_APT:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            paths += [dirpath, *(os.path.join(dirpath, n) for n in sorted(filenames))]
    for path in paths:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            digest.update(f"{path}:absent".encode())
            continue
        digest.update(f"{path}:{st.st_mode}:{st.st_size}:{st.st_mtime_ns}".encode())
        if os.path.isfile(path) and not os.path.islink(path) and st.st_size < 4 << 20:
            digest.update(Path(path).read_bytes())
    return digest.hexdigest()


UPGRADE = "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get -y -q upgrade"
VERSIONS = "dpkg-query -W -f '${Package} ${Version} ${Status}\\n' 'opskit-lab-*'"


def test_apt_upgrades_for_real_from_the_labs_own_repository(lab: Lab) -> None:
    before = machine_apt_state()
    lab.wait_for_ssh("media")
    # Only the lab's repository, unsigned and trusted; nothing of the machine's sources.
    sources = on(lab, "media", "grep -rh '^deb' /etc/apt/sources.list /etc/apt/sources.list.d")
    controller = lab.state["controller"]
    assert sources == f"deb [trusted=yes arch={ARCH}] http://{controller}:8088/apt media main\n"
    assert on(lab, "media", "ls -A /etc/apt/sources.list.d /var/lib/apt/lists").split() == [
        "/etc/apt/sources.list.d:",
        "/var/lib/apt/lists:",
        "partial",
    ]
    assert on(lab, "media", VERSIONS).splitlines() == [
        "opskit-lab-broken 1.0 install ok installed",
        "opskit-lab-demo 1.0 install ok installed",
    ]
    assert on(lab, "media", "test -e /var/run/reboot-required || echo none") == "none\n"

    upgraded = on(lab, "media", UPGRADE)
    assert "Unpacking opskit-lab-demo (1.1) over (1.0)" in upgraded, upgraded
    assert "1 upgraded, 0 newly installed" in upgraded, upgraded
    assert on(lab, "media", VERSIONS).splitlines() == [
        "opskit-lab-broken 1.0 install ok installed",
        "opskit-lab-demo 1.1 install ok installed",
    ]
    assert on(lab, "media", "cat /usr/share/opskit-lab-demo/version") == "1.1\n"
    assert on(lab, "media", "cat /var/run/reboot-required.pkgs") == "opskit-lab-demo\n"
    again = on(lab, "media", UPGRADE)
    assert "0 upgraded, 0 newly installed" in again, again

    # The failing package, offered to one host only: its patch fails, the others' does not.
    offered = lab.opskit("lab", "packages", "homeassistant", "--offer", "broken")
    assert offered.returncode == 0, offered.stderr
    assert "homeassistant    broken" in offered.stdout
    listing = json.loads(lab.opskit("lab", "packages", "--json").stdout)
    assert listing["homeassistant"] == "broken" and listing["media"] == "upgrade", listing
    failed = lab.ssh("homeassistant", UPGRADE)
    assert failed.returncode == 100, failed.stdout + failed.stderr
    assert "configuring fails on purpose" in failed.stdout + failed.stderr
    assert "opskit-lab-broken 1.1 install ok half-configured" in on(lab, "homeassistant", VERSIONS)
    fine = on(lab, "pve", UPGRADE)
    assert "opskit-lab-broken" not in fine.split("The following packages will be upgraded:")[-1]
    assert on(lab, "pve", VERSIONS).splitlines()[0] == "opskit-lab-broken 1.0 install ok installed"
    # Offered nothing newer, a host plans no upgrade.
    assert lab.opskit("lab", "packages", "workstation", "--offer", "none").returncode == 0
    assert "0 upgraded" in on(lab, "workstation", UPGRADE)
    refused = lab.opskit("lab", "packages", "nowhere", "--offer", "none")
    assert refused.returncode == 2 and "no host 'nowhere'" in refused.stderr
    assert "Traceback" not in refused.stderr

    # None of it reached the machine: its dpkg and apt state, byte for byte, and its /run.
    assert machine_apt_state() == before


def test_a_rollback_undoes_an_upgrade(lab: Lab) -> None:
    """The patch rehearsed whole on one guest: snapshot, upgrade, roll back, the old version."""
    runbooks = write_runbook(lab, SNAPSHOT_RUNBOOK)
    snap = ["--runbooks", str(runbooks), "run", "snap", "--lab", "--yes"]
    lab.wait_for_ssh("ai")
    assert "opskit-lab-demo 1.0" in on(lab, "ai", VERSIONS)
    code, text = run(lab, *snap, "-p", "action=snapshot")
    assert code == 0, text
    on(lab, "ai", UPGRADE)
    assert "opskit-lab-demo 1.1" in on(lab, "ai", VERSIONS)
    code, text = run(lab, *snap, "-p", "action=rollback", "-p", "start=true")
    assert code == 0, text
    lab.wait_for_ssh("ai")
    assert "opskit-lab-demo 1.0 install ok installed" in on(lab, "ai", VERSIONS)
    assert on(lab, "ai", "cat /usr/share/opskit-lab-demo/version") == "1.0\n"
    code, text = run(lab, *snap, "-p", "action=delete")
    assert code == 0, text


# ----- health -----------------------------------------------------------------------------


def test_every_health_check_of_the_inventory_passes(lab: Lab) -> None:
    # What the lab does not run itself, the shipped runbooks deploy: the Beszel agents and
    # ProxmoxMCP-Plus. Everything else is there after `lab up`.
    for runbook in ("install-beszel-agents", "deploy-proxmoxmcp"):
        code, text = run(lab, "run", runbook, "--lab", "--yes")
        assert code == 0, text
    code, text = run(lab, "run", "health", "--lab")
    assert code == 0, text
    from opskit.loader import load_inventory

    inventory, _ = load_inventory(lab.root / "inventory.yaml")
    expected = {
        (h.name, name) for h in inventory.all_hosts() for name, s in h.services.items() if s.health
    }
    passed = set()
    for line in text.splitlines():
        if "]: ok " in line and line.startswith("["):
            host = line[1:].split("]", 1)[0]
            service = line.split("[", 2)[2].split("]", 1)[0]
            passed.add((host, service))
    assert passed == expected and len(expected) == 14, sorted(expected - passed)
    assert "0 failed" in text


def test_the_mcp_servers_speak_mcp(lab: Lab) -> None:
    """A client of the official SDK: initialize, list the tools, call one."""
    script = textwrap.dedent("""
        import asyncio, sys
        from mcp import ClientSession
        from mcp.client.streamable_http import streamablehttp_client

        async def main(url):
            async with streamablehttp_client(url) as (read, write, _):
                async with ClientSession(read, write) as session:
                    info = await session.initialize()
                    tools = await session.list_tools()
                    called = await session.call_tool("whoami", {})
                    print(info.serverInfo.name, sorted(t.name for t in tools.tools),
                          called.content[0].text, sep="|")

        asyncio.run(main(sys.argv[1]))
    """)
    answers = {}
    for port in (8000, 8001):
        done = lab.inside(sys.executable, "-c", script, f"http://{lab.address('ai')}:{port}/mcp")
        assert done.returncode == 0, done.stderr
        answers[port] = done.stdout.strip().split("|")
    assert answers[8000] == [
        "Homelab-MCP",
        "['homelab_hosts', 'whoami']",
        "Homelab-MCP on ai (opskit lab)",
    ]
    assert answers[8001] == [
        "SSH Orchestrator",
        "['ssh_targets', 'whoami']",
        "SSH Orchestrator on ai (opskit lab)",
    ]


# ----- status (with every service deployed by the health test above) ---------------------


STATUS_SCHEMA = json.loads(
    (REPO_ROOT / "src" / "opskit" / "status" / "status.schema.json").read_text()
)


def status_json(lab: Lab, *args: str) -> tuple[int, dict[str, object], float]:
    import jsonschema

    started = time.monotonic()
    done = lab.opskit("status", "--lab", "--json", *args)
    took = time.monotonic() - started
    assert done.stdout, done.stderr
    data = json.loads(done.stdout)
    jsonschema.Draft202012Validator(STATUS_SCHEMA).validate(data)
    return done.returncode, data, took


def test_status_shows_the_lab_and_marks_exactly_the_host_that_stopped_answering(
    lab: Lab,
) -> None:
    from opskit.lab.power import children, current_pid
    from opskit.loader import load_inventory

    inventory, _ = load_inventory(lab.root / "inventory.yaml")
    code, data, took = status_json(lab)
    assert code == 0, data
    hosts = {h["name"]: h for h in data["hosts"]}  # type: ignore[attr-defined]
    assert list(hosts) == [h.name for h in inventory.all_hosts()]
    for host in inventory.all_hosts():
        shown = hosts[host.name]
        assert shown["state"] == "ok", shown
        assert {s["name"] for s in shown["services"]} == set(host.services)
        if host.name != "workstation":
            assert shown["figures"]["power"]["value"] == "running"
            assert shown["figures"]["power"]["source"].startswith("proxmox pve")
    tools = {s["name"]: s["tool_count"] for s in hosts["ai"]["services"]}
    assert tools["proxmoxmcp"] == 65  # the OpenAPI proxy's tool paths
    assert tools["homelab-mcp"] == tools["ssh-orchestrator"] == 2
    assert hosts["dev"]["beszel"]["value"] == "registered"  # a bare PocketBase: no status
    assert {r["runbook"] for r in hosts["ai"]["runs"]} >= {"deploy-proxmoxmcp", "health"}
    print(f"opskit status --lab: {took:.2f}s wall")

    # dev stops answering: its sshd stopped (SIGSTOP: connections open, nothing answers),
    # its agent stopped
    on(lab, "dev", "systemctl stop beszel-agent")
    host = current_pid(lab.root, "dev")
    assert host is not None
    sshd = children(host)[0]
    os.kill(sshd, signal.SIGSTOP)
    try:
        code, data, took = status_json(lab, "--timeout", "2s")
    finally:
        os.kill(sshd, signal.SIGCONT)
    assert code == 1
    states = {h["name"]: h["state"] for h in data["hosts"]}  # type: ignore[attr-defined]
    assert [n for n, state in states.items() if state != "ok"] == ["dev"], states
    dev = next(h for h in data["hosts"] if h["name"] == "dev")  # type: ignore[attr-defined]
    assert [p.split(":")[0] for p in dev["problems"]] == ["ssh", "beszel-agent"], dev
    print(f"opskit status --lab --timeout 2s, dev not answering: {took:.2f}s wall")

    # dev's host dies under Proxmox's feet (its processes killed, the guest still "running"):
    # the lab calls itself broken, and status still answers, naming dev alone
    os.kill(host, signal.SIGKILL)
    code, data, took = status_json(lab, "--timeout", "2s")
    assert code == 1
    states = {h["name"]: h["state"] for h in data["hosts"]}  # type: ignore[attr-defined]
    assert [n for n, state in states.items() if state != "ok"] == ["dev"], states
    dev = next(h for h in data["hosts"] if h["name"] == "dev")  # type: ignore[attr-defined]
    assert "connection refused" in dev["ssh"]["error"], dev
    assert dev["figures"]["power"]["value"] == "running"  # what Proxmox believes
    # booted again as the lab's Proxmox boots a guest (every other command refuses a broken lab)
    from opskit.lab.power import boot

    netns = next(h["netns"] for h in lab.state["hosts"] if h["name"] == "dev")  # type: ignore[attr-defined]
    boot(lab.root, "dev", str(netns))
    lab.wait_for_ssh("dev")


def test_the_status_page_in_a_browser(lab: Lab, tmp_path: Path) -> None:
    """Debian's headless Chromium, driven by Playwright inside the lab's controller: the page
    shows every lab host and the last run. It is served on this machine's loopback too, where
    the operator's browser is (the command line bound it before entering the lab)."""
    from opskit.loader import load_inventory

    inventory, _ = load_inventory(lab.root / "inventory.yaml")
    last = json.loads(lab.opskit("history", "--lab", "--json").stdout)[0]["id"]
    with socket.create_server(("127.0.0.1", 0)) as free:
        port = free.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    server = subprocess.Popen(
        [sys.executable, "-m", "opskit", "status", "--lab", "--serve", f"127.0.0.1:{port}"],
        cwd=REPO_ROOT,
        env=lab.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert server.stdout is not None
        said = server.stdout.readline()  # printed once it listens
        assert f"serving {url} on this machine and inside the lab" in said, said
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with direct.open(url + "status.json", timeout=30) as answer:  # from this machine's side
            outside = json.loads(answer.read())
        assert outside["lab"] == lab.name
        assert [h["name"] for h in outside["hosts"]] == [h.name for h in inventory.all_hosts()]
        shot = tmp_path / "status-page.png"
        for _ in range(50):  # the port, then the page
            done = lab.inside(
                sys.executable,
                str(REPO_ROOT / "tests" / "status_browser.py"),
                url,
                str(shot),
                timeout=120,
            )
            if done.returncode == 0 or "ERR_CONNECTION_REFUSED" not in done.stderr:
                break
            time.sleep(0.1)
        assert done.returncode == 0, done.stderr
    finally:
        server.terminate()
        server.wait(20)
    seen = json.loads(done.stdout)
    assert [h for h, _ in seen["hosts"]] == [h.name for h in inventory.all_hosts()]
    assert last in seen["runs"], (last, seen["runs"])
    assert seen["title"] == f"opskit status (lab {lab.name})"
    assert "proxmoxmcp|ProxmoxMCP 1.30.0: 65 tools" in seen["details"], seen["details"]
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("OPSKIT_STATUS_SCREENSHOT")  # docs/status-page.png, by hand
    if keep:
        Path(keep).write_bytes(shot.read_bytes())


# ----- down -------------------------------------------------------------------------------


def test_down_removes_hosts_that_rebooted_and_their_snapshots(tmp_path: Path) -> None:
    for lab in lab_up(tmp_path, suffix="x"):
        runbooks = write_runbook(lab, SNAPSHOT_RUNBOOK)
        code, text = run(
            lab,
            "--runbooks",
            str(runbooks),
            "run",
            "snap",
            "-p",
            "action=snapshot",
            "--lab",
            "--yes",
        )
        assert code == 0, text
        code, text = power(lab, "reboot")
        assert code == 0, text
        lab.wait_for_ssh("ai")
        pids = [int((lab.root / "hosts" / h / "pid").read_text()) for h in ("ai", "dev")]
        rebooted = host_processes(lab, "ai")
        code, text = power(lab, "shutdown")
        assert code == 0, text
        down = lab.opskit("lab", "down")
        assert down.returncode == 0, down.stderr
        assert not any(alive(p) for p in [*pids, *rebooted])
        assert not lab.root.exists()
        leftovers = [p for p in Path("/proc").glob("[0-9]*") if str(lab.root) in _cmdline(p)]
        assert leftovers == []
        mounts = Path("/proc/self/mountinfo").read_text()
        assert str(lab.root) not in mounts


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
