"""Shared fixtures: a scratch project (inventory + runbooks) and the CLI as a user types it."""

from __future__ import annotations

import os
import shutil
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

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
