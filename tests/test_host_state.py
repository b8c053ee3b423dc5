"""host.* step kinds (pyinfra through opskit's SSH) through the whole engine, against real OpenSSH
sshd on loopback.

Loopback addresses used here and nowhere else: 127.0.0.81-84 sshd "hosts", 127.0.0.85 an
http.server for downloads, 127.0.0.86 a server that never answers, 127.0.0.89 nothing at all.
The "hosts" are this machine, so host.user and host.packages are only planned here (the lab
applies them); everything else writes under the test's own directory.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import http.server
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import fakes
from opskit.report.plan import render_plan
from opskit.workspace import Workspace
from sshd import Sshd
from sshproject import Project, drop_after_sending, kinds

HOSTS = [f"127.0.0.{n}" for n in range(81, 85)]
HTTP_ADDR = "127.0.0.85"
SILENT_ADDR = "127.0.0.86"
NOTHING_ADDR = "127.0.0.89"
REPO = Path(__file__).resolve().parent.parent
STAND_IN = REPO / "src" / "opskit" / "lab" / "systemctl.py"
SECRET = "s3cr3t-Value-9f8e7d"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = Sshd(tmp_path_factory.mktemp("sshd"), HOSTS).start()
    yield server
    server.stop()


class HostProject(Project):
    def __init__(self, root: Path, sshd: Sshd, extra_hosts: str = "") -> None:
        super().__init__(root, sshd, HOSTS, extra_hosts)
        self.sent: list = []  # every SSH command and file at the door, run or refused
        self.observe = lambda sent: self.sent.append(sent) if sent.client == "ssh" else None


@pytest.fixture
def project(tmp_path, sshd, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setenv("OPSKIT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    return HostProject(tmp_path, sshd)


def tree(root: Path) -> dict[str, tuple[str, int]]:
    """Every path under root: (sha256 or 'dir', mode)."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        out[str(path.relative_to(root))] = (digest, st.st_mode)
    return out


# --- host.file ---------------------------------------------------------------------------------


def test_file_create_update_and_no_change_with_the_diff_in_the_plan(project):
    (project.root / "deploy" / "app").mkdir()
    (project.root / "deploy" / "app" / "app.conf.j2").write_text(
        "# {{ target.name }}\nport = {{ params.port }}\nname = {{ name }}\n"
    )
    project.runbook(
        """
        name: rb
        targets: tag:web
        params:
          motd: {default: "hello\\nworld\\n"}
          port: {type: int, default: 8080}
          mode: {default: "0640"}
        steps:
          - id: motd
            host.file: {path: "WORK/{{ target.name }}/motd", content: "{{ params.motd }}",
                        mode: "{{ params.mode }}", owner: root, group: root}
          - id: conf
            host.file:
              path: "WORK/{{ target.name }}/etc/app.conf"
              template: deploy/app/app.conf.j2
              vars: {params: "{{ params }}", name: "app-{{ target.name }}"}
        """
    )
    plan = project.plan()
    assert kinds(plan) == [["create", "create"]] * 4
    text = render_plan(plan, "text")
    assert "+ motd  host.file: create" in text and "+hello" in text and "+world" in text
    assert "+port = 8080" in text and "+name = app-h3" in text and "+# h2" in text
    assert "+port = 8080" in render_plan(plan, "md")
    assert json.loads(render_plan(plan, "json"))["targets"][0]["steps"][0]["change"]["after"] == (
        "hello\nworld\n"
    )
    assert not any(project.work.iterdir())  # planning wrote nothing

    _, result = project.run()
    assert result.exit_code == 0
    for n in range(4):
        motd = project.work / f"h{n}" / "motd"
        assert motd.read_text() == "hello\nworld\n"
        assert oct(motd.stat().st_mode & 0o777) == "0o640" and motd.stat().st_uid == 0
        conf = (project.work / f"h{n}" / "etc" / "app.conf").read_text()
        assert conf == f"# h{n}\nport = 8080\nname = app-h{n}\n"  # each target its own

    plan = project.plan(motd="hello\nthere\n", port=9090)
    assert kinds(plan) == [["update", "update"]] * 4
    text = render_plan(plan, "text")
    assert "~ motd  host.file: update" in text and "(content)" in text
    assert "-world" in text and "+there" in text and " hello" in text
    assert "-port = 8080" in text and "+port = 9090" in text

    plan = project.plan(mode="0600")
    assert kinds(plan) == [["update", "none"]] * 4
    step = plan.targets[0].steps[0]
    assert "mode 0640 -> 0600" in step.change.summary
    assert 'mode: "0640" -> "0600"' in render_plan(plan, "text")
    _, result = project.run(mode="0600")
    assert result.exit_code == 0
    assert oct((project.work / "h0" / "motd").stat().st_mode & 0o777) == "0o600"

    plan, result = project.run(mode="0600")
    assert kinds(plan) == [["none", "none"]] * 4 and result.exit_code == 0
    assert result.counts.get("unchanged") == 8
    leftovers = [p for p in project.work.rglob("*") if ".opskit-" in p.name]
    assert not leftovers  # the atomic upload's temporary files are gone


