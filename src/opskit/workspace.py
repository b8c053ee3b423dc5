"""Where runbooks meet the inventory and the actions: discovery, validation, rendering."""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from . import render
from .errors import LoadError, OpskitError, Problem, RenderError, UsageError
from .loader import SourceMap, load_inventory, load_runbook, problems_from
from .model import Inventory, Risk, Runbook, SelectorError, Step, Target, did_you_mean

if TYPE_CHECKING:
    from .actions import Action

RUNBOOK_SUFFIXES = (".yaml", ".yml")
RUN_VALUES = ("id", "started", "previous")  # `run.X` in templates (opskit.runcontext)
DEFAULT_INVENTORY = Path("inventory") / "homelab.yaml"


@dataclass
class LoadedRunbook:
    runbook: Runbook
    source: SourceMap
    path: Path

    @property
    def name(self) -> str:
        return self.runbook.name


@dataclass
class Workspace:
    """Runbook directories and an inventory file, found from flags, environment or cwd.

    Runbooks are found by name in `runbooks_dir`, then in each of `more_runbook_dirs`: the
    first directory holding a name wins (see `discover` for the order)."""

    runbooks_dir: Path
    inventory_path: Path
    _catalog: Mapping[str, type[Action[Any]]] | None = field(default=None, repr=False)
    more_runbook_dirs: tuple[Path, ...] = ()

    @classmethod
    def discover(
        cls,
        runbooks: str | Path | None = None,
        inventory: str | Path | None = None,
        cwd: Path | None = None,
    ) -> Workspace:
        """Runbooks from, in this order: `--runbooks DIR`, `$OPSKIT_RUNBOOKS`, `./runbooks`
        and the project's `runbooks/` (the project: the nearest directory at or above the
        current one holding `inventory/`, else `runbooks/`). Given directories must exist;
        found ones are searched where they exist, each directory once."""
        here = (cwd or Path.cwd()).resolve()
        root = _project_root(here)
        given = [Path(d) for d in (runbooks, os.environ.get("OPSKIT_RUNBOOKS")) if d]
        found = [d for d in (here / "runbooks", root / "runbooks") if d.is_dir()]
        dirs: list[Path] = []
        for directory in [*given, *found]:
            if all(directory.resolve() != d.resolve() for d in dirs):
                dirs.append(directory)
        if not dirs:
            dirs = [root / "runbooks"]  # missing: runbook_paths() says so
        inv = inventory or os.environ.get("OPSKIT_INVENTORY") or (root / DEFAULT_INVENTORY)
        return cls(dirs[0], Path(inv), more_runbook_dirs=tuple(dirs[1:]))

    # ----- the parts ---------------------------------------------------------------------

    @property
    def runbook_dirs(self) -> tuple[Path, ...]:
        """Where runbooks are found by name, the first directory first."""
        return (self.runbooks_dir, *self.more_runbook_dirs)

    @property
    def root(self) -> Path:
        """The project: where runbooks/ (and deploy/) live."""
        return self.runbooks_dir.resolve().parent

    def root_for(self, runbook: Path) -> Path:
        """The project a runbook belongs to (its deploy/): the parent of the runbook directory
        it was found in; for a runbook given by a path elsewhere, `root`."""
        where = runbook.resolve().parent
        for directory in self.runbook_dirs:
            if directory.resolve() == where:
                return where.parent
        return self.root

    @property
    def catalog(self) -> Mapping[str, type[Action[Any]]]:
        if self._catalog is None:
            from .actions import catalog

            self._catalog = catalog()
        return self._catalog

    @cached_property
    def loaded_inventory(self) -> tuple[Inventory, SourceMap]:
        if not self.inventory_path.exists():
            raise UsageError(
                f"no inventory at {self.inventory_path}"
                " (give --inventory FILE or set OPSKIT_INVENTORY)"
            )
        return load_inventory(self.inventory_path)

    @property
    def inventory(self) -> Inventory:
        return self.loaded_inventory[0]

    def runbook_paths(self) -> list[Path]:
        """Every runbook found by name, sorted by name; of two with one name, the one in the
        directory searched first."""
        missing = [d for d in self.runbook_dirs if not d.is_dir()]
        if missing:
            raise UsageError(
                f"no runbooks directory at {missing[0]}"
                " (give --runbooks DIR or set OPSKIT_RUNBOOKS)"
            )
        found: dict[str, Path] = {}
        for directory in self.runbook_dirs:
            for path in sorted(directory.iterdir()):
                if path.suffix in RUNBOOK_SUFFIXES and path.is_file():
                    found.setdefault(path.stem, path)
        return [found[name] for name in sorted(found)]

    def find_runbook(self, name: str) -> Path:
        """A runbook by name (file stem in a runbooks directory) or by path."""
        candidate = Path(name)
        if candidate.suffix in RUNBOOK_SUFFIXES or os.sep in name:
            if candidate.is_file():
                return candidate
            raise UsageError(f"no runbook file {name}")
        paths = self.runbook_paths()
        for path in paths:
            if path.stem == name:
                return path
        searched = " and ".join(shown_path(d) for d in self.runbook_dirs)
        close = difflib.get_close_matches(name, [p.stem for p in paths], n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        raise UsageError(f"no runbook named {name!r} in {searched}{hint}")

    def load(self, name_or_path: str | Path) -> LoadedRunbook:
        """A runbook, fully checked against the inventory and the actions."""
        path = self.find_runbook(str(name_or_path))
        runbook, source = load_runbook(path, self.catalog)
        problems = check_runbook(runbook, source, self.inventory, self.catalog)
        if problems:
            raise LoadError(problems)
        return LoadedRunbook(runbook, source, path)


def shown_path(path: Path) -> str:
    """A path as a person reads it best: relative to the current directory when inside it."""
    try:
        relative = path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return str(path)
    return f"./{relative}" if str(relative) != "." else "."


def _project_root(start: Path) -> Path:
    """The nearest directory at or above `start` holding inventory/, else the nearest holding
    runbooks/, else start."""
    for marker in ("inventory", "runbooks"):
        for directory in (start, *start.parents):
            if (directory / marker).is_dir():
                return directory
    return start


# --- deep checks: the runbook against the inventory and the actions ------------------------


def check_runbook(
    runbook: Runbook,
    source: SourceMap,
    inventory: Inventory,
    catalog: Mapping[str, type[Action[Any]]],
) -> list[Problem]:
    problems: list[Problem] = []
    try:
        inventory.select(runbook.targets)
    except SelectorError as exc:
        problems.append(source.problem(("targets",), str(exc)))
    if runbook.schedule is not None:
        problems += _check_schedule(runbook, source)
    registered: set[str] = set()
    for section, i, step in runbook.all_steps():
        where = (section, i)
        action = catalog[step.action]
        if section in ("preflight", "verify") and action.risk is not Risk.READ:
            problems.append(
                source.problem(
                    (*where, "action"),
                    f"{section} holds checks only; {step.action!r} is a {action.risk.value} action",
                )
            )
        problems += _check_args(step, where, action.Args, source)
        names = set(render.CONTEXT_NAMES) | registered
        if section in ("rescue", "always", "handlers"):
            names.add(render.FAILURE_NAME)
        if step.loop is not None:
            names.add("item")
        problems += _check_templates(step, where, runbook, names, source)
        if step.register_as:
            registered.add(step.register_as)
    return problems


def _check_schedule(runbook: Runbook, source: SourceMap) -> list[Problem]:
    """OnCalendar expressions as systemd reads them, approvals naming real steps."""
    from .schedule import check_expression

    schedule = runbook.schedule
    assert schedule is not None
    problems: list[Problem] = []
    expressions: list[tuple[tuple[Any, ...], str]] = [
        (("schedule", "on", i), e) for i, e in enumerate(schedule.on)
    ]
    if schedule.window is not None:
        expressions += [
            (("schedule", "window", "start", i), e)
            for i, e in enumerate(schedule.window.start or [])
        ]
    for path, expression in expressions:
        problem = check_expression(expression)
        if problem is not None:
            problems.append(source.problem(path, problem))
    ids = {step.id for _, _, step in runbook.all_steps()}
    for j, step_id in enumerate(schedule.approve.steps):
        if step_id not in ids:
            problems.append(
                source.problem(
                    ("schedule", "approve", "steps", j),
                    f"approve names unknown step {step_id!r}" + did_you_mean(step_id, ids),
                )
            )
    window = schedule.window
    if window is not None and window.duration <= 0:
        problems.append(source.problem(("schedule", "window"), "a window needs a duration"))
    elif window is not None and (schedule.randomized_delay or 0) >= window.duration:
        problems.append(
            source.problem(
                ("schedule", "randomized_delay"),
                "randomized_delay is as long as the window or longer: runs would start after"
                " it closed",
            )
        )
    return problems


def _check_args(
    step: Step, where: tuple[Any, ...], args_model: type[BaseModel], source: SourceMap
) -> list[Problem]:
    problems: list[Problem] = []
    try:
        args_model.model_validate(step.args)
    except ValidationError as exc:
        # A templated value is only known per target: its type is checked when rendered.
        kept = [e for e in exc.errors() if not _templated_at(step.args, e["loc"])]
        problems += problems_from(kept, source, prefix=(*where, "args"))
    for name in render.marked_fields(args_model, render.SecretArg):
        value = step.args.get(name)
        if value is not None and not _uses_secret(value):
            problems.append(
                source.problem(
                    (*where, "args", name),
                    f"{name} must come from a secret: use '{{{{ secrets.NAME }}}}'",
                )
            )
    return problems


def _templated_at(args: Any, loc: Iterable[Any]) -> bool:
    node = args
    for part in loc:
        if render.is_template(node):
            return True
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        ):
            node = node[part]
        else:
            break
    return render.is_template(node)


