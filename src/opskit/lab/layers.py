"""Snapshots of a lab host's disk: copies of its copy-on-write layer, as Proxmox keeps them.

A lab host's "disk" is its upper layer (hosts/NAME/upper: everything the host changed over the
machine's /etc, /opt, /usr, /var, /srv, /root and /home). A snapshot copies it to
hosts/NAME/snapshots/SNAP/upper; a rollback puts that copy back while the host is powered off
(its overlays unmounted: changing a layer under a mounted overlay is undefined); deleting a
snapshot removes the copy. `cp -a` keeps what overlayfs keeps there: owners, modes, times,
whiteouts (character devices 0:0) and its trusted.overlay.* attributes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

from ..errors import LayerError
from .power import host_dir


def snapshot_dir(root: Path, host: str, snapshot: str) -> Path:
    if "/" in snapshot or snapshot in ("", ".", ".."):
        raise LayerError(f"bad snapshot name {snapshot!r}")
    return host_dir(root, host) / "snapshots" / snapshot


def take(root: Path, host: str, snapshot: str) -> Path:
    """Copy the host's upper layer as `snapshot` (replacing a stale copy of that name)."""
    target = snapshot_dir(root, host, snapshot)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    _copy(host_dir(root, host) / "upper", target / "upper")
    (target / "snapshot.json").write_text(
        json.dumps({"host": host, "snapshot": snapshot, "taken": time.time()}) + "\n"
    )
    return target


def restore(root: Path, host: str, snapshot: str) -> bool:
    """Put the copy of `snapshot` back as the host's upper layer (the host must be off);
    False when the lab has no copy of it (a snapshot taken before the lab copied layers)."""
    source = snapshot_dir(root, host, snapshot) / "upper"
    if not source.is_dir():
        return False
    folder = host_dir(root, host)
    upper, work = folder / "upper", folder / "work"
    discarded = folder / ".upper-discarded"
    if discarded.exists():
        shutil.rmtree(discarded)
    upper.rename(discarded)
    try:
        _copy(source, upper)
    except BaseException:
        if upper.exists():
            shutil.rmtree(upper)
        discarded.rename(upper)
        raise
    shutil.rmtree(discarded)
    # overlayfs's work directories belong to the layer they served: start them empty.
    for sub in work.iterdir() if work.is_dir() else ():
        shutil.rmtree(sub)
        sub.mkdir()
    return True


def delete(root: Path, host: str, snapshot: str) -> None:
    target = snapshot_dir(root, host, snapshot)
    if target.exists():
        shutil.rmtree(target)


def snapshots(root: Path, host: str) -> list[str]:
    folder = host_dir(root, host) / "snapshots"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _copy(source: Path, dest: Path) -> None:
    done = subprocess.run(
        ["cp", "-a", "--", str(source), str(dest)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise LayerError(f"cannot copy {source} to {dest}: {done.stderr.strip()[:300]}")
