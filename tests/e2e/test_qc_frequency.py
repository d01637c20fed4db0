"""QC due by count and QC on each new reagent lot, end to end (real daemon in process, real
SQLite, real sockets, the simulated analyser, glucose meter and LIS), and a blocked
point-of-care device seen locked on `/api/health` and on the dashboard:

- an ASTM analyser allowed two patient results per QC run: the alarm `qc_overdue` starts once
  they are used up, `auto_block` blocks it, the next result is quarantined;
- a glucose meter that changes its box of strips: the first result on the new strip lot is held
  (`qc_new_lot`), the alarm blocks the meter, which is locked; a person unblocks it, QC on the
  new strips is accepted, and results are auto-validated again;
- `labgate device block` on a meter: `lock` goes `locked` once the meter acknowledged it, with
  its status and operator list; `unlock_pending` while it is away, `lock_pending` likewise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e.test_astm_transports import Daemon, daemon
from e2e.test_validation_governance import (
    chem_instrument,
    glucose_message,
    qc_message,
    send_messages,
)
from web.console_support import signed_in

from middleware.cli import main as labgate
from simulators.poct1a import MeasurementRefused, Poct1aDeviceSimulator

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "rules" / "example.yaml"
WHO = ["--author", "Dr Durand"]
ALARMS = "alarms:\n  check_seconds: 0.1\n  auto_block: {{{device}: [{kinds}]}}\n"


def _meter(qc_plan: Path | None = None, auto_block: str = "") -> str:
    """The glucose meter glu-1 (POCT1-A) with the example rule set, a QC plan, and alarms."""
    qc = f"  qc: {qc_plan}\n" if qc_plan else ""
    alarms = ALARMS.format(device="glu-1", kinds=auto_block) if auto_block else ""
    return (
        "  - name: glu-1\n    protocol: poct1a\n    location: Urgences\n"
        "    transport: {type: tcp-server, port: 0}\n"
        "    operators: [{id: OP1, name: Alice Martin}, {id: OP2, name: Bruno Petit}]\n"
        "    test_codes: {14743-9: GLU}\n"
        "    timeouts: {hello: 5, reply: 5}\n"
        f"validation:\n  rules: {RULES}\n  reload_seconds: 0.1\n{qc}{alarms}"
    )


def _cli(tmp_path: Path) -> list[str]:
    """`--config` for the commands people run beside the daemon, and the author."""
    config = tmp_path / "cli.yaml"
    config.write_text(
        f"store:\n  url: sqlite:///{tmp_path / 'labgate.db'}\nlis:\n  port: 1\ninstruments: []\n",
        encoding="utf-8",
    )
    return ["--config", str(config), *WHO]


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


async def _health(running: Daemon, name: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5) as client:
        shown = (await client.get(f"{running.api}/api/health")).json()
    return next(c for c in shown["connections"] if c["name"] == name)  # type: ignore[no-any-return]


async def _shown(
    running: Daemon, condition: Callable[[dict[str, Any]], bool], timeout: float = 10.0
) -> dict[str, Any]:
    """The meter's device state once `/api/health` shows what `condition` expects."""
    async with asyncio.timeout(timeout):
        while True:
            health = await _health(running, "glu-1")
            if condition(health["device"]):
                return health
            await asyncio.sleep(0.05)


async def _lock_shown(running: Daemon, lock: str) -> dict[str, Any]:
    return await _shown(running, lambda device: device["lock"] == lock)


def _status_is(condition: str) -> Callable[[dict[str, Any]], bool]:
    return lambda device: (device["status"] or {}).get("condition") == condition


def _decided(running: Daemon) -> dict[str, tuple[str, str]]:
    rows = running.rows("select specimen_id, decision, reasons from results where not is_qc")
    return {row.specimen_id: (row.decision, row.reasons) for row in rows}


