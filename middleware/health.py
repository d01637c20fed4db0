"""Connection health: state and counters per connection, shared by the API and /metrics.

Counters here are the live view since start; the store keeps the durable figures. Each increment
also updates the Prometheus counter of the same name, so the two views never disagree.

The registry also carries what an operator watches on a gateway (issue 10), each fed by one
recording method so that no module touches a Prometheus object directly:

    labgate_messages_received_total / _sent_total{connection}   messages in and out
    labgate_retransmissions_total{connection}                   the same message sent again
    labgate_ack_latency_seconds{connection}                     sending -> the peer's ACK
    labgate_decisions_total{connection,decision,reason}         committed decisions
    labgate_outbox_depth / _oldest_age_seconds{lis}             messages still owed to the LIS
    labgate_alarms_open{kind}                                   (registered by the alarm center)
    labgate_event_loop_lag_seconds (+ _distribution)            how late the event loop runs
    labgate_watchdog_skipped_total                              systemd pings held back
    labgate_backup_last_success_timestamp_seconds, _failures_total
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ConnectionHealth", "DeviceState", "Health"]

CounterName = Literal["received", "stored", "delivered", "errors", "naks", "reconnects"]

# From a LAN LIS answering at once (milliseconds) to one that takes its ack_timeout (30 s).
ACK_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# A healthy loop runs a few milliseconds late; E1381's shortest timer (15 s) bounds the top.
LOOP_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


@dataclass(slots=True)
class DeviceState:
    """A point-of-care device as the lab must see it at a glance (GBUI XIII: a blocked device
    must be seen blocked at once): whether labgate's lock holds, what the device last said of
    itself, and the operator list it was given. Its POCT1-A session keeps it up to date.

    `lock` is read from two facts: whether the lab blocks the device now (`blocked`, read live
    from the pipeline) and whether the device acknowledged labgate's LOCK (`locked`) —
    `locked` (blocked, LOCK acknowledged), `lock_pending` (blocked, LOCK queued, sent, refused
    or waiting for the device to connect), `unlock_pending` (unblocked, UNLOCK not yet
    acknowledged), `unlocked`."""

    blocked: Callable[[], bool] = field(default=lambda: False)
    locked: bool = False
    lock_changed_at: datetime | None = None  # when the device acknowledged LOCK or UNLOCK
    device_id: str = ""
    condition: str = ""  # DST.condition_cd as last reported (R ready, L locked, B busy...)
    device_locked: bool = False  # the device itself says it refuses tests (all or some)
    status_at: datetime | None = None  # when that status came
    operators: int | None = None  # operators in the list last sent (None: no list kept)
    operators_version: str = ""  # a digest of that list: the same list, the same version
    operators_state: str = ""  # sent, accepted (the device's ACK of its EOT OPL), refused
    operators_at: datetime | None = None  # when that state was reached

    @property
    def lock(self) -> str:
        blocked = self.blocked()
        if blocked:
            return "locked" if self.locked else "lock_pending"
        return "unlock_pending" if self.locked else "unlocked"

    def as_dict(self) -> dict[str, object]:
        return {
            "device_id": self.device_id,
            "lock": self.lock,
            "lock_changed_at": _iso(self.lock_changed_at),
            "status": None
            if self.status_at is None
            else {
                "condition": self.condition,
                "locked": self.device_locked,
                "at": _iso(self.status_at),
            },
            "operators": None
            if self.operators is None
            else {
                "count": self.operators,
                "version": self.operators_version,
                "state": self.operators_state,
                "at": _iso(self.operators_at),
            },
        }


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
    naks: int = 0  # frames refused for a bad checksum or framing (ASTM), a share of `errors`
    reconnects: int = 0  # connections after the first since the daemon started
    last_message_at: datetime | None = None
    peers: int = 0
    connected_once: bool = False
    device: DeviceState | None = None  # point-of-care devices (POCT1-A) only

    def as_dict(self) -> dict[str, object]:
        shown: dict[str, object] = {
            "name": self.name,
            "protocol": self.protocol,
            "transport": self.transport,
            "address": self.address,
            "state": self.state,
            "received": self.received,
            "stored": self.stored,
            "delivered": self.delivered,
            "errors": self.errors,
            "naks": self.naks,
            "reconnects": self.reconnects,
            "last_message_at": self.last_message_at.isoformat() if self.last_message_at else None,
        }
        if self.device is not None:
            shown["device"] = self.device.as_dict()
        return shown


@dataclass
class Health:
    """Every connection's health plus the Prometheus registry that exports it."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    connections: dict[str, ConnectionHealth] = field(default_factory=dict)
    # Device states of sessions created before their connection is added (see `attach_device`).
    devices: dict[str, DeviceState] = field(default_factory=dict)

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
            "naks": Counter(
                "labgate_frames_refused",
                "Frames NAKed for a bad checksum or framing (part of labgate_errors)",
                labels,
                registry=self.registry,
            ),
            "reconnects": Counter(
                "labgate_reconnects",
                "Connections established again after the first since start",
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
        registry = self.registry
        self._sent = Counter(
            "labgate_messages_sent",
            "Messages sent to the peer (every transmission, retransmissions included)",
            labels,
            registry=registry,
        )
        self._retransmissions = Counter(
            "labgate_retransmissions",
            "Messages sent again to the peer after no or a refused acknowledgement",
            labels,
            registry=registry,
        )
        self._ack_latency = Histogram(
            "labgate_ack_latency_seconds",
            "Time from sending a message to the peer's acknowledgement",
            labels,
            buckets=ACK_LATENCY_BUCKETS,
            registry=registry,
        )
        self._decisions = Counter(
            "labgate_decisions",
            "Patient results decided and committed, per decision and reason "
            "(a result with several reasons counts once for each; none: reason empty)",
            ["connection", "decision", "reason"],
            registry=registry,
        )
        self._outbox_age = Gauge(
            "labgate_outbox_oldest_age_seconds",
            "Age of the oldest message still owed to the LIS (0 when none)",
            ["lis"],
            registry=registry,
        )
        self._loop_lag = Gauge(
            "labgate_event_loop_lag_seconds",
            "How late the event loop ran its last timer",
            registry=registry,
        )
        self._loop_lag_distribution = Histogram(
            "labgate_event_loop_lag_distribution_seconds",
            "How late the event loop runs its timers",
            buckets=LOOP_LAG_BUCKETS,
            registry=registry,
        )
        self._watchdog_skipped = Counter(
            "labgate_watchdog_skipped",
            "systemd watchdog pings held back because the event loop was not responsive",
            registry=registry,
        )
        self._backup_last = Gauge(
            "labgate_backup_last_success_timestamp_seconds",
            "When the last automatic or manual backup of the store succeeded (Unix time)",
            registry=registry,
        )
        self._backup_failures = Counter(
            "labgate_backup_failures", "Backups of the store that failed", registry=registry
        )

    def add(self, connection: ConnectionHealth) -> ConnectionHealth:
        self.connections[connection.name] = connection
        if connection.device is None:
            connection.device = self.devices.get(connection.name)
        for counter in (*self._counters.values(), self._sent, self._retransmissions):
            counter.labels(connection.name)  # export zero before the first event
        self._ack_latency.labels(connection.name)
        self._connected.labels(connection.name).set(0)
        return connection

    def count(self, name: str, counter: CounterName, amount: int = 1) -> None:
        connection = self.connections[name]
        setattr(connection, counter, getattr(connection, counter) + amount)
        if counter == "received":
            connection.last_message_at = datetime.now(UTC)
        self._counters[counter].labels(name).inc(amount)

    def attach_device(self, name: str, device: DeviceState) -> None:
        """Show `device` with the connection `name`, now or when it is added (a session is
        created before the gateway adds its connection)."""
        self.devices[name] = device
        connection = self.connections.get(name)
        if connection is not None:
            connection.device = device

    def remove(self, name: str) -> None:
        """Forget a connection (its instrument left the configuration); its exported series go
        too, so dashboards do not show a ghost."""
        self.devices.pop(name, None)
        if self.connections.pop(name, None) is None:
            return
        for metric in (
            *self._counters.values(),
            self._sent,
            self._retransmissions,
            self._ack_latency,
            self._connected,
        ):
            with contextlib.suppress(KeyError):
                metric.remove(name)

    def set_state(self, name: str, state: str) -> None:
        connection = self.connections[name]
        was_up = connection.state == "connected"
        connection.state = state
        self._connected.labels(name).set(1 if state == "connected" else 0)
        if state == "connected" and not was_up:
            if connection.connected_once:
                self.count(name, "reconnects")
            connection.connected_once = True

    # --- what the senders record ----------------------------------------------------------

    def message_sent(self, name: str, *, attempt: int = 1) -> None:
        """A message went to the peer `name`; `attempt` > 1 makes it a retransmission."""
        self._sent.labels(name).inc()
        if attempt > 1:
            self._retransmissions.labels(name).inc()

    def ack_received(self, name: str, latency: float) -> None:
        """The peer `name` acknowledged a message (AA, AE, AR alike) `latency` seconds after
        it was sent."""
        self._ack_latency.labels(name).observe(max(0.0, latency))

    # --- what the operations tasks sample ---------------------------------------------------

    def count_decision(self, name: str, decision: str, reasons: Iterable[str]) -> None:
        """One committed patient result from connection `name`."""
        reasons = list(reasons)
        for reason in reasons or [""]:
            self._decisions.labels(name, decision, reason).inc()

    def set_outbox(self, lis: str, depth: int, oldest_age: float) -> None:
        self.outbox_depth.labels(lis).set(depth)
        self._outbox_age.labels(lis).set(max(0.0, oldest_age))

    def loop_lag(self, lag: float) -> None:
        self._loop_lag.set(lag)
        self._loop_lag_distribution.observe(lag)

    def watchdog_skipped(self) -> None:
        self._watchdog_skipped.inc()

    def backup_succeeded(self, at: datetime) -> None:
        self._backup_last.set(at.timestamp())

    def backup_failed(self) -> None:
        self._backup_failures.inc()
