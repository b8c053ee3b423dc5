"""Uptime Kuma: the client against the lab's stand-in in both dialects, held to transcripts of the
real 1.23.17 and 2.0.2; uptime_kuma.maintenance through whole runs (success, failure, SIGKILL
then resume or the next run, a dry run) and check.uptime_kuma."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import fakes
import kuma_lab
from kuma_transcript import flow, recording_factory
from opskit.clients.connections import Door, Sent
from opskit.clients.uptime_kuma import KumaLogin, UptimeKumaClient
from opskit.errors import ReadOnlyRefused, UptimeKumaAuthError
from opskit.lab.uptime_kuma import MUTATING

TESTS = Path(__file__).resolve().parent
DATA = TESTS / "data" / "uptime_kuma"
REAL = {"1": "1.23.17", "2": "2.0.2"}


@pytest.fixture(params=["1", "2"], ids=["kuma-1.23", "kuma-2.x"])
def kuma(request: pytest.FixtureRequest) -> Any:
    with kuma_lab.StandIn(request.param) as stand_in:
        yield stand_in


# --- the stand-in says what the real server said --------------------------------------------


def _events(transcript: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(event, answer) of each event the client sent, in order."""
    return [(e["answer"], e["data"]) for e in transcript if "answer" in e]


def _keys(value: Any) -> set[str]:
    return set(value) if isinstance(value, dict) else set()


@pytest.mark.parametrize("dialect", ["1", "2"])
def test_the_stand_in_answers_the_flow_as_the_real_server_did(dialect: str) -> None:
    real = json.loads((DATA / f"{REAL[dialect]}.json").read_text())
    transcript: list[dict[str, Any]] = []
    with kuma_lab.StandIn(dialect, monitors=[]) as stand_in:
        seen = asyncio.run(flow(stand_in.url, transcript))
    # what opskit's client saw: the same on both
    assert seen["major"] == int(dialect) == real["seen"]["major"]
    assert {k: v for k, v in seen.items() if k != "version"} == {
        k: v for k, v in real["seen"].items() if k != "version"
    }
    # each event answered alike: ok, the answer's keys; a monitor or window shows no field the
    # real one lacks
    ours, theirs = _events(transcript), _events(real["transcript"])
    assert [e for e, _ in ours] == [e for e, _ in theirs]
    for (event, mine), (_, real_answer) in zip(ours, theirs, strict=True):
        assert mine.get("ok") == real_answer.get("ok"), event
        assert _keys(mine) == _keys(real_answer), event
        for nested in ("monitor", "maintenance"):
            if nested in real_answer:
                assert _keys(mine[nested]) <= _keys(real_answer[nested]), (event, nested)
                for field in ("active", "status", "maintenance", "strategy", "title", "id"):
                    if field in real_answer[nested]:
                        assert mine[nested][field] == real_answer[nested][field], (event, field)
    # the pushes: the first `info` hides the version, the one after the login has it; 2.x
    # updates the monitor list piece by piece, 1.23 sends it whole
    pushes = [e for e in transcript if "push" in e]
    real_pushes = [e for e in real["transcript"] if "push" in e]
    for p in (pushes, real_pushes):
        assert p[0]["push"] == "info" and "version" not in p[0]["args"][0]
        assert any(e["push"] == "info" and "version" in e["args"][0] for e in p)
    kinds = {e["push"] for e in pushes}
    # the lists the client keeps: pushed by both (heartbeats come on the real one's schedule)
    kept = {"info", "monitorList", "maintenanceList", "updateMonitorIntoList"}
    assert kinds & kept == {e["push"] for e in real_pushes} & kept
    incremental = {"updateMonitorIntoList", "deleteMonitorFromList"}
    assert (
        bool(incremental & kinds)
        == (dialect == "2")
        == bool(incremental & {e["push"] for e in real_pushes})
    )


