"""explain: a step kind's arguments, risk, outputs and example, as `ansible-doc` shows a module."""

from __future__ import annotations

import json
import re
import shutil
import sys
import textwrap
from typing import TYPE_CHECKING

import click

from ..secrets import redactor
from .common import json_option, workspace
from .output import echo, emit_json, table

if TYPE_CHECKING:
    from ..actions.docs import ArgumentDoc, KindDoc

# One printed line: (text, rich style or None) pieces. Plain output drops the styles.
Line = list[tuple[str, str | None]]
WIDTH = 100


@click.command()
@click.argument("kind", required=False)
@json_option
@click.pass_context
def explain(ctx: click.Context, kind: str | None, as_json: bool) -> None:
    """A step kind: its arguments (types, defaults, which are required), risk, what it
    registers, and an example. Without KIND: every kind, with its risk and one line."""
    from ..actions.docs import every_kind
    from ..actions.docs import explain as explain_kind

    catalog = workspace(ctx).catalog
    if kind is None:
        docs = every_kind(catalog)
        if as_json:
            emit_json([{"name": d.name, "risk": d.risk, "summary": d.summary} for d in docs])
            return
        table(["KIND", "RISK", "SUMMARY"], [[d.name, d.risk, d.summary] for d in docs])
        echo()
        echo("opskit explain KIND: its arguments, outputs and an example")
        return
    doc = explain_kind(kind, catalog)
    if as_json:
        emit_json(doc.as_dict())
        return
    _show(_layout(doc))


def _width() -> int:
    if sys.stdout.isatty():
        return max(40, min(WIDTH, shutil.get_terminal_size().columns))
    return WIDTH


def _layout(doc: KindDoc) -> list[Line]:
    from ..actions.docs import OUTPUTS_NOTE, RISK_MEANING

    width = _width()
    lines: list[Line] = [
        [(doc.name, "bold"), (f"  {doc.risk}", _risk_style(doc.risk))],
        *_wrapped(doc.summary, width),
    ]
    if doc.description:
        lines.append([])
        for paragraph in doc.description.split("\n\n"):
            lines += _wrapped(paragraph, width)
    meaning = RISK_MEANING.get(doc.risk)
    lines += [[], [("RISK  ", "bold"), (doc.risk, _risk_style(doc.risk))]]
    if meaning:
        lines += _wrapped(meaning, width, "  ")

    lines += [[], [("ARGUMENTS", "bold"), ('  (any may be a template, "{{ ... }}")', "dim")]]
    if not doc.arguments:
        lines.append([("  none", None)])
    for argument in doc.arguments:
        lines += _argument(argument, "  ", width)
    notes = _notes(doc.arguments)
    if notes:
        lines.append([])
        lines += [line for note in notes for line in _wrapped(note, width, "  ", "dim")]

    lines += [[], [("OUTPUTS", "bold"), ("  (register: NAME, then {{ NAME.key }})", "dim")]]
    if not doc.outputs:
        lines.append([("  none of its own", None)])
    name_width = max((len(n) for n in doc.outputs), default=0)
    for name, what in doc.outputs.items():
        lines.append([("  ", None), (name.ljust(name_width), "cyan"), (f"  {what}", None)])
    *first, last = doc.common_outputs
    common = f"{', '.join(first)} and {last}" if first else last
    lines.append([])
    lead = "Besides these, a step" if doc.outputs else "A step"
    lines += _wrapped(f"{lead} registers {common}. {OUTPUTS_NOTE}", width, "  ", "dim")

    lines += [[], [("EXAMPLE", "bold")]]
    if doc.example:
        lines.append([(textwrap.indent(doc.example.rstrip("\n"), "  "), "yaml")])
    else:
        lines.append([("  none", None)])
    return lines


def _argument(argument: ArgumentDoc, indent: str, width: int) -> list[Line]:
    flags = [] if not argument.required else ["required"]
    if argument.secret:
        flags.append("secret")
    if argument.shell:
        flags.append("shell")
    head: Line = [(indent, None), (argument.name, "cyan"), (f": {argument.type}", None)]
    if not argument.required and argument.default is not None:
        head.append((f" = {_scalar(argument.default)}", None))
    if flags:
        head.append((f"  [{', '.join(flags)}]", "yellow"))
    out = [head]
    if argument.description:
        out += _wrapped(argument.description, width, indent + "    ")
    for sub in argument.fields:
        out += _argument(sub, indent + "    ", width)
    return out


def _notes(arguments: tuple[ArgumentDoc, ...]) -> list[str]:
    every = [a for top in arguments for a in (top, *top.fields)]
    notes = []
    if any(a.type.startswith("duration") for a in every):
        notes.append("duration: seconds, or 500ms, 30s, 5m, 1h30m.")
    if any(a.secret for a in every):
        notes.append("[secret]: given as '{{ secrets.NAME }}', never as text.")
    if any(a.shell for a in every):
        notes.append(
            "[shell]: each {{ value }} in it is shell-quoted ({{ value | raw }} opts out)."
        )
    return notes


# Plain text YAML would read as something else: a number, a bool, null, a mapping...
_NOT_PLAIN = re.compile(
    r"^([-+]?[0-9._]+([eE][-+]?[0-9]+)?|true|false|yes|no|on|off|null|~)$|^[-?:,\[\]{}#&*!|>'\"%@`\s]"
    r"|: | #|\s$",
    re.IGNORECASE,
)


def _scalar(value: object) -> str:
    """A default as a runbook would write it: "0644" quoted (0644 would be a number)."""
    if isinstance(value, str) and value and not _NOT_PLAIN.search(value):
        return value
    return json.dumps(value, ensure_ascii=False)


def _wrapped(text: str, width: int, indent: str = "", style: str | None = None) -> list[Line]:
    return [
        [(line, style)]
        for line in textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=indent)
    ]


def _risk_style(risk: str) -> str:
    return {"read": "green", "change": "yellow", "destructive": "bold red"}.get(risk, "")


def _show(lines: list[Line]) -> None:
    """Plain text through the redactor; on a terminal, with rich's colours and YAML."""
    if not sys.stdout.isatty():
        for line in lines:
            echo("".join(text for text, _ in line))
        return
    from rich.console import Console
    from rich.syntax import Syntax
    from rich.text import Text

    console = Console(soft_wrap=True, highlight=False)
    for line in lines:
        if len(line) == 1 and line[0][1] == "yaml":
            code = redactor.redact(line[0][0])
            console.print(Syntax(code, "yaml", theme="ansi_dark", background_color="default"))
            continue
        text = Text()
        for part, style in line:
            text.append(redactor.redact(part), style=style or "")
        console.print(text)
