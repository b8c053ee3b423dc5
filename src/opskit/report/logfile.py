"""A log of opskit's own (the run's log, a target's log) that a full disk or a lost permission
does not turn into the run's failure: the first write that fails ends that log, said once, and
the run goes on; the terminal, the `--json` stream and the journal still have every step."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from ..errors import LocalFileError


class LogFile:
    """Appended to, opened at its first line (its directory made then)."""

    def __init__(self, path: Path, lost: Callable[[str], None]) -> None:
        self.path = path
        self._lost = lost  # told once, in a sentence, when the log could not be written
        self._file: TextIO | None = None
        self.broken = False

    def write(self, text: str, *, flush: bool = False) -> None:
        if self.broken:
            return
        try:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - close()
            self._file.write(text)
            if flush:
                self._file.flush()
        except OSError as exc:
            self._broke(exc)

    def flush(self) -> None:
        if self._file is not None and not self.broken:
            try:
                self._file.flush()
            except OSError as exc:
                self._broke(exc)

    def close(self) -> None:
        if self._file is not None:
            # What a full disk kept in the buffer is lost with it: said when it failed.
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def _broke(self, exc: OSError) -> None:
        self.broken = True
        self.close()
        error = LocalFileError.of("the log", self.path, exc)
        self._lost(f"{error}; the run goes on without that log (the journal has every step)")
