"""deploy-proxmoxmcp end to end in the lab: the real ProxmoxMCP-Plus from PyPI (through the
wheelhouse `opskit lab up` prepared), fakepve, a real sshd per host, the systemctl stand-in.

One lab for the module (the install takes 20-40 s); the tests run in order and build on each
other: dry run on the fresh lab, deploy, a second plan, a broken release rolled back, and
last the search for secrets in everything the runs left behind.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import sys
import textwrap
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labkit import Lab, lab_up

pytestmark = pytest.mark.integration

BROKEN = "0.0.1.dev0"  # a release whose entry point dies at once
OUTPUTS: list[str] = []  # stdout and stderr of every opskit command of this module


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from lab_up(tmp_path_factory.mktemp("mcp"), suffix="m")


def opskit(lab: Lab, *args: str) -> tuple[int, str]:
    started = time.monotonic()
    done = lab.opskit(*args)
    text = done.stdout + done.stderr
    OUTPUTS.append(text)
    print(f"opskit {' '.join(args)}: exit {done.returncode} in {time.monotonic() - started:.1f}s")
    return done.returncode, text


def secret(lab: Lab, name: str) -> str:
    return (lab.root / "secrets" / name).read_text().strip()


def upper(lab: Lab) -> Path:
    return lab.root / "hosts" / "ai" / "upper"


def tree(root: Path) -> dict[str, str]:
    """Every path under root with its type, mode and content digest (or link target)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            st = path.lstat()
            if path.is_symlink():
                found[str(path)] = f"link {os.readlink(path)}"
            elif path.is_file():
                found[str(path)] = f"{st.st_mode:o} {hashlib.sha256(path.read_bytes()).hexdigest()}"
            else:
                found[str(path)] = f"{st.st_mode:o}"
    return found


def ask(
    lab: Lab,
    method: str,
    url: str,
    *,
    token: str | None = None,
    bearer: str | None = None,
    ca: Path | None = None,
) -> tuple[int, str]:
    """An HTTP request from the lab's controller namespace: (status, body)."""
    script = textwrap.dedent("""
        import json, ssl, sys, urllib.request, urllib.error
        method, url, token, bearer, ca = sys.argv[1:6]
        headers = {}
        if token:
            headers["Authorization"] = "PVEAPIToken=" + token
        if bearer:
            headers["Authorization"] = "Bearer " + bearer
        data = b"{}" if method == "POST" else None
        if data:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        context = ssl.create_default_context(cafile=ca) if ca else None
        try:
            with urllib.request.urlopen(request, timeout=60, context=context) as response:
                print(json.dumps([response.status, response.read().decode()]))
        except urllib.error.HTTPError as exc:
            print(json.dumps([exc.code, exc.read().decode()]))
        except OSError as exc:
            print(json.dumps([0, str(exc)]))
    """)
    done = lab.inside(
        sys.executable, "-c", script, method, url, token or "", bearer or "", str(ca or "")
    )
    status, body = json.loads(done.stdout)
    return int(status), str(body)


def mcp(lab: Lab, path: str, method: str = "GET") -> tuple[int, str]:
    url = f"http://{lab.address('ai')}:8811{path}"
    return ask(lab, method, url, bearer=secret(lab, "proxmoxmcp-api-key"))


def pve(lab: Lab, path: str) -> object:
    url = f"https://{lab.address('pve')}:8006/api2/json{path}"
    token = f"root@pam!opskit={secret(lab, 'proxmox-token')}"
    status, body = ask(lab, "GET", url, token=token, ca=lab.root / "pve" / "pve.crt")
    assert status == 200, body
    return json.loads(body)["data"]


