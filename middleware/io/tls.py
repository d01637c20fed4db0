"""SSL contexts for MLLP links from the configuration (GBUI VII-2 1a: encryption on networks).

Modern defaults only: TLS 1.2 or newer, certificate verification on the client side always
(an unverified TLS link would give a false sense of security), mutual TLS when asked.
"""

from __future__ import annotations

import ssl

from middleware.config.settings import TlsSettings

__all__ = ["client_context", "server_context"]


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    """For a port labgate listens on; refuses clients without a valid certificate when
    `require_client_cert` is set."""
    if not tls.cert:
        raise ValueError("a TLS server needs cert and key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert, tls.key)
    if tls.ca:
        context.load_verify_locations(tls.ca)
    context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_NONE
    return context


def client_context(tls: TlsSettings) -> ssl.SSLContext:
    """For a link labgate opens: verifies the server against `ca` (or the system store)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert:
        context.load_cert_chain(tls.cert, tls.key)
    return context
