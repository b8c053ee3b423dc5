"""`opskit explain`: each step kind's arguments, risk, outputs and example, as a user reads them.

Documentation that cannot rot: every kind's example is loaded, checked and rendered against the
shipped inventory; what a kind documents as outputs is what its apply registers (here with small
fakes for the kinds that are cheap to drive, and in every in-process test by the check in
conftest.py); an unknown kind suggests the kind meant.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from opskit import actions
from opskit.actions import ActionContext
from opskit.actions.docs import COMMON_OUTPUTS
from opskit.clients.ssh import CommandResult
from opskit.loader import load_inventory
from opskit.model import Outcome, Target

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted(
    ep.name
    for ep in entry_points(group=actions.ENTRY_POINT_GROUP)
    if ep.value.startswith("opskit.")
)
# The kinds that register nothing of their own (every step still registers ok, changed, summary).
REGISTER_NOTHING = {
    "wait",
    "proxmox.vm.rollback",
    "proxmox.vm.delete_snapshot",
    "proxmox.vm.wait",
}


def kind(name: str) -> Any:
    return actions.get(name)


# --- the list ----------------------------------------------------------------------------------


def test_without_a_kind_every_kind_is_listed_with_its_risk_and_one_line(opskit) -> None:
    result = opskit("explain")
    assert result.code == 0, result.err
    rows = {}
    for line in result.out.splitlines():
        found = re.match(r"^(\S+)\s+(read|change|destructive)\s+(\S.*)$", line)
        if found:
            rows[found[1]] = (found[2], found[3])
    assert sorted(rows) == SHIPPED
    for name, (risk, summary) in rows.items():
        cls = kind(name)
        assert risk == cls.risk.value
        assert summary == " ".join(inspect.cleandoc(cls.__doc__).split("\n\n")[0].split())
    assert rows["check.http"] == (
        "read",
        "An HTTP(S) endpoint answers with the expected status, body or JSON fields.",
    )
    assert rows["proxmox.vm.stop"][0] == "destructive"
    assert "opskit explain KIND" in result.out


def test_the_list_as_json(opskit) -> None:
    result = opskit("explain", "--json")
    assert result.code == 0, result.err
    listed = json.loads(result.out)
    assert [k["name"] for k in listed] == SHIPPED
    assert all(set(k) == {"name", "risk", "summary"} and k["summary"] for k in listed)
    assert {k["name"]: k["risk"] for k in listed}["beszel.agent"] == "change"


# --- one kind -----------------------------------------------------------------------------------

ARGUMENTS = 'ARGUMENTS  (any may be a template, "{{ ... }}")'
OUTPUTS = "OUTPUTS  (register: NAME, then {{ NAME.key }})"
# For one kind of each integration: lines its text must hold, in this order.
SHOWN = {
    "check.http": [
        "check.http  read",
        "An HTTP(S) endpoint answers with the expected status, body or JSON fields.",
        "RISK  read",
        ARGUMENTS,
        "  url: str  [required]",
        "      http:// or https:// URL",
        "  method: GET | HEAD | POST | PUT | PATCH | DELETE | OPTIONS = GET",
        "  expect: int | list[int] = 200",
        "  json: dict[str, any]",
        "  bearer: str  [secret]",
        "  tls: mapping = {}",
        "      fingerprint: str",
        "      insecure: bool = false",
        "  timeout: duration = 10s",
        OUTPUTS,
        "  status   the HTTP status code (int)",
        "  body     the response body as text, its first 64 KiB (str)",
        "  elapsed  seconds the request took (float)",
        "  json     the body parsed as JSON, null if it is not JSON (only with `json:`)",
        "EXAMPLE",
        "  targets: vm:110",
        "    - id: livez",
        "      check.http:",
    ],
    "proxmox.vm.start": [
        "proxmox.vm.start  change",
        "Start a VM or container; a running (or paused) guest is no change.",
        "RISK  change",
        "  vmid: int",
        "      the guest's VMID (default: the target's)",
        "  timeout: duration = 5m",
        OUTPUTS,
        "  vmid  the guest's VMID (int)",
        "  node  the node the guest is on (str)",
        "EXAMPLE",
        "      proxmox.vm.start: {}      # the target's guest; vmid: N for another",
    ],
    "ssh.run": [
        "ssh.run  change",
        "  cmd: str  [required, shell]",  # required arguments first
        "  creates: str",
        "  unless: str  [shell]",
        "  expect: list[int] = [0]",
        "  become_password: str  [secret]",
        "  timeout: duration",
        "      how long it may run (default: no limit)",
        "  output_cap: int = 65536",
        "  [shell]: each {{ value }} in it is shell-quoted ({{ value | raw }} opts out).",
        OUTPUTS,
        "  rc         the exit code (int)",
        "  stdout     standard output, its first `output_cap` characters (str)",
        "  stderr     standard error, likewise (str)",
        "  truncated  whether stdout or stderr was cut short (bool)",
        "EXAMPLE",
        "      ssh.run:",
    ],
    "host.file": [
        "host.file  change",
        "  path: str  [required]",
        "  content: str",
        "  template: str",
        '  mode: str = "0644"',  # quoted: 0644 in YAML is a number
        "  create_dirs: bool = true",
        OUTPUTS,
        "  path      the file's path (str)",
        "  size      its size in bytes (int)",
        "  sha256    the SHA-256 of its content (hex str); left out when it holds a secret",
        "  commands  the commands pyinfra ran, none when nothing changed (list[str])",
        "EXAMPLE",
        "      host.file:",
    ],
    "beszel.agent": [
        "beszel.agent  change",
        "  state: present | absent = present",
        "  version: str",
        "  key: str  [secret]",
        "  hub_tls: mapping = {}",
        '  listen: str = "45876"',
        "  timeout: duration = 5m",
        OUTPUTS,
        "  version  the version installed (str)",
        "  arch     the release's architecture for the host: amd64, arm64, ... (str)",
        "  done     what it did, in order: binary, user, unit file, start, ... (list[str])",
        "  sha256   the downloaded archive's SHA-256, when it installed a binary (hex str)",
        "EXAMPLE",
        "    hub_key: env:BESZEL_HUB_KEY       # the hub's public key line (ssh-ed25519 ...)",
        "      beszel.agent:",
    ],
}


@pytest.mark.parametrize("name", sorted(SHOWN))
def test_a_kind_shows_its_arguments_risk_outputs_and_example(opskit, name: str) -> None:
    result = opskit("explain", name)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    at = 0
    for wanted in SHOWN[name]:
        assert wanted in lines[at:], f"{wanted!r} missing after line {at}:\n{result.out}"
        at = lines.index(wanted, at) + 1
    assert "Besides these, a step registers ok, changed and summary." in result.out


@pytest.mark.parametrize("name", SHIPPED)
def test_json_is_the_twin_of_the_text(opskit, name: str) -> None:
    text = opskit("explain", name)
    result = opskit("explain", name, "--json")
    assert result.code == 0 == text.code, result.err
    doc = json.loads(result.out)
    cls = kind(name)
    assert doc["name"] == name and doc["risk"] == cls.risk.value and doc["summary"]
    assert doc["source"] == f"{cls.__module__}:{cls.__qualname__}"
    fields = {info.alias or key: info for key, info in cls.Args.model_fields.items()}
    assert {a["name"] for a in doc["arguments"]} == set(fields)
    for argument in doc["arguments"]:
        assert argument["required"] == fields[argument["name"]].is_required()
        assert ("default" in argument) != argument["required"]
        assert argument["description"], f"{name} {argument['name']} has no description"
        assert re.search(rf"^  {re.escape(argument['name'])}: ", text.out, re.M)
    assert doc["outputs"] == cls.outputs
    for output in doc["outputs"]:
        assert re.search(rf"^  {re.escape(output)} ", text.out, re.M)
    assert doc["common_outputs"] == COMMON_OUTPUTS
    assert doc["example"] == inspect.cleandoc(cls.example) + "\n"
    for line in doc["example"].splitlines():
        assert f"  {line}".rstrip() in text.out.splitlines()


# --- unknown kinds ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("ssh.command", "ssh.run"),
        ("command", "ssh.run"),
        ("shell", "ssh.run"),
        ("ansible.builtin.copy", "host.file"),
        ("template", "host.file"),
        ("service", "host.service"),
        ("apt", "host.packages"),
        ("get_url", "host.download"),
        ("vm.start", "proxmox.vm.start"),
        ("chek.http", "check.http"),
        ("Check.HTTP", "check.http"),
        ("proxmox.vm.delete-snapshot", "proxmox.vm.delete_snapshot"),
    ],
)
def test_an_unknown_kind_exits_2_naming_the_kind_meant(opskit, typed: str, meant: str) -> None:
    for args in ((typed,), (typed, "--json")):
        result = opskit("explain", *args)
        assert result.code == 2
        assert result.out == ""
        assert result.err == (
            f"error: unknown step kind {typed!r} (did you mean {meant!r}?);"
            " `opskit explain` lists the kinds\n"
        )


def test_an_unknown_kind_like_nothing_gets_no_guess(opskit) -> None:
    result = opskit("explain", "xyzzy")
    assert (result.code, result.out) == (2, "")
    assert result.err == "error: unknown step kind 'xyzzy'; `opskit explain` lists the kinds\n"


def test_explain_and_the_loader_suggest_the_same_kind(opskit, project) -> None:
    """One suggestion for an unknown kind (model.suggest_kind): explain's is the loader's."""
    project.runbook("typo", "name: typo\ntargets: all\nsteps:\n  - id: x\n    ssh.command: {}\n")
    loaded = opskit("validate", str(project.runbooks / "typo.yaml"), cwd=project.root)
    assert loaded.code == 2 and "(did you mean 'ssh.run'?)" in loaded.err
    assert "(did you mean 'ssh.run'?)" in opskit("explain", "ssh.command").err


# --- outputs and examples of every kind -------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_every_kind_documents_a_summary_its_outputs_and_an_example(name: str) -> None:
    cls = kind(name)
    assert inspect.cleandoc(cls.__dict__.get("__doc__") or ""), f"{name} has no docstring"
    assert isinstance(cls.outputs, dict)
    assert all(isinstance(v, str) and v for v in cls.outputs.values())
    # the engine adds these to every step's outputs: a kind's own would be overwritten
    assert not set(cls.outputs) & {*COMMON_OUTPUTS, "results"}
    assert (not cls.outputs) == (name in REGISTER_NOTHING)
    assert cls.example.strip(), f"{name} has no example"


@pytest.mark.parametrize("name", SHIPPED)
def test_every_example_loads_validates_and_renders_against_the_inventory(
    opskit, project, name: str
) -> None:
    example = inspect.cleandoc(kind(name).example)
    targets = "" if "targets:" in example else "targets: all\n"
    text = f"name: example\n{targets}{example}\n"
    path = project.runbooks / "example.yaml"
    path.write_text(text)
    checked = opskit("validate", str(path), cwd=project.root)
    assert checked.code == 0, checked.err
    shown = opskit("show", str(path), "--json", cwd=project.root)
    assert shown.code == 0, shown.err
    steps = [s for t in json.loads(shown.out)["targets"] for s in t["steps"]]
    assert steps and name in {s["action"] for s in steps}
    # `{{ NAME.key }}` of a step of this kind registered as NAME: a key it documents
    from opskit.loader import load_runbook

    runbook, _ = load_runbook(path, actions.catalog())
    names = {s.register_as for _, _, s in runbook.all_steps() if s.action == name and s.register_as}
    known = {*kind(name).outputs, *COMMON_OUTPUTS}
    for registered in names:
        for key in re.findall(rf"\{{\{{\s*{registered}\.(\w+)", example):
            assert key in known, f"the example of {name} uses {registered}.{key}"


# --- what apply registers is what is documented (kinds cheap to drive with fakes) -------------


class FakeShell:
    """The host's shell: `answer(command, count)` gives each command's result (default: rc 0,
    no output); files written are kept."""

    def __init__(self, answer: Callable[[str, int], CommandResult | None] | None = None) -> None:
        self.answer = answer or (lambda command, count: None)
        self.ran: list[str] = []
        self.files: dict[str, bytes] = {}

    async def run(self, command: str, **kw: Any) -> CommandResult:
        self.ran.append(command)
        return self.answer(command, len(self.ran)) or CommandResult(0, "", "", 0.01)

    async def put(self, data: bytes, path: str, mode: int) -> None:
        self.files[path] = data


class FakeProxmox:
    """One guest, 110 on node pve1, as the Proxmox client shows it; every task ends OK."""

    def __init__(self, status: str, qmpstatus: str | None = None) -> None:
        self.status, self.qmpstatus = status, qmpstatus or status

    async def call(self, name: str, params: Any = None, **path: Any) -> Any:
        if name == "status":
            return {"status": self.status, "qmpstatus": self.qmpstatus, "name": "ai", "agent": 1}
        if name == "snapshots":
            return [{"name": "before-upgrade"}, {"name": "current"}]
        if name == "tasks":  # no task runs on the guest
            return []
        if name == "agent_ping":
            return {}
        if name == "agent_exec":
            return {"pid": 7}
        if name == "agent_exec_status":
            return {"exited": 1, "exitcode": 0, "out-data": "ai\n", "err-data": ""}
        return f"UPID:pve1:{name}"

    async def wait_task(self, node: str, upid: str, timeout: float) -> Any:
        return SimpleNamespace(upid=upid, exitstatus="OK", warnings=False)


class FakeConnections:
    def __init__(self, inventory: Any = None, http: Any = None) -> None:
        self.inventory = inventory
        self.http = http

    def transport(self, read_only: bool, **kw: Any) -> Any:
        return self.http

    def cluster_name(self, name: str | None) -> str:
        return "pve"

    async def resources(self, client: Any, cluster: str) -> list[dict[str, Any]]:
        return [{"vmid": 110, "type": "qemu", "node": "pve1"}]

    def forget_resources(self) -> None:
        pass


def context(
    *,
    shell: FakeShell | None = None,
    pve: FakeProxmox | None = None,
    http: Any = None,
    root: Path | None = None,
) -> ActionContext:
    target = Target(name="ai", kind="qemu", vmid=110, address="127.0.0.1", cluster="pve")
    connections: Any = FakeConnections(http=http)
    ctx = ActionContext(target=target, read_only=False, connections=connections, root=root)
    if shell is not None:
        ctx.shell = lambda: shell  # type: ignore[method-assign]
    if pve is not None:

        async def proxmox() -> FakeProxmox:
            return pve

        ctx.proxmox = proxmox  # type: ignore[method-assign]
    return ctx


async def applied(name: str, args: dict[str, Any], ctx: ActionContext) -> Outcome:
    cls = kind(name)
    outcome = await cls(cls.Args.model_validate(args)).apply(ctx)
    assert outcome.ok, outcome.error
    return outcome


async def serving(line: bytes, name: str, args: dict[str, Any]) -> Outcome:
    """`name` applied against a TCP server on loopback that greets with `line`."""

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(line)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(greet, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        return await applied(name, {**args, "port": port}, context())


def http_ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"status": "ok"})


def shell_answering(command: str, count: int) -> CommandResult | None:
    if command.startswith("test -f"):  # proxmoxmcp.config: neither file is there yet
        return CommandResult(1, "", "", 0.01)
    return CommandResult(0, "out\n", "", 0.01)


def venv_shell(command: str, count: int) -> CommandResult | None:
    if "printf 'python %s" in command:  # the probe's read: first empty, then installed
        installed = "installed 1.0\n" if count > 1 else ""
        return CommandResult(0, f"python 3.11 x86_64\n{installed}", "", 0.01)
    return None


def power(status: str, qmpstatus: str | None = None) -> dict[str, Any]:
    return {"pve": FakeProxmox(status, qmpstatus)}


def rebooting_shell(command: str, count: int) -> CommandResult | None:
    if "boot_id" in command:  # the boot before, then another once it is back
        return CommandResult(0, "before\n" if count == 1 else "after\n", "", 0.01)
    return None


CASES: dict[str, Callable[[Path], Any]] = {
    "apt.upgrade": lambda tmp: applied("apt.upgrade", {}, context(shell=FakeShell())),
    "guest.reboot": lambda tmp: applied(
        "guest.reboot",
        {"only_if_required": True},
        context(shell=FakeShell(rebooting_shell), **power("running")),
    ),
    "check.http": lambda tmp: applied(
        "check.http",
        {"url": "http://127.0.0.1:9/livez", "json": {"status": "ok"}},
        context(http=httpx.MockTransport(http_ok)),
    ),
    "check.tcp": lambda tmp: serving(b"SSH-2.0-x\r\n", "check.tcp", {"banner": "^SSH"}),
    "check.beszel.agent": lambda tmp: serving(
        b"SSH-2.0-beszel_0.18.8\r\n", "check.beszel.agent", {"host": "127.0.0.1"}
    ),
    "wait": lambda tmp: applied("wait", {"duration": 0}, context()),
    "ssh.run": lambda tmp: applied(
        "ssh.run", {"cmd": "echo hi"}, context(shell=FakeShell(shell_answering))
    ),
    "ssh.script": lambda tmp: applied(
        "ssh.script",
        {"script": "s.sh", "args": ["a"]},
        context(shell=FakeShell(shell_answering), root=tmp),
    ),
    "ssh.upload": lambda tmp: applied(
        "ssh.upload", {"content": "x\n", "dest": "/tmp/x"}, context(shell=FakeShell())
    ),
    "check.ssh": lambda tmp: applied("check.ssh", {}, context(shell=FakeShell(shell_answering))),
    "check.command": lambda tmp: applied(
        "check.command", {"cmd": "true"}, context(shell=FakeShell(shell_answering))
    ),
    "proxmox.vm.start": lambda tmp: applied("proxmox.vm.start", {}, context(**power("stopped"))),
    "proxmox.vm.shutdown": lambda tmp: applied(
        "proxmox.vm.shutdown", {}, context(**power("running"))
    ),
    "proxmox.vm.stop": lambda tmp: applied("proxmox.vm.stop", {}, context(**power("running"))),
    "proxmox.vm.reboot": lambda tmp: applied("proxmox.vm.reboot", {}, context(**power("running"))),
    "proxmox.vm.reset": lambda tmp: applied("proxmox.vm.reset", {}, context(**power("running"))),
    "proxmox.vm.suspend": lambda tmp: applied(
        "proxmox.vm.suspend", {}, context(**power("running"))
    ),
    "proxmox.vm.resume": lambda tmp: applied(
        "proxmox.vm.resume", {}, context(**power("running", "paused"))
    ),
    "proxmox.vm.snapshot": lambda tmp: applied(
        "proxmox.vm.snapshot", {"name": "fresh"}, context(**power("running"))
    ),
    "proxmox.vm.rollback": lambda tmp: applied(
        "proxmox.vm.rollback", {"name": "before-upgrade"}, context(**power("running"))
    ),
    "proxmox.vm.delete_snapshot": lambda tmp: applied(
        "proxmox.vm.delete_snapshot", {"name": "before-upgrade"}, context(**power("running"))
    ),
    "proxmox.vm.clone": lambda tmp: applied(
        "proxmox.vm.clone", {"newid": 210}, context(**power("stopped"))
    ),
    "proxmox.vm.wait": lambda tmp: applied("proxmox.vm.wait", {}, context(**power("running"))),
    "check.proxmox.vm": lambda tmp: applied(
        "check.proxmox.vm", {"agent": True}, context(**power("running"))
    ),
    "proxmox.agent.exec": lambda tmp: applied(
        "proxmox.agent.exec", {"command": ["cat", "/etc/hostname"]}, context(**power("running"))
    ),
    "proxmoxmcp.config": lambda tmp: applied(
        "proxmoxmcp.config",
        {"api_key": "k" * 16, "cluster": "pve"},
        _with_inventory(context(shell=FakeShell(shell_answering))),
    ),
    "python.venv": lambda tmp: applied(
        "python.venv",
        {"package": "demo", "version": "1.0", "path": "/opt/demo", "wheelhouse": str(tmp)},
        context(shell=FakeShell(venv_shell)),
    ),
}


def _with_inventory(ctx: ActionContext) -> ActionContext:
    inventory, _ = load_inventory(REPO / "inventory" / "homelab.yaml")
    ctx.connections = FakeConnections(inventory)  # type: ignore[assignment]
    return ctx


@pytest.mark.parametrize("name", sorted(CASES))
def test_apply_registers_exactly_the_documented_outputs(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROXMOX_TOKEN", "pve-token")
    (tmp_path / "s.sh").write_text("echo from a script\n")
    (tmp_path / "demo-1.0-py3-none-any.whl").write_bytes(b"not really a wheel")
    outcome = asyncio.run(CASES[name](tmp_path))
    assert set(outcome.outputs) == set(kind(name).outputs)


def test_the_cases_drive_most_kinds() -> None:
    """The rest (host.*, beszel.agent, the hub's kinds, Uptime Kuma's, check.mcp) need pyinfra,
    a hub, a Socket.IO server or an MCP server to produce their outputs: their tests do (Uptime
    Kuma's against the lab's stand-in in process, check.mcp against tests/test_check_mcp.py's
    fakes and real servers), held to their documentation by conftest.py."""
    left = set(SHIPPED) - set(CASES)
    assert left == {
        "host.file",
        "host.directory",
        "host.user",
        "host.packages",
        "host.download",
        "host.service",
        "beszel.agent",
        "beszel.hub.system",
        "check.beszel.hub",
        "uptime_kuma.maintenance",
        "check.uptime_kuma",
        "check.mcp",
    }
