"""What importing opskit pulls in: the CLI and `validate` must stay clear of the heavy clients.

Each check runs in a fresh interpreter (the one running the tests: the venv's), because this
process's sys.modules already holds whatever other tests imported.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import opskit.model

REPO_ROOT = Path(__file__).resolve().parent.parent
# Packages only `plan`/`run` need (SSH, pyinfra, HTTP), and rich (tables on a terminal only).
HEAVY = ("asyncssh", "pyinfra", "httpx")
MARKER = "@@modules@@"


def _fresh_modules(code: str) -> tuple[dict[str, object], str]:
    """Run `code` in a new interpreter from the repository root; (its report, its stdout).

    `code` may set `result` (a dict); the report is that dict plus `modules`, the sorted
    names in sys.modules when the code is done.
    """
    script = (
        "import json, sys\n"
        "result = {}\n"
        f"{code}\n"
        "result['modules'] = sorted(sys.modules)\n"
        "sys.stdout.flush()\n"
        f"print({MARKER!r} + json.dumps(result))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OPSKIT_RUNBOOKS", "OPSKIT_INVENTORY")}
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"subprocess failed ({proc.returncode}):\n{proc.stderr}"
    head, _, report = proc.stdout.rpartition(MARKER)
    return json.loads(report), head


def _loaded(modules: object, packages: tuple[str, ...]) -> list[str]:
    """The modules of `packages` (the packages themselves or anything under them) loaded."""
    assert isinstance(modules, list)
    return sorted(m for m in modules if m.split(".")[0] in packages)


def test_cli_import_is_light():
    report, _ = _fresh_modules("import opskit.cli")
    offending = _loaded(report["modules"], (*HEAVY, "rich"))
    assert not offending, f"`import opskit.cli` imports {', '.join(offending)}"


def test_validate_does_not_import_clients():
    report, out = _fresh_modules(
        "from opskit.cli import run\nresult['rc'] = run(['validate'])",
    )
    assert report["rc"] == 0, f"`opskit validate` returned {report['rc']}:\n{out}"
    assert "homelab.yaml" in out, out
    # nor an event loop, TLS or the journal: validating needs none of them
    offending = _loaded(report["modules"], (*HEAVY, "asyncio", "ssl", "sqlite3"))
    assert not offending, f"`opskit validate` imports {', '.join(offending)}"


def test_validate_lists_no_installed_packages_kinds():
    """Every kind the shipped runbooks use is opskit's own, looked up in opskit's metadata: no
    scan of every installed package's entry points (the list a misspelt kind's hint needs)."""
    report, out = _fresh_modules(
        "from opskit.cli import run\n"
        "from opskit import actions\n"
        "result['rc'] = run(['validate'])\n"
        "result['scans'] = actions._entry_points.cache_info().misses\n"
        "result['own'] = actions._own_entry_points.cache_info().misses",
    )
    assert report["rc"] == 0, f"`opskit validate` returned {report['rc']}:\n{out}"
    assert report["own"] == 1  # opskit's kinds: read once
    assert report["scans"] == 0


def test_explain_imports_no_client():
    """Explaining every kind imports every kind's module: none may import a client (or rich,
    when the output is not a terminal) to be explained."""
    report, out = _fresh_modules(
        "from opskit.cli import run\n"
        "result['rc'] = run(['explain']) + run(['explain', 'host.file'])",
    )
    assert report["rc"] == 0, out
    assert "host.file" in out, out
    offending = _loaded(report["modules"], (*HEAVY, "rich", "asyncio"))
    assert not offending, f"`opskit explain` imports {', '.join(offending)}"


def test_package_import_is_bare():
    report, _ = _fresh_modules("import opskit")
    offending = _loaded(report["modules"], ("pydantic", "click"))
    assert not offending, f"`import opskit` imports {', '.join(offending)}"


def _ruff_all_order(name: str) -> tuple[int, list[int | str]]:
    """The order ruff's RUF022 (selected in pyproject.toml) keeps `__all__` in: isort-style,
    SCREAMING_SNAKE_CASE, then CamelCase, then the rest, each in natural order.

    Plain sorted() would put "LOCAL" among the classes, and `ruff check --fix` would move it
    back: the test follows the linter so that the two can both pass.
    """
    if len(name) > 1 and name.isupper():
        kind = 0
    elif name[:1].isupper():
        kind = 1
    else:
        kind = 2
    natural = [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
    return kind, natural


def test_model_all_is_sorted_and_exists():
    names = list(opskit.model.__all__)
    expected = sorted(names, key=_ruff_all_order)
    assert names == expected, f"opskit.model.__all__ out of order; expected {expected}"
    assert len(set(names)) == len(names), "opskit.model.__all__ has duplicates"
    missing = [n for n in names if not hasattr(opskit.model, n)]
    assert not missing, f"opskit.model.__all__ names what the module lacks: {missing}"


def test_shipped_files_take_the_fast_yaml_path():
    """libyaml must accept every shipped file: the pure-Python fallback costs ~20 ms each
    (write flow-sequence items with a colon quoted: ["kind:qemu"])."""
    from ruamel.yaml import YAML

    files = [*(REPO_ROOT / "runbooks").glob("*.yaml"), REPO_ROOT / "inventory" / "homelab.yaml"]
    for path in files:
        yaml = YAML(typ="safe", pure=False)
        assert yaml.Parser.__name__ == "CParser", "libyaml (ruamel.yaml.clib) is missing"
        yaml.compose(path.read_text())  # raises if libyaml objects


def test_the_fast_paths_resolver_reads_as_ruamels_own():
    """The loader's resolver looks the YAML version up once per document: every scalar comes
    out as ruamel's own resolver reads it (YAML 1.2 by default, 1.1 under a directive)."""
    from ruamel.yaml import YAML

    from opskit.loader import _fixed_version_resolver, read_yaml

    docs = [
        "a: yes\nb: 0o17\nc: 017\nd: ~\ne: 1_000\nf: .inf\ng: 2001-12-14\nh: 0x1F\ni: -.5e3\n",
        "%YAML 1.1\n---\na: yes\nb: 0o17\nc: 017\nd: on\ne: 1_000\nf: 0b101\n",
        *(p.read_text() for p in (REPO_ROOT / "runbooks").glob("*.yaml")),
    ]
    for doc in docs:
        found = []
        for resolver in (None, _fixed_version_resolver()):
            yaml = YAML(typ="safe", pure=False)
            if resolver is not None:
                yaml.Resolver = resolver
            found.append(yaml.load(doc))
        assert found[0] == found[1]
    data, _ = read_yaml("x.yaml", docs[0])
    assert data["a"] == "yes" and data["b"] == 15 and data["c"] == 17 and data["d"] is None


def test_loading_ssh_prints_no_warning_of_asyncssh():
    # cryptography 51 warns each time asyncssh names its DSA classes (at import, and when a key
    # is sorted by type): five lines on stderr of every command that loads SSH. A key made,
    # exported and read back, and a known_hosts entry matched, go through those paths.
    code = (
        "import opskit.clients.ssh, asyncssh\n"
        "key = asyncssh.generate_private_key('ssh-ed25519')\n"
        "again = asyncssh.import_private_key(key.export_private_key())\n"
        "pub = asyncssh.import_public_key(again.export_public_key())\n"
        "line = b'h0 ' + pub.export_public_key('openssh')\n"
        "known = asyncssh.import_known_hosts(line.decode())\n"
        "assert known.match('h0', '', None)[0], 'the key is not matched'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "always", "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
