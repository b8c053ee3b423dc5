"""The weekly patch, rehearsed in the lab as the README shows it: `make demo`'s lab (`opskit lab
demo`: the agents, ProxmoxMCP-Plus, every health check green), then `runbooks/patch-guests.yaml`
dry, with a failing package on one guest (rolled back, the rollout stopped), for real on every
guest (upgraded, rebooted where required), again (nothing to upgrade), killed while a guest's
dpkg configures and resumed, and snapshot retention.

One lab for the module, every command through the real `opskit` and OpenSSH from the lab's
controller, as root.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from labkit import Lab, make_lab, require_root
from opskit.lab.apt import SLOW_CONFIGURE
from test_beszel_lab import layers
from test_lab_rehearse import on, pve, write_runbook
from test_resume_lab import kill_mid_run

pytestmark = pytest.mark.integration

GUESTS = ["docker", "homeassistant", "media", "ai", "dev"]  # tag:monitored but the node
OTHERS = ["pve", "workstation"]
VERSIONS = "dpkg-query -W -f '${Package} ${Version} ${Status}\\n' 'opskit-lab-*'"
BOOT_ID = "cat /proc/sys/kernel/random/boot_id"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The lab as `make demo` leaves it (`make demo` is `opskit lab demo`)."""
    require_root()
    lab = make_lab(tmp_path_factory.mktemp("patch"))
    lab.env["OPSKIT_LAB_NAME"] = lab.name = lab.name + "p"
    try:
        done = lab.opskit("lab", "demo")
        lab.demo = done.stdout + done.stderr  # type: ignore[attr-defined]
        assert done.returncode == 0, lab.demo  # type: ignore[attr-defined]
        yield lab
    finally:
        lab.opskit("lab", "down")


def kuma_changes(lab: Lab) -> list[str]:
    """The changing events the lab's Uptime Kuma (on docker) received, in order."""
    from opskit.lab.uptime_kuma import LOG, MUTATING

    log = lab.root / "hosts" / "docker" / "upper" / LOG
    lines = log.read_text().splitlines() if log.exists() else []
    return [e for e in (json.loads(line)["event"] for line in lines if line) if e in MUTATING]


def versions(lab: Lab, host: str) -> list[str]:
    return on(lab, host, VERSIONS).splitlines()


def boot_ids(lab: Lab, hosts: list[str]) -> dict[str, str]:
    return {h: on(lab, h, BOOT_ID).strip() for h in hosts}


def requests(lab: Lab) -> list[dict[str, object]]:
    served = lab.root / "pve" / "requests.jsonl"
    return [json.loads(line) for line in served.read_text().splitlines()]


def snapshots(lab: Lab, vmid: int, kind: str = "qemu") -> dict[str, str]:
    listed = pve(lab, "GET", f"/nodes/pve/{kind}/{vmid}/snapshot")
    assert isinstance(listed, list)
    return {
        str(s["name"]): str(s.get("description") or "") for s in listed if s["name"] != "current"
    }


def patch(lab: Lab) -> tuple[int, str, dict[str, str], dict[tuple[str, str], str]]:
    """`opskit run patch-guests --lab --yes --json`: exit code, the events as text, each
    target's end, each (target, step)'s end."""
    done = lab.opskit("run", "patch-guests", "--lab", "--yes", "--json")
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    ends = {e["target"]: e["status"] for e in events if e["event"] == "target"}
    steps = {
        (e["target"], e["step"]): e["status"]
        for e in events
        if e["event"] == "step" and e["status"] != "started"
    }
    return done.returncode, done.stdout + done.stderr, ends, steps