def test_a_dry_run_changes_nothing_and_runs_only_facts(project, tmp_path):
    (project.work / "h0").mkdir()
    (project.work / "h0" / "old").write_text("old content\n")
    os.chmod(project.work / "h0" / "old", 0o644)
    project.runbook(
        """
        name: rb
        targets: h0
        steps:
          - id: new
            host.file: {path: WORK/h0/sub/new, content: "new\\n"}
          - id: old
            host.file: {path: WORK/h0/old, content: "changed\\n", mode: "0600"}
          - id: dir
            host.directory: {path: WORK/h0/d/e/f, mode: "0750"}
        """
    )
    before = tree(project.work)
    plan = project.plan()
    assert kinds(plan) == [["create", "update", "create"]]
    assert tree(project.work) == before
    assert project.sent, "the connector ran no fact"
    assert all(s.read_only and s.reads and not s.refused for s in project.sent)
    ran = " ".join(s.what for s in project.sent)
    for word in ("mkdir", "chmod", "chown", "touch", "mv ", "upload"):
        assert word not in ran, f"planning ran {word!r}: {ran}"
    # Each step asks the host each fact once (host.file's own read and files.put's are one).
    asked = [s.what for s in project.sent]
    assert len(asked) == len(set(asked)), asked


def test_the_connector_refuses_operation_commands_while_planning(project, monkeypatch):
    """Were the bridge to forget it is planning and execute an operation, the connector, holding
    a read-only shell, still runs none of it: outside the facts phase it refuses everything."""
    from pyinfra.operations import files

    from opskit.clients import pyinfra_connector
    from opskit.clients.connections import Connections, Transports
    from opskit.clients.ssh import Endpoint, HostShell
    from opskit.errors import ReadOnlyRefused

    ws = Workspace(project.root / "runbooks", project.root / "inventory" / "homelab.yaml")
    target = ws.inventory.targets("h1")[0]
    made = project.work / "made-by-pyinfra"
    work = lambda h: h.operation(files.directory, path=str(made))  # noqa: E731

    async def go():
        transports = fakes.with_sshd(Transports(observe=project.sent.append), project.sshd)
        connections = Connections(ws.inventory, transports=transports)
        try:
            shell = HostShell(connections.ssh(), Endpoint.of(target), connections.door(True))
            return await pyinfra_connector.run_pyinfra(shell, work)
        finally:
            await connections.aclose()

    with monkeypatch.context() as m, pytest.raises(ReadOnlyRefused, match="refused to run"):
        m.setattr(pyinfra_connector.PyinfraHost, "read_only", False)
        asyncio.run(go())
    assert not made.exists()
    assert [(s.reads, s.refused) for s in project.sent] == [(False, True)]

    # An operation that runs a command itself while its commands are listed (the facts phase):
    # only pyinfra's fact loader may, so its fact runs and its own command is refused.
    from pyinfra.api.command import StringCommand
    from pyinfra.api.operation import operation
    from pyinfra.context import host as current_host
    from pyinfra.facts.files import File

    @operation()
    def sneaky(path):
        current_host.get_fact(File, path=path)
        current_host.run_shell_command(StringCommand("touch", path))
        yield StringCommand("true")

    work = lambda h: h.operation(sneaky, path=str(made))  # noqa: E731

    project.sent.clear()
    with pytest.raises(ReadOnlyRefused, match="refused to run `sh -c 'touch"):
        asyncio.run(go())
    assert not made.exists()
    assert [(s.reads, s.refused) for s in project.sent] == [(True, False), (False, True)]


