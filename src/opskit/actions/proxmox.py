"""Proxmox VE guests: found, powered, waited for, checked, commanded through the guest agent.

QEMU VMs and LXC containers alike; where a guest runs (its node) and what it is comes from
/cluster/resources, so a guest that migrated since the inventory was written is still found.
Snapshots and clones are proxmox_snapshots.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field

from ..errors import OpskitError, OutcomeUnknown
from ..model import Change, ChangeKind, Duration, Outcome, Risk
from ..model.common import format_duration
from .base import Action, ActionArgs, ActionContext, Check


@dataclass
class Guest:
    """A guest as the cluster sees it now."""

    vmid: int
    node: str
    kind: str  # qemu | lxc
    name: str
    status: str  # running | stopped | paused (qmpstatus)
    lock: str | None
    agent: bool
    raw: dict[str, Any]

    @property
    def label(self) -> str:
        word = "vm" if self.kind == "qemu" else "ct"
        return f"{word} {self.vmid} ({self.name})" if self.name else f"{word} {self.vmid}"

    @property
    def paused(self) -> bool:
        return self.status == "paused"

    @property
    def running(self) -> bool:
        return self.status in ("running", "paused")


def _vmid(args: GuestArgs, ctx: ActionContext) -> int:
    vmid = args.vmid if args.vmid is not None else ctx.target.vmid
    if vmid is None:
        raise OpskitError(f"{ctx.target.name} is not a Proxmox guest: give the step a vmid")
    return vmid


async def locate(ctx: ActionContext, vmid: int) -> tuple[Any, str, str]:
    """(client, node, kind) of a guest, from /cluster/resources."""
    client = await ctx.proxmox()
    assert ctx.connections is not None
    cluster = ctx.connections.cluster_name(ctx.target.cluster)
    resources = await ctx.connections.resources(client, cluster)
    for r in resources:
        if r.get("vmid") == vmid and r.get("type") in ("qemu", "lxc"):
            return client, str(r["node"]), str(r["type"])
    if not resources:
        raise OpskitError(
            f"Proxmox cluster {cluster} shows no guests at all, yet the inventory expects"
            f" guest {vmid}: is the API token privilege-separated without VM.Audit?"
            " (grant it PVEAuditor on /, or turn privilege separation off)"
        )
    raise OpskitError(f"guest {vmid} is not in Proxmox cluster {cluster} (/cluster/resources)")


async def guest(ctx: ActionContext, vmid: int) -> Guest:
    client, node, kind = await locate(ctx, vmid)
    data = await client.call("status", node=node, kind=kind, vmid=vmid)
    status = str(data.get("status", "unknown"))
    if kind == "qemu" and data.get("qmpstatus") in ("paused", "suspended", "prelaunch"):
        status = "paused"
    if kind == "lxc" and status == "running" and data.get("lock") == "suspended":
        status = "paused"
    return Guest(
        vmid=vmid,
        node=node,
        kind=kind,
        name=str(data.get("name", "")),
        status=status,
        lock=data.get("lock") or None,
        agent=bool(data.get("agent")),
        raw=data,
    )


async def _sleep(seconds: float) -> None:
    import asyncio  # not at the top: `opskit validate` imports this module and needs no loop

    await asyncio.sleep(seconds)


async def idle(ctx: ActionContext, g: Guest, timeout: float) -> Guest:
    """The guest once no task runs on it, as it is then (`g` when none ran).

    A task another run started (or a run killed mid-task left running) holds the guest's
    lock: a new task would fail `can't lock file`, and what it should do depends on how the
    running one ends (a resumed shutdown finds the guest already stopped)."""
    client = await ctx.proxmox()
    deadline = time.monotonic() + timeout
    waited = False
    while True:
        listed = await client.call("tasks", {"vmid": g.vmid, "source": "active"}, node=g.node)
        running = [t for t in listed or [] if not t.get("endtime") and not t.get("status")]
        if not running:
            return await guest(ctx, g.vmid) if waited else g
        upid = running[0].get("upid", "?")
        if not waited:
            ctx.log(f"{g.label}: waiting for task {upid} to end")
            waited = True
        if time.monotonic() >= deadline:
            raise OpskitError(f"{g.label} is busy: task {upid} still runs after {timeout:g}s")
        await _sleep(0.25)


def _blocked(g: Guest, summary: str, reason: str) -> Change:
    return Change.unknown(summary, blockers=[f"{g.label}: {reason}"])


def _locked(g: Guest, summary: str) -> Change | None:
    if g.lock and g.lock != "suspended":
        return _blocked(g, summary, f"is locked ({g.lock}); wait for it or unlock it")
    return None


# A probe's reading is reused by the apply that follows it within this many seconds.
FRESH = 2.0


class GuestArgs(ActionArgs):
    vmid: int | None = Field(None, ge=100, description="the guest's VMID (default: the target's)")
    timeout: Duration = Field(300.0, description="how long to wait for the Proxmox task")


async def _run_task(
    ctx: ActionContext, g: Guest, name: str, params: dict[str, Any], timeout: float, **path: Any
) -> str:
    client = await ctx.proxmox()
    upid = await client.call(name, params, node=g.node, kind=g.kind, vmid=g.vmid, **path)
    result = await client.wait_task(g.node, str(upid), timeout)
    if result.warnings:
        ctx.log(f"{g.label}: task {result.upid} ended with {result.exitstatus}")
    return result.exitstatus


# --- power -----------------------------------------------------------------------------------


class Power(Action[GuestArgs]):
    """Start, stop or change a guest's power state; subclasses say which."""

    verb: ClassVar[str]
    endpoint: ClassVar[str]
    Args = GuestArgs
    outputs: ClassVar[dict[str, str]] = {
        "vmid": "the guest's VMID (int)",
        "node": "the node the guest is on (str)",
    }

    def describe(self) -> str:
        return f"{self.verb} vm {self.args.vmid}" if self.args.vmid else self.verb

    def wanted(self, g: Guest) -> Change:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return {}

    _seen: tuple[float, Guest] | None = None

    async def probe(self, ctx: ActionContext) -> Change:
        g = await guest(ctx, _vmid(self.args, ctx))
        self._seen = (time.monotonic(), g)
        change = self.wanted(g)
        if change.kind is not ChangeKind.NONE:
            return _locked(g, change.summary) or change
        return change

    async def _current(self, ctx: ActionContext) -> Guest:
        """The guest as the engine's probe read it a moment ago, or as it is now."""
        if self._seen is not None and time.monotonic() - self._seen[0] < FRESH:
            return self._seen[1]
        return await guest(ctx, _vmid(self.args, ctx))

    async def apply(self, ctx: ActionContext) -> Outcome:
        g = await idle(ctx, await self._current(ctx), self.args.timeout)
        change = self.wanted(g)
        if change.kind is ChangeKind.NONE:
            return Outcome(ok=True, summary=change.summary)
        if change.blockers:
            return Outcome(ok=False, summary=change.summary, error="; ".join(change.blockers))
        try:
            status = await _run_task(ctx, g, self.endpoint, self.params(), self.args.timeout)
        except OpskitError as exc:
            return await self.failed(ctx, g, exc)
        return Outcome(
            ok=True,
            changed=True,
            summary=f"{self.verb} {g.label}: {status}",
            outputs={"vmid": g.vmid, "node": g.node},
        )

    async def failed(self, ctx: ActionContext, g: Guest, exc: OpskitError) -> Outcome:
        if isinstance(exc, OutcomeUnknown):
            raise exc  # the engine journals it unknown; resume probes the guest again
        return Outcome(ok=False, summary=f"{self.verb} {g.label} failed", error=str(exc))