def _uses_secret(value: Any) -> bool:
    if not render.is_template(value):
        return False
    try:
        _, attrs = render.template_references(value)
    except render.TemplateProblem:
        return True  # reported as a syntax error elsewhere
    return any(base == "secrets" for base, _ in attrs)


def _check_templates(
    step: Step,
    where: tuple[Any, ...],
    runbook: Runbook,
    names: set[str],
    source: SourceMap,
) -> list[Problem]:
    texts: list[tuple[tuple[Any, ...], str, bool]] = []
    for path, text in render.template_strings(step.args):
        texts.append(((*where, "args", *path), text, False))
    if isinstance(step.when, str):
        texts.append(((*where, "when"), step.when, True))
    if isinstance(step.confirm, str):
        texts.extend(
            (((*where, "confirm"), t, False) for _, t in render.template_strings(step.confirm))
        )
    if isinstance(step.loop, str):
        texts.append(((*where, "loop"), step.loop, not render.is_template(step.loop)))
    elif isinstance(step.loop, list):
        for path, text in render.template_strings(step.loop):
            texts.append(((*where, "loop", *path), text, False))
    problems = []
    for path, text, expression in texts:
        try:
            used, attrs = render.template_references(text, expression)
        except render.TemplateProblem as exc:
            line, col, shown = source.position(path)
            problems.append(Problem(source.file, line + exc.line - 1, col, f"{shown}: {exc}"))
            continue
        for name in sorted(used - names):
            hint = did_you_mean(name, names)
            problems.append(source.problem(path, f"undefined variable {name!r}{hint}"))
        for base, attr in sorted(attrs):
            if base == "params" and attr not in runbook.params and base in used:
                hint = did_you_mean(attr, runbook.params)
                problems.append(source.problem(path, f"undefined param {attr!r}{hint}"))
            elif base == "secrets" and attr not in runbook.secrets and base in used:
                hint = did_you_mean(attr, runbook.secrets)
                problems.append(source.problem(path, f"undefined secret {attr!r}{hint}"))
            elif base == "vars" and attr not in runbook.vars and base in used:
                hint = did_you_mean(attr, runbook.vars)
                problems.append(source.problem(path, f"undefined runbook var {attr!r}{hint}"))
            elif base == "run" and attr not in RUN_VALUES and base in used:
                hint = did_you_mean(attr, RUN_VALUES)
                problems.append(source.problem(path, f"undefined run value {attr!r}{hint}"))
            elif base == "target" and attr not in _target_attributes() and base in used:
                hint = did_you_mean(attr, _target_attributes())
                problems.append(source.problem(path, f"undefined target attribute {attr!r}{hint}"))
    return problems


