"""TLS trust for opskit's HTTPS clients: system CAs, a CA file, or a pinned certificate."""

from __future__ import annotations

import asyncio
import hashlib
import ssl

from ..errors import TLSError
from ..model.inventory import TLS


def fingerprint_of(der: bytes) -> str:
    """SHA-256 fingerprint as PVE and openssl print it: AA:BB:...:FF."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def normalize_fingerprint(text: str) -> str:
    digest = text.replace(":", "").strip().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


async def fetch_certificate(
    host: str, port: int, timeout: float = 10.0, *, service: str | None = None
) -> bytes:
    """The DER certificate a TLS server presents, unverified (for pinning only).

    The TCP connection is made first: a port nobody listens on is `ConnectFailed` (refused,
    unreachable, timed out), and only a server that answered and then failed TLS a TLSError."""
    from ..errors import ConnectFailed
    from .net import connect_reason

    where = f"{service} at {host}:{port}" if service else f"{host}:{port}"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (TimeoutError, OSError) as exc:
        reason = connect_reason(exc) or str(exc) or type(exc).__name__
        raise ConnectFailed(where, reason) from None
    try:
        await asyncio.wait_for(writer.start_tls(ctx, server_hostname=host), timeout)
    except (TimeoutError, OSError, ssl.SSLError) as exc:
        writer.transport.abort()
        reason = str(exc) or "timed out"
        raise TLSError(f"{where}: TLS handshake failed: {reason}") from None
    try:
        sslobj = writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj else None
    finally:
        writer.transport.abort()  # at once: a graceful TLS close needs the loop to keep running
    if not der:
        raise TLSError(f"{host}:{port}: presented no certificate")
    return bytes(der)


def pinned_context(der: bytes) -> ssl.SSLContext:
    """A context that accepts exactly this certificate (and nothing it did not sign)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=der)
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx


async def ssl_context(
    tls: TLS, host: str, port: int, timeout: float = 10.0, *, service: str | None = None
) -> ssl.SSLContext:
    """The SSL context for `tls`; a pinned fingerprint is checked against the server first
    (`service` names it in errors: "cannot connect to Proxmox at HOST:PORT: ...")."""
    if tls.insecure:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if tls.fingerprint:
        der = await fetch_certificate(host, port, timeout, service=service)
        got, want = fingerprint_of(der), normalize_fingerprint(tls.fingerprint)
        if got != want:
            raise TLSError(
                f"{host}:{port}: certificate fingerprint mismatch: the server presents {got},"
                f" the pinned one is {want}"
            )
        return pinned_context(der)
    try:
        return ssl.create_default_context(cafile=tls.ca) if tls.ca else ssl.create_default_context()
    except (OSError, ssl.SSLError) as exc:
        raise TLSError(f"cannot load CA file {tls.ca}: {exc}") from None
