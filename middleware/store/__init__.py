"""Durable storage: raw messages, results, the LIS outbox, transmissions and the trace."""

from middleware.store.repo import (
    IncomingMessage,
    LisAnswer,
    OutboxItem,
    Store,
    StoreUnavailable,
)

__all__ = ["IncomingMessage", "LisAnswer", "OutboxItem", "Store", "StoreUnavailable"]
