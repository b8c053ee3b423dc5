"""check.http, check.tcp and wait against real servers on 127.0.0.1 (nothing beyond loopback)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ipaddress
import json
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import ValidationError

import opskit.actions
from opskit.actions import ActionContext
from opskit.actions.checks import HttpCheck, TcpCheck, Wait
from opskit.clients.connections import Connections
from opskit.clients.tls import fingerprint_of, normalize_fingerprint
from opskit.model import ChangeKind, Outcome, Risk, Target

LOOPBACK = "127.0.0.1"
DOC = {
    "status": "ok",
    "a": {"b": 3},
    "items": ["first", "second", "last"],
    "enabled": True,
    "count": 1,
}
BODY = "hello opskit 1.2.3"


def context() -> ActionContext:
    target = Target(name="t", kind="host", address=LOOPBACK)
    return ActionContext(target=target, read_only=False, connections=Connections(None))


def apply(cls: Any, args: dict[str, Any]) -> Outcome:
    action = cls(cls.Args.model_validate(args))
    outcome = asyncio.run(action.apply(context()))
    assert isinstance(outcome, Outcome)
    return outcome


# --- servers ----------------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: Any  # email.message.Message: case-insensitive .get()
    body: bytes


class Handler(BaseHTTPRequestHandler):
    timeout = 5  # a stuck client never pins a server thread for long
    server: Server

    def _respond(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append(Seen(self.command, self.path, self.headers, body))
        status, ctype, payload = 200, "text/plain; charset=utf-8", BODY.encode()
        if self.path.startswith("/status/"):
            status = int(self.path.rsplit("/", 1)[1])
        elif self.path == "/json":
            ctype, payload = "application/json", json.dumps(DOC).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_HEAD = _respond

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Server(ThreadingHTTPServer):
    """Records every request that reached a handler; with `tls`, speaks HTTPS."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__((LOOPBACK, 0), Handler)
        self.tls = tls
        self.seen: list[Seen] = []
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://{LOOPBACK}:{self.server_address[1]}"

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        # The handshake runs in the request's own thread, so a client that aborts it
        # (an untrusted certificate) cannot stall the accept loop.
        try:
            wrapped = self.tls.wrap_socket(request, server_side=True)
        except OSError:
            return
        try:
            super().finish_request(wrapped, client_address)
        finally:
            wrapped.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # aborted handshakes and closed connections are expected here


@pytest.fixture
def serve() -> Iterator[Any]:
    started: list[tuple[Server, threading.Thread]] = []

    def start(tls: ssl.SSLContext | None = None) -> Server:
        server = Server(tls)
        thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
        thread.start()
        started.append((server, thread))
        return server

    yield start
    for server, thread in started:
        server.shutdown()
        server.server_close()
        thread.join(2)


@pytest.fixture
def http(serve: Any) -> Server:
    server: Server = serve()
    return server


@pytest.fixture
def free_port() -> int:
    """A port nothing listens on: bound, then released."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A socket that listens but never accepts: connects succeed, nothing ever answers."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        sock.listen(8)
        sock.setblocking(False)
        yield sock


def port_of(sock: socket.socket) -> int:
    port: int = sock.getsockname()[1]
    return port


def accepted(sock: socket.socket) -> bool:
    """Whether a connection reached the non-blocking listener `sock` (it is then closed)."""
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


@dataclass
class Cert:
    pem: Path
    key: Path
    fingerprint: str
    der: bytes = field(repr=False)


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    """A self-signed certificate for the IP 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, LOOPBACK)])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    pem, key_path = folder / "cert.pem", folder / "key.pem"
    pem.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    der = certificate.public_bytes(serialization.Encoding.DER)
    fingerprint = ":".join(f"{b:02X}" for b in certificate.fingerprint(hashes.SHA256()))
    return Cert(pem=pem, key=key_path, fingerprint=fingerprint, der=der)


@pytest.fixture
def https(serve: Any, cert: Cert) -> Server:
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert.pem, cert.key)
    server: Server = serve(tls)
    return server


# --- the registry -----------------------------------------------------------------------------


