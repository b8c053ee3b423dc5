"""`opskit inventory sync`: the inventory brought in line with the live cluster and tailnet.

Guests (vmid, name, node, kind, tags) come from Proxmox's /cluster/resources, node names from
/nodes, Tailscale names from `tailscale status --json`; they are written into the inventory
file round-trip, so comments, order and hand edits (services, groups, vars) survive.
"""

from __future__ import annotations

import asyncio
import difflib
import io
import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import OpskitError, UsageError
from .model import Inventory


@dataclass
class Peer:
    host: str
    dns: str | None  # MagicDNS name, trailing dot removed
    ips: list[str]
    online: bool
    tags: list[str]
    os: str | None


@dataclass
class SyncReport:
    text_before: str
    text_after: str
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.text_before != self.text_after

    def diff(self, path: str) -> str:
        return "".join(
            difflib.unified_diff(
                self.text_before.splitlines(True),
                self.text_after.splitlines(True),
                f"{path} (now)",
                f"{path} (synced)",
            )
        )


# --- Tailscale -----------------------------------------------------------------------------


def tailscale_status(json_file: Path | None) -> dict[str, Any] | None:
    """`tailscale status --json` (or a saved copy); None when there is neither."""
    if json_file is not None:
        try:
            return dict(json.loads(json_file.read_text(encoding="utf-8")))
        except OSError as exc:
            raise UsageError(f"cannot read {json_file}: {exc.strerror}") from None
        except ValueError as exc:
            raise UsageError(f"{json_file} is not tailscale status JSON: {exc}") from None
    binary = shutil.which("tailscale")
    if binary is None:
        return None
    try:
        done = subprocess.run(
            [binary, "status", "--json"], capture_output=True, text=True, timeout=30, check=False
        )
    except subprocess.TimeoutExpired:
        raise OpskitError("tailscale status --json did not answer within 30s") from None
    if done.returncode != 0:
        raise OpskitError(f"tailscale status --json failed: {done.stderr.strip()[:200]}")
    return dict(json.loads(done.stdout))


def peers(status: dict[str, Any]) -> list[Peer]:
    nodes = list((status.get("Peer") or {}).values())
    if status.get("Self"):
        nodes.append(status["Self"])
    out = []
    for node in nodes:
        dns = str(node.get("DNSName") or "").rstrip(".") or None
        out.append(
            Peer(
                host=str(node.get("HostName") or (dns or "").split(".")[0]),
                dns=dns,
                ips=list(node.get("TailscaleIPs") or []),
                online=bool(node.get("Online")),
                tags=[str(t).removeprefix("tag:") for t in node.get("Tags") or []],
                os=node.get("OS"),
            )
        )
    return out


def _match(name: str, found: list[Peer]) -> Peer | None:
    lowered = name.lower()
    for peer in found:
        first = (peer.dns or "").split(".")[0].lower()
        if peer.host.lower() == lowered or first == lowered:
            return peer
    return None


# --- Proxmox -------------------------------------------------------------------------------


async def _cluster_state(
    inventory: Inventory, cluster: str
) -> tuple[list[dict[str, Any]], list[str]]:
    from .clients.connections import Connections

    connections = Connections(inventory)
    try:
        client = await connections.proxmox(cluster, read_only=True)
        resources = await client.call("resources", {"type": "vm"}) or []
        nodes = await client.call("nodes") or []
    finally:
        await connections.aclose()
    return resources, sorted(str(n.get("node")) for n in nodes if n.get("node"))


# --- the YAML ------------------------------------------------------------------------------


def _unverify(entry: Any, *fields: str) -> None:
    """Drop fields from an entry's `unverified:` list (and the list once empty)."""
    pending = entry.get("unverified")
    if not isinstance(pending, list):
        return
    for name in fields:
        while name in pending:
            pending.remove(name)
    if not pending:
        del entry["unverified"]


def _set(entry: Any, key: str, value: Any) -> None:
    if entry.get(key) != value:
        entry[key] = value


