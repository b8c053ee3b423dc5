"""`opskit status` against servers on loopback: every figure with its source, the JSON Schema,
the exit code, one system that never answers, the journal's last runs and the page's routes."""

from __future__ import annotations

import json
import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from conftest import Project

SCHEMA = json.loads(files("opskit.status").joinpath("status.schema.json").read_text())


def validate(data: Any) -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.Draft202012Validator(SCHEMA).validate(data)


class Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"status": "ok"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


class Banner:
    """Greets like an sshd (or, `silent`, accepts and never says a word: a hung host)."""

    def __init__(self, silent: bool = False) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.silent, self.held = silent, list[socket.socket]()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if not self.silent:
                conn.sendall(b"SSH-2.0-OpenSSH_9.2 test\r\n")
            self.held.append(conn)

    def close(self) -> None:
        self.listener.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def sshd() -> Iterator[Banner]:
    banner = Banner()
    yield banner
    banner.close()


def inventory(project: Project, text: str) -> None:
    (project.root / "inventory" / "homelab.yaml").write_text(textwrap.dedent(text).lstrip())


def two_hosts(project: Project, web: int, ssh: int, silent: int) -> None:
    inventory(
        project,
        f"""
        version: 1
        hosts:
          - name: alpha
            address: 127.0.0.1
            ssh: {{port: {ssh}}}
            services:
              api:
                port: {web}
                health: {{check: http, path: /health, json: {{status: ok}}}}
              docs:
                port: {web}
          - name: beta
            address: 127.0.0.1
            ssh: {{port: {silent}}}
            services:
              api:
                port: {web}
                health: {{check: http, path: /health}}
          - name: me
            address: 127.0.0.1
            tags: [controller]
        """,
    )


def test_status_json_follows_the_schema_and_marks_exactly_the_silent_host(
    project: Project, opskit: Any, web: int, sshd: Banner
) -> None:
    silent = Banner(silent=True)
    try:
        two_hosts(project, web, sshd.port, silent.port)
        started = time.monotonic()
        result = opskit("status", "--json", "--timeout", "2s", cwd=project.root)
        took = time.monotonic() - started
    finally:
        silent.close()
    assert result.code == 1, result.err
    data = json.loads(result.out)
    validate(data)
    hosts = {h["name"]: h for h in data["hosts"]}
    assert [h["name"] for h in data["hosts"]] == ["alpha", "beta", "me"]
    assert hosts["alpha"]["state"] == "ok" and hosts["me"]["state"] == "ok"
    assert hosts["beta"]["state"] == "unhealthy"
    # its sshd accepted and never greeted: the banner's wait ended at the timeout
    assert [p.split(":")[0] for p in hosts["beta"]["problems"]] == ["ssh"], hosts["beta"]
    alpha = hosts["alpha"]
    assert alpha["ssh"]["state"] == "ok" and alpha["ssh"]["source"] == "check.tcp"
    services = {s["name"]: s for s in alpha["services"]}
    assert services["api"]["state"] == "ok" and services["api"]["source"] == "check.http"
    assert services["api"]["age"] is not None and services["api"]["age"] < 60
    assert services["docs"] == {**services["docs"], "check": "none", "age": None}
    assert hosts["me"]["ssh"] is None  # the controller is not asked for its sshd
    assert data["healthy"] is False and data["timeout"] == 2.0
    print(f"status with one silent host (timeout 2s): {took:.2f}s")  # a measure, not a test


def test_status_text_and_exit_0_when_all_is_well(
    project: Project, opskit: Any, web: int, sshd: Banner
) -> None:
    two_hosts(project, web, sshd.port, sshd.port)
    result = opskit("status", "alpha,beta", cwd=project.root)
    assert result.code == 0, result.out + result.err
    assert "alpha  ok" in result.out and "beta  ok" in result.out
    assert "me" not in result.out.split()
    assert "healthy  (2 hosts" in result.out
    bad = opskit("status", "gamma", cwd=project.root)
    assert bad.code == 2 and "unknown target 'gamma'" in bad.err


def test_the_journal_gives_each_hosts_last_run_of_each_runbook(
    project: Project, opskit: Any, web: int, sshd: Banner
) -> None:
    two_hosts(project, web, sshd.port, sshd.port)
    project.runbook(
        "hello",
        """
        name: hello
        targets: alpha
        steps:
          - id: pause
            wait: {duration: 0s}
        """,
    )
    for _ in range(2):
        assert opskit("run", "hello", "--yes", cwd=project.root).code == 0
    history = json.loads(opskit("history", "--json", cwd=project.root).out)
    data = json.loads(opskit("status", "--json", cwd=project.root).out)
    validate(data)
    alpha = next(h for h in data["hosts"] if h["name"] == "alpha")
    assert [(r["runbook"], r["run_id"], r["status"]) for r in alpha["runs"]] == [
        ("hello", history[0]["id"], "succeeded")
    ]
    assert alpha["runs"][0]["steps"] == {"succeeded": 1}
    assert next(h for h in data["hosts"] if h["name"] == "beta")["runs"] == []
    assert data["sources"]["journal"]["error"] is None


