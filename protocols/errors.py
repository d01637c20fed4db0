"""Errors raised by the sans-IO protocol cores.

    ProtocolError
     ├── LocalProtocolError   we misused a core (a labgate bug): fail loudly
     └── RemoteProtocolError  the peer sent what we cannot accept: refuse it, keep it in the trace

The cores never log; they raise these or emit events, and the middleware decides what to do.
"""

from __future__ import annotations

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Base of every error a protocol core raises."""


class LocalProtocolError(ProtocolError):
    """The caller used a core in a way its state does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer's bytes or message cannot be accepted; the text says why, for the trace."""
