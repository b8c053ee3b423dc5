"""Secret references (env:NAME, file:PATH, cmd:COMMAND), resolved late, and the one redactor."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path

from .errors import SecretError

# The smallest value the redactor hides: shorter strings would shred ordinary output.
MIN_SECRET_LENGTH = 4

# The marker a secret leaves where its value would be: `‹secret:NAME›`, built by `placeholder`
# and read by the functions below, here and nowhere else. Read raw or as JSON escapes it
# (`\u2039secret:NAME\u203a`, what `json.dumps` writes of it).
_MARKER = re.compile(r"(?:‹|\\u2039)secret:([^\s›\\]+?)(?:›|\\u203a)")


class Redactor:
    """Replaces every registered secret value, wherever it appears, by `‹secret:NAME›`.

    One redactor per process, shared by every sink: console, journal, plan files, logs, events.
    """

    def __init__(self) -> None:
        self._values: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, name: str, value: str) -> None:
        if len(value) < MIN_SECRET_LENGTH:
            return
        with self._lock:
            values = dict(self._values)
            values[value] = name
            for line in value.splitlines():
                if len(line) >= MIN_SECRET_LENGTH:
                    values.setdefault(line, name)
            # Longest first, so a secret containing another is hidden whole.
            self._values = dict(sorted(values.items(), key=lambda kv: -len(kv[0])))

    def redact(self, text: str) -> str:
        for value, name in self._values.items():
            if value in text:
                text = text.replace(value, placeholder(name))
        return text

    def __contains__(self, value: str) -> bool:
        return value in self._values

    def __bool__(self) -> bool:
        """Whether any secret is registered (nothing to hide otherwise)."""
        return bool(self._values)


redactor = Redactor()


def placeholder(name: str) -> str:
    """What a secret looks like in a plan, a `show` and every output: its name, never its value."""
    return f"‹secret:{name}›"


def marked(*texts: str | None) -> list[str]:
    """The names of the secrets whose markers stand in `texts` (values not known here), sorted."""
    return sorted({m.group(1) for text in texts if text for m in _MARKER.finditer(text)})


def has_marker(text: str) -> bool:
    """Whether a secret's marker stands in `text`."""
    return _MARKER.search(text) is not None


def marker_pattern(text: str) -> re.Pattern[str]:
    """`text` as a pattern in which each secret's marker matches any value."""
    return re.compile("(?:.+?)".join(re.escape(part) for part in _split(text)), re.S)


def replace_markers(text: str, by: str) -> str:
    """`text` with every secret's marker replaced by `by`."""
    return _MARKER.sub(by.replace("\\", "\\\\"), text)


def _split(text: str) -> list[str]:
    """The text between markers (the names left out)."""
    parts = _MARKER.split(text)
    return parts[0::2]


def resolve(name: str, ref: str, *, cwd: Path | None = None) -> str:
    """The value behind a reference; registered with the redactor before it is returned.
    Where a value must exist, `optional:` changes nothing."""
    scheme, _, rest = ref.removeprefix("optional:").partition(":")
    if scheme == "env":
        value = os.environ.get(rest)
        if value is None:
            raise SecretError(f"secret {name!r}: environment variable {rest} is not set")
    elif scheme == "file":
        path = Path(os.path.expanduser(rest))
        if cwd is not None and not path.is_absolute():
            path = cwd / path
        try:
            value = path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise SecretError(f"secret {name!r}: cannot read {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise SecretError(f"secret {name!r}: {path} is not UTF-8 text") from None
    elif scheme == "cmd":
        import subprocess

        try:
            done = subprocess.run(
                rest, shell=True, capture_output=True, text=True, timeout=60, cwd=cwd
            )
        except subprocess.TimeoutExpired:
            raise SecretError(f"secret {name!r}: command timed out after 60s") from None
        if done.returncode != 0:
            # stderr may hold part of the secret; say only that it failed.
            raise SecretError(f"secret {name!r}: command exited {done.returncode}")
        value = done.stdout.rstrip("\r\n")
    else:
        raise SecretError(
            f"secret {name!r}: bad reference (use env:NAME, file:PATH or cmd:COMMAND)"
        )
    if not value:
        raise SecretError(f"secret {name!r}: {scheme} reference gave an empty value")
    redactor.add(name, value)
    return value


def absent(ref: str, *, cwd: Path | None = None) -> bool:
    """An `optional:` reference with nothing behind it (asked without reading any value), so
    plans and `show` render it as null, as the run will."""
    if not ref.startswith("optional:"):
        return False
    scheme, _, rest = ref.removeprefix("optional:").partition(":")
    if scheme == "env":
        return not os.environ.get(rest)
    if scheme == "file":
        path = Path(os.path.expanduser(rest))
        return not (path if cwd is None or path.is_absolute() else cwd / path).exists()
    return False


def resolve_optional(name: str, ref: str, *, cwd: Path | None = None) -> str | None:
    """`optional:REF` gives None when the variable is unset or the file missing; a command
    that fails is still an error. Any other reference resolves as `resolve` does."""
    if absent(ref, cwd=cwd):
        return None
    return resolve(name, ref, cwd=cwd)


def resolve_all(refs: Mapping[str, str], *, cwd: Path | None = None) -> dict[str, str | None]:
    return {name: resolve_optional(name, ref, cwd=cwd) for name, ref in refs.items()}
