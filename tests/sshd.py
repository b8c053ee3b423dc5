"""Real OpenSSH sshd on loopback addresses, for tests and benchmarks.

One sshd process listens on up to 15 addresses (OpenSSH binds at most 16 sockets); each address
is a separate "host" to opskit. A throwaway host key, an authorized client key, root login.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
PER_PROCESS = 15


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def keygen(path: Path, kind: str = "ed25519") -> str:
    """A key pair at path (and path.pub); returns the public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "opskit-test", "-f", str(path)],
        check=True,
    )
    return Path(str(path) + ".pub").read_text().strip()


class Sshd:
    """sshd processes serving `addresses` on one port; stop() ends them."""

    def __init__(
        self,
        root: Path,
        addresses: list[str],
        *,
        port: int | None = None,
        host_key: Path | None = None,
        client_pub: str | None = None,
        log: Path | None = None,
        login_rc: bool = False,
    ) -> None:
        self.root = root
        # sshd runs every command through the login shell, and Debian's bash then reads
        # ~/.bashrc (even for `sh -c ...`): on a development machine that may be anything (on
        # ours root's runs `pyenv init`, 0.1 s of CPU and 100 processes a session channel). So
        # sshd sets SHLVL=1 and bash, counting itself nested, reads none, as on a fresh Debian
        # host, whose ~/.bashrc does as little. login_rc: read it, as the machine has it.
        self.login_rc = login_rc
        # sshd's logs (LogLevel VERBOSE), one per process (LOG.N), where `logins()` counts
        # the SSH handshakes; with a log, each address gets an sshd process of its own, so
        # that each handshake is known to be that address's (sshd logs the client's port,
        # and one client port may serve connections to two loopback addresses at once).
        self.log = log
        self.per_process = PER_PROCESS if log is None else 1
        self.logs: dict[str, Path] = {}  # address -> its process's log
        self.addresses = addresses
        self.port = port or free_port(addresses[0])
        root.mkdir(parents=True, exist_ok=True)
        if host_key is None:
            host_key = root / "host_ed25519"
            keygen(host_key)
        self.host_key = host_key
        self.host_pub = Path(str(host_key) + ".pub").read_text().strip()
        if client_pub is None:
            self.client_key = root / "client_ed25519"
            client_pub = keygen(self.client_key)
        else:
            self.client_key = None  # type: ignore[assignment]
        (root / "authorized_keys").write_text(client_pub + "\n")
        os.chmod(root / "authorized_keys", 0o600)
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def pinned(self) -> str:
        """'TYPE BASE64' of the host key, as the inventory pins it."""
        kind, data, *_ = self.host_pub.split()
        return f"{kind} {data}"

    def start(self) -> Sshd:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege separation dir
        for n in range(0, len(self.addresses), self.per_process):
            group = self.addresses[n : n + self.per_process]
            config = self.root / f"sshd_config.{n}"
            listen = "".join(f"ListenAddress {a}\n" for a in group)
            config.write_text(
                f"Port {self.port}\n{listen}"
                f"HostKey {self.host_key}\n"
                f"AuthorizedKeysFile {self.root}/authorized_keys\n"
                f"PidFile {self.root}/sshd.{n}.pid\n"
                "StrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                "MaxSessions 100\nMaxStartups 1000\n"
                f"LogLevel {'ERROR' if self.log is None else 'VERBOSE'}\n"
                "Subsystem sftp internal-sftp\nAcceptEnv LANG LC_*\n"
                + ("" if self.login_rc else "SetEnv SHLVL=1\n")
            )
            logging = ["-e"]
            if self.log is not None:
                self.logs[group[0]] = self.log.with_name(f"{self.log.name}.{n}")
                logging = ["-E", str(self.logs[group[0]])]
            self.processes.append(
                subprocess.Popen([SSHD, "-D", *logging, "-f", str(config)], stderr=subprocess.PIPE)
            )
        deadline = time.monotonic() + 10
        for address in self.addresses:
            while True:
                try:
                    socket.create_connection((address, self.port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(
                            f"sshd did not listen on {address}:{self.port}"
                        ) from None
                    time.sleep(0.05)
        return self

    def logins(self) -> dict[str, int]:
        """SSH handshakes that ended logged in, per address, from its sshd's log."""
        assert self.log is not None, "start sshd with log= to count its logins"
        return {
            address: log.read_text().count("Accepted publickey for ") if log.exists() else 0
            for address, log in self.logs.items()
        }

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes.clear()
