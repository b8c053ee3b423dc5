"""`opskit ... --lab`: the same command, run inside the lab's network with its inventory."""

from __future__ import annotations

import os
import subprocess
import sys

from ..errors import LabError
from .core import Lab, lab_dir, lab_environment, require_root
from .network import controller as controller_ns


def run_in_lab(
    argv: list[str], *, replace: bool, broken_ok: bool = False, serve: str | None = None
) -> int:
    """Run `opskit ARGV` in the controller's namespace of the lab; `replace` execs it.
    `broken_ok`: also in a lab with a host down (`status` is what says which). `serve`: the
    address of `status --serve`, bound here first, so the page is also served on this
    machine's side (the browser's) and not only on the lab's loopback."""
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
    kept: tuple[int, ...] = ()
    if serve is not None:
        from ..status.web import INHERITED_FD, listen, parse_address, required_token

        host, port = parse_address(serve)
        required_token(host, serve)  # refused here, before binding, as the command would
        listener = listen(host, port, serve)
        os.set_inheritable(listener.fileno(), True)
        kept = (listener.fileno(),)
        env[INHERITED_FD] = str(listener.fileno())
    if replace:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execvpe(command[0], command, env)
    try:
        return subprocess.call(command, env=env, pass_fds=kept)
    finally:
        if serve is not None:
            listener.close()