def test_health_is_green_after_make_demo(lab: Lab) -> None:
    text: str = lab.demo  # type: ignore[attr-defined]
    health = text.split("== opskit run health --lab --yes", 1)[1]
    from opskit.loader import load_inventory

    inventory, _ = load_inventory(lab.root / "inventory.yaml")
    expected = {
        (h.name, name) for h in inventory.all_hosts() for name, s in h.services.items() if s.health
    }
    passed = set()
    for line in health.splitlines():
        if "]: ok " in line and line.startswith("["):
            passed.add((line[1:].split("]", 1)[0], line.split("[", 2)[2].split("]", 1)[0]))
    assert passed == expected and len(expected) == 14, sorted(expected - passed)
    assert "14 ok, 0 unchanged, 0 failed" in health


def test_a_dry_run_changes_nothing_and_shows_the_upgrade(lab: Lab) -> None:
    before, kuma_before = layers(lab), kuma_changes(lab)
    seen = len(requests(lab))
    done = lab.opskit("run", "patch-guests", "--lab", "--dry-run")
    text = done.stdout + done.stderr
    assert done.returncode == 0, text
    assert "dry run: nothing was changed" in text
    assert text.count("upgrade 1 package: opskit-lab-demo 1.0 -> 1.1") == len(GUESTS), text
    assert "blocker" not in text
    sent = requests(lab)[seen:]
    assert sent and {r["method"] for r in sent} == {"GET"}, sent
    assert "maintenance window for the run over docker" in text
    assert layers(lab) == before and kuma_changes(lab) == kuma_before


def test_a_failing_patch_is_rolled_back_and_stops_the_rollout(lab: Lab) -> None:
    offered = lab.opskit("lab", "packages", "homeassistant", "--offer", "broken")
    assert offered.returncode == 0, offered.stderr
    untouched = ["media", "ai", "dev"]  # after homeassistant, in the rollout's order
    as_before = {h: versions(lab, h) for h in GUESTS}
    booted = boot_ids(lab, GUESTS)
    kuma_before = len(kuma_changes(lab))
    code, text, ends, _ = patch(lab)
    assert code == 1, text
    changed = kuma_changes(lab)[kuma_before:]  # a failed run closes its window too
    assert changed[0] == "addMaintenance" and changed[-1] == "deleteMaintenance", changed
    # The first guest patched fine; the second failed, was rescued, and is reported failed.
    assert ends == {"docker": "succeeded", "homeassistant": "failed"}, (ends, text)
    assert "step upgrade failed, rescued it; the target is failed" in text
    assert "rollout stopped: 1 target failed (max_fail 0); 3 targets not started" in text
    assert "opskit-lab-demo 1.1 install ok installed" in versions(lab, "docker")
    # Rolled back, proven on the host: the packages and a file the patch wrote as before.
    assert versions(lab, "homeassistant") == as_before["homeassistant"]
    assert on(lab, "homeassistant", "cat /usr/share/opskit-lab-demo/version") == "1.0\n"
    assert on(lab, "homeassistant", "dpkg --audit; echo audited") == "audited\n"
    current = pve(lab, "GET", "/nodes/pve/qemu/102/status/current")
    assert isinstance(current, dict) and current["status"] == "running"
    assert boot_ids(lab, ["homeassistant"])["homeassistant"] != booted["homeassistant"]
    healthy = lab.opskit("run", "health", "--lab", "--limit", "homeassistant")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    # The targets after it: not started, not a byte or a boot of them changed.
    for host in untouched:
        assert versions(lab, host) == as_before[host]
    assert boot_ids(lab, untouched) == {h: booted[h] for h in untouched}
    assert snapshots(lab, 110) == {} and snapshots(lab, 111, "lxc") == {}
    offered = lab.opskit("lab", "packages", "homeassistant", "--offer", "upgrade")
    assert offered.returncode == 0, offered.stderr


