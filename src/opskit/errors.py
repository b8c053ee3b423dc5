"""Every error a user can cause, and the exit code it ends in: the whole tree, each class here.

    OpskitError                      exit 1    base: a clear one-line message, never a traceback
    ├── UsageError                   exit 2    bad command line: unknown runbook, bad -p value
    │   └── OutsideLab               exit 2    the lab's inventory used outside the lab
    ├── LoadError                    exit 2    file:line:col: message (YAML, schema, references),
    │                                          one or more Problem(file, line, col, message)
    ├── RenderError                  exit 2    a template failed for a target (undefined, sandbox)
    ├── SecretError                  exit 2    a secret reference could not be resolved
    ├── GateError                    exit 3    a confirmation gate was declined or not approved
    ├── StalePlanError               exit 4    a saved plan no longer matches the world
    ├── LockError                    exit 5    a target is locked by another run
    ├── WindowClosed                 exit 6    a scheduled run outside its maintenance window
    ├── LocalFileError               exit 74   opskit's own files could not be written here (the
    │                                          state directory, journal, a plan file): disk full,
    │                                          read-only, no permission, a missing directory
    ├── NothingToDo                  exit 0    not an error: the world already shows the plan
    ├── Interrupted                  exit 130  Ctrl-C, SIGTERM
    ├── StepError                    exit 1    a step failed on a target
    │   ├── CheckFailed              exit 1    a check's expectation was not met
    │   └── OutcomeUnknown           exit 1    a change was sent, its answer lost: did it happen?
    │       ├── ProxmoxAnswerLost    exit 1      a Proxmox request (also a ProxmoxError)
    │       ├── TaskOutcomeUnknown   exit 1      a Proxmox task that could not be followed
    │       ├── HubAnswerLost        exit 1      a Beszel hub request (also a HubError)
    │       └── SSHAnswerLost        exit 1      a command whose connection dropped (an SSHError)
    ├── ReadOnlyRefused              exit 1    planning asked a client to change something
    ├── SecretsPending               exit 1    a step needs a secret not resolved while planning
    ├── ConnectFailed                exit 1    nothing answered at HOST:PORT (refused, timed out)
    ├── TLSError                     exit 1    a certificate is not the one trusted
    ├── SSHError                     exit 1    SSH to a host failed (one line naming the host)
    │   ├── HostKeyError             exit 1    unknown or changed host key
    │   └── SSHAnswerLost            exit 1    (above)
    ├── HostStateError               exit 1    a host-state (pyinfra) step failed
    ├── ProxmoxError                 exit 1    the Proxmox API answered with an error
    │   ├── ProxmoxUnreachable       exit 1    the request never reached Proxmox
    │   └── ProxmoxAnswerLost        exit 1    (above)
    ├── TaskFailed                   exit 1    a Proxmox task ended other than OK
    ├── TaskTimeout                  exit 1    a Proxmox task outlasted its timeout
    ├── HubError                     exit 1    the Beszel hub answered with an error
    │   ├── HubUnreachable           exit 1    nothing answered
    │   ├── HubAuthError             exit 1    the login was refused
    │   └── HubAnswerLost            exit 1    (above)
    ├── UptimeKumaError              exit 1    Uptime Kuma refused an event, or could not be reached
    │   ├── UptimeKumaUnreachable    exit 1    no Socket.IO connection, or no answer in time
    │   └── UptimeKumaAuthError      exit 1    the login was refused (or needs a 2FA token)
    ├── McpError                     exit 1    an MCP server answered badly, or not as expected
    │   └── McpUnauthorized          exit 1    the server refused the key (401, 403)
    ├── WheelhouseError              exit 1    a wheelhouse is missing or incomplete
    ├── LabError                     exit 1    the lab could not be built or taken down
    │   ├── LayerError               exit 1    a host's layer could not be copied or restored
    │   ├── AptError                 exit 1    the lab's apt repository could not be built
    │   └── PowerError               exit 1    a lab host did not power off in time
    └── HubSetupError                exit 1    the lab's PocketBase would not start or load

Inside the model, a bad selector or OnCalendar expression is a ValueError (SelectorError,
CalendarError) that its callers turn into a UsageError or a located LoadError.

The CLI catches OpskitError at one place (`opskit.cli.run`) and exits with `exit_code`;
tests/test_exit_codes.py holds this drawing to the classes (every OpskitError subclass in
opskit is defined here, drawn once, with its exit code).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_GATE = 3
EXIT_STALE = 4
EXIT_LOCKED = 5
EXIT_WINDOW = 6
EXIT_INTERNAL = 70
EXIT_LOCAL_FILE = 74  # sysexits' EX_IOERR
EXIT_INTERRUPTED = 130
# `plan --detailed-exitcode` found changes: exit 2 to the user, told apart from a usage error
# (also 2) inside the process, where every other error becomes 1 (opskit.cli.run).
EXIT_PLAN_CHANGES = 202

# The one list of exit codes: `opskit --help` prints it, the README's table says the same
# (tests/test_exit_codes.py produces every row).
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success (also: a saved plan that was already applied, nothing to do)",
    EXIT_FAILED: "a step or check failed, or the plan has blockers",
    EXIT_USAGE: "usage or validation error: bad YAML, schema, unknown action, target, param,"
    " missing secret, or the lab's inventory used outside the lab",
    EXIT_GATE: "a confirmation gate was declined, or not approved where nobody can answer",
    EXIT_STALE: "stale plan: the plan file, runbook, inventory, opskit or the world changed"
    " since planning, or it is applied outside the place it was made (lab or not)",
    EXIT_LOCKED: "a target is locked by another run",
    EXIT_WINDOW: "a scheduled run (run --scheduled) outside its maintenance window: not started",
    EXIT_INTERNAL: "internal error (a bug in opskit; OPSKIT_DEBUG=1 shows the traceback)",
    EXIT_LOCAL_FILE: "a file of opskit's own could not be written on this machine (the journal,"
    " the state directory, a plan file): disk full, read-only, no permission; nothing started"
    " after it",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C, SIGTERM)",
}

# The status in a `--json` stream's `done` event when no run's verdict gives it (the command
# ended before a run, or otherwise than the run said).
EXIT_STATUS: dict[int, str] = {
    EXIT_OK: "succeeded",
    EXIT_FAILED: "failed",
    EXIT_USAGE: "usage error",
    EXIT_GATE: "declined",
    EXIT_STALE: "stale plan",
    EXIT_LOCKED: "locked",
    EXIT_WINDOW: "refused",
    EXIT_INTERNAL: "internal error",
    EXIT_LOCAL_FILE: "write failed",
    EXIT_INTERRUPTED: "interrupted",
}


class OpskitError(Exception):
    """Base of every user-facing error: `str(err)` is the whole message."""

    exit_code = EXIT_FAILED


class UsageError(OpskitError):
    exit_code = EXIT_USAGE


@dataclass(frozen=True, order=True)
class Problem:
    """One located problem in a user's file; lines and columns count from 1."""

    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class LoadError(OpskitError):
    """One or more problems in a runbook or inventory file."""

    exit_code = EXIT_USAGE

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(set(problems))
        super().__init__("\n".join(str(p) for p in self.problems))

    @classmethod
    def at(cls, file: str | Path, line: int, col: int, message: str) -> LoadError:
        return cls([Problem(str(file), line, col, message)])


