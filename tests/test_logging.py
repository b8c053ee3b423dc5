"""-v / -vv / OPSKIT_LOG: what opskit does over SSH and HTTP, logged through `logging` on stderr,
redacted; nothing of it by default."""

from __future__ import annotations

import http.server
import logging
import os
import re
import threading
from collections.abc import Iterator

import pytest

from sshd import Sshd
from sshproject import Project

HOSTS = ["127.0.0.47"]
SECRET = "l0gged-s3cret-Value-77"


@pytest.fixture(autouse=True)
def _logging_reset(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("OPSKIT_LOG", raising=False)
    logger = logging.getLogger("opskit")
    yield
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)
    logger.propagate = True
    os.environ.pop("OPSKIT_LOG", None)


@pytest.fixture
def server() -> Iterator[str]:
    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/livez" else 404)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _check(project, url: str) -> None:  # type: ignore[no-untyped-def]
    project.runbook(
        "health",
        f"""
        name: health
        targets: local
        steps:
          - id: livez
            check.http: {{url: "{url}/livez", headers: {{X-Token: "{SECRET}"}}}}
    """,
    )


def test_nothing_is_logged_by_default(project, opskit, server) -> None:  # type: ignore[no-untyped-def]
    _check(project, server)
    done = opskit("run", "health", "--yes", cwd=project.root)
    assert done.code == 0, done.out + done.err
    assert "HTTP GET" not in done.err and "opskit:" not in done.err


@pytest.mark.parametrize("how", ["-v", "after", "env"])
def test_v_logs_each_http_request_line_with_status_and_time(
    project, opskit, server, monkeypatch, how
) -> None:  # type: ignore[no-untyped-def]
    _check(project, server)
    if how == "env":
        monkeypatch.setenv("OPSKIT_LOG", "info")
        done = opskit("run", "health", "--yes", "--json", cwd=project.root)
        assert all(line.startswith("{") for line in done.out.splitlines())  # stdout stays JSON
    elif how == "after":
        done = opskit("run", "health", "--yes", "-v", cwd=project.root)
    else:
        done = opskit("-v", "run", "health", "--yes", cwd=project.root)
    assert done.code == 0, done.out + done.err
    line = re.search(rf"opskit: HTTP GET {re.escape(server)}/livez -> 200 in \d+ ms", done.err)
    assert line, done.err
    assert SECRET not in done.err


@pytest.fixture
def ssh_project(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    server = Sshd(tmp_path / "sshd", HOSTS).start()
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setenv("OPSKIT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    yield Project(tmp_path, server, HOSTS)
    server.stop()


@pytest.mark.integration
def test_v_logs_each_ssh_command_redacted_and_vv_the_door(ssh_project, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from opskit.logs import configure

    monkeypatch.setenv("OPSKIT_TEST_SECRET", SECRET)
    ssh_project.runbook("""
        name: rb
        targets: h0
        secrets: {token: env:OPSKIT_TEST_SECRET}
        steps:
          - id: say
            ssh.run: {cmd: "echo {{ secrets.token }} > /dev/null", unless: "false"}
    """)
    configure(2)
    _, result = ssh_project.run()
    assert result.exit_code == 0
    err = capsys.readouterr().err
    assert re.search(r"opskit: SSH h0: false -> exit 1 in [0-9.]+ s \(probe\)", err), err
    assert re.search(r"opskit: SSH h0: echo ‹secret:token› > /dev/null -> exit 0 in", err), err
    assert "opskit: door: passes to run `false` on h0 (a read)" in err
    assert SECRET not in err
