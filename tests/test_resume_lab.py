"""Every shipped runbook, killed mid-run (SIGKILL, and SIGTERM) and resumed, in the lab.

Each run is started as the README shows it (`opskit run RUNBOOK --lab --yes`, `vm-power -p
action=reboot --limit vm:110`), killed once the journal shows it mid-run, and resumed with
`opskit resume RUN_ID --lab --yes`; then the world is what an uninterrupted run leaves: the
checks pass, a second plan has nothing to change, and the hosts, the hub and Proxmox say so.

One lab for the module; the tests run in order and build on each other (deploy, install the
agents, health, power, uninstall). Select them with `pytest -m fault`.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from labkit import REPO, Lab, lab_up
from test_beszel_lab import MONITORED, banners, hub
from test_deploy_proxmoxmcp import mcp, pve

pytestmark = [pytest.mark.integration, pytest.mark.fault]

Statuses = dict[tuple[str, str], str]
DONE = {"succeeded", "unchanged", "skipped"}
# The lab runs no MoltBot, Traefik, Uptime Kuma, Homelab-MCP or SSH Orchestrator (on docker
# and ai): health is judged on the hosts whose every service the lab has.
HEALTHY = "tag:monitored,!docker,!ai"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from lab_up(tmp_path_factory.mktemp("resume"), suffix="r")


# --- driving runs --------------------------------------------------------------------------


def journal(lab: Lab, since: float) -> tuple[str, Statuses] | None:
    """The newest run started since `since`, read from the lab's journal as it is written
    (read-only: WAL lets the run commit meanwhile)."""
    path = lab.state_dir / "journal.db"
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            row = db.execute(
                "SELECT id FROM runs WHERE started_at >= ? ORDER BY started_at DESC LIMIT 1",
                (since,),
            ).fetchone()
            if row is None:
                return None
            steps = db.execute(
                "SELECT target, step_id, status FROM steps WHERE run_id = ?", (row[0],)
            ).fetchall()
        finally:
            db.close()
    except sqlite3.OperationalError:  # the file exists, its tables not yet
        return None
    return str(row[0]), {(t, s): status for t, s, status in steps}


def steps_of(lab: Lab, run_id: str) -> Statuses:
    """A finished run's steps and their statuses, from the journal."""
    db = sqlite3.connect(f"file:{lab.state_dir / 'journal.db'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT target, step_id, status FROM steps WHERE run_id = ?", (run_id,)
        ).fetchall()
    finally:
        db.close()
    return {(t, s): status for t, s, status in rows}


def kill_mid_run(
    lab: Lab, tmp: Path, sig: int, until: Callable[[Statuses], bool], *args: str
) -> tuple[str, str]:
    """`opskit ARGS` in the background, sent `sig` once its journal satisfies `until`:
    (run id, what it printed)."""
    out = tmp / f"out-{time.monotonic_ns()}.txt"
    since = time.time() - 1
    with out.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "opskit", *args],
            cwd=REPO,
            env=lab.env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                seen = journal(lab, since)
                if seen is not None and until(seen[1]):
                    break
                assert proc.poll() is None, f"it ended first: {out.read_text()}"
                assert time.monotonic() < deadline, f"never got there: {seen}"
                time.sleep(0.05)
            proc.send_signal(sig)
            code = proc.wait(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    printed = out.read_text()
    # SIGKILL: the process is gone at once; SIGTERM: the engine stops starting steps, lets the
    # running ones finish and journals the run interrupted (exit 130).
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 130), (code, printed)
    return seen[0], printed


def opskit(lab: Lab, *args: str) -> tuple[int, str]:
    done = lab.opskit(*args)
    return done.returncode, done.stdout + done.stderr


def history_row(listed: str, run_id: str) -> list[str]:
    """A run's row of `opskit history`: RUN RUNBOOK STARTED(2) BY TOOK STATUS EXIT STEPS..."""
    (line,) = [line for line in listed.splitlines() if line.startswith(run_id)]
    return line.split()


