"""Stand-ins for the inventory's services that the lab does not run for real.

    python -m opskit.lab.stand_ins SERVICE --address ADDR --port PORT

Each answers where the real service answers, in its shape, and nothing more:

    traefik            GET /ping -> 200 "OK" (Traefik's ping endpoint)
    uptime-kuma        Uptime Kuma's Socket.IO API as 1.23.x or 2.x speaks it (lab/uptime_kuma.py:
                       --dialect 1|2, --seed MONITORS.json, --password-file, --log EVENTS.jsonl),
                       and GET /api/entry-page -> 200 {"type": "entryPage", ...}
    moltbot            GET / -> 200, the gateway's Control UI page
    homelab-mcp        MCP servers built with the official MCP SDK (FastMCP, streamable HTTP
    ssh-orchestrator   at /mcp, tools that only read), and GET /health -> 200

`lab up` installs them on the hosts the inventory names as units (opskit-lab-SERVICE.service)
enabled at boot, so they stop with their host and start again when it boots.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

Answer = tuple[int, str, bytes]  # status, content type, body
Route = Callable[[], Answer]

MCP_SERVERS = {
    "homelab-mcp": "Homelab-MCP",
    "ssh-orchestrator": "SSH Orchestrator",
}


def _text(body: str, status: int = 200) -> Answer:
    return status, "text/plain; charset=utf-8", body.encode()


def _page(title: str) -> Answer:
    html = f"<!doctype html><title>{title}</title><h1>{title}</h1><p>opskit lab (SIMULATION)</p>\n"
    return 200, "text/html; charset=utf-8", html.encode()


HTTP_ROUTES: dict[str, dict[str, Route]] = {
    "traefik": {"/ping": lambda: _text("OK")},
    "moltbot": {"/": lambda: _page("MoltBot Control UI")},
}
NOT_FOUND: dict[str, Answer] = {"traefik": _text("404 page not found\n", 404)}

SERVICES = (*HTTP_ROUTES, "uptime-kuma", *MCP_SERVERS)


def http_server(service: str, address: str, port: int) -> ThreadingHTTPServer:
    routes = HTTP_ROUTES[service]
    missing = NOT_FOUND.get(service, _text("Not Found\n", 404))

    class Handler(BaseHTTPRequestHandler):
        server_version = f"opskit-lab-{service}"

        def _answer(self, with_body: bool) -> None:
            route = routes.get(self.path.split("?", 1)[0])
            status, kind, body = route() if route else missing
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer(True)

        def do_HEAD(self) -> None:
            self._answer(False)

        def log_message(self, format: str, *args: object) -> None:
            pass  # a health check every few seconds is not news

    return ThreadingHTTPServer((address, port), Handler)


def lab_hosts() -> list[str]:
    """The names in this host's /etc/hosts (the lab writes every lab host there)."""
    names: list[str] = []
    try:
        lines = Path("/etc/hosts").read_text().splitlines()
    except OSError:
        return names
    for line in lines:
        fields = line.split("#", 1)[0].split()
        for name in fields[1:]:
            if name != "localhost" and name not in names:
                names.append(name)
    return names


def serve_mcp(service: str, address: str, port: int) -> None:
    # The port is bound before the SDK loads (0.6-1 s of imports): connections wait in its
    # backlog and are answered once the server runs, as with a socket-activated service. The
    # imports run at a low priority, so a host booting (or `lab up`) is not slowed by them.
    listener = socket.create_server((address, port), backlog=128)
    os.nice(10)
    import uvicorn
    from mcp.server.fastmcp import FastMCP
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    with contextlib.suppress(PermissionError):  # back to the unit's priority (root may)
        os.nice(-10)

    title = MCP_SERVERS[service]
    server = FastMCP(
        title,
        instructions=f"The opskit lab's stand-in for {title} (a SIMULATION).",
        host=address,
        port=port,
        log_level="WARNING",
    )

    @server.custom_route("/health", methods=["GET"])  # type: ignore[untyped-decorator]
    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "server": title, "host": socket.gethostname()})

    @server.tool()
    def whoami() -> str:
        """Which server answers, and on which host."""
        return f"{title} on {socket.gethostname()} (opskit lab)"

    if service == "homelab-mcp":

        @server.tool()
        def homelab_hosts() -> list[str]:
            """The homelab's hosts, as this host resolves them."""
            return lab_hosts()

    else:

        @server.tool()
        def ssh_targets() -> list[str]:
            """The hosts this orchestrator would reach over SSH (it runs nothing in the lab)."""
            return [name for name in lab_hosts() if "." not in name]

    config = uvicorn.Config(server.streamable_http_app(), log_level="warning")
    uvicorn.Server(config).run(sockets=[listener])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m opskit.lab.stand_ins")
    parser.add_argument("service", choices=SERVICES)
    parser.add_argument("--address", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--dialect", choices=("1", "2"), default="2", help="uptime-kuma: 1.23 or 2.x"
    )
    parser.add_argument("--seed", type=Path, help="uptime-kuma: its monitors (JSON)")
    parser.add_argument("--password-file", type=Path, help="uptime-kuma: admin's password")
    parser.add_argument("--log", type=Path, help="uptime-kuma: every event received (JSON lines)")
    parser.add_argument("--data", type=Path, help="uptime-kuma: its state, kept across restarts")
    args = parser.parse_args(argv)
    if args.service == "uptime-kuma":
        from .uptime_kuma import main as kuma

        kuma(
            args.address,
            args.port,
            args.dialect,
            args.seed,
            args.log,
            args.password_file,
            args.data,
        )
        return 0
    if args.service in MCP_SERVERS:
        serve_mcp(args.service, args.address, args.port)
        return 0
    with http_server(args.service, args.address, args.port) as server:
        print(f"{args.service} stand-in on http://{args.address}:{args.port}", flush=True)
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
