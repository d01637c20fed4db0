"""Connection health: state and counters per connection, shared by the API and /metrics.

Counters here are the live view since start; the store keeps the durable figures. Each increment
also updates the Prometheus counter of the same name, so the two views never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["ConnectionHealth", "Health"]

CounterName = Literal["received", "stored", "delivered", "errors"]


@dataclass(slots=True)
class ConnectionHealth:
    """What the lab sees of one connection."""

    name: str
    protocol: str
    transport: str
    address: str
    state: str = "disconnected"
    received: int = 0
    stored: int = 0
    delivered: int = 0
    errors: int = 0
    last_message_at: datetime | None = None
    peers: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "protocol": self.protocol,
            "transport": self.transport,
            "address": self.address,
            "state": self.state,
            "received": self.received,
            "stored": self.stored,
            "delivered": self.delivered,
            "errors": self.errors,
            "last_message_at": self.last_message_at.isoformat() if self.last_message_at else None,
        }


@dataclass
class Health:
    """Every connection's health plus the Prometheus registry that exports it."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    connections: dict[str, ConnectionHealth] = field(default_factory=dict)

    def __post_init__(self) -> None:
        labels = ["connection"]
        self._counters = {
            "received": Counter(
                "labgate_messages_received",
                "Messages received from the peer",
                labels,
                registry=self.registry,
            ),
            "stored": Counter(
                "labgate_results_stored",
                "Results committed to the store",
                labels,
                registry=self.registry,
            ),
            "delivered": Counter(
                "labgate_results_delivered",
                "Results acknowledged by the LIS",
                labels,
                registry=self.registry,
            ),
            "errors": Counter(
                "labgate_errors",
                "Refused frames, refused messages, failed transmissions",
                labels,
                registry=self.registry,
            ),
        }
        self._connected = Gauge(
            "labgate_connection_up",
            "1 when the connection is established",
            labels,
            registry=self.registry,
        )
        self.outbox_depth = Gauge(
            "labgate_outbox_depth", "Messages waiting for the LIS", ["lis"], registry=self.registry
        )

    def add(self, connection: ConnectionHealth) -> ConnectionHealth:
        self.connections[connection.name] = connection
        for counter in self._counters.values():
            counter.labels(connection.name)  # export zero before the first event
        self._connected.labels(connection.name).set(0)
        return connection

    def count(self, name: str, counter: CounterName, amount: int = 1) -> None:
        connection = self.connections[name]
        setattr(connection, counter, getattr(connection, counter) + amount)
        if counter == "received":
            connection.last_message_at = datetime.now(UTC)
        self._counters[counter].labels(name).inc(amount)

    def set_state(self, name: str, state: str) -> None:
        self.connections[name].state = state
        self._connected.labels(name).set(1 if state == "connected" else 0)