def killed_then_resumed(lab: Lab, run_id: str, sig: int) -> Statuses:
    """`resume` finishes the run, and history is honest about both: the resumed run's steps."""
    steps = steps_of(lab, run_id)
    assert set(steps.values()) & DONE, steps  # it got somewhere,
    assert set(steps.values()) - DONE, steps  # and not to the end
    code, text = opskit(lab, "resume", run_id, "--lab", "--yes")
    assert code == 0, text
    assert "Traceback" not in text
    (summary,) = [line for line in text.splitlines() if " succeeded in " in line]
    resumed_id = summary.split()[1]
    # What the killed run finished is not done again; the rest is.
    again = steps_of(lab, resumed_id)
    for key, status in steps.items():
        if status in DONE:
            assert again[key] == "skipped", (key, again[key])
    code, listed = opskit(lab, "history", "--lab", "-n", "100")
    assert code == 0, listed
    # A SIGKILLed run never recorded an exit code (`-`); a SIGTERMed one ended interrupted.
    killed = history_row(listed, run_id)
    assert killed[6:8] == (["killed", "-"] if sig == signal.SIGKILL else ["interrupted", "130"])
    # The resumed run: history counts its steps as the summary the resume printed did.
    resumed = history_row(listed, resumed_id)
    assert resumed[6:8] == ["succeeded", "0"], resumed
    assert " ".join(resumed[8:]) == summary.split(": ", 1)[1], (resumed, summary)
    return again


def changes(lab: Lab, runbook: str, *args: str) -> list[str]:
    """What a fresh plan would still change (nothing, once the world has converged)."""
    code, text = opskit(lab, "plan", runbook, "--lab", "--format", "json", *args)
    assert code == 0, text
    plan = json.loads(text[text.index("{") :])
    return [
        f"{t['target']} {s['id']}: {s['change']['summary']}"
        for t in plan["targets"]
        for s in t["steps"]
        if s["risk"] != "read" and not s["skipped"] and s["change"]["kind"] != "none"
    ]


def of(step: str, step_id: str) -> bool:
    """Whether a journaled step id is `step` or one of its loop items (`tcp[beszel-agent]`)."""
    return step_id == step or step_id.startswith(step + "[")


def count(status: str, step: str) -> Callable[[Statuses], int]:
    return lambda seen: sum(1 for (_, s), v in seen.items() if of(step, s) and v == status)


def status_of(seen: Statuses, target: str, step: str) -> str | None:
    return next((v for (t, s), v in seen.items() if t == target and of(step, s)), None)


def ssh_runbook(lab: Lab, tmp: Path, name: str, cmd: str) -> list[str]:
    """`--runbooks DIR` holding a one-step runbook running `cmd` on its targets."""
    directory = tmp / f"runbooks-{name}"
    directory.mkdir(exist_ok=True)
    (directory / f"{name}.yaml").write_text(
        textwrap.dedent(f"""
        name: {name}
        description: the operator's hand, for the test
        targets: all
        steps:
          - id: do
            ssh.run: {{cmd: {json.dumps(cmd)}}}
        """)
    )
    return ["--runbooks", str(directory), "run", name, "--lab", "--yes"]


# --- the runbooks, in the order a homelab meets them --------------------------------------


def nodes_answer(lab: Lab) -> bool:
    status, body = mcp(lab, "/get_nodes", "POST")
    return status == 200 and "pve" in body


def test_deploy_killed_mid_install_resumes_to_an_answering_proxmoxmcp(
    lab: Lab, tmp_path: Path
) -> None:
    # SIGKILL while pip installs the release on the host (its longest step).
    run_id, _ = kill_mid_run(
        lab,
        tmp_path,
        signal.SIGKILL,
        lambda s: s.get(("ai", "venv")) == "started",
        "run",
        "deploy-proxmoxmcp",
        "--lab",
        "--yes",
    )
    assert steps_of(lab, run_id)[("ai", "ssh")] == "succeeded"
    killed_then_resumed(lab, run_id, signal.SIGKILL)
    assert nodes_answer(lab)
    assert changes(lab, "deploy-proxmoxmcp") == []


