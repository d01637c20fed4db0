"""Connection health counters that the alarms and the dashboard read: reconnects counted once
per new connection after the first, refused frames, and both exported to Prometheus."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from middleware.health import ConnectionHealth, Health


def _sample(health: Health, family: str, connection: str) -> float:
    text = generate_latest(health.registry).decode()
    return next(
        s.value
        for f in text_string_to_metric_families(text)
        if f.name == family
        for s in f.samples
        if s.labels.get("connection") == connection and s.name.endswith("_total")
    )


def test_reconnects_count_new_connections_after_the_first() -> None:
    health = Health()
    health.add(ConnectionHealth("chem-1", "astm", "tcp-server", ""))
    for state in ("listening", "connected", "connected", "listening", "connected", "listening"):
        health.set_state("chem-1", state)
    connection = health.connections["chem-1"]
    assert connection.reconnects == 1  # the second "connected" in a row is the same link
    assert _sample(health, "labgate_reconnects", "chem-1") == 1
    assert connection.as_dict()["reconnects"] == 1


def test_refused_frames_are_counted_apart_and_exported() -> None:
    health = Health()
    health.add(ConnectionHealth("chem-1", "astm", "tcp-server", ""))
    health.count("chem-1", "naks", 3)
    assert health.connections["chem-1"].naks == 3
    assert _sample(health, "labgate_frames_refused", "chem-1") == 3
    health.remove("chem-1")
    assert "chem-1" not in health.connections
    assert "chem-1" not in generate_latest(health.registry).decode()
