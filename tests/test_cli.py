"""The CLI as a user types it: outputs, JSON twins, exit codes, schemas."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from ruamel.yaml import YAML

from opskit import __version__

REPO = Path(__file__).resolve().parent.parent


def test_version(opskit):
    result = opskit("--version")
    assert (result.code, result.out.strip()) == (0, f"opskit {__version__}")


def test_inventory_list_json_has_the_homelab(opskit):
    result = opskit("inventory", "list", "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert [g["vmid"] for g in data["guests"]] == [100, 102, 103, 110, 111]
    ai = next(g for g in data["guests"] if g["vmid"] == 110)
    assert ai["name"] == "ai" and "proxmoxmcp" in ai["services"]
    assert {h["name"] for h in data["hosts"]} >= {"pve", "workstation"}
    assert all(h["tailscale"].endswith(".ts.net") for h in data["hosts"])
    assert "node" in ai["unverified"]
    services = {s for g in data["guests"] + data["hosts"] for s in g["services"]}
    assert {
        "proxmoxmcp",
        "moltbot",
        "homelab-mcp",
        "ssh-orchestrator",
        "beszel-hub",
        "beszel-agent",
        "uptime-kuma",
        "traefik",
    } <= services


def test_inventory_list_table_marks_unverified(opskit):
    result = opskit("inventory", "list")
    assert result.code == 0
    assert "110" in result.out and "docker*" in result.out
    assert "not yet confirmed" in result.out


def test_inventory_show_by_name_and_vmid(opskit):
    by_name = opskit("inventory", "show", "ai", "--json")
    by_vmid = opskit("inventory", "show", "110", "--json")
    assert by_name.code == by_vmid.code == 0
    assert json.loads(by_name.out) == json.loads(by_vmid.out)
    health = {h["service"]: h for h in json.loads(by_name.out)["health"]}
    assert health["proxmoxmcp"]["url"] == "http://ai.tail0000.ts.net:8811/"
    assert health["proxmoxmcp"]["check"] == "mcp" and health["proxmoxmcp"]["via"] == "openapi"
    assert health["homelab-mcp"]["url"] == "http://ai.tail0000.ts.net:8000/mcp"
    text = opskit("inventory", "show", "ai")
    assert "proxmoxmcp" in text.out and "8000/mcp" in text.out


def test_inventory_show_unknown_is_a_usage_error(opskit):
    result = opskit("inventory", "show", "dokcer")
    assert result.code == 2
    assert "did you mean 'docker'" in result.err and "Traceback" not in result.err


def test_list(opskit):
    data = json.loads(opskit("list", "--json").out)
    health = next(r for r in data if r["name"] == "health")
    assert health["valid"] and health["target_count"] == 7 and health["schedule"]
    assert "health" in opskit("list").out


def test_show_renders_every_service_check(opskit):
    result = opskit("show", "health", "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    steps = {t["target"]: [s["id"] for s in t["steps"]] for t in data["targets"]}
    assert steps["ai"] == [
        "http[moltbot]",
        "mcp[proxmoxmcp]",
        "mcp[homelab-mcp]",
        "mcp[ssh-orchestrator]",
        "tcp[beszel-agent]",
    ]
    assert steps["workstation"] == []
    proxy = data["targets"][3]["steps"][1]
    assert proxy["args"]["url"] == "http://ai.tail0000.ts.net:8811/"
    assert proxy["args"]["via"] == "openapi" and proxy["args"]["min_tools"] == 60
    assert proxy["args"]["bearer_ref"] == "env:PROXMOXMCP_API_KEY"  # a reference, not a value


def test_show_limit_and_text(opskit):
    result = opskit("show", "health", "--limit", "vm:110")
    assert result.code == 0
    assert "vm 110 (ai)" in result.out and "docker" not in result.out


def test_show_keeps_secrets_as_references(project, opskit, monkeypatch):
    monkeypatch.setenv("OPSKIT_TEST_API_KEY", "value-that-must-not-show")
    project.runbook(
        "secret",
        """
        name: secret
        targets: vm:110
        secrets:
          api_key: env:OPSKIT_TEST_API_KEY
        steps:
          - id: health
            check.http:
              url: "http://{{ target.address }}:8811/health"
              bearer: "{{ secrets.api_key }}"
        """,
    )
    for args in (("show", "secret"), ("show", "secret", "--json")):
        result = opskit(*args, cwd=project.root)
        assert result.code == 0, result.err
        assert "value-that-must-not-show" not in result.out + result.err
    data = json.loads(result.out)
    assert data["targets"][0]["steps"][0]["args"]["bearer"] == "‹secret:api_key›"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("show", "healht"), "did you mean 'health'"),
        (("show", "health", "-p", "x=1"), "has no param 'x'"),
        (("show", "health", "-p", "novalue"), "NAME=VALUE"),
        (("show", "health", "--limit", "vm:999"), "no guest with vmid 999"),
        (("frobnicate",), "No such command"),
        (("schema", "playbook"), "Invalid value"),
        (("validate", "missing.yaml"), "no such file"),
    ],
)
def test_usage_errors_exit_2(opskit, args, message):
    result = opskit(*args)
    assert result.code == 2, result
    assert message in result.err
    assert "Traceback" not in result.err


def test_missing_inventory_is_explained(tmp_path, opskit):
    (tmp_path / "runbooks").mkdir()
    result = opskit("inventory", "list", cwd=tmp_path)
    assert result.code == 2 and "no inventory" in result.err


def test_runbooks_dir_from_flag_and_environment(project, opskit, monkeypatch):
    project.runbook(
        "only", "name: only\ntargets: local\nsteps:\n  - id: w\n    wait: {duration: 1s}\n"
    )
    elsewhere = project.root / "elsewhere"
    elsewhere.mkdir()
    flag = opskit(
        "--runbooks",
        str(project.runbooks),
        "--inventory",
        str(project.root / "inventory" / "homelab.yaml"),
        "list",
        "--json",
        cwd=elsewhere,
    )
    assert [r["name"] for r in json.loads(flag.out)] == ["only"]
    monkeypatch.setenv("OPSKIT_RUNBOOKS", str(project.runbooks))
    monkeypatch.setenv("OPSKIT_INVENTORY", str(project.root / "inventory" / "homelab.yaml"))
    env = subprocess.run(
        [sys.executable, "-c", "from opskit.cli import main; main()", "list", "--json"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        check=False,
    )
    assert [r["name"] for r in json.loads(env.stdout)] == ["only"]


def test_validate_json(opskit):
    data = json.loads(opskit("validate", "--json").out)
    assert data["ok"] and {Path(f["file"]).name for f in data["files"]} >= {
        "homelab.yaml",
        "health.yaml",
    }


def test_validate_of_a_directory_with_nothing_to_check_says_so(opskit, tmp_path):
    (tmp_path / "notes.txt").write_text("not a runbook")
    done = opskit("validate", str(tmp_path))
    assert done.code == 2, done.out
    assert f"{tmp_path}:1:1: a directory with no .yaml or .yml file" in done.out + done.err


def test_a_runbook_typed_as_a_command_or_a_misspelt_command_says_what_was_meant(opskit):
    done = opskit("health", "run")
    assert done.code == 2
    assert "health is a runbook; run it with `opskit run health`" in done.err
    done = opskit("histroy")
    assert done.code == 2 and "no command 'histroy'; did you mean 'history'?" in done.err
    done = opskit("zzz")
    assert done.code == 2 and "No such command 'zzz'" in done.err


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["--yes", "run", "health"],
            "--yes is an option of `opskit run`: it goes after the command"
            " (opskit run health --yes)",
        ),
        (
            ["--limit", "vm:110", "plan", "health", "--format", "md"],
            "--limit is an option of `opskit plan`: it goes after the command"
            " (opskit plan health --format md --limit vm:110)",
        ),
        (["--json", "inventory", "list"], "--json is an option of `opskit inventory list`"),
        (["-p", "a=b c", "show", "health"], "(opskit show health -p 'a=b c')"),
    ],
)
def test_an_option_given_before_its_command_says_where_it_goes(opskit, args, said):
    done = opskit(*args)
    assert done.code == 2 and said in done.err, done.err
    assert "Traceback" not in done.err


def test_an_option_no_command_has_is_clicks_own_error(opskit):
    done = opskit("--nosuch", "run", "health")
    assert done.code == 2 and "No such option '--nosuch'" in done.err
    done = opskit("--yes", "validate")  # validate has no --yes
    assert done.code == 2 and "No such option '--yes'" in done.err
    done = opskit("-yv", "run", "health")  # -y inside a cluster of short flags
    assert done.code == 2 and "No such option '-y'" in done.err, done.err


def _yaml(path: Path):
    return json.loads(json.dumps(YAML(typ="safe", pure=True).load(path.read_text())))


def test_schemas_accept_the_shipped_files_and_reject_typos(opskit):
    runbook_schema = json.loads(opskit("schema", "runbook").out)
    inventory_schema = json.loads(opskit("schema", "inventory").out)
    for path in (REPO / "runbooks").glob("*.yaml"):
        jsonschema.validate(_yaml(path), runbook_schema)
    inventory = _yaml(REPO / "inventory" / "homelab.yaml")
    jsonschema.validate(inventory, inventory_schema)
    health = _yaml(REPO / "runbooks" / "health.yaml")
    health["steps"][0]["retires"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(health, runbook_schema)
    inventory["guests"][0]["vmid"] = "one hundred"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(inventory, inventory_schema)
    # the README's `window: 2h`, the duration alone, is a window to editors too
    patch = _yaml(REPO / "runbooks" / "patch-guests.yaml")
    patch["schedule"]["window"] = "2h"
    jsonschema.validate(patch, runbook_schema)
    patch["schedule"]["window"] = {"duration": "2h", "stat": "Sun 03:00"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(patch, runbook_schema)


def test_console_script_runs_without_a_terminal():
    opskit = Path(sys.executable).with_name("opskit")
    result = subprocess.run(
        [str(opskit), "validate"],
        cwd=REPO,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "health.yaml" in result.stdout


def test_lab_demo_next_steps_carry_the_labs_environment(monkeypatch, tmp_path):
    """A lab made with OPSKIT_LAB_NAME (or its own directories) is reached again only with
    them: each command `lab demo` suggests carries them, quoted; the default lab's do not."""
    from opskit.cli.lab import next_steps

    for name in ("OPSKIT_LAB_NAME", "OPSKIT_LAB_DIR", "OPSKIT_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)
    plain = next_steps("health", tmp_path)
    assert "  opskit history --lab " in plain and "OPSKIT_" not in plain
    monkeypatch.setenv("OPSKIT_LAB_NAME", "olab")
    assert next_steps("health", tmp_path) == plain
    monkeypatch.setenv("OPSKIT_LAB_NAME", "try")
    monkeypatch.setenv("OPSKIT_STATE_DIR", "/tmp/my state")
    named = next_steps("health", tmp_path)
    env = "OPSKIT_LAB_NAME=try OPSKIT_STATE_DIR='/tmp/my state' "
    for command in ("opskit lab status", "opskit history --lab", "opskit lab down"):
        assert f"  {env}{command} " in named
    assert f"{env}opskit run health --lab --dry-run" in named
