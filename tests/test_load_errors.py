"""Every class of user error in a runbook ends in file:line:col: message and exit 2."""

from __future__ import annotations

import re

import pytest

GOOD = """
name: demo
description: a good runbook
targets: vm:110
params:
  port: {type: int, default: 8811}
secrets:
  api_key: env:DEMO_API_KEY
steps:
  - id: livez
    check.http:
      url: "http://{{ target.address }}:{{ params.port }}/livez"
      bearer: "{{ secrets.api_key }}"
    retries: 3
    interval: 2s
"""

# (case, runbook text, expected line, expected col, message pattern)
CASES = [
    (
        "yaml syntax",
        "name: demo\ntargets: [vm:110\nsteps: []\n",
        3,
        6,
        r"YAML syntax",
    ),
    (
        "duplicate yaml key",
        "name: demo\nname: again\ntargets: all\nsteps:\n  - id: a\n    wait: {duration: 1s}\n",
        2,
        1,
        r"YAML syntax: .*duplicate key",
    ),
    (
        "schema: wrong type",
        GOOD.replace("retries: 3", "retries: many"),
        13,
        14,
        r"steps\[0\]\.retries: input should be a valid integer",
    ),
    (
        "schema: unknown key with did-you-mean",
        GOOD.replace("retries: 3", "retires: 3"),
        13,
        5,
        r"unknown key 'retires' \(did you mean 'retries'\?\)",
    ),
    (
        "schema: unknown top-level key",
        GOOD.replace("description:", "descripton:"),
        2,
        1,
        r"unknown key 'descripton' \(did you mean 'description'\?\)",
    ),
    (
        "schema: missing required key",
        GOOD.replace("targets: vm:110\n", ""),
        1,
        1,
        r"missing required key 'targets'",
    ),
    (
        "unknown action kind",
        GOOD.replace("check.http:", "check.htp:"),
        10,
        5,
        r"unknown action kind 'check.htp' \(did you mean 'check.http'\?\)",
    ),
    (
        "unknown action argument",
        GOOD.replace("bearer:", "barer:"),
        12,
        7,
        r"unknown key 'barer' \(did you mean 'bearer'\?\)",
    ),
    (
        "duplicate step id",
        GOOD + "  - id: livez\n    wait: {duration: 1s}\n",
        15,
        9,
        r"duplicate step id 'livez' \(also steps\[0\]\)",
    ),
    (
        "unknown target vmid",
        GOOD.replace("targets: vm:110", "targets: vm:999"),
        3,
        10,
        r"no guest with vmid 999",
    ),
    (
        "unknown target name",
        GOOD.replace("targets: vm:110", "targets: [ai, dcoker]"),
        3,
        10,
        r"unknown target 'dcoker' \(did you mean 'docker'\?\)",
    ),
    (
        "undefined param",
        GOOD.replace("params.port", "params.prot"),
        11,
        12,
        r"undefined param 'prot' \(did you mean 'port'\?\)",
    ),
    (
        "undefined secret",
        GOOD.replace("secrets.api_key", "secrets.apikey"),
        12,
        15,
        r"undefined secret 'apikey' \(did you mean 'api_key'\?\)",
    ),
    (
        "undefined variable",
        GOOD.replace("target.address", "traget.address"),
        11,
        12,
        r"undefined variable 'traget' \(did you mean 'target'\?\)",
    ),
    (
        "bad duration",
        GOOD.replace("interval: 2s", "interval: 5 minutes"),
        14,
        15,
        r"bad duration '5 minutes'",
    ),
    (
        "template syntax",
        GOOD.replace("{{ params.port }}", "{{ params.port }"),
        11,
        12,
        r"template syntax",
    ),
    (
        "unknown filter",
        GOOD.replace("{{ params.port }}", "{{ params.port | prot }}"),
        11,
        12,
        r"template: No filter named 'prot'",
    ),
    (
        "secret argument given as plain text",
        GOOD.replace('"{{ secrets.api_key }}"', "hunter2hunter2"),
        12,
        15,
        r"bearer must come from a secret",
    ),
    (
        "bad secret reference",
        GOOD.replace("env:DEMO_API_KEY", "vault:demo"),
        7,
        12,
        r"bad secret reference 'vault:demo'",
    ),
    (
        "bad argument type",
        GOOD.replace("bearer:", "expect: [ok]\n      bearer:"),
        12,
        15,
        r"steps\[0\]\.check\.http\.expect",
    ),
    (
        "not a mapping",
        "- just\n- a list\n",
        1,
        1,
        r"expected a mapping at the top, got a list",
    ),
    (
        "empty file",
        "",
        1,
        1,
        r"expected a mapping at the top, got empty",
    ),
]


