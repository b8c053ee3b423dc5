"""The read-only guarantee, end to end: a dry run of every shipped runbook, in the lab, on a
fresh lab and again once agents are installed, sends Proxmox no request but GETs (fakepve's own
request log), leaves every Beszel hub record as it was (`updated` included), and every host's
copy-on-write layer byte-identical."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from labkit import Lab, lab_up
from test_beszel_lab import hub, layers
from test_patch_lab import kuma_changes

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
# Every shipped runbook, with each choice of its params that plans something else.
DRY_RUNS: list[tuple[str, tuple[str, ...]]] = [
    ("deploy-proxmoxmcp", ()),
    ("deploy-proxmoxmcp", ("-p", "method=docker")),
    ("health", ()),
    ("install-beszel-agents", ()),
    ("patch-guests", ()),
    ("uninstall-beszel-agent", ()),
    ("vm-power", ("-p", "action=start")),
    ("vm-power", ("-p", "action=shutdown")),
    ("vm-power", ("-p", "action=reboot")),
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from lab_up(tmp_path_factory.mktemp("dry"), suffix="d")


def test_the_list_holds_every_shipped_runbook() -> None:
    shipped = {p.stem for p in (REPO / "runbooks").glob("*.yaml")}
    assert {name for name, _ in DRY_RUNS} == shipped


def _requests(lab: Lab) -> list[dict[str, object]]:
    served = lab.root / "pve" / "requests.jsonl"  # written from fakepve's first request on
    lines = served.read_text().splitlines() if served.exists() else []
    return [json.loads(line) for line in lines]


def _dry_runs_change_nothing(lab: Lab) -> list[str]:
    summaries = []
    for name, params in DRY_RUNS:
        before = (layers(lab), hub(lab), kuma_changes(lab))
        seen = len(_requests(lab))
        done = lab.opskit("run", name, "--lab", "--dry-run", *params)
        text = done.stdout + done.stderr
        assert done.returncode in (0, 1), text  # 1: a plan with blockers is still a plan
        assert "dry run: nothing was changed" in text or "blocker" in text, text
        sent = _requests(lab)[seen:]
        assert {r["method"] for r in sent} <= {"GET"}, (name, params, sent)
        assert (layers(lab), hub(lab), kuma_changes(lab)) == before, (name, params)
        summaries.append(f"{name} {' '.join(params)}: exit {done.returncode}, {len(sent)} GETs")
    return summaries


def test_every_dry_run_on_a_fresh_lab_sends_no_change(lab: Lab) -> None:
    print("\n".join(_dry_runs_change_nothing(lab)))


def test_every_dry_run_with_agents_installed_sends_no_change(lab: Lab) -> None:
    done = lab.opskit("run", "install-beszel-agents", "--lab", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    up = lab.opskit("run", "vm-power", "--lab", "--yes", "-p", "action=start")
    assert up.returncode == 0, up.stdout + up.stderr
    print("\n".join(_dry_runs_change_nothing(lab)))
