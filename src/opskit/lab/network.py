"""The lab's private network: a switch namespace with a bridge, one namespace per host.

Every link and address is created inside namespaces the lab owns (a veth pair is created with
both ends already in lab namespaces), so the machine's own namespace never changes.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Sequence

from ..errors import LabError, UsageError

BRIDGE = "br0"


def prefix() -> str:
    """What every namespace of the lab starts with: `$OPSKIT_LAB_NAME-` (default `olab-`).
    Tests give their lab a name of its own, so it never meets an operator's lab."""
    import os

    return (os.environ.get("OPSKIT_LAB_NAME") or "olab") + "-"


def switch() -> str:
    return prefix() + "switch"


def controller() -> str:
    return prefix() + "ctl"


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    """Run `ip ARGS` (inside `netns` when given); a failure is a LabError with ip's message."""
    command = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(command)}: {done.stderr.strip() or 'failed'}")
    return done.stdout


def lab_namespaces() -> list[str]:
    """The lab's namespaces that exist now (also after a crash)."""
    out = ip("-j", "netns", "list", check=False).strip()
    names = [entry["name"] for entry in json.loads(out)] if out else []
    return sorted(n for n in names if n.startswith(prefix()))


def check_range(network: ipaddress.IPv4Network) -> None:
    """Refuse a range the machine routes or holds an address in (the default route aside)."""
    if network.prefixlen > 28:
        raise UsageError(f"lab range {network} is too small (at most /28)")
    routes = json.loads(ip("-j", "route", "show", "table", "all") or "[]")
    for route in routes:
        dst = route.get("dst", "default")
        if dst == "default" or ":" in dst or route.get("type") in ("broadcast",):
            continue
        try:
            routed = ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False)
        except ValueError:
            continue
        if routed.version == 4 and routed.overlaps(network) and not routed.is_loopback:
            raise UsageError(
                f"lab range {network} overlaps {routed}, which this machine routes"
                f" (dev {route.get('dev', '?')}): choose another with --range"
            )
    for link in json.loads(ip("-j", "addr") or "[]"):
        for addr in link.get("addr_info", []):
            if addr.get("family") != "inet":
                continue
            held = ipaddress.ip_interface(f"{addr['local']}/{addr['prefixlen']}")
            if held.network.overlaps(network) and not held.ip.is_loopback:
                raise UsageError(
                    f"lab range {network} overlaps {held} on {link['ifname']}: choose another"
                    " with --range"
                )


def build(network: ipaddress.IPv4Network, members: Sequence[tuple[str, str]]) -> None:
    """The switch, and each (namespace, address) attached to its bridge as eth0."""
    sw = switch()
    ip("netns", "add", sw)
    ip("link", "add", BRIDGE, "type", "bridge", netns=sw)
    ip("link", "set", BRIDGE, "up", netns=sw)
    ip("link", "set", "lo", "up", netns=sw)
    for n, (ns, address) in enumerate(members):
        if ns not in lab_namespaces():
            ip("netns", "add", ns)
        port = f"p{n}"
        # Made inside the switch, one end moved straight into the host: the machine's
        # namespace never sees either end.
        ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns, netns=sw)
        ip("link", "set", port, "master", BRIDGE, "up", netns=sw)
        ip("addr", "add", f"{address}/{network.prefixlen}", "dev", "eth0", netns=ns)
        ip("link", "set", "eth0", "up", netns=ns)
        ip("link", "set", "lo", "up", netns=ns)


def namespace_pids(ns: str) -> list[int]:
    out = ip("netns", "pids", ns, check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def remove(ns: str) -> None:
    ip("netns", "delete", ns, check=False)