def wheel(directory: Path, version: str, requires: str | None = None) -> Path:
    """A proxmox-mcp-plus wheel whose entry point exits at once: a release that never answers
    (or, with `requires`, one pip cannot install from a wheelhouse without that package)."""
    dist = f"proxmox_mcp_plus-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: proxmox-mcp-plus\nVersion: {version}\n"
    if requires:
        metadata += f"Requires-Dist: {requires}\n"
    files = {
        "proxmox_mcp/__init__.py": "",
        "proxmox_mcp/docker_entrypoint.py": "import sys\nsys.exit('broken on purpose')\n",
        f"{dist}/METADATA": metadata,
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: opskit-tests\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{name},sha256={digest.decode()},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"proxmox_mcp_plus-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path


def test_the_lab_prepared_the_wheelhouse(lab: Lab) -> None:
    from opskit.clients.wheelhouse import Interpreter, cache_dir, ready

    where = cache_dir("proxmox-mcp-plus", "0.6.7")
    assert ready(where, "proxmox-mcp-plus", "0.6.7", Interpreter.here()), where


def dry_run_changes_nothing(lab: Lab) -> tuple[int, str]:
    """`deploy-proxmoxmcp --dry-run`: nothing on the host changes, Proxmox sees only GETs."""
    tasks = len(pve(lab, "/nodes/pve/tasks"))  # type: ignore[arg-type]
    status = pve(lab, "/nodes/pve/qemu/110/status/current")["status"]  # type: ignore[index]
    before = tree(upper(lab))
    served = lab.root / "pve" / "requests.jsonl"
    seen = len(served.read_text().splitlines())
    code, text = opskit(lab, "run", "deploy-proxmoxmcp", "--lab", "--dry-run")
    assert "nothing was changed" in text and "dry run" in text, text
    assert tree(upper(lab)) == before
    assert pve(lab, "/nodes/pve/qemu/110/status/current")["status"] == status  # type: ignore[index]
    assert len(pve(lab, "/nodes/pve/tasks")) == tasks  # type: ignore[arg-type]
    during = [json.loads(line) for line in served.read_text().splitlines()[seen:]]
    assert during and {r["method"] for r in during} == {"GET"}, during
    return code, text


def test_dry_run_changes_nothing(lab: Lab) -> None:
    code, text = opskit(
        lab, "run", "vm-power", "--lab", "--yes", "-p", "action=shutdown", "--limit", "vm:110"
    )
    assert code == 0, text
    # The guest is off, and so is its host: the plan starts it, and what it would do over SSH
    # is known after apply (checked again when it runs), not a blocker.
    code, text = dry_run_changes_nothing(lab)
    assert code == 0, text
    assert "start vm 110 (ai) (stopped -> running)" in text
    assert "? venv  python.venv: known after apply: step vm-up changes the guest's power" in text
    assert "connection refused" in text and "blocker" not in text
    code, text = opskit(lab, "run", "vm-power", "--lab", "--yes", "--limit", "vm:110")
    assert code == 0, text
    lab.wait_for_ssh("ai")
    code, text = dry_run_changes_nothing(lab)
    assert code == 0, text
    assert "create venv /opt/proxmoxmcp/releases/0.6.7 with proxmox-mcp-plus 0.6.7" in text
    assert "dry run: nothing was changed" in text


def test_deploy_answers_with_the_clusters_nodes(lab: Lab) -> None:
    code, text = opskit(lab, "run", "deploy-proxmoxmcp", "--lab", "--yes")
    assert code == 0, text
    assert "installed proxmox-mcp-plus 0.6.7 in /opt/proxmoxmcp/releases/0.6.7" in text
    assert pve(lab, "/nodes/pve/qemu/110/status/current")["status"] == "running"  # type: ignore[index]
    status, body = mcp(lab, "/livez")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    status, body = mcp(lab, "/health")
    assert status == 200 and json.loads(body)["connected_to_mcp"] is True
    status, body = mcp(lab, "/get_nodes", "POST")
    assert status == 200 and "pve" in body, body
    # Without the key the proxy refuses.
    assert ask(lab, "GET", f"http://{lab.address('ai')}:8811/health")[0] in (401, 403)
    # The layout: a release per version, `current` pointing at it, config and secrets 0600.
    root = upper(lab)
    assert os.readlink(root / "opt/proxmoxmcp/current") == "releases/0.6.7"
    assert os.readlink(root / "opt/proxmoxmcp/good") == "releases/0.6.7"
    config_path = root / "etc/proxmoxmcp/config.json"
    env_path = root / "etc/proxmoxmcp/proxmoxmcp.env"
    assert config_path.stat().st_mode & 0o777 == 0o600
    assert env_path.stat().st_mode & 0o777 == 0o600
    config = json.loads(config_path.read_text())
    assert config["proxmox"] == {
        "host": lab.address("pve"),
        "port": 8006,
        "verify_ssl": True,
        "service": "PVE",
        "timeout": 30,
    }
    assert config["auth"]["token_value"] == secret(lab, "proxmox-token")
    assert f"PROXMOX_API_KEY={secret(lab, 'proxmoxmcp-api-key')}\n" in env_path.read_text()
    assert "REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt" in env_path.read_text()
    unit = (root / "etc/systemd/system/proxmoxmcp.service").read_text()
    assert "EnvironmentFile=/etc/proxmoxmcp/proxmoxmcp.env" in unit
    assert "PROXMOX_API_KEY" not in unit.replace("# PROXMOX_API_KEY", "")


def _plan(lab: Lab, *params: str) -> dict[str, object]:
    code, text = opskit(lab, "plan", "deploy-proxmoxmcp", "--lab", "--format", "json", *params)
    assert code == 0, text
    plan: dict[str, object] = json.loads(text[text.index("{") :])
    return plan


def _changes(plan: dict[str, object]) -> list[str]:
    targets = plan["targets"]
    assert isinstance(targets, list)
    return [
        f"{s['id']}: {s['change']['kind']}: {s['change']['summary']}"
        for t in targets
        for s in t["steps"]
        if not s["skipped"] and s["change"]["kind"] != "none"
    ]


def test_a_second_run_plans_no_change(lab: Lab) -> None:
    assert _changes(_plan(lab)) == []
    code, text = opskit(lab, "run", "deploy-proxmoxmcp", "--lab", "--yes")
    assert code == 0, text
    # Only the four checks ran; every step that could change something found nothing to do.
    assert re.search(r"succeeded in [0-9.]+s: 4 ok, 14 unchanged, 0 failed, 2 skipped", text), text


def test_a_version_without_a_wheelhouse_is_refused_with_the_command(lab: Lab) -> None:
    """Inside the lab nothing can be downloaded: the plan says which command prepares it."""
    before = tree(upper(lab))
    code, text = opskit(lab, "run", "deploy-proxmoxmcp", "--lab", "--yes", "-p", "version=0.6.6")
    assert code == 1, text
    assert "the plan has blockers; nothing was run" in text
    assert "python -m opskit.lab.wheelhouse proxmox-mcp-plus==0.6.6" in text
    assert "Traceback" not in text
    assert tree(upper(lab)) == before


def test_the_docker_method_plans(lab: Lab) -> None:
    code, text = opskit(
        lab, "run", "deploy-proxmoxmcp", "--lab", "--dry-run", "-p", "method=docker"
    )
    assert code == 0, text
    assert "/opt/proxmoxmcp/bin/proxmoxmcp-ctl docker release 0.6.7 (creates" in text
    assert "create /opt/proxmoxmcp/compose.yaml" in text
    assert "venv  python.venv: skipped" in text


def test_a_changed_secret_shows_in_the_plan_and_is_put_back(lab: Lab, tmp_path: Path) -> None:
    """The probe compares the installed secrets exactly (during planning too), never showing
    them: a key changed on the host is an update, and the run puts it back and restarts."""
    runbooks = tmp_path / "runbooks"
    runbooks.mkdir()
    (runbooks / "tamper.yaml").write_text(
        textwrap.dedent("""
        name: tamper
        description: someone edits the API key on the host
        targets: ai
        steps:
          - id: edit
            ssh.run:
              cmd: >-
                sed -i 's/^PROXMOX_API_KEY=.*/PROXMOX_API_KEY=edited-by-hand/'
                /etc/proxmoxmcp/proxmoxmcp.env
    """)
    )
    code, text = opskit(lab, "--runbooks", str(runbooks), "run", "tamper", "--lab", "--yes")
    assert code == 0, text
    changes = _changes(_plan(lab))
    assert changes == [
        "config: update: update environment: PROXMOX_API_KEY",
        "start: update: run /opt/proxmoxmcp/bin/proxmoxmcp-ctl venv restart (unless failed)",
        "confirm: update: run /opt/proxmoxmcp/bin/proxmoxmcp-ctl venv confirm (unless failed)",
        "rollback: update: run /opt/proxmoxmcp/bin/proxmoxmcp-ctl venv rollback (unless failed)",
    ], changes
    code, text = opskit(lab, "run", "deploy-proxmoxmcp", "--lab", "--yes")
    assert code == 0, text
    assert _changes(_plan(lab)) == []
    status, body = mcp(lab, "/health")
    assert status == 200 and json.loads(body)["connected_to_mcp"] is True


def test_an_install_that_fails_leaves_no_release_behind(lab: Lab, tmp_path: Path) -> None:
    """pip fails (a dependency the wheelhouse lacks): the run stops before the switch, the
    half-built venv is gone, and what runs is untouched."""
    wheelhouse = tmp_path / "wheelhouse"
    wheel(wheelhouse, "0.0.2.dev0", requires="opskit-no-such-package")
    code, text = opskit(
        lab,
        "run",
        "deploy-proxmoxmcp",
        "--lab",
        "--yes",
        "-p",
        "version=0.0.2.dev0",
        "-p",
        f"wheelhouse={wheelhouse}",
    )
    assert code == 1, text
    assert "install of proxmox-mcp-plus 0.0.2.dev0 into /opt/proxmoxmcp/releases/0.0.2.dev0" in text
    assert "opskit-no-such-package" in text and "Traceback" not in text
    releases = upper(lab) / "opt/proxmoxmcp/releases"
    assert sorted(p.name for p in releases.iterdir()) == ["0.6.7"]
    assert os.readlink(upper(lab) / "opt/proxmoxmcp/current") == "releases/0.6.7"
    assert mcp(lab, "/health")[0] == 200
    assert not list((upper(lab) / "var/tmp").glob("opskit-wheelhouse*"))


def test_a_broken_release_is_rolled_back(lab: Lab, tmp_path: Path) -> None:
    wheelhouse = tmp_path / "wheelhouse"
    wheel(wheelhouse, BROKEN)
    code, text = opskit(
        lab,
        "run",
        "deploy-proxmoxmcp",
        "--lab",
        "--yes",
        "-p",
        f"version={BROKEN}",
        "-p",
        f"wheelhouse={wheelhouse}",
    )
    assert code == 1, text
    assert f"installed proxmox-mcp-plus {BROKEN}" in text
    run_id = re.findall(r"run (\S+) failed in", text)[-1]
    host_log = (lab.state_dir / "logs" / run_id / "ai.log").read_text()
    assert f"rolled back releases/{BROKEN} -> releases/0.6.7" in host_log, host_log
    root = upper(lab)
    assert os.readlink(root / "opt/proxmoxmcp/current") == "releases/0.6.7"
    assert os.readlink(root / "opt/proxmoxmcp/failed") == f"releases/{BROKEN}"
    status, body = mcp(lab, "/get_nodes", "POST")
    assert status == 200 and "pve" in body, body
    # Back where the last good deploy left it: the default version plans no change.
    assert _changes(_plan(lab)) == []


def test_secrets_reach_no_plan_journal_or_log(lab: Lab) -> None:
    values = [secret(lab, "proxmox-token"), secret(lab, "proxmoxmcp-api-key")]
    assert OUTPUTS and all(len(v) >= 16 for v in values)
    for text in OUTPUTS:
        assert not any(v in text for v in values)
    leaks = []
    holders = {"etc/proxmoxmcp/config.json", "etc/proxmoxmcp/proxmoxmcp.env"}
    for base, skip in (
        (lab.root / "state", set()),
        (lab.root / "logs", set()),
        (upper(lab), holders),
    ):
        for dirpath, _, filenames in os.walk(base):
            for name in filenames:
                path = Path(dirpath, name)
                if str(path.relative_to(base)) in skip or path.is_symlink():
                    continue
                data = path.read_bytes()
                leaks += [str(path) for v in values if v.encode() in data]
    assert leaks == []


# --- the pieces, without the lab -------------------------------------------------------------


def test_lab_up_prepares_what_the_shipped_runbooks_install() -> None:
    from opskit.lab.wheelhouse import runbooks_dir, wanted

    directory = runbooks_dir(Path(__file__).resolve().parent.parent / "inventory/homelab.yaml")
    assert directory is not None
    assert ("proxmox-mcp-plus", "0.6.7") in set(wanted(directory))


def test_inside_the_lab_a_download_names_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from opskit.clients.wheelhouse import Interpreter, WheelhouseError, download

    monkeypatch.setenv("OPSKIT_LAB_ACTIVE", "1")
    with pytest.raises(WheelhouseError) as caught:
        download("proxmox-mcp-plus", "0.6.7", Interpreter("3.12", "aarch64"))
    assert (
        "python -m opskit.lab.wheelhouse proxmox-mcp-plus==0.6.7 --python 3.12 --machine aarch64"
        in str(caught.value)
    )


def test_a_wheelhouse_is_recognised_by_its_distributions(tmp_path: Path) -> None:
    from opskit.clients.wheelhouse import Interpreter, holds, marker, ready

    wheel(tmp_path, "1.2.3")
    assert holds(tmp_path, "proxmox-mcp-plus", "1.2.3")
    assert holds(tmp_path, "Proxmox_MCP.Plus", "1.2.3")
    assert not holds(tmp_path, "proxmox-mcp-plus", "1.2.4")
    here = Interpreter.here()
    assert not ready(tmp_path, "proxmox-mcp-plus", "1.2.3", here)  # no finished download
    marker(tmp_path, here).write_text("")
    assert ready(tmp_path, "proxmox-mcp-plus", "1.2.3", here)


def test_config_changes_name_keys_never_values() -> None:
    from opskit.actions.proxmoxmcp import _env_keys, _env_value, _json_keys

    old = '{"auth": {"token_value": "s3cret-old"}, "proxmox": {"port": 8006}}'
    new = '{"auth": {"token_value": "s3cret-new"}, "proxmox": {"port": 8006}}'
    assert _json_keys(old, new) == ["auth.token_value"]
    assert _env_keys("A=1\nPROXMOX_API_KEY=x\n", "A=1\nPROXMOX_API_KEY=y\n") == ["PROXMOX_API_KEY"]
    assert _env_value("plain/path:8006") == "plain/path:8006"
    assert _env_value('has "quotes" and space') == '"has \\"quotes\\" and space"'


class FakeHost:
    """The shell a probe sees: files by path (mode, owner, group, text)."""

    def __init__(self, files: dict[str, tuple[str, str, str, str]]) -> None:
        self.files = files

    async def run(self, command: str, *, probe: bool = False, **kw: object) -> object:
        from opskit.clients.ssh import CommandResult

        assert probe, command
        path = shlex.split(command)[2]
        if path not in self.files:
            return CommandResult(rc=1, stdout="", stderr="", duration=0.0)
        mode, owner, group, text = self.files[path]
        digest = hashlib.sha256(text.encode()).hexdigest()
        out = f"{mode} {owner} {group}\n{digest}  {path}\n{text}"
        return CommandResult(rc=0, stdout=out, stderr="", duration=0.0)


def _config_probe(
    monkeypatch: pytest.MonkeyPatch, files: dict[str, tuple[str, str, str, str]], api_key: str
) -> object:
    import asyncio

    from opskit.actions import ActionContext, get
    from opskit.clients.connections import Connections
    from opskit.loader import load_inventory

    monkeypatch.setenv("PROXMOX_TOKEN", "token-value-0123456789")
    inventory, _ = load_inventory(Path(__file__).resolve().parent.parent / "inventory/homelab.yaml")
    target = inventory.targets("vm:110")[0]

    class Context(ActionContext):
        def shell(self) -> Any:
            return FakeHost(files)

    action_cls = get("proxmoxmcp.config")
    action = action_cls(action_cls.Args.model_validate({"api_key": api_key}))
    ctx = Context(target=target, read_only=True, connections=Connections(inventory))
    return asyncio.run(action.probe(ctx))


def _installed(api_key: str) -> dict[str, tuple[str, str, str, str]]:
    config = {
        "auth": {
            "token_name": "opskit",
            "token_value": "token-value-0123456789",
            "user": "root@pam",
        },
        "logging": {"level": "INFO"},
        "proxmox": {
            "host": "pve.tail0000.ts.net",
            "port": 8006,
            "service": "PVE",
            "timeout": 30,
            "verify_ssl": True,
        },
    }
    env = "# ProxmoxMCP-Plus, written by opskit: secrets, mode 0600, read by systemd only\n"
    return {
        "/etc/proxmoxmcp/config.json": (
            "600",
            "proxmoxmcp",
            "proxmoxmcp",
            json.dumps(config, indent=2, sort_keys=True) + "\n",
        ),
        "/etc/proxmoxmcp/proxmoxmcp.env": (
            "600",
            "root",
            "root",
            f"{env}PROXMOX_API_KEY={api_key}\n",
        ),
    }


def test_the_config_probe_compares_secrets_without_showing_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = "api-key-0123456789abcdef"
    same = _config_probe(monkeypatch, _installed(key), key)
    assert same.kind.value == "none", same  # type: ignore[attr-defined]
    rotated = _config_probe(monkeypatch, _installed("old-key-0123456789abcdef"), key)
    assert rotated.kind.value == "update"  # type: ignore[attr-defined]
    assert rotated.summary == "update environment: PROXMOX_API_KEY"  # type: ignore[attr-defined]
    shown = rotated.model_dump_json()  # type: ignore[attr-defined]
    assert key not in shown and "old-key" not in shown and "token-value" not in shown
    # A review without the key: the rest is compared, the key is known after apply.
    review = _config_probe(monkeypatch, _installed(key), "‹secret:api_key›")
    assert review.kind.value == "unknown", review  # type: ignore[attr-defined]
    assert "PROXMOX_API_KEY: known after apply" in review.summary  # type: ignore[attr-defined]
    files = _installed(key)
    path = "/etc/proxmoxmcp/config.json"
    files[path] = ("644", *files[path][1:])
    loose = _config_probe(monkeypatch, files, "‹secret:api_key›")
    assert loose.summary.startswith("update config.json: mode 0644 -> 0600")  # type: ignore[attr-defined]
