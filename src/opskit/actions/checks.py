"""Kinds that need no host: check.http, check.tcp and wait."""

from __future__ import annotations

import re
import time
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from ..model import Duration, Outcome, Risk
from ..model.common import format_duration
from ..model.inventory import TLS
from ..render import SECRET
from .base import ActionArgs, ActionContext, Check

BODY_CAP = 64 * 1024


class HttpArgs(ActionArgs):
    url: str = Field(..., pattern=r"^https?://[^\s/]+", description="http:// or https:// URL")
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = Field(
        "GET", description="the HTTP method"
    )
    expect: int | list[int] = Field(200, description="accepted status code(s)")
    json_match: dict[str, Any] | None = Field(
        None, alias="json", description="dotted JSON paths and the values they must equal"
    )
    contains: str | None = Field(None, description="text the body must contain")
    matches: str | None = Field(None, description="regex the body must match")
    headers: dict[str, str] = Field(default_factory=dict, description="request headers")
    body: Any = Field(None, description="request body: sent as JSON unless a string")
    bearer: Annotated[str | None, SECRET] = Field(
        None, description="bearer token: '{{ secrets.NAME }}'"
    )
    tls: TLS = Field(
        default_factory=TLS,
        description="how to trust an https:// server: system CAs, a CA file, or a pinned"
        " certificate fingerprint",
    )
    timeout: Duration = Field(10.0, description="for the whole request")
    follow_redirects: bool = Field(
        False, description="follow 3xx redirects (else the redirect is the answer checked)"
    )

    @field_validator("url")
    @classmethod
    def _port(cls, value: str) -> str:
        try:
            _ = urlsplit(value).port  # raises on a port out of range or not a number
        except ValueError as exc:
            raise ValueError(f"bad URL {value!r}: {exc}") from None
        return value

    @field_validator("matches")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"bad regex {value!r}: {exc}") from None
        return value


class HttpCheck(Check[HttpArgs]):
    """An HTTP(S) endpoint answers with the expected status, body or JSON fields."""

    name: ClassVar[str] = "check.http"
    Args = HttpArgs
    outputs: ClassVar[dict[str, str]] = {
        "status": "the HTTP status code (int)",
        "body": "the response body as text, its first 64 KiB (str)",
        "elapsed": "seconds the request took (float)",
        "json": "the body parsed as JSON, null if it is not JSON (only with `json:`)",
    }
    example: ClassVar[str] = """
        targets: vm:110
        steps:
          - id: livez
            check.http:
              url: "http://{{ target.address }}:8811/livez"
              expect: 200
              json: {status: ok}      # dotted paths: {"checks.db": up}
              timeout: 5s
            retries: 30               # a service still starting gets a minute
            interval: 2s
            register: livez           # later: {{ livez.status }}, {{ livez.json.status }}
        """

    def describe(self) -> str:
        a = self.args
        expect = a.expect if isinstance(a.expect, int) else "|".join(map(str, a.expect))
        extra = "".join(f" {k}={v!r}" for k, v in (a.json_match or {}).items())
        return f"{a.method} {a.url} expects {expect}{extra}"

    async def apply(self, ctx: ActionContext) -> Outcome:
        import httpx

        from ..clients.tls import ssl_context
        from ..errors import ConnectFailed, TLSError

        a = self.args
        parts = urlsplit(a.url)
        headers = dict(a.headers)
        if a.bearer:
            headers["Authorization"] = f"Bearer {a.bearer}"
        started = time.monotonic()
        try:
            verify: Any = True
            if parts.scheme == "https":
                port = parts.port or 443
                verify = await ssl_context(a.tls, parts.hostname or "", port, a.timeout)
            kwargs: dict[str, Any] = {}
            if isinstance(a.body, str):
                kwargs["content"] = a.body
            elif a.body is not None:
                kwargs["json"] = a.body
            async with ctx.http(
                verify=verify, timeout=a.timeout, follow_redirects=a.follow_redirects
            ) as client:
                response = await client.request(a.method, a.url, headers=headers, **kwargs)
                body = response.text[:BODY_CAP]
        except (TLSError, ConnectFailed) as exc:
            return _failed(str(exc))
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            return _failed(f"{a.method} {a.url}: {_connect_failure(parts, exc)}")
        except httpx.TimeoutException:
            return _failed(f"{a.method} {a.url}: no answer within {format_duration(a.timeout)}")
        except httpx.HTTPError as exc:
            return _failed(f"{a.method} {a.url}: {type(exc).__name__}: {exc}")
        elapsed = time.monotonic() - started
        outputs: dict[str, Any] = {
            "status": response.status_code,
            "body": body,
            "elapsed": round(elapsed, 4),
        }
        problems = []
        accepted = [a.expect] if isinstance(a.expect, int) else a.expect
        if response.status_code not in accepted:
            problems.append(f"status {response.status_code}, expected {a.expect}")
        parsed: Any = None
        if a.json_match:
            try:
                parsed = response.json()
            except ValueError:
                problems.append("body is not JSON")
            else:
                for path, want in a.json_match.items():
                    found, got = _dig(parsed, path)
                    if not found:
                        problems.append(f"JSON has no {path!r}")
                    elif not _same(got, want):
                        problems.append(f"JSON {path} is {got!r}, expected {want!r}")
            outputs["json"] = parsed
        if a.contains is not None and a.contains not in body:
            problems.append(f"body does not contain {a.contains!r}")
        if a.matches is not None and not re.search(a.matches, body):
            problems.append(f"body does not match {a.matches!r}")
        summary = f"{a.method} {a.url} -> {response.status_code} in {elapsed * 1000:.0f}ms"
        if problems:
            return Outcome(ok=False, summary=summary, outputs=outputs, error="; ".join(problems))
        return Outcome(ok=True, summary=summary, outputs=outputs)


