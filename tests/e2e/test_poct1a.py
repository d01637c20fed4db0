"""POCT1-A point-of-care devices end to end: the simulated glucose meter → the real daemon (in
process, real SQLite, real sockets) → the simulated LIS.

- results and QC are stored with their origin (poc) and location, and reach the LIS with the
  POC origin note and the operator (GBUI XIII-2 3 and 6); QC stays in the lab;
- `labgate device block` locks the device (it refuses to test), results measured before the
  block stay quarantined; `unblock` unlocks it and the flow resumes (GBUI XIII-2 4);
- a result by an operator not on the list is refused, kept with the reason, and the device told;
- after link loss the device reconnects and what it measured meanwhile arrives.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa
from e2e.test_astm_transports import Daemon, daemon

from middleware.cli import main as labgate
from simulators.poct1a import MeasurementRefused, Poct1aDeviceSimulator

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "rules" / "example.yaml"
WHO = ["--author", "Dr Durand"]

INSTRUMENT = (
    "  - name: glu-1\n    protocol: poct1a\n    location: Urgences\n"
    "    transport: {type: tcp-server, port: 0}\n"
    "    operators: [{id: OP1, name: Alice Martin}, {id: OP2, name: Bruno Petit}]\n"
    "    test_codes: {14743-9: GLU}\n"
    "    timeouts: {hello: 5, reply: 5}\n"
    f"validation:\n  rules: {RULES}\n  reload_seconds: 0.1\n"
)


def _device(running: Daemon, **options: object) -> Poct1aDeviceSimulator:
    port = running.gateway.addresses["glu-1"][1]
    return Poct1aDeviceSimulator("127.0.0.1", port, reconnect_delay=0.1, **options)  # type: ignore[arg-type]


def _cli_config(tmp_path: Path) -> str:
    """A configuration naming the daemon's store, for the commands people run beside it."""
    config = tmp_path / "cli.yaml"
    config.write_text(
        f"store:\n  url: sqlite:///{tmp_path / 'labgate.db'}\nlis:\n  port: 1\ninstruments: []\n",
        encoding="utf-8",
    )
    return str(config)


async def _ready(device: Poct1aDeviceSimulator) -> None:
    """Connected, operator list received, continuous mode on."""
    await device.connect()
    await device.wait_until(lambda: device.continuous and device.operators is not None)


def _trace(running: Daemon) -> list[tuple[str, str, str]]:
    rows = running.rows("select kind, direction, detail from trace order by id")
    return [(row.kind, row.direction, row.detail) for row in rows]


async def test_results_and_qc_carry_their_origin_to_the_lis(tmp_path: Path) -> None:
    async with daemon(tmp_path, INSTRUMENT) as running:
        device = _device(running)
        try:
            await _ready(device)
            assert sorted(device.operators or {}) == ["OP1", "OP2"]
            qc = device.measure("5.5", operator="OP2", qc_level="1", qc_lot="L1")
            result = device.measure("5.2", operator="OP1", patient_id="PAT-1", specimen_id="P-1")
            assert (await qc.wait()).accepted and (await result.wait()).accepted
            (received,) = await running.lis.wait_for(1)
        finally:
            await device.close()
        await asyncio.sleep(0.3)
        assert len(running.lis.delivered) == 1  # the QC stays in the lab
    (observation,) = received.parsed.observations  # type: ignore[union-attr]
    assert (observation.specimen_id, observation.code, observation.value) == ("P-1", "GLU", "5.2")
    assert "opérateur: OP1" in observation.notes
    assert any("validé électroniquement" in note for note in observation.notes)
    assert "origine: biologie délocalisée — glu-1 (Urgences)" in observation.notes
    stored = running.rows(
        "select r.specimen_id, r.is_qc, r.qc_level, r.qc_lot, r.lis_code, r.decision, "
        "s.origin, s.location, m.protocol from results r "
        "join specimens s on s.id = r.specimen_row_id "
        "join messages m on m.message_id = r.message_id order by r.id"
    )
    assert [tuple(row) for row in stored] == [
        ("GLUCO-SIM-000001", True, "1", "L1", "GLU", "", "poc", "Urgences", "poct1a"),
        ("P-1", False, "", "", "GLU", "autovalidated", "poc", "Urgences", "poct1a"),
    ]
    trace = _trace(running)
    assert ("poct1a_hello", "in", "SIM^GLUCO-SIM^0001") in trace
    assert ("poct1a_operators", "out", "2 operator(s)") in trace
    assert ("poct1a_directive", "out", "START_CONTINUOUS") in trace
    assert ("poct1a_answer", "in", "START_CONTINUOUS accepted") in trace