def test_deploy_terminated_while_it_restarts_resumes_to_an_answering_proxmoxmcp(
    lab: Lab, tmp_path: Path
) -> None:
    # Someone edits the API key on the host: the deploy rewrites it and restarts the service;
    # SIGTERM arrives while the restarted service is being waited for.
    code, text = opskit(
        lab,
        *ssh_runbook(
            lab,
            tmp_path,
            "tamper",
            (
                "sed -i 's/^PROXMOX_API_KEY=.*/PROXMOX_API_KEY=edited-by-hand/'"
                " /etc/proxmoxmcp/proxmoxmcp.env"
            ),
        ),
        "--limit",
        "ai",
    )
    assert code == 0, text
    run_id, printed = kill_mid_run(
        lab,
        tmp_path,
        signal.SIGTERM,
        lambda s: s.get(("ai", "start")) in DONE,
        "run",
        "deploy-proxmoxmcp",
        "--lab",
        "--yes",
    )
    assert "interrupted: starting nothing new" in printed
    killed_then_resumed(lab, run_id, signal.SIGTERM)
    assert nodes_answer(lab)
    assert changes(lab, "deploy-proxmoxmcp") == []


def installed(lab: Lab) -> None:
    assert banners(lab, MONITORED) == dict.fromkeys(MONITORED, "SSH-2.0-beszel_0.18.8")
    systems = hub(lab)["systems"]
    assert sorted(s["name"] for s in systems) == sorted(MONITORED)
    assert all(s["host"] == lab.address(s["name"]) for s in systems)
    assert changes(lab, "install-beszel-agents") == []


def uninstalled(lab: Lab) -> None:
    assert all(b.startswith("error") for b in banners(lab, MONITORED).values())
    assert hub(lab)["systems"] == []
    assert changes(lab, "uninstall-beszel-agent") == []


def in_the_second_batch(seen: Statuses, step: str) -> bool:
    """A rollout of two at a time with the first batch done and the second under way."""
    return count("succeeded", step)(seen) >= 2 and count("started", "agent")(seen) >= 1


def kill_beszel(lab: Lab, tmp: Path, sig: int, runbook: str, step: str) -> None:
    run_id, _ = kill_mid_run(
        lab,
        tmp,
        sig,
        lambda seen: in_the_second_batch(seen, step),
        "run",
        runbook,
        "--lab",
        "--yes",
    )
    if runbook == "install-beszel-agents":
        # Its params default to null (the version comes from the inventory's vars): resume
        # takes them as the run had them (it exited 2: `param version: expected a string,
        # got None`).
        db = sqlite3.connect(f"file:{lab.state_dir / 'journal.db'}?mode=ro", uri=True)
        (params,) = db.execute("SELECT params FROM runs WHERE id = ?", (run_id,)).fetchone()
        db.close()
        assert json.loads(params) == dict.fromkeys(("hub_url", "release_url", "version"))
    killed_then_resumed(lab, run_id, sig)


def test_beszel_install_killed_mid_rollout_resumes_to_every_agent_registered(
    lab: Lab, tmp_path: Path
) -> None:
    kill_beszel(lab, tmp_path, signal.SIGKILL, "install-beszel-agents", "hub-sees-it")
    installed(lab)


def test_beszel_uninstall_terminated_mid_rollout_resumes_to_nothing_left(
    lab: Lab, tmp_path: Path
) -> None:
    kill_beszel(lab, tmp_path, signal.SIGTERM, "uninstall-beszel-agent", "unregister")
    uninstalled(lab)


