"""The lab's `tailscale`: `tailscale status --json` in Tailscale's own format, for lab hosts.

Only what opskit reads is simulated; every other subcommand says it is a stand-in and fails.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol


class _Host(Protocol):
    name: str
    address: str
    tailscale: str | None


def _node(
    host_name: str, dns: str, address: str, *, tags: list[str] | None = None
) -> dict[str, Any]:
    key = hashlib.sha256(host_name.encode()).hexdigest()
    return {
        "ID": key[:16],
        "PublicKey": f"nodekey:{key}",
        "HostName": host_name,
        "DNSName": dns + ".",  # MagicDNS names carry the trailing dot
        "OS": "linux",
        "UserID": 1,
        "TailscaleIPs": [address],
        "AllowedIPs": [f"{address}/32"],
        "Tags": tags or [],
        "Online": True,
        "Active": True,
        "ExitNode": False,
        "Relay": "lab",
    }


def status_json(tailnet: str, hosts: Sequence[_Host], controller: str) -> dict[str, Any]:
    """`tailscale status --json` as the controller ("workstation") would see the lab."""
    peers: dict[str, Any] = {}
    self_node = _node("controller", f"controller.{tailnet}", controller)
    for host in hosts:
        dns = host.tailscale or f"{host.name}.{tailnet}"
        node = _node(host.name, dns, host.address, tags=["tag:lab"])
        if host.name == "workstation":
            self_node = node
            continue
        peers[node["PublicKey"]] = node
    return {
        "Version": "1.80.0-opskit-lab",
        "BackendState": "Running",
        "TailscaleIPs": self_node["TailscaleIPs"],
        "Self": self_node,
        "MagicDNSSuffix": tailnet,
        "CurrentTailnet": {
            "Name": "opskit-lab",
            "MagicDNSSuffix": tailnet,
            "MagicDNSEnabled": True,
        },
        "Peer": peers,
        "Health": [],
    }


def write_stand_in(path: Path, status_file: Path) -> None:
    script = f"""#!/bin/sh
# opskit lab: a stand-in for tailscale (SIMULATION). Only `status --json` is simulated.
case "$1 $2" in
  "status --json") exec cat {shlex.quote(str(status_file))} ;;
  "version "*|"version") echo "1.80.0-opskit-lab"; exit 0 ;;
esac
echo "tailscale (opskit lab stand-in): only 'status --json' is simulated" >&2
exit 1
"""
    path.write_text(script)
    path.chmod(0o755)
