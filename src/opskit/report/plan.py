"""A plan for review: text for the console, Markdown for a pull request, JSON for machines."""

from __future__ import annotations

import json
from typing import Any

from ..model import ChangeKind, Risk
from ..model.plan import Plan, PlannedStep
from ..secrets import redactor
from . import counted


def render_plan(plan: Plan, fmt: str) -> str:
    if fmt == "json":
        text = plan.model_dump_json(indent=2)
    elif fmt == "md":
        text = markdown(plan)
    else:
        text = plain(plan)
    return redactor.redact(text)


def summary_line(plan: Plan) -> str:
    c = plan.counts()
    parts = [f"{c['create']} to create", f"{c['update']} to update", f"{c['delete']} to delete"]
    if c["unknown"]:
        parts.append(f"{c['unknown']} known after apply")
    parts.append(counted(c["check"], "check"))
    if c["none"]:
        parts.append(f"{c['none']} unchanged")
    gates = len(plan.gates())
    if gates:
        parts.append(f"{gates} gated")
    if c["handlers"]:
        parts.append(counted(c["handlers"], "handler") + " (run only if a step fails)")
    if c["blocked"]:
        parts.append(counted(len(plan.blockers()), "blocker") + ": it cannot run")
    return "Plan: " + ", ".join(parts) + "."


def nothing_to_do(plan: Plan) -> bool:
    c = plan.counts()
    return not (c["create"] or c["update"] or c["delete"] or c["unknown"])


def _mark(step: PlannedStep) -> str:
    if step.skipped:
        return " "
    if step.risk is Risk.READ:
        return "="
    return step.change.kind.mark


def _line(step: PlannedStep) -> str:
    where = "" if step.section == "steps" else f"{step.section}/"
    what = step.change.summary
    extra = []
    if step.gate:
        extra.append(f"gate: {step.gate}")
    if step.risk is Risk.DESTRUCTIVE and not step.skipped:
        extra.append("destructive")
    if isinstance(step.when, str):
        extra.append(f"when {step.when}")
    for blocker in step.change.blockers:
        extra.append(f"BLOCKED: {blocker}")
    tail = f"  [{'; '.join(extra)}]" if extra else ""
    return f"{_mark(step)} {where}{step.id}  {step.action}: {what}{tail}"


def plain(plan: Plan) -> str:
    lines = [
        f"opskit plan for {plan.runbook} ({plan.runbook_file.path})",
        f"params: {_params(plan)}" if plan.params else "params: none",
        counted(len(plan.targets), "target") + (f" (limit {plan.limit})" if plan.limit else ""),
        "",
        "  + create   ~ update   - delete   ? known after apply   = check",
    ]
    for t in plan.targets:
        lines.append("")
        lines.append(t.label)
        if not t.steps:
            lines.append("    (nothing to do)")
        for s in t.steps:
            lines.append("  " + _line(s))
            diff = _diff(s)
            if diff:
                lines.extend("      " + d for d in diff)
    lines += ["", summary_line(plan), f"Fingerprint: {plan.fingerprint}"]
    return "\n".join(lines) + "\n"


def _params(plan: Plan) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in sorted(plan.params.items()))


def _diff(step: PlannedStep) -> list[str]:
    """A unified diff when before and after are texts; key changes when they are mappings."""
    before, after = step.change.before, step.change.after
    if step.change.kind is ChangeKind.NONE or (before is None and after is None):
        return []
    if isinstance(before, str | None) and isinstance(after, str | None):
        import difflib

        return [
            line.rstrip("\n")
            for line in difflib.unified_diff(
                (before or "").splitlines(True),
                (after or "").splitlines(True),
                "before",
                "after",
                n=2,
            )
        ]
    if isinstance(before, dict | None) and isinstance(after, dict | None):
        b, a = before or {}, after or {}
        out = []
        for key in sorted(set(b) | set(a), key=str):
            if b.get(key) != a.get(key):
                out.append(f"{key}: {_short(b.get(key))} -> {_short(a.get(key))}")
        return out
    return [f"{_short(before)} -> {_short(after)}"]


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(plan: Plan) -> str:
    """Deterministic Markdown: the same plan gives the same bytes, so two plans diff cleanly."""
    lines = [
        f"## opskit plan: `{plan.runbook}`",
        "",
        f"- runbook: `{plan.runbook_file.path}` (sha256 `{plan.runbook_file.sha256[:16]}`)",
        f"- inventory: `{plan.inventory_file.path}` (sha256 `{plan.inventory_file.sha256[:16]}`)",
        f"- opskit: {plan.opskit_version}",
        f"- params: {_md(_params(plan)) or 'none'}",
        f"- {counted(len(plan.targets), 'target')}"
        + (f" (limit `{plan.limit}`)" if plan.limit else ""),
        f"- fingerprint: `{plan.fingerprint}`",
        "",
        f"**{summary_line(plan)}**",
    ]
    for t in plan.targets:
        lines += ["", f"### {_md(t.label)}", ""]
        if not t.steps:
            lines.append("Nothing to do.")
            continue
        lines += ["| | step | action | change | notes |", "|---|---|---|---|---|"]
        for s in t.steps:
            notes = []
            if s.gate:
                notes.append(f"gate: {s.gate}")
            if s.skipped:
                notes.append("skipped")
            elif isinstance(s.when, str):
                notes.append(f"when {s.when}")
            notes += [f"**blocked**: {b}" for b in s.change.blockers]
            where = "" if s.section == "steps" else f"{s.section}/"
            lines.append(
                f"| `{_mark(s)}` | `{_md(where + s.id)}` | {s.action} | {_md(s.change.summary)}"
                f" | {_md('; '.join(notes))} |"
            )
        diffs = [(s, _diff(s)) for s in t.steps]
        for s, diff in diffs:
            if diff:
                lines += [
                    "",
                    f"<details><summary>{_md(s.id)}</summary>",
                    "",
                    "```diff",
                    *diff,
                    "```",
                    "",
                    "</details>",
                ]
    return "\n".join(lines) + "\n"
