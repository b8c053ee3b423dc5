"""One lock per target across processes: flock on a file that names its holder."""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ..errors import LocalFileError, LockError
from ..store import process_alive


def _file_name(target: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", target) + ".lock"


@dataclass
class Holder:
    run_id: str
    pid: int
    host: str
    since: float

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"run {self.run_id} (pid {self.pid} on {self.host}, since {when})"

    def dead(self) -> bool:
        return not process_alive(self.pid, self.host)


def _read_holder(handle: TextIO) -> Holder | None:
    handle.seek(0)
    try:
        data: dict[str, Any] = json.loads(handle.read() or "null") or {}
        return Holder(
            str(data["run_id"]), int(data["pid"]), str(data["host"]), float(data["since"])
        )
    except (ValueError, KeyError, TypeError):
        return None


class TargetLocks:
    """Locks held by this process for one run. The kernel frees them if the process dies."""

    def __init__(self, directory: Path, run_id: str, say: Callable[[str], None] = print) -> None:
        self.directory = directory
        self.run_id = run_id
        self.say = say
        self.held: dict[str, TextIO] = {}
        self.waited = False  # another run held one meanwhile (and may have changed its host)

    def acquire(self, targets: list[str], wait: float = 0.0) -> None:
        """Every target's lock (in sorted order, so two runs cannot deadlock), or LockError."""
        _allow_open_files(len(set(targets)) + 256)
        deadline = time.monotonic() + wait
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            for target in sorted(set(targets)):
                self._acquire_one(target, deadline, wait)
        except OSError as exc:
            self.release()
            where = getattr(exc, "filename", None) or self.directory
            raise LocalFileError.of("a target's lock", where, exc) from exc
        except BaseException:
            self.release()
            raise

    def _acquire_one(self, target: str, deadline: float, wait: float) -> None:
        path = self.directory / _file_name(target)
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release()
        announced = False
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _read_holder(handle)
                who = holder.describe() if holder else "another opskit process"
                if time.monotonic() >= deadline:
                    handle.close()
                    hint = f" after waiting {wait:g}s" if wait else " (wait with --lock-wait 5m)"
                    raise LockError(f"{target} is locked by {who}{hint}") from None
                if not announced:
                    self.say(f"waiting for the lock on {target}, held by {who}")
                    announced = self.waited = True
                time.sleep(0.2)
        previous = _read_holder(handle)
        if previous is not None and previous.dead():
            self.say(f"recovered the lock on {target} from {previous.describe()}, which died")
        handle.seek(0)
        handle.truncate()
        handle.write(
            json.dumps(
                {
                    "run_id": self.run_id,
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "since": time.time(),
                    "target": target,
                }
            )
        )
        handle.flush()
        self.held[target] = handle

    def release(self) -> None:
        for handle in self.held.values():
            try:
                handle.seek(0)
                handle.truncate()
                handle.flush()
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            finally:
                handle.close()
        self.held.clear()


def _allow_open_files(needed: int) -> None:
    """Each held lock keeps its file open: raise the soft limit towards the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if target > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            raise LockError(
                f"locking {needed - 256} targets needs {needed} open files; the limit is {hard}"
                " (raise it with ulimit -n, or run on fewer targets with --limit)"
            )


def unlock(directory: Path, target: str, force: bool = False) -> str:
    """Clear a target's lock: a dead holder's at once; a live holder's only with `force`."""
    path = directory / _file_name(target)
    if not path.exists():
        return f"{target}: not locked"
    with open(path, "a+", encoding="utf-8") as handle:
        holder = _read_holder(handle)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = holder.describe() if holder else "another opskit process"
            if not force:
                raise LockError(
                    f"{target} is locked by {who}, which is running;"
                    " stop it, or use --force to break the lock anyway"
                ) from None
            path.unlink()
            return f"{target}: broke the lock held by {who}"
        handle.seek(0)
        handle.truncate()
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    if holder is not None:
        return f"{target}: cleared the lock left by {holder.describe()}"
    return f"{target}: not locked"


def list_locks(directory: Path) -> list[tuple[str, Holder | None, bool]]:
    """(target file, holder, held now) for every lock file."""
    out = []
    for path in sorted(directory.glob("*.lock")) if directory.is_dir() else []:
        with open(path, "a+", encoding="utf-8") as handle:
            holder = _read_holder(handle)
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = False
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            except BlockingIOError:
                held = True
        out.append((path.stem, holder, held))
    return out
