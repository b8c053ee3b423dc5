"""Why a connection failed, in an operator's words: refused, unreachable, timed out, or TLS."""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Iterator

_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, what caused it, and the members of exception groups among them."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += list(getattr(current, "exceptions", ()))
        for nxt in (current.__cause__, current.__context__):
            if nxt is not None:
                todo.append(nxt)


def tls_reason(exc: BaseException) -> str | None:
    """What TLS objected to (a certificate it does not trust, a handshake it could not make),
    or None when TLS is not the cause."""
    for current in _chain(exc):
        if isinstance(current, ssl.SSLCertVerificationError):
            detail = f": {current.verify_message}" if current.verify_message else ""
            return f"TLS certificate not trusted ({current.reason}{detail})"
        if isinstance(current, ssl.SSLError):
            return f"TLS handshake failed: {current.reason or current}"
    return None


def connect_reason(exc: BaseException) -> str | None:
    """Of an error raised while connecting: 'connection refused', 'unreachable', 'timed out'
    or 'unknown host' when the connection never opened; None when TLS failed on it."""
    if tls_reason(exc) is not None:
        return None
    for current in _chain(exc):
        if isinstance(current, socket.gaierror):
            return "unknown host (the name does not resolve)"
        if isinstance(current, ConnectionRefusedError) or (
            isinstance(current, OSError) and current.errno == errno.ECONNREFUSED
        ):
            return "connection refused"
        if isinstance(current, OSError) and current.errno in _UNREACHABLE:
            return "unreachable (no route to the host)"
        if isinstance(current, TimeoutError) or type(current).__name__ == "ConnectTimeout":
            return "timed out"
    return None
