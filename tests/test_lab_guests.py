"""The lab's parts that tie Proxmox to its hosts, without a lab: fakepve's power and snapshot
transitions reach the host hooks (recorded here) exactly when fakepve makes them; a host's layer
copied and restored with what overlayfs keeps there; the apt repository and packages.

fakepve is the real one (its pytest fixture, on loopback), driven through its HTTP API.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import ssl
import stat
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from opskit.errors import AptError, LayerError
from opskit.lab import apt, layers, power
from opskit.lab.pve import LabGuest, watch

TOKEN_ID = "root@pam!opskit"
TOKEN = "lab-guests-" + os.urandom(4).hex()


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """What the hooks asked of the lab's hosts, in order."""
    seen: list[tuple[str, ...]] = []
    off: set[str] = set()

    def boot(root: Path, host: str, netns: str) -> int:
        off.discard(host)
        seen.append(("boot", host))
        return 1

    def halt(root: Path, host: str, timeout: float = 0) -> None:
        off.add(host)
        seen.append(("halt", host))

    monkeypatch.setattr(power, "boot", boot)
    monkeypatch.setattr(power, "halt", halt)
    monkeypatch.setattr(power, "powered_off", lambda root, host: host in off)
    for name in ("take", "delete"):
        monkeypatch.setattr(
            layers, name, lambda root, host, snap, n=name: seen.append((n, host, snap))
        )

    def restore(root: Path, host: str, snap: str) -> bool:
        seen.append(("restore", host, snap))
        return True

    monkeypatch.setattr(layers, "restore", restore)
    return seen


@pytest.fixture
def pve(fakepve: Any, tmp_path: Path, events: list[tuple[str, ...]]) -> Any:
    fakepve.apitokens[TOKEN_ID] = TOKEN
    vm = fakepve.add_vm(110, "ai", status="running")
    ct = fakepve.add_ct(103, "media", status="running")
    for guest, host in ((vm, "ai"), (ct, "media")):
        watch(guest, LabGuest(tmp_path, host, f"lab-{host}", guest))
    return fakepve


def trusting(cafile: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cafile)


def api(pve: Any, fakepve_cafile: str, method: str, path: str, **data: str) -> Any:
    """One request as a client sends it; with time_scale 0 a task is done when it answers."""
    response = httpx.request(
        method,
        f"{pve.url}/api2/json{path}",
        data=data or None,
        verify=trusting(fakepve_cafile),
        headers={"Authorization": f"PVEAPIToken={TOKEN_ID}={TOKEN}"},
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]


def task_ok(pve: Any, cafile: str, upid: str) -> bool:
    status = api(pve, cafile, "GET", f"/nodes/pve1/tasks/{upid}/status")
    return bool(status["status"] == "stopped" and status["exitstatus"] == "OK")


def test_power_transitions_halt_and_boot_the_host(
    pve: Any, fakepve_cafile: str, events: list[tuple[str, ...]]
) -> None:
    qemu = "/nodes/pve1/qemu/110/status"
    assert task_ok(pve, fakepve_cafile, api(pve, fakepve_cafile, "POST", f"{qemu}/reboot"))
    assert events == [("halt", "ai"), ("boot", "ai")]
    events.clear()
    assert task_ok(pve, fakepve_cafile, api(pve, fakepve_cafile, "POST", f"{qemu}/shutdown"))
    assert task_ok(pve, fakepve_cafile, api(pve, fakepve_cafile, "POST", f"{qemu}/start"))
    assert task_ok(pve, fakepve_cafile, api(pve, fakepve_cafile, "POST", f"{qemu}/stop"))
    assert events == [("halt", "ai"), ("boot", "ai"), ("halt", "ai")]
    events.clear()
    # A container's too.
    lxc = "/nodes/pve1/lxc/103/status"
    assert task_ok(pve, fakepve_cafile, api(pve, fakepve_cafile, "POST", f"{lxc}/reboot"))
    assert task_ok(pve, fakepve_cafile, api(pve, fakepve_cafile, "POST", f"{lxc}/shutdown"))
    assert events == [("halt", "media"), ("boot", "media"), ("halt", "media")]


def test_a_shutdown_that_times_out_or_a_locked_guest_leaves_the_host_alone(
    pve: Any, fakepve_cafile: str, events: list[tuple[str, ...]]
) -> None:
    pve.vm(110).shutdown_secs = 120  # the guest takes longer than the task waits
    upid = api(pve, fakepve_cafile, "POST", "/nodes/pve1/qemu/110/status/shutdown", timeout="5")
    assert not task_ok(pve, fakepve_cafile, upid)
    assert pve.vm(110).status == "running" and events == []
    pve.snapshot_lock(110)  # an interrupted snapshot left its lock
    response = httpx.post(
        f"{pve.url}/api2/json/nodes/pve1/qemu/110/status/reboot",
        verify=trusting(fakepve_cafile),
        headers={"Authorization": f"PVEAPIToken={TOKEN_ID}={TOKEN}"},
    )
    assert response.status_code == 500 and "locked" in response.text
    assert events == []