def test_catalog_holds_the_registered_kinds() -> None:
    registered = {ep.name: ep.value for ep in entry_points(group=opskit.actions.ENTRY_POINT_GROUP)}
    assert {k: registered[k] for k in ("check.http", "check.tcp", "wait")} == {
        "check.http": "opskit.actions.checks:HttpCheck",
        "check.tcp": "opskit.actions.checks:TcpCheck",
        "wait": "opskit.actions.checks:Wait",
    }
    catalog = opskit.actions.catalog()
    assert set(catalog) == set(registered)
    assert {k: catalog[k] for k in ("check.http", "check.tcp", "wait")} == {
        "check.http": HttpCheck,
        "check.tcp": TcpCheck,
        "wait": Wait,
    }
    for name, cls in catalog.items():
        assert cls.name == name
        assert opskit.actions.get(name) is cls
        # checks and waits only look; everything else may change the world
        assert (cls.risk == Risk.READ) == (
            name.startswith("check.") or name.endswith(".wait") or name == "wait"
        )


def test_a_plugin_neither_shadows_a_shipped_kind_nor_costs_a_scan_to_find_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from importlib.metadata import EntryPoint

    from opskit import actions

    shipped = {ep.name for ep in entry_points(group=actions.ENTRY_POINT_GROUP)}
    assert set(actions._own_entry_points()) == shipped
    hijack = EntryPoint("check.http", "evil.module:Check", actions.ENTRY_POINT_GROUP)
    plugin = EntryPoint("site.kind", "site_kinds:Kind", actions.ENTRY_POINT_GROUP)
    scans: list[str] = []

    def scanned(group: str) -> list[EntryPoint]:
        scans.append(group)
        return [hijack, plugin]

    monkeypatch.setattr("importlib.metadata.entry_points", scanned)
    actions._entry_points.cache_clear()
    try:
        assert actions.get("check.http") is HttpCheck
        assert "wait" in actions.catalog()
        assert scans == []  # a shipped kind is found in opskit's own metadata
        assert actions._entry_point("site.kind") is plugin
        assert actions._entry_point("check.http").value == "opskit.actions.checks:HttpCheck"
        assert set(actions.catalog()) == shipped | {"site.kind"}
        assert scans == [actions.ENTRY_POINT_GROUP]
    finally:
        actions._entry_points.cache_clear()


# --- check.http -------------------------------------------------------------------------------


def test_http_expected_status_passes(http: Server) -> None:
    outcome = apply(HttpCheck, {"url": http.url + "/"})
    assert outcome.ok, outcome.error
    assert outcome.error is None
    assert outcome.outputs["status"] == 200
    assert outcome.outputs["body"] == BODY
    assert f"GET {http.url}/ -> 200" in outcome.summary
    assert [(s.method, s.path) for s in http.seen] == [("GET", "/")]


def test_http_wrong_status_fails_naming_both(http: Server) -> None:
    outcome = apply(HttpCheck, {"url": http.url + "/status/404"})
    assert not outcome.ok
    assert outcome.error == "status 404, expected 200"
    assert outcome.outputs["status"] == 404


def test_http_expect_accepts_a_list_and_head(http: Server) -> None:
    listed = apply(HttpCheck, {"url": http.url + "/status/204", "expect": [200, 204]})
    assert listed.ok, listed.error
    head = apply(HttpCheck, {"url": http.url + "/", "method": "HEAD"})
    assert head.ok, head.error
    assert head.outputs["body"] == ""
    assert [s.method for s in http.seen] == ["GET", "HEAD"]


@pytest.mark.parametrize(
    ("match", "error"),
    [
        ({"status": "ok"}, None),
        ({"a.b": 3, "items.0": "first", "items.-1": "last"}, None),
        ({"a": {"b": 3}, "enabled": True, "count": 1}, None),
        ({"status": "down"}, "JSON status is 'ok', expected 'down'"),
        ({"a.b": 4}, "JSON a.b is 3, expected 4"),
        ({"items.1": "first"}, "JSON items.1 is 'second', expected 'first'"),
        ({"items.3": "x"}, "JSON has no 'items.3'"),
        ({"a.c": 1}, "JSON has no 'a.c'"),
        ({"items.--1": "last"}, "JSON has no 'items.--1'"),
        ({"status.x": "ok"}, "JSON has no 'status.x'"),
        # JSON true is not 1, and 1 is not true
        ({"enabled": 1}, "JSON enabled is True, expected 1"),
        ({"count": True}, "JSON count is 1, expected True"),
    ],
)
def test_http_json_paths(http: Server, match: dict[str, Any], error: str | None) -> None:
    outcome = apply(HttpCheck, {"url": http.url + "/json", "json": match})
    assert outcome.error == error
    assert outcome.ok is (error is None)
    assert outcome.outputs["json"] == DOC