async def test_qc_overdue_by_count_blocks_the_analyser_and_quarantines_what_follows(
    tmp_path: Path,
) -> None:
    """Two runs of the daemon on one store: the count started in the first goes on in the
    second (rebuilt from the store at start-up)."""
    plan = tmp_path / "qc.yaml"
    plan.write_text(
        "targets:\n  - {instrument: chem-1, test: GLU, lot: L1, level: '1', mean: 5.5, sd: 0.2}\n"
        "intervals:\n  - {instrument: chem-1, test: GLU, results: 2}\n",
        encoding="utf-8",
    )
    t0 = datetime.now().replace(microsecond=0) - timedelta(hours=1)
    # Without any QC yet, QC is overdue: the first run, without auto_block, gets one in.
    async with daemon(tmp_path, chem_instrument(tmp_path, validation=f"  qc: {plan}\n")) as first:
        await send_messages(
            first.gateway.addresses["chem-1"][1],
            qc_message("5.5", t0),  # accepted: two patient results may follow
            glucose_message("N-1", "PAT-1", "5.2", t0 + timedelta(minutes=1)),
        )
        await first.lis.wait_for(1)
        await _until(  # recorded as delivered: the second run does not send it again
            lambda: [r.state for r in first.rows("select state from outbox")] == ["delivered"]
        )
    validation = f"  qc: {plan}\n" + ALARMS.format(device="chem-1", kinds="qc_overdue")
    async with daemon(tmp_path, chem_instrument(tmp_path, validation=validation)) as running:
        gateway = running.gateway
        port = gateway.addresses["chem-1"][1]
        await asyncio.sleep(0.5)  # one used up, one left: no alarm, no block
        assert "chem-1" not in gateway.validation.pipeline.blocked_devices
        await send_messages(port, glucose_message("N-2", "PAT-2", "5.2", t0 + timedelta(minutes=2)))
        await _until(lambda: "chem-1" in gateway.validation.pipeline.blocked_devices)
        await send_messages(port, glucose_message("N-3", "PAT-3", "5.2", t0 + timedelta(minutes=3)))
        received = await running.lis.wait_for(1)
        await asyncio.sleep(0.5)  # the quarantined one must not follow
        assert len(running.lis.delivered) == 1
        alarms = await gateway.store.read(gateway.store.alarms, True, 50)
        audit = await gateway.store.read(gateway.store.audit_trail)
    assert _decided(running) == {
        "N-1": ("autovalidated", "[]"),
        "N-2": ("autovalidated", "[]"),
        "N-3": ("quarantined", '["device_blocked", "qc_overdue"]'),
    }
    sent = [o.specimen_id for m in received for o in m.parsed.observations]  # type: ignore[union-attr]
    assert sent == ["N-2"]
    assert [row.state for row in running.rows("select state from outbox order by id")] == [
        "delivered",
        "delivered",
        "quarantined",
    ]
    assert ("qc_overdue", "chem-1:GLU") in {(a["kind"], a["subject"]) for a in alarms}
    blocked = next(row for row in audit if row["action"] == "device_blocked")
    assert blocked["actor"] == "labgate" and "qc_overdue" in blocked["detail"]["reason"]


async def test_a_new_strip_lot_holds_blocks_and_qc_on_it_lets_results_flow_after_unblock(
    tmp_path: Path,
) -> None:
    plan = tmp_path / "qc.yaml"
    plan.write_text(
        "targets:\n  - {instrument: glu-1, test: GLU, lot: GC-1, level: '1', mean: 5.5, sd: 0.2}\n"
        "intervals:\n  - {instrument: glu-1, test: GLU, new_lot_qc: true}\n",
        encoding="utf-8",
    )
    cli = _cli(tmp_path)
    async with daemon(tmp_path, _meter(plan, auto_block="qc_new_lot")) as running:
        gateway = running.gateway
        port = gateway.addresses["glu-1"][1]
        device = Poct1aDeviceSimulator(
            "127.0.0.1", port, reconnect_delay=0.1, reagent_lot="STRIP-A"
        )
        try:
            await device.connect()
            await device.wait_until(lambda: device.continuous and device.operators is not None)
            qc_a = device.measure("5.5", operator="OP2", qc_level="1", qc_lot="GC-1")
            first = device.measure("5.2", operator="OP1", patient_id="PAT-1", specimen_id="P-1")
            assert (await qc_a.wait()).accepted and (await first.wait()).accepted
            await running.lis.wait_for(1)

            device.reagent_lot = "STRIP-B"  # a new box of strips, no QC run on it yet
            second = device.measure("5.4", operator="OP1", patient_id="PAT-2", specimen_id="P-2")
            assert (await second.wait()).accepted  # stored, held
            await device.wait_until(lambda: device.locked, timeout=10)  # blocked, then locked
            await _lock_shown(running, "locked")
            await _shown(running, _status_is("L"))  # the meter says so too
            with pytest.raises(MeasurementRefused, match="locked"):
                device.measure("5.0", operator="OP1", patient_id="PAT-9")

            # A person unblocks it; QC on the new strips is accepted; results flow again.
            assert labgate(["device", "unblock", "glu-1", *cli, "--reason", "QC on strips"]) == 0
            await device.wait_until(lambda: not device.locked, timeout=10)
            qc_b = device.measure("5.6", operator="OP2", qc_level="1", qc_lot="GC-1")
            assert (await qc_b.wait()).accepted
            monitor = gateway.validation.qc
            assert monitor is not None
            await _until(lambda: monitor.new_lots() == [])
            third = device.measure("5.3", operator="OP1", patient_id="PAT-3", specimen_id="P-3")
            assert (await third.wait()).accepted
            received = await running.lis.wait_for(3)
            async with asyncio.timeout(5):  # the episode ends at the alarm center's next look
                while any(
                    a["kind"] == "qc_new_lot"
                    for a in await gateway.store.read(gateway.store.alarms, True, 50)
                ):
                    await asyncio.sleep(0.05)
            everything = await gateway.store.read(gateway.store.alarms, False, 50)
            audit = await gateway.store.read(gateway.store.audit_trail)
        finally:
            await device.close()
    assert _decided(running) == {
        "P-1": ("autovalidated", "[]"),
        "P-2": ("held", '["qc_new_lot"]'),
        "P-3": ("autovalidated", "[]"),
    }
    by_specimen = {o.specimen_id: o for m in received for o in m.parsed.observations}  # type: ignore[union-attr]
    assert any("held" in n and "qc_new_lot" in n for n in by_specimen["P-2"].notes)
    assert any("validé électroniquement" in n for n in by_specimen["P-3"].notes)
    (episode,) = [a for a in everything if a["kind"] == "qc_new_lot"]  # one, however long
    assert episode["subject"] == "glu-1:GLU:STRIP-B" and episode["cleared_at"]
    oldest_first = reversed(audit)
    actions = [(r["action"], r["actor"]) for r in oldest_first if r["subject"] == "device:glu-1"]
    assert actions == [("device_blocked", "labgate"), ("device_unblocked", "Dr Durand")]
    lots = running.rows("select reagent_lot, is_qc, test from reagent_lots order by id")
    assert [(r.reagent_lot, bool(r.is_qc), r.test) for r in lots] == [
        ("STRIP-A", True, "GLU"),
        ("STRIP-B", False, "GLU"),
        ("STRIP-B", True, "GLU"),
    ]


