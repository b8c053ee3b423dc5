"""`--json` of run, apply and resume: stdout is JSON lines and nothing else, every string in it
redacted, and however the command ends (success, a failure, a refusal, an error, Ctrl-C) the
stream ends with one `done` event carrying the exit code, after an `error` event if it ended in
an error."""

# ruff: noqa: F811 - `env` parameters are test_engine's fixture, not redefinitions
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from opskit.engine.locks import TargetLocks
from test_engine import GATED, RUNBOOK, SLOW, TESTS, _wait_for, env  # noqa: F401 - a fixture

BLOCKED = """
name: blocked
targets: [ai]
steps:
  - id: locked
    test.resource: {name: y, blocked: "vm 110 is locked (backup)"}
"""

# The secret is used only when the step applies: planning goes on without it, executing
# cannot (exit 2, after the stream has begun with the plan).
SECRET = """
name: secret
targets: [ai]
secrets:
  token: env:OPSKIT_TEST_STREAM_TOKEN
steps:
  - id: use
    test.resource: {name: x, echo: "token={{ secrets.token }}"}
"""


def events(out: str) -> list[dict]:
    """Every stdout line parsed (a line that is not JSON fails the test); exactly one `done`,
    and it is the last."""
    lines = out.splitlines()
    assert lines, "no events at all"
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line on stdout: {line!r}\nall of it:\n{out}")
    kinds = [e["event"] for e in parsed]
    assert kinds.count("done") == 1 and kinds[-1] == "done", kinds
    return parsed


def ended(out: str, code: int, status: str, error: str | None = None) -> list[dict]:
    stream = events(out)
    done = stream[-1]
    assert done["exit_code"] == code and done["status"] == status, done
    errors = [e for e in stream if e["event"] == "error"]
    if error is None:
        assert errors == []
    else:
        assert len(errors) == 1 and stream[-2] is errors[0], stream[-3:]
        assert error in errors[0]["message"] and errors[0]["exit_code"] == code
    return stream


def test_success(env):
    env.project.runbook("deploy", RUNBOOK)
    result = env.run("run", "deploy", "--json", "--limit", "ai")
    assert result.code == 0, result.err
    stream = ended(result.out, 0, "succeeded")
    assert [e["event"] for e in stream[:2]] == ["plan", "run"]
    done = stream[-1]
    assert done["run_id"] == stream[1]["run_id"] and done["counts"]["succeeded"] == 2
    assert done["duration"] >= 0 and all("time" in e for e in stream)


def test_step_failed(env):
    env.project.runbook("deploy", RUNBOOK)
    env.world.fail("ai/app-1")
    result = env.run("run", "deploy", "--json", "--limit", "ai")
    assert result.code == 1
    stream = ended(result.out, 1, "failed")
    failed = [e for e in stream if e["event"] == "step" and e["status"] == "failed"]
    assert failed and "injected failure" in failed[0]["error"]


def test_gate_refused_without_a_terminal(env):
    env.project.runbook("gated", GATED)
    result = env.run("run", "gated", "--json")
    assert result.code == 3
    ended(result.out, 3, "declined", error="no terminal to ask")
    assert "no terminal to ask" in result.err  # said on stderr too
    assert env.world.calls("apply") == []


@pytest.mark.parametrize("dry_run", [False, True])
def test_blockers(env, dry_run):
    env.project.runbook("blocked", BLOCKED)
    result = env.run("run", "blocked", "--json", *(["--dry-run"] if dry_run else []))
    assert result.code == 1
    stream = ended(result.out, 1, "failed", error="vm 110 is locked (backup)")
    assert stream[0]["event"] == "plan"


def test_stale_plan(env):
    env.project.runbook("deploy", RUNBOOK)
    plan = str(env.project.root / "plan.json")
    assert env.run("plan", "deploy", "--limit", "ai", "-o", plan).code == 0
    env.world.add("ai/app-1")
    result = env.run("apply", plan, "--json", "--yes")
    assert result.code == 4
    ended(result.out, 4, "stale plan", error="stale plan: the world changed")


def test_a_plan_applied_twice_says_so_in_the_stream(env):
    env.project.runbook("deploy", RUNBOOK)
    plan = str(env.project.root / "plan.json")
    assert env.run("plan", "deploy", "--limit", "ai", "-o", plan).code == 0
    assert env.run("apply", plan, "--json", "--yes").code == 0
    again = env.run("apply", plan, "--json", "--yes")
    assert again.code == 0
    stream = ended(again.out, 0, "succeeded")
    assert [e["event"] for e in stream] == ["message", "done"]
    assert "nothing to do" in stream[0]["text"]


def test_lock_held(env):
    env.project.runbook("deploy", RUNBOOK)
    locks = TargetLocks(env.state / "locks", "20261201-000000-abcdef")
    locks.acquire(["ai"], 0)
    try:
        result = env.run("run", "deploy", "--json", "--limit", "ai")
    finally:
        locks.release()
    assert result.code == 5
    ended(result.out, 5, "locked", error="ai is locked by run 20261201-000000-abcdef")


