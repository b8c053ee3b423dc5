"""`opskit ... --lab`: the same command, run inside the lab's network with its inventory."""

from __future__ import annotations

import os
import subprocess
import sys

from ..errors import LabError
from .core import Lab, lab_dir, lab_environment, require_root
from .network import controller as controller_ns


def run_in_lab(argv: list[str], *, replace: bool, broken_ok: bool = False) -> int:
    """Run `opskit ARGV` in the controller's namespace of the lab; `replace` execs it.
    `broken_ok`: also in a lab with a host down (`status` is what says which)."""
    require_root()
    root = lab_dir()
    lab = Lab(root)
    state = lab.state()
    if state is None:
        raise LabError(f"the lab is not up ({root}): start it with  opskit lab up")
    problems = [] if broken_ok else lab.problems(state)
    if problems:
        raise LabError(
            "the lab is not healthy (" + "; ".join(problems[:3]) + "): opskit lab up rebuilds it"
        )
    env = {**os.environ, **lab_environment(root)}
    command = ["ip", "netns", "exec", controller_ns(), sys.executable, "-m", "opskit", *argv]
    if replace:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execvpe(command[0], command, env)
    return subprocess.call(command, env=env)