def test_http_json_on_a_text_body_fails(http: Server) -> None:
    outcome = apply(HttpCheck, {"url": http.url + "/", "json": {"status": "ok"}})
    assert not outcome.ok
    assert outcome.error == "body is not JSON"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({"contains": "opskit"}, None),
        ({"contains": "nowhere"}, "body does not contain 'nowhere'"),
        ({"matches": r"\d+\.\d+\.\d+$"}, None),
        ({"matches": "^bye"}, "body does not match '^bye'"),
        (
            {"contains": "nowhere", "matches": "^bye"},
            "body does not contain 'nowhere'; body does not match '^bye'",
        ),
    ],
)
def test_http_contains_and_matches(http: Server, args: dict[str, Any], error: str | None) -> None:
    outcome = apply(HttpCheck, {"url": http.url + "/", **args})
    assert outcome.error == error
    assert outcome.ok is (error is None)


def test_http_bad_arguments_are_refused() -> None:
    with pytest.raises(ValidationError, match="bad regex"):
        HttpCheck.Args.model_validate({"url": "http://127.0.0.1/", "matches": "("})
    for url in ("http://127.0.0.1:99999/", "https://127.0.0.1:port/", "ftp://127.0.0.1/"):
        with pytest.raises(ValidationError):
            HttpCheck.Args.model_validate({"url": url})


def test_http_sends_the_bearer_token_and_headers(http: Server) -> None:
    outcome = apply(
        HttpCheck, {"url": http.url + "/", "bearer": "s3cret", "headers": {"X-Probe": "opskit"}}
    )
    assert outcome.ok, outcome.error
    (seen,) = http.seen
    assert seen.headers.get("Authorization") == "Bearer s3cret"
    assert seen.headers.get("X-Probe") == "opskit"


def test_http_without_bearer_sends_no_authorization(http: Server) -> None:
    assert apply(HttpCheck, {"url": http.url + "/"}).ok
    (seen,) = http.seen
    assert seen.headers.get("Authorization") is None


def test_http_post_sends_a_json_body(http: Server) -> None:
    payload = {"name": "beszel", "ports": [45876], "on": True}
    outcome = apply(
        HttpCheck,
        {"url": http.url + "/hook", "method": "POST", "body": payload, "expect": 200},
    )
    assert outcome.ok, outcome.error
    (seen,) = http.seen
    assert (seen.method, seen.path) == ("POST", "/hook")
    assert seen.headers.get("Content-Type") == "application/json"
    assert json.loads(seen.body) == payload


def test_http_post_sends_a_string_body_as_is(http: Server) -> None:
    outcome = apply(HttpCheck, {"url": http.url + "/", "method": "POST", "body": "a=1&b=2"})
    assert outcome.ok, outcome.error
    (seen,) = http.seen
    assert seen.body == b"a=1&b=2"
    assert seen.headers.get("Content-Type") != "application/json"


def test_http_refused_port_fails_without_raising(free_port: int) -> None:
    url = f"http://{LOOPBACK}:{free_port}/"
    outcome = apply(HttpCheck, {"url": url, "timeout": 2})
    assert not outcome.ok
    assert outcome.error is not None
    assert (
        outcome.error == f"GET {url}: cannot connect to {LOOPBACK}:{free_port}: connection refused"
    )
    assert outcome.summary == outcome.error


def test_http_silent_server_times_out(listener: socket.socket) -> None:
    url = f"http://{LOOPBACK}:{port_of(listener)}/"
    started = time.monotonic()
    outcome = apply(HttpCheck, {"url": url, "timeout": 0.5})
    elapsed = time.monotonic() - started
    assert not outcome.ok
    assert outcome.error is not None
    assert "no answer within" in outcome.error
    assert outcome.error.startswith(f"GET {url}")
    assert 0.4 < elapsed < 3


# --- check.http over HTTPS --------------------------------------------------------------------


def test_fingerprint_helpers(cert: Cert) -> None:
    assert fingerprint_of(cert.der) == cert.fingerprint
    assert fingerprint_of(b"abc") == ":".join(
        re.findall("..", hashlib.sha256(b"abc").hexdigest().upper())
    )
    assert fingerprint_of(b"abc").startswith("BA:78:16:BF:")
    assert len(fingerprint_of(b"")) == 32 * 3 - 1
    bare = cert.fingerprint.replace(":", "").lower()
    assert normalize_fingerprint(bare) == cert.fingerprint
    assert normalize_fingerprint(f"  {cert.fingerprint.lower()}\n") == cert.fingerprint
    assert normalize_fingerprint(cert.fingerprint) == cert.fingerprint


