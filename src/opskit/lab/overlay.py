"""The lab's inventory: the homelab's own file with lab addresses, pinned keys and lab secrets.

Written round-trip from the real inventory, so the guests, services, tags, groups and vars stay
exactly as the operator wrote them and the shipped runbooks run unchanged against the lab.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

HEADER = (
    "# SIMULATION: the lab's copy of {source}, written by `opskit lab up`.\n"
    "# Addresses, host keys, the Proxmox endpoint and secrets are the lab's; edits are lost.\n"
)


def write_overlay(
    *,
    source: Path,
    dest: Path,
    hosts: dict[str, tuple[str, str]],
    api_url: str,
    fingerprint: str,
    token_file: Path,
    identity: Path,
    lab_vars: dict[str, Any],
    mark: dict[str, str],
    uptime_kuma: dict[str, str] | None = None,
) -> None:
    from ..sync import round_trip_yaml

    yaml = round_trip_yaml()
    doc = yaml.load(source.read_text())
    _drop_unverified(doc)
    # The mark that keeps opskit from acting on this file outside the lab (opskit.place).
    doc.insert(1 if "version" in doc else 0, "lab", mark)
    defaults = doc.setdefault("defaults", {})
    ssh = defaults.setdefault("ssh", {})
    ssh.update({"user": "root", "port": 22, "identity": str(identity)})
    for cluster in (doc.get("proxmox") or {}).values():
        cluster["api_url"] = api_url
        cluster["tls"] = {"fingerprint": fingerprint}
        cluster["token_id"] = "root@pam!opskit"
        cluster["token"] = f"file:{token_file}"
        for key in ("user", "password"):
            cluster.pop(key, None)
    for section in ("guests", "hosts"):
        for entry in doc.get(section) or []:
            address, host_key = hosts[str(entry["name"])]
            entry["address"] = address
            entry.setdefault("ssh", {})
            entry["ssh"]["host_key"] = host_key
            for key in ("user", "port", "jump", "password", "identity"):
                entry["ssh"].pop(key, None)
    if uptime_kuma is not None:
        doc["uptime_kuma"] = uptime_kuma  # the lab's stand-in, reached by its lab address
    else:
        doc.pop("uptime_kuma", None)
    merged = dict(doc.get("vars") or {})
    merged.update(lab_vars)
    doc["vars"] = merged
    out = io.StringIO()
    yaml.dump(doc, out)
    dest.write_text(HEADER.format(source=source) + out.getvalue())


def _drop_unverified(node: Any) -> None:
    """The lab knows every value: no `unverified:` marks."""
    if isinstance(node, dict):
        node.pop("unverified", None)
        for value in node.values():
            _drop_unverified(value)
    elif isinstance(node, list):
        for value in node:
            _drop_unverified(value)
