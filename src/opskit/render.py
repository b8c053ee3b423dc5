"""Templating: one sandboxed Jinja2 environment, strict undefined, shell values quoted.

Every `{{ ... }}` in a field an action marks as shell (`Annotated[str, SHELL]`) is quoted with
`shell_quote`, so a param value `x; touch /tmp/pwned` stays one literal argument. `|raw` opts out
of quoting for one value; `|quote` quotes explicitly in any other field.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os.path
import re
import shlex
from collections.abc import Iterable, Iterator, Mapping
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any

from .errors import RenderError

if TYPE_CHECKING:
    from jinja2 import Template, nodes
    from jinja2.environment import TemplateExpression
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from pydantic import BaseModel

# Names every template may use; registered outputs and `item` (in a loop) come on top.
CONTEXT_NAMES = frozenset({"params", "secrets", "target", "vars", "runbook", "run"})
# Only in rescue, always and handler steps: the step that failed, and why.
FAILURE_NAME = "failure"
_SHELL_FLAG = "_opskit_shell"
_TEMPLATE_MARK = re.compile(r"\{\{|\{%|\{#")
_SINGLE_EXPR = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\}\}|\{\{).)*)\}\}\s*$", re.S)

# What one template may build, so a slip (`range(10**9)`, `'a' * 10**10`, a macro calling
# itself) is a located error in a second, not a hung or swapping controller. No runbook needs
# more: a rendered argument of a megabyte is already far past any real one.
MAX_SIZE = 1024 * 1024  # characters of a string, items of a list, a width or a count
MAX_INT_BITS = 10_000  # about 3,000 decimal digits
MAX_RANGE_ITEMS = 1_000_000  # range() items, summed over one rendering (nested loops)
_range_items: contextvars.ContextVar[list[int]] = contextvars.ContextVar("range_items")


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
    from jinja2.utils import Namespace

    @pass_context
    def finalize(ctx: Any, value: Any) -> Any:
        if ctx.get(_SHELL_FLAG):
            return shell_quote(value)
        return value

    class Environment(ImmutableSandboxedEnvironment):
        # Jinja computes these itself (also when folding constants at parse time) unless the
        # sandbox intercepts them: repetition and powers build without bound.
        intercepted_binops = frozenset({"*", "**", "+", "%"})

        # `params.items` must be the param named items, not dict.items: keys win over methods.
        def getattr(self, obj: Any, attribute: str) -> Any:
            if isinstance(obj, Mapping) and attribute in obj:
                return obj[attribute]
            return super().getattr(obj, attribute)

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            _check_binop(operator, left, right)
            return super().call_binop(context, operator, left, right)

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
            # Every call a template makes (functions, methods, macros) passes here; filters
            # are checked where they are defined below.
            _check_call(__obj, args, kwargs)
            return super().call(__context, __obj, *args, **kwargs)

    class BoundedNamespace(Namespace):
        """`namespace()`: the one way a template carries a value from one loop turn to the
        next, so the one place a value could double turn after turn."""

        def __setitem__(self, name: str, value: Any) -> None:
            _check_size(value)
            super().__setitem__(name, value)

    env = Environment(
        undefined=StrictUndefined,
        finalize=finalize,
        autoescape=False,
        keep_trailing_newline=True,
    )
    env.globals.update(range=_bounded_range, namespace=BoundedNamespace)
    env.globals.pop("lipsum", None)  # lorem ipsum by the paragraph: no use in a runbook
    builtin = dict(env.filters)
    env.filters.update(
        quote=shell_quote,
        q=shell_quote,
        raw=lambda v: Raw(v if isinstance(v, str) else str(v)),
        to_json=lambda v, indent=None: json.dumps(v, indent=_width(indent), sort_keys=True),
        basename=os.path.basename,
        dirname=os.path.dirname,
        strftime=_strftime,
    )
    # Filters whose numbers say how big the result is (a width, a count, an indent).
    for name in ("center", "indent", "slice", "batch", "tojson"):
        env.filters[name] = _bounded_filter(builtin[name])
    env.filters["format"] = _bounded_format(builtin["format"])
    env.filters["replace"] = _bounded_replace(builtin["replace"])
    return env


def _strftime(value: Any, fmt: str = "%Y-%m-%dT%H:%M:%SZ") -> Any:
    from .runcontext import strftime

    return strftime(value, _width(fmt))


# --- the sandbox's bounds --------------------------------------------------------------------


class TooLarge(Exception):
    """A template tried to build more than the sandbox allows."""


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes | list | tuple | dict) else 0


def _check_size(value: Any) -> None:
    if _size(value) > MAX_SIZE:
        raise TooLarge(
            f"a value of {_size(value):,} characters or items (the limit is {MAX_SIZE:,})"
        )


def _width(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SIZE:
        raise TooLarge(f"a width or count of {value:,} (the limit is {MAX_SIZE:,})")
    if isinstance(value, str) and len(value) > MAX_SIZE:
        _check_size(value)
    return value


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        if _int(left) and _int(right):
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise TooLarge(f"a product of more than {MAX_INT_BITS:,} bits")
        elif _int(right) and _size(left) * right > MAX_SIZE:
            raise TooLarge(f"{_size(left):,} x {right:,} items (the limit is {MAX_SIZE:,})")
        elif _int(left) and _size(right) * left > MAX_SIZE:
            raise TooLarge(f"{left:,} x {_size(right):,} items (the limit is {MAX_SIZE:,})")
    elif operator == "**":
        big = _int(left) and _int(right) and abs(left) > 1 and right > 0
        if big and left.bit_length() * right > MAX_INT_BITS:
            raise TooLarge(f"a power of more than {MAX_INT_BITS:,} bits")
    elif operator == "+":
        if _size(left) + _size(right) > MAX_SIZE:
            raise TooLarge(
                f"{_size(left) + _size(right):,} characters or items (the limit is {MAX_SIZE:,})"
            )
    elif operator == "%" and isinstance(left, str):
        _check_percent_format(left)


# `%` conversions: an explicit width or precision, or `*` (taken from the arguments).
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
# `{...:spec}` fields of str.format: the numbers in a spec, or a nested `{...}` width.
_FORMAT_SPEC = re.compile(r"\{[^{}]*:([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}")


def _check_percent_format(text: str) -> None:
    for match in _PERCENT_SPEC.finditer(text):
        for part in match.groups():
            if part == "*":
                raise TooLarge("a '*' width in % formatting (write the width in the format)")
            if part is not None:
                _width(int(part))


def _check_format_spec(text: str) -> None:
    for match in _FORMAT_SPEC.finditer(text):
        spec = match[1]
        if "{" in spec:
            raise TooLarge("a width from an argument in str.format (write it in the format)")
        for number in re.findall(r"\d+", spec):
            _width(int(number))


def _check_call(func: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    for value in (*args, *kwargs.values()):
        _check_size(value)
    method = getattr(func, "__wrapped__", func)  # the sandbox wraps str.format
    owner = getattr(method, "__self__", None)
    if not isinstance(owner, str):
        return
    name = getattr(method, "__name__", "")
    if name in ("format", "format_map"):
        _check_format_spec(owner)
    elif name == "replace" and len(args) >= 2:
        _check_replace(owner, args[0], args[1], args[2] if len(args) > 2 else -1)
    elif name in ("center", "ljust", "rjust", "zfill", "expandtabs"):
        for value in (*args, *kwargs.values()):
            _width(value)


def _check_replace(text: Any, old: Any, new: Any, count: Any = -1) -> None:
    if not (isinstance(text, str) and isinstance(old, str) and isinstance(new, str)):
        return
    found = len(text) + 1 if old == "" else text.count(old)
    if _int(count) and count >= 0:
        found = min(found, count)
    if len(text) + found * (len(new) - len(old)) > MAX_SIZE:
        raise TooLarge(f"a replace() making more than {MAX_SIZE:,} characters")


def _bounded_range(*args: Any) -> range:
    """Jinja's sandboxed range (at most 100,000 items), and at most MAX_RANGE_ITEMS over one
    rendering: nested loops of ranges multiply."""
    from jinja2.sandbox import MAX_RANGE

    made = range(*args)
    if len(made) > MAX_RANGE:
        raise TooLarge(f"a range of {len(made):,} items (the limit is {MAX_RANGE:,})")
    spent = _range_items.get(None)
    if spent is not None:
        spent[0] += len(made)
        if spent[0] > MAX_RANGE_ITEMS:
            raise TooLarge(f"more than {MAX_RANGE_ITEMS:,} range items in one template")
    return made


def _bounded_filter(builtin: Any) -> Any:
    from functools import wraps

    # Jinja passes a context or environment first to the filters marked so, then the value.
    numbers = 2 if getattr(builtin, "jinja_pass_arg", None) is not None else 1

    @wraps(builtin)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        for value in (*args[numbers:], *kwargs.values()):
            _width(value)
        return builtin(*args, **kwargs)

    return bounded


def _bounded_format(builtin: Any) -> Any:
    from functools import wraps

    @wraps(builtin)
    def bounded(value: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            _check_percent_format(value)
        return builtin(value, *args, **kwargs)

    return bounded


def _bounded_replace(builtin: Any) -> Any:
    from functools import wraps

    @wraps(builtin)
    def bounded(ctx: Any, value: Any, old: Any, new: Any, count: Any = None) -> Any:
        _check_replace(value, old, new, -1 if count is None else count)
        return builtin(ctx, value, old, new, count)

    return bounded


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
    except RecursionError:
        raise TemplateProblem("template nests too deeply") from None


def references(tree: nodes.Template) -> tuple[set[str], set[tuple[str, str]]]:
    """(top-level names the template reads, (name, attribute) pairs like ('params', 'x'))."""
    from jinja2 import TemplateError, meta
    from jinja2 import nodes as n

    try:
        # This compiles the template, which also finds unknown filters and tests.
        names = set(meta.find_undeclared_variables(tree))
    except TemplateError as exc:
        raise TemplateProblem(f"template: {exc.message}", getattr(exc, "lineno", 1) or 1) from None
    except RecursionError:
        raise TemplateProblem("template nests too deeply") from None
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
    from .template_scan import references as read_without_jinja

    simple = read_without_jinja(text, expression)
    if simple is not None:
        return simple
    names, attrs = references(parse(text, expression=expression))
    return frozenset(names), frozenset(attrs)


# --- rendering -------------------------------------------------------------------------------


# Compiled templates and expressions by their text, for the process: a runbook's steps repeat
# the same strings for every target, and Jinja compiles a string to Python code each time it is
# given one (from_string keeps no cache). A compiled template renders any number of times, from
# any thread. Bounded, so a long-lived process (status --serve) holds no more than this.
COMPILED = 1024


@lru_cache(maxsize=COMPILED)
def _template(text: str) -> Template:
    return environment().from_string(text)


@lru_cache(maxsize=COMPILED)
def _expression(expression: str) -> TemplateExpression:
    return environment().compile_expression(expression, undefined_to_none=False)


def render_text(text: str, context: Mapping[str, Any], *, shell: bool = False) -> str:
    if not is_template(text):
        return text
    with _rendering():
        template = _template(text)
        rendered = template.render({**context, _SHELL_FLAG: shell})
        _check_size(rendered)
        return rendered


def evaluate(expression: str, context: Mapping[str, Any]) -> Any:
    """The value of a Jinja2 expression (a `when:` condition, a `loop:`)."""
    from jinja2 import Undefined

    with _rendering():
        compiled = _expression(expression)
        result = compiled(**context)
        if isinstance(result, Undefined):
            result._fail_with_undefined_error()
        _check_size(result)
        return result


@contextlib.contextmanager
def _rendering() -> Iterator[None]:
    """One rendering: its range budget, and every way it can fail as a RenderError (the
    caller adds where: file, step, target). A template computes with the values it is
    given, so Python's own errors (1/0, 'a' + 1, int('x') in a method) are the user's too."""
    from jinja2 import TemplateError

    token = _range_items.set([0])
    try:
        yield
    except TemplateError as exc:
        raise RenderError(_template_message(exc)) from None
    except TooLarge as exc:
        raise RenderError(f"template too large: {exc}") from None
    except RecursionError:
        raise RenderError("template recursion too deep (a macro calling itself?)") from None
    except MemoryError:
        raise RenderError("template needs more memory than there is") from None
    except RenderError:
        raise
    except Exception as exc:
        raise RenderError(f"template: {type(exc).__name__}: {exc}") from None
    finally:
        _range_items.reset(token)


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


@cache
def marked_fields(args_model: type[BaseModel], marker: type) -> frozenset[str]:
    """Names (and aliases) of an Args model's fields carrying a marker (Shell, SecretArg).
    Once per model: a model's fields are fixed when its class is made."""
    return frozenset(
        field.alias or name
        for name, field in args_model.model_fields.items()
        if any(isinstance(m, marker) for m in field.metadata)
    )


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