@lru_cache(maxsize=1)
def _target_attributes() -> frozenset[str]:
    """What `target.X` may name: the keys `target_context` gives, and a mapping's read
    methods (`target.get('vmid')`). Below them (`target.vars.x`) everything is free-form."""
    fields = {f.alias or name for name, f in Target.model_fields.items()}
    return frozenset({*fields, "health", "get", "items", "keys", "values"})


# --- params ----------------------------------------------------------------------------------


def resolve_params(runbook: Runbook, given: Mapping[str, Any]) -> dict[str, Any]:
    """Typed params: defaults, then `given` (e.g. from -p k=v), each checked."""
    values: dict[str, Any] = {}
    for name in given:
        if name not in runbook.params:
            hint = did_you_mean(name, runbook.params)
            known = ", ".join(runbook.params) or "none"
            raise UsageError(
                f"runbook {runbook.name!r} has no param {name!r}{hint} (params: {known})"
            )
    for name, param in runbook.params.items():
        if name in given and given[name] is None and param.default is None and not param.required:
            # Unset, as a run records a param left at its null default (resume passes the
            # run's recorded params back through here).
            values[name] = None
        elif name in given:
            try:
                values[name] = param.coerce(given[name])
            except ValueError as exc:
                raise UsageError(f"param {name}: {exc}") from None
        elif param.required:
            raise UsageError(f"runbook {runbook.name!r} needs param {name!r} (give -p {name}=...)")
        else:
            values[name] = param.default
    return values


