"""Python on hosts: python.venv, a package installed offline into a venv of its own.

The package and its dependencies come from a wheelhouse on the controller (fetched once while
online, see opskit.clients.wheelhouse, or a directory given for an air-gapped homelab); it is
sent to the host as one tar over the SSH connection and installed with `pip install --no-index`,
so the host needs no route to PyPI. The probe asks the venv's own interpreter which version is
installed (importlib.metadata), so a venv changed by hand shows in the plan.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from ..clients.wheelhouse import (
    NAME,
    VERSION,
    Interpreter,
    cache_dir,
    can_download,
    download,
    download_command,
    holds,
    ready,
)
from ..errors import OpskitError, WheelhouseError
from ..model import Change, ChangeKind, Duration, Outcome, Risk
from .base import Action, ActionArgs, ActionContext

DONE_MARK = ".opskit-installed"  # written last: a venv without it is half-built
_PATH = r"^/[A-Za-z0-9._/+-]*[A-Za-z0-9._+-]$"


class VenvArgs(ActionArgs):
    package: str = Field(..., pattern=NAME.pattern, description="the distribution, e.g. httpx")
    version: str = Field(..., pattern=VERSION.pattern, description="the exact version to install")
    path: str = Field(..., pattern=_PATH, description="the venv's absolute path on the host")
    wheelhouse: str | None = Field(
        None,
        description="a directory of wheels on the controller (relative to the project);"
        " default: opskit's cache, downloaded on first use while online",
    )
    python: str = Field(
        "/usr/bin/python3",
        pattern=r"^[A-Za-z0-9._/+-]+$",
        # Not `python3` from root's PATH: a venv links its interpreter, and one under /root
        # (pyenv, say) is one the service's user cannot run.
        description="the host's interpreter: a system one the service's user may run",
    )
    download: bool = Field(True, description="fetch a missing cached wheelhouse from the index")
    timeout: Duration = Field(900.0, description="how long the install on the host may take")


@dataclass
class HostVenv:
    """What the probe reads: the host's interpreter and the version the venv holds."""

    interpreter: Interpreter | None
    installed: str | None


