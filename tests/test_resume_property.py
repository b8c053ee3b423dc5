"""Resume after random failures runs exactly the unfinished steps (hypothesis)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fakes
from opskit.engine import session
from opskit.engine.session import Request
from opskit.report.progress import Reporter
from opskit.store import Journal
from opskit.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent
TARGETS = ["docker", "ai", "dev"]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[str], list[int], dict[tuple[str, int], int]]:
    targets = draw(st.lists(st.sampled_from(TARGETS), min_size=1, max_size=3, unique=True))
    retries = draw(st.lists(st.integers(0, 2), min_size=1, max_size=4))
    failures = {(t, i): draw(st.integers(0, 3)) for t in targets for i in range(len(retries))}
    return targets, retries, failures


def _runbook(targets: list[str], retries: list[int]) -> str:
    steps = "".join(
        f"  - id: s{i}\n    test.resource: {{name: r{i}}}\n    retries: {r}\n    interval: 1ms\n"
        for i, r in enumerate(retries)
    )
    return f"name: prop\ntargets: [{', '.join(targets)}]\nsteps:\n{steps}"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_resume_runs_exactly_the_unfinished_steps(scenario) -> None:
    targets, retries, failures = scenario
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "runbooks").mkdir()
        (root / "inventory").mkdir()
        (root / "inventory" / "homelab.yaml").write_bytes(
            (REPO / "inventory" / "homelab.yaml").read_bytes()
        )
        (root / "runbooks" / "prop.yaml").write_text(_runbook(targets, retries))
        saved = {k: os.environ.get(k) for k in (fakes.WORLD_ENV, "OPSKIT_STATE_DIR")}
        os.environ[fakes.WORLD_ENV] = str(root / "world.json")
        os.environ["OPSKIT_STATE_DIR"] = str(root / "state")
        old_cwd = Path.cwd()
        os.chdir(root)
        fakes.install()
        world = fakes.World(root / "world.json")
        journal = Journal(root / "state" / "journal.db")
        try:
            for (t, i), n in failures.items():
                world.fail(f"{t}/r{i}", n)
            req = Request(
                workspace=Workspace(root / "runbooks", root / "inventory" / "homelab.yaml"),
                reporter=Reporter(out=open(os.devnull, "w")),  # noqa: SIM115
                journal=journal,
            )
            loaded, tgts, plan = session.make_plan(req, "prop", {}, None)
            first = session.execute(req, loaded, tgts, plan)

            # What the first run must have done: attempts per step until success or the
            # budget (retries + 1) ran out; a target stops at its first failed step.
            attempts: dict[str, int] = {}
            succeeded: set[str] = set()
            for t in targets:
                for i, r in enumerate(retries):
                    key = f"{t}/r{i}"
                    tries = min(failures[(t, i)] + 1, r + 1)
                    attempts[key] = tries
                    if failures[(t, i)] <= r:
                        succeeded.add(key)
                    else:
                        break
            applies = world.calls("apply")
            assert {k: applies.count(k) for k in attempts} == attempts
            assert len(applies) == sum(attempts.values())
            assert first.exit_code == (0 if len(succeeded) == len(targets) * len(retries) else 1)
            if first.exit_code == 0:
                return

            world.update(lambda d: d["fail"].clear())
            second = session.resume(req, first.run_id)
            assert second.exit_code == 0
            applies = world.calls("apply")
            for t in targets:
                for i in range(len(retries)):
                    key = f"{t}/r{i}"
                    again = applies.count(key) - attempts.get(key, 0)
                    # no step that succeeded runs twice; every other one runs once more
                    assert again == (0 if key in succeeded else 1), key
            assert world.present() == {f"{t}/r{i}" for t in targets for i in range(len(retries))}
        finally:
            journal.close()
            fakes.uninstall()
            os.chdir(old_cwd)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
