"""The Beszel hub's REST API (PocketBase): password auth, `systems` and `fingerprints` records.

A superuser (`_superusers`) or a hub user (`users`) logs in with a password; the token is
refreshed before it gets old, and a request refused with an older token (PocketBase treats a
token it no longer accepts as none: 401 or 403) logs in again, once. Made through Connections
(`ctx.hub()`), its transport is the door's: while planning everything but GET is refused
(logging in passes: it changes nothing).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, urlsplit

from ..errors import (
    ConnectFailed,
    HubAnswerLost,
    HubAuthError,
    HubError,
    HubUnreachable,
)
from .connections import CLIENT, READS
from .net import connect_reason, tls_reason

if TYPE_CHECKING:
    import httpx

AuthKind = Literal["auto", "superuser", "user"]
AUTH_COLLECTIONS: dict[str, tuple[str, ...]] = {
    "superuser": ("_superusers",),
    "user": ("users",),
    "auto": ("_superusers", "users"),
}
# PocketBase tokens live a day (superusers) or a week (users): refresh well before either.
TOKEN_REFRESH = 30 * 60.0
RELOGIN_AFTER = 10.0  # a refusal with an older token may be the token's: log in again, once
PAGE = 200


def filter_literal(value: str) -> str:
    """A string as a PocketBase filter literal: double quotes, backslash escapes."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class HubClient:
    """One hub. Use as `async with HubClient(...) as hub:`."""

    def __init__(
        self,
        url: str,
        email: str,
        password: str,
        *,
        auth: AuthKind = "auto",
        verify: Any = True,
        timeout: float = 15.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        import httpx

        self.url = url.rstrip("/")
        self._email = email
        self._password = password
        self.auth = auth
        self._http = httpx.AsyncClient(
            base_url=self.url,
            verify=verify,
            timeout=timeout,
            transport=transport,
            trust_env=False,  # never through a proxy from the environment
            headers={"Accept": "application/json"},
        )
        self._token: str | None = None
        self._issued = 0.0
        self._collection: str | None = None  # where the login succeeded
        self._account: dict[str, Any] = {}  # the logged-in account (id, email, ...)
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def is_superuser(self) -> bool:
        return self._collection == "_superusers"

    @property
    def account(self) -> dict[str, Any]:
        """The logged-in account's record (id, email, ...); empty before the login."""
        return self._account

    # ----- auth --------------------------------------------------------------------------

    async def login(self) -> None:
        """Log in (again): superusers first, then hub users, as `auth` allows."""
        async with self._lock:
            await self._login_locked()

    async def _login_locked(self) -> None:
        refused = []
        for collection in AUTH_COLLECTIONS[self.auth]:
            path = f"/api/collections/{collection}/auth-with-password"
            body = {"identity": self._email, "password": self._password}
            response = await self._send("POST", path, json=body, authenticated=False)
            if response.status_code in (400, 401, 403, 404):
                # 400 is PocketBase's "Failed to authenticate."; 404 a collection it lacks
                refused.append(collection)
                continue
            data = self._json(response, "POST", path)
            self._token = str(data.get("token") or "")
            if not self._token:
                raise HubError(f"Beszel hub {self.url}: the login answered without a token")
            self._issued = time.monotonic()
            self._collection = collection
            self._account = dict(data.get("record") or {})
            return
        tried = " and ".join(
            {"_superusers": "superusers", "users": "hub users"}[c] for c in refused
        )
        raise HubAuthError(
            f"Beszel hub {self.url}: login refused: wrong email or password ({tried} tried)",
            400,
        )

    async def _ensure_token(self) -> str:
        async with self._lock:
            if self._token is None:
                await self._login_locked()
            elif time.monotonic() - self._issued > TOKEN_REFRESH:
                await self._refresh_locked()
            assert self._token is not None
            return self._token

    async def _refresh_locked(self) -> None:
        path = f"/api/collections/{self._collection}/auth-refresh"
        response = await self._send("POST", path, authenticated=True)
        if response.status_code >= 400:
            await self._login_locked()  # the token is no longer good: a fresh login
            return
        data = self._json(response, "POST", path)
        self._token = str(data.get("token") or self._token)
        self._issued = time.monotonic()

    # ----- requests ----------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
    ) -> Any:
        """The decoded JSON answer (None for 204); HubError for 4xx/5xx."""
        await self._ensure_token()
        changes = method != "GET"
        response = await self._send(
            method, path, params=params, json=json, authenticated=True, changes=changes
        )
        stale = time.monotonic() - self._issued > RELOGIN_AFTER
        if response.status_code in (401, 403) and stale:
            # PocketBase takes a token it no longer accepts as no token at all (403 where the
            # rules need a login): log in again, once, unless the token is brand new
            await self.login()
            response = await self._send(
                method, path, params=params, json=json, authenticated=True, changes=changes
            )
        return self._json(response, method, path)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        authenticated: bool,
        changes: bool = False,
    ) -> httpx.Response:
        import httpx

        headers = {}
        if authenticated and self._token:
            headers["Authorization"] = self._token
        # Logging in and refreshing a token change nothing: the door lets them through.
        reads = method == "GET" or not changes
        try:
            return await self._http.request(
                method,
                path,
                params=dict(params or {}),
                json=json,
                headers=headers,
                extensions={CLIENT: "hub", READS: reads},
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # Nothing reached the hub: TLS refused it, or nothing answered.
            host = urlsplit(self.url).netloc or self.url
            tls = tls_reason(exc)
            if tls is not None:
                raise HubError(f"Beszel hub {host}: {tls}") from None
            reason = connect_reason(exc) or _transport_reason(exc)
            raise HubUnreachable(str(ConnectFailed(f"the Beszel hub at {host}", reason))) from None
        except (httpx.PoolTimeout, httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:
            raise HubError(f"Beszel hub {self.url}: {method} {path}: {exc}") from None
        except httpx.HTTPError as exc:
            # Sent (or partly): a change may have been made.
            timed_out = isinstance(exc, httpx.TimeoutException)
            reason = "no answer in time" if timed_out else _transport_reason(exc)
            if changes:
                raise HubAnswerLost(
                    f"Beszel hub {self.url}: {method} {path} was sent, but its answer was lost"
                    f" ({reason})"
                ) from None
            raise HubError(f"Beszel hub {self.url}: {method} {path}: {reason}") from None

    def _json(self, response: httpx.Response, method: str, path: str) -> Any:
        if response.status_code >= 400:
            raise _error(self.url, method, path, response)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise HubError(
                f"Beszel hub {method} {path}: {response.status_code}, but the answer is not JSON"
                " (is this URL a Beszel hub?)",
                response.status_code,
            ) from None

    # ----- records -----------------------------------------------------------------------

    async def records(
        self, collection: str, filter: str | None = None, *, sort: str | None = None
    ) -> list[dict[str, Any]]:
        """Every record of a collection matching `filter`, all pages."""
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            params: dict[str, Any] = {"page": page, "perPage": PAGE, "skipTotal": 1}
            if filter:
                params["filter"] = filter
            if sort:
                params["sort"] = sort
            data = await self.request("GET", _records(collection), params=params)
            items = list((data or {}).get("items") or [])
            found += items
            if len(items) < PAGE:
                return found
            page += 1

    async def get(self, collection: str, record_id: str) -> dict[str, Any]:
        return dict(await self.request("GET", f"{_records(collection)}/{quote(record_id)}"))

    async def create(self, collection: str, data: Mapping[str, Any]) -> dict[str, Any]:
        return dict(await self.request("POST", _records(collection), json=dict(data)))

    async def update(
        self, collection: str, record_id: str, data: Mapping[str, Any]
    ) -> dict[str, Any]:
        path = f"{_records(collection)}/{quote(record_id)}"
        return dict(await self.request("PATCH", path, json=dict(data)))

    async def delete(self, collection: str, record_id: str) -> None:
        await self.request("DELETE", f"{_records(collection)}/{quote(record_id)}")

    # ----- Beszel ------------------------------------------------------------------------

    async def system(self, name: str) -> dict[str, Any] | None:
        """The `systems` record named `name`, or None; two of that name is an error."""
        found = await self.records("systems", f"name = {filter_literal(name)}")
        if len(found) > 1:
            ids = ", ".join(str(r.get("id")) for r in found)
            raise HubError(
                f"Beszel hub {self.url}: {len(found)} systems are named {name!r} ({ids}):"
                " rename or delete all but one"
            )
        return found[0] if found else None

    async def fingerprint(self, system_id: str) -> dict[str, Any] | None:
        found = await self.records("fingerprints", f"system = {filter_literal(system_id)}")
        return found[0] if found else None

    async def public_key(self) -> str:
        """The hub's SSH public key, from the Beszel hub's authenticated /api/beszel/getkey.

        A bare PocketBase (no Beszel routes) answers 404: give the key as a secret instead."""
        try:
            data = await self.request("GET", "/api/beszel/getkey")
        except HubError as exc:
            if exc.status == 404:
                raise HubError(
                    f"Beszel hub {self.url} does not serve its public key (no /api/beszel/getkey:"
                    " not a Beszel hub, or an old one): pass the key as a secret instead"
                ) from None
            raise
        key = str((data or {}).get("key") or "").strip()
        if not key:
            raise HubError(f"Beszel hub {self.url}: /api/beszel/getkey gave no key")
        return key

    async def health(self) -> dict[str, Any]:
        """GET /api/health (no login needed)."""
        response = await self._send("GET", "/api/health", authenticated=False)
        return dict(self._json(response, "GET", "/api/health") or {})


def _records(collection: str) -> str:
    return f"/api/collections/{quote(collection)}/records"


def _transport_reason(exc: Exception) -> str:
    # httpx wraps the OS error; its errno says it best ("Connection refused").
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno and not isinstance(cause, ssl.SSLError):
            return os.strerror(cause.errno)
        cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__


def _error(url: str, method: str, path: str, response: httpx.Response) -> HubError:
    """PocketBase's error shape: {"status", "message", "data": {field: {"code", "message"}}}."""
    message = response.reason_phrase or "error"
    details = ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        message = str(body.get("message") or message).strip()
        data = body.get("data")
        if isinstance(data, dict):
            details = "".join(
                f"; {field}: {(v.get('message') if isinstance(v, dict) else v)}"
                for field, v in sorted(data.items())
            )
    host = urlsplit(url).netloc or url
    return HubError(
        f"Beszel hub {host}: {method} {path}: {response.status_code} {message}{details}",
        response.status_code,
    )
