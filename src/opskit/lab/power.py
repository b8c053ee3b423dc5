"""A lab host's power: boot it and halt it, as the power state of its Proxmox guest says.

A lab host is a process tree in namespaces of its own: `ip netns exec NETNS unshare ...` runs
the host's boot script (hosts/NAME/boot.sh, written by `lab up`), which mounts its overlays,
a fresh /tmp and /run, its boot ID, starts the units enabled in the lab and ends as its sshd,
the first process of the host's PID namespace. Halting the host kills that process: the kernel
then ends every process of the namespace (its sshd, units, SSH sessions), and with the last of
them its mount namespace and overlays go. Booting it again starts the script anew.

Both `lab up` and the lab's Proxmox (opskit.lab.pve, when a guest starts, stops or reboots) call
these, so the record of a host's power lives in files beside its layers, not in one process:

    hosts/NAME/boot.sh    the boot script
    hosts/NAME/boot_id    this boot's ID, bound over /proc/sys/kernel/random/boot_id
    hosts/NAME/pid        the running host's first process (outside its namespaces)
    hosts/NAME/power      "on" or "off"
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

from ..errors import PowerError

# --kill-child: the host's first process gets SIGKILL when unshare dies, so killing either
# of the two ends the whole host.
UNSHARE = (
    "unshare",
    "--mount",
    "--uts",
    "--pid",
    "--fork",
    "--kill-child",
    "--mount-proc",
    "--propagation",
    "private",
)
HALT_TIMEOUT = 10.0


def host_dir(root: Path, name: str) -> Path:
    return root / "hosts" / name


def boot_id_file(root: Path, name: str) -> Path:
    return host_dir(root, name) / "boot_id"


def boot(root: Path, name: str, netns: str) -> int:
    """Start the host (a new boot ID first); returns the pid of its outermost process."""
    folder = host_dir(root, name)
    script = (folder / "boot.sh").read_text()
    boot_id_file(root, name).write_text(f"{uuid.uuid4()}\n")
    log = open(root / "logs" / f"host-{name}.log", "ab")  # noqa: SIM115 - the child keeps it
    try:
        process = subprocess.Popen(
            ["ip", "netns", "exec", netns, *UNSHARE, "sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()
    # Reaped by whoever started it while that process lives (fakepve boots hosts many times).
    threading.Thread(target=process.wait, daemon=True).start()
    _write(folder / "pid", f"{process.pid}\n")
    _write(folder / "power", "on\n")
    return process.pid


def halt(root: Path, name: str, timeout: float = HALT_TIMEOUT) -> None:
    """Power the host off: every process of it ended, its mounts gone, before this returns."""
    folder = host_dir(root, name)
    _write(folder / "power", "off\n")
    pid = current_pid(root, name)
    if pid is not None:
        first = children(pid)
        for victim in (*first, pid):
            with contextlib.suppress(OSError):
                os.kill(victim, signal.SIGKILL)
        # The first process of a PID namespace exits only after every other one of it has,
        # so once it is gone (or a zombie) nothing of the host runs.
        deadline = time.monotonic() + timeout
        while any(alive(p) for p in (*first, pid)):
            if time.monotonic() > deadline:
                raise PowerError(f"lab host {name} did not power off within {timeout:g}s")
            time.sleep(0.01)
    with contextlib.suppress(FileNotFoundError):
        (folder / "pid").unlink()


def current_pid(root: Path, name: str) -> int | None:
    """The running host's outermost process; None when it is not running. A recorded pid
    counts only while its command line is this host's boot (a pid can be reused)."""
    try:
        pid = int((host_dir(root, name) / "pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if runs(pid, str(host_dir(root, name))) else None


def runs(pid: int | None, mark: str) -> bool:
    """Whether `pid` is alive and its command line mentions `mark` (a lab path)."""
    if not alive(pid):
        return False
    try:
        return mark in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def powered_off(root: Path, name: str) -> bool:
    """Whether the lab's Proxmox (or `halt`) turned the host off."""
    try:
        return (host_dir(root, name) / "power").read_text().strip() == "off"
    except OSError:
        return False


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def alive(pid: int | None) -> bool:
    """A process that exists and is not a zombie."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(") ", 1)[-1][:1] not in ("Z", "X")


def _write(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(text)
    temporary.replace(path)