def _dig(data: Any, path: str) -> tuple[bool, Any]:
    for part in path.split("."):
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif (
            isinstance(data, list)
            and re.fullmatch(r"-?[0-9]+", part)
            and -len(data) <= int(part) < len(data)
        ):
            data = data[int(part)]
        else:
            return False, None
    return True, data


def _same(got: Any, want: Any) -> bool:
    """JSON equality: true is not 1 and false is not 0 (Python's == says they are)."""
    if isinstance(got, bool) or isinstance(want, bool):
        return type(got) is type(want) and got == want
    if isinstance(got, dict) and isinstance(want, dict):
        return got.keys() == want.keys() and all(_same(got[k], want[k]) for k in got)
    if isinstance(got, list) and isinstance(want, list):
        return len(got) == len(want) and all(map(_same, got, want))
    return bool(got == want)


def _connect_failure(parts: Any, exc: Exception) -> str:
    """A connection that never carried the request: TLS refused it, or nothing answered."""
    from ..clients.net import connect_reason, tls_reason

    tls = tls_reason(exc)
    if tls is not None:
        return tls
    port = parts.port or (443 if parts.scheme == "https" else 80)
    reason = connect_reason(exc) or f"{type(exc).__name__}: {exc}"
    return f"cannot connect to {parts.hostname}:{port}: {reason}"


def _failed(error: str) -> Outcome:
    return Outcome(ok=False, summary=error, error=error)


class TcpArgs(ActionArgs):
    host: str | None = Field(None, description="default: the target's address")
    port: int = Field(..., ge=1, le=65535, description="the TCP port")
    timeout: Duration = Field(5.0, description="for the connection and the banner")
    banner: str | None = Field(None, description="regex the server's first line must match")


class TcpCheck(Check[TcpArgs]):
    """A TCP port accepts connections (and, optionally, greets with a matching banner)."""

    name: ClassVar[str] = "check.tcp"
    Args = TcpArgs
    outputs: ClassVar[dict[str, str]] = {
        "banner": "the server's first line, stripped; '' unless `banner:` is given (str)",
        "elapsed": "seconds to connect (and read the banner) (float)",
    }
    example: ClassVar[str] = """
        targets: tag:monitored
        steps:
          - id: agent-port
            check.tcp:
              port: 45876
              banner: '^SSH-2\\.0-beszel_'   # a regex the first line must match
            register: agent           # later: {{ agent.banner }}
        """

    def describe(self) -> str:
        host = self.args.host or "target"
        banner = f" banner ~ {self.args.banner!r}" if self.args.banner else ""
        return f"tcp {host}:{self.args.port} accepts{banner}"

    async def apply(self, ctx: ActionContext) -> Outcome:
        import asyncio

        a = self.args
        host = a.host or ctx.target.address
        where = f"{host}:{a.port}"
        started = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, a.port), a.timeout
            )
        except TimeoutError:
            return _failed(f"tcp {where}: no answer within {format_duration(a.timeout)}")
        except OSError as exc:
            from ..clients.net import connect_reason

            return _failed(f"tcp {where}: {connect_reason(exc) or exc.strerror or exc}")
        line = ""
        try:
            if a.banner is not None:
                left = max(0.1, a.timeout - (time.monotonic() - started))
                try:
                    raw = await asyncio.wait_for(reader.readline(), left)
                except TimeoutError:
                    raw = b""
                except ValueError:  # no newline within the stream's 64 KiB limit
                    return _failed(f"tcp {where}: the first line is longer than 64 KiB")
                except OSError as exc:  # e.g. reset right after the accept
                    return _failed(f"tcp {where}: {exc.strerror or exc}")
                line = raw.decode("utf-8", "replace").strip()
        finally:
            writer.close()
        elapsed = time.monotonic() - started
        outputs = {"banner": line, "elapsed": round(elapsed, 4)}
        if a.banner is not None and not re.search(a.banner, line):
            return Outcome(
                ok=False,
                summary=f"tcp {where} answered",
                outputs=outputs,
                error=f"tcp {where}: banner {line!r} does not match {a.banner!r}",
            )
        return Outcome(
            ok=True, summary=f"tcp {where} open in {elapsed * 1000:.0f}ms", outputs=outputs
        )


class WaitArgs(ActionArgs):
    duration: Duration = Field(..., description="how long to wait, e.g. 30s")


class Wait(Check[WaitArgs]):
    """Pause, e.g. to let a service settle before its checks."""

    name: ClassVar[str] = "wait"
    risk: ClassVar[Risk] = Risk.READ
    Args = WaitArgs
    example: ClassVar[str] = """
        targets: vm:110
        steps:
          - id: settle
            description: let the service finish its migrations before it is checked
            wait: {duration: 10s}
        """

    def describe(self) -> str:
        return f"wait {format_duration(self.args.duration)}"

    async def apply(self, ctx: ActionContext) -> Outcome:
        import asyncio

        await asyncio.sleep(self.args.duration)
        return Outcome(ok=True, summary=self.describe())