def test_https_pinned_fingerprint_passes(https: Server, cert: Cert) -> None:
    outcome = apply(
        HttpCheck,
        {"url": https.url + "/json", "tls": {"fingerprint": cert.fingerprint}, "bearer": "tok"},
    )
    assert outcome.ok, outcome.error
    assert json.loads(outcome.outputs["body"]) == DOC
    (seen,) = https.seen
    assert seen.headers.get("Authorization") == "Bearer tok"


def test_https_pinned_fingerprint_accepts_the_bare_form(https: Server, cert: Cert) -> None:
    bare = cert.fingerprint.replace(":", "").lower()
    outcome = apply(HttpCheck, {"url": https.url + "/", "tls": {"fingerprint": bare}})
    assert outcome.ok, outcome.error


def test_https_wrong_fingerprint_fails_before_any_request(https: Server, cert: Cert) -> None:
    wrong = "ab" * 32
    outcome = apply(
        HttpCheck,
        {"url": https.url + "/", "tls": {"fingerprint": wrong}, "bearer": "must-not-leak"},
    )
    assert not outcome.ok
    assert outcome.error is not None
    assert "fingerprint mismatch" in outcome.error
    assert cert.fingerprint in outcome.error
    assert normalize_fingerprint(wrong) in outcome.error
    time.sleep(0.05)  # give a stray request every chance to arrive
    assert https.seen == []  # no request, so no bearer token, reached the server


def test_https_pinned_fingerprint_against_a_silent_server(listener: socket.socket) -> None:
    url = f"https://{LOOPBACK}:{port_of(listener)}/"
    outcome = apply(HttpCheck, {"url": url, "timeout": 0.3, "tls": {"fingerprint": "AB" * 32}})
    assert not outcome.ok
    assert outcome.error == f"{LOOPBACK}:{port_of(listener)}: TLS handshake failed: timed out"


def test_https_ca_file_passes(https: Server, cert: Cert) -> None:
    outcome = apply(HttpCheck, {"url": https.url + "/", "tls": {"ca": str(cert.pem)}})
    assert outcome.ok, outcome.error
    assert len(https.seen) == 1


