"""Secret references resolve late, fail clearly, and the redactor hides every value."""

from __future__ import annotations

import pytest

from opskit.errors import SecretError
from opskit.secrets import Redactor, placeholder, redactor, resolve


def test_env_file_and_cmd(tmp_path, monkeypatch):
    monkeypatch.setenv("OPSKIT_TEST_TOKEN", "s3cr3t-env")
    assert resolve("a", "env:OPSKIT_TEST_TOKEN") == "s3cr3t-env"
    (tmp_path / "token").write_text("s3cr3t-file\n")
    assert resolve("b", f"file:{tmp_path}/token") == "s3cr3t-file"
    assert resolve("c", "file:token", cwd=tmp_path) == "s3cr3t-file"
    assert resolve("d", "cmd:printf s3cr3t-cmd") == "s3cr3t-cmd"
    for value in ("s3cr3t-env", "s3cr3t-file", "s3cr3t-cmd"):
        assert value in redactor


def test_failures_are_clear_and_leak_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("OPSKIT_NOT_SET", raising=False)
    with pytest.raises(SecretError, match="OPSKIT_NOT_SET is not set"):
        resolve("a", "env:OPSKIT_NOT_SET")
    with pytest.raises(SecretError, match="cannot read"):
        resolve("b", f"file:{tmp_path}/missing")
    with pytest.raises(SecretError, match="exited 3") as info:
        resolve("c", "cmd:echo leaked-part >&2; exit 3")
    assert "leaked-part" not in str(info.value)
    with pytest.raises(SecretError, match="empty"):
        resolve("d", "cmd:true")


def test_redactor_hides_values_longest_first():
    r = Redactor()
    r.add("short", "abcd")
    r.add("long", "abcdefgh")
    r.add("tiny", "ab")  # too short to hide without shredding output
    text = r.redact("x abcdefgh y abcd z ab")
    assert text == f"x {placeholder('long')} y {placeholder('short')} z ab"


def test_redactor_hides_each_line_of_a_multiline_secret():
    r = Redactor()
    r.add("key", "-----BEGIN KEY-----\nAAAAsecretline\n-----END KEY-----")
    assert "AAAAsecretline" not in r.redact("log: AAAAsecretline")


def test_optional_references_give_none_when_missing(tmp_path, monkeypatch):
    from opskit.secrets import resolve_all

    monkeypatch.delenv("OPSKIT_NOT_SET", raising=False)
    monkeypatch.setenv("OPSKIT_SET", "s3cr3t-optional")
    (tmp_path / "here").write_text("s3cr3t-here\n")
    values = resolve_all(
        {
            "unset": "optional:env:OPSKIT_NOT_SET",
            "set": "optional:env:OPSKIT_SET",
            "no_file": f"optional:file:{tmp_path}/missing",
            "file": f"optional:file:{tmp_path}/here",
        }
    )
    assert values == {
        "unset": None,
        "set": "s3cr3t-optional",
        "no_file": None,
        "file": "s3cr3t-here",
    }
    assert "s3cr3t-optional" in redactor
    # A command that fails is still an error: optional means "may be absent", not "may break".
    with pytest.raises(SecretError, match="exited 1"):
        resolve_all({"broken": "optional:cmd:exit 1"})
    # Where a value must exist (the inventory's own references), optional: changes nothing.
    with pytest.raises(SecretError, match="OPSKIT_NOT_SET is not set"):
        resolve("token", "optional:env:OPSKIT_NOT_SET")


def test_optional_secret_reaches_an_action_as_null(project, opskit, monkeypatch):
    monkeypatch.delenv("OPSKIT_NOT_SET", raising=False)
    project.runbook(
        "opt",
        """
        name: opt
        targets: local
        secrets:
          maybe: optional:env:OPSKIT_NOT_SET
        steps:
          - id: without
            when: secrets.maybe is none
            wait: {duration: 0s}
          - id: with
            when: secrets.maybe is not none
            wait: {duration: 0s}
    """,
    )
    done = opskit("run", "opt", "--yes", cwd=project.root)
    assert done.code == 0, done.out + done.err
    assert "[local] without: ok" in done.out and "[local] with: skipped" in done.out
    monkeypatch.setenv("OPSKIT_NOT_SET", "now-set")
    done = opskit("run", "opt", "--yes", cwd=project.root)
    assert "[local] with: ok" in done.out and "[local] without: skipped" in done.out
    bad = opskit("validate", cwd=project.root)
    assert bad.code == 0
    project.runbook(
        "bad",
        """
        name: bad
        targets: local
        secrets: {x: "optional:nope:X"}
        steps:
          - {id: s, check.command: {cmd: "true"}}
    """,
    )
    refused = opskit("validate", cwd=project.root)
    assert refused.code == 2 and "bad secret reference" in refused.err


# --- the marker: built and read in secrets.py alone ---------------------------------------------


MARKER_CASES = [
    # text, names marked, whether a marker stands in it
    ("plain text", [], False),
    ("token=‹secret:api_key›", ["api_key"], True),
    ('{"v": "\\u2039secret:proxmox.pve.token\\u203a"}', ["proxmox.pve.token"], True),
    ("‹secret:b› and ‹secret:a› and ‹secret:b›", ["a", "b"], True),
    ("‹secret:›", [], False),  # no name: no marker
    ("‹secret:with space›", [], False),
]


@pytest.mark.parametrize(("text", "names", "present"), MARKER_CASES)
def test_the_marker_is_read_raw_and_json_escaped(
    text: str, names: list[str], present: bool
) -> None:
    from opskit.secrets import has_marker, marked

    assert marked(text) == names
    assert has_marker(text) is present


def test_a_marker_built_is_a_marker_read_and_the_redactor_writes_it() -> None:
    import json

    from opskit.secrets import marked, marker_pattern, placeholder, redactor, replace_markers

    assert marked(placeholder("hub_password")) == ["hub_password"]
    assert marked(json.dumps({"x": placeholder("k.v")})) == ["k.v"]
    redactor.add("marker_test", "v4lue-0f-the-s3cret")
    assert marked(redactor.redact("a v4lue-0f-the-s3cret b")) == ["marker_test"]
    wanted = f"KEY={placeholder('key')}\nPORT=1\n"
    assert marker_pattern(wanted).fullmatch("KEY=anything at all\nPORT=1\n")
    assert not marker_pattern(wanted).fullmatch("KEY=x\nPORT=2\n")
    assert replace_markers(wanted, r"‹old \1›") == "KEY=‹old \\1›\nPORT=1\n"


def test_no_module_but_secrets_builds_or_parses_the_marker() -> None:
    """One marker: `secret:` with its angle quote appears in no other module's code."""
    import re
    from pathlib import Path

    src = Path(__file__).resolve().parent.parent / "src" / "opskit"
    found = []
    for path in sorted(src.rglob("*.py")):
        if path.name == "secrets.py" and path.parent == src:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"(‹|\\u2039|\\\\u2039)secret:", code) and "`‹secret:" not in code:
                found.append(f"{path.relative_to(src)}:{n}: {line.strip()}")
    assert found == []
