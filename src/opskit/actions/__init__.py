"""The action registry: step kinds found through the `opskit.actions` entry points."""

from __future__ import annotations

from functools import cache
from typing import Any

from ..errors import OpskitError
from .base import Action, ActionArgs, ActionContext, Check

__all__ = ["Action", "ActionArgs", "ActionContext", "Check", "catalog", "get", "register"]

_added: dict[str, type[Action[Any]]] = {}
ENTRY_POINT_GROUP = "opskit.actions"


@cache
def _from_entry_points() -> dict[str, type[Action[Any]]]:
    from importlib.metadata import entry_points

    found: dict[str, type[Action[Any]]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception as exc:  # a broken plugin must not take opskit down
            raise OpskitError(f"action {ep.name!r} from {ep.value} failed to load: {exc}") from None
        if getattr(cls, "name", None) != ep.name:
            raise OpskitError(f"entry point {ep.name!r} loads {ep.value}, whose name differs")
        found[ep.name] = cls
    return found


def catalog() -> dict[str, type[Action[Any]]]:
    """Every registered step kind by name."""
    return {**_from_entry_points(), **_added}


def get(name: str) -> type[Action[Any]]:
    return catalog()[name]


def register(cls: type[Action[Any]]) -> type[Action[Any]]:
    """Add a kind in-process (tests, embedding); entry points are the way for packages."""
    _added[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    _added.pop(name, None)
