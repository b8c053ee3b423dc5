"""A scratch project whose inventory's hosts are real sshd "hosts" on loopback, driven through
the engine (plan, run, journal), for the SSH and host-state tests."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opskit.engine import session
from opskit.engine.session import Request
from opskit.report.progress import Reporter
from opskit.store import Journal
from opskit.workspace import Workspace
from sshd import Sshd


class Project:
    def __init__(self, root: Path, sshd: Sshd, hosts: list[str], extra_hosts: str = "") -> None:
        self.root, self.sshd = root, sshd
        self.work = root / "work"  # what the "hosts" write (they share this machine's disk)
        self.work.mkdir()
        for sub in ("runbooks", "inventory", "deploy"):
            (root / sub).mkdir()
        entries = "".join(
            f"  - {{name: h{n}, address: {a}, tags: [web], ssh: {{user: root, port: {sshd.port},"
            f' host_key: "{sshd.pinned}"}}}}\n'
            for n, a in enumerate(hosts)
        )
        (root / "inventory" / "homelab.yaml").write_text("hosts:\n" + entries + extra_hosts)
        self.host_env: dict[str, str] = {}  # every host.* command's environment
        self.observe: Any = None  # sees every request and command (clients.connections.Sent)

    def runbook(self, text: str) -> None:
        text = textwrap.dedent(text).lstrip().replace("WORK", str(self.work))
        (self.root / "runbooks" / "rb.yaml").write_text(text)

    def request(self, **kw: Any) -> Request:
        req = Request(
            workspace=Workspace(self.root / "runbooks", self.root / "inventory" / "homelab.yaml"),
            reporter=Reporter(out=open(os.devnull, "w")),  # noqa: SIM115
            journal=Journal(self.root / "state" / "journal.db"),
            **kw,
        )
        transports = req.settings.transports
        transports.ssh.client_keys = [str(self.sshd.client_key)]
        transports.ssh.config, transports.ssh.known_hosts = [], []
        transports.ssh.host_env = tuple(self.host_env.items())
        transports.observe = self.observe
        return req

    def plan(self, **params: Any) -> Any:
        return session.make_plan(self.request(), "rb", params, None)[2]

    def run(self, **params: Any) -> Any:
        req = self.request(yes=True)
        loaded, targets, plan = session.make_plan(req, "rb", params, None)
        return plan, session.execute(req, loaded, targets, plan)

    def steps(self, run_id: str) -> dict[tuple[str, str], Any]:
        j = Journal(self.root / "state" / "journal.db")
        try:
            return {(s.target, s.step_id): s for s in j.steps(run_id)}
        finally:
            j.close()


def kinds(plan: Any) -> list[list[str]]:
    return [[s.change.kind.value for s in t.steps] for t in plan.targets]


def drop_after_sending(monkeypatch: Any, method: str, when: Callable[[str], bool]) -> list[str]:
    """The first call of asyncssh's `SFTPClient.<method>` whose first path `when` accepts
    sends its request, then the client's connection is dropped before the answer is read (a
    connection lost at that moment). Returns the paths of the calls so dropped."""
    import asyncio

    import asyncssh

    original = getattr(asyncssh.SFTPClient, method)
    dropped: list[str] = []

    async def sent_then_dropped(self: Any, path: Any, *args: Any, **kwargs: Any) -> Any:
        if dropped or not when(str(path)):
            return await original(self, path, *args, **kwargs)
        dropped.append(str(path))
        answer = asyncio.ensure_future(original(self, path, *args, **kwargs))
        await asyncio.sleep(0)  # the request is written
        # the SFTP session's channel names its connection (asyncssh keeps no public link)
        self._handler._writer.channel.get_extra_info("connection").abort()
        return await answer

    monkeypatch.setattr(asyncssh.SFTPClient, method, sent_then_dropped)
    return dropped
