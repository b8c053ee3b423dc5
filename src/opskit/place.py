"""Where this process acts from: the machine's own network or a lab's; what is the lab's acts
only inside it.

A lab's addresses (198.51.100.0/24 by default) exist only inside the lab's namespaces. Reached
from the machine's own namespace they leave through its default route, toward machines that are
not ours: so the lab's inventory carries a mark (`lab: {name, netns}`), every plan made from it
records that mark, and opskit refuses to open a connection for either anywhere but inside the
lab's controller namespace. The check compares network namespaces (the inode of
/proc/self/ns/net with the one `ip netns` pinned under /run/netns), not environment variables.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import OutsideLab
from .model.inventory import Inventory, LabMark

NETNS_DIR = Path("/run/netns")


def _namespace(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def inside(netns: str) -> bool:
    """Whether this process runs in the named network namespace (as `ip netns` names it)."""
    here = _namespace(Path("/proc/self/ns/net"))
    return here is not None and here == _namespace(NETNS_DIR / netns)


def lab_command(mark: LabMark, command: str) -> str:
    """`command --lab`, as the user types it to reach this lab (a named lab needs its name)."""
    named = "" if mark.name == "olab" else f"OPSKIT_LAB_NAME={mark.name} "
    return f"{named}{command} --lab"


def check_inventory(inventory: Inventory | None) -> None:
    """Refuse (exit 2) to act on a lab's inventory from outside that lab's namespace."""
    mark = inventory.lab if inventory is not None else None
    if mark is not None and not inside(mark.netns):
        raise OutsideLab(
            f"this inventory is lab {mark.name!r}'s (SIMULATION) and this process is not inside"
            f" that lab: nothing was contacted. Run the command with --lab"
            f" ({lab_command(mark, 'opskit ...')}; `opskit lab up` if the lab is down)"
        )


def plan_place_problem(mark: LabMark | None, plan_file: str) -> str | None:
    """Why a saved plan may not be applied here, or None: a lab's plan applies inside that
    lab only, and a plan of the real homelab never inside a lab."""
    if mark is not None and not inside(mark.netns):
        return (
            f"this plan was made in lab {mark.name!r} (SIMULATION) and this is not that lab:"
            f" nothing was contacted. Apply it there with  "
            f"{lab_command(mark, f'opskit apply {plan_file}')}"
        )
    if mark is None and os.environ.get("OPSKIT_LAB_ACTIVE"):
        return (
            "this plan was made outside the lab and this run is inside it: apply it without"
            f" --lab  (opskit apply {plan_file})"
        )
    return None
