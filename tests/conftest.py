"""Shared fixtures: a scratch project (inventory + runbooks) and the CLI as a user types it."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# The suite's children get default signal dispositions however it was started: a shell script's
# `make test &` ignores SIGINT and nohup ignores SIGHUP, and ignored signals are inherited by
# every process the tests start (opskit's Ctrl-C tests, the lab's reloads by SIGHUP).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Project:
    root: Path

    @property
    def runbooks(self) -> Path:
        return self.root / "runbooks"

    def runbook(self, name: str, text: str) -> Path:
        path = self.runbooks / f"{name}.yaml"
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path


@pytest.fixture(autouse=True)
def _own_state_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test its own journal, locks and known_hosts: never the operator's, nor another
    test run's (two runs on the `local` target would otherwise meet at its lock)."""
    monkeypatch.setenv("OPSKIT_STATE_DIR", str(tmp_path_factory.mktemp("state")))


@pytest.fixture(autouse=True)
def _own_redactor() -> Iterator[None]:
    """The redactor is one per process, as in opskit; a test's secrets end with the test, so
    a value one test registered (say "secret") cannot hide another test's text."""
    from opskit.secrets import redactor

    saved = dict(redactor._values)
    yield
    redactor._values = saved


# Fixtures that start a real component (OpenSSH sshd, fakepve, PocketBase, the lab): a test
# using one, itself or through another fixture, is `integration`, so `pytest -m "not
# integration"` is the fast inner loop (the README says how fast).
REAL_COMPONENTS = {"sshd", "hosts", "ssh_project", "fakepve", "pve", "hub", "lab"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if REAL_COMPONENTS & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


# Outputs a shipped kind registered in this test without documenting them (`outputs`).
_undocumented: list[str] = []


def _documented_only(cls: Any, apply: Any) -> Any:
    @functools.wraps(apply)
    async def checked(self: Any, ctx: Any) -> Any:
        outcome = await apply(self, ctx)
        extra = sorted(set(outcome.outputs) - set(cls.outputs))
        if extra:
            _undocumented.append(f"{cls.name} registered {extra}, not in {cls.__name__}.outputs")
        return outcome

    return checked


@pytest.fixture(scope="session", autouse=True)
def _outputs_checked() -> Iterator[None]:
    """Every apply of an installed kind, in every in-process test (real sshd, fakepve,
    PocketBase...), is held to the outputs the kind documents: `opskit explain` cannot promise
    fewer than a step registers."""
    from opskit import actions

    with pytest.MonkeyPatch.context() as patch:
        for name in actions._entry_points():
            cls = actions.get(name)
            patch.setattr(cls, "apply", _documented_only(cls, cls.apply))
        yield


@pytest.fixture(autouse=True)
def _outputs_documented(_outputs_checked: None) -> Iterator[None]:
    _undocumented.clear()
    yield
    found, _undocumented[:] = list(_undocumented), []
    assert not found, "; ".join(sorted(set(found)))


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A copy of the shipped inventory with an empty runbooks directory."""
    (tmp_path / "inventory").mkdir()
    shutil.copy(REPO / "inventory" / "homelab.yaml", tmp_path / "inventory" / "homelab.yaml")
    (tmp_path / "runbooks").mkdir()
    return Project(tmp_path)


@pytest.fixture
def opskit(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Result]:
    """Run the CLI in-process, as `opskit ARGS` typed in `cwd`."""
    from opskit.cli import run

    monkeypatch.delenv("OPSKIT_RUNBOOKS", raising=False)
    monkeypatch.delenv("OPSKIT_INVENTORY", raising=False)

    def invoke(*args: str, cwd: Path = REPO) -> Result:
        capsys.readouterr()
        old = Path.cwd()
        os.chdir(cwd)
        try:
            code = run(list(args))
        finally:
            os.chdir(old)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return invoke
