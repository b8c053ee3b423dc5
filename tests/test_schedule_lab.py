"""The installed unit, run as systemd would run it, in the lab: its ExecStart with the unit's
Environment= and EnvironmentFile= only, no terminal, another working directory, inside the
lab's controller namespace (a lab inventory acts only there). Gates, approvals and
notifications end to end; the shipped health runbook tells a real receiver what failed."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from labkit import REPO, Lab, lab_up
from test_notify import Receiver, start_receiver

# systemd's own PATH for services; nothing else of the caller's environment.
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MARK = "/opt/opskit-scheduled/mark"

MARKER = f"""
name: marker
description: a gated change on one lab host
targets: [docker]
schedule:
  on: "*:0/15"
  approve: APPROVE
  notify:
    on: [failure, approval, success]
    urls: [env:MARKER_NTFY]
steps:
  - id: mark
    ssh.run: {{cmd: "mkdir -p /opt/opskit-scheduled && hostname > {MARK}", creates: {MARK}}}
    confirm: "Mark {{{{ target.name }}}}?"
verify:
  - id: marked
    check.command: {{cmd: "cat {MARK}", contains: docker}}
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from lab_up(tmp_path_factory.mktemp("schedlab"), suffix="s")


@pytest.fixture
def receiver(lab: Lab, tmp_path: Path) -> Iterator[Receiver]:
    """A receiver on the loopback of the lab's controller namespace: where the run is."""
    found = start_receiver(tmp_path / "received.jsonl", ["ip", "netns", "exec", lab.controller_ns])
    yield found
    found.process.terminate()
    found.process.wait(timeout=10)


def systemd_words(value: str) -> list[str]:
    """ExecStart=/Environment= words as systemd reads what opskit writes: quoted words,
    `%%` for `%` and `$$` for `$`."""
    return [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(value)]


