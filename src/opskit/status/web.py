"""`opskit status --serve`: the overview as a page that refreshes itself, read-only.

Server-rendered (jinja2) and served by uvicorn through a small Starlette app; no script, no
front-end build. GET only:

    /                 the overview (a table per host), recent runs with their steps, plans
    /plans/NAME       a saved plan, rendered as its Markdown review (`opskit plan --format md`)
    /status.json      the overview as `opskit status --json` writes it
    /healthz          200 "ok"

Bound to loopback it asks nobody to log in; bound to any other address every request needs the
token (`?token=`, once, then a cookie; or `Authorization: Bearer`): $OPSKIT_STATUS_TOKEN, which
must be set (opskit makes none, so it prints none).
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import ipaddress
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from ..model import Inventory
    from ..workspace import Workspace
    from .model import Overview

REFRESH = 10  # seconds between the page's own reloads
FRESH = 2.0  # an overview younger than this is shown again rather than asked anew
RECENT_RUNS = 10
COOKIE = "opskit_status_token"


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `:PORT`, `PORT` or `HOST` (port 8470); IPv6 as `[::1]:8470`."""
    host, port = "127.0.0.1", 8470
    text = text.strip()
    if text.startswith("["):
        inside, _, rest = text[1:].partition("]")
        host = inside
        if rest.startswith(":"):
            port = _port(rest[1:], text)
    elif text.isdigit():
        port = _port(text, text)
    elif ":" in text:
        name, _, number = text.rpartition(":")
        host = name or host
        port = _port(number, text)
    elif text:
        host = text
    return host, port


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"--serve {whole!r}: not a port (use HOST:PORT, :PORT or PORT)")
    return int(text)


# A socket the command line bound on this machine before it entered the lab (`--lab`), where
# the page is served too: the operator's browser is out here, the lab's addresses inside.
INHERITED_FD = "OPSKIT_SERVE_FD"


