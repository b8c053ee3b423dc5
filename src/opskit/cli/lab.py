"""`opskit lab`: the simulated homelab (up, status, packages, down, demo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .common import json_option, workspace, workspace_options
from .output import echo

if TYPE_CHECKING:
    from ..lab.core import Lab

# The homelab's main jobs, in order: every monitored host's agent, ProxmoxMCP-Plus on the AI VM,
# then the health of every service of the inventory (green only once both are there).
DEMO_RUNBOOKS = ("install-beszel-agents", "deploy-proxmoxmcp", "health")


def _lab(with_inventory: bool = False) -> Lab:
    from ..lab.core import Lab, lab_dir

    if not with_inventory:
        return Lab(lab_dir())
    ws = workspace(click.get_current_context())
    return Lab(lab_dir(), ws.inventory, ws.inventory_path)


@click.group()
def lab() -> None:
    """The homelab of the inventory, simulated on this machine (needs root).

    Every guest and Tailscale host becomes a real sshd in its own namespaces on a private
    network; Proxmox is fakepve, the Beszel hub a real PocketBase. Then run any runbook
    against it with --lab:  opskit run deploy-proxmoxmcp --lab
    """


@lab.command()
@click.option(
    "--range",
    "network_range",
    default="198.51.100.0/24",
    show_default=True,
    help="The lab's private IPv4 range (refused if the machine routes it).",
)
@workspace_options
def up(network_range: str) -> None:
    """Build the lab from the inventory (harmless when it is already up)."""
    _lab(with_inventory=True).up(network_range, say=echo)
    echo("next: opskit lab status | opskit run <runbook> --lab | opskit lab down")


@lab.command()
@json_option
def status(as_json: bool) -> None:
    """What runs in the lab, and whether it answers."""
    report = _lab().status()
    if as_json:
        echo(json.dumps(report, indent=2))
        return
    if "hosts" not in report:
        echo(f"the lab is not up ({report['dir']})")
        click.get_current_context().exit(1)
    echo(
        f"lab {'up' if report['up'] else 'DEGRADED'}: {report['network']}, "
        f"controller {report['controller']}  (SIMULATION)"
    )
    for h in report["hosts"]:
        mark = "ok" if h["ssh"] else "DOWN"
        power = "  (powered off in Proxmox)" if h["power"] == "off" else ""
        echo(f"  host {h['name']:<16} {h['address']:<16} ssh {mark}{power}")
    for s in report["services"]:
        mark = "ok" if s["answers"] else "DOWN"
        echo(f"  {s['name']:<21} {s['url']:<30} {mark}")
    echo(f"  inventory: {report['inventory']}")
    for problem in report["problems"]:
        echo(f"  problem: {problem}")
    if not report["up"]:
        click.get_current_context().exit(1)


@lab.command()
@click.argument("hosts", nargs=-1)
@click.option(
    "--offer",
    type=click.Choice(["upgrade", "broken", "none"]),
    help="What the lab's apt repository offers HOSTS (all hosts when none is named).",
)
@json_option
def packages(hosts: tuple[str, ...], offer: str | None, as_json: bool) -> None:
    """What the lab's apt repository offers each host, or --offer to change it.

    Every host has opskit-lab-demo 1.0 and opskit-lab-broken 1.0 installed. `upgrade` (the
    default) offers opskit-lab-demo 1.1, whose postinst touches /var/run/reboot-required;
    `broken` also offers opskit-lab-broken 1.1, whose postinst fails (a patch that fails);
    `none` offers nothing newer. Hosts see a change at their next `apt-get update`.
    """
    from ..lab.apt import OFFERS

    offers = _lab().packages(list(hosts), offer)
    if as_json:
        echo(json.dumps(offers, indent=2))
        return
    for host, chosen in offers.items():
        listed = ", ".join(f"{p.name} {p.version}" for p in OFFERS[chosen])
        echo(f"  {host:<16} {chosen:<8} {listed}")


@lab.command()
def down() -> None:
    """Remove every namespace, process and file of the lab (also after a crash)."""
    _lab().down(say=echo)


@lab.command()
@click.option("--runbook", help="Run this runbook instead of the shipped main jobs.")
@workspace_options
def demo(runbook: str | None) -> None:
    """Bring the lab up and run the main jobs in it, end to end: the Beszel agents, then
    ProxmoxMCP-Plus, then the health of every service (or only --runbook)."""
    ws = workspace(click.get_current_context())
    lab_ = _lab(with_inventory=True)
    lab_.up(say=echo)
    names = {p.stem for p in ws.runbook_paths()}
    runbooks = [runbook] if runbook else [n for n in DEMO_RUNBOOKS if n in names]
    if not runbooks:
        raise click.UsageError("no runbook to demonstrate")
    code = 0
    for chosen in runbooks:
        command = [sys.executable, "-m", "opskit", "run", chosen, "--lab", "--yes"]
        echo(f"\n== opskit run {chosen} --lab --yes")
        code = subprocess.call(command)
        if code != 0:
            break
    chosen = runbooks[0] if runbook else "deploy-proxmoxmcp"
    echo(next_steps(chosen, lab_.root))
    click.get_current_context().exit(code)


# What the lab commands read from the environment: a lab made with them set (a named lab, its
# own directories) is reached again only with them set.
LAB_ENVIRONMENT = ("OPSKIT_LAB_NAME", "OPSKIT_LAB_DIR", "OPSKIT_STATE_DIR")


def next_steps(runbook: str, root: Path) -> str:
    """Where to look after `lab demo`, each command as the user types it for this lab."""
    import shlex

    env = "".join(
        f"{name}={shlex.quote(value)} "
        for name in LAB_ENVIRONMENT
        if (value := os.environ.get(name)) and not (name == "OPSKIT_LAB_NAME" and value == "olab")
    )
    inventory = shlex.quote(str(root / "inventory.yaml"))
    rows = [
        (env + "opskit lab status", "what runs in the lab"),
        (env + "opskit history --lab", "the run just made, and its steps"),
        (env + f"opskit run {runbook} --lab --dry-run", "a second run plans no change"),
        (inventory, "the lab's inventory (addresses, pinned keys)"),
        (env + "opskit lab down", "remove it all"),
    ]
    width = max(len(command) for command, _ in rows) + 3
    lines = [f"  {command:<{width}}{what}" for command, what in rows]
    return "\nwhere to look next:\n" + "\n".join(lines)
