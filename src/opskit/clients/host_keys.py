"""Host keys: which keys a host may present (pinned in the inventory, the user's known_hosts,
opskit's own), checked on every connection; trust on first use only when asked."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncssh

    from .ssh import Endpoint


def fingerprint(key: asyncssh.SSHKey) -> str:
    return str(key.get_fingerprint("sha256"))


class HostKeys:
    """Trust: keys pinned in the inventory, the user's known_hosts, opskit's own known_hosts.

    An unknown host is refused unless `tofu` (trust on first use), which records its key in
    opskit's known_hosts; a key that differs from a known one is always refused."""

    def __init__(
        self, opskit_file: Path, *, user_files: list[Path] | None = None, tofu: bool = False
    ) -> None:
        self.opskit_file = opskit_file
        self.user_files = (
            user_files if user_files is not None else [Path("~/.ssh/known_hosts").expanduser()]
        )
        self.tofu = tofu
        self.problems: dict[str, str] = {}
        # The files as last read, and when: each is read again once it changed (a key recorded,
        # an edit), so 50 hosts cost one parse of known_hosts rather than 50.
        self._read: tuple[tuple[tuple[str, int, int], ...], asyncssh.SSHKnownHosts] | None = None

    def _files(self) -> list[tuple[str, int, int]]:
        """(path, mtime ns, size) of each known_hosts file there is."""
        found = []
        for path in [*self.user_files, self.opskit_file]:
            try:
                st = path.stat()
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                found.append((str(path), st.st_mtime_ns, st.st_size))
        return found

    def _known_hosts(self) -> asyncssh.SSHKnownHosts | None:
        import asyncssh

        files = tuple(self._files())
        if not files:
            return None
        if self._read is None or self._read[0] != files:
            self._read = (files, asyncssh.read_known_hosts([f[0] for f in files]))
        return self._read[1]

    def known(self, endpoint: Endpoint, addr: str, port: int) -> list[asyncssh.SSHKey]:
        import asyncssh

        keys: list[asyncssh.SSHKey] = []
        if endpoint.pinned:
            keys.append(asyncssh.import_public_key(endpoint.pinned))
        known_hosts = self._known_hosts()
        if known_hosts is not None:
            found = known_hosts.match(endpoint.host, addr, port if port != 22 else None)
            keys.extend(found[0])
        return keys

    def verify(self, endpoint: Endpoint, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        known = self.known(endpoint, addr, port)
        presented = fingerprint(key)
        if any(k == key for k in known):
            return True
        if known:
            listed = ", ".join(sorted({fingerprint(k) for k in known}))
            self.problems[endpoint.name] = (
                f"{endpoint.where()}: HOST KEY CHANGED: it presents {presented}, but the known"
                f" key is {listed}. Someone may be intercepting the connection; if the host was"
                " reinstalled, remove the old key and connect again"
            )
            return False
        if self.tofu:
            self.record(endpoint, port, key)
            return True
        self.problems[endpoint.name] = (
            f"{endpoint.where()}: unknown host key {presented}: pin it in the inventory"
            " (ssh.host_key), add it to known_hosts, or connect once with --trust-on-first-use"
        )
        return False

    def record(self, endpoint: Endpoint, port: int, key: asyncssh.SSHKey) -> None:
        self.opskit_file.parent.mkdir(parents=True, exist_ok=True)
        host = endpoint.host if port == 22 else f"[{endpoint.host}]:{port}"
        line = f"{host} {key.export_public_key('openssh').decode().strip()}\n"
        with open(self.opskit_file, "a", encoding="utf-8") as handle:
            handle.write(line)
        self._read = None  # read again next time, whatever the file's time says