def test_https_missing_ca_file_fails(https: Server, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    outcome = apply(HttpCheck, {"url": https.url + "/", "tls": {"ca": str(missing)}})
    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error.startswith(f"cannot load CA file {missing}")
    assert https.seen == []


def test_https_system_cas_do_not_trust_a_self_signed_server(https: Server) -> None:
    outcome = apply(HttpCheck, {"url": https.url + "/", "bearer": "must-not-leak"})
    assert not outcome.ok
    assert outcome.error is not None
    assert "TLS certificate not trusted (CERTIFICATE_VERIFY_FAILED" in outcome.error
    assert "cannot connect" not in outcome.error
    time.sleep(0.05)
    assert https.seen == []


def test_https_insecure_passes(https: Server) -> None:
    outcome = apply(HttpCheck, {"url": https.url + "/", "tls": {"insecure": True}})
    assert outcome.ok, outcome.error
    assert outcome.outputs["body"] == BODY


def test_https_insecure_cannot_be_combined(cert: Cert) -> None:
    with pytest.raises(ValidationError, match="insecure"):
        HttpCheck.Args.model_validate(
            {"url": "https://127.0.0.1/", "tls": {"insecure": True, "ca": str(cert.pem)}}
        )


# --- probe: plans nothing and touches nothing -------------------------------------------------


def test_probe_of_every_check_changes_and_contacts_nothing(
    http: Server, listener: socket.socket
) -> None:
    ctx = context()
    actions = [
        HttpCheck(HttpCheck.Args.model_validate({"url": http.url + "/", "bearer": "x"})),
        TcpCheck(TcpCheck.Args.model_validate({"port": port_of(listener)})),
        Wait(Wait.Args.model_validate({"duration": "1h"})),
    ]

    async def probe_all() -> list[Any]:
        return [await asyncio.wait_for(action.probe(ctx), 2) for action in actions]

    changes = asyncio.run(probe_all())
    for action, change in zip(actions, changes, strict=True):
        assert change.kind is ChangeKind.NONE
        assert change.summary == action.describe()
    assert http.seen == []
    assert not accepted(listener)
    # the same servers do see the checks when they are applied
    assert apply(HttpCheck, {"url": http.url + "/"}).ok
    assert len(http.seen) == 1
    assert apply(TcpCheck, {"port": port_of(listener)}).ok
    assert accepted(listener)


# --- check.tcp --------------------------------------------------------------------------------


def test_tcp_open_port_passes(listener: socket.socket) -> None:
    port = port_of(listener)
    outcome = apply(TcpCheck, {"host": LOOPBACK, "port": port, "timeout": 2})
    assert outcome.ok, outcome.error
    assert outcome.summary.startswith(f"tcp {LOOPBACK}:{port} open in ")
    assert outcome.outputs["banner"] == ""
    assert accepted(listener)


def test_tcp_host_defaults_to_the_target_address(listener: socket.socket) -> None:
    port = port_of(listener)
    args = TcpCheck.Args.model_validate({"port": port})
    assert args.host is None
    outcome = apply(TcpCheck, {"port": port})
    assert outcome.ok, outcome.error
    assert f"tcp {LOOPBACK}:{port} open" in outcome.summary
    assert accepted(listener)


def test_tcp_closed_port_fails(free_port: int) -> None:
    outcome = apply(TcpCheck, {"port": free_port, "timeout": 2})
    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error == f"tcp {LOOPBACK}:{free_port}: connection refused"


async def _with_server(handler: Any, args: dict[str, Any]) -> Outcome:
    """Apply check.tcp against an asyncio server on 127.0.0.1 running `handler`."""
    server = await asyncio.start_server(handler, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        action = TcpCheck(TcpCheck.Args.model_validate({"port": port, **args}))
        return await action.apply(context())
    finally:
        server.close()
        await server.wait_closed()


def _greeter(banner: bytes) -> Any:
    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(banner)
        try:
            await writer.drain()
            await asyncio.wait_for(reader.read(), 2)  # until the client hangs up
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()

    return greet


def test_tcp_banner_matches() -> None:
    outcome = asyncio.run(
        _with_server(_greeter(b"SSH-2.0-beszel_0.12.0\r\n"), {"banner": r"^SSH-2\.0-beszel_"})
    )
    assert outcome.ok, outcome.error
    assert outcome.outputs["banner"] == "SSH-2.0-beszel_0.12.0"


def test_tcp_banner_mismatch_names_the_banner() -> None:
    outcome = asyncio.run(
        _with_server(_greeter(b"SSH-2.0-OpenSSH_9.6\r\n"), {"banner": r"^SSH-2\.0-beszel_"})
    )
    assert not outcome.ok
    assert outcome.error is not None
    assert "'SSH-2.0-OpenSSH_9.6'" in outcome.error
    assert "does not match" in outcome.error
    assert outcome.outputs["banner"] == "SSH-2.0-OpenSSH_9.6"


def test_tcp_silent_server_has_no_banner(listener: socket.socket) -> None:
    started = time.monotonic()
    outcome = apply(TcpCheck, {"port": port_of(listener), "timeout": 0.3, "banner": "^SSH"})
    assert time.monotonic() - started < 2
    assert not outcome.ok
    assert outcome.error is not None
    assert "banner '' does not match '^SSH'" in outcome.error


def test_tcp_reset_after_accept_fails_without_raising() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    outcome = asyncio.run(_with_server(reset, {"banner": "^SSH", "timeout": 2}))
    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error.startswith(f"tcp {LOOPBACK}:")


def test_tcp_endless_first_line_fails_without_raising() -> None:
    outcome = asyncio.run(_with_server(_greeter(b"x" * 70_000), {"banner": "^x", "timeout": 2}))
    assert not outcome.ok
    assert outcome.error is not None
    assert "longer than 64 KiB" in outcome.error


# --- wait -------------------------------------------------------------------------------------


def test_wait_sleeps_at_least_the_duration() -> None:
    started = time.monotonic()
    outcome = apply(Wait, {"duration": 0.05})
    elapsed = time.monotonic() - started
    assert outcome.ok
    assert outcome.summary == Wait(Wait.Args.model_validate({"duration": 0.05})).describe()
    assert 0.05 <= elapsed < 2


def test_wait_reads_duration_strings() -> None:
    assert Wait.Args.model_validate({"duration": "250ms"}).duration == pytest.approx(0.25)
    with pytest.raises(ValidationError):
        Wait.Args.model_validate({"duration": -1})


def test_a_refused_http_check_says_its_error_once(project, opskit):
    """`GET URL: ConnectError: ...: GET URL: ConnectError: ...` said it twice: the step line
    joined a summary and an error that were the same text."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    url = f"http://127.0.0.1:{port}/livez"
    project.runbook(
        "refused",
        f"name: refused\ntargets: local\nsteps:\n  - id: c\n    check.http: {{url: '{url}'}}\n",
    )
    result = opskit("run", "refused", cwd=project.root)
    assert result.code == 1
    line = next(x for x in result.out.splitlines() if x.startswith("[local] c: FAILED"))
    assert line.count("connection refused") == 1 and line.count(url) == 1, line
