"""The lab's Proxmox VE: fakepve serving the inventory's guests and nodes.

    python -m opskit.lab.pve SPEC.json

SPEC names the address, certificate, nodes, guests, the files holding the root password and
the API token (secrets stay out of the command line), and where to log each request served.

Each guest is tied to its lab host (SPEC's `lab`): when fakepve turns a guest off (stop,
shutdown, the first half of a reboot, a rollback) the host is halted, when it turns it on (start,
the end of a reboot) the host boots; a snapshot copies the host's layer, a rollback restores it
while the guest is off, deleting a snapshot removes the copy (opskit.lab.power and .layers).
The hooks watch the guest's own fields (status, lock, config) as fakepve's tasks change them,
so they act exactly when fakepve does, after its own checks, locks and PVE-second delays.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Hook = Callable[[Any, str, Any], None]
WATCHED = ("status", "lock", "config")


class RequestLog(list[Any]):
    """fakepve's record of the requests it served, also appended to a file as JSON lines
    (method, path), so tests and operators can see what a run asked of "Proxmox"."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def append(self, item: Any) -> None:
        super().append(item)
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps({"method": item[0], "path": item[1]}) + "\n")


class Watched:
    """A guest's field that tells a hook of each assignment. It stores the value where fakepve
    does: in the guest's own dict, or through fakepve's property of that name (a container's
    lock is its config's `lock` key)."""

    def __init__(self, name: str, inner: Any = None) -> None:
        self.name = name
        self.inner = inner

    def __get__(self, guest: Any, owner: type | None = None) -> Any:
        if guest is None:
            return self
        if self.inner is not None:
            return self.inner.__get__(guest, owner)
        return guest.__dict__[self.name]

    def __set__(self, guest: Any, value: Any) -> None:
        if self.inner is not None:
            self.inner.__set__(guest, value)
        else:
            guest.__dict__[self.name] = value
        hook: Hook | None = guest.__dict__.get("_lab_hook")
        if hook is not None:
            hook(guest, self.name, value)


_watching: dict[type, type] = {}


def watch(guest: Any, hook: Hook) -> None:
    """Make `guest` (a FakeVm or FakeCt) call hook(guest, field, value) on every assignment
    of its status, lock or config."""
    base = type(guest)
    cls = _watching.get(base)
    if cls is None:
        fields = {}
        for name in WATCHED:
            inner = getattr(base, name, None)
            fields[name] = Watched(name, inner if hasattr(inner, "__set__") else None)
        cls = type(f"Lab{base.__name__}", (base,), fields)
        _watching[base] = cls
    guest.__class__ = cls
    guest.__dict__["_lab_hook"] = hook


class LabGuest:
    """What a guest's power and snapshots do to its lab host.

    It keeps the guest's last status and lock itself: fakepve sets them in several ways (a
    container's lock also goes when a rollback replaces its config), and a transition is
    between what this saw last and what is assigned now."""

    def __init__(self, root: Path, host: str, netns: str, guest: Any) -> None:
        self.root = root
        self.host = host
        self.netns = netns
        self.status = guest.status
        self.lock = guest.lock
        self._before: set[str] = set()
        self._rolled_back: str | None = None

    def __call__(self, guest: Any, field: str, value: Any) -> None:
        try:
            self._assigned(guest, field, value)
        except Exception as exc:  # a lab fault must not take fakepve down: it is logged
            print(f"lab host {self.host}: {field} = {value!r}: {exc}", flush=True)

    def _say(self, text: str) -> None:
        print(f"lab host {self.host}: {text}", flush=True)

    def _assigned(self, guest: Any, field: str, value: Any) -> None:
        from . import layers, power

        if field == "status":
            old, self.status = self.status, value
            if value == "running" and old != "running":
                power.boot(self.root, self.host, self.netns)
                self._say("booted")
            elif value != "running" and old == "running":
                power.halt(self.root, self.host)
                self._say("powered off")
        elif field == "lock":
            old, self.lock = self.lock, value
            if value in ("snapshot", "snapshot-delete"):
                self._before = set(guest.snapshots)
            elif old == "snapshot" and value is None:
                for name in sorted(set(guest.snapshots) - self._before):
                    if not guest.snapshots[name].get("snapstate"):
                        layers.take(self.root, self.host, name)
                        self._say(f"snapshot {name} taken")
            elif old == "snapshot-delete" and value is None:
                for name in sorted(self._before - set(guest.snapshots)):
                    layers.delete(self.root, self.host, name)
                    self._say(f"snapshot {name} deleted")
            elif old == "rollback" and value is None:
                self._after_rollback(guest)
        elif field == "config" and self.lock == "rollback":
            # fakepve has stopped the guest (its host is off) and now installs the snapshot's
            # config: the disk goes back with it.
            name = (value or {}).get("parent")
            if name:
                if not power.powered_off(self.root, self.host):
                    power.halt(self.root, self.host)
                restored = layers.restore(self.root, self.host, name)
                self._rolled_back = name
                missing = "" if restored else " (the lab has no copy of its layer)"
                self._say(f"rolled back to {name}{missing}")

    def _after_rollback(self, guest: Any) -> None:
        """PVE starts a VM rolled back to a snapshot with RAM (vmstate), as its API documents;
        fakepve leaves it stopped. The lab cannot restore memory: the guest boots afresh from
        the restored layer."""
        name, self._rolled_back = self._rolled_back, None
        snapshot = guest.snapshots.get(name or "") or {}
        if snapshot.get("vmstate") and guest.status != "running":
            guest.status = "running"
            if hasattr(guest, "qmpstatus"):
                guest.qmpstatus = "running"
            guest.started_at = time.time()


async def serve(spec: dict[str, Any]) -> None:
    from fakepve import FakePve

    password = Path(spec["password_file"]).read_text().strip()
    pve = FakePve(user="root@pam", password=password, host=spec["address"], port=spec["port"])
    pve.time_scale = float(spec.get("time_scale", 0.05))
    pve.apitokens[spec["token_id"]] = Path(spec["token_file"]).read_text().strip()
    pve.nodes.clear()  # fakepve starts with a node "pve1"; the lab has the inventory's nodes
    for node in spec["nodes"]:
        pve.add_node(node)
    for guest in spec["guests"]:
        add = pve.add_ct if guest["kind"] == "lxc" else pve.add_vm
        made = add(guest["vmid"], guest["name"], node=guest["node"], status=guest["status"])
        for key in ("start_secs", "shutdown_secs"):
            if key in guest:
                setattr(made, key, guest[key])
        if guest.get("host"):
            lab = spec["lab"]
            host = guest["host"]
            watch(made, LabGuest(Path(lab["root"]), host, lab["netns"][host], made))
    if spec.get("request_log"):
        pve.requests = RequestLog(Path(spec["request_log"]))
    await pve.start(spec["certfile"], spec["keyfile"])
    print(f"fakepve listening on https://{spec['address']}:{spec['port']}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(spec))


if __name__ == "__main__":
    main()
