"""The lab for tests: a lab of its own (name, directory), driven through the real `opskit`.

Each test process names its lab (`OPSKIT_LAB_NAME`), so a test run never touches an operator's
lab or another test run's. The lab needs root; without it these tests skip, and with
OPSKIT_CI=1 they fail instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
Done = subprocess.CompletedProcess[str]


def require_root() -> None:
    if os.geteuid() != 0:
        message = "the lab needs root (network and mount namespaces)"
        if os.environ.get("OPSKIT_CI"):
            pytest.fail(message)
        pytest.skip(message)


@dataclass
class Lab:
    name: str
    root: Path
    env: dict[str, str]

    def opskit(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """`opskit ARGS` as an operator types it (cwd: the repository)."""
        return subprocess.run(
            [sys.executable, "-m", "opskit", *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    @property
    def state(self) -> dict[str, object]:
        return dict(json.loads((self.root / "lab.json").read_text()))

    def address(self, host: str) -> str:
        hosts = self.state["hosts"]
        assert isinstance(hosts, list)
        return str(next(h["address"] for h in hosts if h["name"] == host))

    @property
    def state_dir(self) -> Path:
        """Where this lab's runs keep journal, logs and locks (they outlive `lab down`)."""
        return Path(self.env["OPSKIT_STATE_DIR"]) / "labs" / self.name

    @property
    def controller_ns(self) -> str:
        return f"{self.name}-ctl"

    def inside(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A command in the lab's controller namespace."""
        return subprocess.run(
            ["ip", "netns", "exec", self.controller_ns, *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
        )

    def answers(self, *endpoints: str) -> dict[str, bool]:
        done = self.inside(sys.executable, "-m", "opskit.lab.probe", *endpoints)
        return dict(json.loads(done.stdout))

    def ssh(
        self, host: str, command: str, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """`command` on a lab host over OpenSSH from the controller, its host key pinned."""
        known = self.root.parent / f"known_hosts-{self.name}"
        hosts = self.state["hosts"]
        assert isinstance(hosts, list)
        known.write_text("".join(f"{h['address']} {h['host_key']}\n" for h in hosts))
        return self.inside(
            "ssh",
            "-i",
            str(self.root / "ssh" / "id_ed25519"),
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={known}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ConnectTimeout=5",
            f"root@{self.address(host)}",
            command,
            timeout=timeout,
        )

    def wait_for_ssh(self, host: str, timeout: float = 30) -> None:
        endpoint = f"{self.address(host)}:22"
        deadline = time.monotonic() + timeout
        while not self.answers(endpoint)[endpoint]:
            assert time.monotonic() < deadline, f"{host} did not answer SSH within {timeout}s"
            time.sleep(0.1)


def make_lab(tmp: Path) -> Lab:
    name = f"t{os.getpid() % 100000}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSKIT_")}
    env.update(
        OPSKIT_LAB_NAME=name,
        OPSKIT_LAB_DIR=str(tmp / "lab"),
        PYTHONUNBUFFERED="1",
        OPSKIT_STATE_DIR=str(tmp / "state"),
    )
    return Lab(name, tmp / "lab", env)


def lab_up(tmp: Path, suffix: str = "") -> Iterator[Lab]:
    """A lab up for the caller's tests, down afterwards (also when `up` failed half-way);
    `suffix` names it apart from the other labs of this test process."""
    require_root()
    lab = make_lab(tmp)
    lab.env["OPSKIT_LAB_NAME"] = lab.name = lab.name + suffix
    try:
        done = lab.opskit("lab", "up")
        assert done.returncode == 0, done.stdout + done.stderr
        yield lab
    finally:
        lab.opskit("lab", "down")
