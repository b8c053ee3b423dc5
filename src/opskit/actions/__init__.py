"""The action registry: step kinds found through the `opskit.actions` entry points.

Kinds are imported when first looked up, so validating a runbook loads only the kinds it uses.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import cache
from typing import TYPE_CHECKING, Any

from ..errors import OpskitError
from .base import Action, ActionArgs, ActionContext, Check

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

__all__ = ["Action", "ActionArgs", "ActionContext", "Check", "catalog", "get", "register"]

_added: dict[str, type[Action[Any]]] = {}
ENTRY_POINT_GROUP = "opskit.actions"


@cache
def _own_entry_points() -> dict[str, EntryPoint]:
    """opskit's own kinds, read from its metadata alone: no scan of every installed package."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        found = distribution("opskit").entry_points
    except PackageNotFoundError:
        return {}
    return {ep.name: ep for ep in found if ep.group == ENTRY_POINT_GROUP}


@cache
def _entry_points() -> dict[str, EntryPoint]:
    """Every installed package's kinds; opskit's own win over a plugin's of the same name."""
    from importlib.metadata import entry_points

    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return {**found, **_own_entry_points()}


def _entry_point(name: str) -> EntryPoint | None:
    return _own_entry_points().get(name) or _entry_points().get(name)


@cache
def _load(name: str) -> type[Action[Any]]:
    ep = _entry_point(name)
    if ep is None:
        raise KeyError(name)
    try:
        cls: type[Action[Any]] = ep.load()
    except Exception as exc:  # a broken plugin must not take opskit down
        raise OpskitError(f"action {ep.name!r} from {ep.value} failed to load: {exc}") from None
    if getattr(cls, "name", None) != ep.name:
        raise OpskitError(f"entry point {ep.name!r} loads {ep.value}, whose name differs")
    return cls


class Catalog(Mapping[str, type[Action[Any]]]):
    """Every registered kind by name; a kind's module is imported when it is looked up."""

    def __getitem__(self, name: str) -> type[Action[Any]]:
        if name in _added:
            return _added[name]
        if _entry_point(name) is not None:
            return _load(name)
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter({**dict.fromkeys(_entry_points()), **dict.fromkeys(_added)})

    def __len__(self) -> int:
        return len(set(_entry_points()) | set(_added))

    def __contains__(self, name: object) -> bool:
        return name in _added or (isinstance(name, str) and _entry_point(name) is not None)


def catalog() -> Catalog:
    """Every registered step kind by name."""
    return Catalog()


def get(name: str) -> type[Action[Any]]:
    return catalog()[name]


def register(cls: type[Action[Any]]) -> type[Action[Any]]:
    """Add a kind in-process (tests, embedding); entry points are the way for packages."""
    _added[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    _added.pop(name, None)