async def test_a_blocked_meter_shows_locked_on_the_health_view_and_the_dashboard(
    tmp_path: Path,
) -> None:
    cli = _cli(tmp_path)
    async with daemon(tmp_path, _meter()) as running:
        before = await _health(running, "glu-1")
        assert before["device"] == {
            "device_id": "",
            "lock": "unlocked",
            "lock_changed_at": None,
            "status": None,
            "operators": None,
        }
        device = Poct1aDeviceSimulator(
            "127.0.0.1", running.gateway.addresses["glu-1"][1], reconnect_delay=0.1
        )
        try:
            await device.connect()
            await device.wait_until(lambda: device.continuous and device.operators is not None)
            ready = await _shown(  # the device's ACK of the list's EOT
                running,
                lambda d: d["operators"] is not None and d["operators"]["state"] == "accepted",
            )

            assert labgate(["device", "block", "glu-1", *cli, "--reason", "QC drift"]) == 0
            locked = await _lock_shown(running, "locked")
            await _until(lambda: device.locked)
            async with signed_in(running.gateway) as client:
                fragment = (await client.get("/fragments/dashboard")).text
                dashboard = (await client.get("/api/dashboard")).json()
            await _shown(running, _status_is("L"))  # the meter reports it after the lock

            await device.close()  # the meter goes round the ward, still locked
            connections = running.gateway.health.connections
            await _until(lambda: connections["glu-1"].state == "listening")
            assert labgate(["device", "unblock", "glu-1", *cli, "--reason", "checked"]) == 0
            away = await _lock_shown(running, "unlock_pending")
            await device.connect()
            await _lock_shown(running, "unlocked")
            assert not device.locked

            await device.close()
            assert labgate(["device", "block", "glu-1", *cli, "--reason", "again"]) == 0
            pending = await _lock_shown(running, "lock_pending")  # locked when it comes back
        finally:
            await device.close()
    assert ready["device"]["device_id"] == "SIM^GLUCO-SIM^0001"
    assert ready["device"]["status"]["condition"] == "R"
    operators = ready["device"]["operators"]
    assert (operators["count"], operators["state"]) == (2, "accepted")
    assert len(operators["version"]) == 12
    assert locked["device"]["lock_changed_at"] is not None
    assert 'data-lock="locked"' in fragment and "device locked" in fragment
    shown = next(c for c in dashboard["connections"] if c["name"] == "glu-1")
    assert shown["blocked"] is True and shown["device"]["lock"] == "locked"
    assert away["state"] == "listening" and away["device"]["lock"] == "unlock_pending"
    assert pending["device"]["operators"]["version"] == operators["version"]  # the same list
