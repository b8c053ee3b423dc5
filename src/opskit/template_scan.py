"""Reading what a template refers to without importing Jinja (validate's fast path).

`opskit validate` checks every template in a runbook: its syntax, the names it reads and the
params it names. Jinja answers that by parsing and compiling the template, and importing Jinja
costs more than reading every template the shipped runbooks hold. Those templates use a small
part of Jinja's expression language: names and attributes, string and integer constants,
filters with or without arguments, `and`/`or`/`not`, comparisons, arithmetic and `x if c else
y`. This module reads that part the way Jinja's own parser does (the same precedence, the same
tokens) and gives up, returning None, at anything else: statements, comments, subscripts,
calls, tests, floats, escapes, lists and dicts, a filter opskit's environment lacks. Whatever
it gives up on is read by Jinja, so errors are always Jinja's.

`tests/test_render.py` holds this reading equal to Jinja's on every template the shipped files
hold, on cases at its edges and on a few thousand random expressions.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

References = tuple[frozenset[str], frozenset[tuple[str, str]]]

# Filters opskit's template environment has (`render.environment()`): Jinja's own and opskit's.
# A test holds this to be a part of what the environment has; a filter missing here only sends
# its templates to Jinja.
FILTERS = frozenset(
    {"abs", "attr", "batch", "capitalize", "center", "count", "d", "default", "dictsort"}
    | {"e", "escape", "filesizeformat", "first", "float", "forceescape", "format", "groupby"}
    | {"indent", "int", "items", "join", "last", "length", "list", "lower", "map", "max"}
    | {"min", "pprint", "random", "reject", "rejectattr", "replace", "reverse", "round"}
    | {"safe", "select", "selectattr", "slice", "sort", "string", "striptags", "sum", "title"}
    | {"tojson", "trim", "truncate", "unique", "upper", "urlencode", "urlize", "wordcount"}
    | {"wordwrap", "xmlattr"}
    | {"quote", "q", "raw", "to_json", "basename", "dirname", "strftime"}
)

_CONSTANTS = frozenset({"true", "false", "none", "True", "False", "None"})
# Names Jinja's grammar gives a meaning of its own, or that the reading here leaves to it.
_KEYWORDS = frozenset({"and", "or", "not", "in", "is", "if", "else", "recursive", "self"})
_COMPARE = frozenset({"==", "!=", "<", ">", "<=", ">="})

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<integer>\d+)(?![A-Za-z0-9_.])
    | (?P<string>'[^'\\]*'|"[^"\\]*")
    | (?P<op>//|\*\*|==|!=|<=|>=|[-+*/%~<>(),=.|])
    """,
    re.X,
)
_EXPRESSIONS = re.compile(r"\{\{(.*?)\}\}", re.S)


class _GiveUp(Exception):
    """Something this reading leaves to Jinja."""


def _tokens(text: str) -> Iterator[tuple[str, str]]:
    pos = 0
    while pos < len(text):
        found = _TOKEN.match(text, pos)
        if found is None:
            raise _GiveUp
        pos = found.end()
        kind = found.lastgroup or ""
        value = found[0]
        if kind == "space":
            continue
        if kind == "integer" and not re.fullmatch(r"[1-9][0-9]*|0", value):
            raise _GiveUp  # Jinja's 0b/0o/0x, 1_000, 007: left to Jinja
        yield (value if kind == "op" else kind), value  # an operator is its own kind


