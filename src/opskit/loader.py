"""YAML files to opskit models, with every problem reported as file:line:col: message."""

from __future__ import annotations

import datetime
import functools
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import LoadError, Problem
from .model import Guest, Inventory, Runbook, Step

M = TypeVar("M", bound=BaseModel)

# A YAML document may not expand (through aliases) to more nodes than this.
MAX_NODES = 200_000
# Nor be bigger than this: refused before parsing (parsing 50 MB took 28 s of CPU only to
# find the node limit). The shipped runbooks are under 10 KB, an inventory of 10,000 hosts
# about 1 MB.
MAX_BYTES = 2 * 1024 * 1024

Path_ = tuple[str | int, ...]


@dataclass
class SourceMap:
    """The YAML node tree of one file, kept to turn a path inside it into a line and column."""

    file: str
    doc: Any  # a ruamel.yaml Node (None for an empty file)

    def position(self, path: Iterable[Any], *, key: Any = None) -> tuple[int, int, str]:
        """(line, col, dotted path) of the deepest node of `path` found; of `key` in it if given."""
        node = self.doc
        line, col = _start(node)
        shown: list[str] = []
        for part in path:
            if _is_mapping(node):
                if part in ("args", "action") and _find(node, part) is None:
                    action = _action_key(node)
                    if action is None:
                        continue
                    if part == "action":
                        knode, _ = _find(node, action) or (node, node)
                        line, col = _start(knode)
                        shown.append(action)
                        break
                    part = action
                found = _find(node, part)
                if found is not None:
                    node = found[1]
                    line, col = _start(node)
                    shown.append(str(part))
            elif _is_sequence(node) and isinstance(part, int) and 0 <= part < len(node.value):
                node = node.value[part]
                line, col = _start(node)
                shown.append(f"[{part}]")
        if key is not None and _is_mapping(node):
            found = _find(node, key)
            if found is not None:
                line, col = _start(found[0])
                shown.append(str(key))
        return line, col, ".".join(shown).replace(".[", "[")

    def problem(self, path: Iterable[Any], message: str, *, key: Any = None) -> Problem:
        """A problem at `path`, its message prefixed with the dotted path found."""
        line, col, shown = self.position(path, key=key)
        return Problem(self.file, line, col, f"{shown}: {message}" if shown else message)


def _start(node: Any) -> tuple[int, int]:
    mark = getattr(node, "start_mark", None)
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


def _is_mapping(node: Any) -> bool:
    return getattr(node, "id", None) == "mapping"


def _is_sequence(node: Any) -> bool:
    return getattr(node, "id", None) == "sequence"


def _find(node: Any, key: Any, depth: int = 0) -> tuple[Any, Any] | None:
    """(key node, value node) of `key` in a mapping node, looking through `<<` merges."""
    text = str(key).lower() if isinstance(key, bool) else str(key)
    merges = []
    for knode, vnode in node.value:
        if getattr(knode, "id", None) != "scalar":
            continue
        if knode.value == text:
            return knode, vnode
        if knode.value == "<<":
            merges.append(vnode)
    for source in merges if depth < 8 else ():
        for candidate in source.value if _is_sequence(source) else [source]:
            if _is_mapping(candidate) and (found := _find(candidate, key, depth + 1)):
                return found
    return None


def _action_key(node: Any) -> str | None:
    fields = set(Step.step_keys())
    extras = [
        k.value
        for k, _ in node.value
        if getattr(k, "id", None) == "scalar" and k.value not in fields
    ]
    return extras[0] if len(extras) == 1 else None


# --- reading YAML ----------------------------------------------------------------------------


def _parse(text: str, *, pure: bool) -> tuple[Any, Any]:
    import warnings

    from ruamel.yaml import YAML

    yaml = YAML(typ="safe", pure=pure)
    if not pure:
        yaml.Resolver = _fixed_version_resolver()
    yaml.allow_duplicate_keys = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. a reused anchor, which YAML 1.2 allows
        node = yaml.compose(text)
        data = yaml.constructor.construct_document(node) if node is not None else None
    return node, data


@functools.cache
def _fixed_version_resolver() -> type:
    """ruamel's resolver for libyaml's path, looking up the YAML version once per document.

    ruamel looks the version up for every scalar (two or three times, each through caught
    AttributeErrors: a third of validating a runbook); on libyaml's path it is the loader's,
    the same for the whole document, so the implicit resolvers it selects are kept."""
    from ruamel.yaml.resolver import VersionedResolver

    class FixedVersionResolver(VersionedResolver):
        _kept: Any = None

        @property
        def versioned_resolver(self) -> Any:
            if self._kept is None:
                self._kept = VersionedResolver.versioned_resolver.fget(self)  # type: ignore[attr-defined]
            return self._kept

    return FixedVersionResolver