class RenderError(OpskitError):
    exit_code = EXIT_USAGE


class SecretError(OpskitError):
    exit_code = EXIT_USAGE


class GateError(OpskitError):
    exit_code = EXIT_GATE


class StalePlanError(OpskitError):
    exit_code = EXIT_STALE


class LockError(OpskitError):
    exit_code = EXIT_LOCKED


class WindowClosed(OpskitError):
    """A scheduled run outside its maintenance window: it refused to start."""

    exit_code = EXIT_WINDOW


class LocalFileError(OpskitError):
    """A file of opskit's own on this machine could not be written (or its directory made):
    the journal, the state directory, a lock, a plan or unit file. A full disk, a read-only
    filesystem, a permission, a missing directory: said as the system said it, with the path."""

    exit_code = EXIT_LOCAL_FILE
    said: str | None = None  # the message without its hint (of() sets it)

    @classmethod
    def of(cls, what: str, path: object, exc: BaseException, hint: str = "") -> LocalFileError:
        """`cannot write the journal /x/journal.db: No space left on device`, from an OSError
        or a sqlite3 error (whose own words say less: 'disk I/O error' on a full disk)."""
        import errno
        import os

        where = Path(str(path))
        number = exc.errno if isinstance(exc, OSError) else None
        if isinstance(exc, OSError) and exc.strerror:
            reason = exc.strerror
            culprit = Path(str(exc.filename)) if exc.filename is not None else None
            if number == errno.EEXIST and culprit is not None and not culprit.is_dir():
                reason = f"Not a directory ({culprit} is a file)"  # mkdir under a file
            elif number == errno.ENOENT and not where.parent.is_dir():
                reason += f" (no directory {where.parent})"
            elif culprit is not None and culprit != where:
                reason += f" ({culprit})"
        else:
            text = str(exc)
            reason = _SQLITE_REASONS.get(text, text or type(exc).__name__)
        full = number in (errno.ENOSPC, errno.EDQUOT)
        if not full and number is None:  # SQLite does not say why; the filesystem does
            try:
                stat = os.statvfs(where.parent)
                full = stat.f_bavail == 0 or (stat.f_files > 0 and stat.f_favail == 0)
            except OSError:
                pass
            if full:
                reason = f"No space left on device (SQLite: {reason})"
        if full:
            hint = "free some space there" + (f", {hint}" if hint else "")
        elif hint.startswith("or "):
            hint = hint[3:]
        said = f"cannot write {what} {where}: {reason}"
        error = cls(said + (f"; {hint}" if hint else ""))
        error.said = said
        return error

    @property
    def what_failed(self) -> str:
        """The message without its hint (where to go instead, which a resume must not take)."""
        return self.said or str(self)