def round_trip_yaml() -> Any:
    """ruamel.yaml set up to rewrite an inventory as people write it: comments and quotes
    kept, sequences indented under their key, long values (keys, fingerprints) on one line."""
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def sync(
    path: Path,
    inventory: Inventory,
    *,
    clusters: list[str] | None = None,
    tailscale: dict[str, Any] | None = None,
    add_hosts: bool = False,
) -> SyncReport:
    """The inventory file's text now and after syncing (nothing is written here)."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    yaml = round_trip_yaml()
    before = path.read_text(encoding="utf-8")
    doc = yaml.load(before)
    notes: list[str] = []
    found = peers(tailscale) if tailscale else []
    if tailscale and tailscale.get("MagicDNSSuffix"):
        _set(doc, "tailnet", str(tailscale["MagicDNSSuffix"]).rstrip("."))
        _unverify(doc, "tailnet")

    guests = doc.get("guests")
    if guests is None:
        guests = doc["guests"] = CommentedSeq()
    by_vmid = {int(g["vmid"]): g for g in guests if isinstance(g, dict) and "vmid" in g}
    for cluster in clusters if clusters is not None else list(inventory.proxmox):
        resources, nodes = asyncio.run(_cluster_state(inventory, cluster))
        spec = doc["proxmox"][cluster]
        if nodes:
            _set(spec, "nodes", CommentedSeq(nodes))
            _unverify(spec, "nodes")
        live = [r for r in resources if r.get("type") in ("qemu", "lxc") and not r.get("template")]
        if not live and inventory.guests:
            notes.append(
                f"cluster {cluster}: the API shows no guests (a privilege-separated token without"
                " VM.Audit?): guests left as they are"
            )
            continue
        seen = set()
        for r in sorted(live, key=lambda r: int(r["vmid"])):
            vmid = int(r["vmid"])
            seen.add(vmid)
            name = str(r.get("name") or f"guest-{vmid}")
            tags = [t for t in str(r.get("tags") or "").replace(",", ";").split(";") if t]
            entry = by_vmid.get(vmid)
            if entry is None:
                entry = CommentedMap(vmid=vmid, name=name)
                guests.append(entry)
                by_vmid[vmid] = entry
                notes.append(f"added guest {vmid} ({name}) from cluster {cluster}")
            elif entry.get("name") != name:
                notes.append(
                    f"guest {vmid} is called {name!r} in Proxmox, {entry.get('name')!r} here:"
                    " renamed (runbooks naming the old name need the new one)"
                )
            _set(entry, "name", name)
            _set(entry, "node", str(r["node"]))
            _set(entry, "kind", str(r["type"]))
            if len(inventory.proxmox) > 1:
                _set(entry, "cluster", cluster)
            if tags:
                current = list(entry.get("tags") or [])
                merged = current + [t for t in tags if t not in current]
                if merged != current:
                    entry["tags"] = CommentedSeq(merged)
                    entry["tags"].fa.set_flow_style()
            _unverify(entry, "name", "node", "kind")
        for vmid, entry in by_vmid.items():
            in_cluster = entry.get("cluster") in (None, cluster)
            if vmid not in seen and in_cluster:
                notes.append(
                    f"guest {vmid} ({entry.get('name')}) is not in cluster {cluster}: kept"
                )

    matched: set[str] = set()
    for section in ("guests", "hosts"):
        for entry in doc.get(section) or []:
            peer = _match(str(entry.get("name", "")), found)
            if peer is None or peer.dns is None:
                continue
            matched.add(peer.dns)
            _set(entry, "tailscale", peer.dns)
            _unverify(entry, "tailscale")
    for peer in found:
        if peer.dns is None or peer.dns in matched:
            continue
        if add_hosts:
            hosts = doc.get("hosts")
            if hosts is None:
                hosts = doc["hosts"] = CommentedSeq()
            host = CommentedMap(name=peer.host.lower(), tailscale=peer.dns)
            if peer.tags:
                host["tags"] = CommentedSeq(peer.tags)
                host["tags"].fa.set_flow_style()
            if peer.os:
                host["os"] = peer.os
            hosts.append(host)
            notes.append(f"added Tailscale host {peer.host} ({peer.dns})")
        else:
            notes.append(
                f"Tailscale peer {peer.host} ({peer.dns}) matches no guest or host"
                " (add it with --add-hosts)"
            )
    buffer = io.StringIO()
    yaml.dump(doc, buffer)
    return SyncReport(before, buffer.getvalue(), notes)


def write(path: Path, text: str) -> None:
    from .localfile import write_atomic

    write_atomic(path, text, what="the inventory")
