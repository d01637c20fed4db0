"""Durable storage: raw messages, results, the LIS outbox, transmissions and the trace."""

from middleware.store.repo import (
    IncomingMessage,
    OutboxItem,
    Store,
    StoreUnavailable,
    Transmission,
)

__all__ = ["IncomingMessage", "OutboxItem", "Store", "StoreUnavailable", "Transmission"]
