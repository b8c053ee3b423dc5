"""Proxmox VE guests' snapshots and clones: proxmox.vm.snapshot, .rollback, .delete_snapshot,
.clone (the guest found and its tasks awaited as every Proxmox kind does: proxmox.py)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from ..model import Change, ChangeKind, Duration, Outcome, Risk
from .base import Action, ActionContext
from .proxmox import Guest, GuestArgs, _blocked, _locked, _run_task, _vmid, guest, idle

# --- snapshots and clones ------------------------------------------------------------------


class SnapshotArgs(GuestArgs):
    name: str = Field(..., pattern=r"^[A-Za-z][A-Za-z0-9_\-]{1,39}$", description="snapshot name")
    description: str | None = Field(None, description="the snapshot's description in Proxmox")


async def _snapshots(ctx: ActionContext, g: Guest) -> set[str]:
    client = await ctx.proxmox()
    listed = await client.call("snapshots", node=g.node, kind=g.kind, vmid=g.vmid) or []
    return {str(s.get("name")) for s in listed if s.get("name") != "current"}


class Snapshot(Action[SnapshotArgs]):
    """Take a named snapshot of a guest; a snapshot of that name already there is no change."""

    name: ClassVar[str] = "proxmox.vm.snapshot"
    risk: ClassVar[Risk] = Risk.CHANGE
    Args = SnapshotArgs
    example: ClassVar[str] = """
        targets: vm:110
        steps:
          - id: before
            proxmox.vm.snapshot: {name: before-upgrade, description: taken before the upgrade}
        """

    def describe(self) -> str:
        return f"snapshot {self.args.name}"

    async def probe(self, ctx: ActionContext) -> Change:
        g = await guest(ctx, _vmid(self.args, ctx))
        if self.args.name in await _snapshots(ctx, g):
            return Change.none(f"{g.label} has snapshot {self.args.name}")
        summary = f"snapshot {g.label} as {self.args.name}"
        return _locked(g, summary) or Change(
            kind=ChangeKind.CREATE, summary=summary, after={"snapshot": self.args.name}
        )

    async def apply(self, ctx: ActionContext) -> Outcome:
        g = await idle(ctx, await guest(ctx, _vmid(self.args, ctx)), self.args.timeout)
        if self.args.name in await _snapshots(ctx, g):
            return Outcome(ok=True, summary=f"{g.label} has snapshot {self.args.name}")
        params = {"snapname": self.args.name, "description": self.args.description}
        await _run_task(ctx, g, "snapshot", params, self.args.timeout)
        return Outcome(ok=True, changed=True, summary=f"snapshot {self.args.name} of {g.label}")


class SnapshotNameArgs(GuestArgs):
    name: str = Field(..., description="snapshot name")
    start: bool = Field(False, description="rollback: start the guest afterwards")


class Rollback(Action[SnapshotNameArgs]):
    """Roll a guest back to a snapshot (what changed since is lost); a missing snapshot
    blocks the plan."""

    name: ClassVar[str] = "proxmox.vm.rollback"
    risk: ClassVar[Risk] = Risk.DESTRUCTIVE
    Args = SnapshotNameArgs
    example: ClassVar[str] = """
        targets: vm:110
        steps:
          - id: back
            proxmox.vm.rollback: {name: before-upgrade, start: true}
        """

    def describe(self) -> str:
        return f"roll back to snapshot {self.args.name}"

    async def probe(self, ctx: ActionContext) -> Change:
        g = await guest(ctx, _vmid(self.args, ctx))
        summary = f"roll {g.label} back to snapshot {self.args.name}"
        if self.args.name not in await _snapshots(ctx, g):
            return _blocked(g, summary, f"has no snapshot {self.args.name}")
        return _locked(g, summary) or Change(
            kind=ChangeKind.UPDATE, summary=summary, after={"snapshot": self.args.name}
        )

    async def apply(self, ctx: ActionContext) -> Outcome:
        g = await idle(ctx, await guest(ctx, _vmid(self.args, ctx)), self.args.timeout)
        params = {"start": True} if self.args.start else {}
        await _run_task(ctx, g, "rollback", params, self.args.timeout, snapname=self.args.name)
        return Outcome(ok=True, changed=True, summary=f"{g.label} rolled back to {self.args.name}")


class DeleteSnapshot(Action[SnapshotNameArgs]):
    """Delete a guest's snapshot; a snapshot that is not there is no change."""

    name: ClassVar[str] = "proxmox.vm.delete_snapshot"
    risk: ClassVar[Risk] = Risk.DESTRUCTIVE
    Args = SnapshotNameArgs
    example: ClassVar[str] = """
        targets: vm:110
        steps:
          - id: forget
            proxmox.vm.delete_snapshot: {name: before-upgrade}
        """

    def describe(self) -> str:
        return f"delete snapshot {self.args.name}"

    async def probe(self, ctx: ActionContext) -> Change:
        g = await guest(ctx, _vmid(self.args, ctx))
        if self.args.name not in await _snapshots(ctx, g):
            return Change.none(f"{g.label} has no snapshot {self.args.name}")
        summary = f"delete snapshot {self.args.name} of {g.label}"
        return _locked(g, summary) or Change(
            kind=ChangeKind.DELETE, summary=summary, before={"snapshot": self.args.name}
        )

    async def apply(self, ctx: ActionContext) -> Outcome:
        g = await idle(ctx, await guest(ctx, _vmid(self.args, ctx)), self.args.timeout)
        if self.args.name not in await _snapshots(ctx, g):
            return Outcome(ok=True, summary=f"{g.label} has no snapshot {self.args.name}")
        await _run_task(ctx, g, "delsnapshot", {}, self.args.timeout, snapname=self.args.name)
        return Outcome(ok=True, changed=True, summary=f"deleted snapshot {self.args.name}")