@pytest.mark.parametrize(
    ("case", "text", "line", "col", "pattern"), CASES, ids=[c[0] for c in CASES]
)
def test_each_error_class_is_located(project, opskit, case, text, line, col, pattern):
    path = project.runbook("demo", text)
    result = opskit("validate", str(path), cwd=project.root)
    assert result.code == 2, result
    assert "Traceback" not in result.err
    first = result.err.splitlines()[0]
    match = re.match(r"^(.+):(\d+):(\d+): (.*)$", first)
    assert match, first
    assert match[1] == str(path)
    assert (int(match[2]), int(match[3])) == (line, col), first
    assert re.search(pattern, match[4]), first


def test_good_runbook_validates(project, opskit):
    path = project.runbook("demo", GOOD)
    result = opskit("validate", str(path), cwd=project.root)
    assert result.code == 0, result.err
    assert "1 steps, 1 targets" in result.out


def test_several_problems_are_all_reported(project, opskit):
    text = GOOD.replace("retries: 3", "retries: -1").replace("params.port", "params.nope")
    path = project.runbook("demo", text)
    result = opskit("validate", str(path), cwd=project.root)
    assert result.code == 2
    located = [line for line in result.err.splitlines() if line.startswith(str(path))]
    assert len(located) == 1  # schema problems stop before reference checks
    assert "retries" in located[0]


def test_run_commands_report_located_errors(project, opskit):
    project.runbook("demo", GOOD.replace("interval: 2s", "interval: 5 minutes"))
    result = opskit("show", "demo", cwd=project.root)
    assert result.code == 2
    assert re.match(r"^.+demo\.yaml:14:15: .*bad duration", result.err), result.err


def test_inventory_errors_are_located(project, opskit):
    inv = project.root / "inventory" / "homelab.yaml"
    inv.write_text(inv.read_text().replace("vmid: 102", "vmid: 100", 1))
    result = opskit("validate", cwd=project.root)
    assert result.code == 2
    assert re.search(
        r"homelab\.yaml:60:11: guests\[1\]\.vmid: duplicate vmid 100 \(also guests\[0\]\)",
        result.err,
    )


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("name: &x [*x]\n", "refers to a node containing itself"),
        (
            "a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
            "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
            "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n",
            "expands to more than",
        ),
        ("\x00\n", "YAML"),
        ("? [a, b]\n: c\n", "keys must be strings|unknown key"),
    ],
)
def test_hostile_yaml_is_a_load_error(project, opskit, text, pattern):
    path = project.runbooks / "evil.yaml"
    path.write_text(text)
    result = opskit("validate", str(path), cwd=project.root)
    assert result.code == 2, result
    assert "Traceback" not in result.err
    assert re.search(pattern, result.err), result.err


@pytest.mark.parametrize("kind", ["runbook", "inventory"])
def test_a_file_over_the_size_limit_is_refused_before_parsing(project, opskit, monkeypatch, kind):
    """A 50 MB runbook took 28 s of CPU to be refused by the node limit: now its size alone
    refuses it, and the parser never sees it."""
    import time

    from opskit import loader

    path = project.runbooks / "big.yaml" if kind == "runbook" else project.root / "big.yaml"
    line = "  - {id: s, wait: {duration: 1s}}\n"
    path.write_text("name: big\ntargets: all\nsteps:\n" + line * (50_000_000 // len(line)))

    def parse(*args, **kw):  # pragma: no cover - the point is that it is not called
        raise AssertionError("the parser was called")

    monkeypatch.setattr(loader, "_parse", parse)
    started = time.monotonic()
    with pytest.raises(loader.LoadError) as caught:
        if kind == "runbook":
            loader.load_runbook(path, ["wait"])
        else:
            loader.load_inventory(path)
    assert time.monotonic() - started < 2
    assert str(caught.value) == (
        f"{path}:1:1: file too large: 47.7 MiB, over the 2 MiB limit for a runbook or"
        " inventory (not parsed)"
    )
    monkeypatch.undo()
    # The same from the command line, as exit 2 with the located message.
    args = (
        ("validate", str(path))
        if kind == "runbook"
        else ("--inventory", str(path), "inventory", "list")
    )
    result = opskit(*args, cwd=project.root)
    assert result.code == 2, result
    assert "file too large" in result.err and "2 MiB limit" in result.err


def test_text_over_the_size_limit_is_refused_too():
    from opskit import loader

    with pytest.raises(loader.LoadError, match=r"file too large: 2\.0 MiB"):
        loader.read_yaml("given.yaml", "#" * (loader.MAX_BYTES + 1))
    data, _ = loader.read_yaml("given.yaml", "a: 1\n" + "#" * 1000 + "\n")
    assert data == {"a": 1}
