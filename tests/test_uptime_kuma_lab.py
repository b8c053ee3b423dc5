"""Uptime Kuma in the lab, end to end: the stand-in runs on the docker host (a unit of its own,
as the inventory places Uptime Kuma), the lab's inventory names it, and a run opens and closes
a window over the monitors of the targets it changes; a dry run sends it nothing that changes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from labkit import Lab, lab_up
from opskit.lab.uptime_kuma import LOG, MUTATING

RUNBOOK = """
name: kuma-window
targets: [docker, ai]
steps:
  - id: quiet
    uptime_kuma.maintenance: {}
  - id: quiet-while-open
    check.uptime_kuma: {maintenance_ok: true}
"""
WATCHED = """
name: kuma-watched
targets: [docker, ai]
steps:
  - id: up
    check.uptime_kuma: {}
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from lab_up(tmp_path_factory.mktemp("kuma-lab"), suffix="k")


def events(lab: Lab) -> list[dict[str, object]]:
    log = lab.root / "hosts" / "docker" / "upper" / LOG
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line]


def test_a_run_in_the_lab_opens_and_closes_a_window_over_its_targets_monitors(
    lab: Lab, tmp_path: Path
) -> None:
    # the lab's inventory names it behind Traefik: the name the inventory gives it, which
    # resolves in the lab to the docker host (Traefik's), at the service's port
    inventory = (lab.root / "inventory.yaml").read_text()
    assert "url: http://uptime.tail0000.ts.net:3001" in inventory
    hosts = (lab.root / "hosts.txt").read_text().splitlines()
    assert any(
        line.split()[0] == lab.address("docker") and "uptime.tail0000.ts.net" in line.split()
        for line in hosts
    )
    (tmp_path / "kuma-window.yaml").write_text(RUNBOOK.lstrip())
    (tmp_path / "kuma-watched.yaml").write_text(WATCHED.lstrip())
    dry = lab.opskit("--runbooks", str(tmp_path), "run", "kuma-window", "--lab", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "maintenance window for the run over docker traefik" in dry.stdout
    sent = [str(e["event"]) for e in events(lab)]
    assert "login" in sent and not set(sent) & MUTATING

    done = lab.opskit("--runbooks", str(tmp_path), "run", "kuma-window", "--lab", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    after = events(lab)[len(sent) :]
    changed = [str(e["event"]) for e in after if e["event"] in MUTATING]
    assert changed[0] == "addMaintenance" and changed[-1] == "deleteMaintenance"
    links = [e for e in after if e["event"] == "addMonitorMaintenance"]
    seed = json.loads(
        (
            lab.root / "hosts" / "docker" / "upper" / "etc/opskit-lab/uptime-kuma-monitors.json"
        ).read_text()
    )
    names = {i + 1: m["name"] for i, m in enumerate(seed)}
    linked = {names[m["id"]] for m in links[-1]["args"][1]}  # type: ignore[index]
    assert linked == {n for n in names.values() if n.split()[0] in ("docker", "ai")}
    assert "closed (the run ended)" in done.stdout + done.stderr
    password = (lab.root / "secrets" / "uptime-kuma-password").read_text().strip()
    assert password not in done.stdout + done.stderr + json.dumps(events(lab))
    # closed: every monitor is watched again (up, not under maintenance)
    up = lab.opskit("--runbooks", str(tmp_path), "run", "kuma-watched", "--lab", "--yes")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "docker traefik up" in up.stdout and "maintenance" not in up.stdout