async def test_block_locks_the_device_and_unblock_resumes_the_flow(tmp_path: Path) -> None:
    config = _cli_config(tmp_path)
    async with daemon(tmp_path, INSTRUMENT) as running:
        device = _device(running)
        try:
            await _ready(device)
            first = device.measure("5.1", operator="OP1", patient_id="PAT-1")
            assert (await first.wait()).accepted
            await running.lis.wait_for(1)

            assert labgate(["device", "block", "glu-1", "--config", config, *WHO,
                            "--reason", "QC drift on the ward"]) == 0  # fmt: skip
            await device.wait_until(lambda: device.locked, timeout=5)
            with pytest.raises(MeasurementRefused, match="locked"):
                device.measure("5.3", operator="OP1", patient_id="PAT-2")

            assert labgate(["device", "unblock", "glu-1", "--config", config, *WHO,
                            "--reason", "QC back in range"]) == 0  # fmt: skip
            await device.wait_until(lambda: not device.locked, timeout=5)
            again = device.measure("5.4", operator="OP1", patient_id="PAT-3")
            assert (await again.wait()).accepted
            received = await running.lis.wait_for(2)
        finally:
            await device.close()
    assert device.directives == ["START_CONTINUOUS", "LOCK", "UNLOCK"]
    values = [o.value for m in received for o in m.parsed.observations]  # type: ignore[union-attr]
    assert values == ["5.1", "5.4"]
    trace = _trace(running)
    lock_out = trace.index(("poct1a_directive", "out", "LOCK"))
    assert trace[lock_out + 1] == ("poct1a_answer", "in", "LOCK accepted")
    assert ("poct1a_status", "in", "condition=L new_observations=0") in trace[lock_out:]
    unlock_out = trace.index(("poct1a_directive", "out", "UNLOCK"))
    assert trace[unlock_out + 1] == ("poct1a_answer", "in", "UNLOCK accepted")
    assert ("poct1a_status", "in", "condition=R new_observations=0") in trace[unlock_out:]
    actions = [row.action for row in running.rows("select action from audit order by id")]
    assert actions[-2:] == ["device_blocked", "device_unblocked"]


async def test_results_measured_before_a_block_stay_quarantined(tmp_path: Path) -> None:
    config = _cli_config(tmp_path)
    async with daemon(tmp_path, INSTRUMENT) as running:
        device = _device(running)
        try:
            await _ready(device)
            await device.close()  # the meter goes round the ward, out of reach
            before = device.measure("5.6", operator="OP1", patient_id="PAT-4", specimen_id="Q-1")
            assert labgate(["device", "block", "glu-1", "--config", config, *WHO,
                            "--reason", "suspect strips"]) == 0  # fmt: skip
            await asyncio.sleep(0.4)  # reload_seconds is 0.1
            seen = len(device.directives)
            await device.connect()  # locked first, then asked for what it holds
            assert (await before.wait()).accepted
            assert device.locked
            with pytest.raises(MeasurementRefused):
                device.measure("5.0", operator="OP1")
            await asyncio.sleep(0.5)
            assert running.lis.delivered == []  # never forwarded
        finally:
            await device.close()
    assert device.directives[seen] == "LOCK"  # before anything else on the new connection
    decided = running.rows(
        "select r.specimen_id, r.decision, r.reasons, o.state from results r "
        "join outbox o on o.message_id = r.message_id"
    )
    assert [tuple(row) for row in decided] == [
        ("Q-1", "quarantined", '["device_blocked"]', "quarantined")
    ]


