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
]
NOT_SIMPLE = [
    "{{ params.hub_url or vars.beszel.hub_url }}",
    "{{ target.health | selectattr('check', 'eq', 'http') | list }}",
    "{{ params['port'] }}",
    "{{- params.port -}}",
    "{% for x in params.xs %}{{ x }}{% endfor %}",
    "{# a note #}{{ params.x }}",
    "{{ true }}",
    "{{ none }}",
    "{{ not params.x }}",
    "{{ params.x | nosuchfilter }}",
    "{{ params.x }} {{",
    "{{ }}",
    "{{ 1 }}",
    "{{ params.x() }}",
    "{{ self }}",
]
SIMPLE_EXPRESSIONS = ["rollback.ok", "params.kuma_window", "x", " a.b | list "]
NOT_SIMPLE_EXPRESSIONS = ["params.method == 'venv'", "not x", "x is defined", "true"]


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
    shipped = _shipped_templates(monkeypatch)
    cases = [(t, False) for t in SIMPLE + NOT_SIMPLE]
    cases += [(t, True) for t in SIMPLE_EXPRESSIONS + NOT_SIMPLE_EXPRESSIONS] + shipped
    for text, expression in cases:
        fast = render._simple_references(text, expression)
        if fast is not None:
            assert fast == _jinja_references(text, expression), text
    assert all(render._simple_references(t, False) is not None for t in SIMPLE)
    assert all(render._simple_references(t, True) is not None for t in SIMPLE_EXPRESSIONS)
    assert all(render._simple_references(t, False) is None for t in NOT_SIMPLE)
    assert all(render._simple_references(t, True) is None for t in NOT_SIMPLE_EXPRESSIONS)
    # Most of what the shipped runbooks hold needs no Jinja to be read.
    assert sum(render._simple_references(*c) is not None for c in shipped) > len(shipped) / 2
