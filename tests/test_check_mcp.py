"""check.mcp: the MCP handshake over plain HTTP, against fakes (event streams, pages of tools,
refusals) and against real servers on loopback: one built with the official SDK (<2), the real
ProxmoxMCP-Plus 0.6.7 in streamable-HTTP mode against fakepve, and one that never answers."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from mcp_servers import hung_server, proxmoxmcp_streamable, sdk_server
from opskit.actions import ActionContext
from opskit.actions.check_mcp import McpCheck
from opskit.clients.connections import Connections, Sent, Transports
from opskit.model import Outcome, Target


def context(
    transport: httpx.AsyncBaseTransport | None = None,
    *,
    read_only: bool = False,
    seen: list[Sent] | None = None,
) -> ActionContext:
    target = Target(name="t", kind="host", address="127.0.0.1")
    transports = Transports(http=transport, observe=seen.append if seen is not None else None)
    return ActionContext(
        target=target, read_only=read_only, connections=Connections(None, transports=transports)
    )


def check(args: dict[str, Any], **kw: Any) -> Outcome:
    action = McpCheck(McpCheck.Args.model_validate(args))
    return asyncio.run(action.apply(context(**kw)))


# --- a fake server: what the protocol allows a server to answer -------------------------------


class FakeMcp:
    """Answers as a streamable-HTTP server may: SSE-framed or JSON, tools in pages."""

    def __init__(self, *, pages: int = 1, sse: bool = True, key: str | None = None) -> None:
        self.pages, self.sse, self.key = pages, sse, key
        self.requests: list[tuple[str, dict[str, str], Any]] = []

    def answer(self, message_id: Any, result: Any, headers: dict[str, str]) -> httpx.Response:
        body = {"jsonrpc": "2.0", "id": message_id, "result": result}
        if self.sse:
            text = f": ping\n\nevent: message\ndata: {json.dumps(body)}\n\n"
            return httpx.Response(
                200, text=text, headers={"content-type": "text/event-stream", **headers}
            )
        return httpx.Response(200, json=body, headers=headers)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        message = json.loads(request.content) if request.content else None
        self.requests.append((request.method, dict(request.headers), message))
        if self.key and request.headers.get("authorization") != f"Bearer {self.key}":
            return httpx.Response(401, json={"error": "invalid_token"})
        if request.method == "DELETE":
            return httpx.Response(200)
        if "text/event-stream" not in request.headers.get("accept", ""):
            return httpx.Response(406)
        method = message["method"]
        if method == "initialize":
            return self.answer(
                message["id"],
                {
                    "protocolVersion": "2025-03-26",
                    "serverInfo": {"name": "fake", "version": "9.9"},
                    "capabilities": {"tools": {}},
                },
                {"mcp-session-id": "s-123"},
            )
        if request.headers.get("mcp-session-id") != "s-123":
            return httpx.Response(400, text="Bad Request: No valid session ID provided")
        if method == "notifications/initialized":
            return httpx.Response(202)
        assert method == "tools/list"
        page = int(message["params"].get("cursor") or 0)
        result: dict[str, Any] = {"tools": [{"name": f"p{page}-t{i}"} for i in range(3)]}
        if page + 1 < self.pages:
            result["nextCursor"] = str(page + 1)
        return self.answer(message["id"], result, {})


def test_the_handshake_follows_pages_and_event_streams_and_ends_the_session() -> None:
    fake = FakeMcp(pages=3)
    seen: list[Sent] = []
    outcome = check(
        {"url": "http://mcp.test/mcp", "min_tools": 9, "tools": ["p2-t0"]},
        transport=httpx.MockTransport(fake),
        read_only=True,  # every request passes a planning door: nothing it sends changes
        seen=seen,
    )
    assert outcome.ok, outcome.error
    assert outcome.outputs["tool_count"] == 9
    assert outcome.outputs["server_name"] == "fake"
    assert outcome.outputs["server_version"] == "9.9"
    assert outcome.outputs["protocol_version"] == "2025-03-26"
    methods = [m["method"] if m else method for method, _, m in fake.requests]
    assert methods == [
        "initialize",
        "notifications/initialized",
        "tools/list",
        "tools/list",
        "tools/list",
        "DELETE",
    ]
    # the negotiated version and the session on every later request
    for _, headers, _ in fake.requests[1:]:
        assert headers["mcp-protocol-version"] == "2025-03-26"
        assert headers["mcp-session-id"] == "s-123"
    assert not any(s.refused for s in seen) and len(seen) == 6


def test_plain_json_answers_and_expectations_that_fail() -> None:
    outcome = check(
        {"url": "http://mcp.test/mcp", "min_tools": 5, "tools": ["nope", "p0-t1"]},
        transport=httpx.MockTransport(FakeMcp(sse=False)),
    )
    assert not outcome.ok
    assert outcome.error == "3 tools listed, expected at least 5; missing tool nope"
    assert outcome.outputs["tools"] == ["p0-t0", "p0-t1", "p0-t2"]


def test_a_refused_key_is_unauthorized() -> None:
    outcome = check(
        {"url": "http://mcp.test/mcp"}, transport=httpx.MockTransport(FakeMcp(key="right"))
    )
    assert not outcome.ok
    assert "unauthorized (HTTP 401)" in (outcome.error or "")
    assert "no key was sent" in (outcome.error or "")


def test_the_bearer_from_a_reference_and_a_missing_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from opskit.secrets import redactor

    fake = FakeMcp(key="the-mcp-key")
    monkeypatch.setenv("OPSKIT_TEST_MCP_KEY", "the-mcp-key")
    outcome = check(
        {"url": "http://mcp.test/mcp", "bearer_ref": "env:OPSKIT_TEST_MCP_KEY"},
        transport=httpx.MockTransport(fake),
    )
    assert outcome.ok, outcome.error
    assert "the-mcp-key" in redactor  # registered: no output shows it
    outcome = check(
        {"url": "http://mcp.test/mcp", "bearer_ref": "env:OPSKIT_TEST_NO_SUCH_KEY"},
        transport=httpx.MockTransport(fake),
    )
    assert not outcome.ok
    assert "OPSKIT_TEST_NO_SUCH_KEY is not set" in (outcome.error or "")


def test_an_openapi_proxy_is_read_through_health_and_its_tool_paths() -> None:
    def proxy(request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != "Bearer k3y-value":
            return httpx.Response(401)
        if request.url.path == "/health":
            return httpx.Response(200, json={"status": "ok", "connected_to_mcp": True})
        paths: dict[str, Any] = {f"/tool_{i}": {"post": {}} for i in range(65)}
        paths.update({"/jobs": {"get": {}}, "/jobs/{job_id}/cancel": {"post": {}}})  # not tools
        return httpx.Response(
            200, json={"openapi": "3.1.0", "info": {"title": "P"}, "paths": paths}
        )

    args = {"url": "http://ai:8811/", "via": "openapi", "bearer": "k3y-value", "min_tools": 60}
    outcome = check(args, transport=httpx.MockTransport(proxy))
    assert outcome.ok and outcome.outputs["tool_count"] == 65, outcome
    outcome = check({**args, "bearer": "wrong"}, transport=httpx.MockTransport(proxy))
    assert not outcome.ok and "unauthorized" in (outcome.error or "")


def test_an_error_answer_is_said_not_raised() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        message = json.loads(request.content)
        error = {"code": -32601, "message": "Method not found"}
        return httpx.Response(200, json={"jsonrpc": "2.0", "id": message["id"], "error": error})

    outcome = check({"url": "http://mcp.test/mcp"}, transport=httpx.MockTransport(broken))
    assert not outcome.ok
    assert outcome.error == "mcp http://mcp.test/mcp: initialize failed: Method not found"


def test_nothing_listening_is_a_clear_failure() -> None:
    from mcp_servers import free_port

    outcome = check({"url": f"http://127.0.0.1:{free_port()}/mcp", "timeout": "2s"})
    assert not outcome.ok
    assert "connection refused" in (outcome.error or "")


def test_the_sdk_is_not_imported() -> None:
    """opskit speaks MCP without the SDK (0.6-1.1 s to import, and 2.x breaks 1.x)."""
    import subprocess

    code = (
        "import sys, opskit.actions.check_mcp, opskit.clients.mcp, opskit.status;"
        "print(sorted(m for m in sys.modules if m == 'mcp' or m.startswith('mcp.')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- real servers on loopback -----------------------------------------------------------------


@pytest.mark.integration
def test_against_a_server_built_with_the_official_sdk() -> None:
    import mcp

    version = getattr(mcp, "__version__", None)
    from importlib.metadata import version as installed

    assert installed("mcp").split(".")[0] == "1", version  # the SDK the lab's servers pin
    with sdk_server(tools=4, key="good-key") as url:
        outcome = check(
            {"url": url, "bearer": "good-key", "min_tools": 4, "tools": ["tool_3"]},
            read_only=True,
        )
        assert outcome.ok, outcome.error
        assert outcome.outputs["server_name"] == "opskit-test-server"
        assert outcome.outputs["tool_count"] == 4
        assert outcome.outputs["protocol_version"] == "2025-06-18"
        assert outcome.outputs["server_version"]  # the SDK's own version
        wrong = check({"url": url, "bearer": "bad-key"})
        assert not wrong.ok
        assert "unauthorized (HTTP 401)" in (wrong.error or ""), wrong.error


@pytest.mark.integration
def test_a_hung_server_ends_at_its_timeout() -> None:
    with hung_server() as url:
        started = time.monotonic()
        outcome = check({"url": url, "timeout": "1s"})
        took = time.monotonic() - started
    assert not outcome.ok
    assert outcome.error == f"mcp {url}: no answer within 1s"
    print(f"hung server: failed after {took:.2f}s")  # a measure, not an assertion


@pytest.mark.integration
def test_the_real_proxmoxmcp_plus_in_streamable_mode_lists_65_tools(
    fakepve: Any, fakepve_cafile: str, tmp_path: Path
) -> None:
    with proxmoxmcp_streamable(fakepve, fakepve_cafile, tmp_path, key="the-api-key") as url:
        outcome = check({"url": url, "bearer": "the-api-key", "min_tools": 65, "timeout": "20s"})
        assert outcome.ok, outcome.error
        assert outcome.outputs["tool_count"] == 65
        assert "get_nodes" in outcome.outputs["tools"]
        assert outcome.outputs["server_name"]
        print(outcome.summary)
        wrong = check({"url": url, "bearer": "not-the-key", "timeout": "20s"})
        assert not wrong.ok
        assert "unauthorized (HTTP 401)" in (wrong.error or ""), wrong.error


def test_a_server_that_stops_answering_mid_handshake_ends_at_the_timeout() -> None:
    """initialize answered, then tools/list never: the check ends at its timeout, and sends no
    DELETE the server would not answer either."""
    fake = FakeMcp(sse=False)

    async def stalls(request: httpx.Request) -> httpx.Response:
        message = json.loads(request.content) if request.content else {}
        if message.get("method") == "tools/list":
            await asyncio.sleep(30)
        return fake(request)

    started = time.monotonic()
    outcome = check(
        {"url": "http://mcp.test/mcp", "timeout": "0.5s"}, transport=httpx.MockTransport(stalls)
    )
    took = time.monotonic() - started
    assert not outcome.ok and outcome.error == "mcp http://mcp.test/mcp: no answer within 500ms"
    assert "DELETE" not in [method for method, _, _ in fake.requests]
    print(f"stalled after initialize: failed after {took:.2f}s")
