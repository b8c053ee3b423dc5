"""Wheelhouses: a package and its dependencies as wheels, fetched once on the controller.

A host installs from a wheelhouse offline (`pip install --no-index --find-links`), so it needs
no route to PyPI and every host gets exactly the same files. The cache lives in
`$XDG_CACHE_HOME/opskit/wheelhouse/<package>-<version>/` (default `~/.cache/...`); one directory
may hold wheels for several interpreters, and a marker per interpreter (`.complete-cp311-x86_64`)
says a download for it finished. Downloads go through the controller's own pip (its proxies,
index and certificates) and only while the controller is online: never from inside the lab.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import WheelhouseError

NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
VERSION = re.compile(r"^[0-9]+(\.[0-9]+)*([._+-]?[A-Za-z0-9]+)*$")
DOWNLOAD_TIMEOUT = 900.0  # seconds for the whole `pip download`
# manylinux_2_X tags a glibc host usually accepts; only used when the host's interpreter differs
# from the controller's (pip cannot ask the host which tags it supports).
GLIBC_MINORS = range(17, 40)


@dataclass(frozen=True)
class Interpreter:
    """The host's Python, as a wheelhouse needs to know it: `3.11` on `x86_64`."""

    version: str  # "3.11"
    machine: str  # uname -m: x86_64, aarch64, ...

    @property
    def tag(self) -> str:
        return f"cp{self.version.replace('.', '')}-{self.machine}"

    @classmethod
    def here(cls) -> Interpreter:
        import platform

        return cls(f"{sys.version_info[0]}.{sys.version_info[1]}", platform.machine())

    @classmethod
    def parse(cls, text: str) -> Interpreter:
        """From `3.11 x86_64` (what the host prints)."""
        parts = text.split()
        if len(parts) != 2 or not re.fullmatch(r"[0-9]+\.[0-9]+", parts[0]):
            raise WheelhouseError(f"cannot tell the host's Python from {text.strip()!r}")
        return cls(parts[0], parts[1])


def normalize(name: str) -> str:
    """PEP 503: the name as indexes and wheel files compare it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "opskit" / "wheelhouse"


def cache_dir(package: str, version: str) -> Path:
    return cache_root() / f"{normalize(package)}-{version}"


def marker(directory: Path, interpreter: Interpreter) -> Path:
    return directory / f".complete-{interpreter.tag}"


def holds(directory: Path, package: str, version: str) -> bool:
    """Whether the directory has a distribution of package==version (wheel or sdist)."""
    wanted = normalize(package).replace("-", "_")
    if not directory.is_dir():
        return False
    for path in directory.iterdir():
        stem = path.name.lower()
        for suffix in (".whl", ".tar.gz", ".zip"):
            if stem.endswith(suffix):
                parts = stem[: -len(suffix)].split("-")
                if (
                    len(parts) >= 2
                    and normalize(parts[0]).replace("-", "_") == wanted
                    and (parts[1] == version.lower())
                ):
                    return True
    return False


def ready(directory: Path, package: str, version: str, interpreter: Interpreter) -> bool:
    """A cached wheelhouse whose download for this interpreter finished."""
    return marker(directory, interpreter).exists() and holds(directory, package, version)


def can_download() -> bool:
    """Whether this process may reach the index: not inside the lab (`--lab` runs)."""
    return not os.environ.get("OPSKIT_LAB_ACTIVE")


def download_command(package: str, version: str, interpreter: Interpreter) -> str:
    """What an operator runs, while online, to prepare the cache for a host."""
    extra = ""
    if interpreter != Interpreter.here():
        extra = f" --python {interpreter.version} --machine {interpreter.machine}"
    return f"python -m opskit.lab.wheelhouse {normalize(package)}=={version}{extra}"


def download(
    package: str,
    version: str,
    interpreter: Interpreter,
    directory: Path | None = None,
    *,
    timeout: float = DOWNLOAD_TIMEOUT,
) -> Path:
    """Fetch package==version and its dependencies as wheels for `interpreter` into the cache
    (or `directory`); returns the directory. Raises WheelhouseError with pip's last words."""
    import shutil
    import tempfile

    if not NAME.match(package) or not VERSION.match(version):
        raise WheelhouseError(f"not a package and version: {package!r} {version!r}")
    if not can_download():
        how = download_command(package, version, interpreter)
        raise WheelhouseError(
            "cannot download inside the lab (it has no route out): prepare the wheelhouse"
            f" while online with  {how}  (opskit lab up does it for the shipped runbooks)"
        )
    target = directory or cache_dir(package, version)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--no-input",
            "--retries",
            "2",
            "--timeout",
            "30",
            "--dest",
            str(partial),
        ]
        same = interpreter == Interpreter.here()
        if not same:
            # Another interpreter: pip may only take wheels, for tags we name.
            command += [
                "--only-binary=:all:",
                "--implementation",
                "cp",
                "--python-version",
                interpreter.version,
            ]
            arch = interpreter.machine
            for minor in GLIBC_MINORS:
                command += ["--platform", f"manylinux_2_{minor}_{arch}"]
            command += ["--platform", f"manylinux2014_{arch}", "--platform", f"linux_{arch}"]
        command.append(f"{package}=={version}")
        _pip(command, timeout, f"pip download {package}=={version}")
        # An sdist would need build tools on the host: build it into a wheel here, once.
        sdists = [p for p in partial.iterdir() if p.name.endswith((".tar.gz", ".zip"))]
        if sdists and same:
            _pip(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "wheel",
                    "--disable-pip-version-check",
                    "--no-deps",
                    "--wheel-dir",
                    str(partial),
                    *map(str, sdists),
                ],
                timeout,
                f"building wheels for {', '.join(p.name for p in sdists)}",
            )
            for path in sdists:
                path.unlink()
        target.mkdir(exist_ok=True)
        for path in partial.iterdir():
            os.replace(path, target / path.name)
        marker(target, interpreter).write_text(f"{package}=={version}\n")
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def _pip(command: list[str], timeout: float, what: str) -> None:
    import subprocess

    env = {**os.environ, "PIP_NO_INPUT": "1"}
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise WheelhouseError(f"{what}: no result within {timeout:g}s") from None
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr or done.stdout).strip().splitlines() if ln.strip()]
        errors = [ln for ln in lines if "ERROR" in ln] or lines
        last = errors[-1].strip() if errors else f"exit {done.returncode}"
        raise WheelhouseError(f"{what} failed: {last[:300]}")