def test_snapshots_copy_rollbacks_restore_while_off_and_deletes_remove(
    pve: Any, fakepve_cafile: str, events: list[tuple[str, ...]]
) -> None:
    base = "/nodes/pve1/qemu/110/snapshot"
    assert task_ok(pve, fakepve_cafile, api(pve, fakepve_cafile, "POST", base, snapname="pre"))
    assert events == [("take", "ai", "pre")]
    events.clear()
    # A running guest: stopped, then its layer restored; it stays stopped (no RAM, no start).
    assert task_ok(pve, fakepve_cafile, api(pve, fakepve_cafile, "POST", f"{base}/pre/rollback"))
    assert events == [("halt", "ai"), ("restore", "ai", "pre")]
    assert pve.vm(110).status == "stopped"
    events.clear()
    upid = api(pve, fakepve_cafile, "POST", f"{base}/pre/rollback", start="1")
    assert task_ok(pve, fakepve_cafile, upid)
    assert events == [("restore", "ai", "pre"), ("boot", "ai")]
    events.clear()
    # A snapshot with RAM: PVE starts the VM after the rollback.
    upid = api(pve, fakepve_cafile, "POST", base, snapname="ram", vmstate="1")
    assert task_ok(pve, fakepve_cafile, upid)
    assert task_ok(pve, fakepve_cafile, api(pve, fakepve_cafile, "POST", f"{base}/ram/rollback"))
    assert events == [
        ("take", "ai", "ram"),
        ("halt", "ai"),
        ("restore", "ai", "ram"),
        ("boot", "ai"),
    ]
    assert pve.vm(110).status == "running"
    events.clear()
    assert task_ok(pve, fakepve_cafile, api(pve, fakepve_cafile, "DELETE", f"{base}/pre"))
    assert events == [("delete", "ai", "pre")]
    events.clear()
    # A snapshot fakepve refuses (the name is taken) copies nothing.
    upid = api(pve, fakepve_cafile, "POST", base, snapname="ram")
    assert not task_ok(pve, fakepve_cafile, upid) and events == []


def test_a_containers_lock_stays_fakepves_and_its_rollback_restores(
    pve: Any, fakepve_cafile: str, events: list[tuple[str, ...]]
) -> None:
    base = "/nodes/pve1/lxc/103/snapshot"
    assert task_ok(pve, fakepve_cafile, api(pve, fakepve_cafile, "POST", base, snapname="pre"))
    assert task_ok(pve, fakepve_cafile, api(pve, fakepve_cafile, "POST", f"{base}/pre/rollback"))
    assert events == [("take", "media", "pre"), ("halt", "media"), ("restore", "media", "pre")]
    ct = pve.ct(103)
    assert ct.status == "stopped" and ct.lock is None and "lock" not in ct.config
    ct.lock = "backup"  # a container's lock is its config's `lock`, through the watched field
    assert ct.config["lock"] == "backup"


# ----- layers -----------------------------------------------------------------------------


def need_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("OPSKIT_CI"):
            pytest.fail("whiteouts and trusted.overlay.* attributes need root")
        pytest.skip("whiteouts and trusted.overlay.* attributes need root")


def test_a_layer_is_copied_and_restored_with_whiteouts_and_opaque_directories(
    tmp_path: Path,
) -> None:
    need_root()
    upper = tmp_path / "hosts" / "ai" / "upper"
    work = tmp_path / "hosts" / "ai" / "work" / "etc"
    (upper / "etc" / "apt").mkdir(parents=True)
    work.mkdir(parents=True)
    (work / "work").mkdir()
    (upper / "etc" / "note").write_text("before\n")
    os.chmod(upper / "etc" / "note", 0o640)
    os.mknod(upper / "etc" / "hostname", 0o600 | stat.S_IFCHR, os.makedev(0, 0))  # a whiteout
    os.setxattr(upper / "etc" / "apt", "trusted.overlay.opaque", b"y")
    layers.take(tmp_path, "ai", "pre")
    (upper / "etc" / "note").write_text("after\n")
    (upper / "etc" / "hostname").unlink()
    (upper / "etc" / "new").write_text("patched\n")
    shutil.rmtree(upper / "etc" / "apt")

    assert layers.restore(tmp_path, "ai", "pre")
    assert (upper / "etc" / "note").read_text() == "before\n"
    assert stat.S_IMODE((upper / "etc" / "note").stat().st_mode) == 0o640
    whiteout = os.lstat(upper / "etc" / "hostname")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == os.makedev(0, 0)
    assert os.getxattr(upper / "etc" / "apt", "trusted.overlay.opaque") == b"y"
    assert not (upper / "etc" / "new").exists()
    assert list(work.iterdir()) == []  # overlayfs's work directory starts empty
    assert layers.snapshots(tmp_path, "ai") == ["pre"]
    assert not layers.restore(tmp_path, "ai", "never-taken")
    layers.delete(tmp_path, "ai", "pre")
    assert layers.snapshots(tmp_path, "ai") == []
    with pytest.raises(LayerError):
        layers.take(tmp_path, "ai", "../escape")


