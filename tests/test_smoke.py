"""The CLI answers and the shipped files validate (a first guard; detailed tests follow)."""

from opskit.cli import run


def test_validate_shipped_files(capsys):
    assert run(["validate"]) == 0
    out = capsys.readouterr().out
    assert "homelab.yaml" in out and "health.yaml" in out
