"""Tests as data: the probe -> Change logic of the Proxmox, Beszel (hub and agent) and host.*
kinds, from case tables (tests/cases/*.json: args + the world's state -> the change and the
requests or commands sent), run against fake transports through the one door, as pyinfra tests
its operations from case files. The host.* kinds run pyinfra's real operations and facts through
opskit's connector, a fake host answering the facts' commands. The same kinds meet fakepve, a
real PocketBase and real sshd in test_proxmox.py, test_beszel.py and test_host_state.py."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from opskit import actions
from opskit.actions import ActionContext
from opskit.clients.connections import Connections, Sent, Transports
from opskit.errors import OpskitError
from opskit.loader import load_inventory
from opskit.model import Target

CASES = Path(__file__).resolve().parent / "cases"
REPO = CASES.parent.parent


def _cases(name: str) -> list[Any]:
    data = json.loads((CASES / name).read_text())
    return [pytest.param(case, id=case["name"]) for case in data["cases"]]


def _json(data: Any) -> httpx.Response:
    return httpx.Response(200, json={"data": data})


def proxmox_world(world: dict[str, Any]) -> Any:
    """fakepve in a few lines: the cluster's guests, one guest's status and snapshots."""
    vmid, kind, node = world.get("vmid", 110), world.get("type", "qemu"), world.get("node", "pve1")
    guests = [] if world.get("none") else [{"vmid": vmid, "type": kind, "node": node}]
    guests += [{"vmid": v, "type": "qemu", "node": "pve1"} for v in world.get("others", [])]
    base = f"/api2/json/nodes/{node}/{kind}/{vmid}"

    def answer(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method != "GET":
            return httpx.Response(501)  # a probe sent a change: the door should have refused
        if path == "/api2/json/cluster/resources":
            return _json(guests)
        if path == f"{base}/status/current":
            status = {"status": world.get("status", "stopped"), "name": world.get("name", "ai")}
            for key in ("qmpstatus", "lock"):
                if key in world:
                    status[key] = world[key]
            return _json(status)
        if path == f"{base}/snapshot":
            return _json([{"name": n} for n in [*world.get("snapshots", []), "current"]])
        return httpx.Response(404, json={"data": None})

    return answer


def hub_world(world: dict[str, Any]) -> Any:
    """PocketBase with Beszel's collections, in a few lines: records filtered by one field."""
    records = {"users": [{"id": "u1", "email": "u@hub.test"}], **world}

    def answer(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/auth-with-password"):
            return httpx.Response(200, json={"token": "t0", "record": {"id": "su"}})
        found = re.fullmatch(r"/api/collections/(\w+)/records", path)
        if request.method != "GET" or not found:
            return httpx.Response(501)
        items = records.get(found.group(1), [])
        wanted = re.fullmatch(r'(\w+) = "(.*)"', request.url.params.get("filter", ""))
        if wanted:
            items = [r for r in items if str(r.get(wanted.group(1))) == wanted.group(2)]
        return httpx.Response(200, json={"items": items})

    return answer


def _plan(case: dict[str, Any], answer: Any, target: Target, inventory: Any) -> Any:
    """(change or error, the requests sent as 'METHOD path')."""
    sent: list[Sent] = []
    transports = Transports(http=httpx.MockTransport(answer), observe=sent.append)
    cls = actions.get(case["kind"])
    action = cls(cls.Args.model_validate(case["args"]))

    async def go() -> Any:
        connections = Connections(inventory, transports=transports)
        ctx = ActionContext(target=target, read_only=True, connections=connections)
        try:
            return await action.probe(ctx)
        except OpskitError as exc:
            return exc
        finally:
            await connections.aclose()

    result = asyncio.run(go())
    assert not [s for s in sent if s.refused], "a probe tried to change something"
    return result, [f"{s.method} {s.what}" for s in sent]


def _judge(case: dict[str, Any], result: Any, calls: list[str]) -> None:
    if "error" in case:
        assert isinstance(result, OpskitError), result
        assert str(result) == case["error"]
    else:
        assert not isinstance(result, Exception), result
        want = case["change"]
        assert (result.kind.value, result.summary) == (want["kind"], want["summary"])
        assert result.blockers == want.get("blockers", [])
    if "calls" in case:
        assert calls == case["calls"]


@pytest.mark.parametrize("case", _cases("proxmox.json"))
def test_proxmox_probe(case: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXMOX_TOKEN", "token-value-0123456789")
    inventory, _ = load_inventory(REPO / "inventory" / "homelab.yaml")
    spec = inventory.proxmox["pve"]
    spec.api_url, spec.tls.fingerprint = "http://pve.test:8006/api2/json", None
    target = Target(name="ai", kind="qemu", vmid=110, address="127.0.0.1", cluster="pve")
    _judge(case, *_plan(case, proxmox_world(case["world"]), target, inventory))


@pytest.mark.parametrize("case", _cases("beszel_hub.json"))
def test_beszel_hub_probe(case: dict[str, Any]) -> None:
    args = {"hub_url": "http://hub.test:8090", "email": "a@hub.test", "password": "pw-1234567"}
    case = {**case, "args": {**args, **case["args"]}}
    target = Target(name="web1", kind="host", address="192.0.2.10")
    _judge(case, *_plan(case, hub_world(case["world"]), target, None))


# --- beszel.agent: a fake SSH transport answering the host's one probe -----------------------

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHuyt8ZnZRxhok4vQJ4nSFZKshbtG1wTbzpPI4cD72Eb hub"


class FakePool:
    """An SSHPool that answers every command from `answer` and records it."""

    def __init__(self, answer: Any) -> None:
        self.answer, self.commands = answer, []

    async def run(self, endpoint: Any, command: str, **kw: Any) -> Any:
        from opskit.clients.ssh import CommandResult

        self.commands.append(command)
        return CommandResult(rc=0, stdout=self.answer(command), stderr="", duration=0.0)

    async def aclose(self) -> None:
        pass


def agent_probe_output(world: dict[str, Any], unit: str) -> str:
    """What beszel.agent's probe script prints on a host in this state."""
    import hashlib

    env = world["env"]
    lines = [
        f"arch={world.get('arch', 'x86_64')}",
        f"binary={world['binary'] or '-'}",
        f"user={'yes' if world['user'] else 'no'}",
        f"enabled={world['enabled']}",
        f"active={world['active']}",
        "env=-" if env is None else f"env={env[0]} {hashlib.sha256(env[1].encode()).hexdigest()}",
    ]
    text = world["unit"]
    lines.append("unit=no" if text is None else f"unit=yes\n{unit if text == 'wanted' else text}")
    return "\n".join(lines)


@pytest.mark.parametrize("case", _cases("beszel_agent.json"))
def test_beszel_agent_probe(case: dict[str, Any]) -> None:
    cls = actions.get("beszel.agent")
    args = {"version": "0.18.8", "key": KEY, "release_url": "http://mirror.test/beszel"}
    action = cls(cls.Args.model_validate({**args, **case["args"]}))
    pool = FakePool(lambda command: agent_probe_output(case["world"], action.unit_text(KEY)))
    result, sent = _probe_over(pool, action)
    _judge(case, result, [])
    assert sent and all(s.reads and not s.refused for s in sent)  # probes only
    assert len(pool.commands) == case.get("probes", len(pool.commands))


# --- host.*: pyinfra's facts answered by a fake host ----------------------------------------


def _mode_text(mode: str, kind: str) -> str:
    """ "0640" as ls -l shows it, "-rw-r-----" (a directory: "drwxr-x---")."""
    bits = int(mode, 8)
    flags = "".join(
        letter if bits & (1 << (8 - i)) else "-" for i, letter in enumerate("rwxrwxrwx")
    )
    return ("d" if kind == "dir" else "-") + flags


def host_world(world: dict[str, Any]) -> Any:
    """A host in a few lines, as pyinfra's facts read it: files and directories (stat, sha256,
    content), systemd units, Debian packages, users and groups. Anything else: no output."""
    import base64
    import hashlib

    paths: dict[str, dict[str, Any]] = {}
    for path, spec in world.get("dirs", {}).items():
        paths[path] = {"kind": "dir", "mode": "0755", "user": "root", "group": "root", **spec}
    for path, spec in world.get("files", {}).items():
        paths[path] = {"kind": "file", "mode": "0644", "user": "root", "group": "root", **spec}

    def answer(command: str) -> str:
        if m := re.search(r"! \(test -e (\S+) \|\|", command):
            spec = paths.get(m.group(1))
            if spec is None:
                return ""
            size = len(spec.get("content", "")) if spec["kind"] == "file" else 4096
            return (
                f"user={spec['user']} group={spec['group']}"
                f" mode={_mode_text(spec['mode'], spec['kind'])} atime=0 mtime=0 ctime=0"
                f" size={size} '{m.group(1)}'"
            )
        if m := re.search(r"test -e (\S+) && \( sha256sum", command):
            spec = paths.get(m.group(1))
            if spec is None or spec["kind"] != "file":
                return ""
            return f"{hashlib.sha256(spec['content'].encode()).hexdigest()}  {m.group(1)}"
        if m := re.search(r"if test -f (\S+) ; then echo B64", command):
            spec = paths.get(m.group(1))
            if spec is None or spec["kind"] != "file":
                return ""
            return "B64\n" + base64.b64encode(spec["content"].encode()).decode()
        if m := re.search(
            r"systemctl show --all --property Id --property (\w+) (\S+?)\s*\)", command
        ):
            unit = world.get("units", {}).get(m.group(2))
            key = {"SubState": "sub", "UnitFileState": "enabled"}[m.group(1)]
            value = unit[key] if unit else ("dead" if key == "sub" else "")
            return f"Id={m.group(2)}\n{m.group(1)}={value}"
        if "dpkg -l" in command:
            rows = [f"ii  {n}  {v}  amd64  a package" for n, v in world.get("packages", {}).items()]
            return "\n".join(["Desired=Unknown/Install/Remove/Purge/Hold", *rows])
        if "cat /etc/passwd | cut" in command:
            return "\n".join(
                f"{name}:x:{u['uid']}:{u['uid']}::{u['home']}:{u['shell']}|{u.get('group', name)}"
                f"|{' '.join([u.get('group', name), *u.get('groups', [])])}||"
                for name, u in world.get("users", {}).items()
            )
        if command.endswith("'cat /etc/group'"):
            return "\n".join(f"{g}:x:{1000 + i}:" for i, g in enumerate(world.get("groups", [])))
        if "uname -s" in command:
            return "Linux"
        if m := re.search(r"command -v (\S+) \|\| true", command):
            return f"/usr/sbin/{m.group(1)}"
        return ""

    return answer


class HostPool(FakePool):
    """FakePool as the pyinfra bridge reaches it: a session to open, the count of changes."""

    async def session(self, endpoint: Any) -> None:
        return None

    def generation(self, endpoint: Any) -> int:
        return 0

    def changed(self, endpoint: Any) -> None:
        raise AssertionError("a probe sent a command that may change the host")


def _short_commands(commands: list[str]) -> list[str]:
    """Each command as a case names it: the fact it reads (stat PATH, sha256 PATH, ...)."""
    named = []
    for c in commands:
        for pattern, name in (
            (r"! \(test -e (\S+) \|\|", "stat {}"),
            (r"test -e (\S+) && \( sha256sum", "sha256 {}"),
            (r"if test -f (\S+) ; then echo B64", "read {}"),
            (r"--property (\w+) (\S+?)\s*\)", "systemctl {}"),
        ):
            if m := re.search(pattern, c):
                named.append(name.format(" ".join(m.groups())))
                break
        else:
            named.append(c)
    return named


@pytest.mark.parametrize("case", _cases("host.json"))
def test_host_probe(case: dict[str, Any]) -> None:
    cls = actions.get(case["kind"])
    action = cls(cls.Args.model_validate(case["args"]))
    pool = HostPool(host_world(case["world"]))
    result, sent = _probe_over(pool, action)
    _judge(case, result, _short_commands(pool.commands))
    assert sent and all(s.reads and not s.refused for s in sent)  # facts only
    if "before" in case:
        assert result.before == case["before"]
    if "after" in case:
        assert result.after == case["after"]


def _probe_over(pool: Any, action: Any) -> tuple[Any, list[Sent]]:
    """`action`'s probe of a host through the door, its SSH answered by `pool` (a fake): the
    Change, or the OpskitError it raised, and what passed the door."""
    from opskit.clients.connections import SSHSettings

    class FakeSSH(SSHSettings):
        def pool(self, passwords: Any) -> Any:
            return pool

    sent: list[Sent] = []
    transports = Transports(ssh=FakeSSH(), observe=sent.append)
    target = Target(name="web1", kind="host", address="192.0.2.10")

    async def go() -> Any:
        connections = Connections(None, transports=transports)
        try:
            return await action.probe(ActionContext(target, True, connections=connections))
        except OpskitError as exc:
            return exc

    return asyncio.run(go()), sent
