"""`opskit lab up | status | down`: build, inspect and remove the simulated homelab.

Layout of the lab directory (default /tmp/opskit-lab, or $OPSKIT_LAB_DIR):

    lab.json            what `up` built: hosts, addresses, processes, services
    inventory.yaml      the inventory overlay: lab addresses, pinned keys, lab secrets
    secrets/            generated secrets, 0600 (Proxmox token, hub credentials, keys)
    ssh/                the controller's client key
    hosts/NAME/upper    each host's copy-on-write layer (what runbooks change lands here)
    hosts/NAME/snapshots/SNAP   copies of that layer, one per Proxmox snapshot of the guest
    hosts/NAME/boot.sh, boot_id, pid, power   how the host boots, and its power (lab.power)
    pve/ hub/ mirror/   fakepve's certificate and request log, PocketBase's data, the mirror
                        (Beszel releases, and the apt repository of lab.apt)
    bin/                stand-ins the controller uses inside the lab (tailscale)
    logs/               each process's output

Lab runs keep their journal, logs and locks outside it, in $OPSKIT_STATE_DIR/labs/NAME (see
`lab_state_dir`), so they outlive `down`. Nothing lives in the machine's own network
namespace, and nothing of a host's changes lands on the machine: /etc, /opt, /usr, /var, /srv,
/root and /home are overlays, /tmp and /run private.

A guest's host follows its power state in the lab's Proxmox: stopped, it runs nothing (its
sshd neither); started, it boots (enabled units start, /tmp and /run are empty, a new boot ID).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import ipaddress
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import AptError, LabError, UsageError
from ..model import Inventory
from . import network, power
from .network import controller as controller_ns
from .power import alive

DEFAULT_DIR = Path("/tmp/opskit-lab")
DEFAULT_RANGE = "198.51.100.0/24"
OVERLAID = ("etc", "opt", "usr", "var", "srv", "root", "home")
MIRROR_PORT = 8088
TOKEN_ID = "root@pam!opskit"
MARKER = ".opskit-lab"  # `down` removes only a directory that carries it
BESZEL_VERSIONS = ("0.18.8", "0.18.7")  # the runbook's default, and one to upgrade from
ENV_SECRETS = {  # environment variable -> secret file: what a --lab run exports
    "PROXMOX_TOKEN": "proxmox-token",
    "PROXMOX_PASSWORD": "proxmox-password",
    "PROXMOXMCP_API_KEY": "proxmoxmcp-api-key",
    "BESZEL_HUB_EMAIL": "hub-email",
    "BESZEL_HUB_PASSWORD": "hub-password",
    "BESZEL_HUB_KEY": "hub-key.pub",
    "BESZEL_AGENT_TOKEN": "agent-token",
    "UPTIME_KUMA_PASSWORD": "uptime-kuma-password",
}


def lab_dir() -> Path:
    """$OPSKIT_LAB_DIR, else /tmp/opskit-lab (or /tmp/opskit-lab-NAME for a named lab)."""
    name = os.environ.get("OPSKIT_LAB_NAME")
    default = DEFAULT_DIR.with_name(f"opskit-lab-{name}") if name else DEFAULT_DIR
    return Path(os.environ.get("OPSKIT_LAB_DIR") or default)


def require_root() -> None:
    if os.geteuid() != 0:
        raise UsageError(
            "the lab needs root (it creates network and mount namespaces): run it with sudo"
        )
    for tool in ("ip", "unshare", "ssh-keygen"):
        if shutil.which(tool) is None:
            raise UsageError(f"the lab needs {tool!r} (Debian: iproute2, util-linux, openssh)")
    for tool in ("dpkg-deb", "dpkg-scanpackages"):
        if shutil.which(tool) is None:
            raise UsageError(
                f"the lab needs {tool!r} to build its apt repository (Debian: dpkg-dev)"
            )
    if not Path("/usr/sbin/sshd").exists():
        raise UsageError("the lab needs OpenSSH's sshd (Debian: openssh-server)")


@dataclass
class LabHost:
    name: str
    address: str
    netns: str
    tailscale: str | None = None
    host_key: str = ""  # "ssh-ed25519 AAAA..."
    pid: int | None = None


@dataclass
class LabService:
    name: str
    address: str
    port: int
    netns: str
    pid: int | None = None
    url: str = ""
    # A unit of this lab host: no pid of the lab's, it runs while its host does.
    host: str | None = None


@dataclass
class LabState:
    root: str
    network: str
    controller: str
    hosts: list[LabHost] = field(default_factory=list)
    services: list[LabService] = field(default_factory=list)
    started: float = 0.0

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> LabState:
        raw = json.loads(path.read_text())
        raw["hosts"] = [LabHost(**h) for h in raw.get("hosts", [])]
        raw["services"] = [LabService(**s) for s in raw.get("services", [])]
        return cls(**raw)

    def host(self, name: str) -> LabHost:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)


Say = Callable[[str], None]


class Lab:
    """The lab in `root`, built from `inventory` (its file at `inventory_path`)."""

    def __init__(
        self, root: Path, inventory: Inventory | None = None, inventory_path: Path | None = None
    ) -> None:
        self.root = root
        self._inventory = inventory
        self.inventory_path = inventory_path or Path("inventory.yaml")
        self._background: list[Background] = []  # work of `up` running beside it
        self._cert_fp = ""

    @property
    def inventory(self) -> Inventory:
        if self._inventory is None:
            raise LabError("building the lab needs the homelab's inventory")
        return self._inventory

    # ----- paths --------------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.root / "lab.json"

    def secret(self, name: str) -> Path:
        return self.root / "secrets" / name

    def state(self) -> LabState | None:
        try:
            return LabState.load(self.state_file)
        except (OSError, ValueError, TypeError):
            return None

    # ----- up -----------------------------------------------------------------------------

    def up(self, network_range: str = DEFAULT_RANGE, say: Say = print) -> LabState:
        """Build the lab; a failure on the way takes down whatever was built."""
        require_root()
        try:
            net = ipaddress.IPv4Network(network_range)
        except ValueError as exc:
            raise UsageError(f"bad lab range {network_range!r}: {exc}") from None
        current = self.state()
        if current is not None and network.lab_namespaces():
            problems = self.problems(current)
            if not problems and current.network == str(net):
                say(f"the lab is already up ({len(current.hosts)} hosts on {current.network})")
                return current
            say("the lab is partly up (" + "; ".join(problems or ["other range"]) + "): rebuilding")
        if network.lab_namespaces() or self.root.exists():
            self.down(say=lambda line: None)
        network.check_range(net)
        needed = 9 + len(self.inventory.all_hosts())  # the controller, .2-.9 kept, the hosts
        if net.num_addresses - 2 < needed:
            raise UsageError(f"lab range {net} is too small: the lab needs {needed} addresses")
        self._background = []
        try:
            return self._build(net, say)
        except BaseException:
            for work in self._background:  # nothing may still write into what `down` removes
                work.join(quietly=True)
            self.down(say=lambda line: None)
            raise

    def _build(self, net: ipaddress.IPv4Network, say: Say) -> LabState:
        started = time.monotonic()
        addresses = iter(net.hosts())
        controller = str(next(addresses))
        for _ in range(8):  # .2 to .9 stay free for later lab services
            next(addresses)
        hosts = [
            LabHost(
                name=h.name,
                address=str(next(addresses)),
                netns=f"{network.prefix()}{h.name}",
                tailscale=h.tailscale,
            )
            for h in self.inventory.all_hosts()
        ]
        state = LabState(root=str(self.root), network=str(net), controller=controller, hosts=hosts)
        self._prepare_dirs()
        self._make_secrets()
        # What takes time and needs nothing of the rest runs beside it: the hub's data (a
        # PocketBase started and stopped), the apt repository (dpkg-deb, dpkg-scanpackages) and
        # Proxmox's certificate.
        hub_data = self._beside(self._bootstrap_hub)
        repository = self._beside(self._build_apt, state)
        pve = self._pve_site(state)
        certificate = self._beside(self._pve_cert, pve)
        from .wheelhouse import prepare  # online here: the --lab runs cannot reach the index

        prepare(self.inventory_path, say)
        say(f"network: {net}, switch {network.switch()}, controller {controller}")
        network.build(net, [(controller_ns(), controller), *((h.netns, h.address) for h in hosts)])
        self._hosts_files(state)
        certificate.join()
        cert_fp = self._cert_fp
        # Proxmox starts first (its imports take a while); it acts on the hosts only when asked.
        state.services.append(self._start_pve(state, pve))
        for host in hosts:
            self._prepare_host(state, host)
            host.pid = power.boot(self.root, host.name, host.netns)
        say(
            f"hosts: {len(hosts)} sshd in their own namespaces ({', '.join(h.name for h in hosts)})"
        )
        hub_data.join()
        state.services.append(self._start_hub(state))
        repository.join()
        state.services.append(self._start_mirror(state))
        state.services.extend(self._stand_in_services(state))
        self._tailscale(state)
        self._overlay(state, cert_fp)
        state.started = time.time()
        state.save(self.state_file)
        (self.root / MARKER).touch()
        self._wait(state, say)
        took = time.monotonic() - started
        say(f"the lab is up in {took:.1f}s: SIMULATION of {self.inventory_path}")
        return state

    def _prepare_dirs(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        (self.root / MARKER).touch()
        for sub in ("secrets", "ssh", "hosts", "pve", "hub", "mirror", "bin", "state", "logs"):
            (self.root / sub).mkdir(exist_ok=True)
        os.chmod(self.root / "secrets", 0o700)

    def _write_secret(self, name: str, value: str) -> None:
        path = self.secret(name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(value + "\n")

    def _make_secrets(self) -> None:
        for name in (
            "proxmox-token",
            "proxmox-password",
            "proxmoxmcp-api-key",
            "hub-password",
            "user-password",
            "agent-token",
            "uptime-kuma-password",
        ):
            self._write_secret(name, secrets.token_hex(20))
        self._write_secret("hub-email", "opskit@lab.invalid")
        self._write_secret("user-email", "operator@lab.invalid")
        keygen(self.secret("hub-key"), "opskit-lab-hub")
        keygen(self.root / "ssh" / "id_ed25519", "opskit-lab-controller")

    def _hosts_files(self, state: LabState) -> None:
        """/etc/hosts of the lab: MagicDNS names resolve to lab addresses, inside the lab."""
        lines = ["127.0.0.1 localhost", f"{state.controller} controller.lab"]
        proxied = self._proxied_names()
        for h in state.hosts:
            names = [h.name, *([h.tailscale] if h.tailscale else []), *proxied.get(h.name, [])]
            lines.append(" ".join([h.address, *names]))
        text = "\n".join(lines) + "\n"
        (self.root / "hosts.txt").write_text(text)
        # `ip netns exec` binds /etc/netns/NS/hosts over /etc/hosts for the controller.
        etc = Path("/etc/netns") / controller_ns()
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text(text)

    # ----- hosts --------------------------------------------------------------------------

    def _host_dir(self, host: LabHost) -> Path:
        return self.root / "hosts" / host.name

    def _prepare_host(self, state: LabState, host: LabHost) -> None:
        """The host's own files, written into its upper layers before it boots."""
        base = self._host_dir(host)
        for d in OVERLAID:
            (base / "upper" / d).mkdir(parents=True, exist_ok=True)
            (base / "work" / d).mkdir(parents=True, exist_ok=True)
            mirror_mode(Path("/") / d, base / "upper" / d)
        upper = base / "upper"
        key = upper_path(upper, "etc/ssh/ssh_host_ed25519_key")
        key.unlink(missing_ok=True)
        Path(str(key) + ".pub").unlink(missing_ok=True)
        public = keygen(key, f"root@{host.name}")
        kind, blob, *_ = public.split()
        host.host_key = f"{kind} {blob}"
        upper_path(upper, "etc/ssh/opskit-lab-sshd_config").write_text(
            f"# opskit lab: sshd of {host.name}\n"
            f"ListenAddress {host.address}\nPort 22\n"
            "HostKey /etc/ssh/ssh_host_ed25519_key\nPidFile /run/sshd.pid\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication yes\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            "MaxSessions 100\nMaxStartups 200\nLogLevel ERROR\n"
            "Subsystem sftp internal-sftp\nAcceptEnv LANG LC_*\n"
        )
        authorized = upper_path(upper, "root/.ssh/authorized_keys")
        os.chmod(authorized.parent, 0o700)
        authorized.write_text((self.root / "ssh" / "id_ed25519.pub").read_text())
        os.chmod(authorized, 0o600)
        # root's shell files are a fresh system's (/etc/skel), not the controller's: its own
        # may run tools (pyenv init, say) that a host should not share.
        for name in (".bashrc", ".profile"):
            skel = Path("/etc/skel") / name
            if skel.exists():
                upper_path(upper, f"root/{name}").write_text(skel.read_text())
        # Services running as their own users (User=) may run the controller's Python, which
        # may live under /root: the lab's hosts let them through it (0711), unlike the machine.
        os.chmod(upper / "root", 0o711)
        upper_path(upper, "etc/hostname").write_text(host.name + "\n")
        upper_path(upper, "etc/hosts").write_text((self.root / "hosts.txt").read_text())
        # The hosts trust the lab's Proxmox certificate, as a homelab adds its PVE CA.
        cert = (self.root / "pve" / "pve.crt").read_text()
        upper_path(upper, "usr/local/share/ca-certificates/opskit-lab-pve.crt").write_text(cert)
        system = Path("/etc/ssl/certs/ca-certificates.crt")
        bundle = system.read_text() if system.exists() else ""
        upper_path(upper, "etc/ssl/certs/ca-certificates.crt").write_text(bundle + cert)
        # There is no systemd in a namespace: the stand-in reads units and runs their processes.
        target = upper_path(upper, "usr/bin/systemctl")
        text = Path(__file__).with_name("systemctl.py").read_text()
        target.write_text(text if text.startswith("#!") else "#!/usr/bin/python3\n" + text)
        os.chmod(target, 0o755)
        self._apt_host(state, host, upper)
        self._stand_in_units(state, host, upper)
        (base / "boot.sh").write_text(self._boot_script(host))

    def _apt_host(self, state: LabState, host: LabHost, upper: Path) -> None:
        """apt on the host sees the lab's repository only, and the lab's packages installed."""
        from . import apt

        url = f"http://{state.controller}:{MIRROR_PORT}/apt"
        upper_path(upper, "etc/apt/sources.list").write_text(
            apt.sources_list(url, host.name, self._arch)
        )
        # The machine's sources, and the indexes and caches apt made of them, are not the
        # host's: opaque directories in the layer hide the machine's below them.
        for rel in ("etc/apt/sources.list.d", "var/lib/apt/lists", "var/cache/apt"):
            opaque(upper, rel)
        for rel in ("var/lib/apt/lists/partial", "var/cache/apt/archives/partial"):
            upper_path(upper, rel).mkdir(exist_ok=True)
            mirror_mode(Path("/") / rel, upper / rel)
        apt.preinstall(lambda rel: upper_path(upper, rel))

    @functools.cached_property
    def _arch(self) -> str:
        from .apt import architecture

        return architecture()

    def _stand_ins(self, host: LabHost) -> list[tuple[str, int]]:
        """(service, port) of the inventory's services on `host` that the lab stands in for."""
        from .stand_ins import SERVICES

        found = []
        for h in self.inventory.all_hosts():
            if h.name != host.name:
                continue
            for name, service in h.services.items():
                port = (service.health.port if service.health else None) or service.port
                if name in SERVICES and port:
                    found.append((name, port))
        return found

    def _stand_in_units(self, state: LabState, host: LabHost, upper: Path) -> None:
        """Each stand-in as a unit of its host, enabled: it stops and boots with the host."""
        for name, port in self._stand_ins(host):
            unit = f"opskit-lab-{name}.service"
            extra: list[str] = []
            if name == "uptime-kuma":
                from .uptime_kuma import lab_files

                extra = lab_files(
                    self.inventory,
                    {h.name: h.address for h in state.hosts},
                    self.secret("uptime-kuma-password").read_text().strip(),
                    lambda rel: upper_path(upper, rel),
                )
            command = shlex.join(
                [
                    sys.executable,
                    "-m",
                    "opskit.lab.stand_ins",
                    name,
                    "--address",
                    host.address,
                    "--port",
                    str(port),
                    *extra,
                ]
            )
            upper_path(upper, f"etc/systemd/system/{unit}").write_text(
                f"[Unit]\nDescription=opskit lab: stand-in for {name} (SIMULATION)\n"
                f"[Service]\nExecStart={command}\nRestart=on-failure\nRestartSec=1\n"
                "[Install]\nWantedBy=multi-user.target\n"
            )
            link = upper_path(upper, f"etc/systemd/system/multi-user.target.wants/{unit}")
            link.unlink(missing_ok=True)
            link.symlink_to(f"/etc/systemd/system/{unit}")

    def _stand_in_services(self, state: LabState) -> list[LabService]:
        return [
            LabService(name, h.address, port, h.netns, None, f"http://{h.address}:{port}", h.name)
            for h in state.hosts
            for name, port in self._stand_ins(h)
        ]

    def _boot_script(self, host: LabHost) -> str:
        """What the host runs at each boot (lab.power runs it in the host's namespaces)."""
        upper, work = self._host_dir(host) / "upper", self._host_dir(host) / "work"
        mounts = "".join(
            f"mount -t overlay overlay -o lowerdir=/{d},upperdir={upper}/{d},workdir={work}/{d}"
            f" /{d}\n"
            for d in OVERLAID
            if Path("/", d).is_dir()
        )
        # At boot the host starts the units enabled in the lab (links in its own layer), not
        # the machine's: its sshd is the lab's. Listed before /tmp, which holds the layer, is
        # hidden by the host's private one.
        wants = f"{upper}/etc/systemd/system"
        # opskit's own Python (the agent stand-in runs on it) stays visible where the private
        # /tmp or /run would hide it: parked on a mount point in /var, then bound back in place.
        park, unpark = "", ""
        for n, path in enumerate(hidden_runtime()):
            spot = shlex.quote(f"/var/lib/opskit-lab/runtime/{n}")
            where = shlex.quote(str(path))
            park += f"mkdir -p {spot} && mount --bind -o ro {where} {spot}\n"
            unpark += f"mkdir -p {where} && mount --bind {spot} {where} && umount {spot}\n"
        # Its own boot ID, where programs read it (the kernel's cannot change in a namespace).
        boot_id = shlex.quote(str(power.boot_id_file(self.root, host.name)))
        return (
            "set -e\n"
            f"{mounts}"
            f'units=$(for w in {wants}/*.wants/*; do [ -L "$w" ] && basename "$w"; done'
            " | sort -u)\n"
            f"mount --bind -o ro {boot_id} /proc/sys/kernel/random/boot_id\n"
            f"{park}"
            "mount -t tmpfs -o mode=1777 tmpfs /tmp\n"
            "mount -t tmpfs -o mode=755 tmpfs /run\n"
            f"{unpark}"
            "mkdir -p /run/sshd\n"
            f"hostname {host.name}\n"
            # The units start beside sshd and each other, as systemd starts them: in parallel.
            '(for unit in $units; do /usr/bin/systemctl start "$unit" || true & done; wait) &\n'
            "exec /usr/sbin/sshd -D -e -f /etc/ssh/opskit-lab-sshd_config\n"
        )

    def _spawn(self, command: list[str], log: str, env: dict[str, str] | None = None) -> int:
        out = open(self.root / "logs" / f"{log}.log", "ab")  # noqa: SIM115 - the child keeps it
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        finally:
            out.close()
        return process.pid

    def _in_lab(self, netns: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", netns, *args]

    # ----- services -----------------------------------------------------------------------

    def _site(self, state: LabState, service: str) -> tuple[str, str, int | None]:
        """(address, netns, port) of the lab host that runs `service` per the inventory."""
        for h in self.inventory.all_hosts():
            if service in h.services:
                lab_host = state.host(h.name)
                return lab_host.address, lab_host.netns, h.services[service].port
        return state.controller, controller_ns(), None

    def _pve_site(self, state: LabState) -> tuple[str, str, int]:
        address, netns, port = self._site(state, "proxmox-api")
        if port is None:
            clusters = list(self.inventory.proxmox.values())
            port = (urlsplit(clusters[0].api_url).port if clusters else None) or 8006
        return address, netns, port

    def _beside(self, work: Callable[..., None], *args: Any) -> Background:
        started = Background(work, *args)
        self._background.append(started)
        return started

    def _pve_cert(self, pve: tuple[str, str, int]) -> None:
        """Proxmox's certificate; its SHA-256 fingerprint in `_cert_fp`."""
        from fakepve.certs import make_cert

        names = [pve[0]] + [h.tailscale for h in self.inventory.hosts if h.tailscale]
        _, _, der = make_cert(str(self.root / "pve"), name="pve", hosts=tuple(names))
        digest = hashlib.sha256(der).hexdigest().upper()
        self._cert_fp = ":".join(digest[i : i + 2] for i in range(0, 64, 2))

    def _start_pve(self, state: LabState, pve: tuple[str, str, int]) -> LabService:
        address, netns, port = pve
        nodes = sorted(
            {n for c in self.inventory.proxmox.values() for n in c.nodes}
            | {g.node for g in self.inventory.guests if g.node}
        )
        spec = {
            "address": address,
            "port": port,
            "time_scale": 0.05,
            "token_id": TOKEN_ID,
            "token_file": str(self.secret("proxmox-token")),
            "password_file": str(self.secret("proxmox-password")),
            "certfile": str(self.root / "pve" / "pve.crt"),
            "keyfile": str(self.root / "pve" / "pve.key"),
            "request_log": str(self.root / "pve" / "requests.jsonl"),
            "nodes": nodes or ["pve"],
            # A guest takes PVE seconds to boot and to power off (1 s and 2 s here), as a
            # real one does: a power task lasts long enough to be interrupted mid-task.
            "guests": [
                {
                    "vmid": g.vmid,
                    "name": g.name,
                    "kind": g.kind,
                    "status": "running",
                    "node": g.node or (nodes or ["pve"])[0],
                    "start_secs": 20,
                    "shutdown_secs": 40,
                    "host": g.name,
                }
                for g in self.inventory.guests
            ],
            # Each guest's power and snapshots act on its lab host (opskit.lab.pve).
            "lab": {"root": str(self.root), "netns": {h.name: h.netns for h in state.hosts}},
        }
        spec_file = self.root / "pve" / "spec.json"
        spec_file.write_text(json.dumps(spec, indent=2))
        pid = self._spawn(
            self._in_lab(netns, sys.executable, "-m", "opskit.lab.pve", str(spec_file)), "fakepve"
        )
        return LabService("proxmox", address, port, netns, pid, f"https://{address}:{port}")

    def _bootstrap_hub(self) -> None:
        from . import hub

        hub.bootstrap_hub(
            self.root / "hub" / "data",
            self.secret("hub-email").read_text().strip(),
            self.secret("hub-password").read_text().strip(),
            self.secret("user-email").read_text().strip(),
            self.secret("user-password").read_text().strip(),
        )

    def _start_hub(self, state: LabState) -> LabService:
        from . import hub

        address, netns, port = self._site(state, "beszel-hub")
        port = port or 8090
        data = self.root / "hub" / "data"
        pid = self._spawn(self._in_lab(netns, *hub.serve_command(data, address, port)), "hub")
        return LabService("beszel-hub", address, port, netns, pid, f"http://{address}:{port}")

    def _start_mirror(self, state: LabState) -> LabService:
        mirror = self.root / "mirror"
        from .releases import build_mirror

        build_mirror(mirror / "beszel", list(BESZEL_VERSIONS))
        address = state.controller
        pid = self._spawn(
            self._in_lab(
                controller_ns(),
                sys.executable,
                "-m",
                "http.server",
                "--bind",
                address,
                "--directory",
                str(mirror),
                str(MIRROR_PORT),
            ),
            "mirror",
        )
        return LabService(
            "mirror", address, MIRROR_PORT, controller_ns(), pid, f"http://{address}:{MIRROR_PORT}"
        )

    def _build_apt(self, state: LabState) -> None:
        from . import apt

        apt.build(self.root / "mirror" / "apt", [h.name for h in state.hosts], self._arch)

    def _tailscale(self, state: LabState) -> None:
        """A `tailscale` on the lab's PATH whose `status --json` describes the lab hosts."""
        from .tailscale import status_json, write_stand_in

        status = status_json(self.inventory.tailnet or "lab.ts.net", state.hosts, state.controller)
        (self.root / "tailscale-status.json").write_text(json.dumps(status, indent=2) + "\n")
        write_stand_in(self.root / "bin" / "tailscale", self.root / "tailscale-status.json")

    def _overlay(self, state: LabState, cert_fp: str) -> None:
        from .overlay import write_overlay

        write_overlay(
            source=self.inventory_path,
            dest=self.root / "inventory.yaml",
            hosts={h.name: (h.address, h.host_key) for h in state.hosts},
            api_url=next(s.url for s in state.services if s.name == "proxmox") + "/api2/json",
            fingerprint=cert_fp,
            token_file=self.secret("proxmox-token"),
            identity=self.root / "ssh" / "id_ed25519",
            lab_vars={
                "lab": True,
                "beszel": {"release_url": f"http://{state.controller}:{MIRROR_PORT}/beszel"},
                "ca_bundle": "/etc/ssl/certs/ca-certificates.crt",
            },
            mark={"name": network.prefix().removesuffix("-"), "netns": controller_ns()},
            uptime_kuma=self._kuma_site(state),
        )

    def _proxied_names(self) -> dict[str, list[str]]:
        """The names of services behind a proxy (`behind: traefik`, `url:`), by the host the
        proxy runs on: in the lab they resolve to it, as the homelab's DNS points them there."""
        found: dict[str, list[str]] = {}
        for h in self.inventory.all_hosts():
            for service in h.services.values():
                name = urlsplit(service.url).hostname if service.url and service.behind else None
                if name and service.behind in h.services:
                    found.setdefault(h.name, []).append(name)
        return found

    def _kuma_site(self, state: LabState) -> dict[str, str] | None:
        """The lab's Uptime Kuma, as the lab's inventory names it: the stand-in, by the name
        the inventory gives it behind Traefik (resolving to Traefik's host), at its port."""
        site = next((s for s in state.services if s.name == "uptime-kuma"), None)
        if site is None:
            return None
        service = next(
            (
                h.services["uptime-kuma"]
                for h in self.inventory.all_hosts()
                if "uptime-kuma" in h.services
            ),
            None,
        )
        name = (
            urlsplit(service.url).hostname if service and service.url and service.behind else None
        )
        return {
            "url": f"http://{name or site.address}:{site.port}",
            "username": "admin",
            "password": f"file:{self.secret('uptime-kuma-password')}",
        }

    def _wait(self, state: LabState, say: Say, timeout: float = 30.0) -> None:
        endpoints = self.endpoints(state)
        answers = self.probe(endpoints, wait=timeout)
        silent = [name for name, ok in answers.items() if not ok]
        if silent:
            logs = self.root / "logs"
            raise LabError(
                f"lab parts did not answer within {timeout:g}s: {', '.join(silent)} (see {logs})"
            )

    # ----- status -------------------------------------------------------------------------

    def endpoints(self, state: LabState) -> dict[str, str]:
        named = {f"{h.name} ssh": f"{h.address}:22" for h in state.hosts}
        named.update({s.name: f"{s.address}:{s.port}" for s in state.services})
        return named

    def probe(self, endpoints: dict[str, str], wait: float = 0.0) -> dict[str, bool]:
        """Which endpoints answer, from the controller's namespace."""
        command = self._in_lab(
            controller_ns(),
            sys.executable,
            "-m",
            "opskit.lab.probe",
            "--wait",
            str(wait),
            *endpoints.values(),
        )
        done = subprocess.run(command, capture_output=True, text=True)
        try:
            raw: dict[str, bool] = json.loads(done.stdout)
        except ValueError:
            raise LabError(f"cannot probe the lab: {done.stderr.strip()[:300]}") from None
        return {name: raw.get(ep, False) for name, ep in endpoints.items()}

    def problems(self, state: LabState) -> list[str]:
        """What is broken: a guest the lab's Proxmox powered off is not (its services neither,
        nor a stand-in, which runs as its host does)."""
        found = []
        present = set(network.lab_namespaces())
        for h in state.hosts:
            if h.netns not in present:
                found.append(f"{h.name}: no namespace")
            elif not power.powered_off(self.root, h.name) and not alive(self.host_pid(h)):
                found.append(f"{h.name}: sshd is not running")
        for s in state.services:
            if s.host is None and not power.runs(s.pid, str(self.root)):
                found.append(f"{s.name}: not running")
        return found

    def host_pid(self, host: LabHost) -> int | None:
        """The running host's outermost process (it changes when the host reboots)."""
        return power.current_pid(self.root, host.name)

    def status(self) -> dict[str, Any]:
        require_root()
        state = self.state()
        namespaces = network.lab_namespaces()
        if state is None:
            return {"up": False, "namespaces": namespaces, "dir": str(self.root)}
        answers = self.probe(self.endpoints(state)) if namespaces else {}
        return {
            "up": bool(namespaces) and not self.problems(state),
            "dir": str(self.root),
            "network": state.network,
            "controller": state.controller,
            "inventory": str(self.root / "inventory.yaml"),
            "hosts": [
                {
                    "name": h.name,
                    "address": h.address,
                    "netns": h.netns,
                    "pid": self.host_pid(h),
                    "running": alive(self.host_pid(h)),
                    "power": "off" if power.powered_off(self.root, h.name) else "on",
                    "ssh": answers.get(f"{h.name} ssh", False),
                }
                for h in state.hosts
            ],
            "services": [
                {
                    "name": s.name,
                    "url": s.url,
                    "pid": s.pid,
                    "host": s.host,
                    "running": power.runs(s.pid, str(self.root))
                    if s.host is None
                    else not power.powered_off(self.root, s.host),
                    "answers": answers.get(s.name, False),
                }
                for s in state.services
            ],
            "problems": self.problems(state),
        }

    # ----- packages -----------------------------------------------------------------------

    def packages(self, hosts: list[str], offer: str | None = None) -> dict[str, str]:
        """Each host's offer in the lab's apt repository; with `offer`, set it for `hosts`
        (every host when none is named) first."""
        from . import apt

        require_root()
        state = self.state()
        repo = self.root / "mirror" / "apt"
        if state is None or not (repo / "offers.json").exists():
            raise LabError(f"the lab is not up ({self.root}): start it with  opskit lab up")
        try:
            if offer is not None:
                return apt.offer(repo, hosts or [h.name for h in state.hosts], offer)
            offers = apt.offers(repo)
        except AptError as exc:
            raise UsageError(str(exc)) from None
        unknown = [h for h in hosts if h not in offers]
        if unknown:
            raise UsageError(f"the lab has no host {unknown[0]!r} (its hosts: {', '.join(offers)})")
        return {h: o for h, o in offers.items() if not hosts or h in hosts}

    # ----- down ---------------------------------------------------------------------------

    def down(self, say: Say = print) -> list[str]:
        """Every process, namespace and file of the lab gone; works after a crash too."""
        require_root()
        removed: list[str] = []
        state = self.state()
        # The lab's Proxmox first: it boots hosts, and must not boot one while they go. A pid
        # from the record counts only while it is still the lab's (pids are reused).
        services = {
            s.pid
            for s in (state.services if state else [])
            if s.pid and power.runs(s.pid, str(self.root))
        }
        stop(services)
        namespaces = network.lab_namespaces()
        for _ in range(3):  # again, for whatever started while the others were stopped
            pids = {p for h in (state.hosts if state else []) if (p := self.host_pid(h))}
            for ns in namespaces:
                pids.update(network.namespace_pids(ns))
            pids = {p for p in pids if alive(p)}
            if not pids:
                break
            stop(pids)
        for ns in namespaces:
            network.remove(ns)
            removed.append(f"namespace {ns}")
        etc = Path("/etc/netns") / controller_ns()
        if etc.exists():
            shutil.rmtree(etc, ignore_errors=True)
            removed.append(str(etc))
            with_contents = Path("/etc/netns")
            if with_contents.exists() and not any(with_contents.iterdir()):
                with_contents.rmdir()
        if self.root.exists():
            if not (self.root / MARKER).exists() and any(self.root.iterdir()):
                raise LabError(f"{self.root} is not a lab directory (no {MARKER}): not removing it")
            shutil.rmtree(self.root)
            removed.append(str(self.root))
        say(
            "the lab is down"
            + (f": removed {', '.join(removed)}" if removed else " (it was not up)")
        )
        kept = lab_state_dir()
        if (kept / "journal.db").exists():
            say(f"kept the lab's runs (journal and logs) in {kept}: opskit history --lab")
        return removed


# ----- helpers ----------------------------------------------------------------------------


class Background:
    """`work(*args)` in a thread; `join()` waits for it and raises what it raised."""

    def __init__(self, work: Callable[..., None], *args: Any) -> None:
        import threading

        self._error: BaseException | None = None

        def run() -> None:
            try:
                work(*args)
            except BaseException as exc:
                self._error = exc

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def join(self, quietly: bool = False) -> None:
        self._thread.join()
        if self._error is not None and not quietly:
            raise self._error


def hidden_runtime() -> list[Path]:
    """opskit's interpreter and code where a host's private /tmp or /run would hide them
    (a checkout in /tmp, say)."""
    import opskit

    found: list[Path] = []
    for path in (Path(sys.prefix), Path(opskit.__file__).resolve().parents[1]):
        if path.parts[1:2] in (("tmp",), ("run",)) and not any(
            path == p or p in path.parents for p in found
        ):
            found.append(path)
    return found


def keygen(path: Path, comment: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return Path(str(path) + ".pub").read_text().strip()


def mirror_mode(lower: Path, upper: Path) -> None:
    """An upper directory with its lower's owner and mode (the merged view shows the upper's)."""
    try:
        st = lower.stat()
    except FileNotFoundError:
        return
    os.chown(upper, st.st_uid, st.st_gid)
    os.chmod(upper, st.st_mode & 0o7777)


def opaque(upper: Path, rel: str) -> None:
    """upper/rel made opaque: the merged view shows its entries, none of the machine's."""
    directory = upper_path(upper, rel)
    directory.mkdir(exist_ok=True)
    mirror_mode(Path("/") / rel, directory)
    os.setxattr(directory, "trusted.overlay.opaque", b"y")


def upper_path(upper: Path, rel: str) -> Path:
    """upper/rel with its parent directories made as the machine has them."""
    parts = Path(rel).parts
    for n in range(1, len(parts)):
        sub = Path(*parts[:n])
        (upper / sub).mkdir(exist_ok=True)
        mirror_mode(Path("/") / sub, upper / sub)
    return upper / rel


def stop(pids: set[int], grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL whatever is left after `grace` seconds; wait until all are gone."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGTERM)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def lab_state_dir() -> Path:
    """Where lab runs keep their journal, logs and locks: beside the operator's own state
    (`STATE/labs/NAME`), not in the lab directory, so `opskit lab down` keeps the record."""
    from ..store import state_dir

    return state_dir() / "labs" / network.prefix().removesuffix("-")


def lab_environment(root: Path) -> dict[str, str]:
    """What a `--lab` run adds to its environment: the overlay, lab state, secrets, stand-ins."""
    env = {
        "OPSKIT_INVENTORY": str(root / "inventory.yaml"),
        "OPSKIT_STATE_DIR": str(lab_state_dir()),
        "OPSKIT_LAB_ACTIVE": "1",
        "PATH": f"{root / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    }
    for var, name in ENV_SECRETS.items():
        path = root / "secrets" / name
        if path.exists():
            env[var] = path.read_text().strip()
    return env
