"""The wheelhouses the shipped runbooks install from, prepared while the controller is online.

`opskit lab up` runs in the machine's own network namespace, so it can reach the package index;
a `--lab` run cannot. So `up` fetches, once, the wheelhouse of every `python.venv` step of the
runbooks at its default version, for the lab hosts' interpreter (the machine's /usr/bin/python3:
the hosts share /usr). Also a command for operators:

    python -m opskit.lab.wheelhouse proxmox-mcp-plus==0.6.7 [--python 3.12 --machine aarch64]
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..clients.wheelhouse import (
    Interpreter,
    cache_dir,
    download,
    ready,
)
from ..errors import WheelhouseError

HOST_PYTHON = "/usr/bin/python3"
_PARAM = re.compile(r"^\s*\{\{\s*params\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}\s*$")


def runbooks_dir(inventory_path: Path) -> Path | None:
    """$OPSKIT_RUNBOOKS, else the runbooks/ of the project holding the inventory."""
    given = os.environ.get("OPSKIT_RUNBOOKS")
    if given:
        return Path(given)
    for directory in inventory_path.resolve().parents:
        if (directory / "runbooks").is_dir():
            return directory / "runbooks"
    return None


def wanted(directory: Path) -> Iterator[tuple[str, str]]:
    """(package, version) of every python.venv step at its default version."""
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe", pure=False)
    for path in sorted(directory.glob("*.y*ml")):
        try:
            doc = yaml.load(path.read_text(encoding="utf-8"))
        except Exception:  # a broken runbook is `opskit validate`'s to report, not the lab's
            continue
        if not isinstance(doc, dict):
            continue
        params = doc.get("params") or {}
        for section in ("preflight", "steps", "verify", "always", "handlers"):
            for step in doc.get(section) or []:
                args = step.get("python.venv") if isinstance(step, dict) else None
                if not isinstance(args, dict) or "package" not in args:
                    continue
                version = _default(args.get("version"), params)
                if version:
                    yield str(args["package"]), version


def _default(value: Any, params: dict[str, Any]) -> str | None:
    if value is None:
        return None
    match = _PARAM.match(str(value))
    if match is None:
        return None if "{" in str(value) else str(value)
    spec = params.get(match[1])
    if isinstance(spec, dict) and spec.get("default") is not None:
        return str(spec["default"])
    return None


def host_interpreter(python: str = HOST_PYTHON) -> Interpreter | None:
    try:
        done = subprocess.run(
            [
                python,
                "-c",
                "import sys,platform;print('%d.%d' % sys.version_info[:2], platform.machine())",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return Interpreter.parse(done.stdout)


def prepare(inventory_path: Path, say: Callable[[str], None] = print) -> list[Path]:
    """Every wheelhouse the runbooks need in the cache; problems are said, never raised (the
    step that needs a missing wheelhouse fails with the command that prepares it)."""
    directory = runbooks_dir(inventory_path)
    if directory is None:
        return []
    pairs = sorted(set(wanted(directory)))
    if not pairs:
        return []
    interpreter = host_interpreter()
    if interpreter is None:
        say(f"wheelhouse: no {HOST_PYTHON} for the lab hosts: python.venv steps will fail")
        return []
    prepared = []
    for package, version in pairs:
        where = cache_dir(package, version)
        if ready(where, package, version, interpreter):
            prepared.append(where)
            continue
        say(
            f"wheelhouse: downloading {package}=={version} for Python {interpreter.version}"
            f" ({interpreter.machine}) into {where}"
        )
        try:
            prepared.append(download(package, version, interpreter))
        except WheelhouseError as exc:
            say(f"wheelhouse: {exc}")
    return prepared


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m opskit.lab.wheelhouse",
        description="Download a package and its dependencies into opskit's wheelhouse cache.",
    )
    parser.add_argument("requirement", help="PACKAGE==VERSION")
    parser.add_argument("--python", help="the host's Python, e.g. 3.12 (default: this one)")
    parser.add_argument("--machine", help="the host's `uname -m` (default: this machine's)")
    args = parser.parse_args(argv)
    package, sep, version = args.requirement.partition("==")
    if not sep or not package or not version:
        parser.error("give the requirement as PACKAGE==VERSION")
    here = Interpreter.here()
    interpreter = Interpreter(args.python or here.version, args.machine or here.machine)
    try:
        where = download(package.strip(), version.strip(), interpreter)
    except WheelhouseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{package}=={version} for Python {interpreter.version} ({interpreter.machine}): {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
