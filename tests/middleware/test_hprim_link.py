"""The HPRIM LIS link: the message built from stored reports, the spool directory (atomic
writes, consumption modes, the unconsumed alarm) and TCP (bare and E1381), with a real SQLite
store, real files and real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from drivers.models import Patient, PreviousResult, Result, SpecimenReport
from middleware.config.settings import HprimLinkSettings, LisSettings
from middleware.health import Health
from middleware.lis.hprim_message import build_hprim_message
from middleware.lis.hprim_sender import HprimSender
from middleware.lis.transcoding import lis_test_code
from middleware.store import IncomingMessage, Store
from protocols import hprim
from simulators.hprim_lis import HprimSpoolLis, HprimTcpLis

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _result(code: str = "GLU", value: str = "5.4", **extra: Any) -> Result:
    fields: dict[str, Any] = {"instrument": "chem-1"} | extra
    return Result(
        "S1", code, value, numeric=Decimal(value) if value[0].isdigit() else None,
        units="mmol/L", reference_range="3.9-5.8", flags=("H",),
        sequence=1, measured_at=NOW, test_name="Glucose", **fields,
    )  # fmt: skip


def _report(*results: Result, **extras: str) -> SpecimenReport:
    return SpecimenReport(
        "S1", Patient("PAT-1", "DUPONT", "Marie", sex="F"), results, collected_at=NOW, extras=extras
    )


def _lis(**hprim_fields: Any) -> LisSettings:
    fields: dict[str, Any] = {"transport": "spool", "directory": "."} | hprim_fields
    return LisSettings.model_validate(
        {
            "kind": "hprim",
            "hprim": fields,
            "transcoding": {"GLU": "GLY", "chem-1:CREA": "CRE2"},
            "retry": {"initial": 0.05, "maximum": 0.2},
        }
    )


def _decode(data: bytes) -> hprim.Message:
    return hprim.decode_message(data)


def _records(message: hprim.Message, kind: str) -> list[hprim.Record]:
    return [r for r in message.records if r.type == kind]


# --- the message ------------------------------------------------------------------------------


def test_autovalidated_result_carries_the_biologist_the_rules_and_the_lis_code() -> None:
    report = _report(_result(), biologist="Dr Martin", ruleset="base v3", origin="lab")
    data = build_hprim_message(_lis(), "LG0123456789ABCDEF01", (report,), (("autovalidated", ()),))
    message = _decode(data)
    (obx,) = _records(message, "OBX")
    assert obx.component(4, 1) == "GLY"  # the LIS's code, from its transcoding table
    assert (obx.field(6), obx.field(7), obx.field(8), obx.field(9)) == (
        "5.4", "mmol/L", "3.9-5.8", "H",
    )  # fmt: skip
    assert obx.field(12) == "F" and obx.component(17, 2) == "Dr Martin"
    notes = [c.field(4) for c in _records(message, "C")]
    assert "validé électroniquement - biologiste responsable Dr Martin - règles base v3" in notes
    assert message.header.field(3) == "6789ABCDEF01"  # H-3: the control id's last 12
    data.decode("latin-1")  # no character outside ISO-8859-1 (no em dash)


def test_held_poc_corrected_result_says_so_and_gives_the_previous_value() -> None:
    previous = PreviousResult("4.1", "mmol/L", NOW - timedelta(days=2))
    odd = _result("CREA", "88", previous=previous, comments=("line one\nline two ≥",))
    report = _report(odd, origin="poc", location="Urgences", correction="1", biologist="Dr M")
    data = build_hprim_message(
        _lis(), "LG0123456789ABCDEF01", (report,), (("held", ("delta_exceeded",)),)
    )
    message = _decode(data)
    (obr,) = _records(message, "OBR")
    (obx,) = _records(message, "OBX")
    assert obx.component(4, 1) == "CRE2"  # INSTRUMENT:CODE entry
    assert obx.field(12) == "C" and obr.field(26) == "C"
    assert obx.field(17) == ""  # held: no validating biologist
    notes = [c.field(4) for c in _records(message, "C")]
    assert "labgate: held (delta_exceeded)" in notes
    assert any(n.startswith("valeur antérieure: 4.1 mmol/L") for n in notes)
    assert "origine: biologie délocalisée - chem-1 (Urgences)" in notes
    assert hprim.CORRECTION_NOTE in notes
    assert "line one line two ?" in notes  # CR/LF flattened, no latin-1 for ≥
    assert not any("validé" in n for n in notes)


def test_transcoding_prefers_the_instrument_entry_then_the_labgate_code() -> None:
    table = {"chem-1:GLU": "A", "LAB-GLU": "B", "GLU": "C"}
    assert lis_test_code(_result(), table) == "A"
    assert lis_test_code(_result(instrument="x", lis_code="LAB-GLU"), table) == "B"
    assert lis_test_code(_result(instrument="x"), table) == "C"
    assert lis_test_code(_result("K", "4", lis_code="LK"), table) == "LK"


def test_settings_refuse_an_incomplete_hprim_link() -> None:
    with pytest.raises(ValueError, match="hprim section"):
        LisSettings.model_validate({"kind": "hprim"})
    with pytest.raises(ValueError, match="moved_to"):
        HprimLinkSettings(transport="spool", directory=".", consumption="moved")
    with pytest.raises(ValueError, match="host and port"):
        HprimLinkSettings(transport="tcp")
    tcp = {"kind": "hprim", "hprim": {"transport": "tcp", "port": 1}}
    assert LisSettings.model_validate(tcp).port == 0


# --- the sender over a real store -------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(f"sqlite:///{tmp_path / 'labgate.db'}")
    yield store
    store.close()


def _queue(store: Store, count: int) -> list[int]:
    ids = []
    for number in range(count):
        result = Result(
            f"S{number}", "GLU", "5.4", numeric=Decimal("5.4"), units="mmol/L",
            instrument="chem-1", sequence=1, measured_at=NOW,
        )  # fmt: skip
        outbox_id = store.save_message(
            IncomingMessage(
                message_id=f"m{number}",
                connection="chem-1",
                protocol="astm",
                received_at=NOW,
                raw=b"raw",
                reports=(SpecimenReport(f"S{number}", Patient("PAT-1"), (result,)),),
                decisions=(("autovalidated", ()),),
                lis="lis",
                ruleset="base v1",
                biologist="Dr Martin",
            )
        )
        assert outbox_id is not None
        ids.append(outbox_id)
    return ids


def _outbox(store: Store) -> list[tuple[Any, ...]]:
    with store.engine.connect() as connection:
        return [
            tuple(row)
            for row in connection.execute(
                sa.text("select control_id, state, attempts from outbox order by id")
            )
        ]


def _attempts(store: Store) -> list[tuple[Any, ...]]:
    with store.engine.connect() as connection:
        return [
            tuple(row)
            for row in connection.execute(
                sa.text("select ack_code, error, raw_in from transmissions order by id")
            )
        ]


@contextlib.asynccontextmanager
async def _running(sender: HprimSender) -> AsyncIterator[HprimSender]:
    task = asyncio.create_task(sender.run())
    try:
        yield sender
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _until(condition: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def _visible(spool: Path) -> list[str]:
    return sorted(p.name for p in spool.iterdir())


@pytest.mark.parametrize("consumption", ["deleted", "moved", "answered"])
async def test_each_consumption_mode_marks_the_file_delivered(
    tmp_path: Path, store: Store, consumption: str
) -> None:
    spool, moved = tmp_path / "spool", tmp_path / "done"
    spool.mkdir()
    moved.mkdir()
    settings = _lis(
        directory=str(spool), consumption=consumption, moved_to=str(moved), poll_seconds=0.02,
        ok_file=True,
    )  # fmt: skip
    _queue(store, 2)
    lis = HprimSpoolLis(spool, consumption=consumption, moved_to=moved, ok_file=True)  # type: ignore[arg-type]
    await lis.start()
    try:
        async with _running(HprimSender(settings, store, Health())):
            received = await lis.wait_for(2)
            await _until(lambda: [s for _, s, _ in _outbox(store)] == ["delivered"] * 2)
    finally:
        await lis.close()
    control_ids = [c for c, _, _ in _outbox(store)]
    assert [r.source for r in received] == [f"{c}.HPR" for c in control_ids]  # in order
    assert received[0].observations()[0].component(4, 1) == "GLY"
    codes = _attempts(store)
    assert [code for code, _, _ in codes] == ["AA", "AA"]
    if consumption == "answered":
        assert codes[0][2] == f"OK {control_ids[0]}.HPR\r".encode()
    if consumption == "moved":
        assert sorted(p.name for p in moved.iterdir()) == sorted(f"{c}.HPR" for c in control_ids)
    await _until(lambda: _visible(spool) == [])  # answers and .OK files cleared away


async def test_a_crash_in_the_middle_of_a_write_leaves_no_file_and_the_retry_uses_its_name(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    settings = _lis(directory=str(spool), poll_seconds=0.02)
    _queue(store, 1)
    real_write, writes = os.write, []

    class Crash(BaseException):
        """Stands for the process dying: nothing in labgate catches it."""

    def dying_write(fd: int, data: Any) -> int:
        writes.append(len(data))
        real_write(fd, bytes(data)[:10])  # a part of the file reaches the disk...
        raise Crash  # ...and the process dies

    monkeypatch.setattr(os, "write", dying_write)
    with pytest.raises(Crash):
        await HprimSender(settings, store, Health()).run()
    assert writes
    [(control_id, state, attempts)] = _outbox(store)
    assert (state, attempts) == ("pending", 0)
    assert _visible(spool) == [f"{control_id}.tmp"]  # the LIS sees no .HPR
    monkeypatch.setattr(os, "write", real_write)

    # Restarted: the same name is written whole, and nothing else.
    sender = HprimSender(settings, store, Health())
    async with _running(sender):
        await _until(lambda: (spool / f"{control_id}.HPR").exists())
        assert _visible(spool) == [f"{control_id}.HPR"]
        data = (spool / f"{control_id}.HPR").read_bytes()
        assert _decode(data).records[-1].type == "L"
        (spool / f"{control_id}.HPR").unlink()  # the LIS takes it
        await _until(lambda: _outbox(store)[0][1] == "delivered")


async def test_a_failed_write_is_retried_with_the_same_name_and_stops_what_follows(
    tmp_path: Path, store: Store
) -> None:
    spool = tmp_path / "missing"
    settings = _lis(directory=str(spool), poll_seconds=0.02)
    _queue(store, 2)
    async with _running(HprimSender(settings, store, Health())):
        await _until(lambda: len(_attempts(store)) >= 1)
        assert "spool write failed" in _attempts(store)[0][1]
        spool.mkdir()
        first = _outbox(store)[0][0]
        await _until(lambda: (spool / f"{first}.HPR").exists())
        assert _visible(spool) == [f"{first}.HPR"]  # window 1: the second waits its turn
        (spool / f"{first}.HPR").unlink()
        second = _outbox(store)[1][0]
        await _until(lambda: (spool / f"{second}.HPR").exists())
        (spool / f"{second}.HPR").unlink()
        await _until(lambda: [s for _, s, _ in _outbox(store)] == ["delivered"] * 2)


async def test_a_file_the_lis_never_takes_stays_pending_and_is_listed_unconsumed(
    tmp_path: Path, store: Store
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    settings = _lis(directory=str(spool), poll_seconds=0.02, unconsumed_alarm_minutes=0.002)
    _queue(store, 1)
    lis = HprimSpoolLis(spool)
    lis.consuming = False
    await lis.start()
    sender = HprimSender(settings, store, Health())
    try:
        async with _running(sender):
            await _until(lambda: bool(sender.unconsumed), timeout=5)
            [(control_id, state, _)] = _outbox(store)
            assert state == "pending" and list(sender.unconsumed) == [control_id]
            assert lis.seen == [f"{control_id}.HPR"]
            lis.consuming = True  # the LIS wakes up: the alarm clears
            await _until(lambda: not sender.unconsumed and _outbox(store)[0][1] == "delivered")
    finally:
        await lis.close()


@pytest.mark.parametrize("framing", ["none", "e1381"])
async def test_tcp_delivers_and_retries_after_the_lis_refuses_or_is_down(
    tmp_path: Path, store: Store, framing: str
) -> None:
    lis = HprimTcpLis(framing=framing)  # type: ignore[arg-type]
    port = await lis.start()
    await lis.close()  # down at first: the first attempt fails
    settings = _lis(transport="tcp", port=port, framing=framing, ack_timeout=5)
    _queue(store, 2)
    async with _running(HprimSender(settings, store, Health())):
        await _until(lambda: len(_attempts(store)) >= 1)
        assert "link to LIS failed" in _attempts(store)[0][1]
        lis = HprimTcpLis(port=port, framing=framing)  # type: ignore[arg-type]
        await lis.start()
        try:
            received = await lis.wait_for(2)
            await _until(lambda: [s for _, s, _ in _outbox(store)] == ["delivered"] * 2)
        finally:
            await lis.close()
    assert [r.message.records[-1].type for r in received if r.message] == ["L", "L"]
    assert [r.observations()[0].component(4, 1) for r in received] == ["GLY", "GLY"]
    assert _attempts(store)[-1][:2] == ("AA", None)


async def test_tcp_nak_rejects_the_message_for_a_person(tmp_path: Path, store: Store) -> None:
    lis = HprimTcpLis(refuse=True)
    port = await lis.start()
    settings = _lis(transport="tcp", port=port, ack_timeout=5)
    _queue(store, 1)
    try:
        async with _running(HprimSender(settings, store, Health())):
            await _until(lambda: _outbox(store)[0][1] == "rejected")
    finally:
        await lis.close()
    assert _attempts(store) == [("AR", None, b"\x15")]
