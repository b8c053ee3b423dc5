"""Every row of the README's exit-code table, produced as a user produces it; the table, the
code's own list and `opskit --help` agree; `plan --detailed-exitcode` for CI gates."""

from __future__ import annotations

import re

import pytest

import fakes
from opskit.engine.locks import TargetLocks
from opskit.errors import EXIT_CODES
from test_engine import GATED, RUNBOOK, SLOW, _wait_for, env  # noqa: F401 - env is a fixture

README = fakes.Path(__file__).resolve().parent.parent / "README.md"

BLOCKED = """
name: blocked
targets: [ai, dev]
steps:
  - id: make
    test.resource: {name: x}
  - id: locked
    test.resource: {name: y, blocked: "vm 110 is locked (backup)"}
handlers:
  - id: undo
    test.resource: {name: x, state: absent}
"""

# A maintenance window that opened on New Year's Day 2020 for a minute, never again.
CLOSED = """
name: closed
targets: [ai]
schedule:
  on: "2020-01-01 03:00"
  window: 1m
steps:
  - id: make
    test.resource: {name: x}
"""

SECRET = """
name: secret
targets: [ai]
secrets:
  token: env:OPSKIT_TEST_UNSET_TOKEN
steps:
  - id: use
    test.resource: {name: "{{ secrets.token }}"}
"""


def readme_table() -> dict[int, str]:
    text = README.read_text()
    section = text[text.index("### Exit codes") :]
    section = section[: section.index("\n## ")]
    return {
        int(code): meaning.strip()
        for code, meaning in re.findall(r"^\| (\d+) \| (.+) \|$", section, re.M)
    }


def test_readme_table_code_and_help_list_the_same_codes(opskit):
    table = readme_table()
    assert table == EXIT_CODES and set(table) == {0, 1, 2, 3, 4, 5, 6, 70, 74, 130}
    shown = opskit("--help").out
    for code, meaning in EXIT_CODES.items():
        assert re.search(rf"^\s+{code}\s+{re.escape(meaning)}", shown, re.M), (code, shown)


@pytest.mark.parametrize(
    ("command", "codes"),
    [
        ("run", {0, 1, 2, 3, 5, 6, 74, 130}),
        ("plan", {0, 1, 2, 74}),
        ("apply", {0, 1, 2, 3, 4, 5, 74, 130}),
    ],
)
def test_each_commands_help_names_its_exit_codes(opskit, command, codes):
    shown = " ".join(opskit(command, "--help").out.split())
    said = shown[shown.index("Exit codes:") : shown.index("Options:")]
    named = {int(n) for n in re.findall(r"(?<![\w-])(\d+) (?=[a-z])", said)}
    assert named == codes and named <= set(EXIT_CODES), said