class Venv(Action[VenvArgs]):
    """A package at an exact version in a venv of its own, installed offline from a wheelhouse."""

    name: ClassVar[str] = "python.venv"
    risk: ClassVar[Risk] = Risk.CHANGE
    Args = VenvArgs
    outputs: ClassVar[dict[str, str]] = {
        "version": "the version now installed (str)",
        "previous": "the version the venv held before, or null for a new venv",
        "path": "the venv's path (str)",
    }
    example: ClassVar[str] = """
        targets: vm:110
        steps:
          - id: venv
            python.venv:
              package: proxmox-mcp-plus
              version: "0.6.7"
              path: /opt/proxmoxmcp/releases/0.6.7
            register: venv            # later: {{ venv.previous }} (to roll back to)
        """

    def describe(self) -> str:
        a = self.args
        return f"venv {a.path}: {a.package}=={a.version}"

    # ----- reading ---------------------------------------------------------------------

    async def _read(self, ctx: ActionContext) -> HostVenv:
        a = self.args
        venv = shlex.quote(a.path)
        py = shlex.quote(a.python)
        facts = "import sys,platform;print('%d.%d' % sys.version_info[:2], platform.machine())"
        version = "import importlib.metadata as m,sys;print(m.version(sys.argv[1]))"
        command = (
            f"printf 'python %s\\n' \"$({py} -I -B -c {shlex.quote(facts)} 2>/dev/null)\";"
            f" if [ -f {venv}/{DONE_MARK} ] && [ -x {venv}/bin/python ]; then"
            f" printf 'installed %s\\n' \"$({venv}/bin/python -I -B -c {shlex.quote(version)}"
            f' {shlex.quote(a.package)} 2>/dev/null)"; fi'
        )
        done = await ctx.shell().run(command, probe=True)
        interpreter = installed = None
        for line in done.stdout.splitlines():
            key, _, value = line.partition(" ")
            if key == "python" and value.strip():
                try:
                    interpreter = Interpreter.parse(value)
                except WheelhouseError:
                    interpreter = None
            elif key == "installed" and value.strip():
                installed = value.strip()
        return HostVenv(interpreter, installed)

    def _source(self, ctx: ActionContext, interpreter: Interpreter | None) -> tuple[Path, bool]:
        """(the wheelhouse directory on the controller, whether it is ready to send)."""
        a = self.args
        if a.wheelhouse is not None:
            directory = ctx.path(a.wheelhouse)
            return directory, holds(directory, a.package, a.version)
        directory = cache_dir(a.package, a.version)
        if interpreter is None:
            return directory, holds(directory, a.package, a.version)
        return directory, ready(directory, a.package, a.version, interpreter)

    def _missing(self, directory: Path, interpreter: Interpreter | None) -> str:
        a = self.args
        if a.wheelhouse is not None:
            return (
                f"the wheelhouse {directory} holds no {a.package} {a.version}: fill it with"
                f"  pip download --dest {directory} {a.package}=={a.version}"
            )
        how = download_command(a.package, a.version, interpreter or Interpreter.here())
        where = "" if can_download() else " (inside the lab there is no route out)"
        return (
            f"no wheelhouse for {a.package} {a.version} in {directory}{where}: prepare it"
            f" while online with  {how}"
        )

    # ----- probe -----------------------------------------------------------------------

    async def probe(self, ctx: ActionContext) -> Change:
        a = self.args
        state = await self._read(ctx)
        if state.installed == a.version:
            return Change.none(f"{a.package} {a.version} installed in {a.path}")
        directory, ok = self._source(ctx, state.interpreter)
        blockers = []
        if state.interpreter is None:
            blockers.append(f"the host has no working {a.python} (install Python 3 and venv)")
        elif not ok and (a.wheelhouse is not None or not a.download or not can_download()):
            blockers.append(self._missing(directory, state.interpreter))
        source = (
            "from the cached wheelhouse" if ok else "wheelhouse downloaded on the controller first"
        )
        if a.wheelhouse is not None:
            source = f"from {a.wheelhouse}"
        if state.installed is None:
            return Change(
                kind=ChangeKind.CREATE,
                summary=f"create venv {a.path} with {a.package} {a.version} ({source})",
                after={"version": a.version},
                blockers=blockers,
            )
        return Change(
            kind=ChangeKind.UPDATE,
            summary=f"{a.package} {state.installed} -> {a.version} in {a.path} ({source})",
            before={"version": state.installed},
            after={"version": a.version},
            blockers=blockers,
        )

    # ----- apply -----------------------------------------------------------------------

    async def apply(self, ctx: ActionContext) -> Outcome:
        import asyncio  # not at the top: `opskit validate` imports this module and needs no loop
        import secrets

        a = self.args
        state = await self._read(ctx)
        if state.installed == a.version:
            return Outcome(ok=True, summary=f"{a.package} {a.version} installed in {a.path}")
        if state.interpreter is None:
            raise OpskitError(
                f"the host has no working {a.python}: install Python 3 (Debian: python3,"
                " python3-venv)"
            )
        directory, ok = self._source(ctx, state.interpreter)
        if not ok:
            if a.wheelhouse is not None or not a.download or not can_download():
                raise OpskitError(self._missing(directory, state.interpreter))
            ctx.log(f"downloading {a.package}=={a.version} and its dependencies into {directory}")
            try:
                await asyncio.to_thread(download, a.package, a.version, state.interpreter)
            except WheelhouseError as exc:
                raise OpskitError(f"{exc}; {self._missing(directory, state.interpreter)}") from None
        data, count = await asyncio.to_thread(_tar, directory)
        shell = ctx.shell()
        remote = f"/var/tmp/opskit-wheelhouse-{secrets.token_hex(6)}.tar"
        ctx.log(f"sending {count} files ({len(data) / 1e6:.1f} MB) to the host")
        from ..clients.primitives import put_file

        await put_file(shell, remote, data, mode=0o600)
        ctx.log(f"installing {a.package}=={a.version} into {a.path} (offline)")
        result = await shell.run(self._script(remote), timeout=a.timeout)
        if result.rc != 0:
            tail = (result.stderr or result.stdout).strip()[-600:]
            return Outcome(
                ok=False,
                changed=True,
                summary=f"install of {a.package} {a.version} failed",
                error=f"install of {a.package} {a.version} into {a.path} failed"
                f" (exit {result.rc}): {tail}",
            )
        after = await self._read(ctx)
        if after.installed != a.version:
            return Outcome(
                ok=False,
                changed=True,
                summary="installed, but the venv reports another version",
                error=f"{a.path} reports {a.package} {after.installed or 'missing'}, not"
                f" {a.version}",
            )
        was = f" (was {state.installed})" if state.installed else ""
        return Outcome(
            ok=True,
            changed=True,
            summary=f"installed {a.package} {a.version} in {a.path}{was}",
            outputs={"version": a.version, "previous": state.installed, "path": a.path},
        )

    def _script(self, remote: str) -> str:
        """Unpack, build the venv beside the old one, install offline; the old one comes back
        if anything fails, and the archive and the unpacked wheels never stay behind."""
        a = self.args
        q = shlex.quote
        venv, old, tar = q(a.path), q(a.path + ".opskit-old"), q(remote)
        spec = q(f"{a.package}=={a.version}")
        return "\n".join(
            [
                "set -e",
                "umask 022",
                "work=$(mktemp -d /var/tmp/opskit-wheelhouse.XXXXXX)",
                f"trap 'rm -rf \"$work\" {tar}' EXIT",
                f'tar -xf {tar} -C "$work"',
                f"mkdir -p {q(str(Path(a.path).parent))}",
                f"rm -rf {old}",
                f"if [ -e {venv} ]; then mv {venv} {old}; fi",
                f"restore() {{ rm -rf {venv}; if [ -e {old} ]; then mv {old} {venv}; fi; }}",
                f"if ! {q(a.python)} -m venv {venv}; then restore;"
                f" echo 'opskit: {a.python} -m venv failed (Debian: apt install python3-venv)' >&2;"
                " exit 3; fi",
                f"if ! PIP_CONFIG_FILE=/dev/null {venv}/bin/python -m pip install --no-index"
                f' --find-links "$work" --no-cache-dir --disable-pip-version-check --quiet'
                f" {spec}; then restore; exit 4; fi",
                f"printf '%s\\n' {spec} > {venv}/{DONE_MARK}",
                f"rm -rf {old}",
            ]
        )


def _tar(directory: Path) -> tuple[bytes, int]:
    """The wheelhouse's distributions as one uncompressed tar (wheels are zips already)."""
    import io
    import tarfile

    buffer = io.BytesIO()
    count = 0
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(directory.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue
            tar.add(path, arcname=path.name, recursive=False)
            count += 1
    return buffer.getvalue(), count