def read_yaml(path: str | Path, text: str | None = None) -> tuple[Any, SourceMap]:
    """(plain data, source map) of a YAML file; syntax errors become LoadError.

    libyaml (ruamel.yaml.clib) parses first, ten times faster than pure Python; where it
    objects, the pure parser decides, so errors and YAML 1.2-only syntax come out exactly.
    """
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    name = str(path)
    if text is None:
        try:
            text = _read_bounded(Path(path), name)
        except FileNotFoundError:
            raise LoadError.at(name, 1, 1, "no such file") from None
        except IsADirectoryError:
            raise LoadError.at(name, 1, 1, "is a directory, not a YAML file") from None
        except UnicodeDecodeError as exc:
            raise LoadError.at(name, 1, 1, f"not UTF-8 text ({exc.reason})") from None
        except OSError as exc:
            raise LoadError.at(name, 1, 1, f"cannot read: {exc.strerror}") from None
    elif len(text) > MAX_BYTES or len(text.encode("utf-8", "replace")) > MAX_BYTES:
        raise _too_large(name, len(text.encode("utf-8", "replace")))
    try:
        try:
            node, doc = _parse(text, pure=False)
        except Exception:
            node, doc = _parse(text, pure=True)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = " ".join(s for s in (exc.context, exc.problem) if s) or "invalid YAML"
        raise LoadError.at(name, line, col, f"YAML syntax: {_one_line(what)}") from None
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise LoadError.at(name, line, col, f"YAML: {_one_line(str(exc))}") from None
    except (RecursionError, ValueError, TypeError, OverflowError) as exc:
        raise LoadError.at(name, 1, 1, f"YAML: {_one_line(str(exc)) or 'invalid'}") from None
    source = SourceMap(name, node)
    try:
        data = _plain(doc, [0], set())
    except _TooBig:
        raise LoadError.at(name, 1, 1, f"YAML expands to more than {MAX_NODES} nodes") from None
    except _Recursive:
        raise LoadError.at(name, 1, 1, "a YAML alias refers to a node containing itself") from None
    return data, source


def _read_bounded(path: Path, name: str) -> str:
    """The file's text, or LoadError when it is over MAX_BYTES: by its size before reading
    (a regular file), else by reading no more than the limit allows (a pipe, a device)."""
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise _too_large(name, size)
    with open(path, encoding="utf-8") as handle:
        text = handle.read(MAX_BYTES + 1)
    size = len(text.encode("utf-8"))
    if size > MAX_BYTES:
        raise _too_large(name, size)
    return text


def _too_large(name: str, size: int) -> LoadError:
    return LoadError.at(
        name,
        1,
        1,
        f"file too large: {size / 2**20:.1f} MiB, over the {MAX_BYTES // 2**20} MiB limit"
        " for a runbook or inventory (not parsed)",
    )


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class _TooBig(Exception):
    pass


class _Recursive(Exception):
    pass


def _plain(node: Any, count: list[int], active: set[int]) -> Any:
    """Round-trip YAML objects to plain Python, guarding against alias bombs and cycles."""
    count[0] += 1
    if count[0] > MAX_NODES:
        raise _TooBig
    if isinstance(node, Mapping | list):
        if id(node) in active:
            raise _Recursive
        active.add(id(node))
        try:
            if isinstance(node, Mapping):
                return {_plain_key(k): _plain(v, count, active) for k, v in node.items()}
            return [_plain(v, count, active) for v in node]
        finally:
            active.discard(id(node))
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, str):
        return str(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, datetime.date | datetime.datetime):
        return node.isoformat()
    if isinstance(node, bytes):
        return node.decode("utf-8", "replace")
    return str(node)


def _plain_key(key: Any) -> Any:
    if isinstance(key, str):
        return str(key)
    if isinstance(key, bool | int | float) or key is None:
        return key
    return repr(key)  # a collection as a key: kept as text so validation names it


# --- validating ------------------------------------------------------------------------------


def validate(
    model: type[M], data: Any, source: SourceMap, context: dict[str, Any] | None = None
) -> M:
    """`data` as `model`, or LoadError with one located problem per pydantic error."""
    if not isinstance(data, Mapping):
        what = "empty" if data is None else f"a {type(data).__name__}"
        raise LoadError.at(
            source.file, *_start(source.doc), f"expected a mapping at the top, got {what}"
        )
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise LoadError(problems_from(exc.errors(include_url=False), source)) from None
    except RecursionError:
        raise LoadError.at(source.file, 1, 1, "document nests too deeply") from None


def problems_from(errors: Iterable[Any], source: SourceMap, prefix: Path_ = ()) -> list[Problem]:
    """Located problems from pydantic's error dicts; union alternatives merged."""
    merged: dict[tuple[int, int, str], list[str]] = {}
    for err in errors:
        loc = (*prefix, *err["loc"])
        ctx = err.get("ctx") or {}
        key = ctx.get("opskit_key")
        line, col, shown = source.position(loc, key=key)
        if key is not None and ctx.get("opskit_value"):
            line, col, shown = source.position((*loc, key))
        message = _message(err, loc)
        merged.setdefault((line, col, shown), [])
        if message not in merged[(line, col, shown)]:
            merged[(line, col, shown)].append(message)
    problems = []
    for (line, col, shown), messages in merged.items():
        text = " or ".join(messages)
        problems.append(Problem(source.file, line, col, f"{shown}: {text}" if shown else text))
    return problems