def test_a_secret_in_a_file_never_reaches_plan_journal_or_logs(project, monkeypatch):
    monkeypatch.setenv("OPSKIT_TEST_TOKEN", SECRET)
    previous = "previous-token-0a1b2c3d"  # an old value on the host: no runbook names it
    (project.work / "h0").mkdir()
    conf = project.work / "h0" / "app.env"
    conf.write_text(f"OLD_TOKEN=an-old-{SECRET}\nTOKEN={previous}\nport=1\n")
    project.runbook(
        """
        name: rb
        targets: h0
        params:
          port: {type: int, default: 1}
        secrets:
          token: env:OPSKIT_TEST_TOKEN
        steps:
          - id: env
            host.file:
              path: WORK/h0/app.env
              content: "TOKEN={{ secrets.token }}\\nport={{ params.port }}\\n"
              mode: "0600"
            register: env
          - id: json
            host.file:
              path: WORK/h0/app.json
              template: deploy/app.json.j2
              vars: {token: "{{ secrets.token }}", port: "{{ params.port }}"}
        """
    )
    (project.root / "deploy" / "app.json.j2").write_text(
        '{"token": {{ token | to_json }}, "port": {{ port }}}\n'  # to_json escapes the name
    )
    (project.work / "h0" / "app.json").write_text(f'{{"token": "{previous}", "port": 1}}\n')

    def shown(plan) -> str:
        text = render_plan(plan, "text") + render_plan(plan, "md") + render_plan(plan, "json")
        assert SECRET not in text and previous not in text
        return render_plan(plan, "text")

    text = shown(project.plan())
    assert "-‹hidden: this line may hold a secret›" in text  # OLD_TOKEN=...: may hold one
    assert "-TOKEN=‹an old secret value›" in text and "+TOKEN=‹secret:token›" in text
    assert " port=1" in text
    in_json = text.partition("json  host.file")[2]
    assert '-{"token": "‹an old secret value›", "port": 1}' in in_json
    assert '+{"token": "‹secret:token›", "port": 1}' in in_json

    plan, result = project.run()
    assert result.exit_code == 0
    assert conf.read_text() == f"TOKEN={SECRET}\nport=1\n"
    assert oct(conf.stat().st_mode & 0o777) == "0o600"
    assert json.loads((project.work / "h0" / "app.json").read_text())["token"] == SECRET
    steps = project.steps(result.run_id)
    assert "sha256" not in steps[("h0", "env")].outputs  # it would let one guess the secret

    plan = project.plan()  # the plan's probes had the values: an exact comparison
    assert kinds(plan) == [["none", "none"]]
    text = shown(project.plan(port=2))
    assert "-port=1" in text and "+port=2" in text and " TOKEN=‹secret:token›" in text

    monkeypatch.delenv("OPSKIT_TEST_TOKEN")  # a review without the credentials
    plan = project.plan()
    assert kinds(plan) == [["none", "none"]]
    assert "secret values are compared when applied" in plan.targets[0].steps[0].change.summary
    text = shown(project.plan(port=2))
    assert "-port=1" in text and "+port=2" in text and " TOKEN=‹secret:token›" in text

    monkeypatch.setenv("OPSKIT_TEST_TOKEN", SECRET + "-rotated")
    plan, result = project.run()
    assert kinds(plan) == [["update", "update"]]
    shown(plan)
    assert result.exit_code == 0
    assert conf.read_text() == f"TOKEN={SECRET}-rotated\nport=1\n"
    stored = json.loads((project.work / "h0" / "app.json").read_text())["token"]
    assert stored == SECRET + "-rotated"

    for path in (project.root / "state").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert SECRET.encode() not in data, f"the secret is in {path}"
            assert previous.encode() not in data, f"the old value is in {path}"
    db = sqlite3.connect(project.root / "state" / "journal.db")
    dump = "\n".join(db.iterdump())
    assert SECRET not in dump and previous not in dump


def test_a_template_outside_deploy_is_refused_with_one_clear_line(project):
    (project.root / "elsewhere.j2").write_text("x\n")
    project.runbook(
        """
        name: rb
        targets: h0
        steps:
          - id: f
            host.file: {path: WORK/f, template: elsewhere.j2}
        """
    )
    plan = project.plan()
    blockers = plan.targets[0].steps[0].change.blockers
    assert blockers == [
        "host.file template elsewhere.j2: templates live in the project's deploy/ directory"
    ]


# --- host.directory ----------------------------------------------------------------------------


def test_directory_create_then_mode_then_no_change(project):
    project.runbook(
        """
        name: rb
        targets: h1
        params:
          mode: {default: "0750"}
        steps:
          - id: d
            host.directory: {path: WORK/a/b/c, mode: "{{ params.mode }}", owner: root}
        """
    )
    plan, result = project.run()
    assert kinds(plan) == [["create"]] and result.exit_code == 0
    assert "create directory" in plan.targets[0].steps[0].change.summary
    made = project.work / "a" / "b" / "c"
    assert made.is_dir() and oct(made.stat().st_mode & 0o777) == "0o750"
    plan, result = project.run(mode="0700")
    assert kinds(plan) == [["update"]]
    assert "mode 0750 -> 0700" in plan.targets[0].steps[0].change.summary
    assert oct(made.stat().st_mode & 0o777) == "0o700"
    assert kinds(project.plan(mode="0700")) == [["none"]]


# --- host.download -----------------------------------------------------------------------------


