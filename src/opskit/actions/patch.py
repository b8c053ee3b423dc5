"""Patching a guest: apt.upgrade (apt-get update and upgrade, unattended, holds respected) and
guest.reboot (through Proxmox, only when the guest says it needs it, waited for until it is
back: SSH answers with another boot ID, so the wait cannot pass before the reboot began)."""

from __future__ import annotations

import re
import time
from typing import Any, ClassVar

from pydantic import Field

from ..clients.hostprocs import PACKAGE_MANAGERS
from ..errors import OpskitError, SSHAnswerLost, SSHError
from ..model import Change, ChangeKind, Duration, Outcome, Risk
from ..model.common import format_duration
from .base import Action, ActionArgs, ActionContext
from .proxmox import GuestArgs, Reboot, _sleep, _vmid, guest

BOOT_ID = "/proc/sys/kernel/random/boot_id"
REBOOT_REQUIRED = "/var/run/reboot-required"
OUTPUT_CAP = 64 * 1024

# The plan's look at what an upgrade would do: the package lists fetched into a private
# temporary directory (the host's own lists, caches and dpkg state untouched), then apt's
# simulation. Exit 3: apt-get update failed.
_SIMULATE = """set -e
d=$(mktemp -d "${{TMPDIR:-/tmp}}/opskit-apt.XXXXXX")
trap 'rm -rf "$d"' EXIT
mkdir -p "$d/lists/partial" "$d/cache/archives/partial" "$d/log"
o="-q -o Dir::State::Lists=$d/lists -o Dir::Cache=$d/cache -o Debug::NoLocking=1"
o="$o -o Dir::Log=$d/log -o APT::Sandbox::User=root"
apt-get $o update >"$d/out" 2>&1 || {{ cat "$d/out" >&2; exit 3; }}
apt-get $o -s {verb}
echo "== held"
apt-mark showhold
echo "== busy"
{busy}
echo "== audit"
dpkg --audit 2>&1 | awk '/^ [^ ]/ {{print $1}}'
"""
_UPGRADE = """export DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a
if [ -n "$(dpkg --audit 2>/dev/null)" ]; then
  echo "dpkg left packages half-done: dpkg --configure -a"
  dpkg --force-confdef --force-confold --configure -a || exit
fi
apt-get -q -o DPkg::Lock::Timeout=300 update && \\
apt-get -q -y -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef \\
  -o Dpkg::Options::=--force-confold {verb}
"""
# The package managers running on the host, a line each: PID NAME. An upgrade or a reboot while
# one runs would race it or cut it short (an earlier run's apt-get goes on when the connection that
# started it is gone). Read from /proc (zombies left out): any user may, and no tool is needed.
_BUSY = """for p in /proc/[0-9]*; do
  { read -r c < "$p/comm" && read -r st < "$p/stat"; } 2>/dev/null || continue
  case "${st##*) }" in Z*) continue;; esac
  case "$c" in PACKAGE_MANAGERS) echo "${p#/proc/} $c";; esac
done""".replace("PACKAGE_MANAGERS", PACKAGE_MANAGERS)
# Until none runs, at most {seconds} s: exit 0, else 75 with those still running (== busy).
_WAIT_IDLE = """end=$(($(date +%s) + {seconds}))
first=1
while :; do
  busy=$({busy})
  [ -z "$busy" ] && exit 0
  [ -n "$first" ] && printf '%s\n%s\n' "{waiting}" "$busy"
  first=
  [ "$(date +%s)" -ge "$end" ] && {{ printf '== busy\n%s\n' "$busy"; exit 75; }}
  sleep 1
done
"""
_VERSIONS = "dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}\\n'"
_INST = re.compile(r"^Inst (\S+) (?:\[([^\]]+)\] )?\((\S+)", re.M)


def _sudo(command: str, become: bool) -> str:
    from ..clients.ssh import sudo

    return sudo(command) if become else command


