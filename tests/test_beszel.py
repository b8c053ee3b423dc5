"""Beszel: the hub client and beszel.hub.system against a real PocketBase with Beszel's
collections, the agent stand-in and check.beszel.agent on loopback, the release mirror, and
beszel.agent's plan and on-host download check over real sshd (into temporary directories).

Loopback addresses used here and nowhere else: 127.0.0.71 PocketBase, 127.0.0.72 the agent
stand-in, 127.0.0.73 sshd, 127.0.0.74 the release mirror (http.server).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import pytest
from pydantic import ValidationError

import fakes
from opskit.actions import ActionContext
from opskit.actions.beszel import CheckAgent, CheckHub, HubSystem
from opskit.actions.beszel_agent import Agent, HostState
from opskit.clients.connections import Connections, Transports
from opskit.clients.hub import (
    TOKEN_REFRESH,
    HubAuthError,
    HubClient,
    HubError,
    HubUnreachable,
)
from opskit.clients.primitives import put_file
from opskit.errors import OpskitError, ReadOnlyRefused
from opskit.lab import releases
from opskit.model import ChangeKind, Outcome, Target
from opskit.secrets import placeholder
from pocketbase import Hub, free_port, missing, start_hub
from sshd import SSHD, Sshd, keygen

HUB_ADDR = "127.0.0.71"
AGENT_ADDR = "127.0.0.72"
SSHD_ADDR = "127.0.0.73"
MIRROR_ADDR = "127.0.0.74"
REPO = Path(__file__).resolve().parent.parent


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    server = start_hub(tmp_path_factory.mktemp("hub"), HUB_ADDR)
    yield server
    server.stop()


class Recording(httpx.AsyncBaseTransport):
    """The real network (loopback), with every request the hub receives written down."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.bodies: list[bytes] = []
        self.inner: httpx.AsyncHTTPTransport | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.inner is None:
            self.inner = httpx.AsyncHTTPTransport()
        self.seen.append((request.method, request.url.path))
        self.bodies.append(request.content)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        if self.inner is not None:
            await self.inner.aclose()
            self.inner = None

    def changes(self) -> list[tuple[str, str]]:
        """Requests that could change something: all but GET and logging in."""
        return [
            (m, p) for m, p in self.seen if m != "GET" and not p.endswith("/auth-with-password")
        ]


def target(name: str = "web1", address: str = "192.0.2.10", **kw: Any) -> Target:
    return Target(name=name, kind="host", address=address, **kw)


def hub_args(hub: Hub, **kw: Any) -> dict[str, Any]:
    email, password = hub.superuser
    return {"hub_url": hub.url, "email": email, "password": password, **kw}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def probe(action: Any, tgt: Target, transport: Any = None) -> Any:
    return run(action.probe(fakes.http_context(tgt, True, transport)))


def apply(action: Any, tgt: Target, transport: Any = None) -> Any:
    return run(action.apply(fakes.http_context(tgt, False, transport)))


def make(cls: Any, args: dict[str, Any]) -> Any:
    return cls(cls.Args.model_validate(args))


# --- the vendored collections -------------------------------------------------------------------


def test_the_lab_vendors_the_shared_collections_unchanged():
    vendored = REPO / "src" / "opskit" / "lab" / "beszel_collections.json"
    shared = next(
        (
            d / "shared" / "beszel" / "collections.json"
            for d in REPO.parents
            if (d / "shared" / "beszel" / "collections.json").is_file()
        ),
        None,
    )
    if shared is None:
        missing("../shared/beszel/collections.json is not beside the repository")
    assert shared is not None
    assert json.loads(vendored.read_text()) == json.loads(shared.read_text())


def test_a_missing_component_skips_but_fails_in_ci(monkeypatch):
    monkeypatch.delenv("OPSKIT_CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no PocketBase"):
        missing("no PocketBase")
    monkeypatch.setenv("OPSKIT_CI", "1")
    with pytest.raises(pytest.fail.Exception, match=r"no PocketBase \(OPSKIT_CI=1"):
        missing("no PocketBase")


# --- the hub client ----------------------------------------------------------------------------


def test_hub_client_logs_in_reads_and_refuses_changes_while_read_only(hub):
    async def go() -> None:
        connections = Connections(None)
        async with connections.hub(True, hub.url, *hub.superuser) as view:
            await view.login()
            assert view.is_superuser
            assert await view.records("systems") == []
            with pytest.raises(ReadOnlyRefused, match="refused POST"):
                await view.create("systems", {"name": "x"})
            with pytest.raises(ReadOnlyRefused, match="refused DELETE"):
                await view.delete("systems", "abc")
            assert (await view.health())["code"] == 200
        await connections.aclose()
        async with HubClient(hub.url, *hub.user, auth="user") as client:
            await client.login()
            assert not client.is_superuser and client.account["id"] == hub.user_id
            # Beszel's collections leave `systems` to superusers: PocketBase's own words
            with pytest.raises(HubError, match="403 Only superusers can perform this action"):
                await client.records("systems")

    run(go())


def test_hub_client_errors_are_one_clear_line_without_the_password(hub):
    email, password = hub.superuser

    async def login(url: str, pw: str, auth: Any = "auto") -> None:
        async with HubClient(url, email, pw, auth=auth, timeout=5) as client:
            await client.login()

    with pytest.raises(HubAuthError) as bad:
        run(login(hub.url, "wrong-" + password))
    assert "wrong email or password (superusers and hub users tried)" in str(bad.value)
    assert password not in str(bad.value) and email not in str(bad.value)
    with pytest.raises(HubAuthError, match=r"\(superusers tried\)"):
        run(login(hub.url, "wrong", "superuser"))
    closed = f"http://{HUB_ADDR}:{free_port(HUB_ADDR)}"
    with pytest.raises(HubUnreachable) as unreachable:
        run(login(closed, password))
    where = closed.removeprefix("http://")
    assert (
        str(unreachable.value) == f"cannot connect to the Beszel hub at {where}: connection refused"
    )

    async def validation() -> None:
        async with HubClient(hub.url, email, password) as client:
            await client.create("systems", {"name": "no-host"})

    with pytest.raises(HubError) as invalid:
        run(validation())
    text = str(invalid.value)
    assert "POST /api/collections/systems/records: 400 Failed to create record." in text
    assert "host: Cannot be blank." in text and "users: Cannot be blank." in text