class CloneArgs(GuestArgs):
    newid: int = Field(..., ge=100, description="the new guest's VMID")
    name: str | None = Field(None, description="name (hostname for a container)")
    full: bool = Field(True, description="a full copy (false: a linked clone of a template)")
    target: str | None = Field(None, description="node to clone to")
    storage: str | None = Field(None, description="storage for a full clone's disks")
    timeout: Duration = Field(1800.0, description="how long to wait for the clone task")


class Clone(Action[CloneArgs]):
    """Clone a guest (VM or container) to a new VMID; a guest already at that VMID is no
    change."""

    name: ClassVar[str] = "proxmox.vm.clone"
    risk: ClassVar[Risk] = Risk.CHANGE
    Args = CloneArgs
    outputs: ClassVar[dict[str, str]] = {"vmid": "the new guest's VMID (int)"}
    example: ClassVar[str] = """
        targets: vm:110
        steps:
          - id: copy
            proxmox.vm.clone: {newid: 210, name: ai-staging, full: true}
            register: copy            # later: {{ copy.vmid }}
          - id: copy-up
            proxmox.vm.start: {vmid: 210}
        """

    def describe(self) -> str:
        return f"clone to {self.args.newid}"

    async def _existing(self, ctx: ActionContext) -> bool:
        client = await ctx.proxmox()
        assert ctx.connections is not None
        cluster = ctx.connections.cluster_name(ctx.target.cluster)
        return any(
            r.get("vmid") == self.args.newid
            for r in await ctx.connections.resources(client, cluster)
        )

    async def probe(self, ctx: ActionContext) -> Change:
        g = await guest(ctx, _vmid(self.args, ctx))
        if await self._existing(ctx):
            return Change.none(f"guest {self.args.newid} exists")
        summary = f"clone {g.label} to {self.args.newid}" + (
            f" ({self.args.name})" if self.args.name else ""
        )
        return _locked(g, summary) or Change(
            kind=ChangeKind.CREATE,
            summary=summary,
            after={"vmid": self.args.newid, "name": self.args.name},
        )

    async def apply(self, ctx: ActionContext) -> Outcome:
        g = await idle(ctx, await guest(ctx, _vmid(self.args, ctx)), self.args.timeout)
        a = self.args
        params: dict[str, Any] = {
            "newid": a.newid,
            "full": a.full,
            "target": a.target,
            "storage": a.storage,
        }
        params["name" if g.kind == "qemu" else "hostname"] = a.name
        endpoint = "clone_qemu" if g.kind == "qemu" else "clone_lxc"
        client = await ctx.proxmox()
        upid = await client.call(endpoint, params, node=g.node, vmid=g.vmid)
        await client.wait_task(g.node, str(upid), a.timeout)
        assert ctx.connections is not None
        ctx.connections.forget_resources()
        return Outcome(
            ok=True,
            changed=True,
            summary=f"cloned {g.label} to {a.newid}",
            outputs={"vmid": a.newid},
        )
