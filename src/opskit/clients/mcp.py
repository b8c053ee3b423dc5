"""MCP servers over plain HTTP: the handshake and the tool list, without the MCP SDK.

Streamable HTTP (the transport of MCP 2025-03-26 and later), as a client speaks it:

    POST /mcp  initialize               -> the server's protocol version, name, version;
                                           `Mcp-Session-Id` in the answer's headers
    POST /mcp  notifications/initialized -> 202
    POST /mcp  tools/list (cursor)      -> tools, `nextCursor` while there are more
    DELETE /mcp                          ends the session

Every POST sends `Accept: application/json, text/event-stream` (servers answer 406 without the
second) and may be answered with JSON or with an event stream (`event: message`, `data: {...}`);
later requests carry the session id and `MCP-Protocol-Version`. An OpenAPI proxy in front of a
server (mcpo, ProxmoxMCP-Plus's docker default) is read instead through `GET /health` and the
tool paths of `GET /openapi.json`.

The SDK (`mcp`) costs most of a second to import and its 2.x breaks 1.x; this module needs only
the httpx client it is given (from the door, `ctx.http()`), and every request it sends changes
nothing, so it passes a read-only door too.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..errors import McpError, McpUnauthorized
from .connections import CLIENT, READS

if TYPE_CHECKING:
    import httpx

PROTOCOL_VERSION = "2025-06-18"  # what opskit asks for; the server may answer an older one
MAX_PAGES = 100  # tools/list pages followed before a server's cursor is called a loop
END_TIMEOUT = 1.0  # seconds for the session's DELETE, after the answers were had
SSE_CAP = 4 * 1024 * 1024  # bytes of one answer read before it is called too long


@dataclass
class McpServer:
    """What a server said of itself."""

    url: str
    via: str  # "mcp" (streamable HTTP) or "openapi" (a proxy's /health and /openapi.json)
    protocol_version: str = ""
    server_name: str = ""
    server_version: str = ""
    tools: list[str] = field(default_factory=list)
    session: bool = False  # the server gave a session id (and it was ended)
    elapsed: float = 0.0
    connected: bool | None = None  # openapi: the proxy's /health `connected_to_mcp`

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "via": self.via,
            "protocol_version": self.protocol_version,
            "server_name": self.server_name,
            "server_version": self.server_version,
            "tool_count": len(self.tools),
            "tools": list(self.tools),
            "elapsed": round(self.elapsed, 4),
        }


def _headers(bearer: str | None) -> dict[str, str]:
    headers = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "User-Agent": f"opskit/{__version__}",
    }
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    return headers


_READ = {READS: True, CLIENT: "mcp"}  # nothing an MCP check sends changes the world


def _refused(url: str, response: httpx.Response) -> McpError:
    if response.status_code in (401, 403):
        return McpUnauthorized(
            f"{url}: unauthorized (HTTP {response.status_code}): the server refused the key"
        )
    if response.status_code == 406:
        return McpError(f"{url}: HTTP 406: the server does not accept an MCP client's request")
    if response.status_code == 404:
        return McpError(f"{url}: HTTP 404: no MCP endpoint here (or the session is unknown)")
    return McpError(f"{url}: HTTP {response.status_code} {response.reason_phrase}".rstrip())


async def _rpc(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    message: dict[str, Any],
) -> tuple[httpx.Response, dict[str, Any] | None]:
    """POST one JSON-RPC message; the answer to it (by id) from JSON or an event stream.
    A notification (no id) gets None."""
    async with client.stream(
        "POST", url, headers=headers, content=json.dumps(message), extensions=_READ
    ) as response:
        if response.status_code >= 400:
            await response.aread()
            raise _refused(url, response)
        if "id" not in message:
            return response, None
        kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "text/event-stream":
            answer = await _from_stream(response, message["id"], url)
        else:
            body = await response.aread()
            if len(body) > SSE_CAP:
                raise McpError(f"{url}: the answer is longer than {SSE_CAP // 1024 // 1024} MiB")
            answer = _message(body.decode("utf-8", "replace"), message["id"], url)
        if answer is None:
            raise McpError(f"{url}: no answer to {message['method']} in the server's reply")
    if "error" in answer:
        error = answer["error"] if isinstance(answer["error"], dict) else {}
        text = str(error.get("message") or answer["error"])[:300]
        raise McpError(f"{url}: {message['method']} failed: {text}")
    return response, answer


def _message(text: str, wanted: Any, url: str) -> dict[str, Any] | None:
    """The JSON-RPC answer with id `wanted` in `text` (one message or a batch)."""
    try:
        data = json.loads(text)
    except ValueError:
        raise McpError(f"{url}: the answer is not JSON: {text[:120]!r}") from None
    for item in data if isinstance(data, list) else [data]:
        if isinstance(item, dict) and item.get("id") == wanted:
            return item
    return None


async def _from_stream(response: httpx.Response, wanted: Any, url: str) -> dict[str, Any] | None:
    """Read server-sent events until the one answering `wanted`; a stream left open after it
    is not waited for."""
    data: list[str] = []
    read = 0
    async for line in response.aiter_lines():
        read += len(line) + 1
        if read > SSE_CAP:
            raise McpError(f"{url}: the event stream passed {SSE_CAP // 1024 // 1024} MiB")
        if line == "":
            if data:
                found = _message("\n".join(data), wanted, url)
                data = []
                if found is not None:
                    return found
            continue
        if line.startswith(":"):
            continue  # a comment (keep-alive)
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        return _message("\n".join(data), wanted, url)
    return None


async def handshake(client: httpx.AsyncClient, url: str, *, bearer: str | None = None) -> McpServer:
    """initialize, notifications/initialized, every page of tools/list, and the session's
    end. Raises McpUnauthorized (401/403), McpError; httpx errors pass through."""
    started = time.monotonic()
    headers = _headers(bearer)
    response, answer = await _rpc(
        client,
        url,
        headers,
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "opskit", "version": __version__},
            },
        },
    )
    result = (answer or {}).get("result")
    if not isinstance(result, dict):
        raise McpError(f"{url}: initialize answered without a result")
    info: dict[str, Any] = (
        result["serverInfo"] if isinstance(result.get("serverInfo"), dict) else {}
    )
    server = McpServer(
        url=url,
        via="mcp",
        protocol_version=str(result.get("protocolVersion") or ""),
        server_name=str(info.get("name") or ""),
        server_version=str(info.get("version") or ""),
    )
    session = response.headers.get("mcp-session-id")
    if session:
        headers["Mcp-Session-Id"] = session
        server.session = True
    if server.protocol_version:
        headers["MCP-Protocol-Version"] = server.protocol_version
    try:
        await _rpc(client, url, headers, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        cursor: str | None = None
        for page in range(MAX_PAGES):
            params: dict[str, Any] = {"cursor": cursor} if cursor else {}
            _, answer = await _rpc(
                client,
                url,
                headers,
                {"jsonrpc": "2.0", "id": 2 + page, "method": "tools/list", "params": params},
            )
            listed = (answer or {}).get("result") or {}
            for tool in listed.get("tools") or []:
                if isinstance(tool, dict) and tool.get("name"):
                    server.tools.append(str(tool["name"]))
            cursor = listed.get("nextCursor") or None
            if not cursor:
                break
        else:
            raise McpError(f"{url}: tools/list still had a next page after {MAX_PAGES}")
    except asyncio.CancelledError:
        # Out of time (the caller's deadline): a server that stopped answering would not
        # answer the DELETE either; its session expires on its own.
        session = None
        raise
    finally:
        if session:
            await _end(client, url, headers)
    server.elapsed = time.monotonic() - started
    return server


async def _end(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> None:
    """DELETE the session: a server that does not allow it (405) keeps it until it expires."""
    import contextlib

    import httpx

    # The answer was already had; a session left open ends on its own.
    with contextlib.suppress(httpx.HTTPError, TimeoutError):
        await asyncio.wait_for(client.delete(url, headers=headers, extensions=_READ), END_TIMEOUT)


async def openapi(client: httpx.AsyncClient, base: str, *, bearer: str | None = None) -> McpServer:
    """An OpenAPI proxy of an MCP server (mcpo): `/health` (with the key) and the tool paths
    of `/openapi.json`."""
    started = time.monotonic()
    base = base.rstrip("/")
    headers = {"Accept": "application/json", "User-Agent": f"opskit/{__version__}"}
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    health = await client.get(f"{base}/health", headers=headers, extensions=_READ)
    if health.status_code >= 400:
        raise _refused(f"{base}/health", health)
    try:
        said = health.json()
    except ValueError:
        said = {}
    connected = said.get("connected_to_mcp") if isinstance(said, dict) else None
    described = await client.get(f"{base}/openapi.json", headers=headers, extensions=_READ)
    if described.status_code >= 400:
        raise _refused(f"{base}/openapi.json", described)
    try:
        spec = described.json()
    except ValueError:
        raise McpError(f"{base}/openapi.json is not JSON") from None
    if not isinstance(spec, dict):
        raise McpError(f"{base}/openapi.json is not an OpenAPI document")
    paths: dict[str, Any] = spec["paths"] if isinstance(spec.get("paths"), dict) else {}
    info: dict[str, Any] = spec["info"] if isinstance(spec.get("info"), dict) else {}
    server = McpServer(
        url=base,
        via="openapi",
        protocol_version=f"openapi {spec.get('openapi', '')}".strip(),
        server_name=str(info.get("title") or ""),
        server_version=str(info.get("version") or ""),
        tools=[
            str(p).lstrip("/")
            for p, ops in paths.items()
            # a tool is a POST path of its own name, not the proxy's /jobs/{job_id}/...
            if isinstance(ops, dict) and "post" in ops and "{" not in str(p)
        ],
        connected=connected if isinstance(connected, bool) else None,
    )
    if server.connected is False:
        raise McpError(f"{base}/health: the proxy is not connected to its MCP server")
    server.elapsed = time.monotonic() - started
    return server


async def probe(
    client: httpx.AsyncClient,
    url: str,
    *,
    via: str = "mcp",
    bearer: str | None = None,
    timeout: float = 5.0,
) -> McpServer:
    """The handshake (or the proxy's two reads) within `timeout` seconds in all: a server
    that accepts and never answers ends here, as McpError; so does one that refuses."""
    import httpx

    from ..model.common import format_duration
    from .net import connect_reason, tls_reason

    try:
        async with asyncio.timeout(timeout):
            if via == "openapi":
                return await openapi(client, url, bearer=bearer)
            return await handshake(client, url, bearer=bearer)
    except TimeoutError:
        raise McpError(f"{url}: no answer within {format_duration(timeout)}") from None
    except httpx.TimeoutException:
        raise McpError(f"{url}: no answer within {format_duration(timeout)}") from None
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        parts = httpx.URL(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        reason = tls_reason(exc) or connect_reason(exc) or f"{type(exc).__name__}: {exc}"
        raise McpError(f"{url}: cannot connect to {parts.host}:{port}: {reason}") from None
    except httpx.HTTPError as exc:
        raise McpError(f"{url}: {type(exc).__name__}: {exc}") from None