@pytest.fixture
def web(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "tool.bin").write_bytes(b"#!/bin/sh\necho tool\n" + bytes(range(256)))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))

    class Quiet(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass

    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = Quiet((HTTP_ADDR, 0), handler)
    server.RequestHandlerClass.log_message = lambda *a: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{HTTP_ADDR}:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def test_download_checks_the_sha256_first(project, web):
    url, root = web
    good = hashlib.sha256((root / "tool.bin").read_bytes()).hexdigest()
    bad = "0" * 64
    project.runbook(
        """
        name: rb
        targets: h2
        params:
          sha: {}
        steps:
          - id: get
            host.download: {url: "URL/tool.bin", sha256: "{{ params.sha }}",
                            dest: WORK/bin/tool, mode: "0755"}
          - id: after
            ssh.run: {cmd: "echo still-here"}
        """.replace("URL", url)
    )
    (project.work / "bin").mkdir()
    plan, result = project.run(sha=bad)
    assert kinds(plan) == [["create", "unknown"]]
    assert result.exit_code == 1
    error = project.steps(result.run_id)[("h2", "get")].error
    assert f"sha256 mismatch for {url}/tool.bin: expected {bad}, got {good}" in error
    assert not any((project.work / "bin").iterdir())  # nothing left behind

    plan, result = project.run(sha=good)
    assert result.exit_code == 0
    dest = project.work / "bin" / "tool"
    assert dest.read_bytes() == (root / "tool.bin").read_bytes()
    assert oct(dest.stat().st_mode & 0o777) == "0o755"
    assert [p.name for p in (project.work / "bin").iterdir()] == ["tool"]
    plan = project.plan(sha=good)
    assert kinds(plan) == [["none", "unknown"]]
    assert "has sha256" in plan.targets[0].steps[0].change.summary

    (root / "tool.bin").write_bytes(b"a new release\n")  # the pinned sha protects the host
    dest.write_bytes(b"tampered\n")
    plan, result = project.run(sha=good)
    assert kinds(plan) == [["update", "unknown"]] and result.exit_code == 1
    assert dest.read_bytes() == b"tampered\n"  # the mismatching download did not replace it


def test_a_step_timeout_stops_pyinfra_and_the_host_stays_usable(project):
    listener = socket.socket()
    listener.bind((SILENT_ADDR, 0))
    listener.listen(8)  # accepts, never answers
    port = listener.getsockname()[1]
    try:
        project.runbook(
            f"""
            name: rb
            targets: h3
            steps:
              - id: get
                host.download: {{url: "http://{SILENT_ADDR}:{port}/x", sha256: "{"a" * 64}",
                                dest: WORK/x}}
                timeout: 2s
                on_failure: continue
              - id: after
                ssh.run: {{cmd: "echo still-here"}}
                register: said
              - id: check
                check.command: {{cmd: "test '{{{{ said.stdout | trim }}}}' = still-here"}}
            """
        )
        started = time.monotonic()
        _, result = project.run()
        steps = project.steps(result.run_id)
        assert steps[("h3", "get")].status == "failed"
        assert "timed out after 2s" in steps[("h3", "get")].error
        assert steps[("h3", "after")].status == "succeeded"
        assert steps[("h3", "check")].status == "succeeded"
        assert time.monotonic() - started < 60  # not the 20 s connect timeout, nor forever
    finally:
        listener.close()
    assert not (project.work / "x").exists()


# --- host.user and host.packages: planned only (they would change this machine) ---------------


def test_user_and_packages_plan_without_changing_the_machine(project):
    passwd = Path("/etc/passwd").read_bytes()
    project.runbook(
        """
        name: rb
        targets: h0
        steps:
          - id: root
            host.user: {name: root}
          - id: new
            host.user: {name: opskit-nobody-here, system: true, home: /var/lib/opskit-nobody,
                        shell: /usr/sbin/nologin}
          - id: have
            host.packages: {packages: [coreutils, dpkg]}
          - id: lack
            host.packages: {packages: [coreutils, opskit-no-such-package], update: true}
        """
    )
    plan = project.plan()
    assert kinds(plan) == [["none", "create", "none", "update"]]
    steps = plan.targets[0].steps
    assert steps[1].change.summary == (
        "create system user opskit-nobody-here (home /var/lib/opskit-nobody,"
        " shell /usr/sbin/nologin)"
    )
    assert steps[3].change.summary == "install opskit-no-such-package (after apt-get update)"
    assert steps[3].change.before == {"opskit-no-such-package": "absent"}
    assert Path("/etc/passwd").read_bytes() == passwd
    assert not Path("/var/lib/opskit-nobody").exists()
    assert all(s.reads and not s.refused for s in project.sent)


def test_apt_failing_is_one_clear_line(project):
    """apt-get refuses an unknown package before it changes anything: safe to run here."""
    if not shutil.which("apt-get"):
        pytest.skip("no apt-get on this machine")
    project.runbook(
        """
        name: rb
        targets: h0
        steps:
          - id: lack
            host.packages: {packages: [opskit-no-such-package]}
        """
    )
    _, result = project.run()
    assert result.exit_code == 1
    error = project.steps(result.run_id)[("h0", "lack")].error
    assert error.startswith("install opskit-no-such-package: apt-get failed: E: "), error
    assert "opskit-no-such-package" in error.partition("E: ")[2] or "lock" in error


def test_become_uploads_through_sudo(project):
    if not shutil.which("sudo"):
        pytest.skip("sudo is not installed")
    before = set(Path("/tmp").glob("opskit-upload-*"))
    project.runbook(
        """
        name: rb
        targets: h2
        steps:
          - id: f
            host.file: {path: WORK/h2/f, content: "as root\\n", mode: "0600", become: true}
        """
    )
    plan, result = project.run()
    assert kinds(plan) == [["create"]] and result.exit_code == 0
    assert (project.work / "h2" / "f").read_text() == "as root\n"
    ours = [
        p
        for p in set(Path("/tmp").glob("opskit-upload-*")) - before
        if p.read_bytes() == b"as root\n"
    ]
    assert not ours  # the temporary copy sudo copied from is gone
    assert any("sudo -H -n" in s.what for s in project.sent)
    assert kinds(project.plan()) == [["none"]]


@pytest.mark.parametrize(
    ("results", "restart"),
    [
        ([], False),
        ([{"ok": True, "changed": False}, {}], False),  # unchanged, and a skipped step
        ([{"ok": True, "changed": False}, {"ok": True, "changed": True}], True),
        ([{"results": [{"changed": False}, {"changed": True}]}], True),  # a loop's items
        ([{"results": [{"changed": False}]}, False], False),
        ([True], True),
    ],
)
def test_restart_on_reads_what_the_steps_did(results, restart):
    from opskit.actions.host import HostService, ServiceArgs

    service = HostService(ServiceArgs(name="demo", restart_on=results))
    assert service.restart is restart and service.unit == "demo.service"


def test_restart_on_takes_registered_results_not_names(project):
    project.runbook(
        """
        name: rb
        targets: h0
        steps:
          - id: svc
            host.service: {name: x, restart_on: [config]}
        """
    )
    from opskit.errors import LoadError

    with pytest.raises(LoadError, match="restart_on takes registered results"):
        project.plan()


# --- the connection ----------------------------------------------------------------------------


def test_ssh_steps_and_host_state_share_one_connection(project, monkeypatch):
    from opskit.clients import ssh

    seen: list[tuple[int, int]] = []
    close = ssh.SSHPool.aclose

    async def counting(self):
        seen.append((len(self.sessions), self.channels_opened))
        await close(self)

    monkeypatch.setattr(ssh.SSHPool, "aclose", counting)
    project.runbook(
        """
        name: rb
        targets: h1
        steps:
          - id: before
            ssh.run: {cmd: "mkdir -p WORK/h1"}
          - id: f
            host.file: {path: WORK/h1/f, content: "x\\n"}
          - id: d
            host.directory: {path: WORK/h1/d}
          - id: after
            ssh.run: {cmd: "cat WORK/h1/f"}
          - id: again
            host.file: {path: WORK/h1/g, content: "y\\n"}
        """
    )
    _, result = project.run()
    assert result.exit_code == 0
    planning, running = seen
    assert planning == (1, 1)  # one connection, one shell: the probes
    assert running == (1, 2)  # one connection: its shell, and SFTP for the uploads


def test_an_unreachable_host_is_one_clear_blocker(tmp_path, sshd, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setenv("OPSKIT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    gone = (
        f"  - {{name: gone, address: {NOTHING_ADDR}, ssh: {{user: root, port: {sshd.port},"
        f' host_key: "{sshd.pinned}"}}}}\n'
    )
    project = HostProject(tmp_path, sshd, extra_hosts=gone)
    project.runbook(
        """
        name: rb
        targets: gone
        steps:
          - id: f
            host.file: {path: /tmp/never, content: "x"}
        """
    )
    plan = project.plan()
    (blocker,) = plan.targets[0].steps[0].change.blockers
    assert blocker == f"gone (root@{NOTHING_ADDR}:{sshd.port}): connection refused"


# --- host.service, against the lab's systemctl stand-in ----------------------------------------


@pytest.fixture
def stand_in(tmp_path):
    """The stand-in as `systemctl` first on PATH, with unit and state dirs under tmp_path."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "systemctl"
    tool.write_text(f"#!{sys.executable}\n" + STAND_IN.read_text())
    tool.chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    env = {
        "PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin",
        "OPSKIT_SYSTEMCTL_UNIT_PATH": str(units),
        "OPSKIT_SYSTEMCTL_STATE_DIR": str(tmp_path / "run"),
    }
    yield env, units
    for unit in units.glob("*.service"):
        subprocess.run([str(tool), "stop", unit.name], env=env, check=False)


def test_service_started_enabled_and_restarted_when_its_unit_changed(project, stand_in):
    env, units = stand_in
    project.host_env = env
    project.runbook(
        f"""
        name: rb
        targets: h0
        params:
          greeting: {{default: hello}}
        steps:
          - id: unit
            host.file:
              path: {units}/demo.service
              content: |
                [Unit]
                Description=opskit test service
                [Service]
                Environment=GREETING={{{{ params.greeting }}}}
                ExecStart=/bin/sh -c 'echo "$GREETING" > WORK/said; exec sleep 300'
                [Install]
                WantedBy=multi-user.target
            register: unit
          - id: svc
            host.service: {{name: demo, restart_on: ["{{{{ unit }}}}"]}}
        """
    )
    systemctl = [str(Path(env["PATH"].split(":")[0]) / "systemctl")]

    def main_pid() -> int:
        out = subprocess.run(
            [*systemctl, "show", "-p", "MainPID", "--value", "demo"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return int(out.stdout.strip())

    def said() -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            path = project.work / "said"
            if path.exists() and path.read_text():
                return path.read_text().strip()
            time.sleep(0.05)
        raise AssertionError("the service did not write")

    plan, result = project.run()
    assert kinds(plan) == [["create", "unknown"]] and result.exit_code == 0
    steps = project.steps(result.run_id)
    assert "start" in steps[("h0", "svc")].summary and "enable" in steps[("h0", "svc")].summary
    first = main_pid()
    assert first > 0 and said() == "hello"
    assert (units / "multi-user.target.wants" / "demo.service").is_symlink()

    plan, result = project.run()  # nothing changed: no restart
    assert result.exit_code == 0 and main_pid() == first
    assert project.steps(result.run_id)[("h0", "svc")].status == "unchanged"

    (project.work / "said").unlink()
    plan, result = project.run(greeting="bonjour")
    assert result.exit_code == 0
    assert "restart" in project.steps(result.run_id)[("h0", "svc")].summary
    assert main_pid() not in (0, first) and said() == "bonjour"
    with pytest.raises(ProcessLookupError):
        os.kill(first, 0)


def test_many_targets_at_once_keep_their_own_pyinfra_state(project):
    """Four targets plan and apply concurrently, each its own State in its own thread."""
    project.runbook(
        """
        name: rb
        targets: tag:web
        steps:
          - id: a
            host.file: {path: "WORK/{{ target.name }}/a", content: "a {{ target.name }}\\n"}
          - id: b
            host.directory: {path: "WORK/{{ target.name }}/b-{{ target.address }}"}
          - id: c
            host.file: {path: "WORK/{{ target.name }}/c", content: "c {{ target.address }}\\n"}
        """
    )
    for _ in range(2):
        shutil.rmtree(project.work)
        project.work.mkdir()
        _, result = project.run()
        assert result.exit_code == 0
        for n, address in enumerate(HOSTS):
            base = project.work / f"h{n}"
            assert (base / "a").read_text() == f"a h{n}\n"
            assert (base / f"b-{address}").is_dir()
            assert (base / "c").read_text() == f"c {address}\n"
            assert sorted(p.name for p in base.iterdir()) == ["a", f"b-{address}", "c"]


def test_opskit_plan_shows_the_diff_and_apply_applies_exactly_that(project, opskit, monkeypatch):
    """The CLI as a user types it: `opskit plan` text and Markdown, `-o`, `opskit apply`."""
    home = project.root / "home"
    (home / ".ssh").mkdir(parents=True)
    shutil.copy(project.sshd.client_key, home / ".ssh" / "id_ed25519")  # the user's own key
    monkeypatch.setenv("HOME", str(home))
    (project.work / "h0").mkdir()
    (project.work / "h0" / "motd").write_text("welcome\nto h0\n")
    project.runbook(
        """
        name: rb
        targets: h0
        steps:
          - id: motd
            host.file: {path: WORK/h0/motd, content: "welcome\\nto {{ target.name }}, again\\n"}
        """
    )
    text = opskit("plan", "rb", cwd=project.root)
    assert text.code == 0, text.err
    assert "~ motd  host.file: update" in text.out
    assert "-to h0" in text.out and "+to h0, again" in text.out and " welcome" in text.out
    md = opskit("plan", "rb", "--format", "md", "-o", "plan.json", cwd=project.root)
    assert md.code == 0 and "```diff" in md.out and "+to h0, again" in md.out
    saved = json.loads((project.root / "plan.json").read_text())
    assert saved["targets"][0]["steps"][0]["change"]["before"] == "welcome\nto h0\n"
    applied = opskit("apply", "plan.json", "--yes", cwd=project.root)
    assert applied.code == 0, applied.err
    assert (project.work / "h0" / "motd").read_text() == "welcome\nto h0, again\n"
    again = opskit("plan", "rb", cwd=project.root)
    assert "  motd  host.file:" in again.out and "is up to date" in again.out


def test_a_run_asks_the_host_its_facts_once_per_step_and_applies_what_the_probe_listed(project):
    """Issue 17: the engine's re-probe evaluates the operation; the apply right after runs the
    commands it listed (nothing reached the host in between): no fact is asked again, so a step
    costs pyinfra's own round trips. A change in between (the directory step, before the files)
    makes the next probe ask afresh."""
    project.runbook(
        """
        name: rb
        targets: h0
        steps:
          - id: dir
            host.directory: {path: "WORK/h0", mode: "0750"}
          - id: a
            host.file: {path: "WORK/h0/a.conf", content: "a\\n", mode: "0640"}
          - id: b
            host.file: {path: "WORK/h0/b.conf", content: "b\\n", mode: "0640"}
        """
    )
    _, result = project.run()
    assert result.exit_code == 0
    assert (project.work / "h0" / "b.conf").read_text() == "b\n"
    assert oct((project.work / "h0" / "a.conf").stat().st_mode & 0o777) == "0o640"
    running = [s for s in project.sent if not s.read_only]
    assert running and not [s.what for s in running if s.reads], "the apply asked facts again"
    # What the apply sent: the upload and the mode of each file, the directory's mkdir/chmod.
    # What the apply sent is exactly what pyinfra would: mkdir and chmod, then each upload and
    # its chmod.
    base = project.work / "h0"
    assert [(s.method, s.what) for s in running] == [
        ("run", f"sh -c 'mkdir -p {base}'"),
        ("run", f"sh -c 'chmod 750 {base}'"),
        ("put", f"{base}/a.conf"),
        ("run", f"sh -c 'chmod 640 {base}/a.conf'"),
        ("put", f"{base}/b.conf"),
        ("run", f"sh -c 'chmod 640 {base}/b.conf'"),
    ]


def test_known_facts_and_listings_go_with_any_change_to_the_host():
    """What the host answered (and what a probe listed) is used while the pool's count of
    changes to that host stays the same, and never after."""
    from opskit.clients.pyinfra_connector import KnownFacts
    from opskit.clients.pyinfra_known import _MISSING
    from opskit.clients.ssh import CommandResult, Endpoint

    class Pool:
        changes = 0

        def generation(self, endpoint):
            return self.changes

    pool = Pool()
    known = KnownFacts(pool, Endpoint(name="h", host="127.0.0.1"))  # type: ignore[arg-type]
    answer = CommandResult(0, "x\n", "", 0.01)
    known.keep("stat /a", answer, asked_at=0)
    known.listed("op", ["cmd"], asked_at=0)  # type: ignore[list-item]
    assert known.get("stat /a") is answer
    pool.changes += 1  # anything sent that may change the host
    assert known.get("stat /a") is None and known.listing("op") is None
    known.keep("stat /a", answer, asked_at=0)  # asked before the change, answered after
    assert known.get("stat /a") is None
    known.listed("op", ["cmd"], asked_at=0)  # type: ignore[list-item]
    assert known.listing("op") is None  # listed from what was asked before the change
    known.listed("op", ["cmd"], asked_at=1)  # type: ignore[list-item]
    assert known.listing("op") == ["cmd"] and known.listing("op") is None  # used once
    # A probe's finding: kept while nothing changes the host, whatever changed it.
    known.keep_found("probe", {"found": 1}, asked_at=1)
    assert known.found("probe") == {"found": 1}
    pool.changes += 1
    assert known.found("probe") is _MISSING
    known.keep_found("probe", {"found": 2}, asked_at=1)  # it ran while the host changed
    assert known.found("probe") is _MISSING


def test_pyinfras_state_context_is_per_thread_after_the_bridge_sets_it_up(monkeypatch):
    """The one write into pyinfra's private parts (its State and Inventory contexts' container,
    made thread-local: pyinfra 3.10 has no public way): each thread sees the State it set, and
    the shape it relies on is checked, so a pyinfra that changed it fails here first."""
    from pyinfra import context

    from opskit.clients import pyinfra_connector

    pyinfra_connector._per_thread_context()
    seen: dict[str, object] = {}
    ready, done = threading.Event(), threading.Event()

    def other() -> None:
        context.ctx_state.set("state of the other thread")
        ready.set()
        done.wait(10)
        seen["other"] = context.ctx_state.get()
        context.ctx_state.reset()

    thread = threading.Thread(target=other)
    thread.start()
    ready.wait(10)
    seen["here"] = context.ctx_state.get()
    context.ctx_state.set("state of this thread")
    done.set()
    thread.join(10)
    seen["here after"] = context.ctx_state.get()
    context.ctx_state.reset()
    assert seen == {
        "other": "state of the other thread",
        "here": None,
        "here after": "state of this thread",
    }
    # The global arguments' table, computed once, is pyinfra's own.
    from typing import get_type_hints

    from pyinfra.api import arguments

    assert arguments.all_global_arguments() == list(get_type_hints(arguments.AllArguments).items())
    assert arguments.all_global_arguments() is arguments.all_global_arguments()
    # So is the connectors' table (an Inventory per target read the entry points three times):
    # pyinfra's own, a dict of its own each time, without reading the entry points again.
    from importlib.metadata import entry_points

    from pyinfra.api import connectors, inventory

    table = {ep.name: ep.load() for ep in entry_points(group="pyinfra.connectors")}
    assert table["opskit"] is pyinfra_connector.OpskitConnector
    assert connectors.get_all_connectors() == table  # read once
    monkeypatch.setattr(connectors, "entry_points", None)  # read again, it would fail
    assert connectors.get_all_connectors() == table == inventory.get_all_connectors()
    assert connectors.get_all_connectors() is not connectors.get_all_connectors()
    assert connectors.get_execution_connectors()["opskit"] is pyinfra_connector.OpskitConnector


def test_pyinfras_tables_are_computed_before_the_first_targets_start():
    """The memoised tables are filled while the set-up holds its lock, not by the first call:
    the first targets start together, and each would otherwise compute them (20 hosts read the
    entry points 20 times, about 0.7 s of CPU in bench/host_state.py). A fresh interpreter, so
    that nothing else in this process filled them first."""
    code = """
from pyinfra.api import arguments, connectors, inventory
from opskit.clients import pyinfra_connector
pyinfra_connector._per_thread_context()
connectors.entry_points = None  # computing a table now would fail
arguments.get_type_hints = None
assert inventory.get_all_connectors()["opskit"] is pyinfra_connector.OpskitConnector
assert arguments.all_global_arguments()
print("ready")
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout.strip()) == (0, "ready"), done.stderr[-2000:]