def test_every_row_of_the_exit_code_table(env, monkeypatch):  # noqa: F811
    """Each code of the README's table, from a command a user types."""
    env.project.runbook("deploy", RUNBOOK)
    env.project.runbook("gated", GATED)
    env.project.runbook("blocked", BLOCKED)
    env.project.runbook("secret", SECRET)
    env.project.runbook("closed", CLOSED)
    env.project.runbook("slow", SLOW.replace("SLEEP", "30"))
    seen: dict[int, list[str]] = {}

    def expect(code: int, *args: str) -> str:
        done = env.run(*args)
        assert done.code == code, (args, done.out, done.err)
        assert "Traceback" not in done.out + done.err
        seen.setdefault(code, []).append(" ".join(args))
        return done.out + done.err

    # 0: success, and a saved plan already applied
    expect(0, "run", "deploy", "--limit", "ai", "--yes")
    plan = str(env.project.root / "plan.json")
    expect(0, "plan", "deploy", "--limit", "dev", "-o", plan)
    expect(0, "apply", plan, "--yes")
    assert "nothing to do" in expect(0, "apply", plan, "--yes")
    # 1: a step failed; the plan has blockers (plan, dry run and run alike)
    env.world.fail("docker/app-1")
    expect(1, "run", "deploy", "--limit", "docker", "--yes")
    out = expect(1, "plan", "blocked")
    assert "2 blockers: it cannot run" in out and "BLOCKED: vm 110 is locked (backup)" in out
    out = expect(1, "run", "blocked", "--dry-run")
    assert "the plan has blockers; nothing was changed (dry run): 2 blockers" in out
    assert "vm 110 is locked" in out
    assert "dry run: nothing was changed\n" not in out
    expect(1, "run", "blocked", "--yes")
    # 2: usage and validation errors, a missing secret included
    expect(2, "run", "no-such-runbook")
    expect(2, "run", "deploy", "-p", "nope=1")
    expect(2, "run", "deploy", "--limit", "vm:4242")
    monkeypatch.delenv("OPSKIT_TEST_UNSET_TOKEN", raising=False)
    assert "OPSKIT_TEST_UNSET_TOKEN" in expect(2, "run", "secret", "--yes")
    (env.project.runbooks / "broken.yaml").write_text("name: broken\nsteps: [\n")
    expect(2, "validate")
    # 3: a gate nobody can answer
    expect(3, "run", "gated")
    # 4: a stale plan
    stale = str(env.project.root / "stale.json")
    expect(0, "plan", "deploy", "--limit", "media", "-o", stale)
    env.world.add("media/app-1")
    expect(4, "apply", stale, "--yes")
    # 5: a target locked by another run
    locks = TargetLocks(env.state / "locks", "20261201-000000-abcdef")
    locks.acquire(["pve"], 0)
    try:
        assert "locked by run 20261201-000000-abcdef" in expect(
            5, "run", "deploy", "--limit", "pve"
        )
    finally:
        locks.release()
    # 6: a scheduled run outside its maintenance window
    assert "outside its maintenance window" in expect(6, "run", "closed", "--scheduled")
    # 70: a bug in opskit
    from opskit.engine import session

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    with monkeypatch.context() as patched:
        patched.setattr(session, "make_plan", broken)
        assert "internal error: RuntimeError: simulated bug" in expect(70, "run", "deploy")
    # 74: a file of opskit's own not written: a plan file's missing directory, a state
    # directory that is a file (tests/test_local_files.py fills a disk mid-run)
    missing = env.project.root / "no-such-dir" / "plan.json"
    out = expect(74, "plan", "deploy", "-o", str(missing))
    assert f"cannot write the plan file {missing}: No such file or directory" in out
    (env.project.root / "state-file").write_text("")
    with monkeypatch.context() as patched:
        patched.setenv("OPSKIT_STATE_DIR", str(env.project.root / "state-file"))
        out = expect(74, "run", "deploy", "--limit", "homeassistant", "--yes")
        assert "cannot write the journal" in out and "is a file" in out
    assert not [c for c in env.world.calls("apply") if c.startswith("homeassistant/")]
    # 130: interrupted (SIGINT as Ctrl-C sends it)
    proc = env.spawn("run", "slow", "--grace", "0s")
    _wait_for(lambda: "ai/slow" in env.world.calls("apply"))
    proc.send_signal(2)
    proc.communicate(timeout=30)
    assert proc.returncode == 130
    seen.setdefault(130, []).append("run slow, then Ctrl-C")
    assert set(seen) == set(readme_table())


@pytest.mark.parametrize(
    ("setup", "args", "code"),
    [
        (None, ("plan", "deploy", "--limit", "ai"), 2),  # changes present
        ("present", ("plan", "deploy", "--limit", "ai"), 0),  # nothing to change
        (None, ("plan", "blocked"), 1),  # blockers
        (None, ("plan", "no-such-runbook"), 1),  # a usage error is 1 here, not 2
        (None, ("plan", "deploy", "--bogus-option"), 1),
    ],
)
def test_plan_detailed_exitcode(env, setup, args, code):  # noqa: F811
    env.project.runbook("deploy", RUNBOOK)
    env.project.runbook("blocked", BLOCKED)
    if setup == "present":
        env.world.add("ai/app-1")
        env.world.add("ai/app-2")
    done = env.run(*args, "--detailed-exitcode")
    assert done.code == code, (done.out, done.err)


def test_plan_summary_counts_blockers_handlers_and_says_one_target(env):  # noqa: F811
    env.project.runbook("blocked", BLOCKED.replace("targets: [ai, dev]", "targets: [ai]"))
    out = env.run("plan", "blocked").out
    assert "\n1 target\n" in out
    summary = next(line for line in out.splitlines() if line.startswith("Plan:"))
    # The handler is not a planned change: it runs only if a step fails.
    assert summary.startswith("Plan: 1 to create, 0 to update, 0 to delete, 1 known after apply")
    assert "1 handler (run only if a step fails)" in summary
    assert "1 blocker: it cannot run" in summary
    assert "0 checks" in summary


