"""The Proxmox client and actions against fakepve (a faithful fake of the PVE API, from PyPI),
served by its pytest fixture on a loopback address; and the client against the API schema."""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import pve_schema
from opskit.clients.connections import Connections, Sent, Transports
from opskit.clients.proxmox import (
    ENDPOINTS,
    TICKET_RENEW,
    Credentials,
    ProxmoxClient,
    ProxmoxError,
    ProxmoxSession,
    TaskTimeout,
)
from opskit.clients.tls import fingerprint_of
from opskit.engine import session
from opskit.engine.session import Request
from opskit.errors import ReadOnlyRefused
from opskit.planner import ProbeSettings
from opskit.report.progress import Reporter
from opskit.store import Journal
from opskit.workspace import Workspace

TOKEN_ID = "root@pam!opskit"
TOKEN = "pve-token-" + os.urandom(6).hex()
PASSWORD = "secret"  # fakepve fixture's root@pam password


@pytest.fixture
def pve(fakepve):
    """fakepve with an API token and the homelab's guests, 110 (the AI VM) stopped."""
    fakepve.apitokens[TOKEN_ID] = TOKEN
    fakepve.add_vm(100, "docker", status="running")
    fakepve.add_vm(110, "ai", status="stopped", config={"agent": "1"})
    fakepve.add_ct(103, "media", status="running")
    return fakepve


@pytest.fixture
def pin(fakepve_cafile) -> str:
    return fingerprint_of(ssl.PEM_cert_to_DER_cert(Path(fakepve_cafile).read_text()))


def write_project(root: Path, pve, pin: str, *, auth: str = "token", runbook: str = "") -> Path:
    (root / "inventory").mkdir(exist_ok=True)
    (root / "runbooks").mkdir(exist_ok=True)
    creds = (
        f"    token_id: {TOKEN_ID}\n    token: env:OPSKIT_TEST_PVE_TOKEN\n"
        if auth == "token"
        else "    user: root@pam\n    password: env:OPSKIT_TEST_PVE_PASSWORD\n"
    )
    (root / "inventory" / "homelab.yaml").write_text(
        "proxmox:\n"
        "  lab:\n"
        f"    api_url: {pve.url}/api2/json\n"
        f"{creds}"
        f'    tls: {{fingerprint: "{pin}"}}\n'
        "guests:\n"
        "  - {vmid: 100, name: docker, node: pve1, address: 127.0.0.1}\n"
        "  - {vmid: 103, name: media, node: pve1, kind: lxc, address: 127.0.0.1}\n"
        "  - {vmid: 110, name: ai, node: pve1, address: 127.0.0.1, tags: [ai]}\n"
    )
    if runbook:
        (root / "runbooks" / "rb.yaml").write_text(textwrap.dedent(runbook).lstrip())
    return root


class Lab:
    """A project pointing at fakepve, and runs through the session API with every Proxmox
    request recorded (and held against the API schema when the test ends)."""

    def __init__(self, root: Path, pve, pin: str) -> None:
        self.root, self.pve, self.pin = root, pve, pin
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    def project(self, runbook: str, auth: str = "token") -> None:
        write_project(self.root, self.pve, self.pin, auth=auth, runbook=runbook)

    def request(self, **kw: Any) -> Request:
        ws = Workspace(self.root / "runbooks", self.root / "inventory" / "homelab.yaml")
        settings = ProbeSettings(Transports(observe=self.observe))
        return Request(
            workspace=ws,
            settings=settings,
            reporter=Reporter(out=open(os.devnull, "w")),
            journal=Journal(self.root / "state" / "journal.db"),
            **kw,
        )

    def plan(self, **params: Any):
        return session.make_plan(self.request(), "rb", params, None)

    def run(self, yes: bool = True, **params: Any):
        req = self.request(yes=yes)
        loaded, targets, plan = session.make_plan(req, "rb", params, None)
        return plan, session.execute(req, loaded, targets, plan)

    def observe(self, sent: Sent) -> None:
        if sent.client == "proxmox":
            self.sent.append((sent.method, sent.what, dict(sent.params)))

    def posts(self) -> list[str]:
        return [f"{m} {p}" for m, p, _ in self.sent if m != "GET"]


