"""Step kinds for engine tests: named resources in a JSON 'world' file; every call recorded.

The world lives in a file ($OPSKIT_TEST_WORLD) so that runs in other processes (SIGKILL,
Ctrl-C and lock tests) share it. `install()` registers the kinds in-process.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal

from opskit import actions
from opskit.actions import Action, ActionArgs, ActionContext
from opskit.model import Change, ChangeKind, Outcome, Risk

WORLD_ENV = "OPSKIT_TEST_WORLD"


class World:
    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self.read()
            yield data
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            tmp.replace(self.path)

    def read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"present": [], "fail": {}, "calls": []}
        return json.loads(self.path.read_text())

    def update(self, change: Callable[[dict[str, Any]], Any]) -> Any:
        with self._locked() as data:
            return change(data)

    # helpers for tests
    def calls(self, kind: str | None = None) -> list[str]:
        return [f"{c[1]}" for c in self.read()["calls"] if kind is None or c[0] == kind]

    def present(self) -> set[str]:
        return set(self.read()["present"])

    def fail(self, key: str, times: int = 1) -> None:
        self.update(lambda d: d["fail"].__setitem__(key, times))

    def add(self, key: str) -> None:
        self.update(lambda d: d["present"].append(key))


def world() -> World:
    return World(Path(os.environ[WORLD_ENV]))


class ResourceArgs(ActionArgs):
    name: str
    state: Literal["present", "absent"] = "present"
    sleep: float = 0.0
    echo: str | None = None
    blocked: str | None = None  # the probe answers with this blocker
    probe_sleep: float = 0.0  # the probe takes this long (Ctrl-C while planning)


class Resource(Action[ResourceArgs]):
    """A resource that exists or not on a target; apply makes it so."""

    name: ClassVar[str] = "test.resource"
    risk: ClassVar[Risk] = Risk.CHANGE
    Args = ResourceArgs

    def describe(self) -> str:
        return f"resource {self.args.name} {self.args.state}"

    def key(self, ctx: ActionContext) -> str:
        return f"{ctx.target.name}/{self.args.name}"

    async def probe(self, ctx: ActionContext) -> Change:
        key = self.key(ctx)

        def look(d: dict[str, Any]) -> bool:
            d["calls"].append(["probe", key, ctx.read_only])
            return key in d["present"]

        present = world().update(look)
        if self.args.probe_sleep:
            await asyncio.sleep(self.args.probe_sleep)
        if self.args.blocked:
            return Change.unknown(f"{self.args.name} is blocked", blockers=[self.args.blocked])
        want = self.args.state == "present"
        if present == want:
            return Change.none(f"{self.args.name} is {self.args.state}")
        kind = ChangeKind.CREATE if want else ChangeKind.DELETE
        return Change(
            kind=kind,
            summary=f"{kind.value} {self.args.name}",
            before={"present": present},
            after={"present": want},
        )

    async def apply(self, ctx: ActionContext) -> Outcome:
        assert not ctx.read_only
        key = self.key(ctx)
        world().update(lambda d: d["calls"].append(["apply", key, ctx.read_only]))
        if self.args.sleep:
            await asyncio.sleep(self.args.sleep)

        def act(d: dict[str, Any]) -> bool:
            if d["fail"].get(key, 0) > 0:
                d["fail"][key] -= 1
                return False
            if self.args.state == "present" and key not in d["present"]:
                d["present"].append(key)
            if self.args.state == "absent" and key in d["present"]:
                d["present"].remove(key)
            return True

        if not world().update(act):
            error = f"injected failure on {key} {self.args.echo or ''}".strip()
            return Outcome(ok=False, summary="injected failure", error=error)
        return Outcome(
            ok=True,
            changed=True,
            summary=f"{key} {self.args.state}",
            outputs={"name": self.args.name, "echo": self.args.echo},
        )


class Destroy(Resource):
    """The same, as a DESTRUCTIVE kind (gated)."""

    name: ClassVar[str] = "test.destroy"
    risk: ClassVar[Risk] = Risk.DESTRUCTIVE


KINDS: list[type[Action[Any]]] = [Resource, Destroy]


def install() -> None:
    for kind in KINDS:
        actions.register(kind)


def uninstall() -> None:
    for kind in KINDS:
        actions.unregister(kind.name)


def with_sshd(transports: Any, sshd: Any) -> Any:
    """`transports` (clients.connections.Transports) reaching the test's sshd: its client key,
    no ssh_config, no user known_hosts (the inventory pins the host keys)."""
    transports.ssh.client_keys = [str(sshd.client_key)]
    transports.ssh.config, transports.ssh.known_hosts = [], []
    return transports


def http_context(target: Any, read_only: bool, transport: Any = None) -> ActionContext:
    """A context whose HTTP goes to `transport` (an httpx.MockTransport), through the door."""
    from opskit.clients.connections import Connections, Transports

    return ActionContext(
        target, read_only=read_only, connections=Connections(None, transports=Transports(transport))
    )