def test_a_hub_change_whose_answer_is_lost_is_outcome_unknown(hub):
    """The record was created, the answer never came: not 'unreachable', not a plain failure,
    but unknown (the engine journals it so, and resume probes the hub again)."""
    from opskit.clients.hub import HubAnswerLost
    from opskit.errors import OutcomeUnknown

    class DropCreates(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.AsyncHTTPTransport()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await self.inner.handle_async_request(request)
            if request.method == "POST" and request.url.path.endswith("/systems/records"):
                await response.aread()
                raise httpx.ReadError("the connection dropped", request=request)
            return response

    async def go() -> None:
        async with HubClient(hub.url, *hub.superuser, transport=DropCreates()) as client:
            with pytest.raises(HubAnswerLost) as lost:
                await client.create(
                    "systems",
                    {"name": "lost-answer", "host": "h", "port": "1", "users": [hub.user_id]},
                )
            assert isinstance(lost.value, OutcomeUnknown)
            assert "POST /api/collections/systems/records was sent, but its answer was lost" in (
                str(lost.value)
            )
            assert await client.system("lost-answer") is not None  # it was made

    run(go())


def test_hub_client_refreshes_an_old_token_and_logs_in_again_on_401(hub):
    recording = Recording()

    async def go() -> None:
        async with HubClient(hub.url, *hub.superuser, transport=recording) as client:
            await client.records("systems")
            client._issued -= TOKEN_REFRESH + 1  # as if half an hour had passed
            await client.records("systems")
            client._token = "not-a-token"  # revoked: PocketBase takes it for no login
            client._issued -= 60
            await client.records("systems")

    run(go())
    paths = [p.rsplit("/", 1)[-1] for _, p in recording.seen]
    assert paths == [
        "auth-with-password",
        "records",
        "auth-refresh",
        "records",
        "records",
        "auth-with-password",
        "records",
    ]
    assert [s for s, _ in recording.seen].count("GET") == 4


# --- beszel.hub.system ------------------------------------------------------------------------


def test_hub_system_creates_updates_and_removes_and_probes_change_nothing(hub):
    token = "tok-" + "a1b2c3d4e5f6"
    args = hub_args(hub, name="web1", token=token)
    web1 = target()
    recording = Recording()
    before = (hub.records("systems"), hub.records("fingerprints"))

    change = probe(make(HubSystem, args), web1, recording)
    assert change.kind is ChangeKind.CREATE
    assert change.summary == "add system web1 (192.0.2.10:45876) to the hub"
    assert recording.seen and recording.changes() == []  # planning only reads
    assert (hub.records("systems"), hub.records("fingerprints")) == before

    outcome = apply(make(HubSystem, args), web1, recording)
    assert outcome.ok and outcome.changed
    (system,) = [s for s in hub.records("systems") if s["name"] == "web1"]
    assert (system["host"], system["port"]) == ("192.0.2.10", "45876")
    assert system["users"] == [hub.user_id]
    (fingerprint,) = [f for f in hub.records("fingerprints") if f["system"] == system["id"]]
    assert fingerprint["token"] == token

    recording.seen.clear()
    again = probe(make(HubSystem, args), web1, recording)
    assert again.kind is ChangeKind.NONE and again.summary == "system web1 is up to date"
    assert recording.changes() == []
    assert apply(make(HubSystem, args), web1).changed is False

    moved = target(address="192.0.2.11")
    new_token = "tok-" + "ffffeeeedddd"
    changed = probe(make(HubSystem, {**args, "token": new_token, "port": 45999}), moved)
    assert changed.kind is ChangeKind.UPDATE
    assert changed.summary == "update system web1 in the hub (host, port, token)"
    assert changed.before == {"host": "192.0.2.10", "port": "45876", "token": "(other)"}
    assert changed.after == {"host": "192.0.2.11", "port": "45999", "token": "(given)"}
    assert apply(make(HubSystem, {**args, "token": new_token, "port": 45999}), moved).ok
    (system,) = [s for s in hub.records("systems") if s["name"] == "web1"]
    assert (system["host"], system["port"]) == ("192.0.2.11", "45999")
    (fingerprint,) = [f for f in hub.records("fingerprints") if f["system"] == system["id"]]
    assert fingerprint["token"] == new_token

    gone = {**args, "state": "absent"}
    removal = probe(make(HubSystem, gone), web1)
    assert removal.kind is ChangeKind.DELETE
    assert apply(make(HubSystem, gone), web1).ok
    assert not [s for s in hub.records("systems") if s["name"] == "web1"]
    assert not [f for f in hub.records("fingerprints") if f["system"] == system["id"]]
    assert probe(make(HubSystem, gone), web1).kind is ChangeKind.NONE

    email, password = hub.superuser
    for shown in (change, outcome, again, changed, removal):
        text = shown.model_dump_json()
        for secret in (email, password, token, new_token):
            assert secret not in text


def test_hub_system_finds_users_and_takes_a_random_token_like_the_ui(hub):
    args = hub_args(hub, name="web2", users=[hub.user[0]])
    assert apply(make(HubSystem, args), target("web2")).ok
    (system,) = [s for s in hub.records("systems") if s["name"] == "web2"]
    assert system["users"] == [hub.user_id]
    (fingerprint,) = [f for f in hub.records("fingerprints") if f["system"] == system["id"]]
    assert len(fingerprint["token"]) == 36  # a UUID, as the hub's UI makes them
    # no token given: the record's own is kept
    kept = probe(make(HubSystem, hub_args(hub, name="web2")), target("web2"))
    assert kept.kind is ChangeKind.NONE
    odd = hub_args(hub, name='it\'s "web" \\ 2')  # quotes and a backslash in the filter
    assert apply(make(HubSystem, odd), target("odd")).changed
    assert probe(make(HubSystem, odd), target("odd")).kind is ChangeKind.NONE
    assert apply(make(HubSystem, {**odd, "state": "absent"}), target("odd")).changed
    nobody = hub_args(hub, name="web3", users=["nobody@hub.test"])
    with pytest.raises(OpskitError, match=r"the hub has no user 'nobody@hub\.test'"):
        apply(make(HubSystem, nobody), target("web3"))
    assert apply(make(HubSystem, {**args, "state": "absent"}), target("web2")).ok


def test_hub_system_while_planning_without_secrets_is_known_after_apply(hub):
    recording = Recording()
    args = {"hub_url": hub.url, "email": placeholder("E"), "password": placeholder("P")}
    change = probe(make(HubSystem, args), target(), recording)
    assert change.kind is ChangeKind.UNKNOWN
    assert "known after apply" in change.summary and "E, P" in change.summary
    assert recording.seen == []  # not even a login with a placeholder


def test_check_hub_registration_status_and_key(hub, tmp_path):
    apply(make(HubSystem, hub_args(hub, name="web4")), target("web4"))
    ok = apply(make(CheckHub, hub_args(hub, name="web4")), target())
    assert ok.ok and ok.summary == "login ok, system web4 registered"
    # a bare PocketBase never sets `status`: there is none to hold against `up`
    up = apply(make(CheckHub, hub_args(hub, name="web4", status="up")), target())
    assert up.ok and up.summary.endswith("web4 registered, status not reported (not a Beszel hub?)")
    # a Beszel hub reports one: it must be the one asked for
    (record,) = [s for s in hub.records("systems") if s["name"] == "web4"]
    httpx.patch(
        f"{hub.url}/api/collections/systems/records/{record['id']}",
        json={"status": "down"},
        headers={"Authorization": hub.token()},
        trust_env=False,
    ).raise_for_status()
    down = apply(make(CheckHub, hub_args(hub, name="web4", status="up")), target())
    assert not down.ok and down.error == "system web4: the hub reports down, expected up"
    absent = apply(make(CheckHub, hub_args(hub, name="nope")), target())
    assert not absent.ok and absent.error == "the hub has no system 'nope'"
    key = keygen(tmp_path / "hubkey")
    given = apply(make(CheckHub, hub_args(hub, system=False, key_known=True, key=key)), target())
    assert given.ok and given.summary == "login ok, key known"
    served = apply(make(CheckHub, hub_args(hub, system=False, key_known=True)), target())
    assert not served.ok and "does not serve its public key" in (served.error or "")
    with pytest.raises(OpskitError, match="not an SSH public key line"):
        apply(make(CheckHub, hub_args(hub, system=False, key_known=True, key="AAAA")), target())
    apply(make(HubSystem, hub_args(hub, name="web4", state="absent")), target("web4"))


def test_the_agent_takes_the_key_from_a_beszel_hub_that_serves_it():
    """A real Beszel hub serves its key to a logged-in client (GET /api/beszel/getkey); the
    bare PocketBase of these tests cannot, so this one exchange is played by a transport."""
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHuyt8ZnZRxhok4vQJ4nSFZKshbtG1wTbzpPI4cD72Eb"
    seen: list[tuple[str, str, str | None]] = []

    def hub(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path, request.headers.get("Authorization")))
        if request.url.path.endswith("/auth-with-password"):
            return httpx.Response(200, json={"token": "tok", "record": {"id": "u1"}})
        if request.url.path == "/api/beszel/getkey" and request.headers.get("Authorization"):
            return httpx.Response(200, json={"key": key + "\n", "v": "0.18.8"})
        return httpx.Response(404, json={"status": 404, "message": "Not found.", "data": {}})

    action = make(
        Agent,
        {
            "version": "0.18.8",
            "hub_url": "http://hub.test:8090",
            "hub_email": "a@hub.test",
            "hub_password": "pw-123456",
        },
    )
    ctx = fakes.http_context(target(), True, httpx.MockTransport(hub))
    assert run(action._key(ctx)) == key
    assert seen == [
        ("POST", "/api/collections/_superusers/auth-with-password", None),
        ("GET", "/api/beszel/getkey", "tok"),
    ]


