"""Files of opskit's own on this machine (a saved plan, systemd units, the inventory after a
sync, the run's open windows), written all or nothing: a full disk or a read-only directory
leaves the file as it was and ends in one LocalFileError (exit 74) naming it."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .errors import LocalFileError


def write_atomic(
    path: Path,
    text: str,
    *,
    what: str,
    mode: int | None = None,
    parents: bool = False,
    hint: str = "",
) -> None:
    """`text` in `path`, through a temporary file beside it, flushed to disk, renamed over it.
    A symlink is written through (its target replaced, the link kept), and what is not a
    regular file (/dev/stdout, a pipe) is written to as it is: renaming over it would replace
    the device, not feed it."""
    try:
        if path.exists() and not path.is_file():
            with open(path, "w", encoding="utf-8") as out:
                out.write(text)
            return
        if path.is_symlink():
            path = path.resolve()
        if parents:
            path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalFileError.of(what, path, exc, hint) from exc
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        said = OSError(exc.errno, exc.strerror)  # the file named is `path`, not its temporary
        raise LocalFileError.of(what, path, said, hint) from exc
