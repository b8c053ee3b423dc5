"""The clients of one plan or run: made on first use from the inventory, closed together."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..errors import OpskitError

if TYPE_CHECKING:
    import httpx

    from ..model import Inventory
    from .proxmox import ProxmoxClient
    from .ssh import Endpoint, SSHPool


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Connections:
    """One ProxmoxClient per cluster (and whatever later clients a run shares)."""

    def __init__(
        self,
        inventory: Inventory | None,
        *,
        say: Callable[[str], None] = _stderr,
        transport: httpx.AsyncBaseTransport | None = None,
        on_request: Callable[[str, str, Mapping[str, Any]], None] | None = None,
    ) -> None:
        from ..place import check_inventory

        check_inventory(inventory)  # the one door: nothing made for a lab leaves it
        self.inventory = inventory
        self.say = say
        self.transport = transport
        self.on_request = on_request
        self._proxmox: dict[str, ProxmoxClient] = {}
        self._resources: dict[str, list[dict[str, Any]]] = {}
        self._ssh: SSHPool | None = None
        self.ssh_options: dict[str, Any] = {}
        # Many probes ask for the same client at once: one of them makes it, all share it.
        self._lock = asyncio.Lock()

    def cluster_name(self, cluster: str | None) -> str:
        if self.inventory is None or not self.inventory.proxmox:
            raise OpskitError("the inventory defines no Proxmox cluster (proxmox: ...)")
        if cluster is None:
            if len(self.inventory.proxmox) != 1:
                raise OpskitError("several Proxmox clusters: the guest must name its cluster")
            return next(iter(self.inventory.proxmox))
        if cluster not in self.inventory.proxmox:
            raise OpskitError(f"unknown Proxmox cluster {cluster!r}")
        return cluster

    async def proxmox(self, cluster: str | None = None) -> ProxmoxClient:

        name = self.cluster_name(cluster)
        client = self._proxmox.get(name)
        if client is not None:
            return client
        async with self._lock:
            if name not in self._proxmox:
                self._proxmox[name] = await self._make_proxmox(name)
        return self._proxmox[name]

    async def _make_proxmox(self, name: str) -> ProxmoxClient:
        from ..secrets import resolve
        from .proxmox import Credentials, ProxmoxClient
        from .tls import ssl_context

        assert self.inventory is not None
        spec = self.inventory.proxmox[name]
        url = urlsplit(spec.api_url)
        if spec.tls.insecure:
            self.say(
                f"warning: TLS verification is off for Proxmox cluster {name}"
                " (insecure: true): anyone on the path can read its token"
            )
        # Secrets first: a missing one is the user's to fix (exit 2) before anything connects.
        credentials = Credentials(
            token_id=spec.token_id,
            token_secret=resolve(f"proxmox.{name}.token", spec.token) if spec.token else None,
            user=spec.user,
            password=resolve(f"proxmox.{name}.password", spec.password) if spec.password else None,
        )
        verify: Any = True
        if url.scheme == "https":
            verify = await ssl_context(
                spec.tls, url.hostname or "", url.port or 8006, service="Proxmox"
            )
        return ProxmoxClient(
            spec.api_url,
            credentials,
            verify=verify,
            timeout=spec.timeout,
            transport=self.transport,
            on_request=self.on_request,
        )

    async def resources(self, client: ProxmoxClient, cluster: str) -> list[dict[str, Any]]:
        """The cluster's guests (/cluster/resources?type=vm), asked once per plan or run."""
        if cluster not in self._resources:
            async with self._lock:
                if cluster not in self._resources:
                    self._resources[cluster] = await client.call("resources", {"type": "vm"}) or []
        return self._resources[cluster]

    def forget_resources(self) -> None:
        self._resources.clear()

    def ssh(self) -> SSHPool:
        """The run's SSH pool: opskit's known_hosts in the state dir, `ssh_options` applied
        (trust_on_first_use, client_keys, config, connect_limit)."""
        if self._ssh is None:
            from ..store import state_dir
            from .ssh import HostKeys, SSHPool

            options = dict(self.ssh_options)
            host_keys = HostKeys(
                state_dir() / "known_hosts",
                user_files=options.pop("known_hosts", None),
                tofu=options.pop("trust_on_first_use", False),
            )
            self._ssh = SSHPool(host_keys, passwords=self._ssh_password, **options)
        return self._ssh

    def _ssh_password(self, endpoint: Endpoint) -> str | None:
        if endpoint.password_ref is None:
            return None
        from ..secrets import resolve

        return resolve(f"ssh.{endpoint.name}.password", endpoint.password_ref)

    async def aclose(self) -> None:
        for client in self._proxmox.values():
            await client.aclose()
        self._proxmox.clear()
        if self._ssh is not None:
            await self._ssh.aclose()
            self._ssh = None
