"""A Beszel release mirror for the lab, laid out as GitHub's release downloads are.

    DEST/v<version>/beszel-agent_linux_<arch>.tar.gz     the agent (`beszel-agent` inside)
    DEST/v<version>/beszel_<version>_checksums.txt       `sha256  file` lines, as sha256sum prints

The archived `beszel-agent` is a `#!/bin/sh` wrapper that runs the lab's stand-in agent
(`opskit.lab.beszel_agent`) with this Python. The bytes are deterministic: the same versions
and architectures give the same archives and checksums on every build.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import shlex
import sys
import tarfile
from collections.abc import Iterable
from pathlib import Path

ARCHES = ("amd64", "arm64", "armv7", "arm")
# A fixed timestamp (2025-01-01T00:00:00Z) for every archive member: deterministic bytes.
EPOCH = 1735689600
LICENSE = (
    "MIT License\n\nThe lab's stand-in for the Beszel agent (https://github.com/henrygd/beszel).\n"
)


def archive_name(arch: str) -> str:
    return f"beszel-agent_linux_{arch}.tar.gz"


def checksums_name(version: str) -> str:
    return f"beszel_{version}_checksums.txt"


def wrapper(version: str, arch: str, python: str | None = None) -> bytes:
    """The archived `beszel-agent`: runs the stand-in agent as `version`."""
    interpreter = shlex.quote(python or sys.executable)
    return (
        "#!/bin/sh\n"
        f"# opskit lab: stand-in for beszel-agent {version} (linux/{arch})\n"
        f"exec {interpreter} -m opskit.lab.beszel_agent --stand-in-version"
        f' {shlex.quote(version)} "$@"\n'
    ).encode()


def archive(version: str, arch: str, python: str | None = None) -> bytes:
    """A .tar.gz as the release has it: `beszel-agent` (0755) and the licence."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in (
            ("LICENSE", LICENSE.encode(), 0o644),
            ("beszel-agent", wrapper(version, arch, python), 0o755),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, EPOCH
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    packed = io.BytesIO()
    # mtime=0 and no file name in the gzip header: the same input, the same bytes
    with gzip.GzipFile(filename="", mode="wb", fileobj=packed, mtime=0) as gz:
        gz.write(raw.getvalue())
    return packed.getvalue()


def build_mirror(
    dest: Path, versions: list[str], archs: Iterable[str] = ARCHES, python: str | None = None
) -> None:
    """Write the archives and checksums files of `versions` under `dest` (kept if present)."""
    dest = Path(dest)
    arch_list = list(archs)
    for version in versions:
        version = version.lstrip("v")
        folder = dest / f"v{version}"
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for arch in arch_list:
            data = archive(version, arch, python)
            _write(folder / archive_name(arch), data)
            lines.append(f"{hashlib.sha256(data).hexdigest()}  {archive_name(arch)}\n")
        lines.sort(key=lambda line: line.split()[1])  # by file name, as goreleaser writes them
        _write(folder / checksums_name(version), "".join(lines).encode())


def _write(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    temporary.replace(path)
