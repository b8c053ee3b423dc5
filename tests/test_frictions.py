"""Small frictions a newcomer meets, each a test: options after the command, run IDs by their
suffix, several runbook directories, `kind:host`, the kind users meant, `target.X` checked by
validate, and errors that say their cause once."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from test_load_errors import GOOD

# --- kind:host: every kind `inventory list` shows is a selector --------------------------------


def test_every_kind_inventory_list_shows_selects_those_hosts(opskit):
    listed = json.loads(opskit("inventory", "list", "--json").out)
    by_kind: dict[str, list[str]] = {}
    for entry in [*listed["guests"], *listed["hosts"]]:
        by_kind.setdefault(entry["kind"], []).append(entry["name"])
    assert "host" in by_kind  # the shipped inventory has Tailscale hosts that are not guests
    for kind, names in by_kind.items():
        shown = opskit("show", "health", "--limit", f"kind:{kind}", "--json")
        assert shown.code == 0, shown.err
        assert [t["target"] for t in json.loads(shown.out)["targets"]] == names


def test_an_unknown_kind_names_the_kinds(opskit):
    result = opskit("show", "health", "--limit", "kind:vm")
    assert result.code == 2
    assert "unknown kind 'vm'" in result.err and "qemu, lxc, host" in result.err


# --- the kind users meant ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("ssh.command", "ssh.run"),
        ("shell", "ssh.run"),
        ("command", "ssh.run"),
        ("ansible.builtin.shell", "ssh.run"),
        ("copy", "host.file"),
        ("template", "host.file"),
        ("apt", "host.packages"),
        ("service", "host.service"),
        ("systemd", "host.service"),
        ("systemd.service", "host.service"),
        ("check.htp", "check.http"),  # a close spelling still wins where no synonym fits
        ("proxmox.vm.strat", "proxmox.vm.start"),
    ],
)
def test_an_unknown_kind_suggests_the_kind_meant(project, opskit, written, meant):
    path = project.runbook("demo", GOOD.replace("check.http:", f"{written}:"))
    result = opskit("validate", str(path), cwd=project.root)
    assert result.code == 2
    first = result.err.splitlines()[0]
    assert first.startswith(f"{path}:10:5: "), first
    assert f"unknown action kind {written!r} (did you mean {meant!r}?)" in first


def test_the_explicit_action_form_gets_the_same_suggestion(project, opskit):
    path = project.runbook(
        "demo", "name: demo\ntargets: all\nsteps:\n  - id: a\n    action: apt\n    args: {}\n"
    )
    result = opskit("validate", str(path), cwd=project.root)
    assert result.code == 2
    assert "unknown action kind 'apt' (did you mean 'host.packages'?)" in result.err


def test_a_misspelt_step_field_is_still_an_unknown_key(project, opskit):
    path = project.runbook("demo", GOOD.replace("retries: 3", "retires: 3"))
    result = opskit("validate", str(path), cwd=project.root)
    assert "unknown key 'retires' (did you mean 'retries'?)" in result.err


def test_suggest_kind_offers_only_known_kinds():
    from opskit.model import suggest_kind

    assert suggest_kind("apt", {"ssh.run"}) is None
    assert suggest_kind("apt", {"host.packages", "ssh.run"}) == "host.packages"
    assert suggest_kind("frobnicate", {"host.packages", "ssh.run"}) is None


# --- target.X checked by validate --------------------------------------------------------------


def _validate(project, opskit, text):
    path = project.runbook("demo", text)
    result = opskit("validate", str(path), cwd=project.root)
    return path, result


def test_a_misspelt_target_attribute_is_caught_by_validate(project, opskit):
    path, result = _validate(project, opskit, GOOD.replace("target.address", "target.adress"))
    assert result.code == 2
    first = result.err.splitlines()[0]
    assert re.match(
        rf"^{re.escape(str(path))}:11:12: steps\[0\]\.check\.http\.url: undefined target"
        r" attribute 'adress' \(did you mean 'address'\?\)$",
        first,
    ), first


@pytest.mark.parametrize(
    "where",
    [
        "    when: \"target.nme == 'ai'\"\n",
        '    confirm: "Check {{ target.nme }}?"\n',
        "    loop: \"{{ target['nme'] }}\"\n",
    ],
)
def test_target_attributes_are_checked_in_every_templated_field(project, opskit, where):
    _, result = _validate(project, opskit, GOOD + where)
    assert result.code == 2
    assert "undefined target attribute 'nme' (did you mean 'name'?)" in result.err


def test_every_target_attribute_and_free_form_maps_pass(project, opskit):
    used = " ".join(
        f"{{{{ target.{name} }}}}"
        for name in (
            "name",
            "vmid",
            "node",
            "address",
            "tailscale",
            "tags",
            "groups",
            "services",
            "health",
            "vars",
            "kind",
            "cluster",
            "ssh_user",
            "ssh_port",
        )
    )
    free = "{{ target.vars.anything.deeper }} {{ target.services.nope }} {{ target.get('x') }}"
    text = GOOD.replace("/livez", f"/livez?{used} {free}")
    _, result = _validate(project, opskit, text)
    assert result.code == 0, result.err


def test_an_undeclared_param_is_caught_the_same_way(project, opskit):
    _, result = _validate(project, opskit, GOOD.replace("params.port", "params.prot"))
    assert result.code == 2
    assert "undefined param 'prot' (did you mean 'port'?)" in result.err


# --- run IDs by their random suffix ------------------------------------------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def failed_run(project, opskit) -> str:
    """The id of a real run that failed (a check on a port nobody listens on)."""
    project.runbook(
        "fails",
        f"""
        name: fails
        targets: local
        steps:
          - id: port
            check.tcp: {{host: 127.0.0.1, port: {_closed_port()}, timeout: 1s}}
        """,
    )
    result = opskit("run", "fails", "--yes", cwd=project.root)
    assert result.code == 1, result
    runs = json.loads(opskit("history", "--json", cwd=project.root).out)
    run_id = str(runs[0]["id"])
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", run_id), run_id
    return run_id


def _copy_run(run_id: str, new_id: str) -> None:
    """Another run in the journal, a copy of `run_id` under `new_id`."""
    from opskit.store import Journal

    journal = Journal.open_default()
    with journal.db:
        cols = [c[0] for c in journal.db.execute("SELECT * FROM runs LIMIT 0").description]
        others = ", ".join(c for c in cols if c != "id")
        journal.db.execute(
            f"INSERT INTO runs (id, {others}) SELECT ?, {others} FROM runs WHERE id = ?",
            (new_id, run_id),
        )
    journal.close()


def test_a_run_id_may_be_abbreviated_by_its_suffix(project, opskit, failed_run):
    suffix = failed_run.rpartition("-")[2]
    # (a suffix may start like the date, "202...": then it takes more of it to be unique)
    short = suffix[:3] if not failed_run.startswith(suffix[:3]) else suffix
    for ref in (failed_run, failed_run[:11], suffix, short):
        shown = opskit("show-run", ref, "--json", cwd=project.root)
        assert shown.code == 0, (ref, shown.err)
        assert json.loads(shown.out)["id"] == failed_run
    resumed = opskit("resume", short, cwd=project.root)
    assert resumed.code == 1, resumed  # the check fails again, but it ran: resumed
    newest = json.loads(opskit("history", "--json", cwd=project.root).out)[0]
    assert newest["resumed_from"] == failed_run


@pytest.mark.parametrize("command", ["show-run", "resume"])
def test_an_ambiguous_run_id_is_a_usage_error_naming_the_candidates(
    project, opskit, failed_run, command
):
    suffix = failed_run.rpartition("-")[2]
    twin = failed_run[:16] + suffix[:3] + "zzz"  # another run whose suffix starts the same
    _copy_run(failed_run, twin)
    for ref in (suffix[:3], failed_run[:11]):
        result = opskit(command, ref, cwd=project.root)
        assert result.code == 2, result
        assert f"run {ref!r} is ambiguous" in result.err
        assert failed_run in result.err and twin in result.err
        assert "Traceback" not in result.err
    # a longer part of either is not
    shown = opskit("show-run", suffix, "--json", cwd=project.root)
    assert shown.code == 0 and json.loads(shown.out)["id"] == failed_run


def test_an_unknown_run_id_still_says_so(project, opskit, failed_run):
    result = opskit("show-run", "nothing-like-it", cwd=project.root)
    assert result.code == 2 and "no run 'nothing-like-it'" in result.err


# --- --runbooks and --inventory after the command too ------------------------------------------

WAIT = (
    "name: {name}\ndescription: {text}\ntargets: local\n"
    "steps:\n  - id: w\n    wait: {{duration: 0s}}\n"
)


@pytest.fixture
def outside(tmp_path_factory) -> Path:
    """A directory in no project: no runbooks/ or inventory/ at or above it."""
    return Path(tmp_path_factory.mktemp("outside"))


def test_workspace_options_may_follow_the_command(project, opskit, outside):
    project.runbook("only", WAIT.format(name="only", text="the only one"))
    inventory = str(project.root / "inventory" / "homelab.yaml")
    runbooks = str(project.runbooks)
    listed = opskit("list", "--json", "--runbooks", runbooks, "--inventory", inventory, cwd=outside)
    assert listed.code == 0, listed.err
    assert [r["name"] for r in json.loads(listed.out)] == ["only"]
    validated = opskit("validate", "--runbooks", runbooks, "--inventory", inventory, cwd=outside)
    assert validated.code == 0, validated.err
    assert "only.yaml" in validated.out and "homelab.yaml" in validated.out
    hosts = opskit("inventory", "list", "--json", "--inventory", inventory, cwd=outside)
    assert hosts.code == 0 and json.loads(hosts.out)["guests"], hosts.err
    ran = opskit(
        "run", "only", "--dry-run", "--inventory", inventory, "--runbooks", runbooks, cwd=outside
    )
    assert ran.code == 0 and "dry run" in ran.out, ran
    # before and after, the same value: fine; different values: a usage error
    same = opskit("--inventory", inventory, "inventory", "list", "--inventory", inventory)
    assert same.code == 0, same.err
    both = opskit("--inventory", inventory, "inventory", "list", "--inventory", "other.yaml")
    assert both.code == 2
    assert "--inventory given twice" in both.err and "other.yaml" in both.err
    both = opskit("--runbooks", runbooks, "validate", "--runbooks", str(outside), cwd=outside)
    assert both.code == 2 and "--runbooks given twice" in both.err


@pytest.mark.parametrize(
    "command",
    [
        ["run"],
        ["plan"],
        ["apply"],
        ["resume"],
        ["validate"],
        ["list"],
        ["show"],
        ["inventory", "list"],
        ["inventory", "show"],
        ["inventory", "sync"],
        ["lab", "up"],
        ["lab", "demo"],
    ],
    ids=" ".join,
)
def test_help_of_each_command_reading_the_workspace_shows_them(opskit, command):
    result = opskit(*command, "--help")
    assert result.code == 0
    assert "--runbooks DIR" in result.out and "--inventory FILE" in result.out


# --- several runbook directories ---------------------------------------------------------------


@pytest.fixture
def mine(project) -> Path:
    """A project with runbooks `shared` and `both`, and under it a directory `mine` with
    runbooks of its own: `own` and another `both`."""
    project.runbook("shared", WAIT.format(name="shared", text="the project's"))
    project.runbook("both", WAIT.format(name="both", text="the project's"))
    directory = project.root / "mine"
    (directory / "runbooks").mkdir(parents=True)
    for name in ("own", "both"):
        text = WAIT.format(name=name, text="mine")
        (directory / "runbooks" / f"{name}.yaml").write_text(text)
    return directory


def _listed(opskit, *args, cwd):
    result = opskit("list", "--json", *args, cwd=cwd)
    assert result.code == 0, result.err
    return {r["name"]: (r["description"], r["file"]) for r in json.loads(result.out)}


def test_runbooks_are_found_in_the_current_directory_and_the_project(project, opskit, mine):
    listed = _listed(opskit, cwd=mine)
    assert sorted(listed) == ["both", "own", "shared"]
    assert listed["both"][0] == "mine"  # ./runbooks before the project's
    assert listed["shared"][0] == "the project's"
    table = opskit("list", cwd=mine)
    assert "FROM" in table.out.splitlines()[0]
    assert re.search(r"^own .*\./runbooks$", table.out, re.M), table.out
    assert re.search(rf"^shared .*{re.escape(str(project.runbooks))}$", table.out, re.M)
    for name in ("own", "shared"):
        ran = opskit("run", name, "--dry-run", cwd=mine)
        assert ran.code == 0, ran
    # where there is one directory, no FROM column
    assert "FROM" not in opskit("list", cwd=project.root).out.splitlines()[0]


def test_an_unknown_runbook_names_the_directories_searched_and_close_names(project, opskit, mine):
    result = opskit("run", "shred", cwd=mine)
    assert result.code == 2
    assert "no runbook named 'shred' in ./runbooks and " + str(project.runbooks) in result.err
    assert "did you mean 'shared'?" in result.err


def test_the_option_comes_before_the_environment_before_the_directories(
    project, opskit, mine, monkeypatch, tmp_path_factory
):
    given = Path(tmp_path_factory.mktemp("given"))
    env = Path(tmp_path_factory.mktemp("env"))
    for directory, text in ((given, "the option's"), (env, "the environment's")):
        (directory / "both.yaml").write_text(WAIT.format(name="both", text=text))
    monkeypatch.setenv("OPSKIT_RUNBOOKS", str(env))
    assert _listed(opskit, "--runbooks", str(given), cwd=mine)["both"][0] == "the option's"
    listed = _listed(opskit, cwd=mine)
    assert listed["both"][0] == "the environment's"
    assert sorted(listed) == ["both", "own", "shared"]  # every directory is searched
    monkeypatch.delenv("OPSKIT_RUNBOOKS")
    assert _listed(opskit, cwd=mine)["both"][0] == "mine"
    assert _listed(opskit, cwd=project.root)["both"][0] == "the project's"


def test_a_runbook_uses_the_deploy_directory_of_its_own_project(project, mine):
    from opskit.workspace import Workspace

    ws = Workspace.discover(cwd=mine)
    assert ws.root_for(project.runbooks / "shared.yaml") == project.root
    assert ws.root_for(mine / "runbooks" / "own.yaml") == mine


# --- an error says its cause once --------------------------------------------------------------
# (end to end: tests/test_proxmox.py, a rejected token; tests/test_checks.py, a refused port)


@pytest.mark.parametrize(
    ("summary", "error", "said"),
    [
        ("boom", "boom", "boom"),
        ("vm 110 is stopped", "after 30s: vm 110 is stopped", "after 30s: vm 110 is stopped"),
        ("start vm 110 failed", "task x failed: ERR", "start vm 110 failed: task x failed: ERR"),
        ("wrote /etc/x", None, "wrote /etc/x"),
        (None, "boom", "boom"),
        (None, None, ""),
    ],
)
def test_a_step_line_says_its_summary_and_error_once(summary, error, said):
    from opskit.report.progress import describe

    event = {"event": "step", "target": "t", "step": "s", "status": "failed", "duration": 1.0}
    line = describe({**event, "summary": summary, "error": error})
    assert line == "[t] s: FAILED 1.0s" + (f" - {said}" if said else "")
