"""Notifications reach a real receiver on loopback (ntfy, a JSON webhook, an Uptime Kuma push
URL) with the run's facts, and no secret value appears in any of them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from opskit.notify import Notice, heartbeat_url
from test_engine import env  # noqa: F401 - a fixture

TESTS = Path(__file__).resolve().parent
SECRET = "s3cr3t-upkeep-token-9f2c"
NTFY_TOKEN = "tk_ntfytoken4d1e"
PUSH_TOKEN = "pushtokenAb12Cd"

UPKEEP = """
name: upkeep
targets: [docker, ai]
secrets:
  token: env:UPKEEP_TOKEN
schedule:
  on: "Sun 03:00"
  approve: APPROVE
  notify:
    on: EVENTS
    urls: [env:UPKEEP_NTFY, env:UPKEEP_HOOK]
    heartbeat: env:UPKEEP_PUSH
steps:
  - id: make
    test.resource: {name: x, echo: "{{ secrets.token }}"}
  - id: wipe
    test.destroy: {name: x, state: absent}
"""


@dataclass
class Receiver:
    out: Path
    port: int
    process: subprocess.Popen[str]

    def requests(self) -> list[dict[str, object]]:
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines()]

    def by_path(self, prefix: str) -> list[dict[str, object]]:
        return [r for r in self.requests() if str(r["path"]).startswith(prefix)]


def start_receiver(out: Path, prefix: list[str] | None = None) -> Receiver:
    command = [*(prefix or []), sys.executable, str(TESTS / "receiver.py"), str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    port = int(process.stdout.readline())
    return Receiver(out, port, process)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    found = start_receiver(tmp_path / "received.jsonl")
    yield found
    found.process.terminate()
    found.process.wait(timeout=10)


@pytest.fixture
def wired(env, receiver, monkeypatch):  # noqa: F811
    monkeypatch.setenv("UPKEEP_TOKEN", SECRET)
    monkeypatch.setenv("UPKEEP_NTFY", f"ntfy://127.0.0.1:{receiver.port}/opskit?token={NTFY_TOKEN}")
    monkeypatch.setenv("UPKEEP_HOOK", f"json://127.0.0.1:{receiver.port}/hook")
    monkeypatch.setenv(
        "UPKEEP_PUSH",
        f"http://127.0.0.1:{receiver.port}/api/push/{PUSH_TOKEN}?status=up&msg=OK&ping=",
    )

    def write(approve: str = "{}", events: str = "[failure, approval]") -> None:
        env.project.runbook("upkeep", UPKEEP.replace("APPROVE", approve).replace("EVENTS", events))

    return write


def no_secret_anywhere(receiver: Receiver, *outputs: str) -> None:
    """The runbook's secret is in no request (path, headers, body); the URLs' own tokens are
    in no message and in no output of opskit."""
    for request in receiver.requests():
        assert SECRET not in json.dumps(request), request
        assert NTFY_TOKEN not in str(request["body"]) and PUSH_TOKEN not in str(request["body"])
    for text in outputs:
        for value in (SECRET, NTFY_TOKEN, PUSH_TOKEN, "/api/push/"):
            assert value not in text, (value, text)


def ntfy_message(receiver: Receiver) -> dict[str, str]:
    (request,) = [r for r in receiver.requests() if r["path"] == "/"]  # ntfy posts to /
    assert request["headers"]["Authorization"] == f"Bearer {NTFY_TOKEN}"  # type: ignore[index]
    return dict(json.loads(str(request["body"])))


def push(receiver: Receiver) -> dict[str, list[str]]:
    (request,) = receiver.by_path(f"/api/push/{PUSH_TOKEN}")
    assert request["method"] == "GET"
    return parse_qs(urlsplit(str(request["path"])).query, keep_blank_values=True)


def test_a_failed_scheduled_run_notifies_with_its_facts_and_no_secret(env, wired, receiver):  # noqa: F811
    wired(approve="{steps: [wipe]}")
    env.world.fail("ai/x")
    done = env.run("run", "upkeep", "--scheduled")
    assert done.code == 1, done.out + done.err
    run_id = env.runs()[0].id
    message = ntfy_message(receiver)
    assert message["topic"] == "opskit"
    assert message["title"] == "opskit: scheduled run of upkeep failed"
    body = message["message"]
    assert f"run: {run_id}" in body and "runbook: upkeep" in body
    assert "failed targets: ai\n" in body
    # the first error, with the secret the failing step printed hidden
    assert "first error: [ai] make: injected failure on ai/x ‹secret:token›" in body
    (hook,) = receiver.by_path("/hook")
    assert json.loads(str(hook["body"]))["type"] == "failure"
    beat = push(receiver)
    assert beat["status"] == ["down"] and beat["msg"][0].startswith(f"failed {run_id}")
    assert "notified (failure): notify.urls[0], notify.urls[1], notify.heartbeat" in done.out
    no_secret_anywhere(receiver, done.out, done.err)


def test_needs_approval_is_sent_before_any_change(env, wired, receiver):  # noqa: F811
    wired()
    done = env.run("run", "upkeep", "--scheduled")
    assert done.code == 3 and env.world.calls("apply") == []
    message = ntfy_message(receiver)
    assert message["title"] == "opskit: scheduled run of upkeep needs approval"
    body = message["message"]
    assert f"run: {env.runs()[0].id}" in body
    assert "docker: step wipe" in body and "ai: step wipe" in body
    assert "schedule.approve" in body
    assert push(receiver)["status"] == ["down"]
    no_secret_anywhere(receiver, done.out, done.err)


def test_success_beats_the_heartbeat_and_tells_only_when_asked(env, wired, receiver):  # noqa: F811
    wired(approve="{steps: [wipe]}")
    done = env.run("run", "upkeep", "--scheduled")
    assert done.code == 0, done.err
    assert [r["path"] for r in receiver.requests() if r["method"] == "POST"] == []
    beat = push(receiver)
    assert beat["status"] == ["up"] and beat["msg"][0] == f"succeeded {env.runs()[0].id}"
    assert beat["ping"] == [""]
    wired(approve="{steps: [wipe]}", events="[success]")
    receiver.out.unlink()
    assert env.run("run", "upkeep", "--scheduled").code == 0
    assert ntfy_message(receiver)["title"] == "opskit: scheduled run of upkeep succeeded"
    no_secret_anywhere(receiver, done.out, done.err)


def test_a_manual_run_notifies_when_asked(env, wired, receiver):  # noqa: F811
    wired()
    env.world.fail("docker/x")
    done = env.run("run", "upkeep", "--yes", "--notify")
    assert done.code == 1
    message = ntfy_message(receiver)
    assert message["title"] == "opskit: run of upkeep failed"
    assert "failed targets: docker" in message["message"]
    receiver.out.unlink()
    assert env.run("run", "upkeep", "--yes").code == 0  # not asked: nothing sent
    assert receiver.requests() == []


def test_a_receiver_that_is_down_is_a_warning_not_a_failure(env, wired, receiver, monkeypatch):  # noqa: F811
    wired(approve="{steps: [wipe]}")
    receiver.process.terminate()
    receiver.process.wait(timeout=10)
    env.world.fail("ai/x")
    done = env.run("run", "upkeep", "--scheduled")
    assert done.code == 1  # the run's own verdict, untouched
    assert "warning: notification to notify.urls[0] failed" in done.err
    assert "warning: heartbeat not sent (notify.heartbeat)" in done.err
    no_secret_anywhere(receiver, done.out, done.err)


def test_heartbeat_url_replaces_kumas_own_query():
    notice = Notice(runbook="health", status="failed", run_id="r1", first_error="boom\nmore")
    url = heartbeat_url("https://kuma.lan/api/push/abc?status=up&msg=OK&ping=", notice, 1234)
    parts = urlsplit(url)
    assert parts.path == "/api/push/abc"
    assert parse_qs(parts.query) == {
        "status": ["down"],
        "msg": ["failed r1: boom"],
        "ping": ["1234"],
    }
