"""TLS contexts for the simulators, from PEM files: a server, a client, mutual TLS.

Labgate's HL7 links may run MLLP inside TLS (the analyser or LIS presents a certificate,
and with mutual TLS so does the other side).  These helpers build the `ssl.SSLContext`
the simulators hand to asyncio; tests make throw-away certificates with `trustme`.

Mutual TLS is a server that requires a client certificate (`require_client_cert`) plus a
client that has one (`certfile`/`keyfile` of `client_context`).
"""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["client_context", "server_context"]

PathLike = str | Path


def server_context(
    certfile: PathLike,
    keyfile: PathLike | None = None,
    *,
    cafile: PathLike | None = None,
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """A server context presenting `certfile` (with `keyfile`, or the key inside `certfile`).

    `cafile` is the CA that client certificates must chain to; with `require_client_cert`
    a client without a valid certificate is refused during the handshake (mutual TLS).
    Raises `OSError`/`ssl.SSLError` for unreadable or mismatched files, `ValueError` when a
    client certificate is required without a CA to check it against.
    """
    if require_client_cert and cafile is None:
        raise ValueError("requiring a client certificate needs a CA file to check it")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(certfile), str(keyfile) if keyfile is not None else None)
    if cafile is not None:
        context.load_verify_locations(cafile=str(cafile))
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_context(
    cafile: PathLike | None = None,
    *,
    certfile: PathLike | None = None,
    keyfile: PathLike | None = None,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A client context trusting `cafile` (the system store when None).

    `certfile` (and `keyfile`) is the client certificate for mutual TLS.  The server's name
    is checked unless `check_hostname` is False (a lab device addressed by an IP its
    certificate does not list); its certificate is always verified.
    """
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(cafile) if cafile is not None else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = check_hostname
    if certfile is not None:
        context.load_cert_chain(str(certfile), str(keyfile) if keyfile is not None else None)
    return context