def test_blockers_on_some_targets_say_the_limit_that_runs_the_others(env):  # noqa: F811
    env.project.runbook(
        "partly",
        "name: partly\ntargets: [ai, dev, docker]\nsteps:\n  - id: make\n"
        "    test.resource:\n      name: x\n"
        "      blocked: \"{{ 'ai is down' if target.name == 'ai' else '' }}\"\n",
    )
    done = env.run("run", "partly", "--yes")
    assert done.code == 1 and "vm 110 (ai): step make: ai is down" in done.err, done.err
    assert "2 other targets can run without it: --limit '!ai'" in done.err
    done = env.run("run", "partly", "--yes", "--limit", "ai,dev")
    assert "1 other target can run without it: --limit 'ai,dev,!ai'" in done.err
    done = env.run("run", "partly", "--yes", "--limit", "!ai")  # as said: the others run
    assert done.code == 0, done.out + done.err
    assert sorted(env.world.calls("apply")) == ["dev/x", "docker/x"]
    done = env.run("run", "partly", "--yes", "--limit", "ai")  # nothing else to run: no hint
    assert done.code == 1 and "can run without" not in done.err


# --- the one tree of errors ------------------------------------------------------------------


def _every_module() -> list[str]:
    import pkgutil

    import opskit

    names = [m.name for m in pkgutil.walk_packages(opskit.__path__, "opskit.")]
    # __main__ runs the CLI when imported; the lab's systemctl is a script of its own
    return [n for n in names if n not in ("opskit.__main__", "opskit.lab.systemctl")]


def _error_classes() -> dict[str, type]:
    """Every subclass of OpskitError defined anywhere in opskit, by qualified name."""
    import importlib

    from opskit.errors import OpskitError

    for name in _every_module():
        importlib.import_module(name)
    found: dict[str, type] = {}
    todo = [OpskitError]
    while todo:
        cls = todo.pop()
        found[f"{cls.__module__}.{cls.__qualname__}"] = cls
        todo += cls.__subclasses__()
    tests = {k for k in found if not k.startswith("opskit.")}  # tests' own subclasses
    return {k: v for k, v in found.items() if k not in tests}


def _drawn() -> dict[str, int]:
    """The classes errors.py's docstring draws, each with the exit code it gives it."""
    import opskit.errors

    drawn: dict[str, int] = {}
    for line in (opskit.errors.__doc__ or "").splitlines():
        found = re.match(r"^[\s│├└─]*(\w+)\s+exit (\d+)", line)
        if found:
            drawn.setdefault(found.group(1), int(found.group(2)))
    return drawn


def test_every_error_class_is_in_the_one_tree_with_its_exit_code() -> None:
    classes = _error_classes()
    outside = sorted(k for k in classes if not k.startswith("opskit.errors."))
    assert outside == [], "error classes defined outside opskit/errors.py"
    drawn = _drawn()
    assert sorted(drawn) == sorted(cls.__name__ for cls in classes.values())
    wrong = {
        c.__name__: (drawn[c.__name__], c.exit_code)
        for c in classes.values()
        if drawn[c.__name__] != c.exit_code
    }
    assert wrong == {}, "drawn exit code != exit_code"


def test_one_read_only_refusal() -> None:
    classes = _error_classes()
    assert [k for k in classes if k.endswith(".ReadOnlyRefused")] == [
        "opskit.errors.ReadOnlyRefused"
    ]


# Exceptions that never reach a user: each is caught inside its own module (or, for the lab's
# systemctl, inside a script run by itself on a lab host) and turned into an OpskitError there.
INTERNAL_EXCEPTIONS = {
    "opskit.model.inventory.SelectorError",  # a ValueError: its callers make a UsageError
    "opskit.schedule.CalendarError",  # a ValueError: its callers make a located LoadError
    "opskit.render.TooLarge",
    "opskit.render.TemplateProblem",
    "opskit.template_scan._GiveUp",  # caught in its references(): the template goes to Jinja
    "opskit.loader._TooBig",
    "opskit.loader._Recursive",
    "opskit.clients.pyinfra_connector.BridgeCancelled",  # a BaseException: a cancelled step
}


def test_no_exception_class_outside_the_tree() -> None:
    """The lab's errors too (LayerError, AptError, PowerError): an exception class defined in
    opskit is in errors.py's tree, or one of the few internal ones named above."""
    import importlib
    import inspect

    found = set()
    for name in _every_module():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == name
                and name != "opskit.errors"
            ):
                found.add(f"{name}.{value.__qualname__}")
    assert sorted(found - INTERNAL_EXCEPTIONS) == []
    from opskit.errors import AptError, LabError, LayerError, PowerError

    assert all(issubclass(c, LabError) for c in (AptError, LayerError, PowerError))