def unit_settings(path: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def run_as_the_unit(lab: Lab, service: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    settings = unit_settings(service)
    env = {"PATH": SYSTEMD_PATH}
    for value in settings.get("Environment", []):
        for word in systemd_words(value):
            key, _, val = word.partition("=")
            env[key] = val
    for value in settings["EnvironmentFile"]:
        for line in Path(systemd_words(value)[0]).read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                key, _, val = line.partition("=")
                env[key.strip()] = val
    (command,) = settings["ExecStart"]
    return subprocess.run(
        ["ip", "netns", "exec", lab.controller_ns, *systemd_words(command)],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        capture_output=True,
        text=True,
        timeout=600,
    )


def lab_secrets(lab: Lab) -> dict[str, str]:
    from opskit.lab.core import ENV_SECRETS

    out = {}
    for var, name in ENV_SECRETS.items():
        path = lab.root / "secrets" / name
        if path.exists():
            out[var] = path.read_text().strip()
    return out


def install(lab: Lab, runbooks: Path, units: Path, env_dir: Path, state: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "opskit",
            "--runbooks",
            str(runbooks),
            "--inventory",
            str(lab.root / "inventory.yaml"),
            "schedule",
            "install",
            "--unit-dir",
            str(units),
            "--env-dir",
            str(env_dir),
        ],
        cwd=REPO,
        env={**lab.env, "OPSKIT_STATE_DIR": str(state)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def history(state: Path) -> list[dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-m", "opskit", "history", "--json"],
        cwd=REPO,
        env={**os.environ, "OPSKIT_STATE_DIR": str(state)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def show_run(state: Path, run_id: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "opskit", "show-run", run_id, "--json"],
        cwd=REPO,
        env={**os.environ, "OPSKIT_STATE_DIR": str(state)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_the_units_execstart_runs_a_gated_runbook_in_the_lab(lab, receiver, tmp_path):
    runbooks, units, env_dir, state = (tmp_path / n for n in ("runbooks", "units", "env", "st"))
    runbooks.mkdir()
    (runbooks / "marker.yaml").write_text(MARKER.replace("APPROVE", "{}"))
    install(lab, runbooks, units, env_dir, state)
    service = units / "opskit-marker.service"
    # the operator's part: the secrets file opskit created empty
    env_file = env_dir / "marker.env"
    secrets = lab_secrets(lab)
    ntfy = f"ntfy://127.0.0.1:{receiver.port}/marker"
    env_file.write_text(
        env_file.read_text()
        + "".join(f"{k}={v}\n" for k, v in secrets.items())
        + f"MARKER_NTFY={ntfy}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    upper_mark = lab.root / "hosts" / "docker" / "upper" / MARK.lstrip("/")

    # 1. the gate is not covered by approve: fails closed before any change, says so
    refused = run_as_the_unit(lab, service, elsewhere)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "needs approval" in refused.stderr and "docker: step mark" in refused.stderr
    assert not upper_mark.exists()
    (request,) = receiver.requests()
    message = json.loads(str(request["body"]))
    assert message["title"] == "opskit: scheduled run of marker needs approval"
    runs = history(state)
    assert runs[0]["status"] == "needs approval" and runs[0]["scheduled"] is True
    assert f"run: {runs[0]['id']}" in message["message"]
    assert "docker: step mark" in message["message"]

    # 2. covered by a standing approval: it runs, end to end, as the unit runs it
    (runbooks / "marker.yaml").write_text(MARKER.replace("APPROVE", "{steps: [mark]}"))
    install(lab, runbooks, units, env_dir, state)
    done = run_as_the_unit(lab, service, elsewhere)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "passes its gate by the runbook's standing approval" in done.stdout
    assert upper_mark.read_text() == "docker\n"
    newest = history(state)[0]
    assert newest["status"] == "succeeded" and newest["scheduled"] is True
    steps = {s["step"]: s["status"] for s in show_run(state, str(newest["id"]))["steps"]}
    assert steps == {"mark": "succeeded", "marked": "succeeded"}  # created now, not before
    titles = [json.loads(str(r["body"]))["title"] for r in receiver.requests()]
    assert titles[-1] == "opskit: scheduled run of marker succeeded"
    for request in receiver.requests():
        for value in secrets.values():
            assert value not in json.dumps(request)


def test_the_shipped_health_runbook_notifies_when_a_check_fails(lab, receiver, tmp_path):
    runbooks, units, env_dir, state = (tmp_path / n for n in ("runbooks", "units", "env", "st"))
    runbooks.mkdir()
    shutil.copy(REPO / "runbooks" / "health.yaml", runbooks / "health.yaml")
    install(lab, runbooks, units, env_dir, state)
    env_file = env_dir / "health.env"
    secrets = lab_secrets(lab)
    env_file.write_text(
        env_file.read_text()
        + "".join(f"{k}={v}\n" for k, v in secrets.items())
        + f"OPSKIT_NOTIFY_URL=json://127.0.0.1:{receiver.port}/health\n"
        + f"OPSKIT_HEARTBEAT_URL=http://127.0.0.1:{receiver.port}/api/push/hb1?status=up\n"
    )
    done = run_as_the_unit(lab, units / "opskit-health.service", tmp_path)
    # the lab runs some of the inventory's services, not all: their checks fail
    assert done.returncode == 1, done.stdout + done.stderr
    run_id = str(history(state)[0]["id"])
    (hook,) = [r for r in receiver.requests() if r["path"] == "/health"]
    message = json.loads(str(hook["body"]))
    assert message["title"] == "opskit: scheduled run of health failed"
    assert message["type"] == "failure" and f"run: {run_id}" in message["message"]
    assert "failed targets: " in message["message"] and "docker" in message["message"]
    assert "first error: [" in message["message"]
    (beat,) = [r for r in receiver.requests() if str(r["path"]).startswith("/api/push/hb1")]
    assert "status=down" in str(beat["path"]) and "status=up" not in str(beat["path"])
    for request in receiver.requests():
        for value in secrets.values():
            assert value not in json.dumps(request)