def test_the_client_passes_the_door_and_refuses_changes_while_planning(kuma: Any) -> None:
    sent: list[Sent] = []

    async def go() -> None:
        login = KumaLogin(kuma_lab.USER, kuma_lab.PASSWORD)
        async with UptimeKumaClient(kuma.url, login, Door(True, sent.append)) as client:
            assert {m.name for m in client.monitors()} == {m["name"] for m in kuma_lab.MONITORS}
            assert all(m.status_name == "up" for m in await client.with_status())
            with pytest.raises(ReadOnlyRefused, match="Uptime Kuma's addMaintenance"):
                await client.add_window("nope")
            assert await client.windows() == []

    asyncio.run(go())
    assert kuma.mutating() == []
    assert [s.method for s in sent if s.refused] == ["addMaintenance"]
    assert all(kuma_lab.PASSWORD not in json.dumps(s.params) for s in sent)
    # the stand-in's own log keeps no password either
    assert kuma_lab.PASSWORD not in json.dumps(kuma.server.log)


def test_a_wrong_password_is_one_clear_error(kuma: Any) -> None:
    async def go() -> None:
        async with UptimeKumaClient(kuma.url, KumaLogin(kuma_lab.USER, "wrong"), Door(False)):
            pass

    with pytest.raises(UptimeKumaAuthError, match=f"login as {kuma_lab.USER} refused"):
        asyncio.run(go())


def test_a_login_with_2fa_needs_its_code(kuma: Any) -> None:
    kuma.state.twofa = "123456"

    async def go(code: str | None) -> str:
        login = KumaLogin(kuma_lab.USER, kuma_lab.PASSWORD, totp=code)
        async with UptimeKumaClient(kuma.url, login, Door(False)) as client:
            return client.version

    with pytest.raises(UptimeKumaAuthError, match="needs a 2FA code"):
        asyncio.run(go(None))
    with pytest.raises(UptimeKumaAuthError, match="refused"):
        asyncio.run(go("000000"))
    assert asyncio.run(go("123456")) == kuma.server.version
    assert "123456" not in json.dumps(kuma.server.log)  # a code is masked like a password


def test_recording_factory_records_what_is_sent(kuma: Any) -> None:
    transcript: list[dict[str, Any]] = []

    async def go() -> None:
        login = KumaLogin(kuma_lab.USER, kuma_lab.PASSWORD)
        async with UptimeKumaClient(
            kuma.url, login, Door(False), factory=recording_factory(transcript)
        ) as client:
            await client.monitor(1)

    asyncio.run(go())
    assert [e.get("emit") for e in transcript if "emit" in e] == ["login", "getMonitor"]
    assert kuma_lab.PASSWORD not in json.dumps(transcript)


# --- uptime_kuma.maintenance in whole runs -------------------------------------------------

PATCH = """
name: patch
targets: [docker, ai]
steps:
  - id: quiet
    uptime_kuma.maintenance: {}
    register: window
  - id: seen
    test.kuma_seen: {}
  - id: work
    test.resource: {name: work, sleep: SLEEP}
"""


