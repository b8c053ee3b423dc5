"""The lab's apt repository: small Debian packages to patch the lab hosts with, for real.

`lab up` builds them with dpkg-deb and indexes them with dpkg-scanpackages, in the mirror the
controller serves (http://CONTROLLER:8088/apt), laid out as a Debian archive with one suite per
lab host, so each host can be offered its own set:

    apt/pool/NAME_VERSION_all.deb                 every package built
    apt/pool/Packages                             dpkg-scanpackages' index of the pool
    apt/dists/HOST/Release                        unsigned (hosts trust it: [trusted=yes])
    apt/dists/HOST/main/binary-ARCH/Packages      what HOST is offered
    apt/offers.json                               host -> offer

Every host has opskit-lab-demo 1.0 and opskit-lab-broken 1.0 installed at `up` (written into its
layer as dpkg would: files, /var/lib/dpkg/status, info/*.list and *.md5sums) and its apt sources
point at its suite only. The offers:

    upgrade   opskit-lab-demo 1.1, whose postinst touches /var/run/reboot-required (default)
    broken    that, and opskit-lab-broken 1.1, whose postinst fails: a patch that fails
    none      nothing newer than what is installed

A host whose SLOW_CONFIGURE file holds a number of seconds configures opskit-lab-demo 1.1 that
slowly, after asking for the reboot: a patch to interrupt half-way.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

from ..errors import AptError

EPOCH = 1735689600  # 2025-01-01T00:00:00Z: the packages' file times, so builds are repeatable
MAINTAINER = "opskit lab <lab@opskit.invalid>"
TOOLS = ("dpkg-deb", "dpkg-scanpackages")


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    summary: str
    files: dict[str, str] = field(default_factory=dict)  # absolute path -> content
    postinst: str | None = None

    @property
    def deb(self) -> str:
        return f"{self.name}_{self.version}_all.deb"

    def control(self) -> str:
        size = max(1, -(-sum(len(text.encode()) for text in self.files.values()) // 1024))
        return (
            f"Package: {self.name}\nVersion: {self.version}\nArchitecture: all\n"
            f"Maintainer: {MAINTAINER}\nInstalled-Size: {size}\nSection: misc\n"
            f"Priority: optional\nDescription: {self.summary}\n"
            " A package of the opskit lab (a SIMULATION): it exists only in the lab's mirror.\n"
        )

    def directories(self) -> list[str]:
        """Every directory the package's files live in, parents first (dpkg's .list has them)."""
        found: set[str] = set()
        for path in self.files:
            parts = Path(path).parts[1:-1]
            for n in range(1, len(parts) + 1):
                found.add("/" + "/".join(parts[:n]))
        return sorted(found)


# A host's slow patch: opskit-lab-demo 1.1 takes this many seconds to configure, printing a line
# a second, when this file on the host holds a number.
SLOW_CONFIGURE = "/etc/opskit-lab/configure-seconds"
REBOOT_REQUIRED = """#!/bin/sh
# As Debian's packages that need a reboot do (update-notifier-common's notify-reboot-required).
set -e
if [ "$1" = configure ]; then
    touch /var/run/reboot-required
    echo opskit-lab-demo >> /var/run/reboot-required.pkgs
    # then, on a slow host, the rest of the configuring (as a kernel's hooks ask for the reboot
    # while other packages still configure)
    n=$(cat {slow} 2>/dev/null || echo 0)
    i=0
    while [ "$i" -lt "$n" ]; do
        i=$((i + 1))
        echo "opskit-lab-demo: configuring, $i of $n s"
        sleep 1
    done