def test_usage_errors_before_and_after_the_stream_began(env, monkeypatch):
    env.project.runbook("secret", SECRET)
    monkeypatch.delenv("OPSKIT_TEST_STREAM_TOKEN", raising=False)
    after = env.run("run", "secret", "--json", "--yes")
    assert after.code == 2
    stream = ended(after.out, 2, "usage error", error="OPSKIT_TEST_STREAM_TOKEN")
    assert stream[0]["event"] == "plan"
    before = env.run("run", "no-such-runbook", "--json")
    assert before.code == 2
    ended(before.out, 2, "usage error", error="no runbook named 'no-such-runbook'")
    bad = env.run("resume", "no-such-run", "--json")
    assert bad.code == 2
    ended(bad.out, 2, "usage error", error="no run 'no-such-run'")
    grace = env.run("run", "secret", "--json", "--grace", "soon")
    assert grace.code == 2
    ended(grace.out, 2, "usage error", error="bad duration 'soon'")


def test_internal_error_is_redacted_and_journaled(env, monkeypatch):
    """A bug while executing: the error event and stderr name it with the secret redacted,
    and the journal does not leave the run 'running'."""
    from opskit.engine.executor import Execution

    value = "s3cr3t-" + os.urandom(4).hex()
    monkeypatch.setenv("OPSKIT_TEST_STREAM_TOKEN", value)
    env.project.runbook("secret", SECRET)

    async def broken(self):
        raise RuntimeError(f"simulated bug holding {value}")

    monkeypatch.setattr(Execution, "_phases", broken)
    result = env.run("run", "secret", "--json", "--yes")
    assert result.code == 70
    stream = ended(result.out, 70, "internal error", error="simulated bug holding")
    assert stream[-2]["message"].endswith("‹secret:token›")
    assert value not in result.out + result.err
    run = env.runs()[0]
    assert (run.status, run.exit_code) == ("failed", 70)
    assert "simulated bug" in run.message and value not in run.message


def test_resume(env):
    env.project.runbook("deploy", RUNBOOK)
    env.world.fail("ai/app-2")
    assert env.run("run", "deploy", "--limit", "ai").code == 1
    result = env.run("resume", env.runs()[0].id, "--json")
    assert result.code == 0, result.err
    stream = ended(result.out, 0, "succeeded")
    assert stream[0]["event"] == "run"


def test_secrets_in_events_are_redacted(env, monkeypatch):
    value = 'quo"te\\d-' + os.urandom(4).hex()  # characters JSON escapes
    monkeypatch.setenv("OPSKIT_TEST_STREAM_TOKEN", value)
    env.project.runbook("secret", SECRET)
    env.world.fail("ai/x")  # the failure's message carries the secret too
    result = env.run("run", "secret", "--json", "--yes")
    assert result.code == 1
    stream = ended(result.out, 1, "failed")
    assert value not in result.out and json.dumps(value)[1:-1] not in result.out
    failed = next(e for e in stream if e["event"] == "step" and e["status"] == "failed")
    assert failed["error"].endswith("token=‹secret:token›")


def test_interrupted(env):
    """Ctrl-C (SIGINT) in a --json run: the stream stays JSON and ends `interrupted`."""
    env.project.runbook("slow", SLOW.replace("SLEEP", "30"))
    proc = env.spawn("run", "slow", "--json", "--grace", "0s")
    _wait_for(lambda: "ai/slow" in env.world.calls("apply"))
    proc.send_signal(2)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    stream = ended(out, 130, "interrupted")
    assert stream[-1]["run_id"] == env.runs()[0].id
    texts = [e["text"] for e in stream if e["event"] == "message"]
    assert sum("interrupted: starting nothing new" in t for t in texts) == 1
    assert "Traceback" not in err


def test_interrupted_while_planning(env):
    """Before any event: the stream is still one `error` and one `done`."""
    env.project.runbook(
        "probing",
        "name: probing\ntargets: [ai]\nsteps:\n  - id: p\n"
        "    test.resource: {name: p, probe_sleep: 30}\n",
    )
    proc = env.spawn("run", "probing", "--json")
    _wait_for(lambda: any(c[0] == "probe" for c in env.world.read()["calls"]))
    proc.send_signal(2)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert [e["event"] for e in ended(out, 130, "interrupted", error="interrupted")] == [
        "error",
        "done",
    ]
    assert err.count("interrupted") == 1 and "Traceback" not in err


def test_gates_ask_on_stderr_when_stdout_is_the_stream(env):
    """A person at the terminal answers the gates; the questions go to stderr."""
    master, slave = os.openpty()
    os.write(master, b"y\ny\n")  # typed ahead: one answer for each target's gate
    code = (
        f"import sys; sys.path.insert(0, {str(TESTS)!r}); import fakes; fakes.install();"
        " from opskit.cli import main; main()"
    )
    env.project.runbook(
        "gated", GATED.replace("targets: [docker, ai]", "targets: [docker, ai]\nconcurrency: 1")
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "run", "gated", "--json"],
        cwd=env.project.root,
        env={k: v for k, v in os.environ.items() if k != "CI"},
        stdin=slave,
        capture_output=True,
        text=True,
        timeout=60,
    )
    os.close(slave)
    os.close(master)
    assert proc.returncode == 0, proc.stderr
    ended(proc.stdout, 0, "succeeded")
    assert proc.stderr.count("[y]es / [n]o / [a]ll / [q]uit") == 2
    assert env.world.present() == set()  # made, then wiped on both: the answers were heard