def _transition(g: Guest, verb: str, before: str, after: str) -> Change:
    return Change(
        kind=ChangeKind.UPDATE,
        summary=f"{verb} {g.label} ({before} -> {after})",
        before={"status": before},
        after={"status": after},
    )


class Start(Power):
    """Start a VM or container; a running (or paused) guest is no change."""

    name: ClassVar[str] = "proxmox.vm.start"
    risk: ClassVar[Risk] = Risk.CHANGE
    verb = "start"
    endpoint = "start"
    example: ClassVar[str] = """
        targets: vm:110
        steps:
          - id: vm-up
            proxmox.vm.start: {}      # the target's guest; vmid: N for another
            register: vm              # later: {{ vm.node }}
        """

    def wanted(self, g: Guest) -> Change:
        if g.running:
            return Change.none(f"{g.label} is {g.status}")
        return _transition(g, "start", g.status, "running")

    async def failed(self, ctx: ActionContext, g: Guest, exc: OpskitError) -> Outcome:
        # A start racing another ("already running"), or LXC answering 500 for a running
        # container: what counts is whether it runs now.
        # A lost answer to the start asks the same question.
        try:
            now = await guest(ctx, g.vmid)
        except OpskitError:
            if isinstance(exc, OutcomeUnknown):
                raise exc from None
            raise
        if now.running:
            why = "its start's answer was lost" if isinstance(exc, OutcomeUnknown) else None
            return Outcome(
                ok=True, summary=f"{g.label} is running ({why or 'started elsewhere meanwhile'})"
            )
        return await super().failed(ctx, g, exc)


