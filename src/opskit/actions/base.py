"""The Action contract: every step kind is one class with Args, a risk, probe() and apply()."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from ..errors import OpskitError
from ..model import Change, Outcome, Risk, StrictModel, Target

if TYPE_CHECKING:
    from ..clients.connections import Connections
    from ..clients.proxmox import ProxmoxClient
    from ..clients.ssh import HostShell

A = TypeVar("A", bound=BaseModel)


class ActionArgs(StrictModel):
    """Base of every action's Args: unknown arguments are errors naming the closest one.

    Built on first use (StrictModel defers): `opskit validate` pays only for the kinds a
    runbook uses."""


@dataclass
class ActionContext:
    """What a probe or an apply may use. During planning `read_only` is True and the clients
    it hands out refuse to mutate."""

    target: Target
    read_only: bool
    log: Callable[[str], None] = field(default=lambda line: None)
    # Test seam: an httpx transport for actions that speak HTTP (None: the real network).
    http_transport: Any = None
    extras: dict[str, Any] = field(default_factory=dict)
    connections: Connections | None = None
    root: Path | None = None  # the project (runbooks/, deploy/): local paths are relative to it

    async def proxmox(self) -> ProxmoxClient:
        """The Proxmox client of the target's cluster; read-only while planning."""
        if self.connections is None:
            raise OpskitError("no Proxmox connection in this context")
        client = await self.connections.proxmox(self.target.cluster)
        return client.read_only() if self.read_only else client

    def shell(self) -> HostShell:
        """The target over SSH; while planning it runs only commands marked as probes."""
        from ..clients.ssh import Endpoint, HostShell

        if self.connections is None:
            raise OpskitError("no SSH connection in this context")
        return HostShell(self.connections.ssh(), Endpoint.of(self.target), self.read_only)

    def path(self, name: str) -> Path:
        """A local file named in a runbook: relative to the project's root."""
        path = Path(name).expanduser()
        return path if path.is_absolute() or self.root is None else self.root / path


class Action(Generic[A]):
    """One step kind. Subclasses set `name`, `risk` and `Args`, and implement probe/apply.

    `opskit explain` shows a kind from these: its docstring's first line (the summary) and
    the rest, its Args' fields (described with `Field(description=...)`), `outputs` and
    `example`."""

    name: ClassVar[str]
    risk: ClassVar[Risk]
    Args: ClassVar[type[BaseModel]]
    # Every name apply may put in Outcome.outputs (what `register: NAME` makes `NAME.x`), with
    # what it holds. Empty: the kind registers nothing of its own (every step still registers
    # ok, changed and summary).
    outputs: ClassVar[dict[str, str]] = {}
    # A runbook fragment using the kind: `steps:` (and `targets:`, `secrets:` where it needs
    # them), as a user would copy it; the tests load it against the shipped inventory.
    example: ClassVar[str] = ""

    def __init__(self, args: A) -> None:
        self.args = args

    def describe(self) -> str:
        """One line saying what the step does, for plans and progress."""
        return self.name

    async def probe(self, ctx: ActionContext) -> Change:
        """Read-only: what applying would change."""
        raise NotImplementedError

    async def apply(self, ctx: ActionContext) -> Outcome:
        """Do it; idempotent where the world allows."""
        raise NotImplementedError


class Check(Action[A]):
    """A READ action: its probe changes nothing and plans nothing; apply looks and judges."""

    risk: ClassVar[Risk] = Risk.READ

    async def probe(self, ctx: ActionContext) -> Change:
        return Change.none(self.describe())
