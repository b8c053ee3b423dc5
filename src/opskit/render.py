"""Templating: one sandboxed Jinja2 environment, strict undefined, shell values quoted.

Every `{{ ... }}` in a field an action marks as shell (`Annotated[str, SHELL]`) is quoted with
`shell_quote`, so a param value `x; touch /tmp/pwned` stays one literal argument. `|raw` opts out
of quoting for one value; `|quote` quotes explicitly in any other field.
"""

from __future__ import annotations

import json
import os.path
import re
import shlex
from collections.abc import Iterable, Mapping
from functools import cache
from typing import TYPE_CHECKING, Any

from .errors import RenderError

if TYPE_CHECKING:
    from jinja2 import nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from pydantic import BaseModel

# Names every template may use; registered outputs and `item` (in a loop) come on top.
CONTEXT_NAMES = frozenset({"params", "secrets", "target", "vars", "runbook"})
_SHELL_FLAG = "_opskit_shell"
_TEMPLATE_MARK = re.compile(r"\{\{|\{%|\{#")
_SINGLE_EXPR = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\}\}|\{\{).)*)\}\}\s*$", re.S)


class Shell:
    """Marks an action argument as shell text: templated values in it are quoted."""

    def __repr__(self) -> str:
        return "SHELL"


SHELL = Shell()


class SecretArg:
    """Marks an action argument that must come from a secret: `{{ secrets.NAME }}`."""

    def __repr__(self) -> str:
        return "SECRET"


SECRET = SecretArg()


class Raw(str):
    """A value the `raw` filter let through unquoted into a shell field."""

    __slots__ = ()


def shell_quote(value: Any) -> str:
    """The one place opskit quotes for a POSIX shell. Lists become separate quoted words."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, list | tuple):
        return " ".join(shell_quote(v) for v in value)
    if value is None:
        return "''"
    if isinstance(value, bool):
        return "true" if value else "false"
    return shlex.quote(str(value))


def is_template(text: Any) -> bool:
    return isinstance(text, str) and _TEMPLATE_MARK.search(text) is not None


@cache
def environment() -> ImmutableSandboxedEnvironment:
    from jinja2 import StrictUndefined, pass_context
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    @pass_context
    def finalize(ctx: Any, value: Any) -> Any:
        if ctx.get(_SHELL_FLAG):
            return shell_quote(value)
        return value

    class Environment(ImmutableSandboxedEnvironment):
        # `params.items` must be the param named items, not dict.items: keys win over methods.
        def getattr(self, obj: Any, attribute: str) -> Any:
            if isinstance(obj, Mapping) and attribute in obj:
                return obj[attribute]
            return super().getattr(obj, attribute)

    env = Environment(
        undefined=StrictUndefined,
        finalize=finalize,
        autoescape=False,
        keep_trailing_newline=True,
    )
    env.filters.update(
        quote=shell_quote,
        q=shell_quote,
        raw=lambda v: Raw(v if isinstance(v, str) else str(v)),
        to_json=lambda v, indent=None: json.dumps(v, indent=indent, sort_keys=True),
        basename=os.path.basename,
        dirname=os.path.dirname,
    )
    return env


# --- checking templates without rendering them (validate) ----------------------------------


class TemplateProblem(Exception):
    """A template's syntax error or undefined reference; `line` counts within the template."""

    def __init__(self, message: str, line: int = 1) -> None:
        super().__init__(message)
        self.line = line


def parse(text: str, *, expression: bool = False) -> nodes.Template:
    from jinja2 import TemplateSyntaxError

    source = "{{ " + text + " }}" if expression else text
    try:
        return environment().parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"template syntax: {exc.message}", exc.lineno or 1) from None