def _message(err: Any, loc: Path_) -> str:
    kind = err["type"]
    if kind == "missing":
        return f"missing required key {loc[-1]!r}"
    if kind == "string_pattern_mismatch":
        return f"{err.get('input')!r} does not match {err['ctx']['pattern']}"
    if kind == "literal_error":
        return f"{err.get('input')!r} is not one of {err['ctx']['expected']}"
    msg = str(err["msg"])
    if kind.startswith("value_error") and msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return msg if msg[:2].isupper() else msg[:1].lower() + msg[1:]


# --- the two file kinds ----------------------------------------------------------------------


def load_inventory(path: str | Path, text: str | None = None) -> tuple[Inventory, SourceMap]:
    data, source = read_yaml(path, text)
    inventory = validate(Inventory, data, source)
    problems = _inventory_problems(inventory, source)
    if problems:
        raise LoadError(problems)
    return inventory, source


def _inventory_problems(inv: Inventory, source: SourceMap) -> list[Problem]:
    from .model.inventory import SelectorError

    problems: list[Problem] = []
    seen: dict[str, tuple[str, int]] = {}
    vmids: dict[int, int] = {}
    for section in ("guests", "hosts"):
        for i, host in enumerate(getattr(inv, section)):
            if host.name in seen:
                other = seen[host.name]
                problems.append(
                    source.problem(
                        (section, i, "name"),
                        f"duplicate host name {host.name!r} (also {other[0]}[{other[1]}])",
                    )
                )
            seen[host.name] = (section, i)
            if isinstance(host, Guest):
                problems += _guest_problems(inv, source, host, i, vmids)
            for name, service in host.services.items():
                if service.behind is not None and service.behind not in _all_services(inv):
                    problems.append(
                        source.problem(
                            (section, i, "services", name, "behind"),
                            f"unknown service {service.behind!r}"
                            + _hint(service.behind, _all_services(inv)),
                        )
                    )
    for gname, group in inv.groups.items():
        for j, member in enumerate(group.members):
            try:
                inv.select(member, frozenset({gname}))
            except SelectorError as exc:
                problems.append(source.problem(("groups", gname, "members", j), str(exc)))
    return problems


def _guest_problems(
    inv: Inventory, source: SourceMap, guest: Guest, i: int, vmids: dict[int, int]
) -> list[Problem]:
    problems = []
    if guest.vmid in vmids:
        problems.append(
            source.problem(
                ("guests", i, "vmid"),
                f"duplicate vmid {guest.vmid} (also guests[{vmids[guest.vmid]}])",
            )
        )
    vmids[guest.vmid] = i
    if guest.cluster is not None and guest.cluster not in inv.proxmox:
        problems.append(
            source.problem(
                ("guests", i, "cluster"),
                f"unknown Proxmox cluster {guest.cluster!r}" + _hint(guest.cluster, inv.proxmox),
            )
        )
    elif guest.cluster is None and len(inv.proxmox) > 1:
        problems.append(
            source.problem(
                ("guests", i), "several Proxmox clusters are defined: name this guest's 'cluster'"
            )
        )
    return problems


def _all_services(inv: Inventory) -> set[str]:
    return {name for h in inv.all_hosts() for name in h.services}


def _hint(word: str, choices: Iterable[str]) -> str:
    from .model import did_you_mean

    return did_you_mean(word, choices)


def load_runbook(
    path: str | Path, actions: Collection[str], text: str | None = None
) -> tuple[Runbook, SourceMap]:
    """The runbook's structure: schema, action keys, step ids. Cross-references are checked
    by `opskit.workspace`, which knows the inventory and the actions' arguments. `actions` is
    asked whether it holds each kind used (a Catalog then lists no installed package's kinds
    unless a name is unknown)."""
    data, source = read_yaml(path, text)
    runbook = validate(Runbook, data, source, context={"actions": actions})
    problems: list[Problem] = []
    ids: dict[str, tuple[str, int]] = {}
    for section, i, step in runbook.all_steps():
        if step.id in ids:
            s, j = ids[step.id]
            problems.append(
                source.problem((section, i, "id"), f"duplicate step id {step.id!r} (also {s}[{j}])")
            )
        else:
            ids[step.id] = (section, i)
    for section, i, step in runbook.all_steps():
        if isinstance(step.on_failure, list):
            for j, ref in enumerate(step.on_failure):
                if ref not in ids:
                    problems.append(
                        source.problem(
                            (section, i, "on_failure", j),
                            f"on_failure names unknown step {ref!r}" + _hint(ref, ids),
                        )
                    )
    if problems:
        raise LoadError(problems)
    return runbook, source