def test_a_lock_held_shows_on_its_host(
    project: Project, opskit: Any, web: int, sshd: Banner
) -> None:
    from opskit.engine.locks import TargetLocks
    from opskit.store import state_dir

    two_hosts(project, web, sshd.port, sshd.port)
    locks = TargetLocks(state_dir() / "locks", "20261202-000000-abcdef", say=lambda _: None)
    locks.acquire(["beta"])
    try:
        data = json.loads(opskit("status", "--json", cwd=project.root).out)
    finally:
        locks.release()
    beta = next(h for h in data["hosts"] if h["name"] == "beta")
    assert beta["lock"]["run_id"] == "20261202-000000-abcdef" and beta["lock"]["held"]


def test_a_monitor_source_reaches_its_service(project: Project, web: int, sshd: Banner) -> None:
    """The seam Uptime Kuma's monitors plug into: a figure per (host, service)."""
    import asyncio

    from opskit.loader import load_inventory
    from opskit.status import MONITOR_SOURCES, Figure, collect

    class Monitors:
        name = "uptime-kuma"

        async def monitors(self, connections: Any, inventory: Any, timeout: float) -> Any:
            return {("alpha", "api"): Figure("down", "uptime-kuma monitor 7", time.time())}

    two_hosts(project, web, sshd.port, sshd.port)
    loaded, _ = load_inventory(project.root / "inventory" / "homelab.yaml")
    assert loaded.uptime_kuma is None  # the shipped source (Uptime Kuma's) has nothing to ask
    ours = lambda inv: Monitors()  # noqa: E731
    MONITOR_SOURCES.append(ours)
    try:
        overview = asyncio.run(collect(loaded, ["alpha", "beta"], timeout=2))
    finally:
        MONITOR_SOURCES.remove(ours)
    data = overview.as_dict()
    validate(data)
    api = data["hosts"][0]["services"][0]
    assert api["monitor"]["value"] == "down" and api["state"] == "unhealthy"
    assert not overview.healthy


