"""The Action contract: every step kind is one class with Args, a risk, probe() and apply()."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from ..errors import OpskitError
from ..model import Change, Outcome, Risk, StrictModel, Target

if TYPE_CHECKING:
    import ssl

    import httpx

    from ..clients.connections import Connections
    from ..clients.hub import HubClient
    from ..clients.proxmox import ProxmoxClient
    from ..clients.ssh import Cut, HostShell
    from ..clients.uptime_kuma import UptimeKumaClient
    from ..engine.run_scope import RunScope

A = TypeVar("A", bound=BaseModel)


class ActionArgs(StrictModel):
    """Base of every action's Args: unknown arguments are errors naming the closest one.

    Built on first use (StrictModel defers): `opskit validate` pays only for the kinds a
    runbook uses."""


@dataclass
class ActionContext:
    """What a probe or an apply may use. The world is reached only through `connections` (the
    methods below): during planning `read_only` is True and every client refuses to mutate."""

    target: Target
    read_only: bool
    log: Callable[[str], None] = field(default=lambda line: None)
    connections: Connections | None = None
    root: Path | None = None  # the project (runbooks/, deploy/): local paths are relative to it
    # A running step's output, line by line: output(stream, line) for each line of each
    # command that is not a probe (the live view, the --json stream, the per-host log).
    output: Callable[[str, str], None] | None = None
    # The run being executed (None while planning): what a step must undo when it ends.
    run: RunScope | None = None
    # The commands on its target cut short while it ran (its timeout), each stopped or not.
    cut: list[Cut] = field(default_factory=list)

    def _connections(self, what: str) -> Connections:
        if self.connections is None:
            raise OpskitError(f"no connections in this context: cannot reach {what}")
        return self.connections

    async def proxmox(self) -> ProxmoxClient:
        """The Proxmox client of the target's cluster; read-only while planning."""
        return await self._connections("Proxmox").proxmox(
            self.target.cluster, read_only=self.read_only
        )

    def shell(self) -> HostShell:
        """The target over SSH; while planning it runs only commands marked as probes."""
        from ..clients.ssh import Endpoint, HostShell

        connections = self._connections("the host over SSH")
        return HostShell(
            connections.ssh(),
            Endpoint.of(self.target),
            connections.door(self.read_only),
            output=self.output,
            cut=self.cut,
        )

    def hub(
        self,
        url: str,
        email: str,
        password: str,
        *,
        auth: str = "auto",
        verify: bool | ssl.SSLContext = True,
        timeout: float = 15.0,
    ) -> HubClient:
        """A Beszel hub client (not logged in yet); read-only while planning."""
        return self._connections("the Beszel hub").hub(
            self.read_only, url, email, password, auth=auth, verify=verify, timeout=timeout
        )

    async def uptime_kuma(self) -> UptimeKumaClient:
        """The inventory's Uptime Kuma (not connected: `async with` it); read-only while
        planning."""
        return await self._connections("Uptime Kuma").uptime_kuma(self.read_only)

    def http(
        self, *, verify: bool | ssl.SSLContext = True, timeout: float, follow_redirects: bool
    ) -> httpx.AsyncClient:
        """An httpx client for plain HTTP(S) (checks); read-only while planning."""
        import httpx

        transport = self._connections("HTTP").transport(self.read_only, verify=verify)
        return httpx.AsyncClient(
            verify=verify,
            timeout=timeout,
            follow_redirects=follow_redirects,
            trust_env=False,  # never let a proxy variable send lab traffic elsewhere
            transport=transport,
        )

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
    # What of its target the probe reads and the apply changes (opskit.effects names them;
    # None: the table there decides by kind). A probe reading what an earlier step of the same
    # target changes plans as "known after apply" rather than blocked.
    reads: ClassVar[frozenset[str] | None] = None
    changes: ClassVar[frozenset[str] | None] = None
    # What decides its "nothing to do" (a reboot only if the upgrade asked for one): after an
    # earlier step changing that, it is known after apply too.
    decided_by: ClassVar[frozenset[str] | None] = None

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
