"""Facts and operations opskit adds to pyinfra's: a file's exact content (for a plan's diff),
and a download checked against its sha256 before it takes a file's place."""

from __future__ import annotations

import base64
import shlex
from collections.abc import Generator

from pyinfra.api.command import QuoteString, StringCommand
from pyinfra.api.exceptions import OperationError
from pyinfra.api.facts import FactBase
from pyinfra.api.operation import operation
from pyinfra.context import host as current_host
from pyinfra.facts.files import File, Sha256File
from pyinfra.operations.util import files as file_utils
from typing_extensions import override


class FileBytes(FactBase[bytes | None]):
    """A file's exact content (base64 on the wire), or None when there is no such file."""

    @override
    def command(self, path: str) -> StringCommand:
        quoted = QuoteString(path)
        return StringCommand("if test -f", quoted, "; then echo B64; base64", quoted, "; fi")

    @override
    def process(self, output: list[str]) -> bytes | None:
        if not output or output[0] != "B64":
            return None
        return base64.b64decode("".join(output[1:]))


@operation()
def verified_download(
    src: str,
    dest: str,
    sha256sum: str,
    user: str | None = None,
    group: str | None = None,
    mode: str | int | None = None,
) -> Generator[StringCommand, None, None]:
    """
    Download a file, checked against its sha256 before it takes the place of `dest`.

    + src: the URL
    + dest: where it goes (absolute)
    + sha256sum: the sha256 it must have: a mismatch leaves nothing behind
    + user, group, mode: as files.put

    pyinfra's files.download moves the file into place first and checks after; this one
    downloads beside `dest`, checks, sets owner and mode, then renames.
    """
    info = current_host.get_fact(File, path=dest)
    if info is False:
        raise OperationError(f"{dest} exists and is not a file")
    wanted = file_utils.ensure_mode_int(mode)
    if info is None or current_host.get_fact(Sha256File, path=dest) != sha256sum:
        directory, _, name = dest.rpartition("/")
        temporary = f"{directory}/.{name}.opskit-download"
        yield StringCommand(
            f"if command -v curl >/dev/null 2>&1; then"
            f" curl -sSLf --connect-timeout 20 -o {shlex.quote(temporary)} {shlex.quote(src)};"
            f" elif command -v wget >/dev/null 2>&1; then"
            f" wget -q -T 20 -O {shlex.quote(temporary)} {shlex.quote(src)};"
            f" else echo 'neither curl nor wget is installed' >&2; false; fi"
            f" || {{ rm -f {shlex.quote(temporary)}; exit 1; }}"
        )
        yield StringCommand(
            f'got=$(sha256sum {shlex.quote(temporary)} | cut -d" " -f1);'
            f' if [ "$got" != {shlex.quote(sha256sum)} ]; then rm -f {shlex.quote(temporary)};'
            f' echo "sha256 mismatch for {src}: expected {sha256sum}, got $got" >&2; exit 1; fi'
        )
        if user or group:
            yield file_utils.chown(temporary, user, group)
        if wanted:
            yield file_utils.chmod(temporary, wanted)
        yield StringCommand("mv", "-f", QuoteString(temporary), QuoteString(dest))
        return
    if (user and info["user"] != user) or (group and info["group"] != group):
        yield file_utils.chown(dest, user, group)
    if wanted and info["mode"] != wanted:
        yield file_utils.chmod(dest, wanted)