def test_beszel_install_terminated_mid_rollout_resumes_to_every_agent_registered(
    lab: Lab, tmp_path: Path
) -> None:
    kill_beszel(lab, tmp_path, signal.SIGTERM, "install-beszel-agents", "hub-sees-it")
    installed(lab)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_health_killed_while_a_check_retries_resumes_to_passing_checks(
    lab: Lab, tmp_path: Path, sig: int
) -> None:
    # One agent is down: its check retries (2 s apart) while the others pass; the run is
    # killed then, the agent comes back, and the resumed run checks what was left.
    code, text = opskit(
        lab, *ssh_runbook(lab, tmp_path, "stop", "systemctl stop beszel-agent"), "--limit", "media"
    )
    assert code == 0, text
    run_id, _ = kill_mid_run(
        lab,
        tmp_path,
        sig,
        lambda s: count("succeeded", "tcp")(s) >= 3 and status_of(s, "media", "tcp") == "started",
        "run",
        "health",
        "--lab",
        "--limit",
        HEALTHY,
    )
    code, text = opskit(
        lab,
        *ssh_runbook(lab, tmp_path, "start", "systemctl start beszel-agent"),
        "--limit",
        "media",
    )
    assert code == 0, text
    again = killed_then_resumed(lab, run_id, sig)
    assert status_of(again, "media", "tcp") == "succeeded", again


def test_beszel_uninstall_killed_mid_rollout_resumes_to_nothing_left(
    lab: Lab, tmp_path: Path
) -> None:
    kill_beszel(lab, tmp_path, signal.SIGKILL, "uninstall-beszel-agent", "unregister")
    uninstalled(lab)


def guest_status(lab: Lab) -> str:
    return str(pve(lab, "/nodes/pve/qemu/110/status/current")["status"])  # type: ignore[index]


def test_vm_power_killed_mid_reboot_resumes_to_a_running_guest(lab: Lab, tmp_path: Path) -> None:
    # The README's own example; the guest takes 2 s to go down (the lab's fakepve).
    run_id, _ = kill_mid_run(
        lab,
        tmp_path,
        signal.SIGKILL,
        lambda s: s.get(("ai", "reboot")) == "started",
        "run",
        "vm-power",
        "-p",
        "action=reboot",
        "--limit",
        "vm:110",
        "--lab",
        "--yes",
    )
    again = killed_then_resumed(lab, run_id, signal.SIGKILL)
    # Whether the killed reboot happened the journal cannot know, and a reboot is never "no
    # change": resume rebooted again, and its verify step saw the guest running.
    assert again == {
        ("ai", "start"): "skipped",
        ("ai", "shutdown"): "skipped",
        ("ai", "reboot"): "succeeded",
        ("ai", "state"): "succeeded",
    }, again
    assert guest_status(lab) == "running"


def test_vm_power_terminated_mid_shutdown_resumes_to_a_stopped_guest(
    lab: Lab, tmp_path: Path
) -> None:
    run_id, _ = kill_mid_run(
        lab,
        tmp_path,
        signal.SIGTERM,
        lambda s: s.get(("ai", "shutdown")) == "started",
        "run",
        "vm-power",
        "-p",
        "action=shutdown",
        "--limit",
        "vm:110",
        "--lab",
        "--yes",
    )
    # The running shutdown finished in its grace period; the verify step never started.
    steps = steps_of(lab, run_id)
    assert (steps[("ai", "shutdown")], steps[("ai", "state")]) == ("succeeded", "not run"), steps
    killed_then_resumed(lab, run_id, signal.SIGTERM)
    assert guest_status(lab) == "stopped"
    assert changes(lab, "vm-power", "-p", "action=shutdown", "--limit", "vm:110") == []
    code, text = opskit(lab, "run", "vm-power", "--limit", "vm:110", "--lab", "--yes")
    assert code == 0, text
    assert guest_status(lab) == "running"
