"""Every error a user can cause, and the exit code it ends in.

    OpskitError                      exit 1  (base: a clear one-line message, never a traceback)
    ├── UsageError                   exit 2  bad command line: unknown runbook, bad -p value
    ├── LoadError                    exit 2  file:line:col: message (YAML, schema, references)
    │   └── (carries one or more Problem(file, line, col, message))
    ├── RenderError                  exit 2  a template failed for a target (undefined, sandbox)
    ├── SecretError                  exit 2  a secret reference could not be resolved
    ├── GateError                    exit 3  a confirmation gate was declined or not approved
    ├── StalePlanError               exit 4  a saved plan no longer matches the world
    ├── LockError                    exit 5  a target is locked by another run
    ├── schedule.WindowClosed        exit 6  a scheduled run outside its maintenance window
    ├── StepError                    exit 1  a step failed on a target
    │   ├── CheckFailed              exit 1  a check's expectation was not met
    │   └── OutcomeUnknown           exit 1  a change was sent, its answer lost: did it happen?
    └── Interrupted                  exit 130

The CLI catches OpskitError at one place (`opskit.cli.main`) and exits with `exit_code`.
"""

from __future__ import annotations

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


class StepError(OpskitError):
    exit_code = EXIT_FAILED


class CheckFailed(StepError):
    pass


class OutcomeUnknown(StepError):
    """A request that changes something reached the other side, and its answer was lost (the
    connection dropped, a timeout, the token revoked while its task ran): the change may or
    may not have happened. The engine journals the step `unknown`; resume probes it again."""


class Interrupted(OpskitError):
    exit_code = EXIT_INTERRUPTED