def parse_param_args(pairs: Iterable[str]) -> dict[str, str]:
    """-p k=v pairs to a mapping; a pair without '=' is a usage error."""
    given: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"bad -p {pair!r}: use -p NAME=VALUE")
        given[key.strip()] = value
    return given


# --- rendering per target (show; later the planner) ----------------------------------------


class Deferred(str):
    """A value only known after an earlier step ran (a registered output), shown as such."""

    path: str

    def __new__(cls, path: str) -> Deferred:
        obj = super().__new__(cls, f"‹after apply: {path}›")
        obj.path = path
        return obj

    def __getattr__(self, attr: str) -> Deferred:
        if attr.startswith("_"):
            raise AttributeError(attr)
        return Deferred(f"{self.path}.{attr}")

    def __getitem__(self, key: Any) -> Deferred:
        return Deferred(f"{self.path}[{key!r}]")


@dataclass
class RenderedStep:
    section: str
    id: str
    action: str
    risk: Risk
    description: str
    args: dict[str, Any]
    when: str | bool | None = None
    confirm: str | None = None
    skipped: bool = False
    deferred: bool = False
    step: Step | None = None  # the runbook step this was rendered from
    instance: Action[Any] | None = None  # the action, when its args are known

    def as_dict(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "id": self.id,
            "action": self.action,
            "risk": self.risk.value,
            "description": self.description,
            "args": self.args,
            "when": self.when,
            "confirm": self.confirm,
            "skipped": self.skipped,
            "deferred": self.deferred,
        }


def target_context(target: Target) -> dict[str, Any]:
    """`target` as templates see it, with each service's health check made concrete."""
    ctx = target.model_dump(mode="json", by_alias=True)
    health = []
    for name, service in target.services.items():
        if service.health is None:
            continue
        h = service.health
        port = h.port or service.port
        path = h.path_or_default()
        url = h.url or (f"{h.scheme}://{target.address}:{port}{path}" if port else None)
        health.append(
            {
                "service": name,
                "check": h.check,
                "url": url,
                "host": target.address,
                "port": port,
                "method": h.method,
                "expect": h.expect,
                "json": h.json_match,
                "contains": h.contains,
                "banner": h.banner,
                "tls": h.tls.model_dump(),
                "via": h.via,
                "bearer": h.bearer,
                "min_tools": 1 if h.min_tools is None else h.min_tools,
                "tools": list(h.tools),
            }
        )
    ctx["health"] = health
    return ctx


