"""opskit inventory list|show: what the inventory holds, resolved as targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import UsageError
from ..model import Target, did_you_mean
from .common import json_option, lab_option, workspace, workspace_options
from .output import echo, emit_json, table


@click.group()
def inventory() -> None:
    """The homelab inventory: guests, Tailscale hosts, services."""


def _record(t: Target) -> dict[str, Any]:
    from ..workspace import target_context

    ctx = target_context(t)
    return {
        "name": t.name,
        "kind": t.kind,
        "vmid": t.vmid,
        "node": t.node,
        "cluster": t.cluster,
        "address": t.address,
        "tailscale": t.tailscale,
        "ssh": {"user": t.ssh_user, "port": t.ssh_port, "host_key": t.host_key, "jump": t.jump},
        "tags": t.tags,
        "groups": t.groups,
        "services": {
            name: s.model_dump(mode="json", by_alias=True, exclude_defaults=True)
            for name, s in t.services.items()
        },
        "health": ctx["health"],
        "vars": t.vars,
        "unverified": t.unverified,
    }


@inventory.command("list")
@json_option
@lab_option
@workspace_options
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """Every guest and Tailscale host. '*' marks values not yet synced from the live world."""
    inv = workspace(ctx).inventory
    guests = [inv.target(g) for g in inv.guests]
    hosts = [inv.target(h) for h in inv.hosts]
    if as_json:
        emit_json(
            {
                "tailnet": inv.tailnet,
                "clusters": {
                    name: {"api_url": c.api_url, "nodes": c.nodes, "unverified": c.unverified}
                    for name, c in inv.proxmox.items()
                },
                "guests": [_record(t) for t in guests],
                "hosts": [_record(t) for t in hosts],
                "groups": {
                    name: [n for n in inv.select(f"group:{name}") if n != "local"]
                    for name in sorted(inv.group_names())
                },
            }
        )
        return

    def mark(t: Target, field: str, value: Any) -> str:
        text = "" if value is None else str(value)
        return f"{text}*" if field in t.unverified and text else text

    rows = [
        [
            t.vmid if t.vmid is not None else "-",
            mark(t, "name", t.name),
            t.kind,
            mark(t, "node", t.node) or "-",
            mark(t, "tailscale", t.address),
            ",".join(t.tags),
            ",".join(t.services),
        ]
        for t in [*guests, *hosts]
    ]
    table(["VMID", "NAME", "KIND", "NODE", "ADDRESS", "TAGS", "SERVICES"], rows)
    if any(t.unverified for t in [*guests, *hosts]):
        echo("* not yet confirmed by the live cluster or tailnet (opskit inventory sync)")


@inventory.command()
@click.argument("name")
@json_option
@lab_option
@workspace_options
@click.pass_context
def show(ctx: click.Context, name: str, as_json: bool) -> None:
    """One guest or host (by name or VMID), with its services and health endpoints."""
    inv = workspace(ctx).inventory
    hosts = inv.by_name()
    host = hosts.get(name)
    if host is None and name.isdigit():
        host = next((g for g in inv.guests if g.vmid == int(name)), None)
    if host is None:
        raise UsageError(
            f"no guest or host named {name!r} in the inventory{did_you_mean(name, hosts)}"
        )
    record = _record(inv.target(host))
    if as_json:
        emit_json(record)
        return
    title = f"vm {record['vmid']} {record['name']}" if record["vmid"] else record["name"]
    echo(f"{title}  ({record['kind']})")
    for key in ("node", "cluster", "address", "tailscale"):
        if record[key]:
            echo(f"  {key + ':':11}{record[key]}")
    ssh = record["ssh"]
    echo(
        f"  {'ssh:':11}{ssh['user'] or '(ssh config)'}@{record['address']}:{ssh['port'] or 22}"
        + (" (host key pinned)" if ssh["host_key"] else "")
    )
    if record["tags"]:
        echo(f"  {'tags:':11}{', '.join(record['tags'])}")
    if record["groups"]:
        echo(f"  {'groups:':11}{', '.join(record['groups'])}")
    if record["unverified"]:
        echo(f"  {'unverified:':12}{', '.join(record['unverified'])} (until opskit inventory sync)")
    if record["health"]:
        echo("  services:")
        for h in record["health"]:
            if h["check"] == "mcp":
                where = f"mcp {h['url']}" + (" (openapi proxy)" if h["via"] == "openapi" else "")
            else:
                where = h["url"] if h["check"] == "http" else f"tcp {h['host']}:{h['port']}"
            echo(f"    {h['service']:18} {where}")
    for svc in record["services"]:
        if svc not in {h["service"] for h in record["health"]}:
            echo(f"    {svc:18} (no health check)")
    if record["vars"]:
        echo("  vars:")
        for k, v in record["vars"].items():
            echo(f"    {k}: {v!r}")


@inventory.command()
@click.option("--dry-run", is_flag=True, help="Print the changes as a diff; write nothing.")
@click.option("--cluster", "clusters", multiple=True, metavar="NAME", help="Only this cluster.")
@click.option(
    "--tailscale-json",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="`tailscale status --json` saved to a file (default: ask the local tailscale CLI).",
)
@click.option("--add-hosts", is_flag=True, help="Add Tailscale peers that match no entry.")
@click.option("--no-tailscale", is_flag=True, help="Sync from Proxmox only.")
@click.option("--no-proxmox", is_flag=True, help="Ask no Proxmox cluster.")
@click.option(
    "--uptime-kuma",
    "uptime_kuma",
    is_flag=True,
    help="Map services to Uptime Kuma's monitors (`monitor:`); report what nothing watches.",
)
@lab_option
@workspace_options
@click.pass_context
def sync(
    ctx: click.Context,
    dry_run: bool,
    clusters: tuple[str, ...],
    tailscale_json: Path | None,
    add_hosts: bool,
    no_tailscale: bool,
    no_proxmox: bool,
    uptime_kuma: bool,
) -> None:
    """Update the inventory from the live cluster (/cluster/resources) and tailnet.

    Names, nodes, kinds and tags of guests come from Proxmox, MagicDNS names from Tailscale;
    comments and hand edits survive. Values confirmed this way leave `unverified:`.
    With --uptime-kuma, services get the monitor that watches them (`monitor:`), and the
    services no monitor watches and the monitors that watch nothing are listed.
    """
    from .. import sync as syncing
    from ..errors import LoadError
    from ..loader import load_inventory

    ws = workspace(ctx)
    inv = ws.inventory
    for name in clusters:
        if name not in inv.proxmox:
            raise UsageError(
                f"no cluster {name!r} in the inventory{did_you_mean(name, inv.proxmox)}"
            )
    status = None if no_tailscale else syncing.tailscale_status(tailscale_json)
    report = syncing.sync(
        ws.inventory_path,
        inv,
        clusters=[] if no_proxmox else list(clusters) or None,
        tailscale=status,
        add_hosts=add_hosts,
    )
    if uptime_kuma:
        from ..sync_uptime_kuma import sync_monitors

        report.text_after, found = sync_monitors(report.text_after, inv)
        report.notes += found
    if status is None and not no_tailscale:
        report.notes.append(
            "tailscale CLI not found: Tailscale names not synced (give --tailscale-json FILE)"
        )
    try:
        load_inventory(ws.inventory_path, text=report.text_after)
    except LoadError as exc:
        raise UsageError(
            "the synced inventory would not be valid, nothing written:\n" + str(exc)
        ) from None
    for note in report.notes:
        echo(note)
    if not report.changed:
        echo(f"{ws.inventory_path}: already in sync")
        return
    if dry_run:
        echo(report.diff(str(ws.inventory_path)).rstrip("\n"))
        echo("dry run: nothing written")
        return
    syncing.write(ws.inventory_path, report.text_after)
    echo(f"{ws.inventory_path}: updated")
