"""check.mcp: an MCP server answers the handshake and lists the tools it should."""

from __future__ import annotations

import time
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from ..model import Duration, Outcome
from ..model.common import SecretRef
from ..model.inventory import TLS
from ..render import SECRET
from ..report import counted
from .base import ActionArgs, ActionContext, Check


class McpArgs(ActionArgs):
    url: str = Field(
        ...,
        pattern=r"^https?://[^\s/]+",
        description="the MCP endpoint (streamable HTTP, e.g. http://ai:8000/mcp), or with"
        " `via: openapi` the proxy's base URL (http://ai:8811)",
    )
    via: Literal["mcp", "openapi"] = Field(
        "mcp",
        description="mcp: the MCP handshake over streamable HTTP; openapi: an OpenAPI proxy"
        " (mcpo) in front of the server, read through /health and /openapi.json",
    )
    bearer: Annotated[str | None, SECRET] = Field(
        None, description="bearer key: '{{ secrets.NAME }}'"
    )
    bearer_ref: SecretRef | None = Field(
        None,
        description="the bearer key as a secret reference (env:NAME, file:PATH), resolved"
        " when the check runs: what the inventory's health `bearer:` gives",
    )
    min_tools: int = Field(1, ge=0, description="at least this many tools listed")
    tools: list[str] = Field(default_factory=list, description="tools that must be listed")
    tls: TLS = Field(default_factory=TLS, description="how to trust an https:// server")
    timeout: Duration = Field(5.0, description="for the whole handshake")

    @field_validator("url")
    @classmethod
    def _port(cls, value: str) -> str:
        try:
            _ = urlsplit(value).port
        except ValueError as exc:
            raise ValueError(f"bad URL {value!r}: {exc}") from None
        return value


class McpCheck(Check[McpArgs]):
    """An MCP server answers the MCP handshake and lists its tools.

    Over streamable HTTP: `initialize` (the answer may come as an event stream), the session
    id kept, `notifications/initialized`, every page of `tools/list`, then the session ended
    with DELETE; about 0.1 s. With `via: openapi`, a proxy's `/health` (`connected_to_mcp`)
    and the tool paths of `/openapi.json`. A refused key is `unauthorized`, a server that
    never answers fails at `timeout`."""

    name: ClassVar[str] = "check.mcp"
    Args = McpArgs
    outputs: ClassVar[dict[str, str]] = {
        "protocol_version": "the protocol version the server chose (str)",
        "server_name": "the server's name, from its serverInfo (str)",
        "server_version": "the server's version (str)",
        "tool_count": "how many tools it lists (int)",
        "tools": "the tools' names (list of str)",
        "elapsed": "seconds the whole check took (float)",
    }
    example: ClassVar[str] = """
        targets: vm:110
        secrets:
          mcp_key: env:PROXMOXMCP_API_KEY
        steps:
          - id: homelab-mcp
            check.mcp:
              url: "http://{{ target.address }}:8000/mcp"
              min_tools: 2
              tools: [whoami]
              timeout: 5s
            register: homelab     # later: {{ homelab.tool_count }}, {{ homelab.server_name }}
          - id: proxmoxmcp
            check.mcp:
              url: "http://{{ target.address }}:8811"
              via: openapi
              bearer: "{{ secrets.mcp_key }}"
              min_tools: 60
        """

    def describe(self) -> str:
        a = self.args
        wants = [f"at least {counted(a.min_tools, 'tool')}"] if a.min_tools else []
        wants += [f"tool {t}" for t in a.tools]
        kind = "mcp" if a.via == "mcp" else "mcp (openapi proxy)"
        return f"{kind} {a.url}" + (f" lists {', '.join(wants)}" if wants else " answers")

    async def apply(self, ctx: ActionContext) -> Outcome:
        from ..clients import mcp
        from ..clients.tls import ssl_context
        from ..errors import ConnectFailed, McpError, McpUnauthorized, SecretError, TLSError
        from ..secrets import resolve_optional

        a = self.args
        started = time.monotonic()
        bearer = a.bearer
        try:
            if bearer is None and a.bearer_ref:
                bearer = resolve_optional("mcp.bearer", a.bearer_ref, cwd=ctx.root)
        except SecretError as exc:
            return _failed(f"mcp {a.url}: {exc}")
        parts = urlsplit(a.url)
        try:
            verify: Any = True
            if parts.scheme == "https":
                verify = await ssl_context(
                    a.tls, parts.hostname or "", parts.port or 443, a.timeout
                )
            async with ctx.http(verify=verify, timeout=a.timeout, follow_redirects=False) as http:
                server = await mcp.probe(http, a.url, via=a.via, bearer=bearer, timeout=a.timeout)
        except McpUnauthorized as exc:
            hint = "" if bearer else " (no key was sent)"
            return _failed(f"mcp {exc}{hint}")
        except (McpError, TLSError, ConnectFailed) as exc:
            return _failed(f"mcp {exc}")
        found = server.as_dict()
        elapsed = round(time.monotonic() - started, 4)
        outputs: dict[str, Any] = {
            "protocol_version": server.protocol_version,
            "server_name": server.server_name,
            "server_version": server.server_version,
            "tool_count": len(server.tools),
            "tools": list(server.tools),
            "elapsed": elapsed,
        }
        who = " ".join(p for p in (server.server_name, server.server_version) if p) or "a server"
        summary = (
            f"mcp {a.url}: {who}, {found['protocol_version'] or 'no protocol version'},"
            f" {len(server.tools)} tools in {elapsed * 1000:.0f}ms"
        )
        problems = []
        if len(server.tools) < a.min_tools:
            problems.append(f"{len(server.tools)} tools listed, expected at least {a.min_tools}")
        missing = [t for t in a.tools if t not in server.tools]
        if missing:
            problems.append(f"missing tool{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
        if problems:
            return Outcome(ok=False, summary=summary, outputs=outputs, error="; ".join(problems))
        return Outcome(ok=True, summary=summary, outputs=outputs)


def _failed(error: str) -> Outcome:
    return Outcome(ok=False, summary=error, error=error)