def references(tree: nodes.Template) -> tuple[set[str], set[tuple[str, str]]]:
    """(top-level names the template reads, (name, attribute) pairs like ('params', 'x'))."""
    from jinja2 import TemplateError, meta
    from jinja2 import nodes as n

    try:
        # This compiles the template, which also finds unknown filters and tests.
        names = set(meta.find_undeclared_variables(tree))
    except TemplateError as exc:
        raise TemplateProblem(f"template: {exc.message}", getattr(exc, "lineno", 1) or 1) from None
    attrs: set[tuple[str, str]] = set()
    for node in tree.find_all((n.Getattr, n.Getitem)):
        if isinstance(node, n.Getattr) and isinstance(node.node, n.Name):
            attrs.add((node.node.name, node.attr))
        elif (
            isinstance(node, n.Getitem)
            and isinstance(node.node, n.Name)
            and isinstance(node.arg, n.Const)
            and isinstance(node.arg.value, str)
        ):
            attrs.add((node.node.name, node.arg.value))
    return names, attrs


@cache
def template_references(
    text: str, expression: bool = False
) -> tuple[frozenset[str], frozenset[tuple[str, str]]]:
    """`references` of a template's text, each text parsed once per process (runbooks repeat
    the same expressions from step to step)."""
    names, attrs = references(parse(text, expression=expression))
    return frozenset(names), frozenset(attrs)


# --- rendering -------------------------------------------------------------------------------


def render_text(text: str, context: Mapping[str, Any], *, shell: bool = False) -> str:
    if not is_template(text):
        return text
    from jinja2 import TemplateError

    try:
        template = environment().from_string(text)
        return template.render({**context, _SHELL_FLAG: shell})
    except TemplateError as exc:
        raise RenderError(_template_message(exc)) from None


def evaluate(expression: str, context: Mapping[str, Any]) -> Any:
    """The value of a Jinja2 expression (a `when:` condition, a `loop:`)."""
    from jinja2 import TemplateError, Undefined

    try:
        compiled = environment().compile_expression(expression, undefined_to_none=False)
        result = compiled(**context)
        if isinstance(result, Undefined):
            result._fail_with_undefined_error()
        return result
    except TemplateError as exc:
        raise RenderError(_template_message(exc)) from None


def render_value(value: Any, context: Mapping[str, Any], *, shell: bool = False) -> Any:
    """Strings rendered through lists and mappings. A string that is one `{{ expr }}` (outside
    shell fields) keeps the expression's native type, so `expect: "{{ params.code }}"` is an int."""
    if isinstance(value, str):
        if not is_template(value):
            return value
        match = _SINGLE_EXPR.match(value)
        if match and not shell:
            result = evaluate(match["expr"], context)
            return str(result) if isinstance(result, Raw) else result
        return render_text(value, context, shell=shell)
    if isinstance(value, list):
        return [render_value(v, context, shell=shell) for v in value]
    if isinstance(value, dict):
        return {k: render_value(v, context, shell=shell) for k, v in value.items()}
    return value


def marked_fields(args_model: type[BaseModel], marker: type) -> set[str]:
    """Names (and aliases) of an Args model's fields carrying a marker (Shell, SecretArg)."""
    return {
        field.alias or name
        for name, field in args_model.model_fields.items()
        if any(isinstance(m, marker) for m in field.metadata)
    }


def render_args(
    args: Mapping[str, Any], context: Mapping[str, Any], args_model: type[BaseModel]
) -> dict[str, Any]:
    shell = marked_fields(args_model, Shell)
    return {k: render_value(v, context, shell=k in shell) for k, v in args.items()}


def _template_message(exc: Exception) -> str:
    from jinja2 import TemplateSyntaxError, UndefinedError
    from jinja2.exceptions import SecurityError

    if isinstance(exc, TemplateSyntaxError):
        return f"template syntax: {exc.message}"
    if isinstance(exc, UndefinedError):
        return f"undefined: {exc.message}"
    if isinstance(exc, SecurityError):
        return f"not allowed in a template: {exc}"
    return f"template: {exc}"


def template_strings(
    value: Any, path: tuple[Any, ...] = ()
) -> Iterable[tuple[tuple[Any, ...], str]]:
    """(path, text) of every templated string inside a value."""
    if isinstance(value, str):
        if is_template(value):
            yield path, value
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from template_strings(v, (*path, i))
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from template_strings(v, (*path, k))