# --- the agent stand-in and check.beszel.agent --------------------------------------------------


class StandIn:
    def __init__(self, root: Path, listen: str, key: str, version: str = "0.18.8") -> None:
        self.listen = listen
        self.log = root / f"agent-{time.monotonic_ns()}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BESZEL_AGENT_")}
        env.update(KEY=key, LISTEN=listen)
        self.command = [
            sys.executable,
            "-m",
            "opskit.lab.beszel_agent",
            "--stand-in-version",
            version,
        ]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(self.command, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while self.health().returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the agent stand-in did not start: {self.log.read_text()}")
            time.sleep(0.1)

    def health(self) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LISTEN": self.listen}
        return subprocess.run([*self.command, "health"], env=env, capture_output=True, text=True)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture(scope="module")
def hub_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("keys") / "hub_ed25519"
    return path, keygen(path)


def test_stand_in_agent_greets_as_beszel_and_accepts_only_the_hub_key(tmp_path, hub_key):
    key_path, key_line = hub_key
    port = free_port(AGENT_ADDR)
    agent = StandIn(tmp_path, f"{AGENT_ADDR}:{port}", key_line)
    try:
        assert agent.health().stdout == "ok"
        version = subprocess.run([*agent.command, "-v"], capture_output=True, text=True)
        assert version.stdout == "beszel-agent 0.18.8\n"
        at = {"host": AGENT_ADDR, "port": port}
        ok = apply(make(CheckAgent, {**at, "version": "0.18.8"}), target())
        assert ok.ok and ok.outputs == {"banner": "SSH-2.0-beszel_0.18.8", "version": "0.18.8"}
        older = apply(make(CheckAgent, {**at, "version": "0.18.7"}), target())
        assert not older.ok and "runs Beszel agent 0.18.8, expected 0.18.7" in (older.error or "")

        async def session(key: Path) -> str:
            async with asyncssh.connect(
                AGENT_ADDR,
                port,
                username="hub",
                client_keys=[str(key)],
                known_hosts=None,
                agent_path=None,
                config=[],
            ) as conn:
                done = await conn.run("", check=True)
                return str(done.stdout)

        stats = json.loads(run(session(key_path)))
        assert stats["info"]["v"] == "0.18.8"
        other = tmp_path / "other_ed25519"
        keygen(other)
        with pytest.raises(asyncssh.PermissionDenied):
            run(session(other))
    finally:
        agent.stop()
    assert agent.health().returncode == 1


def test_stand_in_agent_listens_on_a_unix_socket_and_needs_a_key(tmp_path, hub_key):
    socket_path = tmp_path / "agent.sock"
    agent = StandIn(tmp_path, str(socket_path), hub_key[1])
    try:
        assert agent.health().stdout == "ok"
    finally:
        agent.stop()
    assert not socket_path.exists()
    env = {k: v for k, v in os.environ.items() if k not in ("KEY", "KEY_FILE")}
    refused = subprocess.run(agent.command, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert refused.stderr.startswith("Failed to load public keys: no key provided")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    server = Sshd(tmp_path_factory.mktemp("sshd"), [SSHD_ADDR]).start()
    yield server
    server.stop()


def test_check_agent_refuses_a_plain_sshd_and_a_closed_port(sshd):
    plain = apply(make(CheckAgent, {"host": SSHD_ADDR, "port": sshd.port}), target())
    assert not plain.ok
    assert "not a Beszel agent" in (plain.error or "")
    assert plain.outputs["banner"].startswith("SSH-2.0-OpenSSH")
    closed = apply(make(CheckAgent, {"host": SSHD_ADDR, "port": free_port(SSHD_ADDR)}), target())
    assert not closed.ok and "refused" in (closed.error or "").lower()


# --- the release mirror -------------------------------------------------------------------------


def test_mirror_is_deterministic_and_laid_out_as_the_releases(tmp_path):
    releases.build_mirror(tmp_path / "a", ["0.18.8", "v0.18.7"], archs=("amd64", "arm64"))
    releases.build_mirror(tmp_path / "b", ["0.18.8", "0.18.7"], archs=("amd64", "arm64"))
    files = sorted(str(p.relative_to(tmp_path / "a")) for p in (tmp_path / "a").rglob("*"))
    assert files == [
        "v0.18.7",
        "v0.18.7/beszel-agent_linux_amd64.tar.gz",
        "v0.18.7/beszel-agent_linux_arm64.tar.gz",
        "v0.18.7/beszel_0.18.7_checksums.txt",
        "v0.18.8",
        "v0.18.8/beszel-agent_linux_amd64.tar.gz",
        "v0.18.8/beszel-agent_linux_arm64.tar.gz",
        "v0.18.8/beszel_0.18.8_checksums.txt",
    ]
    for name in files:
        if (tmp_path / "a" / name).is_file():
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    folder = tmp_path / "a" / "v0.18.8"
    check = subprocess.run(
        ["sha256sum", "-c", "beszel_0.18.8_checksums.txt"],
        cwd=folder,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    with tarfile.open(folder / "beszel-agent_linux_amd64.tar.gz") as tar:
        member = tar.getmember("beszel-agent")
        assert member.mode == 0o755
        tar.extract(member, tmp_path / "x", filter="data")
    done = subprocess.run([tmp_path / "x" / "beszel-agent", "--version"], capture_output=True)
    assert done.stdout == b"beszel-agent 0.18.8\n"


# --- beszel.agent over SSH, into temporary directories -----------------------------------------


@pytest.fixture
def host(sshd, tmp_path, monkeypatch):
    """A target on this machine through real sshd, and paths under tmp_path for the agent."""
    monkeypatch.setenv("OPSKIT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    tgt = target("h1", SSHD_ADDR, ssh_user="root", ssh_port=sshd.port, host_key=sshd.pinned)
    root = tmp_path / "host"
    paths = {
        "install_dir": str(root / "opt" / "beszel-agent"),
        "unit_dir": str(root / "etc" / "systemd"),
        "env_file": str(root / "etc" / "beszel-agent.env"),
        "user": "opskit-no-such-user",
    }
    return tgt, root, paths


def on_host(sshd: Sshd, tgt: Target, read_only: bool, work: Any) -> Any:
    """Run `work(ctx)` with an SSH context for `tgt`, closing the connections after."""

    async def go() -> Any:
        connections = Connections(None, transports=fakes.with_sshd(Transports(), sshd))
        try:
            return await work(ActionContext(tgt, read_only=read_only, connections=connections))
        finally:
            await connections.aclose()

    return run(go())


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("mirror")
    releases.build_mirror(root, ["0.18.8", "0.18.7"], archs=("amd64", "arm64"))

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((MIRROR_ADDR, 0), partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://{MIRROR_ADDR}:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def agent_args(key: str, paths: dict[str, str], **kw: Any) -> dict[str, Any]:
    return {"version": "0.18.8", "key": key, **paths, **kw}


def test_agent_plan_on_a_bare_host_creates_and_runs_only_probes(sshd, host, hub_key):
    tgt, root, paths = host
    action = make(Agent, agent_args(hub_key[1], paths))
    change = on_host(sshd, tgt, True, action.probe)
    assert change.kind is ChangeKind.CREATE
    assert change.summary == "install Beszel agent 0.18.8 (amd64)"
    assert not root.exists()  # planning wrote nothing
    absent = make(Agent, {**paths, "state": "absent"})
    assert on_host(sshd, tgt, True, absent.probe).kind is ChangeKind.NONE


def test_agent_refuses_an_archive_whose_checksum_does_not_match(sshd, host, hub_key, mirror):
    tgt, root, paths = host
    url, files = mirror
    good = files / "v0.18.8" / "beszel-agent_linux_amd64.tar.gz"
    original = good.read_bytes()
    users = {p.pw_name for p in pwd.getpwall()}
    try:
        good.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # one bit
        outcome = on_host(
            sshd,
            tgt,
            False,
            make(Agent, agent_args(hub_key[1], paths, release_url=url, user="beszel")).apply,
        )
    finally:
        good.write_bytes(original)
    assert not outcome.ok and not outcome.changed
    assert "sha256 mismatch: beszel-agent_linux_amd64.tar.gz is " in (outcome.error or "")
    assert "refused" in (outcome.error or "")
    assert not root.exists()  # nothing installed, no directory made
    assert {p.pw_name for p in pwd.getpwall()} == users  # no user created either
    missing_version = on_host(
        sshd,
        tgt,
        False,
        make(Agent, agent_args(hub_key[1], paths, release_url=url, version="9.9.9")).apply,
    )
    assert not missing_version.ok
    assert "cannot download " + url + "/v9.9.9/beszel_9.9.9_checksums.txt" in (
        missing_version.error or ""
    )
    assert not root.exists()


def test_agent_installs_a_verified_binary_and_its_plan_shows_the_rest(sshd, host, hub_key, mirror):
    tgt, root, paths = host
    url, _ = mirror
    old = make(Agent, agent_args(hub_key[1], paths, release_url=url, version="0.18.7"))

    async def install(ctx: ActionContext) -> Any:
        state = await old._state(ctx.shell())
        return await old._install_binary(ctx.shell(), old._wanted(state, hub_key[1]))

    done = on_host(sshd, tgt, False, install)
    assert done.rc == 0, done.stderr
    binary = root / "opt" / "beszel-agent" / "beszel-agent"
    assert oct(binary.stat().st_mode & 0o777) == "0o755"
    assert [p.name for p in binary.parent.iterdir()] == ["beszel-agent"]  # no stage left
    new = make(Agent, agent_args(hub_key[1], paths, release_url=url))
    change = on_host(sshd, tgt, True, new.probe)
    assert change.kind is ChangeKind.UPDATE
    assert change.summary == (
        "update Beszel agent: version 0.18.7 -> 0.18.8, user opskit-no-such-user, unit file,"
        " enable, start"
    )
    assert change.before["version"] == "0.18.7" and change.after["version"] == "0.18.8"

    # with the unit in place, only what systemd would say is left (no systemd here)
    async def write_unit(ctx: ActionContext) -> Any:
        data = new.unit_text(hub_key[1]).encode()
        await put_file(ctx.shell(), new.unit_path, data, mode=0o644, parents=True)
        return True

    assert on_host(sshd, tgt, False, write_unit)
    assert (root / "etc" / "systemd" / "beszel-agent.service").read_text() == new.unit_text(
        hub_key[1]
    )
    change = on_host(sshd, tgt, True, new.probe)
    assert "unit file" not in change.summary and "version" in change.summary
    # planning without the secret: the unit is compared without its KEY line
    pending = make(Agent, agent_args(placeholder("BESZEL_HUB_KEY"), paths, release_url=url))
    change = on_host(sshd, tgt, True, pending.probe)
    assert "unit file" not in change.summary
    assert change.summary.endswith("(KEY compared when applying: secrets)")
    other_port = make(Agent, agent_args(placeholder("K"), paths, release_url=url, listen="45999"))
    change = on_host(sshd, tgt, True, other_port.probe)
    assert "unit file" in change.summary
    assert '+Environment="LISTEN=45999"' in change.after["unit_diff"]
    absent = make(Agent, {**paths, "state": "absent"})
    gone = on_host(sshd, tgt, True, absent.probe)
    assert gone.kind is ChangeKind.DELETE
    assert gone.summary == "remove the Beszel agent (binary, unit file)"


def test_agent_whose_answer_is_lost_mid_install_is_unknown_not_failed(
    sshd, host, hub_key, monkeypatch
):
    """A command or upload of the install that lost its answer (SSHAnswerLost) leaves the
    host's state unknown: apply raises it for the engine to journal `unknown`, rather than
    return a failed outcome that a retry would act on; a plain failure stays an outcome."""
    from opskit.errors import OutcomeUnknown, SSHAnswerLost, StepError

    tgt, _, paths = host
    action = make(Agent, agent_args(hub_key[1], paths))

    def converge_raising(exc: Exception) -> Any:
        async def converge(*args: Any) -> None:
            raise exc

        return converge

    monkeypatch.setattr(Agent, "_converge", converge_raising(SSHAnswerLost("h1: lost")))
    with pytest.raises(OutcomeUnknown, match="h1: lost"):
        on_host(sshd, tgt, False, action.apply)
    monkeypatch.setattr(Agent, "_converge", converge_raising(StepError("h1: refused")))
    failed = on_host(sshd, tgt, False, action.apply)
    assert not failed.ok and failed.error == "h1: refused"


def test_agent_token_file_is_private_from_the_start(sshd, host, hub_key):
    tgt, _, paths = host
    token = "0eb2e974-3d7d-4ff0-bfe5-d357dd30c794"
    action = make(Agent, agent_args(hub_key[1], paths, token=token, hub_url="http://hub:8090"))
    unit = action.unit_text(hub_key[1])
    assert token not in unit
    assert f"EnvironmentFile={paths['env_file']}\n" in unit
    assert 'Environment="HUB_URL=http://hub:8090"\n' in unit

    async def write(ctx: ActionContext) -> Any:
        data = f"TOKEN={token}\n".encode()
        await put_file(ctx.shell(), paths["env_file"], data, mode=0o600, parents=True)
        return True

    assert on_host(sshd, tgt, False, write)
    env_file = Path(paths["env_file"])
    assert env_file.read_text() == f"TOKEN={token}\n"
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in env_file.parent.iterdir()] == ["beszel-agent.env"]

    async def differences(ctx: ActionContext, agent: Agent) -> list[str]:
        state = await agent._state(ctx.shell())
        return agent._differences(state, agent._wanted(state, hub_key[1]))[0]

    same = on_host(sshd, tgt, True, partial(differences, agent=action))
    assert not [d for d in same if d.startswith("token")]  # the file holds that token
    other = make(Agent, agent_args(hub_key[1], paths, token="another-token-1234"))
    assert "token" in on_host(sshd, tgt, True, partial(differences, agent=other))
    none = make(Agent, agent_args(hub_key[1], paths))
    assert "token file (remove)" in on_host(sshd, tgt, True, partial(differences, agent=none))
    change = on_host(sshd, tgt, True, other.probe)
    assert token not in change.model_dump_json()
    assert "another-token-1234" not in change.model_dump_json()


def test_agent_unit_has_the_installers_sandboxing_and_escapes_values():
    action = make(Agent, agent_args("ssh-ed25519 AAAAC3Nza hub 100%", {}))
    unit = action.unit_text("ssh-ed25519 AAAAC3Nza hub 100%")
    for line in (
        "KeyringMode=private",
        "LockPersonality=yes",
        "ProtectClock=yes",
        "ProtectHome=read-only",
        "ProtectHostname=yes",
        "ProtectKernelLogs=yes",
        "ProtectSystem=strict",
        "RemoveIPC=yes",
        "RestrictSUIDSGID=true",
        "StateDirectory=beszel-agent",
        "User=beszel",
        "Restart=on-failure",
        "ExecStart=/opt/beszel-agent/beszel-agent",
        'Environment="LISTEN=45876"',
        'Environment="KEY=ssh-ed25519 AAAAC3Nza hub 100%%"',
        "WantedBy=multi-user.target",
    ):
        assert line + "\n" in unit
    assert "TOKEN" not in unit and "EnvironmentFile" not in unit


def test_agent_arguments_and_host_facts_are_checked():
    with pytest.raises(ValidationError, match="needs the version to pin"):
        Agent.Args.model_validate({"key": "ssh-ed25519 AAAA"})
    with pytest.raises(ValidationError, match="give key, or hub_url, hub_email and hub_password"):
        Agent.Args.model_validate({"version": "0.18.8"})
    with pytest.raises(ValidationError, match="listen"):
        Agent.Args.model_validate({"version": "0.18.8", "key": "k", "listen": "a b"})
    for listen in (45876, "0.0.0.0:45876", "[::1]:45876", "/run/beszel/agent.sock"):
        Agent.Args.model_validate({"version": "0.18.8", "key": "k", "listen": listen})
    Agent.Args.model_validate({"state": "absent"})
    action = make(Agent, {"version": "0.18.8", "key": "ssh-ed25519 AAAA"})
    state = HostState("mips", None, False, "", "", None, None)
    with pytest.raises(OpskitError, match="no Beszel agent build for this host's architecture"):
        action._wanted(state, "ssh-ed25519 AAAA")
    for machine, arch in (
        ("x86_64", "amd64"),
        ("aarch64", "arm64"),
        ("armv7l", "armv7"),
        ("armv6l", "arm"),
    ):
        facts = HostState(machine, None, False, "", "", None, None)
        assert action._wanted(facts, "ssh-ed25519 AAAA").arch == arch
    with pytest.raises(OpskitError, match="not an SSH public key line"):
        action._wanted(HostState("x86_64", None, False, "", "", None, None), "hello")


# --- through the engine: plan, run, and what the artifacts hold ------------------------------


def test_a_run_registers_the_host_and_no_secret_reaches_any_artifact(
    hub, sshd, tmp_path, monkeypatch, hub_key
):
    from opskit.engine import session
    from opskit.engine.session import Request
    from opskit.report.progress import Reporter
    from opskit.secrets import redactor
    from opskit.store import Journal
    from opskit.workspace import Workspace

    email, password = hub.superuser
    token = "tok-" + os.urandom(8).hex()
    monkeypatch.setenv("OPSKIT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setenv("T_HUB_EMAIL", email)
    monkeypatch.setenv("T_HUB_PASSWORD", password)
    monkeypatch.setenv("T_AGENT_TOKEN", token)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runbooks").mkdir()
    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory" / "homelab.yaml").write_text(
        f"hosts:\n  - {{name: h1, address: {SSHD_ADDR}, tags: [m],"
        f' ssh: {{user: root, port: {sshd.port}, host_key: "{sshd.pinned}"}}}}\n'
    )
    (tmp_path / "runbooks" / "rb.yaml").write_text(
        textwrap.dedent(
            f"""
            name: rb
            targets: tag:m
            secrets:
              E: env:T_HUB_EMAIL
              P: env:T_HUB_PASSWORD
              TOK: env:T_AGENT_TOKEN
            steps:
              - id: register
                beszel.hub.system:
                  hub_url: {hub.url}
                  email: "{{{{ secrets.E }}}}"
                  password: "{{{{ secrets.P }}}}"
                  token: "{{{{ secrets.TOK }}}}"
            verify:
              - id: seen
                check.beszel.hub:
                  hub_url: {hub.url}
                  email: "{{{{ secrets.E }}}}"
                  password: "{{{{ secrets.P }}}}"
            """
        ).lstrip()
    )
    console = io.StringIO()

    def request(**kw: Any) -> Request:
        req = Request(
            workspace=Workspace(tmp_path / "runbooks", tmp_path / "inventory" / "homelab.yaml"),
            reporter=Reporter(out=console, log=tmp_path / "state" / "run.log"),
            journal=Journal(tmp_path / "state" / "journal.db", redact=redactor.redact),
            **kw,
        )
        fakes.with_sshd(req.settings.transports, sshd)
        return req

    # A review without credentials still plans: what needs them is known after apply.
    with monkeypatch.context() as without:
        without.delenv("T_HUB_PASSWORD")
        plan = session.make_plan(request(), "rb", {}, None)[2]
        assert [s.change.kind.value for s in plan.targets[0].steps] == ["unknown", "none"]
    plan = session.make_plan(request(), "rb", {}, None)[2]
    kinds = [s.change.kind.value for s in plan.targets[0].steps]
    assert kinds == ["create", "none"]  # probes log in to the hub with the secrets
    for attempt in (1, 2):
        req = request(yes=True)
        loaded, targets, plan = session.make_plan(req, "rb", {}, None)
        result = session.execute(req, loaded, targets, plan)
        assert result.exit_code == 0, console.getvalue()
        journal = Journal(tmp_path / "state" / "journal.db")
        statuses = {s.step_id: s.status for s in journal.steps(result.run_id)}
        journal.close()
        assert statuses["register"] == ("succeeded" if attempt == 1 else "unchanged")
        assert statuses["seen"] == "succeeded"
    (system,) = [s for s in hub.records("systems") if s["name"] == "h1"]
    (fingerprint,) = [f for f in hub.records("fingerprints") if f["system"] == system["id"]]
    assert fingerprint["token"] == token
    artifacts = [plan.model_dump_json().encode(), console.getvalue().encode()]
    artifacts += [p.read_bytes() for p in (tmp_path / "state").rglob("*") if p.is_file()]
    for blob in artifacts:
        for secret in (email, password, token):
            assert secret.encode() not in blob
        assert b"eyJ" not in blob  # no PocketBase token (a JWT) either
    apply(make(HubSystem, hub_args(hub, name="h1", state="absent")), target("h1"))


def test_planning_the_install_runbook_over_ssh_reads_and_writes_nothing(
    sshd, tmp_path, monkeypatch, hub_key
):
    """The shipped runbook, planned through the engine against a host (this machine, through
    sshd) whose inventory vars point the agent at temporary paths: the agent step would
    install, the hub steps wait for the secrets, and the plan holds references only."""
    from opskit.engine import session
    from opskit.engine.session import Request
    from opskit.report.progress import Reporter
    from opskit.workspace import Workspace

    monkeypatch.setenv("OPSKIT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.delenv("BESZEL_HUB_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runbooks").mkdir()
    (tmp_path / "inventory").mkdir()
    text = (REPO / "runbooks" / "install-beszel-agents.yaml").read_text()
    # the same runbook, with the agent's paths under tmp_path (the shipped one uses /opt, /etc)
    root = tmp_path / "host"
    text = text.replace(
        '      hub_password: "{{ secrets.hub_password }}"\n',
        '      hub_password: "{{ secrets.hub_password }}"\n'
        f"      install_dir: {root}/opt\n      unit_dir: {root}/etc\n"
        f"      env_file: {root}/etc/env\n",
        1,
    )
    (tmp_path / "runbooks" / "install-beszel-agents.yaml").write_text(text)
    (tmp_path / "inventory" / "homelab.yaml").write_text(
        "vars:\n  beszel: {version: 0.18.7, release_url: http://127.0.0.74:1/mirror,"
        " hub_url: http://127.0.0.71:1, hub_status: null}\n"
        f"hosts:\n  - {{name: h1, address: {SSHD_ADDR}, tags: [monitored],"
        f' ssh: {{user: root, port: {sshd.port}, host_key: "{sshd.pinned}"}}}}\n'
    )
    req = Request(
        workspace=Workspace(tmp_path / "runbooks", tmp_path / "inventory" / "homelab.yaml"),
        reporter=Reporter(out=io.StringIO()),
    )
    fakes.with_sshd(req.settings.transports, sshd)
    plan = session.make_plan(req, "install-beszel-agents", {}, None)[2]
    steps = {s.id: s for s in plan.targets[0].steps}
    assert steps["agent"].change.kind is ChangeKind.CREATE
    assert steps["agent"].change.summary == "install Beszel agent 0.18.7 (amd64)"
    assert steps["agent"].args["release_url"] == "http://127.0.0.74:1/mirror"  # from the vars
    # BESZEL_HUB_KEY is unset: the optional secret plans as null (the key will come from the hub)
    assert steps["agent"].args["key"] is None
    assert steps["register"].change.kind is ChangeKind.UNKNOWN
    assert steps["hub-sees-it"].args["status"] is None
    assert plan.serial == 2
    assert plan.max_fail == 1
    assert not root.exists()


# --- the whole life of an agent, on a host of its own ------------------------------------------

HOST_ADDR = "127.0.0.75"


class IsolatedHost:
    """This machine seen through sshd in a mount and PID namespace of its own, with
    copy-on-write overlays on /etc, /opt, /usr, /var and /root (what the agent installs lands
    in `upper`), a private /run and the lab's `systemctl` stand-in. Its network is the
    machine's, used on loopback only."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sshd = Sshd(root / "sshd", [HOST_ADDR])  # keys and authorized_keys only
        self.port = self.sshd.port
        mounts = []
        for d in ("etc", "opt", "usr", "var", "root"):
            (root / "upper" / d).mkdir(parents=True)
            (root / "work" / d).mkdir(parents=True)
            mounts.append(
                f"mount -t overlay overlay -o lowerdir=/{d},upperdir={root}/upper/{d},"
                f"workdir={root}/work/{d} /{d}"
            )
        # the agent (User=beszel) runs the venv's Python, which may live under /root
        (root / "upper" / "root").chmod(0o711)
        # the lab's systemctl stand-in: the one every lab host runs
        stand_in = root / "upper" / "usr" / "bin" / "systemctl"
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        source = (REPO / "src" / "opskit" / "lab" / "systemctl.py").read_text()
        stand_in.write_text(source if source.startswith("#!") else f"#!{sys.executable}\n{source}")
        stand_in.chmod(0o755)
        mounts += ["mount -t tmpfs -o mode=755 tmpfs /run", "mkdir -p /run/sshd"]
        config = root / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress {HOST_ADDR}\nHostKey {self.sshd.host_key}\n"
            f"AuthorizedKeysFile {root}/sshd/authorized_keys\nPidFile none\n"
            "StrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nLogLevel ERROR\n"
            "Subsystem sftp internal-sftp\n"
        )
        script = "set -e\n" + "\n".join(mounts) + f"\nexec {SSHD} -D -e -f {config}\n"
        self.log = open(root / "host.log", "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
            ],
            stdout=self.log,
            stderr=self.log,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection((HOST_ADDR, self.port), 0.2).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    missing(f"no isolated host: {(root / 'host.log').read_text()}")
                time.sleep(0.05)

    def target(self) -> Target:
        return target(
            "iso", HOST_ADDR, ssh_user="root", ssh_port=self.port, host_key=self.sshd.pinned
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def answering(check: CheckAgent, tgt: Target, within: float = 15.0) -> Outcome:
    """The check's outcome once the agent answers (a service starts its server in a moment),
    or its last failure."""
    deadline = time.monotonic() + within
    while True:
        outcome = apply(check, tgt)
        if outcome.ok or time.monotonic() > deadline:
            return outcome
        time.sleep(0.2)


@pytest.mark.integration
def test_agent_installs_upgrades_and_removes_on_an_isolated_host(
    tmp_path, monkeypatch, hub_key, mirror
):
    if shutil.which("unshare") is None:
        missing("unshare (util-linux) is not installed")
    monkeypatch.setenv("OPSKIT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    url, _ = mirror
    machine_users = {p.pw_name for p in pwd.getpwall()}
    assert not Path("/opt/beszel-agent").exists()
    iso = IsolatedHost(tmp_path / "iso")
    try:
        tgt = iso.target()
        agent_port = free_port(HOST_ADDR)
        base = {"key": hub_key[1], "release_url": url, "listen": f"{HOST_ADDR}:{agent_port}"}
        v7 = make(Agent, {**base, "version": "0.18.7"})
        v8 = make(Agent, {**base, "version": "0.18.8"})
        answers = make(CheckAgent, {"host": HOST_ADDR, "port": agent_port})

        assert on_host(iso.sshd, tgt, True, v7.probe).kind is ChangeKind.CREATE
        first = on_host(iso.sshd, tgt, False, v7.apply)
        assert first.ok, first.error
        assert first.outputs["done"] == [
            "binary 0.18.7",
            "user beszel",
            "unit file",
            "daemon-reload",
            "enable",
            "start",
        ]
        running = answering(answers, tgt)
        assert running.ok and running.outputs["version"] == "0.18.7", running.error
        upper = iso.root / "upper"
        assert (upper / "opt/beszel-agent/beszel-agent").is_file()
        assert "\nbeszel:" in "\n" + (upper / "etc/passwd").read_text()
        unit = (upper / "etc/systemd/system/beszel-agent.service").read_text()
        assert unit == v7.unit_text(hub_key[1])

        # the second run: nothing to do
        again = on_host(iso.sshd, tgt, True, v7.probe)
        assert again.kind is ChangeKind.NONE, again.summary
        assert again.summary == "Beszel agent 0.18.7 installed, enabled and running"

        # another version: upgraded in place and restarted
        upgrade = on_host(iso.sshd, tgt, True, v8.probe)
        assert upgrade.kind is ChangeKind.UPDATE
        assert upgrade.summary == "update Beszel agent and restart: version 0.18.7 -> 0.18.8"
        done = on_host(iso.sshd, tgt, False, v8.apply)
        assert done.ok and done.outputs["done"] == ["binary 0.18.8", "stop", "start"], done
        assert answering(answers, tgt).outputs["version"] == "0.18.8"
        assert on_host(iso.sshd, tgt, True, v8.probe).kind is ChangeKind.NONE

        # a token: in a 0600 file beside the unit, never in it
        token = "0eb2e974-3d7d-4ff0-bfe5-d357dd30c794"
        tokened = make(
            Agent,
            {**base, "version": "0.18.8", "token": token, "hub_url": "http://hub.invalid:8090"},
        )
        with_token = on_host(iso.sshd, tgt, False, tokened.apply)
        assert with_token.ok and token not in with_token.model_dump_json()
        env_file = upper / "etc/beszel-agent.env"
        assert env_file.read_text() == f"TOKEN={token}\n"
        assert oct(env_file.stat().st_mode & 0o777) == "0o600"
        assert token not in (upper / "etc/systemd/system/beszel-agent.service").read_text()
        assert on_host(iso.sshd, tgt, True, tokened.probe).kind is ChangeKind.NONE
        assert answering(answers, tgt).ok

        # absent: service, files and user gone
        gone = make(Agent, {"state": "absent"})
        removal = on_host(iso.sshd, tgt, True, gone.probe)
        assert removal.kind is ChangeKind.DELETE
        assert removal.summary == (
            "remove the Beszel agent (binary, unit file, token file, user beszel)"
        )
        assert on_host(iso.sshd, tgt, False, gone.apply).ok
        assert not apply(answers, tgt).ok
        assert on_host(iso.sshd, tgt, True, gone.probe).kind is ChangeKind.NONE
    finally:
        iso.stop()
    # and the machine itself saw none of it
    assert {p.pw_name for p in pwd.getpwall()} == machine_users
    assert not Path("/opt/beszel-agent").exists()
    assert not Path("/etc/systemd/system/beszel-agent.service").exists()
