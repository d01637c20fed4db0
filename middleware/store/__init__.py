"""Durable storage: raw messages, results, the LIS outbox, transmissions and the trace."""

from middleware.store.repo import (
    Duplicate,
    IncomingMessage,
    OutboxItem,
    Store,
    StoreUnavailable,
    Transmission,
)

__all__ = [
    "Duplicate",
    "IncomingMessage",
    "OutboxItem",
    "Store",
    "StoreUnavailable",
    "Transmission",
]