@pytest.fixture
def lab(tmp_path, pve, pin, monkeypatch):
    monkeypatch.setenv("OPSKIT_TEST_PVE_TOKEN", TOKEN)
    monkeypatch.setenv("OPSKIT_TEST_PVE_PASSWORD", PASSWORD)
    monkeypatch.setenv("OPSKIT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    lab = Lab(tmp_path, pve, pin)
    yield lab
    wrong = [p for m, path, a in lab.sent for p in pve_schema.problems(m, path, a)]
    assert wrong == [], "requests outside the PVE API schema"


POWER = """
name: rb
targets: vm:110
steps:
  - id: up
    proxmox.vm.start: {}
  - id: ready
    proxmox.vm.wait: {status: running, timeout: 10s, interval: 50ms}
"""


@pytest.mark.parametrize("auth", ["token", "ticket"])
def test_start_plans_applies_and_then_has_nothing_to_do(lab, auth):
    lab.project(POWER, auth=auth)
    _, _, plan = lab.plan()
    step = plan.targets[0].steps[0]
    assert (step.change.kind.value, step.change.summary) == (
        "update",
        "start vm 110 (ai) (stopped -> running)",
    )
    assert lab.posts() == ([] if auth == "token" else ["POST /access/ticket"])  # probing only reads
    _, result = lab.run()
    assert result.exit_code == 0
    assert lab.pve.vm(110).status == "running"
    plan, result = lab.run()
    assert plan.targets[0].steps[0].change.kind.value == "none"
    starts = [p for p in lab.posts() if p.endswith("/status/start")]
    assert starts == ["POST /nodes/pve1/qemu/110/status/start"]


def test_dry_run_sends_no_mutating_request(lab):
    lab.project(POWER)
    before = len(lab.pve.requests)
    lab.plan()
    mutating = [(m, p) for m, p, _ in lab.pve.requests[before:] if m != "GET"]
    assert mutating == [] and lab.pve.vm(110).status == "stopped"


def standalone(
    url: str, credentials: Credentials, *, verify: Any = True, transport: Any = None, **kw: Any
) -> ProxmoxClient:
    """A client of its own, outside any Connections (so no door: it may change things)."""
    return ProxmoxClient(ProxmoxSession(url, credentials, **kw), transport=transport, verify=verify)


def _client(lab: Lab, cafile: str, **kw: Any) -> ProxmoxClient:
    creds = kw.pop("credentials", Credentials(token_id=TOKEN_ID, token_secret=TOKEN))
    return standalone(
        lab.pve.url + "/api2/json", creds, verify=ssl.create_default_context(cafile=cafile), **kw
    )


def test_read_only_client_refuses_changes(lab, fakepve_cafile):
    async def go() -> None:
        lab.project(POWER)
        ws = Workspace(lab.root / "runbooks", lab.root / "inventory" / "homelab.yaml")
        connections = Connections(ws.inventory)
        view = await connections.proxmox()  # read-only unless asked otherwise
        try:
            assert await view.call("version")
            with pytest.raises(
                ReadOnlyRefused, match="refused POST /nodes/pve1/qemu/110/status/start"
            ):
                await view.call("start", node="pve1", kind="qemu", vmid=110)
        finally:
            await connections.aclose()

    asyncio.run(go())
    assert lab.pve.vm(110).status == "stopped"


def test_locked_vm_is_a_blocker_at_plan_time(lab):
    lab.project(POWER)
    lab.pve.vm(110).lock = "backup"
    loaded, targets, plan = lab.plan()
    assert plan.targets[0].steps[0].change.blockers == [
        "vm 110 (ai): is locked (backup); wait for it or unlock it"
    ]
    req = lab.request(yes=True)
    with pytest.raises(session.StepError, match="blockers"):
        session.execute(req, loaded, targets, plan)
    assert lab.posts() == []


SHUTDOWN = """
name: rb
targets: vm:100
steps:
  - id: down
    proxmox.vm.shutdown: {timeout: 30s, force_stop: FORCE}
"""


def test_shutdown_slower_than_its_timeout_fails_clearly(lab):
    lab.project(SHUTDOWN.replace("FORCE", "false"))
    lab.pve.vm(100).shutdown_secs = 600
    _, result = lab.run()
    assert result.exit_code == 1
    assert lab.pve.vm(100).status == "running"
    j = Journal(lab.root / "state" / "journal.db")
    error = next(s.error for s in j.steps(result.run_id) if s.step_id == "down")
    j.close()
    assert "did not power off within 30s" in error and "force_stop: true" in error
    assert "VM quit/powerdown failed - got timeout" in error  # the task's own words


def test_shutdown_with_force_stop_stops_it(lab):
    lab.project(SHUTDOWN.replace("FORCE", "true"))
    lab.pve.vm(100).shutdown_secs = 600
    _, result = lab.run()
    assert result.exit_code == 0 and lab.pve.vm(100).status == "stopped"
    shutdown = [a for m, p, a in lab.sent if p.endswith("/status/shutdown")]
    assert shutdown == [{"timeout": 30, "forceStop": True}]


def test_task_error_fails_with_the_end_of_its_log(lab):
    lab.project(POWER)
    lab.pve.fail("POST", "/nodes/pve1/qemu/110/status/start", error="qemu_exited_code")
    _, result = lab.run()
    assert result.exit_code == 1
    j = Journal(lab.root / "state" / "journal.db")
    error = next(s.error for s in j.steps(result.run_id) if s.step_id == "up")
    j.close()
    assert "failed: QEMU exited with code 1" in error and "UPID:pve1:" in error


def test_expired_ticket_is_renewed(lab, fakepve_cafile):
    def logins() -> int:
        return sum(
            1 for m, p, _ in lab.pve.requests if m == "POST" and p.endswith("/access/ticket")
        )

    async def go() -> None:
        client = _client(
            lab, fakepve_cafile, credentials=Credentials(user="root@pam", password=PASSWORD)
        )
        try:
            await client.call("version")
            assert logins() == 1
            lab.pve.revoke_tickets()  # expired or revoked: the next request gets 401
            await client.call("start", node="pve1", kind="qemu", vmid=110)  # a POST: CSRF too
            assert logins() == 2
            # a ticket close to its 2-hour end is renewed before it is used
            ticket, csrf, _ = client.session.ticket  # type: ignore[misc]
            client.session.ticket = (ticket, csrf, time.monotonic() - TICKET_RENEW - 1)
            await client.call("version")
            assert logins() == 3
        finally:
            await client.aclose()

    asyncio.run(go())
    assert lab.pve.vm(110).status == "running"


def _use_token(lab: Lab, token_id: str) -> None:
    lab.pve.apitokens[token_id] = TOKEN
    inventory = lab.root / "inventory" / "homelab.yaml"
    inventory.write_text(inventory.read_text().replace(TOKEN_ID, token_id))


def test_403_is_reported_with_its_message(lab):
    lab.project(POWER)
    _use_token(lab, "audit@pve!ro")
    lab.pve.grant("audit@pve!ro", "/vms", "VM.Audit")  # may look, may not power on
    _, result = lab.run()
    assert result.exit_code == 1
    j = Journal(lab.root / "state" / "journal.db")
    error = next(s.error for s in j.steps(result.run_id) if s.step_id == "up")
    j.close()
    assert "403 Permission check failed (/vms/110, VM.PowerMgmt)" in error
    assert lab.pve.vm(110).status == "stopped"


def test_a_token_that_sees_no_guests_is_reported(lab):
    lab.project(POWER)
    _use_token(lab, "blind@pve!sep")
    lab.pve.grant("someone@pve", "/", "VM.Audit")  # permissions are on; the token holds none
    _, _, plan = lab.plan()
    blockers = plan.targets[0].steps[0].change.blockers
    assert blockers and "privilege-separated" in blockers[0]


def test_the_node_comes_from_the_cluster_when_the_inventory_is_stale(lab):
    lab.pve.add_node("pve2")
    lab.pve.vm(110).node = "pve2"  # migrated since the inventory was written
    lab.project(POWER)
    _, result = lab.run()
    assert result.exit_code == 0
    assert "POST /nodes/pve2/qemu/110/status/start" in lab.posts()


def test_lxc_start_on_a_running_container_is_no_change(lab):
    lab.project(POWER.replace("vm:110", "vm:103"))
    _, _, plan = lab.plan()
    assert plan.targets[0].steps[0].change.kind.value == "none"


@pytest.mark.parametrize(("vmid", "kind"), [(103, "lxc"), (110, "qemu")])
def test_a_start_racing_to_already_running_succeeds(lab, monkeypatch, vmid, kind):
    from opskit.actions.proxmox import Start

    lab.project(POWER.replace("vm:110", f"vm:{vmid}"))
    guest = lab.pve.guest(vmid)
    guest.status = "stopped"
    # LXC answers 500 at once, QEMU ends its task in error: both say "already running"
    lab.pve.fail(
        "POST", f"/nodes/pve1/{kind}/{vmid}/status/start", error="already_running", times=1
    )
    original = Start.failed

    async def meanwhile_started(self, ctx, g, exc):  # type: ignore[no-untyped-def]
        assert "already running" in str(exc)
        guest.status = "running"
        if kind == "qemu":
            guest.qmpstatus = "running"
        return await original(self, ctx, g, exc)

    monkeypatch.setattr(Start, "failed", meanwhile_started)
    _, result = lab.run()
    assert result.exit_code == 0


@pytest.mark.parametrize("kind", ["proxmox.vm.reboot", "proxmox.vm.reset"])
def test_reboot_or_reset_of_a_stopped_vm_is_refused(lab, kind):
    lab.project(f"name: rb\ntargets: vm:110\nsteps:\n  - id: x\n    {kind}: {{}}\n")
    _, _, plan = lab.plan()
    assert "is stopped" in plan.targets[0].steps[0].change.blockers[0]


SNAPSHOTS = """
name: rb
targets: vm:100
steps:
  - id: snap
    proxmox.vm.snapshot: {name: before_upgrade}
  - id: back
    proxmox.vm.rollback: {name: before_upgrade}
  - id: drop
    proxmox.vm.delete_snapshot: {name: before_upgrade}
"""


def test_snapshot_rollback_delete(lab):
    lab.project(SNAPSHOTS)
    _, _, plan = lab.plan()
    kinds = [s.change.kind.value for s in plan.targets[0].steps]
    # the snapshot the rollback needs does not exist yet, but the step before takes it: the
    # rollback is known after apply (its snapshot checked again when it runs), not blocked
    back = plan.targets[0].steps[1].change
    assert kinds[0] == "create" and back.kind.value == "unknown" and not back.blockers
    assert "step snap changes the guest's snapshots first" in back.summary
    assert "has no snapshot before_upgrade" in back.summary
    lab.project(SNAPSHOTS.split("  - id: back")[0])
    _, result = lab.run()
    assert result.exit_code == 0 and "before_upgrade" in lab.pve.vm(100).snapshots
    plan, _ = lab.run()
    assert plan.targets[0].steps[0].change.kind.value == "none"  # an existing name: no change
    lab.project(SNAPSHOTS)
    plan, result = lab.run()
    assert [s.change.kind.value for s in plan.targets[0].steps] == ["none", "update", "delete"]
    assert result.exit_code == 0 and "before_upgrade" not in lab.pve.vm(100).snapshots


def test_clone(lab):
    lab.project(
        "name: rb\ntargets: vm:100\nsteps:\n"
        "  - id: c\n    proxmox.vm.clone: {newid: 200, name: copy}\n"
    )
    plan, result = lab.run()
    assert plan.targets[0].steps[0].change.kind.value == "create"
    assert result.exit_code == 0 and lab.pve.vm(200).name == "copy"
    plan, _ = lab.run()
    assert plan.targets[0].steps[0].change.kind.value == "none"


def test_agent_exec_registers_exit_code_and_output(lab):
    vm = lab.pve.vm(110)
    vm.status = vm.qmpstatus = "running"
    vm.agent = {"exec": {"cat /etc/hostname": {"exitcode": 0, "out-data": "ai\n"}}}
    lab.project(
        """
        name: rb
        targets: vm:110
        steps:
          - id: name
            proxmox.agent.exec: {command: [cat, /etc/hostname]}
            register: out
          - id: check
            proxmox.agent.exec: {command: [test, "{{ out.stdout | trim }}", "=", ai]}
        """
    )
    _, result = lab.run()
    assert result.exit_code == 0
    assert [argv for argv in vm.agent_execs.values()] == [
        ["cat", "/etc/hostname"],
        ["test", "ai", "=", "ai"],
    ]


def test_check_and_wait(lab):
    lab.project(
        "name: rb\ntargets: vm:110\nsteps:\n  - id: c\n    check.proxmox.vm: {status: running}\n"
    )
    _, result = lab.run()
    assert result.exit_code == 1
    lab.pve.vm(110).status = "running"
    _, result = lab.run()
    assert result.exit_code == 0


# --- the client alone --------------------------------------------------------------------


def test_errors_carry_status_message_parameter_errors_method_and_path(lab, fakepve_cafile):
    async def go() -> None:
        client = _client(lab, fakepve_cafile)
        try:
            with pytest.raises(ProxmoxError) as info:
                await client.request(
                    "POST", "/nodes/pve1/qemu/110/status/shutdown", {"timeout": "soon"}
                )
            e = info.value
            assert (e.status, e.method, e.path) == (
                400,
                "POST",
                "/nodes/pve1/qemu/110/status/shutdown",
            )
            assert "timeout" in e.errors and "Parameter verification failed" in str(e)
            with pytest.raises(ProxmoxError, match=r"500 .*does not exist"):
                await client.call("status", node="pve1", kind="qemu", vmid=999)
            lab.pve.fail("GET", "/version", 501, "Method not implemented")
            with pytest.raises(ProxmoxError, match="501 Method not implemented"):
                await client.call("version")
            # a 596 (pveproxy lost the node) is retried for a GET
            lab.pve.fail("GET", "/nodes", 596, "Connection timed out", times=1)
            assert await client.call("nodes")
            # a wrong token: 401
            bad = _client(
                lab, fakepve_cafile, credentials=Credentials(token_id=TOKEN_ID, token_secret="nope")
            )
            with pytest.raises(ProxmoxError, match="401 authentication failure"):
                await bad.call("version")
            await bad.aclose()
        finally:
            await client.aclose()

    asyncio.run(go())


def test_wait_task_times_out_naming_the_upid(lab, fakepve_cafile):
    lab.pve.time_scale = 0.05
    lab.pve.vm(110).start_secs = 30  # 1.5 real seconds

    async def go() -> None:
        client = _client(lab, fakepve_cafile)
        try:
            upid = await client.call("start", node="pve1", kind="qemu", vmid=110)
            with pytest.raises(
                TaskTimeout,
                match=re.escape(f"task {upid} did not finish within 0.3s; it keeps running"),
            ):
                await client.wait_task("pve1", upid, 0.3)
        finally:
            await client.aclose()

    asyncio.run(go())


def test_every_endpoint_exists_in_the_api_schema():
    checked = 0
    for name, endpoint in ENDPOINTS.items():
        for kind in endpoint.kinds:
            path = endpoint.path.format(
                node="pve1",
                kind=kind,
                vmid=100,
                upid="UPID:pve1:0:0:0:qmstart:100:root@pam:",
                snapname="snap",
                action="start",
            )
            template = pve_schema.template_of(path)
            assert template is not None, f"{name}: {path} is not in the schema"
            info = pve_schema.index()[template]
            assert endpoint.method in info, (
                f"{name}: {endpoint.method} {template} not in the schema"
            )
            props = (info[endpoint.method].get("parameters") or {}).get("properties", {})
            assert endpoint.params <= set(props), f"{name}: {sorted(endpoint.params - set(props))}"
            checked += 1
    assert checked > 25


# --- inventory sync ------------------------------------------------------------------------

TAILSCALE = {
    "Version": "1.76.6",
    "MagicDNSSuffix": "tail1234.ts.net",
    "Self": {
        "HostName": "workstation",
        "DNSName": "workstation.tail1234.ts.net.",
        "TailscaleIPs": ["100.64.0.1"],
        "Online": True,
        "OS": "linux",
    },
    "Peer": {
        "nodekey:aa": {
            "HostName": "ai",
            "DNSName": "ai.tail1234.ts.net.",
            "TailscaleIPs": ["100.64.0.10"],
            "Online": True,
            "OS": "linux",
            "Tags": ["tag:server"],
        },
        "nodekey:bb": {
            "HostName": "Docker",
            "DNSName": "docker.tail1234.ts.net.",
            "TailscaleIPs": ["100.64.0.11"],
            "Online": False,
            "OS": "linux",
        },
        "nodekey:cc": {
            "HostName": "pixel",
            "DNSName": "pixel.tail1234.ts.net.",
            "TailscaleIPs": ["100.64.0.12"],
            "Online": True,
            "OS": "android",
        },
    },
}


def test_inventory_sync_from_proxmox_and_tailscale(lab, opskit):
    import json as _json

    lab.project(POWER)
    inventory = lab.root / "inventory" / "homelab.yaml"
    inventory.write_text(
        "# The homelab (hand-written header survives)\n"
        + inventory.read_text().replace(
            "  - {vmid: 110, name: ai, node: pve1, address: 127.0.0.1, tags: [ai]}\n",
            "  - vmid: 110\n    name: ai\n    node: pve1   # was here once\n    tags: [ai]\n"
            "    unverified: [node, tailscale]\n"
            "    services:\n      proxmoxmcp: {port: 8811}\n",
        )
        + "hosts:\n  - {name: workstation, unverified: [tailscale]}\n"
    )
    lab.pve.add_node("pve2")
    lab.pve.vm(110).node = "pve2"  # migrated
    lab.pve.add_vm(120, "grafana", status="running", config={"tags": "web;prod"})
    status = lab.root / "ts.json"
    status.write_text(_json.dumps(TAILSCALE))
    before = inventory.read_text()

    dry = opskit("inventory", "sync", "--dry-run", "--tailscale-json", str(status), cwd=lab.root)
    assert dry.code == 0, dry.err
    assert "+    node: pve2" in dry.out and "dry run: nothing written" in dry.out
    assert "added guest 120 (grafana)" in dry.out
    assert "Tailscale peer pixel (pixel.tail1234.ts.net) matches no guest or host" in dry.out
    assert inventory.read_text() == before

    done = opskit("inventory", "sync", "--tailscale-json", str(status), cwd=lab.root)
    assert done.code == 0, done.err
    text = inventory.read_text()
    assert text.startswith("# The homelab (hand-written header survives)")
    assert "# was here once" in text and "proxmoxmcp: {port: 8811}" in text
    from opskit.loader import load_inventory

    inv, _ = load_inventory(inventory)
    ai = inv.by_name()["ai"]
    assert (ai.node, ai.tailscale, ai.unverified) == ("pve2", "ai.tail1234.ts.net", [])
    assert inv.by_name()["docker"].tailscale == "docker.tail1234.ts.net"
    assert inv.by_name()["workstation"].tailscale == "workstation.tail1234.ts.net"
    grafana = inv.by_name()["grafana"]
    assert (grafana.vmid, grafana.node, grafana.tags) == (120, "pve1", ["web", "prod"])
    assert inv.tailnet == "tail1234.ts.net" and inv.proxmox["lab"].nodes == ["pve1", "pve2"]
    again = opskit("inventory", "sync", "--tailscale-json", str(status), cwd=lab.root)
    assert again.code == 0 and "already in sync" in again.out
    added = opskit(
        "inventory", "sync", "--tailscale-json", str(status), "--add-hosts", cwd=lab.root
    )
    assert "added Tailscale host pixel" in added.out
    assert load_inventory(inventory)[0].by_name()["pixel"].os == "android"


def test_shipped_vm_power_runbook(lab):
    from opskit.errors import GateError

    lab.project("")
    shipped = Path(__file__).resolve().parent.parent / "runbooks" / "vm-power.yaml"
    (lab.root / "runbooks" / "rb.yaml").write_text(
        shipped.read_text().replace("name: vm-power", "name: rb")
    )
    req = lab.request()  # no --yes and no terminal: the gated shutdown fails closed
    loaded, targets, plan = session.make_plan(req, "rb", {"action": "shutdown"}, "vm:100")
    with pytest.raises(GateError, match="no terminal to ask"):
        session.execute(req, loaded, targets, plan)
    assert lab.pve.vm(100).status == "running"
    for action, state in (("shutdown", "stopped"), ("start", "running"), ("reboot", "running")):
        req = lab.request(yes=True)
        loaded, targets, plan = session.make_plan(req, "rb", {"action": action}, "vm:100")
        result = session.execute(req, loaded, targets, plan)
        assert result.exit_code == 0, action
        assert lab.pve.vm(100).status == state
    assert any(p.endswith("/qemu/100/status/reboot") for p in lab.posts())


def test_a_task_ending_with_warnings_succeeds_and_says_so(lab):
    import io

    lab.project(POWER)
    original = lab.pve.task

    async def warned(node, ttype, vmid, user, body, **kw):  # type: ignore[no-untyped-def]
        upid = await original(node, ttype, vmid, user, body, **kw)
        lab.pve.tasks[upid]["exitstatus"] = "WARNINGS: 2"
        return upid

    lab.pve.task = warned
    out = io.StringIO()
    req = lab.request(yes=True)
    req.reporter = Reporter(out=out)
    loaded, targets, plan = session.make_plan(req, "rb", {}, None)
    result = session.execute(req, loaded, targets, plan)
    assert result.exit_code == 0 and lab.pve.vm(110).status == "running"
    assert "[ai] up: vm 110 (ai): task UPID:" in out.getvalue() and "WARNINGS: 2" in out.getvalue()


def test_a_rejected_token_is_said_once_in_the_step_line_and_the_plan(lab, opskit):
    """`401 authentication failure: Proxmox GET ...: 401 authentication failure` said it twice:
    the step line joined a summary and an error that were the same text."""
    lab.project(
        "name: rb\ntargets: vm:110\nsteps:\n  - id: c\n    check.proxmox.vm: {status: stopped}\n"
    )
    lab.pve.apitokens[TOKEN_ID] = "another-token"  # the inventory's token is now wrong: 401
    ran = opskit("run", "rb", "--yes", cwd=lab.root)
    assert ran.code == 1
    line = next(x for x in ran.out.splitlines() if x.startswith("[ai] c: FAILED"))
    assert line.endswith(" - Proxmox GET /cluster/resources: 401 authentication failure"), line
    assert line.count("401") == 1, line
    lab.project(POWER)  # a changing step: the 401 comes from its probe, as a blocker
    planned = opskit("plan", "rb", cwd=lab.root)
    line = next(x for x in planned.out.splitlines() if "BLOCKED" in x)
    assert line.count("401 authentication failure") == 1, line
    assert "probe failed  [BLOCKED: Proxmox GET /cluster/resources: 401" in line


# --- why a connection failed: refused, unreachable, timed out; TLS errors stay TLS errors -----


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_refused_proxmox_is_reported_as_refused_not_as_tls(lab):
    """The lab's inventory pins the certificate: before, the refused connection of the pin
    check read `TLS handshake failed: [Errno 111] Connect call failed`."""
    port = _closed_port()
    lab.project(POWER)
    inventory = lab.root / "inventory" / "homelab.yaml"
    inventory.write_text(inventory.read_text().replace(lab.pve.url, f"https://127.0.0.1:{port}"))
    _, _, plan = lab.plan()
    blockers = [b for t in plan.targets for s in t.steps for b in s.change.blockers]
    assert blockers and set(blockers) == {
        f"cannot connect to Proxmox at 127.0.0.1:{port}: connection refused"
    }


def test_the_client_says_refused_and_keeps_tls_errors_tls(lab, fakepve_cafile):
    from opskit.clients.proxmox import ProxmoxUnreachable

    port = _closed_port()

    async def go() -> None:
        closed = standalone(
            f"https://127.0.0.1:{port}/api2/json",
            Credentials(token_id=TOKEN_ID, token_secret=TOKEN),
            verify=ssl.create_default_context(cafile=fakepve_cafile),
        )
        untrusting = standalone(  # the system CAs do not know fakepve's certificate
            lab.pve.url + "/api2/json", Credentials(token_id=TOKEN_ID, token_secret=TOKEN)
        )
        try:
            with pytest.raises(ProxmoxUnreachable) as refused:
                await closed.call("version")
            assert str(refused.value) == (
                f"cannot connect to Proxmox at 127.0.0.1:{port}: connection refused (GET /version)"
            )
            assert refused.value.status == 0
            with pytest.raises(ProxmoxError) as untrusted:
                await untrusting.call("version")
            text = str(untrusted.value)
            assert "TLS certificate not trusted (CERTIFICATE_VERIFY_FAILED" in text, text
            assert "cannot connect" not in text
        finally:
            await closed.aclose()
            await untrusting.aclose()

    asyncio.run(go())


def test_a_pin_mismatch_stays_a_tls_error(lab):
    lab.project(POWER)
    inventory = lab.root / "inventory" / "homelab.yaml"
    inventory.write_text(inventory.read_text().replace(lab.pin, "AB:" * 31 + "AB"))
    _, _, plan = lab.plan()
    (blocker,) = {b for t in plan.targets for s in t.steps for b in s.change.blockers}
    assert "certificate fingerprint mismatch: the server presents" in blocker, blocker
    assert "cannot connect" not in blocker


def test_connect_reasons_name_the_category():
    import errno
    import socket

    import httpx

    from opskit.clients.net import connect_reason, tls_reason

    def wrapped(cause: BaseException) -> BaseException:
        """As httpx raises it: its ConnectError from anyio's OSError from the OS's error."""
        try:
            try:
                try:
                    raise cause
                except BaseException as exc:
                    raise OSError("All connection attempts failed") from exc
            except OSError as exc:
                raise httpx.ConnectError("All connection attempts failed") from exc
        except httpx.ConnectError as exc:
            return exc

    assert connect_reason(wrapped(ConnectionRefusedError(errno.ECONNREFUSED, "x"))) == (
        "connection refused"
    )
    for code in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        assert connect_reason(wrapped(OSError(code, "x"))) == "unreachable (no route to the host)"
    assert connect_reason(wrapped(TimeoutError())) == "timed out"
    assert connect_reason(httpx.ConnectTimeout("")) == "timed out"
    assert connect_reason(wrapped(socket.gaierror(-2, "Name or service not known"))) == (
        "unknown host (the name does not resolve)"
    )
    bad = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify")
    bad.reason, bad.verify_message = "CERTIFICATE_VERIFY_FAILED", "self-signed certificate"
    assert connect_reason(wrapped(bad)) is None
    assert tls_reason(wrapped(bad)) == (
        "TLS certificate not trusted (CERTIFICATE_VERIFY_FAILED: self-signed certificate)"
    )


# --- a change sent and its answer lost: journaled `unknown`, resume probes it again ----------


class DropAnswers:
    """An httpx transport that sends each request and, for the matching ones, loses the
    answer the way a dropped connection does (after the server acted on the request)."""

    def __init__(self, cafile: str, path_suffix: str, error: type[Exception]) -> None:

        self.cafile, self.inner = cafile, None
        self.path_suffix, self.error, self.dropped = path_suffix, error, 0

    async def aclose(self) -> None:
        if self.inner is not None:
            await self.inner.aclose()
            self.inner = None

    async def handle_async_request(self, request):  # type: ignore[no-untyped-def]
        import httpx

        if self.inner is None:  # one pool per plan or run: each has its own event loop
            verify = ssl.create_default_context(cafile=self.cafile)
            self.inner = httpx.AsyncHTTPTransport(verify=verify)

        if self.error in (httpx.ConnectError,) and request.url.path.endswith(self.path_suffix):
            raise httpx.ConnectError("All connection attempts failed", request=request)
        response = await self.inner.handle_async_request(request)
        if request.method != "GET" and request.url.path.endswith(self.path_suffix):
            await response.aread()
            await response.aclose()
            self.dropped += 1
            raise self.error("the connection dropped", request=request)
        return response


@pytest.mark.parametrize("error", ["ReadError", "RemoteProtocolError", "ReadTimeout"])
def test_a_post_whose_answer_is_lost_is_outcome_unknown(lab, fakepve_cafile, error):
    import httpx

    from opskit.clients.proxmox import ProxmoxAnswerLost
    from opskit.errors import OutcomeUnknown

    transport = DropAnswers(fakepve_cafile, "/status/start", getattr(httpx, error))

    async def go() -> None:
        client = _client(lab, fakepve_cafile, transport=transport)
        try:
            with pytest.raises(ProxmoxAnswerLost) as lost:
                await client.call("start", node="pve1", kind="qemu", vmid=110)
            assert isinstance(lost.value, OutcomeUnknown)
            assert str(lost.value).startswith(
                "Proxmox POST /nodes/pve1/qemu/110/status/start was sent, but its answer was"
                f" lost ({error}: "
            )
        finally:
            await client.aclose()

    asyncio.run(go())
    assert transport.dropped == 1  # sent once: a change is never retried blindly
    assert lab.pve.vm(110).status == "running"  # and Proxmox did act on it


def test_a_post_that_never_connected_is_not_unknown(lab, fakepve_cafile):
    import httpx

    from opskit.clients.proxmox import ProxmoxUnreachable
    from opskit.errors import OutcomeUnknown

    transport = DropAnswers(fakepve_cafile, "/status/start", httpx.ConnectError)

    async def go() -> None:
        client = _client(lab, fakepve_cafile, transport=transport)
        try:
            with pytest.raises(ProxmoxUnreachable) as refused:
                await client.call("start", node="pve1", kind="qemu", vmid=110)
            assert not isinstance(refused.value, OutcomeUnknown)
        finally:
            await client.aclose()

    asyncio.run(go())
    assert lab.pve.vm(110).status == "stopped"


def _show_run(lab: Lab, run_id: str) -> dict[str, Any]:
    from click.testing import CliRunner

    from opskit.cli import cli

    shown = CliRunner().invoke(cli, ["show-run", run_id, "--json"], catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    import json

    return dict(json.loads(shown.output))


def test_a_token_revoked_mid_task_is_journaled_unknown_and_resume_probes_it(lab):
    lab.pve.time_scale = 0.05
    lab.pve.vm(110).start_secs = 10  # half a second: the token goes while the task runs
    lab.project(POWER)
    seen: list[str] = []

    def revoke(sent: Sent) -> None:
        seen.append(f"{sent.method} {sent.what}")
        if "/tasks/" in sent.what and TOKEN_ID in lab.pve.apitokens:
            del lab.pve.apitokens[TOKEN_ID]

    req = lab.request(yes=True)
    req.settings.transports.observe = revoke
    loaded, targets, plan = session.make_plan(req, "rb", {}, None)
    result = session.execute(req, loaded, targets, plan)
    assert result.exit_code == 1
    shown = _show_run(lab, result.run_id)
    assert shown["status"] == "failed" and shown["exit_code"] == 1
    steps = {s["step"]: s for s in shown["steps"]}
    assert steps["up"]["status"] == "unknown", steps["up"]
    assert steps["up"]["error"].startswith("outcome unknown: task UPID:")
    assert "was started, but its end could not be read" in steps["up"]["error"]
    assert steps["up"]["error"].endswith("; resume probes it again")
    assert steps["ready"]["status"] == "not run"
    assert result.counts.get("unknown") == 1
    # The token comes back, the task ends meanwhile; resume probes `up` first: nothing to do.
    lab.pve.apitokens[TOKEN_ID] = TOKEN
    deadline = time.monotonic() + 10
    while lab.pve.vm(110).status != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    starts = [p for p in seen if p.endswith("/status/start")]
    resumed = session.resume(lab.request(yes=True), result.run_id)
    assert resumed.exit_code == 0
    again = {s["step"]: s["status"] for s in _show_run(lab, resumed.run_id)["steps"]}
    assert again == {"up": "unchanged", "ready": "succeeded"}
    assert len(starts) == 1  # the run sent it once,
    assert not [p for p in lab.posts() if p.endswith("/status/start")]  # resume never again


def test_a_lost_answer_to_a_snapshot_is_unknown_and_resume_finds_it_made(
    lab, fakepve_cafile, monkeypatch
):
    import dataclasses

    import httpx

    transport = DropAnswers(fakepve_cafile, "/snapshot", httpx.RemoteProtocolError)
    original = Connections.__init__

    def with_transport(self, *args, **kw):  # type: ignore[no-untyped-def]
        original(self, *args, **kw)
        self.transports = dataclasses.replace(self.transports, http=transport)

    monkeypatch.setattr(Connections, "__init__", with_transport)
    lab.project(SNAPSHOTS.split("  - id: back")[0])
    _, result = lab.run()
    assert result.exit_code == 1
    shown = _show_run(lab, result.run_id)
    (step,) = shown["steps"]
    assert step["status"] == "unknown" and "its answer was lost" in step["error"], step["error"]
    assert "before_upgrade" in lab.pve.vm(100).snapshots  # it was made
    # `history` counts it as what it is.
    from click.testing import CliRunner

    from opskit.cli import cli

    listed = CliRunner().invoke(cli, ["history", "--json"], catch_exceptions=False)
    import json

    assert json.loads(listed.output)[0]["steps"] == {"unknown": 1}
    resumed = session.resume(lab.request(yes=True), result.run_id)
    assert resumed.exit_code == 0
    (again,) = _show_run(lab, resumed.run_id)["steps"]
    assert again["status"] == "unchanged" and transport.dropped == 1


def test_a_task_left_running_is_waited_for_before_the_guest_is_changed(lab, fakepve_cafile):
    """A run killed mid-reboot leaves the task running and holding the guest's lock: the next
    run's reboot failed `can't lock file ... got timeout`. Now it waits for the task to end,
    then looks at the guest again (a shutdown finds it stopped: nothing left to do)."""
    lab.pve.time_scale = 0.05
    lab.pve.vm(100).shutdown_secs = 20  # one real second

    async def left_running() -> str:
        client = standalone(
            lab.pve.url + "/api2/json",
            Credentials(token_id=TOKEN_ID, token_secret=TOKEN),
            verify=ssl.create_default_context(cafile=fakepve_cafile),
        )
        try:
            return str(await client.call("shutdown", node="pve1", kind="qemu", vmid=100))
        finally:
            await client.aclose()

    lab.project("name: rb\ntargets: vm:100\nsteps:\n  - id: down\n    proxmox.vm.shutdown: {}\n")
    upid = asyncio.run(left_running())
    import io

    out = io.StringIO()
    req = lab.request(yes=True)
    req.reporter = Reporter(out=out)
    loaded, targets, plan = session.make_plan(req, "rb", {}, None)
    assert plan.targets[0].steps[0].change.kind.value == "update"
    result = session.execute(req, loaded, targets, plan)
    assert result.exit_code == 0, out.getvalue()
    assert f"vm 100 (docker): waiting for task {upid} to end" in out.getvalue()
    assert "[docker] down: ok" in out.getvalue() and lab.pve.vm(100).status == "stopped"
    # The run sent no shutdown of its own: the one left running did it.
    assert [p for p in lab.posts() if p.endswith("/status/shutdown")] == []


def test_v_logs_each_proxmox_task(lab, capsys):
    import logging

    from opskit.logs import configure

    lab.project(POWER)
    configure(1)
    try:
        _, result = lab.run()
    finally:
        logger = logging.getLogger("opskit")
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
        logger.propagate = True
    assert result.exit_code == 0
    err = capsys.readouterr().err
    assert re.search(r"opskit: Proxmox task UPID:pve1:\S+ on pve1: started", err), err
    assert re.search(r"opskit: Proxmox task UPID:pve1:\S+ on pve1: OK in [0-9.]+ s", err), err
    assert re.search(r"opskit: HTTP POST https://\S+/status/start -> 200 in \d+ ms", err), err


def test_a_run_logs_in_to_proxmox_once_for_its_plan_and_its_steps(lab):
    """`opskit run`'s session: the plan's ticket is the steps' (fakepve counts the logins)."""
    lab.project(POWER, auth="ticket")
    req = lab.request(yes=True)
    with session.Session(req) as s:
        loaded, targets, plan = session.make_plan(req, "rb", {}, None, session=s)
        result = session.execute(req, loaded, targets, plan, session=s)
    assert result.exit_code == 0 and lab.pve.vm(110).status == "running"
    logins = [p for m, p, _ in lab.pve.requests if m == "POST" and p.endswith("/access/ticket")]
    assert len(logins) == 1
    # Its guests were listed again for the run (the world as it is then), not logged in again.
    listed = [p for m, p, _ in lab.pve.requests if m == "GET" and p.endswith("/cluster/resources")]
    assert len(listed) == 2
