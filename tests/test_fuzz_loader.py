"""Hypothesis feeds mutated runbooks and inventories to the loader: only opskit errors come out."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opskit.actions import catalog
from opskit.errors import OpskitError
from opskit.loader import load_inventory, load_runbook
from opskit.workspace import LoadedRunbook, check_runbook, render_target, resolve_params

REPO = Path(__file__).resolve().parent.parent
SEED = (REPO / "runbooks" / "health.yaml").read_text()
RICH = """\
name: demo
description: a runbook using most features
targets: [vm:110, tag:monitored, "!dev"]
params:
  port: {type: int, default: 8811, min: 1, max: 65535}
  mode: {type: str, default: venv, choices: [venv, docker]}
secrets:
  api_key: env:DEMO_API_KEY
vars:
  path: /livez
serial: 2
max_fail: 25%
preflight:
  - id: hub
    check.tcp: {host: 127.0.0.1, port: 8090, timeout: 1s}
steps:
  - id: livez
    check.http:
      url: "http://{{ target.address }}:{{ params.port }}{{ vars.path }}"
      bearer: "{{ secrets.api_key }}"
      json: {status: ok}
    retries: 3
    interval: 2s
    register: live
    when: "params.mode == 'venv'"
  - id: settle
    wait: {duration: 500ms}
    on_failure: [livez]
    loop: [1, 2]
verify:
  - id: again
    check.http: {url: "http://{{ target.address }}:8811/livez", expect: [200, 204]}
"""
INVENTORY = (REPO / "inventory" / "homelab.yaml").read_text()
INV, _ = load_inventory(REPO / "inventory" / "homelab.yaml")
CATALOG = catalog()

NOISE = st.lists(
    st.sampled_from([*":{}[],-&*!|>'\"#%@`?\n\t  abcxyz019.$~\\", "{{", "}}", "{%"]),
    min_size=1,
    max_size=12,
).map("".join)
SCALARS = st.sampled_from(
    [
        "action: nope",
        "action: wait",
        "action: [1]",
        "{action: x, args: 1}",
        "{a: 1}",
        "",
        "null",
        "~",
        "true",
        "-1",
        "1e999",
        "0x1F",
        "[]",
        "{}",
        "&a x",
        "*a",
        "!!binary x",
        "'unterminated",
        "5 minutes",
        "{{ nope }}",
        "vm:abc",
        "!!python/object:os.system x",
        "2026-11-24",
        ".inf",
        "[*a]",
        "? x",
        "|\n  block",
    ]
)


@st.composite
def mutated(draw: st.DrawFn, text: str) -> str:
    lines = text.splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            lines = ["\n"]
        kind = draw(st.sampled_from(["delete", "insert", "dup", "swap", "scalar", "indent"]))
        i = draw(st.integers(0, len(lines) - 1))
        line = lines[i]
        if kind == "delete" and line:
            a = draw(st.integers(0, len(line)))
            b = draw(st.integers(a, len(line)))
            lines[i] = line[:a] + line[b:]
        elif kind == "insert":
            at = draw(st.integers(0, len(line)))
            lines[i] = line[:at] + draw(NOISE) + line[at:]
        elif kind == "dup":
            lines.insert(i, line)
        elif kind == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif kind == "scalar" and ":" in line:
            head = line.split(":", 1)[0]
            lines[i] = f"{head}: {draw(SCALARS)}\n"
        elif kind == "indent":
            lines[i] = draw(st.sampled_from(["", " ", "  ", "\t", "      "])) + line.lstrip(" ")
    return "".join(lines)


def _exercise_runbook(text: str) -> None:
    try:
        runbook, source = load_runbook("fuzz.yaml", CATALOG, text=text)
        problems = check_runbook(runbook, source, INV, CATALOG)
        if problems:
            return
        loaded = LoadedRunbook(runbook, source, Path("fuzz.yaml"))
        params = resolve_params(runbook, {})
        for target in INV.targets(runbook.targets)[:3]:
            render_target(loaded, params, target, CATALOG)
    except OpskitError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(RICH))
def test_mutated_rich_runbook_raises_only_opskit_errors(text: str) -> None:
    _exercise_runbook(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(SEED))
def test_mutated_shipped_runbook_raises_only_opskit_errors(text: str) -> None:
    _exercise_runbook(text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(INVENTORY))
def test_mutated_inventory_raises_only_opskit_errors(text: str) -> None:
    try:
        inv, _ = load_inventory("fuzz-inventory.yaml", text=text)
        for target in inv.targets("all"):
            assert target.address
    except OpskitError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_raises_only_opskit_errors(text: str) -> None:
    _exercise_runbook(text)


def test_rich_seed_is_valid() -> None:
    runbook, source = load_runbook("rich.yaml", CATALOG, text=RICH)
    assert check_runbook(runbook, source, INV, CATALOG) == []