class KumaEnv:
    def __init__(self, project: Any, opskit: Any, tmp_path: Path, kuma: Any) -> None:
        self.project, self.opskit, self.kuma = project, opskit, kuma
        self.world = fakes.World(tmp_path / "world.json")
        self.seen_file = tmp_path / "seen.json"
        inventory = project.root / "inventory" / "homelab.yaml"
        inventory.write_text(kuma_lab.point_at(inventory.read_text(), kuma.url))

    def run(self, *args: str) -> Any:
        return self.opskit(*args, cwd=self.project.root)

    def seen(self) -> dict[str, list[str]]:
        return json.loads(self.seen_file.read_text()) if self.seen_file.exists() else {}

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        code = (
            f"import sys; sys.path.insert(0, {str(TESTS)!r}); import fakes, kuma_lab;"
            " fakes.install(); kuma_lab.install(); from opskit.cli import main; main()"
        )
        return subprocess.Popen(
            [sys.executable, "-c", code, *args],
            cwd=self.project.root,
            env=os.environ.copy(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )

    def linked_last(self) -> set[str]:
        """The monitors the last addMonitorMaintenance linked."""
        links = [e for e in self.kuma.server.log if e["event"] == "addMonitorMaintenance"]
        return self.kuma.names([m["id"] for m in links[-1]["args"][1]])


@pytest.fixture
def env(project: Any, opskit: Any, tmp_path: Path, kuma: Any, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(fakes.WORLD_ENV, str(tmp_path / "world.json"))
    monkeypatch.setenv(kuma_lab.SEEN_ENV, str(tmp_path / "seen.json"))
    monkeypatch.setenv("KUMA_TEST_PASSWORD", kuma_lab.PASSWORD)
    monkeypatch.delenv("CI", raising=False)
    made = KumaEnv(project, opskit, tmp_path, kuma)
    fakes.install()
    kuma_lab.install()
    try:
        yield made
    finally:
        kuma_lab.uninstall()
        fakes.uninstall()


def _closed(env: KumaEnv) -> None:
    assert env.kuma.windows() == {}
    assert env.kuma.under_maintenance() == set()
    state = Path(os.environ["OPSKIT_STATE_DIR"])
    assert not list((state / "cleanups").glob("*.json"))  # nothing left held


def test_a_dry_run_sends_no_mutating_event(env: KumaEnv) -> None:
    env.project.runbook("patch", PATCH.replace("SLEEP", "0"))
    result = env.run("run", "patch", "--dry-run")
    assert result.code == 0, result.err
    assert "maintenance window for the run over traefik, Status page" in result.out
    assert "AI livez" in result.out
    logged = [e["event"] for e in env.kuma.server.log]
    assert "login" in logged and "getMonitor" not in logged
    assert not set(logged) & MUTATING
    assert kuma_lab.PASSWORD not in result.out + result.err


def test_a_run_opens_one_window_for_exactly_the_patched_monitors_then_closes_it(
    env: KumaEnv,
) -> None:
    env.project.runbook("patch", PATCH.replace("SLEEP", "0"))
    result = env.run("run", "patch", "--yes")
    assert result.code == 0, result.out + result.err
    assert env.kuma.mutating().count("addMaintenance") == 1  # one window for both targets
    assert env.linked_last() == kuma_lab.PATCHED
    seen = env.seen()
    # while it was open, getMonitor said `maintenance: true` of the target's own monitors,
    # and never of a monitor the run did not patch
    assert {"traefik", "Status page"} <= set(seen["docker"]) <= kuma_lab.PATCHED
    assert {"AI livez"} <= set(seen["ai"]) <= kuma_lab.PATCHED
    adds = [e for e in env.kuma.server.log if e["event"] == "addMaintenance"]
    assert adds[0]["args"][0]["strategy"] == "manual"
    assert adds[0]["args"][0]["title"].startswith("opskit: patch, run ")
    assert "closed (the run ended)" in result.out + result.err
    assert env.kuma.mutating()[-1] == "deleteMaintenance"
    _closed(env)
    assert kuma_lab.PASSWORD not in result.out + result.err
    # one session per door for the plan and for the run, whatever the number of targets
    # (Uptime Kuma allows 20 logins a minute)
    logins = [e["event"] for e in env.kuma.server.log].count("login")
    assert logins == 2, logins  # the plan's and the run's probes' (one session), its changes'
    assert kuma_lab.PASSWORD not in json.dumps(env.kuma.server.log)


def test_a_failed_run_closes_its_window(env: KumaEnv) -> None:
    env.project.runbook("patch", PATCH.replace("SLEEP", "0"))
    env.world.fail("ai/work", 1)
    result = env.run("run", "patch", "--yes")
    assert result.code == 1
    assert "addMaintenance" in env.kuma.mutating()
    _closed(env)


def _wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def test_sigterm_closes_the_window(env: KumaEnv) -> None:
    env.project.runbook("patch", PATCH.replace("SLEEP", "30"))
    proc = env.spawn("run", "patch", "--yes", "--grace", "0.1")
    _wait_for(lambda: {"docker/work", "ai/work"} <= set(env.world.calls("apply")))
    assert env.kuma.under_maintenance() == kuma_lab.PATCHED
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, out + err
    _closed(env)


@pytest.mark.parametrize("then", ["resume", "next run"])
def test_a_window_left_by_sigkill_is_closed_by_resume_or_the_next_run(
    env: KumaEnv, then: str
) -> None:
    env.project.runbook("patch", PATCH.replace("SLEEP", "30"))
    proc = env.spawn("run", "patch", "--yes")
    _wait_for(lambda: {"docker/work", "ai/work"} <= set(env.world.calls("apply")))
    proc.kill()
    proc.communicate(timeout=30)
    # left open: exactly the patched targets' monitors are still under maintenance
    assert len(env.kuma.windows()) == 1
    assert env.kuma.under_maintenance() == kuma_lab.PATCHED
    before = len(env.kuma.mutating())
    if then == "resume":
        env.project.runbook("patch", PATCH.replace("SLEEP", "0"))
        run_id = json.loads(env.run("history", "--json").out)[0]["id"]
        result = env.run("resume", run_id, "--force", "--yes")
        assert result.code == 0, result.out + result.err
        # the resumed steps ran in the window it took over: no second window
        assert "addMaintenance" not in env.kuma.mutating()[before:]
    else:
        env.project.runbook(
            "other",
            "name: other\ntargets: [dev]\nsteps:\n  - id: x\n    test.resource: {name: x}\n",
        )
        result = env.run("run", "other", "--yes")
        assert result.code == 0, result.out + result.err
        assert "left open by run" in result.out + result.err
    _closed(env)


RESUMED = """
name: patch
targets: [docker, ai]
steps:
  - id: quiet
    uptime_kuma.maintenance: {}
  - id: work
    test.resource: {name: work}
  - id: seen
    test.kuma_seen: {}
"""


def test_a_resume_puts_the_work_it_has_left_under_a_window_again(env: KumaEnv) -> None:
    # The failed run closed its window when it ended, so ai's work, done again by the resume,
    # would run unwatched by any window if the resume skipped ai's quiet step as done. docker
    # has nothing left: its monitors stay out of the resume's window.
    env.project.runbook("patch", RESUMED)
    env.world.fail("ai/work", 1)
    failed = env.run("run", "patch", "--yes")
    assert failed.code == 1, failed.out + failed.err
    _closed(env)
    assert set(env.seen()) == {"docker"}
    run_id = json.loads(env.run("history", "--json").out)[0]["id"]
    result = env.run("resume", run_id, "--yes")
    assert result.code == 0, result.out + result.err
    assert env.kuma.mutating().count("addMaintenance") == 2  # the run's, then the resume's
    assert {"AI livez"} <= set(env.seen()["ai"]) <= kuma_lab.PATCHED
    assert env.linked_last() == {"AI livez"}
    resumed = json.loads(env.run("history", "--json").out)[0]["id"]
    shown = json.loads(env.run("show-run", resumed, "--json").out)
    steps = {(s["target"], s["step"]): s["status"] for s in shown["steps"]}
    assert steps[("docker", "quiet")] == "skipped"
    assert steps[("ai", "quiet")] == steps[("ai", "work")] == "succeeded"
    _closed(env)


# --- check.uptime_kuma --------------------------------------------------------------------

CHECK = """
name: watched
targets: [docker]
steps:
  - id: up
    check.uptime_kuma: {}
    register: kuma
"""


def test_check_uptime_kuma_passes_when_up_and_fails_when_down(env: KumaEnv) -> None:
    env.project.runbook("watched", CHECK)
    result = env.run("run", "watched", "--yes")
    assert result.code == 0, result.out + result.err
    assert "traefik up" in result.out
    env.kuma.state.status[1] = 0  # traefik's monitor says down
    result = env.run("run", "watched", "--yes")
    assert result.code == 1
    assert "monitor traefik is down" in result.out + result.err


# --- push heartbeats: through the door, to a loopback receiver, no secret ---------------------


@pytest.mark.parametrize("status", ["succeeded", "failed"])
def test_a_heartbeat_reaches_a_loopback_receiver_through_the_door(
    status: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import http.server
    import logging
    import threading
    from urllib.parse import parse_qs, urlsplit

    from opskit.clients.connections import Transports
    from opskit.model.schedule import Notify
    from opskit.notify import Notice, send

    got: list[str] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            got.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "11")
            self.end_headers()
            self.wfile.write(b'{"ok":true}')

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token = "pushTokenXy42"
    monkeypatch.setenv(
        "KUMA_PUSH", f"http://127.0.0.1:{server.server_port}/api/push/{token}?status=up&msg=OK"
    )
    sent: list[Sent] = []
    warnings: list[str] = []
    error = "boom: it broke\nsecond line" if status == "failed" else None
    notice = Notice(runbook="health", status=status, run_id="r1", first_error=error)
    caplog.set_level(logging.DEBUG, logger="opskit")
    try:
        reached = send(
            notice,
            Notify(heartbeat="env:KUMA_PUSH"),
            warnings.append,
            Transports(observe=sent.append),
        )
    finally:
        server.shutdown()
    assert reached == ["notify.heartbeat"] and warnings == []
    (path,) = got
    query = parse_qs(urlsplit(path).query, keep_blank_values=True)
    if status == "succeeded":
        assert query["status"] == ["up"] and query["msg"] == ["succeeded r1"]
    else:
        assert query["status"] == ["down"] and query["msg"] == ["failed r1: boom: it broke"]
    # through the one door: the observer saw it, without the push token; the -v log lines
    # pass the one redactor (logs.py), which knows the token's path as a secret
    from opskit.secrets import redactor

    (beat,) = sent
    assert (beat.client, beat.method, beat.reads) == ("heartbeat", "GET", True)
    assert token not in beat.what and token not in json.dumps(dict(beat.params))
    assert "/api/push/" in caplog.text and token not in redactor.redact(caplog.text)


# --- inventory sync --uptime-kuma ---------------------------------------------------------


def test_inventory_sync_maps_monitors_and_reports_what_nothing_watches(env: KumaEnv) -> None:
    args = ("inventory", "sync", "--uptime-kuma", "--no-proxmox", "--no-tailscale")
    result = env.run(*args)
    assert result.code == 0, result.out + result.err
    out = result.out
    assert "docker/uptime-kuma: monitor 'Status page'" in out
    assert "ai/proxmoxmcp: monitor 'AI livez'" in out
    assert "media/beszel-agent: monitor 'media agent'" in out
    assert "docker/traefik" not in out.split("services no monitor watches")[0]  # by its name
    assert "services no monitor watches: " in out and "homeassistant/beszel-agent" in out
    assert "monitors that watch nothing in the inventory: router" in out
    from opskit.loader import load_inventory

    inv, _ = load_inventory(env.project.root / "inventory" / "homelab.yaml")
    docker = inv.by_name()["docker"]
    assert docker.services["uptime-kuma"].monitor == "Status page"
    assert docker.services["traefik"].monitor is None
    assert "already in sync" in env.run(*args).out
    assert env.kuma.mutating() == []


# --- until: window (a scheduled run's window also ends by itself) -------------------------------


def test_a_single_window_ends_by_itself_at_its_end(kuma: Any) -> None:
    """As the real 1.23.17 and 2.0.2 did by hand (tests/data/uptime_kuma/README.md): a single
    window is under maintenance until its end, then `ended` and its monitors watched again."""

    async def go() -> tuple[str, bool, str, bool]:
        login = KumaLogin(kuma_lab.USER, kuma_lab.PASSWORD)
        async with UptimeKumaClient(kuma.url, login, Door(False)) as client:
            wid = await client.add_window("single", until=time.time() + 3600)
            await client.link_monitors(wid, [1])
            window = await client.window(wid)
            assert window is not None
            during = (window.status, (await client.monitor(1)).maintenance)
            kuma.state.windows[wid]["dateRange"][1] = "2000-01-01 00:00:00"  # its end passed
            window = await client.window(wid)
            assert window is not None
            return (*during, window.status, (await client.monitor(1)).maintenance)

    assert asyncio.run(go()) == ("under-maintenance", True, "ended", False)


def test_until_window_in_a_scheduled_run_ends_with_the_schedule_window(
    env: KumaEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opskit.engine import session
    from opskit.engine.session import Request
    from opskit.report.progress import Reporter
    from opskit.workspace import Workspace

    root = env.project.root
    env.project.runbook(
        "patch",
        PATCH.replace("SLEEP", "0").replace("maintenance: {}", "maintenance: {until: window}"),
    )
    monkeypatch.chdir(root)
    deadline = time.time() + 1800
    with open(os.devnull, "w") as devnull:
        req = Request(
            workspace=Workspace(root / "runbooks", root / "inventory" / "homelab.yaml"),
            yes=True,
            deadline=deadline,
            reporter=Reporter(out=devnull),
        )
        loaded, targets, plan = session.make_plan(req, "patch", {}, None)
        result = session.execute(req, loaded, targets, plan)
    assert result.exit_code == 0
    (add,) = [e for e in env.kuma.server.log if e["event"] == "addMaintenance"]
    assert add["args"][0]["strategy"] == "single"
    assert add["args"][0]["dateRange"][1] == time.strftime(
        "%Y-%m-%d %H:%M:%S", time.gmtime(deadline)
    )
    assert {"traefik", "Status page"} <= set(env.seen()["docker"]) <= kuma_lab.PATCHED
    _closed(env)


def test_monitor_states_for_opskit_status(env: KumaEnv) -> None:
    """What `opskit status` calls: the target's monitors by service, read-only."""
    from opskit.actions.check_uptime_kuma import monitor_states
    from opskit.clients.connections import Connections
    from opskit.loader import load_inventory

    inventory, _ = load_inventory(env.project.root / "inventory" / "homelab.yaml")
    docker = inventory.target(inventory.by_name()["docker"])
    sent: list[Sent] = []

    async def go() -> list[Any]:
        from opskit.clients.connections import Transports

        connections = Connections(inventory, transports=Transports(observe=sent.append))
        try:
            return await monitor_states(connections, docker)
        finally:
            await connections.aclose()

    states = asyncio.run(go())
    assert [(s.service, s.monitor, s.status, s.maintenance) for s in states] == [
        ("traefik", "traefik", "up", False),
        ("uptime-kuma", "Status page", "up", False),
    ]
    assert sent and all(s.reads and s.read_only for s in sent)


def test_opskit_status_shows_each_service_by_its_monitors(
    env: KumaEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Uptime Kuma as a source of `opskit status`: a figure per service a monitor watches, the
    worst of its monitors; read-only; "not configured" (None) while its login is unset."""
    from opskit.clients.connections import Connections, Transports
    from opskit.loader import load_inventory
    from opskit.status import MONITOR_SOURCES

    inventory, _ = load_inventory(env.project.root / "inventory" / "homelab.yaml")
    [source] = [s for s in (f(inventory) for f in MONITOR_SOURCES) if s is not None]
    sent: list[Sent] = []

    async def go() -> Any:
        connections = Connections(inventory, transports=Transports(observe=sent.append))
        try:
            return await source.monitors(connections, inventory, 5.0)
        finally:
            await connections.aclose()

    found = asyncio.run(go())
    assert {k: f.value for k, f in found.items()} == {
        ("docker", "traefik"): "up",
        ("docker", "uptime-kuma"): "up",
        ("ai", "proxmoxmcp"): "up",
        ("media", "beszel-agent"): "up",  # the router's monitor watches nothing of it
    }
    assert sent and all(s.reads and s.read_only for s in sent)
    traefik = next(i for i, m in env.kuma.state.monitors.items() if m["name"] == "traefik")
    env.kuma.state.status[traefik] = 0  # its checks fail
    found = asyncio.run(go())
    assert found[("docker", "traefik")].value == "down"
    assert "traefik" in found[("docker", "traefik")].source
    monkeypatch.delenv("KUMA_TEST_PASSWORD")
    assert asyncio.run(go()) is None


def test_health_checks_the_monitor_a_service_names(env: KumaEnv) -> None:
    """The shipped `health`'s monitors step asks Uptime Kuma of the services that name their
    monitor (as `inventory sync --uptime-kuma` writes it), and of no other."""
    import yaml

    shipped = yaml.safe_load((TESTS.parent / "runbooks" / "health.yaml").read_text())
    shipped.pop("schedule")
    shipped["steps"] = [s for s in shipped["steps"] if s["id"] == "monitors"]
    env.project.runbook("health", yaml.safe_dump(shipped))
    inventory = env.project.root / "inventory" / "homelab.yaml"
    text = inventory.read_text()
    named = "        health: {check: http, path: /ping, expect: 200, contains: OK}\n"
    assert named in text
    inventory.write_text(text.replace(named, named + "        monitor: traefik\n", 1))
    done = env.run("run", "health", "--limit", "docker", "--yes")
    assert done.code == 0, done.out + done.err
    assert "docker" in done.out and "traefik up" in done.out, done.out
    assert "uptime-kuma" not in done.out.split("traefik up")[1]  # names no monitor: not asked
    traefik = next(i for i, m in env.kuma.state.monitors.items() if m["name"] == "traefik")
    env.kuma.state.status[traefik] = 0  # its checks fail: health says so
    done = env.run("run", "health", "--limit", "docker", "--yes")
    assert done.code == 1 and "monitor traefik is down" in done.out + done.err, done.out
    assert kuma_lab.PASSWORD not in done.out + done.err
    assert env.kuma.mutating() == []


def test_the_stand_in_keeps_its_windows_across_a_restart(kuma: Any, tmp_path: Path) -> None:
    """As the real server keeps them in its database: a window opened before its host rebooted
    is there after it, with its monitors (a patch reboots the host Uptime Kuma runs on)."""
    from opskit.lab.uptime_kuma import KumaState, load

    kuma.server.data_file = tmp_path / "kuma.json"  # as the lab's unit runs it (--data)

    async def go() -> None:
        login = KumaLogin(kuma_lab.USER, kuma_lab.PASSWORD)
        async with UptimeKumaClient(kuma.url, login, Door(False)) as client:
            window = await client.add_window("kept", "across a restart")
            await client.link_monitors(window, [1, 2])

    asyncio.run(go())
    again = KumaState(dialect=kuma.state.dialect)
    load(again, tmp_path / "kuma.json")
    assert again.window_list() == kuma.state.window_list()
    assert again.monitor_list() == kuma.state.monitor_list()
    assert {again.monitors[i]["name"] for i in (1, 2) if again.under_maintenance(i)} == {
        kuma.state.monitors[1]["name"],
        kuma.state.monitors[2]["name"],
    }


def test_its_login_unset_is_one_clear_error_that_says_the_way_around(
    env: KumaEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUMA_TEST_PASSWORD")
    env.project.runbook("patch", PATCH.replace("SLEEP", "0"))
    done = env.run("run", "patch", "--dry-run")
    assert done.code == 2, done.out + done.err
    [line] = [x for x in done.err.splitlines() if x.strip()]
    assert "KUMA_TEST_PASSWORD is not set" in line and "-p kuma_window=false" in line
    assert "Traceback" not in done.out + done.err and env.kuma.server.log == []
