"""The lab's stand-in for `beszel-agent`: the real agent as opskit sees it, in Python.

    beszel-agent -v | --version | version   prints `beszel-agent <version>`, as the agent does
    beszel-agent health                     `ok` and exit 0 when its server answers, else exit 1
    beszel-agent [-k KEY] [-l LISTEN] ...   the agent: an SSH server

The server listens on LISTEN (a port, host:port or a unix socket path; default 45876), greets
with `SSH-2.0-beszel_<version>` and accepts public-key authentication with the hub's key (KEY,
else KEY_FILE) only, as the real agent does; a session gets a small JSON of the system's stats.
Like the agent, every setting is read from BESZEL_AGENT_<NAME> first, then <NAME>. The real
agent's `health` checks when the hub last connected; a lab hub never connects, so this one
checks that its own server answers.

The archived `beszel-agent` of the lab's release mirror runs `python -m opskit.lab.beszel_agent
--stand-in-version VERSION ...` (see opskit.lab.releases).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

DEFAULT_LISTEN = "45876"
NO_KEY = (
    "no key provided: must set -key flag, KEY env var, or KEY_FILE env var."
    " Use 'beszel-agent help' for usage"
)
USAGE = """Usage: beszel-agent [command] [flags]

Commands:
  health       Check if the agent is running
  version      Show version information

Flags:
  -k, --key string      Public key(s) for SSH authentication
  -l, --listen string   Address or port to listen on
  -t, --token string    Token to use for authentication
  -u, --url string      URL of the Beszel hub
  -v, --version         Show version information
  -h, --help            Show this help message
"""
FLAGS = {
    "-k": "key",
    "--key": "key",
    "-l": "listen",
    "--listen": "listen",
    "-u": "url",
    "--url": "url",
    "-t": "token",
    "--token": "token",
}


def env(name: str) -> str | None:
    """BESZEL_AGENT_NAME, else NAME, as the agent's GetEnv reads its settings."""
    value = os.environ.get(f"BESZEL_AGENT_{name}")
    return value if value is not None else os.environ.get(name)


def address(listen: str | None = None) -> str:
    """The agent's GetAddress: the flag, LISTEN, PORT, else :45876; a bare port gets a ':'."""
    value = listen or env("LISTEN") or env("PORT") or DEFAULT_LISTEN
    if not value.startswith("/") and ":" not in value:
        value = ":" + value
    return value


def split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def parse(argv: list[str]) -> dict[str, str]:
    """-k/--key, -l/--listen, -u/--url, -t/--token, as `-x V`, `--x V`, `--x=V` or the old
    single-dash `-key V` / `-key=V`."""
    options: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name.startswith("-") and not name.startswith("--") and len(name) > 2:
            name = "-" + name  # -key -> --key, as the agent converts its old flags
        if name not in FLAGS:
            raise SystemExit(f"unknown flag: {arg}\n{USAGE}")
        if not eq:
            i += 1
            if i >= len(argv):
                raise SystemExit(f"flag needs an argument: {arg}")
            value = argv[i]
        options[FLAGS[name]] = value
        i += 1
    return options


def load_keys(flag: str | None) -> str:
    text = flag or env("KEY")
    if not text:
        key_file = env("KEY_FILE")
        if key_file is None:
            raise ValueError(NO_KEY)
        try:
            text = Path(key_file).read_text()
        except OSError as exc:
            raise ValueError(f"failed to read key file: {exc}") from None
    return text


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    version = "0.0.0"
    if args[:1] == ["--stand-in-version"] and len(args) > 1:
        version, args = args[1].lstrip("v"), args[2:]
    command = args[0] if args else ""
    if command in ("-v", "--version", "version"):
        print(f"beszel-agent {version}")
        return 0
    if command in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if command == "health":
        return health(address())
    try:
        options = parse(args)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    import asyncssh

    try:
        keys = load_keys(options.get("key"))
    except ValueError as exc:
        print(f"Failed to load public keys: {exc}", file=sys.stderr)
        return 1
    try:
        authorized = asyncssh.import_authorized_keys(keys)
    except (asyncssh.KeyImportError, ValueError) as exc:
        print(f"Failed to load public keys: failed to parse key: {exc}", file=sys.stderr)
        return 1
    try:
        asyncio.run(serve(authorized, address(options.get("listen")), version))
    except OSError as exc:
        print(f"Failed to start: {exc}", file=sys.stderr)
        return 1
    return 0


async def serve(authorized: Any, addr: str, version: str) -> None:
    import asyncssh

    def session(process: asyncssh.SSHServerProcess[str]) -> None:
        process.stdout.write(json.dumps(stats(version)) + "\n")
        process.exit(0)

    options: dict[str, Any] = {
        "server_host_keys": [asyncssh.generate_private_key("ssh-ed25519")],
        "server_version": f"beszel_{version}",
        "authorized_client_keys": authorized,
        "password_auth": False,
        "kbdint_auth": False,
        "gss_host": None,
        "allow_scp": False,
        "process_factory": session,
    }
    path: Path | None = None
    if addr.startswith("/"):
        path = Path(addr)
        path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        sock.listen(100)
        server = await asyncssh.listen(sock=sock, **options)
    else:
        host, port = split(addr)
        server = await asyncssh.listen(host, port, reuse_address=True, **options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()
        if path is not None:
            path.unlink(missing_ok=True)


def stats(version: str) -> dict[str, Any]:
    """What a session hands the hub: a few of the system's figures (the real agent's are many)."""
    uname = os.uname()
    load = os.getloadavg()
    return {
        "info": {"h": uname.nodename, "k": uname.release, "c": os.cpu_count(), "v": version},
        "stats": {"la": [round(x, 2) for x in load]},
    }


def health(addr: str, timeout: float = 3.0) -> int:
    """0 and `ok` when the server at `addr` greets as a Beszel agent."""
    try:
        if addr.startswith("/"):
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.settimeout(timeout)
            conn.connect(addr)
        else:
            host, port = split(addr)
            conn = socket.create_connection((host or "127.0.0.1", port), timeout)
        with conn:
            banner = conn.makefile("rb").readline(256).decode("ascii", "replace").strip()
    except OSError as exc:
        print(f"unhealthy: {addr}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if not banner.startswith("SSH-2.0-beszel_"):
        print(f"unhealthy: {addr} answers {banner!r}", file=sys.stderr)
        return 1
    print("ok", end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