fi
""".replace("{slow}", SLOW_CONFIGURE)
FAILS = """#!/bin/sh
echo "opskit-lab-broken: configuring fails on purpose (the lab's failed patch)" >&2
exit 1
"""


def _version_file(name: str, version: str) -> dict[str, str]:
    return {f"/usr/share/{name}/version": f"{version}\n"}


DEMO_1_0 = Package(
    "opskit-lab-demo",
    "1.0",
    "the lab's package to upgrade",
    _version_file("opskit-lab-demo", "1.0"),
)
DEMO_1_1 = Package(
    "opskit-lab-demo",
    "1.1",
    "the lab's package to upgrade (needs a reboot)",
    _version_file("opskit-lab-demo", "1.1"),
    postinst=REBOOT_REQUIRED,
)
BROKEN_1_0 = Package(
    "opskit-lab-broken",
    "1.0",
    "the lab's package whose next version fails",
    _version_file("opskit-lab-broken", "1.0"),
)
BROKEN_1_1 = Package(
    "opskit-lab-broken",
    "1.1",
    "the lab's package that fails to configure",
    _version_file("opskit-lab-broken", "1.1"),
    postinst=FAILS,
)
PACKAGES = (DEMO_1_0, DEMO_1_1, BROKEN_1_0, BROKEN_1_1)
INSTALLED = (DEMO_1_0, BROKEN_1_0)
OFFERS: dict[str, tuple[Package, ...]] = {
    "upgrade": (DEMO_1_0, DEMO_1_1, BROKEN_1_0),
    "broken": (DEMO_1_0, DEMO_1_1, BROKEN_1_0, BROKEN_1_1),
    "none": (DEMO_1_0, BROKEN_1_0),
}
DEFAULT_OFFER = "upgrade"


def architecture() -> str:
    """The machine's dpkg architecture (the lab hosts share its dpkg)."""
    done = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True)
    return done.stdout.strip() or "amd64"


def sources_list(url: str, host: str, arch: str) -> str:
    return (
        "# opskit lab: the lab's own repository, and nothing else (no lab host reaches out)\n"
        f"deb [trusted=yes arch={arch}] {url} {host} main\n"
    )


# ----- building ---------------------------------------------------------------------------