def _sections(text: str, names: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """A script's output cut at its `== NAME` lines: what comes before, and each section."""
    found = dict.fromkeys(names, "")
    head, rest = text, ""
    for name in reversed(names):
        head, mark, rest = head.rpartition(f"== {name}\n")
        if not mark:
            head = rest
            continue
        found[name] = rest
    return head, found


def running(text: str) -> str:
    """_BUSY's lines as a person reads them: "apt-get (pid 812), dpkg (pid 830)"."""
    found = []
    for line in text.splitlines():
        pid, _, name = line.strip().partition(" ")
        if pid.isdigit() and name:
            found.append((int(pid), name))
    return ", ".join(f"{name} (pid {pid})" for pid, name in sorted(found))


WAITING = "waiting for the package manager running on the host:"


async def wait_idle(ctx: ActionContext, seconds: float) -> tuple[str, str]:
    """Once no package manager runs on the host, at most `seconds` (the wait is said in the
    step's output): (what was waited for, what still runs), each "" when none."""
    script = _WAIT_IDLE.format(seconds=max(1, int(seconds)), busy=_BUSY, waiting=WAITING)
    try:
        result = await ctx.shell().run(script, timeout=seconds + 60)
    except SSHAnswerLost as exc:  # a look, streamed for people: its lost answer changed nothing
        raise SSHError(str(exc)) from None
    head, found = _sections(result.stdout, ("busy",))
    waited = running(head.partition(WAITING)[2])
    if result.rc == 0:
        return waited, ""
    still = running(found["busy"]) if result.rc == 75 else ""
    return waited, still or f"the look for a running package manager failed (exit {result.rc})"


def versions(text: str) -> dict[str, str]:
    """dpkg-query's listing -> package: version, of the packages installed."""
    found = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2].startswith("i"):
            found[parts[0]] = parts[1]
    return found


def changed_packages(before: dict[str, str], after: dict[str, str]) -> list[dict[str, Any]]:
    """What an upgrade changed: each package whose version changed (or that came or went)."""
    names = sorted(set(before) | set(after))
    return [
        {"package": n, "from": before.get(n), "to": after.get(n)}
        for n in names
        if before.get(n) != after.get(n)
    ]


def shown(changes: list[dict[str, Any]], limit: int = 8) -> str:
    parts = [f"{c['package']} {c['from'] or '-'} -> {c['to'] or '-'}" for c in changes[:limit]]
    more = f" and {len(changes) - limit} more" if len(changes) > limit else ""
    return ", ".join(parts) + more


class UpgradeArgs(ActionArgs):
    dist: bool = Field(False, description="dist-upgrade (may install and remove packages)")
    become: bool = Field(False, description="run through sudo (-n: never prompt)")
    timeout: Duration = Field(
        1800.0,
        description="how long the update and upgrade may take (and, before them, a package"
        " manager already running on the host)",
    )