class _Reader:
    """A recursive descent over one expression, Jinja's `Parser.parse_expression` in small."""

    def __init__(self, text: str) -> None:
        self.tokens = list(_tokens(text))
        self.pos = 0
        self.names: set[str] = set()
        self.attrs: set[tuple[str, str]] = set()
        self.name_uses = 0

    # the stream
    def peek(self, ahead: int = 0) -> tuple[str, str]:
        at = self.pos + ahead
        return self.tokens[at] if at < len(self.tokens) else ("end", "")

    def is_keyword(self, word: str, ahead: int = 0) -> bool:
        return self.peek(ahead) == ("name", word)

    def take(self, kind: str) -> str:
        got, value = self.peek()
        if got != kind:
            raise _GiveUp
        self.pos += 1
        return value

    def skip(self, kind: str) -> bool:
        if self.peek()[0] == kind:
            self.pos += 1
            return True
        return False

    def skip_keyword(self, word: str) -> bool:
        if self.is_keyword(word):
            self.pos += 1
            return True
        return False

    # the grammar, loosest binding first
    def whole(self) -> None:
        self.condexpr()
        if self.peek()[0] != "end":
            raise _GiveUp

    # Jinja's code generator folds constants in place, and an `or`, `and` or `if` decided by
    # one drops its other side from the tree (`true or params.x`, `1 == 2 == params.x`): whose
    # attributes it then does not read. Such templates are left to it.
    def constant(self, parse: Callable[[], object]) -> bool:
        before = self.name_uses
        parse()
        return self.name_uses == before

    def condexpr(self) -> None:
        self.or_()
        while self.skip_keyword("if"):
            if self.constant(self.or_):
                raise _GiveUp
            if self.skip_keyword("else"):
                self.condexpr()

    def or_(self) -> None:
        self.logical("or", self.and_)

    def and_(self) -> None:
        self.logical("and", self.not_)

    def logical(self, word: str, operand: Callable[[], None]) -> None:
        left_constant = self.constant(operand)
        while self.skip_keyword(word):
            if left_constant:
                raise _GiveUp
            operand()

    def not_(self) -> None:
        if self.skip_keyword("not"):
            self.not_()
        else:
            self.compare()

    def compare(self) -> None:
        first_constant = self.constant(lambda: self.binary(0))
        operators = 0
        while True:
            if self.peek()[0] in _COMPARE or self.is_keyword("in"):
                self.pos += 1
            elif self.is_keyword("not") and self.is_keyword("in", 1):
                self.pos += 2
            else:
                return
            operators += 1
            if operators > 1 and first_constant:
                raise _GiveUp
            self.binary(0)

    # math1 (+ -), concat (~), math2 (* / // %), pow (**): each a level tighter than the last
    _LEVELS = ({"+", "-"}, {"~"}, {"*", "/", "//", "%"}, {"**"})

    def binary(self, level: int) -> None:
        if level == len(self._LEVELS):
            self.unary()
            return
        self.binary(level + 1)
        while self.peek()[0] in self._LEVELS[level]:
            self.pos += 1
            self.binary(level + 1)

    def unary(self, with_filter: bool = True) -> None:
        if self.peek()[0] in ("-", "+"):
            self.pos += 1
            self.unary(with_filter=False)
        else:
            self.primary()
        if with_filter:
            self.filters()

    def primary(self) -> None:
        kind, value = self.peek()
        self.pos += 1
        if kind == "name":
            if value in _KEYWORDS:
                raise _GiveUp
            if value not in _CONSTANTS:
                self.names.add(value)
                self.name_uses += 1
                if self.peek()[0] == ".":
                    self.attrs.add((value, self.peek(1)[1]))
        elif kind == "string":
            if self.peek()[0] == "string":
                raise _GiveUp  # Jinja joins 'a' 'b': left to it
        elif kind == "(":
            self.condexpr()
            self.take(")")
            if self.peek()[0] == ".":
                raise _GiveUp  # `(a).b` is Jinja's Getattr of the name a: left to it
        elif kind != "integer":
            raise _GiveUp
        if self.peek()[0] == "." and (kind != "name" or value in _CONSTANTS):
            # Jinja folds `'s'.x` at compile time, to an undefined that fails where it is
            # tested (`or`, `not`, `if`): left to it.
            raise _GiveUp
        self.postfix()

    def postfix(self) -> None:
        while self.skip("."):
            self.take("name")
        if self.peek()[0] in ("(", "["):
            raise _GiveUp  # calls and subscripts: left to Jinja

    def filters(self) -> None:
        while self.skip("|"):
            if self.take("name") not in FILTERS or self.peek()[0] == ".":
                raise _GiveUp
            if self.skip("("):
                self.arguments()
            if self.peek()[0] == "(" or self.is_keyword("is"):
                raise _GiveUp

    def arguments(self) -> None:
        keywords: set[str] = set()
        if self.skip(")"):
            return
        while True:
            if self.peek()[0] == "name" and self.peek(1)[0] == "=":
                word = self.take("name")
                if word in keywords or word in _KEYWORDS or word in _CONSTANTS:
                    raise _GiveUp
                keywords.add(word)
                self.pos += 1
            elif keywords:
                raise _GiveUp  # a positional argument after a keyword one
            self.condexpr()
            if self.skip(")"):
                return
            self.take(",")
            if self.peek()[0] == ")":
                raise _GiveUp  # a trailing comma: left to Jinja


def references(text: str, expression: bool) -> References | None:
    """What Jinja reads in a template (or an expression): the top-level names, and the
    (name, attribute) pairs like ('params', 'port'). None where this reading leaves it to
    Jinja."""
    if expression:
        parts = [text]
    else:
        if "{%" in text or "{#" in text:
            return None
        pieces = _EXPRESSIONS.split(text)
        if any("{{" in literal for literal in pieces[0::2]):
            return None
        parts = pieces[1::2]
    names: set[str] = set()
    attrs: set[tuple[str, str]] = set()
    for part in parts:
        try:
            reader = _Reader(part)
            reader.whole()
        except (_GiveUp, RecursionError):  # nested too deeply: Jinja says so in its words
            return None
        names |= reader.names
        attrs |= reader.attrs
    return frozenset(names), frozenset(attrs)