async def test_an_operator_not_on_the_list_is_refused_and_kept(tmp_path: Path) -> None:
    async with daemon(tmp_path, INSTRUMENT) as running:
        device = _device(running)
        try:
            await _ready(device)
            with pytest.raises(MeasurementRefused, match="OP9"):
                device.measure("5.0", operator="OP9", patient_id="PAT-5")  # the meter checks
            device.enforce_operators = False  # one that does not: labgate refuses
            answer = await device.measure("5.0", operator="OP9", patient_id="PAT-5").wait()
            await asyncio.sleep(0.3)
        finally:
            await device.close()
        errors = running.gateway.health.connections["glu-1"].errors
    assert (answer.type, answer.error_code) == ("AE", "103")
    assert answer.note == "operator OP9 is not on the operator list"
    kept = running.rows("select status, error, protocol, raw from messages")
    assert [(row.status, row.error, row.protocol) for row in kept] == [
        ("refused", "operator OP9 is not on the operator list", "poct1a")
    ]
    assert b"OP9" in kept[0].raw  # the message as the device sent it
    assert running.rows("select id from results") == []
    assert running.lis.delivered == [] and errors >= 1


async def test_after_link_loss_the_device_reconnects_and_sends_what_it_measured(
    tmp_path: Path,
) -> None:
    async with daemon(tmp_path, INSTRUMENT) as running:
        device = _device(running)
        try:
            await _ready(device)
            assert (await device.measure("5.0", operator="OP1", patient_id="P1").wait()).accepted
            device.drop_link()  # the ward's Wi-Fi drops
            during = device.measure("5.7", operator="OP2", patient_id="P2")
            assert (await during.wait(timeout=10)).accepted
            received = await running.lis.wait_for(2)
            health = running.gateway.health.connections["glu-1"]
            state = health.state
        finally:
            await device.close()
    assert device.connections == 2 and state == "connected"
    values = [o.value for m in received for o in m.parsed.observations]  # type: ignore[union-attr]
    assert values == ["5.0", "5.7"]
    hellos = [row for row in _trace(running) if row[0] == "poct1a_hello"]
    assert len(hellos) == 2


async def test_a_result_the_store_could_not_commit_is_not_acknowledged_and_comes_again(
    tmp_path: Path,
) -> None:
    async with daemon(tmp_path, INSTRUMENT) as running:
        store = running.gateway.store
        group = store._group  # the group commit every session's save goes through
        real_commit = group._commit_batch
        failures = []

        def commit_once_failing(batch):  # type: ignore[no-untyped-def]
            if not failures:
                failures.append(batch[0].message_id)
                raise sa.exc.OperationalError("INSERT", {}, Exception("disk I/O error"))
            return real_commit(batch)

        group._commit_batch = commit_once_failing  # type: ignore[method-assign]
        device = _device(running)
        try:
            await _ready(device)
            measurement = device.measure("5.3", operator="OP1", patient_id="P1", specimen_id="F-1")
            answer = await measurement.wait(timeout=10)
            received = await running.lis.wait_for(1)
        finally:
            await device.close()
    assert answer.accepted and len(failures) == 1
    assert device.connections == 2  # labgate ended the conversation; the device came back
    assert [o.specimen_id for o in received[0].parsed.observations] == ["F-1"]  # type: ignore[union-attr]
    assert [row.specimen_id for row in running.rows("select specimen_id from results")] == ["F-1"]
    ends = [row for row in _trace(running) if row[0] == "poct1a_end"]
    assert ends == [("poct1a_end", "out", "ABN not stored, send again later")]