class AptUpgrade(Action[UpgradeArgs]):
    """apt-get update and upgrade, unattended (no questions, the installed config files kept),
    held packages left as they are; what changed is its output. It waits first for a package
    manager already running on the host (an earlier run's upgrade, which goes on when the run
    is killed; unattended-upgrades), and finishes what dpkg left half-done (dpkg --configure -a).

    The plan fetches the package lists into a temporary directory and asks apt what an upgrade
    would install: the host's own lists, caches and packages are not touched."""

    name: ClassVar[str] = "apt.upgrade"
    risk: ClassVar[Risk] = Risk.CHANGE
    Args = UpgradeArgs
    outputs: ClassVar[dict[str, str]] = {
        "upgraded": "what changed: [{package, from, to}] (list)",
        "held": "the packages held back (apt-mark hold), left as they were (list)",
        "reboot_required": f"whether {REBOOT_REQUIRED} exists afterwards (bool)",
        "rc": "apt-get's exit code (int)",
        "stdout": "apt-get's output, its first 64 KiB (str)",
        "stderr": "its errors, likewise (str)",
    }
    example: ClassVar[str] = """
        targets: vm:110
        steps:
          - id: upgrade
            apt.upgrade: {}
            register: upgrade         # later: {{ upgrade.upgraded }}, {{ upgrade.reboot_required }}
        """

    @property
    def verb(self) -> str:
        return "dist-upgrade" if self.args.dist else "upgrade"

    def describe(self) -> str:
        return f"apt-get {self.verb}"

    async def probe(self, ctx: ActionContext) -> Change:
        script = _SIMULATE.format(verb=self.verb, busy=_BUSY)
        result = await ctx.shell().run(
            _sudo(script, self.args.become), probe=True, timeout=self.args.timeout
        )
        if result.rc != 0:
            what = "apt-get update" if result.rc == 3 else "apt-get -s"
            tail = (result.stderr or result.stdout).strip()[-400:]
            raise OpskitError(f"{what} failed (exit {result.rc}): {tail}")
        simulated, sections = _sections(result.stdout, ("held", "busy", "audit"))
        held = sections["held"].split()
        busy = running(sections["busy"])
        undone = sections["audit"].split()
        to_do = [{"package": m[1], "from": m[2], "to": m[3]} for m in _INST.finditer(simulated)]
        kept = f" ({len(held)} held: {', '.join(held[:5])})" if held else ""
        first = ""
        if busy:  # what dpkg is doing now shows as half-done: it is not left so
            first = f"wait for {busy}, running on the host; then "
        elif undone:
            first = f"finish what dpkg left half-done ({', '.join(undone[:5])}); then "
        if not to_do and not first:
            return Change.none(f"nothing to upgrade{kept}")
        plural = "s" if len(to_do) != 1 else ""
        upgrade = f"upgrade {len(to_do)} package{plural}: {shown(to_do)}" if to_do else "upgrade"
        return Change(
            kind=ChangeKind.UPDATE,
            summary=f"{first}{upgrade}{kept}",
            before={c["package"]: c["from"] for c in to_do},
            after={c["package"]: c["to"] for c in to_do},
        )

    async def apply(self, ctx: ActionContext) -> Outcome:
        a = self.args
        shell = ctx.shell()
        waited, busy = await wait_idle(ctx, a.timeout)
        if busy:
            return Outcome(
                ok=False,
                summary="not upgraded: the host's package manager is busy",
                error=f"{busy} still running on the host after {format_duration(a.timeout)}:"
                " an upgrade now would race it (nothing was changed)",
            )
        before = versions((await shell.run(_VERSIONS, probe=True, timeout=60)).stdout)
        held = (await shell.run("apt-mark showhold", probe=True, timeout=60)).stdout.split()
        command = _sudo(_UPGRADE.format(verb=self.verb), a.become)
        result = await shell.run(command, timeout=a.timeout)
        after = versions((await shell.run(_VERSIONS, quiet=True, timeout=60)).stdout)
        required = (await shell.run(f"test -e {REBOOT_REQUIRED}", timeout=30)).rc == 0
        upgraded = changed_packages(before, after)
        outputs = {
            "upgraded": upgraded,
            "held": held,
            "reboot_required": required,
            "rc": result.rc,
            "stdout": result.stdout[:OUTPUT_CAP],
            "stderr": result.stderr[:OUTPUT_CAP],
        }
        what = f"upgraded {shown(upgraded)}" if upgraded else "nothing upgraded"
        if waited:
            what = f"waited for {waited} to finish; {what}"
        if held:
            what += f"; held: {', '.join(held[:5])}"
        if required:
            what += "; reboot required"
        if result.rc != 0:
            tail = (result.stderr or result.stdout).strip()[-400:]
            return Outcome(
                ok=False,
                changed=bool(upgraded),
                summary=f"apt-get {self.verb} failed: {what}",
                outputs=outputs,
                error=f"apt-get {self.verb} exited {result.rc}: {tail}",
            )
        return Outcome(ok=True, changed=bool(upgraded), summary=what, outputs=outputs)