def test_patch_upgrades_every_guest_reboots_those_that_require_it_and_ends_green(
    lab: Lab,
) -> None:
    for host in GUESTS + OTHERS:
        on(lab, host, "touch /run/opskit-patch-test")
    booted = boot_ids(lab, GUESTS + OTHERS)
    kuma_before = len(kuma_changes(lab))
    code, text, ends, steps = patch(lab)
    assert code == 0, text
    # Uptime Kuma was told: one window over the run, opened first, closed at its end.
    changed = kuma_changes(lab)[kuma_before:]
    assert changed[0] == "addMaintenance" and changed[-1] == "deleteMaintenance", changed
    assert changed.count("addMaintenance") == 1, changed
    assert ends == dict.fromkeys(GUESTS, "succeeded"), ends
    for host in GUESTS:
        assert "opskit-lab-demo 1.1 install ok installed" in versions(lab, host), host
    now = boot_ids(lab, GUESTS + OTHERS)
    # docker was patched by the run before: nothing to upgrade, no reboot required.
    rebooted = {h for h in GUESTS + OTHERS if now[h] != booted[h]}
    assert rebooted == {"homeassistant", "media", "ai", "dev"}, text
    for host in GUESTS + OTHERS:
        marker = on(lab, host, "test -e /run/opskit-patch-test && echo kept || echo emptied")
        assert marker == ("emptied\n" if host in rebooted else "kept\n"), host
    assert steps[("docker", "upgrade")] == steps[("docker", "reboot")] == "unchanged"
    assert all(steps[(h, "reboot")] == "succeeded" for h in rebooted)

    # A second run plans no upgrade and no reboot.
    done = lab.opskit("plan", "patch-guests", "--lab", "--format", "json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    for target in plan["targets"]:
        steps = {s["id"]: s["change"] for s in target["steps"]}
        assert steps["upgrade"]["kind"] == "none", (target["target"], steps["upgrade"])
        assert steps["reboot"]["kind"] == "none", (target["target"], steps["reboot"])


def test_a_patch_killed_while_dpkg_configures_resumes_after_dpkg_and_reboots_then(
    lab: Lab, tmp_path: Path
) -> None:
    """The run is killed while the guest's dpkg configures (a slow patch, which has already
    asked for a reboot): the guest's apt-get goes on without it. The resume waits for that
    dpkg before it upgrades, so the reboot comes after the packages are configured, not in
    the middle of them; and the killed run's Uptime Kuma window is closed."""
    status = "dpkg-query -W -f '${Status}\\n' opskit-lab-demo"
    # media a week on: a new version to take, and a patch that takes 20 s to configure.
    on(lab, "media", "apt-get -q update >/dev/null")
    on(
        lab,
        "media",
        "DEBIAN_FRONTEND=noninteractive apt-get -q -y --allow-downgrades install"
        " opskit-lab-demo=1.0 >/dev/null && rm -f /var/run/reboot-required*",
    )
    on(lab, "media", f"mkdir -p {Path(SLOW_CONFIGURE).parent} && echo 20 > {SLOW_CONFIGURE}")
    try:
        booted = boot_ids(lab, ["media"])["media"]
        kuma_before = len(kuma_changes(lab))

        def configuring(steps: dict[tuple[str, str], str]) -> bool:
            if steps.get(("media", "upgrade")) != "started":
                return False
            return on(lab, "media", status) == "install ok half-configured\n"

        run_id, printed = kill_mid_run(
            lab, tmp_path, signal.SIGKILL, configuring,
            "run", "patch-guests", "--lab", "--yes", "--limit", "media",
        )  # fmt: skip
        # The killed run's apt-get goes on without it, the reboot it asked for not yet done.
        assert on(lab, "media", status) == "install ok half-configured\n", printed
        assert on(lab, "media", "test -e /var/run/reboot-required && echo asked") == "asked\n"

        done = lab.opskit("resume", run_id, "--lab", "--yes")
        text = done.stdout + done.stderr
        assert done.returncode == 0, text
        assert re.search(r"\[media\] upgrade: ok .* waited for .*dpkg \(pid \d+\)", text), text
        # Rebooted after dpkg was done: configured, nothing half-done, a new boot.
        assert on(lab, "media", status) == "install ok installed\n"
        assert on(lab, "media", "dpkg --audit; echo audited") == "audited\n"
        assert boot_ids(lab, ["media"])["media"] != booted
        assert on(lab, "media", "test -e /var/run/reboot-required || echo none") == "none\n"
        changed = kuma_changes(lab)[kuma_before:]
        assert changed[0] == "addMaintenance" and changed[-1] == "deleteMaintenance", changed
    finally:
        on(lab, "media", f"rm -f {SLOW_CONFIGURE}")


RETAIN = """
    name: retain
    description: snapshots of vm 100 kept by retention
    targets: vm:100
    steps:
      - id: snap
        proxmox.vm.snapshot:
          name: "keep-{{ run.id | replace('-', '') }}"
          description: "run {{ run.id }}"
          prefix: keep-
          keep: 2
        register: snap
"""


def test_retention_keeps_exactly_n_of_opskits_snapshots_and_never_anothers(lab: Lab) -> None:
    runbooks = write_runbook(lab, RETAIN)
    # Snapshots opskit did not take under the same prefix: by hand, and with another mark.
    for name, description in (("keep-by-hand", "mine"), ("keep-other", "opskit-retention: k")):
        upid = pve(
            lab, "POST", "/nodes/pve/qemu/100/snapshot", snapname=name, description=description
        )
        assert isinstance(upid, str)
    taken = []
    for _ in range(4):
        done = lab.opskit("--runbooks", str(runbooks), "run", "retain", "--lab", "--yes")
        assert done.returncode == 0, done.stdout + done.stderr
        found = re.search(r"^run (\d{8}-\d{6}-[0-9a-f]{6}):", done.stdout, re.M)
        assert found is not None, done.stdout
        run_id = found[1]
        taken.append("keep-" + run_id.replace("-", ""))
    listed = snapshots(lab, 100)
    ours = sorted(n for n in listed if n.startswith("keep-2"))
    assert ours == sorted(taken[-2:]), listed
    assert {"keep-by-hand", "keep-other"} <= set(listed)
    assert all(listed[n].endswith("\nopskit-retention: keep-") for n in ours)
    # The layers' copies went with them (the lab's snapshots are of the host's disk).
    copies = {p.name for p in (lab.root / "hosts" / "docker" / "snapshots").iterdir()}
    assert set(taken[:2]).isdisjoint(copies) and set(taken[-2:]) <= copies
    shown = lab.opskit("show-run", run_id, "--lab", "--json")
    assert shown.returncode == 0, shown.stderr
    assert taken[-1] in shown.stdout and taken[1] in shown.stdout  # name, and deleted


def test_a_plan_knows_the_vm_an_earlier_step_starts(lab: Lab) -> None:
    """deploy-proxmoxmcp with its VM stopped: the steps after `vm-up` cannot reach the host
    yet, so they are known after apply, not blockers; the run starts the VM and converges."""
    down = lab.opskit(
        "run", "vm-power", "-p", "action=shutdown", "--limit", "vm:110", "--lab", "--yes"
    )
    assert down.returncode == 0, down.stdout + down.stderr
    done = lab.opskit("plan", "deploy-proxmoxmcp", "--lab", "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr  # no blockers
    steps = {s["id"]: s["change"] for s in json.loads(done.stdout)["targets"][0]["steps"]}
    assert steps["vm-up"]["kind"] == "update"
    for step in ("user", "ctl", "config", "switch", "start"):
        assert steps[step]["kind"] == "unknown" and not steps[step]["blockers"], steps[step]
        assert steps[step]["summary"].startswith(
            "known after apply: step vm-up changes the guest's power first"
        ), steps[step]
    run = lab.opskit("run", "deploy-proxmoxmcp", "--lab", "--yes")
    assert run.returncode == 0, run.stdout + run.stderr
    again = lab.opskit("run", "deploy-proxmoxmcp", "--lab", "--dry-run")
    assert again.returncode == 0 and "blocker" not in again.stdout, again.stdout
