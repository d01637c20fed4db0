"""The walking skeleton, end to end on real loopback sockets and a real SQLite file:
simulated ASTM analyser -> labgate -> simulated LIS (HL7 over MLLP) -> ACK^AA -> delivered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from conftest import gateway_config

from middleware.config import load_settings_text
from middleware.gateway import Gateway
from simulators.analyser import AnalyserSimulator, SimulatedResult, build_result_message
from simulators.lis import LisSimulator

RESULTS = [
    SimulatedResult("GLU", "5.4", "mmol/L", "3.9 to 6.1", "N"),
    SimulatedResult("CREA", "132", "umol/L", "45 to 104", "H"),
    SimulatedResult("K", "< 1.20", "mmol/L", "3.5 to 5.1", "L"),
]


@dataclass
class Running:
    gateway: Gateway
    lis: LisSimulator
    db: Path
    analyser_port: int


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    lis = LisSimulator()
    lis_port = await lis.start()
    db = tmp_path / "labgate.db"
    settings = load_settings_text(gateway_config(db, lis_port=lis_port))
    gateway = Gateway(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    await asyncio.wait_for(gateway.ready.wait(), 10)
    try:
        yield Running(gateway, lis, db, gateway.addresses["chem-1"][1])
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await lis.close()


def _rows(db: Path, query: str) -> list[sa.Row]:
    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as connection:
            return list(connection.execute(sa.text(query)))
    finally:
        engine.dispose()


async def test_result_travels_from_analyser_to_lis_and_is_marked_delivered(
    running: Running,
) -> None:
    message = build_result_message("SPEC0001", "PAT00042", RESULTS, patient_name=("MÜLLER", "ANNE"))
    assert await _send(running, message) is True

    [received] = await running.lis.wait_for(1)
    assert received.parsed is not None
    observations = received.parsed.observations
    assert [(o.code, o.value, o.units, o.reference_range) for o in observations] == [
        (r.code, r.value, r.units, r.reference_range) for r in RESULTS
    ]
    assert {o.specimen_id for o in observations} == {"SPEC0001"}
    assert {o.patient_id for o in observations} == {"PAT00042"}
    assert [o.abnormal_flags for o in observations] == [("N",), ("H",), ("L",)]
    assert all(o.producer == "chem-1" for o in observations)
    # Held, not validated: no rule set exists yet, and the LIS must be told so.
    assert all(any("held (no_rule)" in note for note in o.notes) for o in observations)

    await _until(
        lambda: (
            _rows(running.db, "select count(*) from results where delivered_at is not null")[0][0]
            == 3
        )
    )
    [message_row] = _rows(running.db, "select message_id, status, raw from messages")
    assert message_row.status == "stored"
    assert (
        b"\x02" in message_row.raw and b"R|2|^^^CREA|132|" in message_row.raw
    )  # the analyser's own bytes
    [outbox] = _rows(running.db, "select state, control_id, attempts, message_id from outbox")
    assert (outbox.state, outbox.attempts, outbox.message_id) == (
        "delivered",
        1,
        message_row.message_id,
    )
    assert received.parsed.control_id == outbox.control_id
    [transmission] = _rows(
        running.db, "select ack_code, ack_control_id, raw_out, raw_in from transmissions"
    )
    assert transmission.ack_code == "AA"
    assert transmission.raw_out == received.raw
    assert (
        transmission.raw_in is not None
        and b"MSA|AA|" + outbox.control_id.encode() in transmission.raw_in
    )

    api = "http://{}:{}".format(*running.gateway.addresses["api"])
    async with httpx.AsyncClient() as client:
        health = (await client.get(f"{api}/api/health")).json()
        metrics = (await client.get(f"{api}/metrics")).text
    chem = next(c for c in health["connections"] if c["name"] == "chem-1")
    assert (chem["protocol"], chem["transport"]) == ("astm", "tcp-server")
    assert (chem["received"], chem["stored"], chem["delivered"], chem["errors"]) == (1, 3, 3, 0)
    lis = next(c for c in health["connections"] if c["name"] == "lis")
    assert lis["state"] == "connected" and lis["delivered"] == 3
    assert health["outbox_depth"] == 0
    assert 'labgate_results_delivered_total{connection="chem-1"} 3.0' in metrics


async def test_corrupt_frame_is_naked_then_retransmission_is_stored_once(running: Running) -> None:
    message = build_result_message("SPEC0002", "PAT1", RESULTS[:1])
    assert await _send(running, message, corrupt_frames=1) is True
    await running.lis.wait_for(1)
    assert _rows(running.db, "select count(*) from results")[0][0] == 1
    [trace] = _rows(running.db, "select kind, detail from trace")
    assert trace.kind == "frame_rejected" and "checksum" in trace.detail.lower()
    chem = running.gateway.health.connections["chem-1"]
    assert (chem.received, chem.errors) == (1, 1)


async def test_long_message_split_in_240_char_frames_arrives_whole(running: Running) -> None:
    many = [SimulatedResult(f"T{i:03d}", f"{i}.5", "g/L", "1 to 9") for i in range(40)]
    assert await _send(running, build_result_message("SPEC0003", "PAT3", many)) is True
    [received] = await running.lis.wait_for(1)
    assert received.parsed is not None
    assert [o.code for o in received.parsed.observations] == [r.code for r in many]
    [raw] = _rows(running.db, "select raw from messages")
    assert raw.raw.count(b"\x17") >= 8  # ETB: the text went in several frames


async def test_undecodable_message_is_kept_with_its_reason_and_not_forwarded(
    running: Running,
) -> None:
    # Valid frames, but the E1394 content has a result before any order.
    assert await _send(running, b"H|\\^&|||X\rR|1|^^^GLU|5|mmol/L\rL|1|N\r") is True
    await _until(lambda: bool(_rows(running.db, "select 1 from messages")))
    [row] = _rows(running.db, "select status, error, raw from messages")
    assert row.status == "refused" and "before any O record" in row.error
    assert b"R|1|^^^GLU|5" in row.raw
    assert _rows(running.db, "select count(*) from outbox")[0][0] == 0
    assert running.lis.received == []


async def test_lis_rejection_stops_the_message_and_keeps_it(running: Running) -> None:
    running.lis.ack_code = "AR"
    assert await _send(running, build_result_message("SPEC0004", "PAT4", RESULTS[:1])) is True
    await _until(lambda: _rows(running.db, "select state from outbox")[0][0] == "rejected")
    await asyncio.sleep(0.5)
    assert len(running.lis.received) == 1  # not retried blindly
    assert _rows(running.db, "select count(*) from results where delivered_at is null")[0][0] == 1


async def _send(running: Running, message: bytes, corrupt_frames: int = 0) -> bool:
    """One analyser connection sending one message; True when its final frame was ACKed."""
    analyser = AnalyserSimulator("127.0.0.1", running.analyser_port)
    analyser.corrupt_frames = corrupt_frames
    await analyser.connect()
    try:
        return await analyser.send(message)
    finally:
        await analyser.close()


async def _until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while True:
            try:
                if condition():
                    return
            except (IndexError, sa.exc.OperationalError):
                pass
            await asyncio.sleep(0.05)


async def test_frame_is_naked_while_the_store_cannot_commit_and_stored_once_after(
    running: Running,
) -> None:
    """Backpressure: a real SQLite lock held by another process-like connection makes the commit
    fail; the analyser must get a NAK (not an ACK) and its retransmission is stored exactly once."""
    import sqlite3

    blocker = sqlite3.connect(running.db, timeout=0, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    analyser = AnalyserSimulator("127.0.0.1", running.analyser_port)
    await analyser.connect()
    try:
        sending = asyncio.create_task(
            analyser.send(build_result_message("SPEC-LOCK", "P", RESULTS))
        )
        await _until(lambda: running.gateway.health.connections["chem-1"].errors >= 1, timeout=15)
        assert not sending.done()  # no ACK while nothing is stored
        blocker.execute("ROLLBACK")
        assert await asyncio.wait_for(sending, 30) is True
    finally:
        blocker.close()
        await analyser.close()
    await running.lis.wait_for(1)
    assert _rows(running.db, "select count(*) from results")[0][0] == 3
    assert _rows(running.db, "select count(*) from messages")[0][0] == 1


async def test_garbage_on_the_analyser_port_is_survived_and_later_results_still_flow(
    running: Running,
) -> None:
    """Noise, a half frame and a bare EOT (what a wrong cable or a foreign protocol sends) must
    neither crash the daemon nor leave anything stored; the next real message goes through."""
    import random

    rng = random.Random(1381)
    noise = bytes(rng.randrange(256) for _ in range(5000))
    _, writer = await asyncio.open_connection("127.0.0.1", running.analyser_port)
    writer.write(noise + b"\x05\x021H|\\^&|||half a fr" + b"\x04" + noise)
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.close()
    await writer.wait_closed()

    assert await _send(running, build_result_message("SPEC-AFTER", "P", RESULTS[:1])) is True
    [received] = await running.lis.wait_for(1)
    assert received.parsed is not None
    assert [o.specimen_id for o in received.parsed.observations] == ["SPEC-AFTER"]
    assert _rows(running.db, "select count(*) from messages where status = 'stored'")[0][0] == 1
    assert running.gateway.state == "running"


async def test_one_record_per_frame_analyser_is_assembled_until_its_l_record(
    running: Running,
) -> None:
    """Pentra-style: every record its own E1381 message (ETX frame). Each is acknowledged only
    once in the trace; the results are stored once, when the L record completes the message."""
    records = build_result_message("SPEC-PENTRA", "P", RESULTS).split(b"\r")[:-1]
    analyser = AnalyserSimulator("127.0.0.1", running.analyser_port)
    await analyser.connect()
    try:
        sends = [analyser.send(record + b"\r") for record in records]
        assert await asyncio.gather(*sends) == [True] * len(records)
    finally:
        await analyser.close()
    [received] = await running.lis.wait_for(1)
    assert received.parsed is not None and len(received.parsed.observations) == 3
    partials = _rows(running.db, "select data from trace where kind = 'partial_message'")
    assert len(partials) == len(records) - 1
    [message] = _rows(running.db, "select raw from messages")
    assert message.raw.count(b"\x03") == len(records)  # every ETX frame, byte for byte


async def test_records_acknowledged_without_an_l_record_are_kept_when_the_analyser_leaves(
    running: Running,
) -> None:
    records = build_result_message("SPEC-NOL", "P", RESULTS[:2]).split(b"\r")[:-2]  # no L
    assert await _send(running, b"\r".join(records) + b"\r") is True
    [received] = await running.lis.wait_for(1)
    assert received.parsed is not None
    assert [o.specimen_id for o in received.parsed.observations] == ["SPEC-NOL", "SPEC-NOL"]


async def test_daemon_keeps_running_when_a_side_task_ends_normally(tmp_path: Path) -> None:
    """A demo whose analysers have sent their count ends; the daemon must not stop with it."""
    lis = LisSimulator()
    settings = load_settings_text(gateway_config(tmp_path / "x.db", lis_port=await lis.start()))
    gateway = Gateway(settings)
    stop = asyncio.Event()

    async def finishes_at_once(_: Gateway) -> None:
        return None

    task = asyncio.create_task(gateway.run(stop, finishes_at_once))
    await asyncio.wait_for(gateway.ready.wait(), 10)
    await asyncio.sleep(0.3)
    assert not task.done() and gateway.state == "running"
    stop.set()
    await asyncio.wait_for(task, 10)
    assert gateway.state == "stopped"
    await lis.close()