def test_the_page_its_token_and_a_saved_plan(
    project: Project, opskit: Any, web: int, sshd: Banner, tmp_path: Path
) -> None:
    import asyncio

    import httpx

    from opskit.loader import load_inventory
    from opskit.status.web import Page, is_loopback, make_app, parse_address

    assert parse_address("0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert parse_address(":9001") == ("127.0.0.1", 9001)
    assert parse_address("[::1]:9002") == ("::1", 9002)
    assert is_loopback("127.0.0.2") and is_loopback("::1") and not is_loopback("0.0.0.0")
    two_hosts(project, web, sshd.port, sshd.port)
    project.runbook(
        "hello",
        """
        name: hello
        targets: alpha
        steps:
          - id: pause
            wait: {duration: 0s}
        """,
    )
    planned = opskit("plan", "hello", "-o", str(tmp_path / "hello.json"), cwd=project.root)
    assert planned.code == 0, planned.err
    (tmp_path / "other.json").write_text("{}")  # not a plan: not listed
    loaded, _ = load_inventory(project.root / "inventory" / "homelab.yaml")
    page = Page(loaded, ["alpha", "beta"], 2.0, [tmp_path], token="s3cret-token")

    async def browse() -> None:
        transport = httpx.ASGITransport(app=make_app(page))
        async with httpx.AsyncClient(transport=transport, base_url="http://page.test") as client:
            assert (await client.get("/")).status_code == 401
            assert (await client.get("/status.json")).status_code == 401
            assert (await client.post("/", data={})).status_code == 405  # read-only: GET alone
            answer = await client.get("/?token=s3cret-token")
            assert answer.status_code == 200
            assert 'data-host="alpha"' in answer.text and 'http-equiv="refresh"' in answer.text
            # the cookie set then opens the rest
            assert (await client.get("/status.json")).json()["healthy"] is True
            assert (await client.get("/plans/nope.json")).status_code == 404
            assert 'href="plans/hello.json"' in answer.text and "other.json" not in answer.text
            review = await client.get("/plans/hello.json")
            assert review.status_code == 200
            fingerprint = json.loads((tmp_path / "hello.json").read_text())["fingerprint"]
            assert fingerprint in review.text  # the review, as Markdown renders it
            assert (
                "<h2>opskit plan: <code>hello</code></h2>" in review.text
                and "<table>" in review.text
            )

    asyncio.run(browse())


def test_the_schema_is_shipped_and_shown(opskit: Any) -> None:
    result = opskit("schema", "status")
    assert result.code == 0 and json.loads(result.out) == SCHEMA
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    with pytest.raises(jsonschema.ValidationError):  # it says something: a wrong state fails
        validate({**json.loads('{"version": 1}'), "hosts": [{"state": "fine"}]})


def test_serving_off_loopback_needs_a_token_set_by_the_operator(
    project: Project, opskit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """opskit makes no token (it would have to print a secret): it refuses before binding."""
    monkeypatch.delenv("OPSKIT_STATUS_TOKEN", raising=False)
    result = opskit("status", "--serve", "192.0.2.2:8470", cwd=project.root)
    assert (
        result.code == 2 and "needs a token" in result.err and "OPSKIT_STATUS_TOKEN" in result.err
    )
    monkeypatch.setenv("OPSKIT_STATUS_TOKEN", "short")
    assert opskit("status", "--serve", "192.0.2.2:8470", cwd=project.root).code == 2
    bad = opskit("status", "--serve", "127.0.0.1:99999", cwd=project.root)
    assert bad.code == 2 and "not a port" in bad.err


def test_serving_on_a_port_in_use_is_one_clear_error(project: Project, opskit: Any) -> None:
    """Said before anything is served (no "serving" line), exit 2, not uvicorn's own line."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = opskit("status", "--serve", f"127.0.0.1:{port}", cwd=project.root)
    assert result.code == 2, result.out + result.err
    assert f"--serve 127.0.0.1:{port}: Address already in use" in result.err
    assert "serving" not in result.out and "ERROR" not in result.err


def test_proxmox_figures_from_fakepve(
    project: Project,
    opskit: Any,
    fakepve: Any,
    fakepve_cafile: str,
    sshd: Banner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One listing gives each guest's state, uptime, CPU and memory; a stopped guest is off
    (not a fault, its services not asked), a node is the host of its name."""
    fakepve.apitokens["root@pam!opskit"] = "pve-token-value"
    fakepve.add_vm(100, "web", status="running")
    fakepve.add_vm(101, "spare", status="stopped")
    monkeypatch.setenv("OPSKIT_TEST_PVE_TOKEN", "pve-token-value")
    inventory(
        project,
        f"""
        version: 1
        proxmox:
          pve:
            api_url: {fakepve.url}/api2/json
            nodes: [pve1]
            token_id: root@pam!opskit
            token: env:OPSKIT_TEST_PVE_TOKEN
            tls: {{ca: {fakepve_cafile}}}
        guests:
          - {{vmid: 100, name: web, address: 127.0.0.1, ssh: {{port: {sshd.port}}}}}
          - {{vmid: 101, name: spare, address: 127.0.0.1, ssh: {{port: {sshd.port}}}}}
          - {{vmid: 109, name: gone, address: 127.0.0.1, ssh: {{port: {sshd.port}}}}}
        hosts:
          - {{name: pve1, address: 127.0.0.1, ssh: {{port: {sshd.port}}}}}
        """,
    )
    result = opskit("status", "--json", cwd=project.root)
    data = json.loads(result.out)
    validate(data)
    hosts = {h["name"]: h for h in data["hosts"]}
    web = hosts["web"]["figures"]
    assert web["power"]["value"] == "running"
    assert web["power"]["source"] == "proxmox pve /cluster/resources"
    assert web["uptime"]["value"] is not None and web["memory"]["value"]["total"] > 0
    assert isinstance(web["cpu"]["value"], float) and hosts["web"]["state"] == "ok"
    assert hosts["spare"]["state"] == "off"
    assert hosts["gone"]["state"] == "unhealthy"
    assert hosts["gone"]["figures"]["power"]["error"] == "no guest 109 in the cluster"
    assert hosts["pve1"]["figures"]["power"]["source"] == "proxmox pve /nodes"
    assert hosts["pve1"]["state"] == "ok"
    assert result.code == 1  # gone is not there
    assert "pve-token-value" not in result.out + result.err


def test_watch_redraws_on_a_terminal_until_ctrl_c(project: Project, web: int, sshd: Banner) -> None:
    """`--watch` on a real terminal (a pty): the overview drawn again every --interval, with
    new times, until Ctrl-C ends it as every command ends there (130, no traceback)."""
    import re

    from test_signals import Terminal

    two_hosts(project, web, sshd.port, sshd.port)
    term = Terminal(project.root, "status", "alpha,beta", "--watch", "--interval", "0.5s")
    try:
        deadline = time.monotonic() + 60
        drawn: list[str] = []
        while len(set(drawn)) < 3 and time.monotonic() < deadline:
            term.read(0.5)
            drawn = re.findall(r"healthy  \(2 hosts at (\d\d:\d\d:\d\d)", term.text())
        assert len(set(drawn)) >= 3, term.text()[-2000:]  # three draws, each of its moment
        term.ctrl_c()
        code, text = term.finish()
    finally:
        term.kill()
    assert code == 130, text[-2000:]
    assert "Traceback" not in text