class ShutdownArgs(GuestArgs):
    timeout: Duration = Field(120.0, description="how long the guest may take to power off")
    force_stop: bool = Field(False, description="stop it hard if it outlasts the timeout")


class Shutdown(Power):
    """Power off through ACPI (QEMU) or init (LXC); a stopped guest is no change.

    A guest that outlasts the timeout fails the step and keeps running, unless `force_stop`
    stops it hard."""

    name: ClassVar[str] = "proxmox.vm.shutdown"
    risk: ClassVar[Risk] = Risk.DESTRUCTIVE
    verb = "shut down"
    endpoint = "shutdown"
    Args = ShutdownArgs
    example: ClassVar[str] = """
        targets: vm:110
        steps:
          - id: down
            proxmox.vm.shutdown: {timeout: 3m, force_stop: true}
            confirm: "Shut down {{ target.name }}?"
        """

    def wanted(self, g: Guest) -> Change:
        if not g.running:
            return Change.none(f"{g.label} is stopped")
        return _transition(g, "shut down", g.status, "stopped")

    def params(self) -> dict[str, Any]:
        assert isinstance(self.args, ShutdownArgs)
        params: dict[str, Any] = {"timeout": max(1, int(self.args.timeout))}
        if self.args.force_stop:
            params["forceStop"] = True
        return params

    async def apply(self, ctx: ActionContext) -> Outcome:
        outcome = await super().apply(ctx)
        if outcome.ok or not isinstance(self.args, ShutdownArgs) or self.args.force_stop:
            return outcome
        g = await guest(ctx, _vmid(self.args, ctx))
        if g.running:
            outcome.error = (
                f"{g.label} did not power off within {format_duration(self.args.timeout)}"
                f" (does the guest handle ACPI?); it is still running. Set force_stop: true to"
                f" stop it hard after the timeout. ({outcome.error})"
            )
        return outcome


class Stop(Power):
    """Power off at once, like pulling the plug; a stopped guest is no change."""

    name: ClassVar[str] = "proxmox.vm.stop"
    risk: ClassVar[Risk] = Risk.DESTRUCTIVE
    verb = "stop"
    endpoint = "stop"
    example: ClassVar[str] = """
        targets: vm:110
        steps:
          - id: pull-the-plug
            proxmox.vm.stop: {}
        """

    def wanted(self, g: Guest) -> Change:
        if not g.running:
            return Change.none(f"{g.label} is stopped")
        return _transition(g, "stop", g.status, "stopped")


class Reboot(Power):
    """Reboot a running guest through ACPI (QEMU) or init (LXC); a stopped one is refused at
    plan time (start it instead)."""

    name: ClassVar[str] = "proxmox.vm.reboot"
    risk: ClassVar[Risk] = Risk.DESTRUCTIVE
    verb = "reboot"
    endpoint = "reboot"
    example: ClassVar[str] = """
        targets: vm:110
        steps:
          - id: reboot
            proxmox.vm.reboot: {timeout: 5m}
          - id: back
            proxmox.vm.wait: {status: running, agent: true}
        """

    def wanted(self, g: Guest) -> Change:
        summary = f"reboot {g.label}"
        if not g.running:
            return _blocked(g, summary, "is stopped: a reboot is refused (start it instead)")
        return Change(
            kind=ChangeKind.UPDATE,
            summary=summary,
            before={"status": g.status},
            after={"status": "running", "rebooted": True},
        )

    def params(self) -> dict[str, Any]:
        return {"timeout": max(1, int(self.args.timeout))}


class Reset(Power):
    """Hard-reset a running QEMU VM, like its reset button (containers have none)."""

    name: ClassVar[str] = "proxmox.vm.reset"
    risk: ClassVar[Risk] = Risk.DESTRUCTIVE
    verb = "reset"
    endpoint = "reset"
    example: ClassVar[str] = """
        targets: vm:110
        steps:
          - id: reset
            description: the VM hangs and ignores ACPI
            proxmox.vm.reset: {}
        """

    def wanted(self, g: Guest) -> Change:
        summary = f"reset {g.label}"
        if g.kind != "qemu":
            return _blocked(g, summary, "containers have no reset (use proxmox.vm.reboot)")
        if not g.running:
            return _blocked(g, summary, "is stopped: a reset is refused (start it instead)")
        return Change(
            kind=ChangeKind.UPDATE,
            summary=summary,
            before={"status": g.status},
            after={"status": "running", "reset": True},
        )


