"""Checking runbooks and the inventory without touching anything: what `opskit validate` says
of each file (its problems as file:line:col, or a one-line summary)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LoadError, OpskitError, Problem
from .workspace import Workspace


@dataclass
class FileCheck:
    """One file's verdict."""

    file: Path
    problems: list[Problem] = field(default_factory=list)
    summary: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


def files_to_check(ws: Workspace, paths: Iterable[Path]) -> list[Path]:
    """The files named (a directory: its YAML files, or itself when it has none, to be said
    so); none named: the inventory and every runbook."""
    paths = list(paths)
    if not paths:
        return [ws.inventory_path, *ws.runbook_paths()]
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(x for x in p.iterdir() if x.suffix in (".yaml", ".yml"))
            files.extend(found or [p])
        else:
            files.append(p)
    return files


def check_files(ws: Workspace, files: Iterable[Path]) -> list[FileCheck]:
    """Each file loaded and checked: an inventory by its schema, a runbook by its schema and
    against the inventory (targets, kinds' arguments, templates' names)."""
    from .loader import load_inventory, load_runbook
    from .workspace import check_runbook

    inventory_file = ws.inventory_path.resolve()
    inventory = None
    inventory_error: list[Problem] = []
    try:
        inventory = ws.inventory
    except LoadError as exc:
        inventory_error = exc.problems
    except OpskitError:
        inventory_error = []
    checks = []
    for path in files:
        check = FileCheck(path)
        if path.is_dir():  # named, and holding nothing to check: not a silent success
            check.problems = [Problem(str(path), 1, 1, "a directory with no .yaml or .yml file")]
        elif path.resolve() == inventory_file or path.parent.name == "inventory":
            try:
                inv = ws.inventory if path.resolve() == inventory_file else load_inventory(path)[0]
                check.summary = f"{len(inv.guests)} guests, {len(inv.hosts)} hosts"
            except LoadError as exc:
                check.problems = exc.problems
        else:
            try:
                runbook, source = load_runbook(path, ws.catalog)
                if inventory is not None:
                    check.problems = check_runbook(runbook, source, inventory, ws.catalog)
                    if not check.problems:
                        count = len(inventory.select(runbook.targets))
                        check.summary = f"{len(runbook.steps)} steps, {count} targets"
                elif inventory_error:
                    check.summary = "targets not checked: the inventory has problems"
            except LoadError as exc:
                check.problems = exc.problems
        check.problems = sorted(check.problems)
        checks.append(check)
    return checks
