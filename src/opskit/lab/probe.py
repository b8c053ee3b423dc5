"""Which lab ports answer, asked from inside the lab's network (the controller's namespace).

    python -m opskit.lab.probe [--wait SECONDS] ADDR:PORT ...

Prints a JSON object {"ADDR:PORT": true|false}; with --wait, keeps trying the silent ones until
all answer or the time is up. Exit 0 when all answer, 1 otherwise.
"""

from __future__ import annotations

import json
import socket
import sys
import time


def answers(endpoint: str, timeout: float = 0.5) -> bool:
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def main(argv: list[str]) -> int:
    wait = 0.0
    if argv[:1] == ["--wait"]:
        wait, argv = float(argv[1]), argv[2:]
    deadline = time.monotonic() + wait
    state = {endpoint: False for endpoint in argv}
    while True:
        for endpoint, up in state.items():
            if not up:
                state[endpoint] = answers(endpoint)
        if all(state.values()) or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    print(json.dumps(state))
    return 0 if all(state.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