class Suspend(Power):
    """Pause a running guest (kept in memory until resumed); a paused guest is no change."""

    name: ClassVar[str] = "proxmox.vm.suspend"
    risk: ClassVar[Risk] = Risk.DESTRUCTIVE
    verb = "suspend"
    endpoint = "suspend"
    example: ClassVar[str] = """
        targets: vm:110
        steps:
          - id: pause
            proxmox.vm.suspend: {}
        """

    def wanted(self, g: Guest) -> Change:
        if g.paused:
            return Change.none(f"{g.label} is paused")
        if not g.running:
            return _blocked(g, f"suspend {g.label}", "is stopped: nothing to suspend")
        return _transition(g, "suspend", g.status, "paused")


class Resume(Power):
    """Resume a paused guest; a running guest is no change, a stopped one is refused."""

    name: ClassVar[str] = "proxmox.vm.resume"
    risk: ClassVar[Risk] = Risk.CHANGE
    verb = "resume"
    endpoint = "resume"
    example: ClassVar[str] = """
        targets: vm:110
        steps:
          - id: unpause
            proxmox.vm.resume: {}
        """

    def wanted(self, g: Guest) -> Change:
        if g.status == "running":
            return Change.none(f"{g.label} is running")
        if not g.running:
            return _blocked(g, f"resume {g.label}", "is stopped: start it instead")
        return _transition(g, "resume", "paused", "running")


# --- waiting, checking, guest agent ---------------------------------------------------------


class WaitArgs(GuestArgs):
    status: Literal["running", "stopped", "paused"] | None = Field(
        "running", description="the state to wait for (null: any)"
    )
    agent: bool = Field(False, description="also wait until the QEMU guest agent answers")
    timeout: Duration = Field(300.0, description="how long to wait before failing")
    interval: Duration = Field(2.0, description="between looks")


async def _agent_up(ctx: ActionContext, g: Guest) -> bool:
    if g.kind != "qemu" or not g.agent or g.status != "running":
        return False
    client = await ctx.proxmox()
    try:
        await client.call("agent_ping", node=g.node, vmid=g.vmid)
    except OpskitError:
        return False
    return True


def _state_problems(g: Guest, status: str | None, agent: bool, agent_up: bool) -> list[str]:
    problems = []
    if status is not None and g.status != status:
        problems.append(f"{g.label} is {g.status}, not {status}")
    if agent and not agent_up:
        problems.append(f"{g.label}: the guest agent does not answer")
    return problems


class WaitFor(Check[WaitArgs]):
    """Wait until a guest is in a state (and its guest agent answers)."""

    name: ClassVar[str] = "proxmox.vm.wait"
    Args = WaitArgs
    example: ClassVar[str] = """
        targets: vm:110
        steps:
          - id: vm-up
            proxmox.vm.start: {}
          - id: agent-up
            proxmox.vm.wait: {status: running, agent: true, timeout: 3m}
        """

    def describe(self) -> str:
        agent = " with its guest agent up" if self.args.agent else ""
        return f"wait until {self.args.status or 'up'}{agent}"

    async def apply(self, ctx: ActionContext) -> Outcome:
        a = self.args
        vmid = _vmid(a, ctx)
        deadline = time.monotonic() + a.timeout
        while True:
            g = await guest(ctx, vmid)
            agent_up = await _agent_up(ctx, g) if a.agent else False
            problems = _state_problems(g, a.status, a.agent, agent_up)
            if not problems:
                return Outcome(ok=True, summary=f"{g.label} is {g.status}")
            if time.monotonic() >= deadline:
                return Outcome(
                    ok=False,
                    summary=problems[0],
                    error=f"after {format_duration(a.timeout)}: " + "; ".join(problems),
                )
            await _sleep(min(a.interval, max(0.0, deadline - time.monotonic())))


class CheckArgs(GuestArgs):
    status: Literal["running", "stopped", "paused"] | None = Field(
        "running", description="the state it must be in (null: any)"
    )
    agent: bool = Field(False, description="its QEMU guest agent must answer")
    unlocked: bool = Field(True, description="fail if the guest holds a lock (backup, ...)")


