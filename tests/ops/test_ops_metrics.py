"""/metrics of a real daemon after a simulated analyser sent results, parsed as Prometheus
would, and the recording methods the senders call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from conftest import free_port, gateway_config
from e2e.daemon import Daemon
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from middleware.health import ConnectionHealth, Health
from simulators.analyser import AnalyserSimulator, SimulatedResult, build_result_message
from simulators.lis import LisSimulator

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

RESULTS = [
    SimulatedResult("GLU", "5.4", "mmol/L", "3.9 to 6.1", "N"),
    SimulatedResult("K", "4.1", "mmol/L", "3.5 to 5.1", "N"),
]


def _parse(text: str) -> tuple[set[str], Samples]:
    families: set[str] = set()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        families.add(f"{family.name}:{family.type}")
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return families, samples


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def _scrape(api: str) -> tuple[set[str], Samples]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{api}/metrics")
    response.raise_for_status()
    return _parse(response.text)


async def _until(
    api: str, condition: Callable[[Samples], bool], timeout: float = 20.0
) -> tuple[set[str], Samples]:
    deadline = time.monotonic() + timeout
    while True:
        families, samples = await _scrape(api)
        try:
            if condition(samples):
                return families, samples
        except KeyError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"/metrics never satisfied the condition: {samples}")
        await asyncio.sleep(0.5)


async def test_metrics_of_a_real_daemon_after_results_went_through(tmp_path: Path) -> None:
    lis = LisSimulator()
    lis_port = await lis.start()
    api_port, analyser_port = free_port(), free_port()
    config = tmp_path / "labgate.yaml"
    config.write_text(
        gateway_config(
            tmp_path / "labgate.db",
            lis_port=lis_port,
            api_port=api_port,
            instruments={"chem-1": analyser_port},
            retry_initial=0.2,
            retry_maximum=0.5,
        )
    )
    daemon = Daemon(config, api_port, tmp_path / "daemon.log")
    await asyncio.to_thread(daemon.start)
    analyser = AnalyserSimulator("127.0.0.1", analyser_port)
    try:
        await analyser.connect()
        for number in (1, 2):
            message = build_result_message(f"S{number}", f"P{number}", RESULTS)
            assert await analyser.send(message) is True
        await lis.wait_for(2)

        families, samples = await _until(
            daemon.api,
            lambda s: (
                _value(
                    s,
                    "labgate_decisions_total",
                    connection="chem-1",
                    decision="held",
                    reason="no_rule",
                )
                == 4
            ),
        )
        assert _value(samples, "labgate_messages_received_total", connection="chem-1") == 2
        assert _value(samples, "labgate_results_delivered_total", connection="chem-1") == 4
        assert _value(samples, "labgate_outbox_depth", lis="lis") == 0
        assert _value(samples, "labgate_outbox_oldest_age_seconds", lis="lis") == 0
        assert _value(samples, "labgate_event_loop_lag_seconds") < 1.0
        assert _value(samples, "labgate_event_loop_lag_distribution_seconds_count") > 0
        assert _value(samples, "labgate_connection_up", connection="chem-1") == 1
        # Declared for every connection from the start, so dashboards and alerts find them.
        for name in ("labgate_messages_sent_total", "labgate_retransmissions_total"):
            assert (name, frozenset({("connection", "lis")})) in samples
        assert ("labgate_ack_latency_seconds_count", frozenset({("connection", "lis")})) in samples
        # The sender records what it sent and how long each acknowledgement took.
        assert _value(samples, "labgate_messages_sent_total", connection="lis") >= 2
        assert _value(samples, "labgate_ack_latency_seconds_count", connection="lis") >= 2
        assert {
            "labgate_ack_latency_seconds:histogram",
            "labgate_alarms_open:gauge",  # the alarm center's
            "labgate_watchdog_skipped:counter",
            "labgate_backup_last_success_timestamp_seconds:gauge",
            "labgate_backup_failures:counter",
        } <= families

        # The LIS goes away: what it is owed piles up, and its age shows.
        await lis.close()
        message = build_result_message("S3", "P3", RESULTS[:1])
        assert await analyser.send(message) is True
        await asyncio.sleep(1.0)
        _, samples = await _until(
            daemon.api,
            lambda s: (
                _value(s, "labgate_outbox_depth", lis="lis") == 1
                and _value(s, "labgate_outbox_oldest_age_seconds", lis="lis") > 0.5
            ),
        )
        assert _value(samples, "labgate_errors_total", connection="lis") >= 1
    finally:
        await analyser.close()
        daemon.stop()
        await lis.close()


def test_what_a_sender_records_shows_in_the_registry() -> None:
    """The calls the LIS sender makes (see middleware/health.py): every transmission, the
    retransmissions among them, and the time each acknowledgement took."""
    health = Health()
    health.add(ConnectionHealth("lis", "hl7", "mllp-client", "127.0.0.1:2575"))
    health.message_sent("lis", attempt=1)
    health.message_sent("lis", attempt=2)
    health.message_sent("lis", attempt=3)
    health.ack_received("lis", 0.03)
    health.ack_received("lis", 2.0)
    health.count_decision("chem-1", "held", ["critical_value", "delta_exceeded"])
    health.count_decision("chem-1", "autovalidated", [])
    _, samples = _parse(generate_latest(health.registry).decode())
    assert _value(samples, "labgate_messages_sent_total", connection="lis") == 3
    assert _value(samples, "labgate_retransmissions_total", connection="lis") == 2
    assert _value(samples, "labgate_ack_latency_seconds_count", connection="lis") == 2
    assert _value(samples, "labgate_ack_latency_seconds_bucket", connection="lis", le="0.05") == 1
    assert _value(samples, "labgate_ack_latency_seconds_sum", connection="lis") == 2.03
    held = {"connection": "chem-1", "decision": "held"}
    assert _value(samples, "labgate_decisions_total", **held, reason="critical_value") == 1
    assert _value(samples, "labgate_decisions_total", **held, reason="delta_exceeded") == 1
    assert (
        _value(
            samples,
            "labgate_decisions_total",
            connection="chem-1",
            decision="autovalidated",
            reason="",
        )
        == 1
    )


async def test_store_figures_on_both_backends(store_url: str) -> None:
    """Decisions are counted from what is committed after the daemon started (not history),
    and the outbox age is the oldest pending message's."""
    from datetime import UTC, datetime, timedelta

    from ops_store_data import DAY, incoming, populate

    from middleware.ops.sampler import StoreSampler
    from middleware.store import Store

    store = Store.open(store_url)
    try:
        populate(store)  # history: not counted
        health = Health()
        sampler = StoreSampler(store, health, ["lis"], ["chem-1"])
        await sampler.sample_once()
        store.save_message(incoming(7, datetime.now(UTC), decision=("held", ("delta_exceeded",))))
        store.save_message(incoming(8, datetime.now(UTC), instrument="other-gateways-analyser"))
        await sampler.sample_once()
        _, samples = _parse(generate_latest(health.registry).decode())
        held = {"connection": "chem-1", "decision": "held"}
        assert _value(samples, "labgate_decisions_total", **held, reason="delta_exceeded") == 1
        assert (
            "labgate_decisions_total",
            frozenset({**held, "reason": "critical_value"}.items()),
        ) not in samples
        # Pending: messages 2 and 3 of the history, 7 and 8 (outbox rows go to "lis").
        assert _value(samples, "labgate_outbox_depth", lis="lis") == 4
        age = _value(samples, "labgate_outbox_oldest_age_seconds", lis="lis")
        expected = (datetime.now(UTC) - (DAY + timedelta(hours=12))).total_seconds()
        assert abs(age - expected) < 60
        assert sampler.outbox_depth == 4
    finally:
        store.close()
