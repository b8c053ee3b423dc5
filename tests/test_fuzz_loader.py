"""Hypothesis feeds mutated runbooks and inventories to the loader: only opskit errors come out."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
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


# --- template bombs: each is a located exit-2 error within seconds, never an internal one ----

BOMBS = [
    ("range(10**9)|list", "a range of 1,000,000,000 items"),
    ("('a' * 10**10)|length > 0", "1 x 10,000,000,000 items"),
    ("([0] * 10**9)|length > 0", "1 x 1,000,000,000 items"),
    ("(10 ** 100) ** 100 > 1", "a power of more than"),
    ("10 ** (10 ** 8) > 1", "a power of more than"),
    ("'%*d' % (10**9, 1)", "a '*' width in % formatting"),
    ("'%999999999d' % 1", "a width or count of 999,999,999"),
    ("'%999999999d'|format(1)", "a width or count of 999,999,999"),
    ("'{:>999999999}'.format(1)", "a width or count of 999,999,999"),
    ("'x'.center(10**9)", "a width or count of 1,000,000,000"),
    ("'x'|center(10**9)", "a width or count of 1,000,000,000"),
    ("'x'|indent(10**9)", "a width or count of 1,000,000,000"),
    ("[1]|batch(10**9, 0)|list", "a width or count of 1,000,000,000"),
    ("[1]|slice(10**9)|list", "a width or count of 1,000,000,000"),
    ("('a' * 100000)|replace('a', 'a' * 100000)", "a replace() making more than"),
    ("('a' * 100000).replace('', 'b' * 100)", "a replace() making more than"),
    ("('a' * 1000000 + 'a' * 1000000)|length", "2,000,000 characters or items"),
    (
        "range(99999)|map('string')|join|length > 0 and range(99999)|list|length > 0"
        " and (range(1000)|map('string')|list)|length > 0",
        None,
    ),
    ("1 / 0", "ZeroDivisionError"),
    ("'a' + 1", "TypeError"),
    ("'%d' % 'x'", "TypeError"),
    ("undefined_name", "undefined variable"),
]
NESTED_LOOPS = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
DOUBLING = (
    "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
    "{% endfor %}{{ ns.s|length }}"
)
MACRO_DOUBLING = (
    "{% macro f(s, n) %}{% if n %}{{ f(s ~ s, n - 1) }}{% endif %}{% endmacro %}{{ f('a', 64) }}"
)
RECURSION = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"
DEEP = "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}"


def _bomb_runbook(when: str | None = None, cmd: str | None = None) -> str:
    import json

    step = f"    when: {json.dumps(when)}\n" if when else ""
    args = "{cmd: " + json.dumps(cmd) + "}" if cmd else "{cmd: 'true'}"
    return f"name: bomb\ntargets: dev\nsteps:\n  - id: boom\n    ssh.run: {args}\n{step}"


def _render_bomb(text: str) -> str:
    """The message of the one OpskitError the runbook ends in ('' when it renders)."""
    import time

    from opskit.errors import LoadError, RenderError

    started = time.monotonic()
    try:
        runbook, source = load_runbook("bomb.yaml", CATALOG, text=text)
        problems = check_runbook(runbook, source, INV, CATALOG)
        if problems:
            raise LoadError(problems)
        loaded = LoadedRunbook(runbook, source, Path("bomb.yaml"))
        for target in INV.targets(runbook.targets):
            render_target(loaded, resolve_params(runbook, {}), target, CATALOG)
    except (LoadError, RenderError) as exc:
        assert exc.exit_code == 2
        message = str(exc)
    else:
        message = ""
    assert time.monotonic() - started < 10, "the sandbox let a template run for seconds"
    return message


@pytest.mark.parametrize(("expression", "expected"), BOMBS, ids=[b[0][:40] for b in BOMBS])
def test_a_template_bomb_is_a_located_render_error(expression: str, expected: str | None) -> None:
    message = _render_bomb(_bomb_runbook(when=expression))
    if expected is None:
        assert message == ""  # big but within the bounds: it renders
        return
    assert expected in message, message
    # At load time file:line:col of the field; at render time the runbook file, the step's
    # line, the step and the target.
    at = "bomb.yaml:6:11: steps[0].when: " if expression == "undefined_name" else None
    assert message.startswith(at or "bomb.yaml:4:5: step 'boom' on vm 111 (dev): "), message


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (NESTED_LOOPS, "more than 1,000,000 range items in one template"),
        (DOUBLING, "characters or items (the limit is 1,048,576)"),
        (MACRO_DOUBLING, "characters or items (the limit is 1,048,576)"),
        (RECURSION, "template recursion too deep"),
        (DEEP, "template nests too deeply"),
    ],
    ids=["nested loops", "namespace doubling", "macro doubling", "recursion", "deep nesting"],
)
def test_a_template_statement_bomb_is_a_located_error(template: str, expected: str) -> None:
    message = _render_bomb(_bomb_runbook(cmd=template))
    assert expected in message, message
    assert message.startswith("bomb.yaml:"), message


def test_template_bombs_through_the_cli_exit_2(project, opskit) -> None:
    """As the issue found it: `{{ range(10**9)|list }}` ended as an internal error (exit 70)."""
    project.runbook("bomb", _bomb_runbook(cmd="echo {{ range(10**9)|list }}"))
    result = opskit("show", "bomb", cwd=project.root)
    assert result.code == 2, result
    assert "internal error" not in result.err and "Traceback" not in result.err
    assert re.search(
        r"bomb\.yaml:4:5: step 'boom' on vm 111 \(dev\): template too large", result.err
    )