# What SQLite's own messages mean, in the words the system uses for the same.
_SQLITE_REASONS = {
    "database or disk is full": "database or disk is full",
    "attempt to write a readonly database": "Read-only file system or no write permission",
    "unable to open database file": "cannot open it (a missing directory, or no permission)",
    "disk I/O error": "Input/output error",
}


class NothingToDo(OpskitError):
    """Not an error: a saved plan whose changes the world already shows."""

    exit_code = EXIT_OK


class Interrupted(OpskitError):
    exit_code = EXIT_INTERRUPTED


class OutsideLab(UsageError):
    """The lab's inventory, used from outside the lab's network."""


# --- steps ---------------------------------------------------------------------------------


class StepError(OpskitError):
    exit_code = EXIT_FAILED


class CheckFailed(StepError):
    pass


class OutcomeUnknown(StepError):
    """A request that changes something reached the other side, and its answer was lost (the
    connection dropped, a timeout, the token revoked while its task ran): the change may or
    may not have happened. The engine journals the step `unknown`; resume probes it again."""


class ReadOnlyRefused(OpskitError):
    """Planning asked a client to change something (a request, a command not marked as a
    probe, a file): a bug in an action's probe, refused at the one door (clients.connections)."""


class SecretsPending(OpskitError):
    """A value this step needs is a secret, and secrets are resolved only when a run starts."""


class HostStateError(OpskitError):
    """A host-state step failed: one line naming the host and what failed."""


# --- connections ---------------------------------------------------------------------------


class ConnectFailed(OpskitError):
    """Nothing answered at HOST:PORT (refused, unreachable, timed out, name unknown): no
    byte of a request reached a server."""

    def __init__(self, where: str, reason: str) -> None:
        self.where, self.reason = where, reason
        super().__init__(f"cannot connect to {where}: {reason}")


class TLSError(OpskitError):
    """A certificate did not match what the inventory or runbook trusts."""


class SSHError(OpskitError):
    """One clear line naming the host."""


class HostKeyError(SSHError):
    pass


class SSHAnswerLost(SSHError, OutcomeUnknown):
    """A command was sent to a host and its connection was lost before the command's end was
    read: it may have run to its end, part of the way, or been killed with its session."""


