"""Pure model logic: durations, counts, params, selectors, unknown keys."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from opskit.errors import UsageError
from opskit.model import Inventory, Param, Runbook, SelectorError, Step, parse_duration
from opskit.model.common import format_duration, parse_count_or_percent, resolve_count
from opskit.workspace import parse_param_args, resolve_params


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h30m", 5400),
        ("250ms", 0.25),
        ("2", 2),
        (1.5, 1.5),
        ("1d", 86400),
        ("0", 0),
        (" 10s ", 10),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 minutes", "", "abc", "-1", "5x", True, None, [], "1h 30m"])
def test_bad_durations(text):
    with pytest.raises(Exception, match=r"duration|negative"):
        parse_duration(text)


def test_format_duration_round_trips():
    for seconds in (0.25, 1, 30, 90, 3600, 5400):
        assert parse_duration(format_duration(seconds)) == seconds


def test_counts_and_percentages():
    assert parse_count_or_percent(2) == 2
    assert parse_count_or_percent("25%") == "25%"
    assert resolve_count("25%", 10) == 3
    assert resolve_count("1%", 5) == 1
    assert resolve_count(4, 10) == 4
    for bad in ("0%", "101%", "x", -1, True):
        with pytest.raises(ValueError):
            parse_count_or_percent(bad)


def test_param_types_and_checks():
    assert Param(type="int").coerce("42") == 42
    assert Param(type="bool").coerce("yes") is True
    assert Param(type="list").coerce("a, b") == ["a", "b"]
    assert Param(type="duration").coerce("2m") == 120
    with pytest.raises(ValueError, match="integer"):
        Param(type="int").coerce("4.5")
    with pytest.raises(ValueError, match="not one of"):
        Param(choices=["venv", "docker"]).coerce("podman")
    with pytest.raises(ValueError, match="does not match"):
        Param(pattern=r"\d+\.\d+\.\d+").coerce("latest")
    with pytest.raises(ValueError, match="maximum"):
        Param(type="int", max=10).coerce(11)
    assert Param().required and not Param(default=None).required


def _runbook(**params):
    return Runbook.model_validate(
        {"name": "r", "targets": "all", "params": params, "steps": [{"id": "a", "action": "wait"}]}
    )


def test_resolve_params_from_the_command_line():
    rb = _runbook(version={"default": "0.6.7"}, port={"type": "int"})
    assert resolve_params(rb, parse_param_args(["port=8811"])) == {"version": "0.6.7", "port": 8811}
    with pytest.raises(UsageError, match="needs param 'port'"):
        resolve_params(rb, {})
    with pytest.raises(UsageError, match=r"no param 'prot'.*did you mean 'port'"):
        resolve_params(rb, {"prot": "1"})
    with pytest.raises(UsageError, match="param port: expected an integer"):
        resolve_params(rb, {"port": "eighty"})
    with pytest.raises(UsageError, match="NAME=VALUE"):
        parse_param_args(["port"])


def test_step_takes_its_action_from_its_one_extra_key():
    step = Step.model_validate(
        {"id": "a", "check.http": {"url": "http://x"}, "retries": 2},
        context={"actions": {"check.http"}},
    )
    assert (step.action, step.args, step.retries) == ("check.http", {"url": "http://x"}, 2)
    with pytest.raises(ValidationError, match="exactly one action"):
        Step.model_validate(
            {"id": "a", "wait": {}, "check.http": {}}, context={"actions": {"wait", "check.http"}}
        )
    with pytest.raises(ValidationError, match="no action"):
        Step.model_validate({"id": "a"}, context={"actions": {"wait"}})


INVENTORY = {
    "proxmox": {"pve": {"api_url": "https://pve:8006/api2/json"}},
    "guests": [
        {"vmid": 100, "name": "docker", "tags": ["monitored"], "groups": ["infra"]},
        {"vmid": 110, "name": "ai", "tags": ["monitored", "ai"], "vars": {"x": 1}},
        {"vmid": 111, "name": "dev", "kind": "lxc"},
    ],
    "hosts": [{"name": "pve", "tailscale": "pve.tail0000.ts.net.", "tags": ["monitored"]}],
    "groups": {"lab": {"members": ["tag:ai", "dev"], "vars": {"x": 2, "y": 3}}},
    "vars": {"y": 0, "z": 9},
}


@pytest.fixture
def inv() -> Inventory:
    return Inventory.model_validate(INVENTORY)


@pytest.mark.parametrize(
    ("selector", "names"),
    [
        ("all", ["docker", "ai", "dev", "pve"]),
        ("vm:110", ["ai"]),
        ("tag:monitored", ["docker", "ai", "pve"]),
        ("tag:monitored,!vm:100", ["ai", "pve"]),
        (["tag:monitored", "!pve"], ["docker", "ai"]),
        ("!dev", ["docker", "ai", "pve"]),
        ("group:infra", ["docker"]),
        ("group:lab", ["ai", "dev"]),
        ("kind:lxc", ["dev"]),
        ("kind:qemu", ["docker", "ai"]),
        ("kind:host", ["pve"]),
        ("all,!kind:host", ["docker", "ai", "dev"]),
        ("local", ["local"]),
        ("pve ai", ["ai", "pve"]),
    ],
)
def test_selectors(inv, selector, names):
    assert [t.name for t in inv.targets(selector)] == names


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("vm:999", "no guest with vmid 999"),
        ("tag:monitord", "did you mean 'monitored'"),
        ("group:lbs", "did you mean 'lab'"),
        ("dokcer", "did you mean 'docker'"),
        ("vm:abc", "bad vmid"),
        ("os:linux", "bad selector"),
        ("kind:hots", "unknown kind 'hots' .*kinds: qemu, lxc, host.*did you mean 'host'"),
        ("", "empty"),
    ],
)
def test_selector_errors(inv, selector, message):
    with pytest.raises(SelectorError, match=message):
        inv.select(selector)


def test_limit_narrows(inv):
    assert [t.name for t in inv.targets("tag:monitored", limit="vm:110")] == ["ai"]


def test_target_view_merges_vars_and_resolves_address(inv):
    ai = inv.targets("vm:110")[0]
    assert ai.groups == ["lab"]
    assert ai.vars == {"x": 1, "y": 3, "z": 9}  # inventory < group < host
    assert ai.cluster == "pve" and ai.address == "ai" and ai.ssh_user is None  # ~/.ssh/config
    pve = inv.targets("pve")[0]
    assert pve.address == "pve.tail0000.ts.net"  # MagicDNS trailing dot removed


def test_unknown_inventory_keys_name_the_closest():
    bad = {**INVENTORY, "guests": [{"vmid": 100, "name": "docker", "tailscael": "x"}]}
    with pytest.raises(ValidationError, match="did you mean 'tailscale'"):
        Inventory.model_validate(bad)


def test_each_model_knows_its_own_keys_however_often_asked():
    from typing import ClassVar

    from opskit.model.common import StrictModel

    class Base(StrictModel):
        a: int = 0

    class Child(Base):
        b: int = 0
        _extra_keys: ClassVar[frozenset[str]] = frozenset({"x"})

    for _ in range(2):  # the second time from what the first one worked out
        assert Base.known_keys() == ["a"] and Child.known_keys() == ["a", "b", "x"]
        assert Base.model_validate({"a": 1}).a == 1 and Child.model_validate({"b": 2}).b == 2
        with pytest.raises(ValidationError, match="unknown key 'b'"):
            Base.model_validate({"b": 2})  # the child's field is not the parent's
        with pytest.raises(ValidationError, match="did you mean 'b'"):
            Child.model_validate({"bb": 2})


def test_inventory_auth_pairs_and_tls():
    with pytest.raises(ValidationError, match="go together"):
        Inventory.model_validate(
            {"proxmox": {"p": {"api_url": "https://p", "token_id": "a@pam!t"}}}
        )
    with pytest.raises(ValidationError, match="insecure"):
        Inventory.model_validate(
            {"proxmox": {"p": {"api_url": "https://p", "tls": {"insecure": True, "ca": "/x"}}}}
        )


def test_a_pinned_host_key_must_be_a_key_of_its_type():
    good = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    assert Inventory.model_validate({"hosts": [{"name": "a", "ssh": {"host_key": good}}]})
    for bad in ("ssh-ed25519 AAAAnotakey", "ssh-rsa " + good.split()[1], "ssh-ed25519 !!"):
        with pytest.raises(ValidationError, match=r"base64|public key|should match pattern"):
            Inventory.model_validate({"hosts": [{"name": "a", "ssh": {"host_key": bad}}]})
