"""`opskit schedule install/list/remove`: units systemd accepts, written once, removed exactly."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

from opskit import schedule
from test_schedule import systemd_analyze

SCHEDULED = """
name: nightly
description: Nightly upkeep
targets: [ai]
secrets:
  token: env:NIGHTLY_TOKEN
schedule:
  on: ["Sun 03:00", "Wed 03:00"]
  window: 2h
  randomized_delay: 5m
  lock_wait: 10m
  notify: {urls: [env:NIGHTLY_NTFY], heartbeat: optional:env:NIGHTLY_PUSH}
steps:
  - id: pause
    wait: {duration: 1s}
"""
PLAIN = """
name: plain
targets: [ai]
steps:
  - id: pause
    wait: {duration: 1s}
"""


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    return {"units": tmp_path / "units", "env": tmp_path / "env"}


def install(opskit, project, dirs, *args: str):
    return opskit(
        "schedule",
        "install",
        *args,
        "--unit-dir",
        str(dirs["units"]),
        "--env-dir",
        str(dirs["env"]),
        cwd=project.root,
    )


def verify(paths: list[Path], user: bool = False, runtime: Path | None = None) -> None:
    env = dict(os.environ)
    if user:
        assert runtime is not None
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
    done = subprocess.run(
        [systemd_analyze(), *(["--user"] if user else []), "verify", *map(str, paths)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stdout + done.stderr


def settings(unit_file: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit_file.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_install_writes_units_systemd_verifies(opskit, project, dirs, tmp_path):
    project.runbook("nightly", SCHEDULED)
    project.runbook("plain", PLAIN)
    done = install(opskit, project, dirs)
    assert done.code == 0, done.err
    timer = dirs["units"] / "opskit-nightly.timer"
    service = dirs["units"] / "opskit-nightly.service"
    assert sorted(p.name for p in dirs["units"].iterdir()) == [service.name, timer.name]
    verify([timer, service])
    t, s = settings(timer), settings(service)
    assert t["OnCalendar"] == ["Sun 03:00", "Wed 03:00"] and t["Persistent"] == ["true"]
    assert t["RandomizedDelaySec"] == ["5min"] and t["Unit"] == [service.name]
    assert t["WantedBy"] == ["timers.target"]
    assert s["Type"] == ["oneshot"]
    argv = s["ExecStart"][0].split()
    # the opskit that installed it (here: this interpreter), everything by absolute path
    assert argv[:3] == [os.path.abspath(os.sys.executable), "-m", "opskit"]
    assert argv[argv.index("--inventory") + 1] == str(project.root / "inventory" / "homelab.yaml")
    assert argv[argv.index("run") + 1] == str(project.runbooks / "nightly.yaml")
    assert argv[argv.index("run") + 2 :] == ["--scheduled", "--lock-wait", "600s"]
    assert all(Path(a).is_absolute() for a in argv if "/" in a)
    assert f"OPSKIT_STATE_DIR={os.environ['OPSKIT_STATE_DIR']}" in s["Environment"]
    env_file = dirs["env"] / "nightly.env"
    assert s["EnvironmentFile"] == [str(env_file)]
    # the window (2h) plus the grace (30s) plus a margin: systemd's backstop behind it
    assert s["TimeoutStartSec"] == ["2h 1min 30s"] and s["SuccessExitStatus"] == ["6"]
    # the secrets file: created 0600, empty of values, naming what the runbook reads
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    text = env_file.read_text()
    assert all(line.startswith("#") for line in text.splitlines()), text
    assert "reads: NIGHTLY_NTFY, NIGHTLY_PUSH, NIGHTLY_TOKEN" in text
    assert "not enabled (--unit-dir)" in done.out


def test_user_units_verify_too(opskit, project, dirs, tmp_path):
    project.runbook("nightly", SCHEDULED)
    assert install(opskit, project, dirs, "--user").code == 0
    units = sorted(dirs["units"].iterdir())
    verify(units, user=True, runtime=tmp_path / "run")
    assert "After" not in settings(dirs["units"] / "opskit-nightly.service")


def test_install_twice_changes_nothing_and_a_new_schedule_rewrites_the_timer(opskit, project, dirs):
    path = project.runbook("nightly", SCHEDULED)
    assert install(opskit, project, dirs).code == 0
    env_file = dirs["env"] / "nightly.env"
    env_file.write_text("NIGHTLY_TOKEN=the-operators-value\n")  # what an operator does
    before = {p: (p.stat().st_mtime_ns, p.read_text()) for p in dirs["units"].iterdir()}
    again = json.loads(install(opskit, project, dirs, "--json").out)
    assert again[0]["changed"] is False and set(again[0]["units"].values()) == {"unchanged"}
    assert {p: (p.stat().st_mtime_ns, p.read_text()) for p in dirs["units"].iterdir()} == before
    assert env_file.read_text() == "NIGHTLY_TOKEN=the-operators-value\n"
    path.write_text(path.read_text().replace('"Wed 03:00"', '"Thu 04:00"'))
    changed = json.loads(install(opskit, project, dirs, "--json").out)[0]
    timer = str(dirs["units"] / "opskit-nightly.timer")
    service = str(dirs["units"] / "opskit-nightly.service")
    assert changed["units"] == {timer: "updated", service: "unchanged"}
    assert "OnCalendar=Thu 04:00" in Path(timer).read_text()
    assert env_file.read_text() == "NIGHTLY_TOKEN=the-operators-value\n"  # never touched


def test_dry_run_prints_the_units_and_writes_nothing(opskit, project, dirs):
    project.runbook("nightly", SCHEDULED)
    done = install(opskit, project, dirs, "--dry-run")
    assert done.code == 0, done.err
    assert "OnCalendar=Sun 03:00" in done.out and "Type=oneshot" in done.out
    assert "would be created empty, 0600" in done.out and "nothing was written" in done.out
    assert not dirs["units"].exists() and not dirs["env"].exists()
    shown = json.loads(install(opskit, project, dirs, "--dry-run", "--json").out)
    assert set(shown[0]["contents"]) == {
        str(dirs["units"] / "opskit-nightly.timer"),
        str(dirs["units"] / "opskit-nightly.service"),
    }
    assert not dirs["units"].exists()


def test_remove_removes_exactly_its_own_units(opskit, project, dirs):
    project.runbook("nightly", SCHEDULED)
    project.runbook("weekly", SCHEDULED.replace("name: nightly", "name: weekly"))
    assert install(opskit, project, dirs).code == 0
    others = {  # someone else's units, one of them under opskit's prefix
        "backup.timer": "[Timer]\nOnCalendar=daily\n",
        "opskit-handmade.service": "[Service]\nExecStart=/bin/true\n",
    }
    for name, text in others.items():
        (dirs["units"] / name).write_text(text)
    done = opskit(
        "schedule",
        "remove",
        "nightly",
        "--unit-dir",
        str(dirs["units"]),
        "--env-dir",
        str(dirs["env"]),
        cwd=project.root,
    )
    assert done.code == 0, done.err
    left = sorted(p.name for p in dirs["units"].iterdir())
    assert left == [
        "backup.timer",
        "opskit-handmade.service",
        "opskit-weekly.service",
        "opskit-weekly.timer",
    ]
    assert "kept the secrets file" in done.out and (dirs["env"] / "nightly.env").exists()
    refused = opskit(
        "schedule", "remove", "handmade", "--unit-dir", str(dirs["units"]), cwd=project.root
    )
    assert refused.code == 2 and "was not written by opskit" in refused.err
    everything = opskit(
        "schedule",
        "remove",
        "--all",
        "--unit-dir",
        str(dirs["units"]),
        "--env-dir",
        str(dirs["env"]),
        cwd=project.root,
    )
    assert everything.code == 0
    assert sorted(p.name for p in dirs["units"].iterdir()) == sorted(others)
    for name, text in others.items():
        assert (dirs["units"] / name).read_text() == text


def test_a_runbook_without_schedule_and_units_systemd_refuses(opskit, project, dirs):
    project.runbook("plain", PLAIN)
    done = install(opskit, project, dirs, "plain")
    assert done.code == 2 and "has no schedule" in done.err
    # a project's own templates come first; one systemd refuses writes nothing
    project.runbook("nightly", SCHEDULED)
    own = project.root / "deploy" / "opskit"
    own.mkdir(parents=True)
    source = Path(schedule.__file__).resolve().parents[2] / "deploy" / "opskit"
    (own / "opskit.timer").write_text((source / "opskit.timer").read_text())
    (own / "opskit.service").write_text(
        (source / "opskit.service").read_text().replace("Type=oneshot", "Type=sometimes")
    )
    systemd_analyze()
    done = install(opskit, project, dirs, "nightly")
    assert done.code == 2, done.out + done.err
    assert "systemd-analyze verify refuses the units" in done.err and "service type" in done.err
    assert not dirs["units"].exists()


FAKE_SYSTEMCTL = """\
#!/bin/sh
echo "$*" >> "{log}"
case "$*" in
  *is-enabled*) cat "{state}" 2>/dev/null || echo disabled ;;
  *is-active*) [ -f "{state}" ] && echo active || echo inactive ;;
  *"enable --now"*) echo enabled > "{state}" ;;
