"""SSH step kinds through the whole engine, against real OpenSSH sshd on loopback."""

from __future__ import annotations

import time

import pytest

from sshd import Sshd
from sshproject import Project, drop_after_sending, kinds

HOSTS = [f"127.0.0.{n}" for n in range(41, 44)]


@pytest.fixture
def sshd(tmp_path):
    server = Sshd(tmp_path / "sshd", HOSTS).start()
    yield server
    server.stop()


@pytest.fixture
def project(tmp_path, sshd, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setenv("OPSKIT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    return Project(tmp_path, sshd, HOSTS)


def test_guarded_commands_are_idempotent_and_probes_run_only_guards(project):
    project.runbook(
        """
        name: rb
        targets: tag:web
        steps:
          - id: make
            ssh.run: {cmd: "mkdir -p WORK/{{ target.name }} && date > WORK/{{ target.name }}/made",
                      creates: "WORK/{{ target.name }}/made"}
          - id: once
            ssh.run:
              cmd: "echo x >> WORK/{{ target.name }}/log"
              unless: "test -s WORK/{{ target.name }}/log"
          - id: always
            ssh.run: {cmd: "echo hello {{ target.name }}"}
            register: said
          - id: use
            check.command: {cmd: "test {{ said.stdout | trim }} = 'hello {{ target.name }}'"}
        """
    )
    plan = project.plan()
    assert kinds(plan) == [["create", "update", "unknown", "unknown"]] * 3
    assert not any(project.work.iterdir())  # planning ran guards only
    _, result = project.run()
    assert result.exit_code == 0
    for n in range(3):
        assert (project.work / f"h{n}" / "made").exists()
        assert (project.work / f"h{n}" / "log").read_text() == "x\n"
    plan, result = project.run()
    assert kinds(plan) == [["none", "none", "unknown", "unknown"]] * 3
    assert result.exit_code == 0
    assert all((project.work / f"h{n}" / "log").read_text() == "x\n" for n in range(3))


def test_a_param_stays_one_literal_argument_on_the_host(project):
    project.runbook(
        """
        name: rb
        targets: h0
        params:
          name: {type: str}
        steps:
          - id: say
            ssh.run: {cmd: "printf '%s' {{ params.name }} > WORK/said"}
        """
    )
    evil = f"x; touch {project.work}/pwned"
    _, result = project.run(name=evil)
    assert result.exit_code == 0
    assert (project.work / "said").read_text() == evil
    assert not (project.work / "pwned").exists()


def test_upload_create_update_then_no_change(project):
    (project.root / "files").mkdir()
    (project.root / "files" / "motd").write_text("hello\n")
    project.runbook(
        """
        name: rb
        targets: h0
        params:
          mode: {default: "0644"}
        steps:
          - id: motd
            ssh.upload: {src: files/motd, dest: WORK/motd, mode: "{{ params.mode }}", owner: root}
        """
    )
    plan, result = project.run()
    assert kinds(plan) == [["create"]] and result.exit_code == 0
    dest = project.work / "motd"
    assert dest.read_text() == "hello\n" and oct(dest.stat().st_mode & 0o777) == "0o644"
    plan, _ = project.run(mode="0600")
    assert kinds(plan) == [["update"]] and "(mode)" in plan.targets[0].steps[0].change.summary
    assert oct(dest.stat().st_mode & 0o777) == "0o600"
    (project.root / "files" / "motd").write_text("changed\n")
    plan, _ = project.run(mode="0600")
    assert "(sha256)" in plan.targets[0].steps[0].change.summary and dest.read_text() == "changed\n"
    plan, _ = project.run(mode="0600")
    assert kinds(plan) == [["none"]]
    assert not [p for p in project.work.iterdir() if ".opskit-" in p.name]  # no temp files left


def test_script_with_arguments_and_become(project):
    (project.root / "scripts").mkdir()
    (project.root / "scripts" / "hello.sh").write_text('echo "$# args: $1|$2" > "$3"\n')
    project.runbook(
        """
        name: rb
        targets: h1
        steps:
          - id: hello
            ssh.script: {script: scripts/hello.sh, args: ["a b", "c;d", "WORK/out"]}
          - id: whoami
            ssh.run: {cmd: "id -u", become: true}
            register: me
          - id: root
            check.command: {cmd: "test {{ me.stdout | trim }} -eq 0"}
          - id: ssh
            check.ssh: {}
        """
    )
    _, result = project.run()
    assert result.exit_code == 0
    assert (project.work / "out").read_text() == "3 args: a b|c;d\n"


def test_a_failing_command_and_an_unreachable_host_fail_alone(tmp_path, sshd, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setenv("OPSKIT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    gone = (
        "  - {name: gone, address: 127.0.0.49, tags: [web],"
        f" ssh: {{user: root, port: {sshd.port}}}}}\n"
    )
    project = Project(tmp_path, sshd, HOSTS, extra_hosts=gone)
    project.runbook(
        """
        name: rb
        targets: tag:web
        steps:
          - id: work
            ssh.run: {cmd: "test {{ target.name }} != h1 && echo done {{ target.name }}"}
        """
    )
    plan = project.plan()
    assert [s.change.kind.value for t in plan.targets for s in t.steps] == ["unknown"] * 4
    _, result = project.run()
    assert result.exit_code == 1
    steps = project.steps(result.run_id)
    assert [steps[(f"h{n}", "work")].status for n in (0, 2)] == ["succeeded", "succeeded"]
    assert steps[("h1", "work")].status == "failed"
    assert "exit code 1, expected 0" in steps[("h1", "work")].error
    assert steps[("gone", "work")].status == "failed"
    assert "gone (root@127.0.0.49:" in steps[("gone", "work")].error
    assert "connection refused" in steps[("gone", "work")].error


def test_each_host_gets_a_log_of_its_output(project):
    project.runbook(
        """
        name: rb
        targets: tag:web
        steps:
          - id: say
            ssh.run: {cmd: "echo to-out {{ target.name }}; echo to-err >&2"}
        """
    )
    _, result = project.run()
    assert result.exit_code == 0
    log = project.root / "state" / "logs" / result.run_id / "h2.log"
    text = log.read_text()
    assert "say: succeeded" in text and "to-out h2" in text and "-- stderr\nto-err" in text


def test_a_step_whose_connection_drops_is_unknown_and_not_run_again(project):
    """The sshd serving h0 dies while its command runs (`kill -9 $PPID`, see test_ssh): the
    command was sent, its end never read. A change is journaled unknown and not retried, though
    it allows retries; a check (read-only) whose answer was lost is a failure, retried; the
    target stops there, the other hosts go on."""
    project.runbook(
        """
        name: rb
        targets: tag:web
        steps:
          - id: look
            check.command:
              cmd: >-
                echo look >> WORK/{{ target.name }}.looked;
                test {{ target.name }} != h1 || kill -9 $PPID
            retries: 1
            interval: 0s
          - id: change
            ssh.run:
              cmd: >-
                echo ran >> WORK/{{ target.name }}.ran;
                test {{ target.name }} != h0 || kill -9 $PPID
            retries: 2
            interval: 0s
          - id: after
            ssh.run: {cmd: "touch WORK/{{ target.name }}.after"}
        """
    )
    _, result = project.run()
    assert result.exit_code == 1
    steps = project.steps(result.run_id)
    work = project.work
    assert steps[("h0", "change")].status == "unknown"
    assert "lost while" in steps[("h0", "change")].error
    assert "resume probes it again" in steps[("h0", "change")].error
    assert (work / "h0.ran").read_text() == "ran\n"  # sent once: never retried blindly
    assert not (work / "h0.after").exists()
    assert steps[("h1", "look")].status == "failed"
    assert (work / "h1.looked").read_text() == "look\n" * 2  # a read is retried
    assert not (work / "h1.ran").exists()
    assert steps[("h2", "after")].status == "succeeded"
    assert (work / "h2.ran").read_text() == "ran\n"


def test_a_step_past_its_timeout_is_stopped_on_the_host_before_it_is_retried(project):
    """A step's `timeout` cut its command short: the command is stopped on the host (it never
    reaches its next line), so the retry runs alone, not beside it; the step fails saying so.
    The command's own `timeout` does the same. A check past its timeout is a failure, retried."""
    project.runbook(
        """
        name: rb
        targets: h0
        steps:
          - id: slow
            ssh.run:
              cmd: >-
                echo began >> WORK/slow.log; sleep 3; echo ended >> WORK/slow.log
            timeout: 1s
            retries: 1
            interval: 0s
            on_failure: continue
          - id: own
            ssh.run:
              cmd: "sleep 3; touch WORK/own.ended"
              timeout: 1s
            on_failure: continue
          - id: look
            check.command: {cmd: "echo looked >> WORK/look.log; sleep 3"}
            timeout: 1s
            retries: 1
            interval: 0s
            on_failure: continue
          - id: after
            ssh.run: {cmd: "touch WORK/after"}
        """
    )
    _, result = project.run()
    assert result.exit_code == 1
    steps = project.steps(result.run_id)
    look = steps[("h0", "look")]
    assert look.status == "failed" and look.attempts == 2, look  # a read: retried as a failure
    assert (project.work / "look.log").read_text() == "looked\n" * 2
    slow = steps[("h0", "slow")]
    assert slow.status == "failed" and slow.attempts == 2, slow
    assert "timed out after 1s; its command was stopped on the host" in slow.error
    assert steps[("h0", "own")].status == "failed"
    assert "timed out after 1s and was stopped" in steps[("h0", "own")].error
    assert steps[("h0", "after")].status == "succeeded"
    time.sleep(3)  # had either run on, it would have ended by now
    assert (project.work / "slow.log").read_text() == "began\n" * 2
    assert not (project.work / "own.ended").exists()


def test_an_upload_whose_connection_drops_at_its_rename_is_unknown(project, monkeypatch):
    """ssh.upload writes a temporary file and renames it over `dest`; the connection drops
    right after h0's rename is sent: journaled unknown, not retried, h0 stops there. Dropped
    before the rename (h1's chmod of its temporary file), `dest` is untouched: failed, and
    retried (it allows it), which then succeeds."""
    renamed = drop_after_sending(monkeypatch, "posix_rename", lambda path: "/h0.txt." in path)
    chmodded = drop_after_sending(monkeypatch, "chmod", lambda path: "/h1.txt." in path)
    project.runbook(
        """
        name: rb
        targets: tag:web
        steps:
          - id: up
            ssh.upload: {dest: "WORK/{{ target.name }}.txt", content: "up\\n"}
            retries: 2
            interval: 0s
          - id: after
            ssh.run: {cmd: "touch WORK/{{ target.name }}.after"}
        """
    )
    _, result = project.run()
    assert result.exit_code == 1
    steps = project.steps(result.run_id)
    assert steps[("h0", "up")].status == "unknown", steps[("h0", "up")].error
    assert "resume probes it again" in steps[("h0", "up")].error
    assert len(renamed) == 1 and len(chmodded) == 1
    assert not (project.work / "h0.after").exists()
    assert steps[("h1", "up")].status == "succeeded"  # the retry
    assert steps[("h1", "up")].attempts == 2
    assert (project.work / "h1.txt").read_text() == "up\n"
    assert steps[("h2", "after")].status == "succeeded"
