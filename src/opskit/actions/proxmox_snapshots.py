"""Proxmox VE guests' snapshots and clones: proxmox.vm.snapshot, .rollback, .delete_snapshot,
.clone (the guest found and its tasks awaited as every Proxmox kind does: proxmox.py)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, model_validator

from ..model import Change, ChangeKind, Duration, Outcome, Risk
from .base import Action, ActionContext
from .proxmox import Guest, GuestArgs, _blocked, _locked, _run_task, _vmid, guest, idle

# --- snapshots and clones ------------------------------------------------------------------


# How opskit marks a snapshot its retention may delete: this line in the snapshot's description,
# with the prefix it was kept under. A snapshot without it (taken by hand, by another tool, or
# by opskit without `keep`) is never deleted by retention, whatever its name.
KEEP_MARK = "opskit-retention: "


class SnapshotArgs(GuestArgs):
    name: str = Field(..., pattern=r"^[A-Za-z][A-Za-z0-9_\-]{1,39}$", description="snapshot name")
    description: str | None = Field(None, description="the snapshot's description in Proxmox")
    keep: int | None = Field(
        None,
        ge=1,
        description="retention: keep this many of opskit's snapshots named `prefix`..., this"
        " one included; the oldest beyond are deleted (only those opskit marked as its own)",
    )
    prefix: str | None = Field(
        None,
        pattern=r"^[A-Za-z][A-Za-z0-9_\-]{0,38}$",
        description="the name prefix retention counts (needed with keep; name starts with it)",
    )

    @model_validator(mode="after")
    def _retention(self) -> SnapshotArgs:
        if self.keep is not None and self.prefix is None:
            raise ValueError("keep needs a prefix: the snapshots it counts are named PREFIX...")
        if self.prefix is not None and not self.name.startswith(self.prefix):
            raise ValueError(f"name {self.name!r} does not start with prefix {self.prefix!r}")
        return self

    def marked_description(self) -> str | None:
        if self.prefix is None:
            return self.description
        mark = f"{KEEP_MARK}{self.prefix}"
        return f"{self.description}\n{mark}" if self.description else mark


async def _listed(ctx: ActionContext, g: Guest) -> list[dict[str, Any]]:
    client = await ctx.proxmox()
    listed = await client.call("snapshots", node=g.node, kind=g.kind, vmid=g.vmid) or []
    return [s for s in listed if s.get("name") != "current"]


async def _snapshots(ctx: ActionContext, g: Guest) -> set[str]:
    return {str(s.get("name")) for s in await _listed(ctx, g)}


def own_snapshots(listed: list[dict[str, Any]], prefix: str) -> list[str]:
    """The names of opskit's snapshots kept under `prefix`, oldest first: named so and marked
    so in their description (KEEP_MARK), never another's."""
    mark = f"{KEEP_MARK}{prefix}"
    own = [
        s
        for s in listed
        if str(s.get("name", "")).startswith(prefix)
        and mark in str(s.get("description") or "").splitlines()
    ]
    depth = _depths(listed)
    own.sort(
        key=lambda s: (int(s.get("snaptime") or 0), depth.get(str(s["name"]), 0), str(s["name"]))
    )
    return [str(s["name"]) for s in own]


def _depths(listed: list[dict[str, Any]]) -> dict[str, int]:
    """Each snapshot's number of ancestors (Proxmox's `parent` chain): snaptime counts whole
    seconds, so two taken in the same second are ordered by which was taken from the other."""
    parent = {str(s.get("name")): s.get("parent") for s in listed}
    depths: dict[str, int] = {}
    for name in parent:
        seen, at = set(), parent[name]
        while isinstance(at, str) and at in parent and at not in seen:  # a loop: stop at it
            seen.add(at)
            at = parent[at]
        depths[name] = len(seen)
    return depths


def beyond(own: list[str], keep: int, new: str | None = None) -> list[str]:
    """The oldest of `own` (with `new` about to join them) beyond `keep`."""
    names = own + ([new] if new is not None and new not in own else [])
    return [n for n in names[: max(0, len(names) - keep)] if n != new]


class Snapshot(Action[SnapshotArgs]):
    """Take a named snapshot of a guest; a snapshot of that name already there is no change."""

    name: ClassVar[str] = "proxmox.vm.snapshot"
    risk: ClassVar[Risk] = Risk.CHANGE
    Args = SnapshotArgs
    outputs: ClassVar[dict[str, str]] = {
        "name": "the snapshot's name (str): what a later rollback names",
        "deleted": "the names retention deleted, oldest first (list; empty without keep)",
        "kept": "opskit's snapshots under the prefix after retention, oldest first (list)",
    }
    example: ClassVar[str] = """
        targets: vm:110
        steps:
          - id: before
            proxmox.vm.snapshot:
              name: "patch-{{ run.started | strftime('%Y%m%d-%H%M%S') }}"
              description: "before opskit run {{ run.id }}"
              prefix: patch-          # retention counts opskit's patch-... snapshots
              keep: 3                 # and deletes the oldest beyond 3 (never another's)
            register: before          # later: {{ before.name }}
        """

    def describe(self) -> str:
        return f"snapshot {self.args.name}"

    async def probe(self, ctx: ActionContext) -> Change:
        a = self.args
        g = await guest(ctx, _vmid(a, ctx))
        listed = await _listed(ctx, g)
        doomed = []
        if a.keep is not None and a.prefix is not None:
            doomed = beyond(own_snapshots(listed, a.prefix), a.keep, a.name)
        if a.name in {str(s.get("name")) for s in listed} and not doomed:
            return Change.none(f"{g.label} has snapshot {a.name}")
        summary = f"snapshot {g.label} as {a.name}"
        if doomed:
            summary += f", then delete the oldest beyond {a.keep}: {', '.join(doomed)}"
        return _locked(g, summary) or Change(
            kind=ChangeKind.CREATE,
            summary=summary,
            after={"snapshot": a.name, **({"deleted": doomed} if doomed else {})},
        )

    async def apply(self, ctx: ActionContext) -> Outcome:
        a = self.args
        g = await idle(ctx, await guest(ctx, _vmid(a, ctx)), a.timeout)
        changed = False
        if a.name in await _snapshots(ctx, g):
            summary = f"{g.label} has snapshot {a.name}"
        else:
            params = {"snapname": a.name, "description": a.marked_description()}
            await _run_task(ctx, g, "snapshot", params, a.timeout)
            changed, summary = True, f"snapshot {a.name} of {g.label}"
        deleted: list[str] = []
        kept: list[str] = []
        if a.keep is not None and a.prefix is not None:
            own = own_snapshots(await _listed(ctx, g), a.prefix)
            for name in beyond(own, a.keep):
                if name == a.name:
                    continue  # the one just taken is never the one retention drops
                await _run_task(ctx, g, "delsnapshot", {}, a.timeout, snapname=name)
                deleted.append(name)
            kept = [n for n in own if n not in deleted]
            if deleted:
                changed = True
                summary += f"; deleted {', '.join(deleted)} (keeping {a.keep})"
        return Outcome(
            ok=True,
            changed=changed,
            summary=summary,
            outputs={"name": a.name, "deleted": deleted, "kept": kept},
        )


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