class CheckVm(Check[CheckArgs]):
    """A guest is in the expected state now."""

    name: ClassVar[str] = "check.proxmox.vm"
    Args = CheckArgs
    outputs: ClassVar[dict[str, str]] = {
        "status": "running, stopped or paused (str)",
        "node": "the node the guest is on (str)",
        "lock": "the guest's Proxmox lock, e.g. backup, or null",
        "agent": "whether its guest agent answered; false unless `agent: true` (bool)",
    }
    example: ClassVar[str] = """
        targets: vm:110
        preflight:
          - id: not-in-backup
            check.proxmox.vm: {status: null, unlocked: true}
        steps:
          - id: running
            check.proxmox.vm: {status: running, agent: true}
            register: vm              # later: {{ vm.node }}, {{ vm.lock }}
        """

    def describe(self) -> str:
        return f"vm is {self.args.status or 'known'}" + (" with agent" if self.args.agent else "")

    async def apply(self, ctx: ActionContext) -> Outcome:
        a = self.args
        g = await guest(ctx, _vmid(a, ctx))
        agent_up = await _agent_up(ctx, g) if a.agent else False
        problems = _state_problems(g, a.status, a.agent, agent_up)
        if a.unlocked and g.lock and g.lock != "suspended":
            problems.append(f"{g.label} is locked ({g.lock})")
        outputs = {"status": g.status, "node": g.node, "lock": g.lock, "agent": agent_up}
        if problems:
            return Outcome(
                ok=False, summary=problems[0], error="; ".join(problems), outputs=outputs
            )
        return Outcome(ok=True, summary=f"{g.label} is {g.status} on {g.node}", outputs=outputs)


class ExecArgs(GuestArgs):
    command: list[str] = Field(..., min_length=1, description="argv, run by the guest agent")
    input: str | None = Field(None, description="stdin for the command")
    expect: list[int] = Field(default_factory=lambda: [0], description="accepted exit codes")
    timeout: Duration = Field(300.0, description="how long the command may run")


class AgentExec(Action[ExecArgs]):
    """Run a command inside a QEMU guest through its guest agent (no network needed)."""

    name: ClassVar[str] = "proxmox.agent.exec"
    risk: ClassVar[Risk] = Risk.CHANGE
    Args = ExecArgs
    outputs: ClassVar[dict[str, str]] = {
        "rc": "the command's exit code (int)",
        "stdout": "its standard output (str)",
        "stderr": "its standard error (str)",
    }
    example: ClassVar[str] = """
        targets: vm:110
        steps:
          - id: ip
            description: the VM's addresses, without its network
            proxmox.agent.exec: {command: [ip, -brief, address]}
            register: ip              # later: {{ ip.stdout }}, {{ ip.rc }}
        """

    def describe(self) -> str:
        return "agent exec " + " ".join(self.args.command)

    async def probe(self, ctx: ActionContext) -> Change:
        g = await guest(ctx, _vmid(self.args, ctx))
        summary = f"run {' '.join(self.args.command)!r} in {g.label}"
        if g.kind != "qemu":
            return _blocked(g, summary, "containers have no guest agent")
        if not g.agent:
            return _blocked(g, summary, "has no guest agent configured (agent: 1)")
        return Change.unknown(summary)

    async def apply(self, ctx: ActionContext) -> Outcome:
        a = self.args
        g = await guest(ctx, _vmid(a, ctx))
        client = await ctx.proxmox()
        params = {"command": a.command, "input-data": a.input}
        started = await client.call("agent_exec", params, node=g.node, vmid=g.vmid)
        pid = started["pid"] if isinstance(started, dict) else started
        deadline = time.monotonic() + a.timeout
        delay = 0.1
        while True:
            try:
                status = await client.call(
                    "agent_exec_status", {"pid": pid}, node=g.node, vmid=g.vmid
                )
            except OpskitError as exc:
                raise OutcomeUnknown(
                    f"command (pid {pid}) started in {g.label}, but how it ended could not be"
                    f" read: {exc}"
                ) from None
            if status.get("exited"):
                break
            if time.monotonic() >= deadline:
                return Outcome(
                    ok=False,
                    summary="timed out",
                    error=f"command (pid {pid}) still running after {format_duration(a.timeout)}",
                )
            await _sleep(delay)
            delay = min(delay * 1.5, 2.0)
        rc = int(status.get("exitcode", -1))
        outputs = {
            "rc": rc,
            "stdout": status.get("out-data", ""),
            "stderr": status.get("err-data", ""),
        }
        summary = f"{' '.join(a.command)} exited {rc} in {g.label}"
        if rc not in a.expect:
            return Outcome(
                ok=False,
                changed=True,
                summary=summary,
                outputs=outputs,
                error=f"exit code {rc}, expected {a.expect}: {outputs['stderr'][-500:]}",
            )
        return Outcome(ok=True, changed=True, summary=summary, outputs=outputs)