def build(repo: Path, hosts: Iterable[str], arch: str) -> None:
    """Build every package into repo/pool, index it, and give each host the default offer."""
    pool = repo / "pool"
    work = repo / "build"
    pool.mkdir(parents=True, exist_ok=True)
    running = []
    for package in PACKAGES:
        tree = work / f"{package.name}_{package.version}"
        _tree(tree, package)
        command = [
            "dpkg-deb",
            "--root-owner-group",
            "-Zgzip",
            "--build",
            str(tree),
            str(pool / package.deb),
        ]
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH)}
        running.append(
            (
                package,
                subprocess.Popen(
                    command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
                ),
            )
        )
    for package, process in running:
        _, err = process.communicate()
        if process.returncode != 0:
            raise AptError(f"dpkg-deb could not build {package.deb}: {err.strip()[:300]}")
    shutil.rmtree(work)
    # Filename: paths are relative to the archive's root (repo), as a Debian mirror has them.
    done = subprocess.run(
        ["dpkg-scanpackages", "--multiversion", "pool", "/dev/null"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise AptError(f"dpkg-scanpackages failed: {done.stderr.strip()[:300]}")
    (pool / "Packages").write_text(done.stdout)
    offers = dict.fromkeys(hosts, DEFAULT_OFFER)
    for host, offer in offers.items():
        _suite(repo, host, offer, arch)
    (repo / "offers.json").write_text(json.dumps({"arch": arch, "offers": offers}, indent=2))


def _tree(tree: Path, package: Package) -> None:
    if tree.exists():
        shutil.rmtree(tree)
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(package.control())
    if package.postinst:
        script = tree / "DEBIAN" / "postinst"
        script.write_text(package.postinst)
        script.chmod(0o755)
    for path, text in package.files.items():
        target = tree / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(0o644)
    for entry in sorted(tree.rglob("*"), reverse=True):
        if entry.is_dir():
            entry.chmod(0o755)
        os.utime(entry, (EPOCH, EPOCH), follow_symlinks=False)


# ----- offers -----------------------------------------------------------------------------


def offers(repo: Path) -> dict[str, str]:
    data = json.loads((repo / "offers.json").read_text())
    return dict(data["offers"])


def offer(repo: Path, hosts: Iterable[str], choice: str) -> dict[str, str]:
    """Offer `choice` to `hosts`; returns every host's offer."""
    if choice not in OFFERS:
        raise AptError(f"unknown offer {choice!r} (one of {', '.join(OFFERS)})")
    data = json.loads((repo / "offers.json").read_text())
    for host in hosts:
        if host not in data["offers"]:
            known = ", ".join(data["offers"])
            raise AptError(f"the lab has no host {host!r} (its hosts: {known})")
        data["offers"][host] = choice
        _suite(repo, host, choice, data["arch"])
    (repo / "offers.json").write_text(json.dumps(data, indent=2))
    return dict(data["offers"])


def _stanzas(repo: Path) -> dict[tuple[str, str], str]:
    out = {}
    for stanza in (repo / "pool" / "Packages").read_text().split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " "
        )
        if "Package" in fields:
            out[(fields["Package"], fields["Version"])] = stanza.strip("\n") + "\n"
    return out


def _suite(repo: Path, host: str, choice: str, arch: str) -> None:
    """dists/HOST: the Packages index of what `choice` offers, and its Release file."""
    stanzas = _stanzas(repo)
    text = "\n".join(stanzas[(p.name, p.version)] for p in OFFERS[choice])
    suite = repo / "dists" / host
    binary = suite / "main" / f"binary-{arch}"
    binary.mkdir(parents=True, exist_ok=True)
    indexes = {"Packages": text.encode(), "Packages.gz": gzip.compress(text.encode(), mtime=0)}
    for name, data in indexes.items():
        _write(binary / name, data)
    lines = [
        "Origin: opskit lab",
        "Label: opskit lab (SIMULATION)",
        f"Suite: {host}",
        f"Codename: {host}",
        f"Date: {formatdate(usegmt=True)}",
        f"Architectures: {arch}",
        "Components: main",
        f"Description: what the lab offers {host}: {choice}",
        "SHA256:",
    ]
    for name, data in indexes.items():
        digest = hashlib.sha256(data).hexdigest()
        lines.append(f" {digest} {len(data):>8} main/binary-{arch}/{name}")
    _write(suite / "Release", ("\n".join(lines) + "\n").encode())


def _write(path: Path, data: bytes) -> None:
    """Replace `path`, its time later than the old one's by a second at least: the mirror
    answers If-Modified-Since by whole seconds, and apt must see a changed index."""
    try:
        before = path.stat().st_mtime
    except FileNotFoundError:
        before = 0.0
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    stamp = max(time.time(), before + 1.0)
    os.utime(temporary, (stamp, stamp))
    temporary.replace(path)


# ----- installed at `up` ------------------------------------------------------------------


@functools.cache
def _machine_status() -> str:
    """The machine's dpkg status (read once for every host's copy; never written)."""
    machine = Path("/var/lib/dpkg/status")
    return machine.read_text() if machine.exists() else ""


def preinstall(place: Callable[[str], Path], packages: Iterable[Package] = INSTALLED) -> None:
    """Install `packages` into a host's layer as dpkg leaves them: their files, their entries
    in /var/lib/dpkg/status (a copy of the machine's, in the layer) and info/NAME.list and
    .md5sums. `place(rel)` is the path of `rel` in the layer, its parents made."""
    status = place("var/lib/dpkg/status")
    text = status.read_text() if status.exists() else _machine_status()
    for package in packages:
        for path, content in package.files.items():
            target = place(path.lstrip("/"))
            target.write_text(content)
            target.chmod(0o644)
            os.utime(target, (EPOCH, EPOCH))
        listing = ["/.", *package.directories(), *sorted(package.files)]
        place(f"var/lib/dpkg/info/{package.name}.list").write_text("\n".join(listing) + "\n")
        sums = "".join(
            f"{hashlib.md5(content.encode()).hexdigest()}  {path.lstrip('/')}\n"
            for path, content in sorted(package.files.items())
        )
        place(f"var/lib/dpkg/info/{package.name}.md5sums").write_text(sums)
        fields = dict(
            line.split(": ", 1) for line in package.control().splitlines() if line[:1] != " "
        )
        description = package.control().split("Description: ", 1)[1]
        text = text.rstrip("\n") + "\n\n" if text.strip() else ""
        text += (
            f"Package: {package.name}\nStatus: install ok installed\n"
            f"Priority: {fields['Priority']}\nSection: {fields['Section']}\n"
            f"Installed-Size: {fields['Installed-Size']}\nMaintainer: {MAINTAINER}\n"
            f"Architecture: all\nVersion: {package.version}\nDescription: {description}"
        )
    status.write_text(text.rstrip("\n") + "\n")
    status.chmod(0o644)
