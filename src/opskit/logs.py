"""What opskit does over SSH and HTTP, told through `logging`: nothing of it by default.

`-v` (or OPSKIT_LOG=info) logs, on stderr, each SSH command (redacted) with its exit code and
time, each file written to a host, each HTTP request line with its status and time, and each
Proxmox task; `-vv` (OPSKIT_LOG=debug) adds what passes the read-only door, refused or not.
Every line goes through the one redactor first. stdout is never touched, so `--json` streams
stay pure JSON. The loggers are `opskit` (HTTP and the door), `opskit.ssh`, `opskit.proxmox`.
"""

from __future__ import annotations

import logging
import os
import sys

ENV = "OPSKIT_LOG"
_NAMES = {"": 0, "0": 0, "off": 0, "1": 1, "info": 1, "2": 2, "debug": 2}


class RedactingFormatter(logging.Formatter):
    """Formats as usual, then hides every registered secret value."""

    def format(self, record: logging.LogRecord) -> str:
        from .secrets import redactor

        return redactor.redact(super().format(record))


def verbosity_from_env() -> int:
    """OPSKIT_LOG as a verbosity: info or 1, debug or 2; anything else is off."""
    return _NAMES.get(os.environ.get(ENV, "").strip().lower(), 0)


def configure(verbosity: int) -> None:
    """Log at INFO (1) or DEBUG (2, and more) to stderr, as it is now; 0 (and OPSKIT_LOG unset)
    leaves logging off. A command re-run inside the lab gets the same flags, so it logs alike."""
    verbosity = max(verbosity, verbosity_from_env())
    if verbosity <= 0:
        return
    logger = logging.getLogger("opskit")
    for old in [h for h in logger.handlers if getattr(h, "opskit", False)]:
        logger.removeHandler(old)  # one handler, on this process's stderr of now
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("opskit: %(message)s"))
    handler.opskit = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbosity == 1 else logging.DEBUG)
    logger.propagate = False  # never twice, never through another tool's root handler