esac
"""


def test_where_systemd_runs_it_reloads_and_enables_once(opskit, project, tmp_path, monkeypatch):
    project.runbook("nightly", SCHEDULED)
    run_dir, unit_dir, env_dir = tmp_path / "run-systemd", tmp_path / "etc-units", tmp_path / "etc"
    bin_dir, log = tmp_path / "bin", tmp_path / "systemctl.log"
    bin_dir.mkdir()
    fake = bin_dir / "systemctl"
    fake.write_text(FAKE_SYSTEMCTL.format(log=log, state=tmp_path / "enabled"))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(schedule, "SYSTEM_UNIT_DIR", unit_dir)
    monkeypatch.setattr(schedule, "SYSTEM_ENV_DIR", env_dir)
    monkeypatch.setattr(schedule, "SYSTEMD_RUN_DIR", run_dir)
    # systemd not running: written, said so, systemctl never called
    done = opskit("schedule", "install", cwd=project.root)
    assert done.code == 0, done.err
    assert "systemd is not running here" in done.out and "not enabled" in done.out
    assert (unit_dir / "opskit-nightly.timer").exists() and not log.exists()
    run_dir.mkdir()
    (unit_dir / "opskit-nightly.timer").unlink()
    done = opskit("schedule", "install", cwd=project.root)
    assert done.code == 0, done.err
    assert log.read_text().splitlines() == [
        "daemon-reload",
        "is-enabled opskit-nightly.timer",
        "is-active opskit-nightly.timer",
        "enable --now opskit-nightly.timer",
    ]
    assert "enabled: opskit-nightly.timer" in done.out
    log.unlink()
    assert opskit("schedule", "install", cwd=project.root).code == 0
    assert log.read_text().splitlines() == [
        "is-enabled opskit-nightly.timer",
        "is-active opskit-nightly.timer",
    ]  # nothing changed: no reload, no enable
    log.unlink()
    assert opskit("schedule", "remove", "nightly", cwd=project.root).code == 0
    assert log.read_text().splitlines() == ["disable --now opskit-nightly.timer", "daemon-reload"]
    assert not any(unit_dir.iterdir())


def test_list_shows_next_elapses_and_units(opskit, project, dirs):
    project.runbook("nightly", SCHEDULED)
    project.runbook("plain", PLAIN)
    args = ("schedule", "list", "--unit-dir", str(dirs["units"]), "--env-dir", str(dirs["env"]))
    rows = json.loads(opskit(*args, "--json", cwd=project.root).out)
    assert [r["runbook"] for r in rows] == ["nightly"]
    row = rows[0]
    assert row["on"] == ["Sun 03:00", "Wed 03:00"] and row["window"] == 7200
    expected = schedule.next_elapses(row["on"], schedule.now(), 2)
    assert row["next"] == [t.isoformat() for t in expected]
    assert row["units"] == "not installed" and row["last_run"] is None
    assert install(opskit, project, dirs).code == 0
    assert json.loads(opskit(*args, "--json", cwd=project.root).out)[0]["units"] == "installed"
    text = opskit(*args, cwd=project.root).out
    assert "nightly" in text and "Sun 03:00, Wed 03:00 (window 2h)" in text
    assert expected[0].strftime("%Y-%m-%d %H:%M:%S") in text


def test_templates_name_the_marker_remove_relies_on():
    source = Path(schedule.__file__).resolve().parents[2] / "deploy" / "opskit"
    for name in ("opskit.timer", "opskit.service"):
        assert (source / name).read_text().startswith(schedule.MARKER), name
    assert textwrap.dedent(schedule.MARKER) == schedule.MARKER
