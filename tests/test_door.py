"""The one door to the world: every client an action uses comes from `ctx.connections`, built
from one typed set of transports, and every request and command passes one read-only check."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from pathlib import Path

import httpx
import pytest

from opskit.actions import ActionContext
from opskit.clients.connections import Connections, Door, Sent, SSHSettings, Transports
from opskit.errors import ReadOnlyRefused
from opskit.loader import load_inventory
from opskit.model import Target

SRC = Path(__file__).resolve().parent.parent / "src" / "opskit"
REPO = SRC.parent.parent


def test_no_any_or_dict_typed_seam_on_the_action_context() -> None:
    """What a probe or an apply is handed is typed: no `Any`, no dict of extras, anywhere on
    the context or on what it reaches the world with."""
    for cls in (ActionContext, Transports, SSHSettings):
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            annotation = str(f.type)
            assert not re.search(r"\bAny\b|\bdict\b|Dict\[", annotation), (cls.__name__, f.name)
    source = (SRC / "actions" / "base.py").read_text()
    context = source[source.index("class ActionContext") : source.index("class Action(")]
    assert not re.search(r"\bAny\b|dict\[|extras|http_transport", context)
    planner = (SRC / "planner.py").read_text()
    assert "on_proxmox_request" not in planner and "extras" not in planner


def test_no_client_makes_views_with_object_new() -> None:
    found = [
        str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if "object.__new__" in p.read_text()
    ]
    assert found == []


# --- every client through the door: (what the action asks, request) -> sent or refused --------


def _ok(request: httpx.Request) -> httpx.Response:
    if request.url.path.endswith("/auth-with-password"):
        return httpx.Response(200, json={"token": "t", "record": {"id": "u1"}})
    if request.url.path == "/api2/json/access/ticket":
        return httpx.Response(200, json={"data": {"ticket": "T", "CSRFPreventionToken": "C"}})
    return httpx.Response(200, json={"data": "UPID:x", "items": []})


async def _proxmox(ctx: ActionContext, method: str) -> None:
    client = await ctx.proxmox()
    if method == "GET":
        await client.call("version")
    else:
        await client.call("start", node="pve1", kind="qemu", vmid=110)


async def _hub(ctx: ActionContext, method: str) -> None:
    async with ctx.hub("http://hub.test:8090", "a@b.test", "pw-12345") as hub:
        await hub.login()  # a POST that changes nothing: let through while planning
        if method == "GET":
            await hub.records("systems")
        else:
            await hub.create("systems", {"name": "x"})


async def _http(ctx: ActionContext, method: str) -> None:
    async with ctx.http(timeout=5, follow_redirects=False) as client:
        await client.request(method, "http://svc.test:8811/livez")


CLIENTS = {"proxmox": _proxmox, "hub": _hub, "http": _http}
# client, method, read_only -> refused?, what the observer saw (method, client, refused)
DOOR_CASES = [
    ("proxmox", "GET", True, False),
    ("proxmox", "POST", True, True),
    ("proxmox", "POST", False, False),
    ("hub", "GET", True, False),
    ("hub", "POST", True, True),
    ("hub", "POST", False, False),
    ("http", "GET", True, False),
    ("http", "POST", True, True),
    ("http", "DELETE", False, False),
]


@pytest.mark.parametrize(("client", "method", "read_only", "refused"), DOOR_CASES)
def test_every_client_passes_the_one_door(
    client: str, method: str, read_only: bool, refused: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROXMOX_TOKEN", "token-value-0123456789")
    inventory, _ = load_inventory(REPO / "inventory" / "homelab.yaml")
    inventory.proxmox["pve"].tls.fingerprint = None  # no certificate to fetch: a fake transport
    inventory.proxmox["pve"].api_url = "http://pve.test:8006/api2/json"
    sent: list[Sent] = []
    reached: list[str] = []

    def network(request: httpx.Request) -> httpx.Response:
        reached.append(f"{request.method} {request.url.path}")
        return _ok(request)

    transports = Transports(http=httpx.MockTransport(network), observe=sent.append)
    target = Target(name="ai", kind="qemu", vmid=110, address="127.0.0.1", cluster="pve")

    async def go() -> None:
        connections = Connections(inventory, transports=transports)
        ctx = ActionContext(target=target, read_only=read_only, connections=connections)
        try:
            await CLIENTS[client](ctx, method)
        finally:
            await connections.aclose()

    if refused:
        with pytest.raises(ReadOnlyRefused, match=f"planning is read-only: refused {method} /"):
            asyncio.run(go())
    else:
        asyncio.run(go())
    last = sent[-1]
    assert (last.client, last.method, last.read_only, last.refused) == (
        client,
        method,
        read_only,
        refused,
    )
    # A refused request never reached the network; everything else did, once.
    assert [s for s in sent if s.refused] == ([last] if refused else [])
    assert len(reached) == len([s for s in sent if not s.refused])


# --- the door itself, as data: (read_only, a read?) -> let through or refused --------------------


@pytest.mark.parametrize(
    ("read_only", "reads", "refused"),
    [(True, True, False), (True, False, True), (False, True, False), (False, False, False)],
)
def test_the_door_refuses_only_changes_while_planning(
    read_only: bool, reads: bool, refused: bool
) -> None:
    seen: list[Sent] = []
    door = Door(read_only, seen.append)
    sent = Sent("ssh", "run", "ai", "systemctl restart x", reads=reads, read_only=read_only)
    if refused:
        with pytest.raises(ReadOnlyRefused, match="refused to run `systemctl restart x` on ai"):
            door.enter(sent)
    else:
        door.enter(sent)
    assert [s.refused for s in seen] == [refused]


def test_put_is_refused_while_planning() -> None:
    door = Door(True)
    with pytest.raises(ReadOnlyRefused, match="refused to write /etc/x on ai"):
        door.enter(Sent("ssh", "put", "ai", "/etc/x", reads=False, read_only=True))


def test_actions_make_no_client_of_their_own() -> None:
    """The seam is the transport: a test swaps it in one place (Transports), nowhere else."""
    kinds = [p for p in (SRC / "actions").glob("*.py") if p.name != "base.py"]
    source = "\n".join(p.read_text() for p in kinds)
    assert "httpx.AsyncClient(" not in source  # check.http's client comes from ctx.http()
    assert "HubClient(" not in source  # the hub's from ctx.hub()
    assert "ProxmoxClient(" not in source and "SSHPool(" not in source


def test_one_way_to_write_a_file_to_a_host() -> None:
    """Every file opskit sends to a host goes through primitives.put_file (which alone calls
    HostShell.put, the one SFTP write): no action writes with a shell script or SFTP itself."""
    callers = []
    for path in sorted(SRC.rglob("*.py")):
        if path.parts[-2] == "lab":
            continue  # the lab builds its hosts on this machine, not through SSH
        text = path.read_text()
        name = str(path.relative_to(SRC))
        if re.search(r"\bshell\.put\(|\.sftp\b|start_sftp_client", text):
            callers.append(name)
        assert not re.search(r'cat > "\$t"|mktemp [^\n]*&& *cat', text), name
    assert callers == ["clients/primitives.py", "clients/ssh.py"]