def listen(host: str, port: int, address: str) -> socket.socket:
    """A socket listening on HOST:PORT; one that cannot be had is a usage error (exit 2)."""
    try:
        family, kind, proto, _, where = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise UsageError(f"--serve {address}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        why = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            why += " (another opskit status --serve, or another server: pick another port)"
        raise UsageError(f"--serve {address}: {why}") from None
    return sock


def required_token(host: str, address: str) -> str | None:
    """The token the page asks for off loopback (None on loopback); unset or too short, a
    usage error before anything is bound."""
    if is_loopback(host):
        return None
    token = os.environ.get("OPSKIT_STATUS_TOKEN") or None
    if token is None or len(token) < 16:
        raise UsageError(
            f"--serve {address}: off loopback the page needs a token of 16 characters or"
            " more in OPSKIT_STATUS_TOKEN (e.g. export OPSKIT_STATUS_TOKEN=$(openssl rand"
            " -hex 16)); opskit prints no secret"
        )
    return token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Page:
    """The state behind the page: what to collect, and the last overview (shared by the
    requests arriving together)."""

    def __init__(
        self,
        inventory: Inventory,
        names: list[str],
        timeout: float,
        plan_dirs: list[Path],
        token: str | None,
    ) -> None:
        self.inventory, self.names, self.timeout = inventory, names, timeout
        self.plan_dirs, self.token = plan_dirs, token
        self._last: tuple[float, Overview] | None = None
        self._lock = asyncio.Lock()
        from jinja2 import Environment, PackageLoader, select_autoescape

        self.templates = Environment(
            loader=PackageLoader("opskit.status", "templates"),
            autoescape=select_autoescape(["html"]),
        )

    async def overview(self) -> Overview:
        from . import collect

        async with self._lock:
            if self._last is None or time.monotonic() - self._last[0] > FRESH:
                found = await collect(self.inventory, self.names, timeout=self.timeout)
                self._last = (time.monotonic(), found)
            return self._last[1]

    def allowed(self, request: Request) -> bool:
        if self.token is None:
            return True
        given = (
            request.query_params.get("token")
            or request.cookies.get(COOKIE)
            or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        )
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    def plans(self) -> dict[str, Path]:
        """Saved plans in the plan directories, by file name (the first directory wins)."""
        found: dict[str, Path] = {}
        for directory in self.plan_dirs:
            if directory.is_dir():
                for path in sorted(directory.glob("*.json")):
                    found.setdefault(path.name, path)
        return found


def runs_with_steps(limit: int = RECENT_RUNS) -> list[dict[str, Any]]:
    """The journal's recent runs, newest first, each with its steps (read-only)."""
    from ..store import Journal, state_dir

    path = state_dir() / "journal.db"
    if not path.exists():
        return []
    from ..secrets import redactor

    journal = Journal(path, redactor.redact)
    try:
        shown = []
        for run in journal.runs(limit=limit):
            shown.append(
                {
                    "id": run.id,
                    "runbook": run.runbook,
                    "status": run.shown_status,
                    "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started_at)),
                    "scheduled": run.scheduled,
                    "counts": journal.step_counts(run.id),
                    "steps": [
                        {
                            "target": s.target,
                            "id": s.step_id,
                            "action": s.action,
                            "status": s.status,
                            "summary": redactor.redact(s.error or s.summary or ""),
                        }
                        for s in journal.steps(run.id)
                    ],
                }
            )
        return shown
    finally:
        journal.close()


def plan_summaries(page: Page) -> list[dict[str, Any]]:
    from ..engine.session import read_plan
    from ..report.plan import summary_line

    shown = []
    for name, path in page.plans().items():
        try:
            plan = read_plan(path)
        except UsageError:
            continue  # another JSON file beside the plans
        shown.append(
            {
                "name": name,
                "runbook": plan.runbook,
                "created": plan.created_at,
                "fingerprint": plan.fingerprint[:12],
                "summary": summary_line(plan),
            }
        )
    return shown


def make_app(page: Page) -> Starlette:
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse
    from starlette.routing import Route

    from ..secrets import redactor
    from .render import age, headline, memory, uptime

    def refused() -> Response:
        return PlainTextResponse("a token is needed: open the URL opskit printed\n", 401)

    def remember(request: Request, response: Response) -> Response:
        if page.token is not None and request.query_params.get("token"):
            response.set_cookie(COOKIE, page.token, httponly=True, samesite="strict")
        return response

    async def home(request: Request) -> Response:
        if not page.allowed(request):
            return refused()
        overview = await page.overview()
        runs = await asyncio.to_thread(runs_with_steps)
        now = time.time()
        html = page.templates.get_template("status.html").render(
            overview=overview,
            data=overview.as_dict(),
            runs=runs,
            plans=plan_summaries(page),
            refresh=REFRESH,
            now=now,
            age=age,
            uptime=uptime,
            memory=memory,
            headline=headline,
            redact=redactor.redact,
        )
        return remember(request, HTMLResponse(redactor.redact(html)))

    async def plan(request: Request) -> Response:
        if not page.allowed(request):
            return refused()
        from markdown_it import MarkdownIt

        from ..engine.session import read_plan
        from ..report.plan import render_plan

        path = page.plans().get(request.path_params["name"])
        if path is None:
            return PlainTextResponse("no such plan\n", 404)
        try:
            saved = read_plan(path)
        except UsageError as exc:
            return PlainTextResponse(f"{exc}\n", 422)
        body = MarkdownIt("commonmark").enable("table").render(render_plan(saved, "md"))
        html = page.templates.get_template("plan.html").render(name=path.name, body=body)
        return remember(request, HTMLResponse(redactor.redact(html)))

    async def as_json(request: Request) -> Response:
        if not page.allowed(request):
            return refused()
        overview = await page.overview()
        return JSONResponse(overview.as_dict())

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    return Starlette(
        routes=[
            Route("/", home, methods=["GET", "HEAD"]),
            Route("/plans/{name}", plan, methods=["GET", "HEAD"]),
            Route("/status.json", as_json, methods=["GET", "HEAD"]),
            Route("/healthz", healthz, methods=["GET", "HEAD"]),
        ]
    )


def default_plan_dirs(ws: Workspace | None) -> list[Path]:
    from ..store import state_dir

    dirs = [Path.cwd() / "plans"]
    if ws is not None:
        dirs.append(ws.root / "plans")
    dirs.append(state_dir() / "plans")
    return list(dict.fromkeys(dirs))


def serve(
    address: str,
    inventory: Inventory,
    names: list[str],
    timeout: float,
    plans: list[str],
    ws: Workspace | None,
) -> None:
    """Serve the page until Ctrl-C."""
    import click
    import uvicorn

    host, port = parse_address(address)
    token = required_token(host, address)
    if token is not None:
        from ..secrets import redactor

        redactor.add("status_token", token)
    plan_dirs = [Path(p) for p in plans] or default_plan_dirs(ws)
    page = Page(inventory, names, timeout, plan_dirs, token)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    sockets = [listen(host, port, address)]
    where = ""
    inherited = os.environ.pop(INHERITED_FD, "")
    if inherited.isdigit() and os.environ.get("OPSKIT_LAB_ACTIVE"):
        try:
            sockets.append(socket.socket(fileno=int(inherited)))
            where = " on this machine and inside the lab"
        except OSError:  # not a socket handed down by `--lab`: served inside only
            pass
    login = " (open it once with ?token=$OPSKIT_STATUS_TOKEN)" if token else ""
    click.echo(f"opskit status: serving {url}{where}{login}  (read-only; Ctrl-C stops it)")
    config = uvicorn.Config(make_app(page), log_level="warning", access_log=False)
    try:
        uvicorn.Server(config).run(sockets=sockets)
    finally:
        for sock in sockets:
            sock.close()