# ----- apt --------------------------------------------------------------------------------


def need_dpkg_dev() -> None:
    missing = [t for t in apt.TOOLS if shutil.which(t) is None]
    if missing:
        message = f"the lab's apt repository needs {', '.join(missing)} (Debian: dpkg-dev)"
        if os.environ.get("OPSKIT_CI"):
            pytest.fail(message)
        pytest.skip(message)


def test_the_repository_offers_each_host_its_own_set(tmp_path: Path) -> None:
    need_dpkg_dev()
    repo = tmp_path / "apt"
    apt.build(repo, ["ai", "dev"], "amd64")
    debs = sorted(p.name for p in (repo / "pool").glob("*.deb"))
    assert debs == sorted(p.deb for p in apt.PACKAGES)
    postinst = subprocess.run(
        ["dpkg-deb", "--ctrl-tarfile", str(repo / "pool" / apt.DEMO_1_1.deb)],
        capture_output=True,
        check=True,
    ).stdout
    assert b"/var/run/reboot-required" in postinst
    field = subprocess.run(
        ["dpkg-deb", "-f", str(repo / "pool" / apt.BROKEN_1_1.deb), "Version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert field == "1.1\n"

    def offered(host: str) -> list[str]:
        index = repo / "dists" / host / "main" / "binary-amd64" / "Packages"
        text = index.read_text()
        assert gzip.decompress((index.parent / "Packages.gz").read_bytes()).decode() == text
        release = (repo / "dists" / host / "Release").read_text()
        assert f"{hashlib.sha256(text.encode()).hexdigest()} " in release
        return [
            line.split(": ")[1]
            for line in text.splitlines()
            if line.startswith(("Package:", "Version:"))
        ]

    assert offered("dev") == [
        "opskit-lab-demo",
        "1.0",
        "opskit-lab-demo",
        "1.1",
        "opskit-lab-broken",
        "1.0",
    ]
    release = repo / "dists" / "dev" / "Release"
    stamp = release.stat().st_mtime
    assert apt.offer(repo, ["dev"], "broken") == {"ai": "upgrade", "dev": "broken"}
    assert offered("dev")[-2:] == ["opskit-lab-broken", "1.1"]
    assert offered("ai")[-2:] == ["opskit-lab-broken", "1.0"]
    # apt asks with If-Modified-Since in whole seconds: a changed index is a second newer.
    assert release.stat().st_mtime >= stamp + 1
    apt.offer(repo, ["dev"], "none")
    assert offered("dev") == ["opskit-lab-demo", "1.0", "opskit-lab-broken", "1.0"]
    with pytest.raises(AptError, match="no host 'nas'"):
        apt.offer(repo, ["nas"], "none")
    with pytest.raises(AptError, match="unknown offer"):
        apt.offer(repo, ["dev"], "everything")
    # The same packages, the same bytes: builds are repeatable.
    again = tmp_path / "again"
    apt.build(again, ["ai"], "amd64")
    for deb in debs:
        assert (again / "pool" / deb).read_bytes() == (repo / "pool" / deb).read_bytes(), deb


def test_preinstalled_packages_are_what_dpkg_would_leave(tmp_path: Path) -> None:
    def place(rel: str) -> Path:
        target = tmp_path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    apt.preinstall(place)
    status = (tmp_path / "var/lib/dpkg/status").read_text()
    machine = Path("/var/lib/dpkg/status")
    if machine.exists():
        assert status.startswith(machine.read_text().rstrip("\n"))
    stanzas = {s.split("\n", 1)[0]: s for s in status.split("\n\n")}
    demo = stanzas["Package: opskit-lab-demo"]
    assert "Status: install ok installed\n" in demo and "Version: 1.0\n" in demo
    listing = (tmp_path / "var/lib/dpkg/info/opskit-lab-demo.list").read_text().splitlines()
    assert listing == [
        "/.",
        "/usr",
        "/usr/share",
        "/usr/share/opskit-lab-demo",
        "/usr/share/opskit-lab-demo/version",
    ]
    sums = (tmp_path / "var/lib/dpkg/info/opskit-lab-demo.md5sums").read_text()
    digest = hashlib.md5(b"1.0\n").hexdigest()
    assert sums == f"{digest}  usr/share/opskit-lab-demo/version\n"
    assert (tmp_path / "usr/share/opskit-lab-demo/version").read_text() == "1.0\n"
    # dpkg itself reads the database: the packages are installed at 1.0 there.
    shown = subprocess.run(
        ["dpkg-query", f"--admindir={tmp_path / 'var/lib/dpkg'}", "-W", "opskit-lab-*"],
        capture_output=True,
        text=True,
    )
    assert shown.stdout.split() == ["opskit-lab-broken", "1.0", "opskit-lab-demo", "1.0"]