# --- Proxmox -------------------------------------------------------------------------------


class ProxmoxError(OpskitError):
    """An API error: the status-line message, per-parameter errors, the method and path."""

    def __init__(
        self,
        method: str,
        path: str,
        status: int,
        message: str,
        errors: Mapping[str, str] | None = None,
    ) -> None:
        self.method, self.path, self.status = method, path, status
        self.message = message.strip()
        self.errors = dict(errors or {})
        detail = "".join(f"; {k}: {str(v).strip()}" for k, v in sorted(self.errors.items()))
        super().__init__(f"Proxmox {method} {path}: {status} {self.message}{detail}")


class ProxmoxUnreachable(ProxmoxError):
    """The request never reached Proxmox: nothing answered, or TLS refused the connection."""

    def __init__(self, method: str, path: str, text: str) -> None:
        self.method, self.path, self.status = method, path, 0
        self.message, self.errors = text, {}
        OpskitError.__init__(self, f"{text} ({method} {path})")


class ProxmoxAnswerLost(ProxmoxError, OutcomeUnknown):
    """A change was sent to Proxmox and its answer lost: it may have been made."""

    def __init__(self, method: str, path: str, exc: Exception) -> None:
        self.method, self.path, self.status = method, path, 0
        self.message, self.errors = f"{type(exc).__name__}: {exc}", {}
        OpskitError.__init__(
            self, f"Proxmox {method} {path} was sent, but its answer was lost ({self.message})"
        )


class TaskOutcomeUnknown(OutcomeUnknown):
    """A task Proxmox accepted could not be followed to its end (a revoked token, the
    connection gone): it may have ended either way, or still run."""

    def __init__(self, upid: str, exc: Exception) -> None:
        self.upid = upid
        super().__init__(f"task {upid} was started, but its end could not be read: {exc}")


class TaskFailed(OpskitError):
    def __init__(self, upid: str, exitstatus: str, log: list[str]) -> None:
        self.upid, self.exitstatus, self.log = upid, exitstatus, log
        tail = "\n    ".join(log[-8:])
        super().__init__(f"task {upid} failed: {exitstatus}" + (f"\n    {tail}" if tail else ""))


class TaskTimeout(OpskitError):
    def __init__(self, upid: str, timeout: float) -> None:
        self.upid = upid
        super().__init__(
            f"task {upid} did not finish within {timeout:g}s; it keeps running on the node"
            " (see it in the Proxmox task list)"
        )


# --- the Beszel hub ------------------------------------------------------------------------


class HubError(OpskitError):
    """The hub answered with an error, or could not be reached: one line naming what failed."""

    def __init__(self, message: str, status: int = 0) -> None:
        self.status = status
        super().__init__(message)


class HubUnreachable(HubError):
    pass


class HubAuthError(HubError):
    pass


class HubAnswerLost(HubError, OutcomeUnknown):
    """A change was sent to the hub and its answer lost: it may have been made."""


class UptimeKumaError(OpskitError):
    """Uptime Kuma answered an event with `ok: false` (its `msg`, an i18n key on 2.x), or
    could not be reached: one line naming the event."""


class UptimeKumaUnreachable(UptimeKumaError):
    pass


class UptimeKumaAuthError(UptimeKumaError):
    pass


class McpError(OpskitError):
    """An MCP server (or its OpenAPI proxy) answered with an error, or not in MCP."""


class McpUnauthorized(McpError):
    """The MCP server refused the bearer key (or wanted one): HTTP 401 or 403."""


# --- the controller and the lab ------------------------------------------------------------


class WheelhouseError(OpskitError):
    """A wheelhouse is missing, incomplete or could not be downloaded: one clear line."""


class LabError(OpskitError):
    """The lab could not be built or taken down."""


class LayerError(LabError):
    """A lab host's layer (a snapshot of its overlays) could not be copied or restored."""


class AptError(LabError):
    """A package or the index of the lab's apt repository could not be built."""


class PowerError(LabError):
    """A lab host did not go down in time."""


class HubSetupError(OpskitError):
    """PocketBase is missing, or would not start or take Beszel's collections."""
