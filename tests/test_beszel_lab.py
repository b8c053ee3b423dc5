"""install-beszel-agents and uninstall-beszel-agent end to end, in the lab.

Real parts throughout: sshd hosts in namespaces with the lab's systemctl stand-in, the release
mirror with checksummed archives, PocketBase with Beszel's collections as the hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labkit import Lab, lab_up

MONITORED = ["docker", "homeassistant", "media", "ai", "dev", "pve"]
HUB_RECORDS = """
import json, sys, httpx
url, email, password = sys.argv[1:4]
with httpx.Client(base_url=url, timeout=10) as http:
    token = http.post("/api/collections/_superusers/auth-with-password",
                      json={"identity": email, "password": password}).json()["token"]
    out = {}
    for name in ("systems", "fingerprints"):
        got = http.get(f"/api/collections/{name}/records", params={"perPage": 500},
                       headers={"Authorization": token})
        out[name] = got.json()["items"]
print(json.dumps(out))
"""
BANNERS = """
import json, socket, sys
out = {}
for endpoint in sys.argv[1:]:
    host, port = endpoint.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=3) as s:
            out[endpoint] = s.recv(200).decode(errors="replace").strip()
    except OSError as exc:
        out[endpoint] = f"error: {exc}"
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from lab_up(tmp_path_factory.mktemp("beszel-lab"), suffix="b")


def hub(lab: Lab, script: str = HUB_RECORDS) -> Any:
    service = next(s for s in lab.state["services"] if s["name"] == "beszel-hub")  # type: ignore[union-attr]
    secret = lab.root / "secrets"
    done = lab.inside(
        sys.executable,
        "-c",
        script,
        str(service["url"]),
        (secret / "hub-email").read_text().strip(),
        (secret / "hub-password").read_text().strip(),
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def banners(lab: Lab, hosts: list[str]) -> dict[str, str]:
    endpoints = {f"{lab.address(h)}:45876": h for h in hosts}
    done = lab.inside(sys.executable, "-c", BANNERS, *endpoints)
    assert done.returncode == 0, done.stderr
    return {endpoints[e]: b for e, b in json.loads(done.stdout).items()}


def layers(lab: Lab) -> str:
    """Every file of every host's copy-on-write layer (names, modes, contents), but the lab's
    Uptime Kuma's log of the events it received (a dry run logs in: tests read that log to
    show that nothing it was sent changes anything)."""
    from opskit.lab.uptime_kuma import LOG

    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(lab.root / "hosts"):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if str(path).endswith("/upper/" + LOG):
                continue
            st = path.lstat()
            digest.update(f"{path}:{st.st_mode}:{st.st_size}".encode())
            if path.is_file() and not path.is_symlink():
                digest.update(path.read_bytes())
    return digest.hexdigest()


def run(lab: Lab, *args: str) -> str:
    done = lab.opskit(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_a_tampered_release_is_refused_and_nothing_is_installed(lab: Lab) -> None:
    archive = lab.root / "mirror" / "beszel" / "v0.18.8" / "beszel-agent_linux_amd64.tar.gz"
    good = archive.read_bytes()
    archive.write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])
    try:
        done = lab.opskit("run", "install-beszel-agents", "--lab", "--yes", "--limit", "dev")
    finally:
        archive.write_bytes(good)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "sha256" in done.stdout + done.stderr
    upper = lab.root / "hosts" / "dev" / "upper"
    assert not (upper / "opt" / "beszel-agent").exists()
    assert not (upper / "etc" / "systemd" / "system" / "beszel-agent.service").exists()
    passwd = upper / "etc" / "passwd"
    assert not passwd.exists() or "beszel:" not in passwd.read_text()
    assert "dev" not in [s["name"] for s in hub(lab)["systems"]]


def test_a_dry_run_changes_no_host_and_no_record(lab: Lab) -> None:
    before_layers, before_hub = layers(lab), hub(lab)
    out = run(lab, "run", "install-beszel-agents", "--lab", "--dry-run")
    assert "install Beszel agent 0.18.8" in out
    assert "dry run: nothing was changed" in out
    # The probes asked the hub (with the lab's credentials), and wrote nothing: every record
    # is as it was, `updated` timestamps included; every host's layer is byte-identical.
    assert "add system ai (" in out
    assert layers(lab) == before_layers
    assert hub(lab) == before_hub


def test_install_puts_an_agent_on_every_monitored_host_and_registers_it(lab: Lab) -> None:
    out = run(lab, "run", "install-beszel-agents", "--lab", "--yes")
    assert "0 failed" in out, out
    seen = banners(lab, MONITORED)
    assert seen == dict.fromkeys(MONITORED, "SSH-2.0-beszel_0.18.8"), seen
    systems = hub(lab)["systems"]
    assert sorted(s["name"] for s in systems) == sorted(MONITORED)
    for record in systems:
        assert record["host"] == lab.address(str(record["name"]))
        assert str(record["port"]) == "45876"
    # The agent runs as its own user, under the stand-in's supervision, from the pinned build.
    upper = lab.root / "hosts" / "ai" / "upper"
    assert (upper / "opt" / "beszel-agent" / "beszel-agent").is_file()
    unit = (upper / "etc" / "systemd" / "system" / "beszel-agent.service").read_text()
    assert "User=beszel" in unit and "KEY=" in unit
    # The lab gives the agents a TOKEN: in a 0600 EnvironmentFile, never in the unit.
    token = (lab.root / "secrets" / "agent-token").read_text().strip()
    env_file = upper / "etc" / "beszel-agent.env"
    assert env_file.read_text() == f"TOKEN={token}\n"
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert token not in unit
    assert token.encode() not in b"".join(
        p.read_bytes() for p in lab.state_dir.rglob("*") if p.is_file()
    )


def test_a_second_run_plans_no_change(lab: Lab) -> None:
    done = lab.opskit("plan", "install-beszel-agents", "--lab", "--format", "json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    changing = [
        (t["target"], s["id"], s["change"]["kind"])
        for t in plan["targets"]
        for s in t["steps"]
        if s["risk"] != "read" and s["change"]["kind"] != "none"
    ]
    assert changing == []
    assert len(hub(lab)["systems"]) == len(MONITORED)


def test_another_version_upgrades_and_uninstall_removes_it(lab: Lab) -> None:
    out = run(
        lab,
        "run",
        "install-beszel-agents",
        "--lab",
        "--yes",
        "-p",
        "version=0.18.7",
        "--limit",
        "media",
    )
    assert "0.18.8 -> 0.18.7" in out
    assert banners(lab, ["media"]) == {"media": "SSH-2.0-beszel_0.18.7"}
    out = run(lab, "run", "uninstall-beszel-agent", "--lab", "--yes", "--limit", "media")
    assert "0 failed" in out
    assert banners(lab, ["media"])["media"].startswith("error")
    upper = lab.root / "hosts" / "media" / "upper"
    assert not (upper / "opt" / "beszel-agent" / "beszel-agent").exists()
    assert "media" not in [s["name"] for s in hub(lab)["systems"]]
