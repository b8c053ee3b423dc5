"""How the CLI writes: every line through the redactor; tables by rich; JSON twins."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click

from ..secrets import redactor


def echo(text: str = "", *, err: bool = False) -> None:
    click.echo(redactor.redact(text), err=err)


def emit_json(data: Any) -> None:
    echo(json.dumps(data, indent=2, default=str, ensure_ascii=False))


def table(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str | None = None
) -> None:
    """A table on a terminal; the same rows as aligned plain text otherwise."""
    cells = [[redactor.redact("" if c is None else str(c)) for c in row] for row in rows]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title, title_justify="left", box=None, header_style="bold")
        for c in columns:
            t.add_column(c, overflow="fold")
        for row in cells:
            t.add_row(*row)
        Console().print(t)
        return
    if title:
        click.echo(title)
    widths = [
        max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)
    ]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