def base_context(
    loaded: LoadedRunbook,
    params: Mapping[str, Any],
    target: Target,
    secrets: Mapping[str, str | None],
    run: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What every template of a target sees; `run` while it runs (opskit.runcontext), else
    the run's id, start and failure are known only after apply."""
    rb = loaded.runbook
    if run is None:
        run = {"id": Deferred("run.id"), "started": Deferred("run.started"), "previous": None}
    return {
        "params": dict(params),
        "secrets": dict(secrets),
        "target": target_context(target),
        "vars": overridden(rb.vars, target.vars),
        "runbook": {"name": rb.name, "description": rb.description},
        "run": dict(run),
        render.FAILURE_NAME: Deferred(render.FAILURE_NAME),
    }


def overridden(defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A runbook's vars with the inventory's values for the same names (host over group over
    inventory, as `target.vars` merges them); mappings merge key by key."""
    merged = dict(defaults)
    for key, value in overrides.items():
        if key not in merged:
            continue
        if isinstance(merged[key], Mapping) and isinstance(value, Mapping):
            merged[key] = overridden(merged[key], value) | {
                k: v for k, v in value.items() if k not in merged[key]
            }
        else:
            merged[key] = value
    return merged


def render_target(
    loaded: LoadedRunbook,
    params: Mapping[str, Any],
    target: Target,
    catalog: Mapping[str, type[Action[Any]]],
    secrets: Mapping[str, str | None] | None = None,
    run: Mapping[str, Any] | None = None,
) -> list[RenderedStep]:
    """Every step for one target, registered outputs deferred, secrets as placeholders (or
    as `secrets` gives them: the values a plan's probes log in with)."""
    from .secrets import absent, placeholder

    rb = loaded.runbook
    if secrets is None:
        secrets = {n: None if absent(ref) else placeholder(n) for n, ref in rb.secrets.items()}
    context = base_context(loaded, params, target, secrets, run)
    out: list[RenderedStep] = []
    for section, i, step in rb.all_steps():
        try:
            out += render_step(section, step, context, catalog)
        except RenderError as exc:
            line, col, _ = loaded.source.position((section, i))
            raise RenderError(
                f"{loaded.source.file}:{line}:{col}: step {step.id!r} on {target.label()}: {exc}"
            ) from None
        if step.register_as:
            context[step.register_as] = Deferred(step.register_as)
    return out


def render_step(
    section: str, step: Step, context: dict[str, Any], catalog: Mapping[str, type[Action[Any]]]
) -> list[RenderedStep]:
    action_cls = catalog[step.action]
    if step.loop is None:
        items: list[tuple[str, dict[str, Any]]] = [(step.id, context)]
    else:
        raw = step.loop
        values = (
            render.render_value(raw, context)
            if isinstance(raw, list) or render.is_template(raw)
            else render.evaluate(raw, context)
        )
        if not isinstance(values, list | tuple):
            raise RenderError(f"loop must give a list, got {type(values).__name__}")
        items = [
            (f"{step.id}[{_item_label(v, n)}]", {**context, "item": v})
            for n, v in enumerate(values)
        ]
    out = []
    for step_id, ctx in items:
        when: str | bool | None = step.when
        skipped = False
        if isinstance(step.when, str):
            if _reads_deferred(step.when, ctx):
                when = step.when  # decided at run time, from an earlier step's outputs
            else:
                when = bool(render.evaluate(step.when, ctx))
                skipped = not when
        elif step.when is False:
            skipped = True
        args = render.render_args(step.args, ctx, action_cls.Args)
        deferred = _has_deferred(args)
        description = step.action
        action = None
        if not deferred:
            try:
                action = action_cls(action_cls.Args.model_validate(args))
            except ValidationError as exc:
                first = exc.errors()[0]
                loc = ".".join(str(p) for p in first["loc"])
                raise RenderError(f"{step.action} {loc}: {first['msg']}") from None
            description = action.describe()
        confirm = None
        if step.confirm:
            confirm = (
                render.render_text(step.confirm, ctx)
                if isinstance(step.confirm, str)
                else f"Run {step_id}?"
            )
        out.append(
            RenderedStep(
                section=section,
                id=step_id,
                action=step.action,
                risk=action_cls.risk,
                description=description,
                args=args,
                when=when,
                confirm=confirm,
                skipped=skipped,
                deferred=deferred,
                step=step,
                instance=action,
            )
        )
    return out


@lru_cache(maxsize=512)
def _names_in(expression: str) -> frozenset[str]:
    names, _ = render.template_references(expression, True)
    return frozenset(names)


def _reads_deferred(expression: str, context: Mapping[str, Any]) -> bool:
    return any(isinstance(context.get(name), Deferred) for name in _names_in(expression))


def _item_label(item: Any, index: int) -> str:
    if isinstance(item, Mapping):
        for key in ("name", "service", "id"):
            if isinstance(item.get(key), str | int):
                return str(item[key])
    if isinstance(item, str | int) and len(str(item)) <= 40:
        return str(item)
    return str(index)


def deferred_names(value: Any) -> list[str]:
    """What a rendered value waits for (`run.started`, `snap.name`), in order, once each."""
    import re

    found = re.findall(
        r"‹after apply: ([^›]+)›", json.dumps(value, default=str, ensure_ascii=False)
    )
    return list(dict.fromkeys(found))


def _has_deferred(value: Any) -> bool:
    if isinstance(value, Deferred):
        return True
    if isinstance(value, str):
        return "‹after apply: " in value
    if isinstance(value, list):
        return any(_has_deferred(v) for v in value)
    if isinstance(value, dict):
        return any(_has_deferred(v) for v in value.values())
    return False


def targets_for(
    loaded: LoadedRunbook, inventory: Inventory, limit: str | None = None
) -> list[Target]:
    try:
        return inventory.targets(loaded.runbook.targets, limit)
    except SelectorError as exc:
        raise UsageError(f"--limit: {exc}") from None


__all__ = [
    "LoadedRunbook",
    "OpskitError",
    "RenderedStep",
    "Workspace",
    "parse_param_args",
    "render_target",
    "resolve_params",
]
