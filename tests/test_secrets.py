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
