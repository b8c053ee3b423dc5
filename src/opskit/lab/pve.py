"""The lab's Proxmox VE: fakepve serving the inventory's guests and nodes.

    python -m opskit.lab.pve SPEC.json

SPEC names the address, certificate, nodes, guests, the files holding the root password and
the API token (secrets stay out of the command line), and where to log each request served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any


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