def test_a_host_step_whose_connection_drops_is_unknown_and_not_run_again(project, tmp_path):
    """The sshd session serving h0 dies while pyinfra's `mkdir` runs there (a stand-in `mkdir`
    first on the hosts' PATH makes the directory, then kills its sshd ancestor): the command was
    sent and its end never read. The host.directory step is journaled unknown, not failed, and
    not run again though it allows retries; the target stops there, the other hosts go on."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "mkdir"
    tool.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {tmp_path}/mkdir.calls\n'
        '/bin/mkdir "$@" || exit\n'
        'case "$*" in *h0-dir*) ;; *) exit 0;; esac\n'
        "p=$$\n"
        'while [ "$p" -gt 1 ]; do\n'
        "  p=$(cut -d' ' -f4 /proc/$p/stat)\n"
        '  case "$(cat /proc/$p/comm)" in sshd*) kill -9 "$p"; sleep 5; exit 0;; esac\n'
        "done\n"
        "exit 3\n"  # no sshd above: the test's premise is wrong
    )
    tool.chmod(0o755)
    project.host_env = {"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin"}
    project.runbook(
        """
        name: rb
        targets: [h0, h1]
        steps:
          - id: dir
            host.directory: {path: "WORK/{{ target.name }}-dir", mode: "0750"}
            retries: 2
            interval: 0s
          - id: after
            ssh.run: {cmd: "touch WORK/{{ target.name }}.after"}
        """
    )
    _, result = project.run()
    assert result.exit_code == 1
    steps = project.steps(result.run_id)
    assert steps[("h0", "dir")].status == "unknown", steps[("h0", "dir")].error
    assert "lost while" in steps[("h0", "dir")].error
    assert (project.work / "h0-dir").is_dir()  # it ran: only its answer was lost
    calls = (tmp_path / "mkdir.calls").read_text().splitlines()
    assert sum("h0-dir" in c for c in calls) == 1  # sent once: never retried blindly
    assert not (project.work / "h0.after").exists()
    assert steps[("h1", "dir")].status == "succeeded"
    assert steps[("h1", "after")].status == "succeeded"
    assert (project.work / "h1-dir").stat().st_mode & 0o777 == 0o750


def test_a_host_file_whose_connection_drops_at_its_rename_is_unknown(project, monkeypatch):
    """host.file uploads to a temporary file and renames it over the path; the connection
    drops right after h0's rename is sent. Whether h0's file was replaced is unknown: the step
    is journaled unknown and not run again, though it allows retries; h1 goes on."""
    dropped = drop_after_sending(monkeypatch, "posix_rename", lambda path: "/h0.conf." in path)
    project.runbook(
        """
        name: rb
        targets: [h0, h1]
        steps:
          - id: conf
            host.file: {path: "WORK/{{ target.name }}.conf", content: "new\\n"}
            retries: 2
            interval: 0s
          - id: after
            ssh.run: {cmd: "touch WORK/{{ target.name }}.after"}
        """
    )
    _, result = project.run()
    assert result.exit_code == 1
    steps = project.steps(result.run_id)
    assert steps[("h0", "conf")].status == "unknown", steps[("h0", "conf")].error
    assert "was being replaced" in steps[("h0", "conf")].error
    assert len(dropped) == 1  # sent once: never retried blindly
    assert not (project.work / "h0.after").exists()
    assert steps[("h1", "after")].status == "succeeded"
    assert (project.work / "h1.conf").read_text() == "new\n"