class RebootArgs(GuestArgs):
    only_if_required: bool = Field(
        True, description=f"reboot only when {REBOOT_REQUIRED} exists (as Debian's packages say)"
    )
    wait: Duration = Field(
        600.0,
        description="how long the guest may take to come back (and, before the reboot, a"
        " package manager running on it)",
    )
    interval: Duration = Field(2.0, description="between looks while it comes back")


class GuestReboot(Action[RebootArgs]):
    """Reboot a guest through Proxmox, only when it needs it (or always), and wait until it is
    back: SSH answers and the boot ID is another than before, so it cannot pass early. A
    package manager running on the guest is waited for first: a reboot would cut it short."""

    name: ClassVar[str] = "guest.reboot"
    risk: ClassVar[Risk] = Risk.DESTRUCTIVE
    Args = RebootArgs
    outputs: ClassVar[dict[str, str]] = {
        "rebooted": "whether it rebooted (bool)",
        "boot_id": "the boot ID it came back with (str; the same when not rebooted)",
        "boot_id_before": "the boot ID before (str)",
        "vmid": "the guest's VMID (int)",
        "node": "the node the guest is on (str)",
    }
    example: ClassVar[str] = """
        targets: vm:110
        steps:
          - id: reboot
            guest.reboot: {only_if_required: true, wait: 10m}
            register: reboot          # later: {{ reboot.rebooted }}, {{ reboot.boot_id }}
        """

    def describe(self) -> str:
        return "reboot if required" if self.args.only_if_required else "reboot and wait"

    async def probe(self, ctx: ActionContext) -> Change:
        g = await guest(ctx, _vmid(self.args, ctx))
        wanted = Reboot(self.args).wanted(g)
        if wanted.blockers:
            return wanted
        if self.args.only_if_required:
            look = f"cat {REBOOT_REQUIRED}.pkgs 2>/dev/null; test -e {REBOOT_REQUIRED}"
            found = await ctx.shell().run(look, probe=True, timeout=30)
            if found.rc != 0:
                return Change.none(f"{g.label}: no reboot required")
            why = " ".join(found.stdout.split()[:5])
            wanted.summary += f" (reboot required{': ' + why if why else ''})"
        return wanted

    async def apply(self, ctx: ActionContext) -> Outcome:
        a = self.args
        shell = ctx.shell()
        before = (await shell.run(f"cat {BOOT_ID}", timeout=30)).stdout.strip()
        required = (await shell.run(f"test -e {REBOOT_REQUIRED}", timeout=30)).rc == 0
        if a.only_if_required and not required:
            return Outcome(
                ok=True,
                summary="no reboot required",
                outputs={"rebooted": False, "boot_id": before, "boot_id_before": before},
            )
        _, busy = await wait_idle(ctx, a.wait)
        if busy:
            return Outcome(
                ok=False,
                summary="not rebooted: the guest's package manager is busy",
                outputs={"rebooted": False, "boot_id": before, "boot_id_before": before},
                error=f"{busy} still running on the guest after {format_duration(a.wait)}:"
                " a reboot now would cut it short",
            )
        done = await Reboot(a).apply(ctx)
        if not done.ok:
            return done
        outputs = {"rebooted": True, "boot_id_before": before, **done.outputs}
        deadline = time.monotonic() + a.wait
        last = "no answer yet"
        while True:
            try:
                now = await shell.run(f"cat {BOOT_ID}", timeout=min(15.0, a.wait))
                booted = now.stdout.strip()
                if now.rc == 0 and booted and booted != before:
                    outputs["boot_id"] = booted
                    return Outcome(
                        ok=True,
                        changed=True,
                        summary=f"{done.summary}; back with a new boot ID",
                        outputs=outputs,
                    )
                last = "the same boot ID: the reboot has not happened yet"
            except OpskitError as exc:
                last = str(exc)
            if time.monotonic() >= deadline:
                return Outcome(
                    ok=False,
                    changed=True,
                    summary="rebooted, not back",
                    outputs={**outputs, "boot_id": before},
                    error=f"not back within {format_duration(a.wait)} after the reboot: {last}",
                )
            await _sleep(a.interval)
