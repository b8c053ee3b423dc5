"""MCP servers on loopback for the tests: one built with the official SDK (pinned below 2, as
the lab's are), the real ProxmoxMCP-Plus 0.6.7 in streamable-HTTP mode, and one that accepts
connections and never answers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PROXMOXMCP_VERSION = "0.6.7"

# FastMCP (mcp 1.x) with `tools` read-only tools; with a key, a bearer check in front of it.
SDK_SERVER = textwrap.dedent("""
    import sys
    import uvicorn
    from mcp.server.fastmcp import FastMCP
    from starlette.responses import JSONResponse

    port, count, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    server = FastMCP("opskit-test-server", host="127.0.0.1", port=port, log_level="WARNING")

    def make(i):
        def tool() -> str:
            return f"tool {i}"
        tool.__name__ = f"tool_{i}"
        tool.__doc__ = f"Test tool number {i}."
        return tool

    for i in range(count):
        server.tool()(make(i))
    app = server.streamable_http_app()

    async def guarded(scope, receive, send):
        if key and scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"").decode()
            if given != "Bearer " + key:
                await JSONResponse({"error": "unauthorized"}, status_code=401)(scope, receive, send)
                return
        await app(scope, receive, send)

    uvicorn.run(guarded, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(
    port: int, process: subprocess.Popen[bytes] | None = None, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before it listened")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {timeout}s")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def sdk_server(tools: int = 3, key: str = "") -> Iterator[str]:
    """The URL (http://127.0.0.1:PORT/mcp) of a FastMCP server with `tools` tools."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", SDK_SERVER, str(port), str(tools), key],
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_port(port, process)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        stop(process)


@contextmanager
def hung_server() -> Iterator[str]:
    """A URL whose server accepts the connection, reads, and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        done.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


def proxmoxmcp_venv() -> Path:
    """A venv with proxmox-mcp-plus 0.6.7 from opskit's wheelhouse (downloaded once, as `lab
    up` does), kept beside the wheelhouse for later runs."""
    from opskit.clients.wheelhouse import Interpreter, cache_dir, download, ready

    wheels = cache_dir("proxmox-mcp-plus", PROXMOXMCP_VERSION)
    if not ready(wheels, "proxmox-mcp-plus", PROXMOXMCP_VERSION, Interpreter.here()):
        download("proxmox-mcp-plus", PROXMOXMCP_VERSION, Interpreter.here())
    venv = wheels.parent.parent / "test-venvs" / f"proxmox-mcp-plus-{PROXMOXMCP_VERSION}"
    marker = venv / ".opskit-complete"
    if not marker.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [
                str(venv / "bin" / "pip"),
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-index",
                "--find-links",
                str(wheels),
                f"proxmox-mcp-plus=={PROXMOXMCP_VERSION}",
            ],
            check=True,
        )
        marker.write_text("ok\n")
    return venv


@contextmanager
def proxmoxmcp_streamable(pve: object, cafile: str, workdir: Path, key: str) -> Iterator[str]:
    """The real ProxmoxMCP-Plus in streamable-HTTP mode (bearer `key`) against `pve` (a
    started FakePve); yields its MCP URL."""
    import json

    venv = proxmoxmcp_venv()
    token = "opskit-test-token"
    pve.apitokens["root@pam!opskit"] = token  # type: ignore[attr-defined]
    config = {
        "proxmox": {
            "host": pve.host,  # type: ignore[attr-defined]
            "port": pve.port,  # type: ignore[attr-defined]
            "verify_ssl": True,
            "service": "PVE",
            "timeout": 30,
        },
        "auth": {"user": "root@pam", "token_name": "opskit", "token_value": token},
        "logging": {"level": "WARNING"},
        "jobs": {"sqlite_path": str(workdir / "jobs.sqlite3")},
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(config))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPSKIT_", "PROXMOX", "MCP_"))}
    env.update(
        PROXMOX_MCP_CONFIG=str(workdir / "config.json"),
        REQUESTS_CA_BUNDLE=cafile,
        MCP_TRANSPORT="STREAMABLE",
        MCP_HOST="127.0.0.1",
        MCP_PORT=str(port),
        MCP_API_KEY=key,
    )
    log = open(workdir / "proxmoxmcp.log", "wb")  # noqa: SIM115 - the child writes it
    process = subprocess.Popen(
        [str(venv / "bin" / "python"), "-m", "proxmox_mcp.server"],
        env=env,
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        try:
            wait_port(port, process)
        except RuntimeError as exc:
            raise RuntimeError(
                f"{exc}: {(workdir / 'proxmoxmcp.log').read_text()[-2000:]}"
            ) from None
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        stop(process)
        log.close()
