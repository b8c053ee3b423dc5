"""Templating: shell quoting by default, the sandbox, strict undefined, native values."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Annotated, ClassVar

import pytest

from opskit import actions, render
from opskit.actions import ActionArgs, Check
from opskit.errors import RenderError
from opskit.render import SHELL

EVIL = "x; touch {dir}/pwned"


class ShellArgs(ActionArgs):
    cmd: Annotated[str, SHELL]
    note: str = ""


class ShellProbe(Check[ShellArgs]):
    """A step kind for tests: a shell command field, nothing else."""

    name: ClassVar[str] = "test.shell"
    Args = ShellArgs

    def describe(self) -> str:
        return self.args.cmd


@pytest.fixture
def shell_kind():
    actions.register(ShellProbe)
    yield ShellProbe
    actions.unregister(ShellProbe.name)


def sh(command: str) -> str:
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout


def test_param_value_stays_one_literal_argument(tmp_path):
    evil = EVIL.format(dir=tmp_path)
    args = render.render_args(
        {"cmd": "printf '%s\\n' {{ params.name }}"}, {"params": {"name": evil}}, ShellArgs
    )
    assert sh(args["cmd"]) == evil + "\n"
    assert not (tmp_path / "pwned").exists()


def test_raw_opts_out_of_quoting(tmp_path):
    evil = EVIL.format(dir=tmp_path)
    args = render.render_args(
        {"cmd": "echo {{ params.name | raw }}"}, {"params": {"name": evil}}, ShellArgs
    )
    sh(args["cmd"])
    assert (tmp_path / "pwned").exists()


def test_only_shell_fields_are_quoted():
    args = render.render_args(
        {"cmd": "echo {{ v }}", "note": "{{ v }} as is"}, {"v": "a b"}, ShellArgs
    )
    assert args == {"cmd": "echo 'a b'", "note": "a b as is"}


def test_lists_become_separate_quoted_words():
    args = render.render_args({"cmd": "ls {{ files }}"}, {"files": ["a b", "c;d", "e"]}, ShellArgs)
    assert args["cmd"] == "ls 'a b' 'c;d' e"


@pytest.mark.parametrize(
    "value", ["$(id)", "`id`", "a'b", '"', "\n", "", "-rf /", "*", "~root", "a\\b", "${HOME}"]
)
def test_quoting_round_trips_through_sh(value):
    args = render.render_args({"cmd": "printf '%s' {{ v }}"}, {"v": value}, ShellArgs)
    assert sh(args["cmd"]) == value


def test_injection_through_the_cli(project, opskit, shell_kind, tmp_path):
    project.runbook(
        "inject",
        """
        name: inject
        targets: vm:110
        params:
          name: {type: str}
        steps:
          - id: greet
            test.shell: {cmd: "printf '%s' {{ params.name }}"}
        """,
    )
    evil = EVIL.format(dir=tmp_path)
    result = opskit("show", "inject", "-p", f"name={evil}", "--json", cwd=project.root)
    assert result.code == 0, result.err
    cmd = json.loads(result.out)["targets"][0]["steps"][0]["args"]["cmd"]
    assert sh(cmd) == evil
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ target.__init__ }}",
        "{{ params.update({'a': 1}) }}",
        "{{ cycler.__init__.__globals__ }}",
    ],
)
def test_sandbox_refuses_unsafe_access(template):
    with pytest.raises(RenderError, match=r"not allowed|undefined"):
        render.render_value(template, {"params": {}, "target": {}})


def test_strict_undefined_is_an_error():
    with pytest.raises(RenderError, match="undefined"):
        render.render_value("http://{{ target.addres }}/", {"target": {"address": "x"}})
    with pytest.raises(RenderError, match="undefined"):
        render.render_value("{{ params.nope }}", {"params": {}})


def test_single_expression_keeps_native_type():
    ctx = {"params": {"code": 204, "items": [1, 2], "on": True}}
    assert render.render_value("{{ params.code }}", ctx) == 204
    assert render.render_value("{{ params.items }}", ctx) == [1, 2]
    assert render.render_value(" {{ params.on }} ", ctx) is True
    assert render.render_value("code {{ params.code }}", ctx) == "code 204"
    assert render.render_value({"a": ["{{ params.code }}"]}, ctx) == {"a": [204]}


def test_evaluate_expressions():
    assert render.evaluate("params.mode == 'venv'", {"params": {"mode": "venv"}}) is True
    with pytest.raises(RenderError):
        render.evaluate("params.mode ==", {"params": {}})


def test_references_finds_params_secrets_and_names():
    names, attrs = render.references(
        render.parse("{{ params.a }} {{ secrets['b'] }} {% set x = 1 %}{{ x }} {{ item.c }}")
    )
    assert names == {"params", "secrets", "item"}
    assert {("params", "a"), ("secrets", "b"), ("item", "c")} <= attrs


def test_parse_reports_syntax_line():
    with pytest.raises(render.TemplateProblem) as info:
        render.parse("line one\n{{ oops }\n")
    assert info.value.line == 2


def test_inventory_vars_override_runbook_var_defaults():
    from opskit.workspace import overridden

    defaults = {"beszel": {"version": "1.0", "port": 45876}, "unrelated": 1}
    inventory = {"beszel": {"version": "2.0", "release_url": "http://mirror"}, "other": True}
    assert overridden(defaults, inventory) == {
        "beszel": {"version": "2.0", "port": 45876, "release_url": "http://mirror"},
        "unrelated": 1,
    }
    assert overridden(defaults, {}) == defaults


# --- validate's reading of templates without Jinja -------------------------------------------

SIMPLE = [
    "{{ params.port }}",
    "{{ target.address }}:{{ target.ssh_port }}",
    "http://{{ target.address }}:8080/{{ params.path | urlencode }}",
    "{{ vars.beszel.hub_url | trim | lower }}",
    "{{ x }}",
    "{{x.y.z}}",
    "{{\n  params.a\n}} and }} {",
    "{{ loop.index }}",
    "{{ a.if }}",
    "{{ params.hub_url or vars.beszel.hub_url }}",
    "{{ target.health | selectattr('check', 'eq', 'http') | list }}",
    "{{ true }}",
    "{{ none }}",
    "{{ not params.x }}",
    "{{ 1 }}",
    "{{ 0 }}",
    "{{ -a.b }}",
    "{{- params.port }}",
    "{{ (a or b) | default(c.d, true) }}",
    "{{ a | default(boolean=true) }}",
    "{{ x | join(d=y.z) | indent(2, first=true) }}",
    "{{ 'stopped' if params.action == 'shutdown' else 'running' }}",
    "{{ a if b }}",
    "{{ a if b if c else d }}",
    "{{ a in b and c not in d or not e }}",
    "{{ a < b <= c > d >= e != f == g }}",
    "{{ a + b - c ~ d * e / f // g % h ** i }}",
    "{{ '}' }}{{ \"x\" }}",
    "a {print $4} b {{ c }} }}",
    "{{ a | map('first') | list }}",
    "{{ (a) }}",
    "{{ ((((-a)))) | list }}",
    "{{ caller }}{{ varargs }}{{ kwargs }}",
]
NOT_SIMPLE = [
    "{{ params['port'] }}",
    "{{- params.port -}}",
    "{% for x in params.xs %}{{ x }}{% endfor %}",
    "{# a note #}{{ params.x }}",
    "{{ params.x | nosuchfilter }}",
    "{{ params.x | nosuch.filter }}",
    "{{ params.x }} {{",
    "{{ }}",
    "{{ params.x() }}",
    "{{ self }}",
    "{{ if }}",
    "{{ (a).b }}",
    "{{ none.x }}",
    "{{ 's'.x or a }}",
    "{{ 1 .x }}",
    "{{ true or params.x }}",
    "{{ params.x if 1 }}",
    "{{ 1 == 2 == params.x }}",
    "{{ a | default(false and b.c) }}",
    "{{ (a, b) }}",
    "{{ () }}",
    "{{ a.0 }}",
    "{{ 1.5 }}",
    "{{ 1e3 }}",
    "{{ 007 }}",
    "{{ 1_000 }}",
    "{{ 0x1f }}",
    "{{ 'a' 'b' }}",
    "{{ 'a\\nb' }}",
    "{{ '}}' }}",
    "{{ [a] }}",
    "{{ {'a': b} }}",
    "{{ a | f(b) }}",
    "{{ a | default(b,) }}",
    "{{ a | default(x=1, b) }}",
    "{{ a | default(x=1, x=2) }}",
    "{{ a | default(*b) }}",
    "{{ a | default(b)(c) }}",
    "{{ a | list is defined }}",
    "{{ a = b }}",
    "{{ a b }}",
    "{{ a - }}",
    "{{ a or }}",
    "{{ a.b.c( }}",
    "{{ é }}",
    "{{ a ! b }}",
    "{{ " + "(" * 400 + "a" + ")" * 400 + " }}",
    "{{ " + "not " * 1000 + "a }}",
]
SIMPLE_EXPRESSIONS = [
    "rollback.ok",
    "params.kuma_window",
    "x",
    " a.b | list ",
    "params.method == 'venv'",
    "not x",
    "true",
    "-x",
    "a.b * 1024",
]
NOT_SIMPLE_EXPRESSIONS = ["x is defined", "x }} {{ y", "x -", "", "a {{ b", "a #} b"]


def _jinja_references(text: str, expression: bool) -> tuple[object, object]:
    try:
        names, attrs = render.references(render.parse(text, expression=expression))
    except render.TemplateProblem as exc:
        return "problem", str(exc)
    return frozenset(names), frozenset(attrs)


def _shipped_templates(monkeypatch) -> list[tuple[str, bool]]:
    """Every (template, expression?) validating the shipped files reads, once each."""
    from opskit.validate import check_files, files_to_check
    from opskit.workspace import Workspace

    seen: list[tuple[str, bool]] = []
    real = render.template_references.__wrapped__

    def spy(text: str, expression: bool = False):
        seen.append((text, expression))
        return real(text, expression)

    repo = Path(__file__).resolve().parent.parent
    ws = Workspace.discover(repo / "runbooks", repo / "inventory" / "homelab.yaml", cwd=repo)
    with monkeypatch.context() as patched:
        patched.setattr(render, "template_references", spy)
        assert all(c.ok for c in check_files(ws, files_to_check(ws, [])))
    return list(dict.fromkeys(seen))


def test_templates_read_without_jinja_say_what_jinja_says(monkeypatch):
    from opskit.template_scan import FILTERS, references

    shipped = _shipped_templates(monkeypatch)
    cases = [(t, False) for t in SIMPLE + NOT_SIMPLE]
    cases += [(t, True) for t in SIMPLE_EXPRESSIONS + NOT_SIMPLE_EXPRESSIONS] + shipped
    for text, expression in cases:
        fast = references(text, expression)
        if fast is not None:
            assert fast == _jinja_references(text, expression), text
    assert [t for t in SIMPLE if references(t, False) is None] == []
    assert [t for t in SIMPLE_EXPRESSIONS if references(t, True) is None] == []
    assert [t for t in NOT_SIMPLE if references(t, False) is not None] == []
    assert [t for t in NOT_SIMPLE_EXPRESSIONS if references(t, True) is not None] == []
    # Every template the shipped runbooks hold is read without Jinja.
    assert [c for c in shipped if references(*c) is None] == []
    # A filter the reading takes for granted is one the environment has.
    assert render.environment().filters.keys() >= FILTERS


def test_validating_the_shipped_files_does_not_import_jinja():
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    script = (
        "import sys\n"
        "from opskit.cli import main\n"
        "try:\n"
        "    main(['validate'])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'jinja2'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=repo, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


def _random_expression(rng, depth: int = 0) -> str:
    """An expression of Jinja's grammar, made of what the reading without Jinja knows and a
    little it does not (a test, a filter Jinja lacks, a number as an attribute)."""
    names = ["a", "params", "x", "loop", "caller", "join"]
    constants = ["true", "none", "None", "1", "0", "42", "'s'", '"d"', "''"]
    filters = ["list", "default", "join", "upper", "trim", "map", "int", "first", "nosuch"]
    operators = ["or", "and"] * 4 + ["==", "!=", "<", ">=", "in", "not in", "+", "-", "~", "*"]
    operators += ["//", "%", "**", "is"]
    roll = rng.random()
    if depth > 4 or roll < 0.3:
        text = rng.choice(names + constants)
        while rng.random() < 0.4:
            text += "." + rng.choice([*names, "if", "0"])
    elif roll < 0.45:
        text = f"({_random_expression(rng, depth + 1)})"
    elif roll < 0.55:
        text = rng.choice(["not ", "-", "+"]) + _random_expression(rng, depth + 1)
    elif roll < 0.75:
        left, right = _random_expression(rng, depth + 1), _random_expression(rng, depth + 1)
        text = f"{left} {rng.choice(operators)} {right}"
    elif roll < 0.85:
        text = f"{_random_expression(rng, depth + 1)} if {_random_expression(rng, depth + 1)}"
        if rng.random() < 0.7:
            text += f" else {_random_expression(rng, depth + 1)}"
    else:
        text = _random_expression(rng, depth + 1)
    while rng.random() < 0.25:
        name = rng.choice(filters)
        if rng.random() < 0.5:
            args = [_random_expression(rng, depth + 2) for _ in range(rng.randint(0, 2))]
            if rng.random() < 0.3:
                args.append(rng.choice(["boolean", "x"]) + "=" + _random_expression(rng, 9))
            name += "(" + ", ".join(args) + ")"
        text = f"{text} | {name}"
    return text


def test_random_expressions_read_without_jinja_say_what_jinja_says():
    import random

    from opskit.template_scan import references

    rng = random.Random(17)
    read = 0
    for _ in range(3000):
        expression = _random_expression(rng)
        for text, is_expression in ((expression, True), ("{{ " + expression + " }}!", False)):
            fast = references(text, is_expression)
            if fast is not None:
                read += 1
                assert fast == _jinja_references(text, is_expression), text
    assert read > 2000  # most of them are read without Jinja: the comparison is not empty
