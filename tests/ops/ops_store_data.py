"""A store with something in every table the operations commands read, and its contents as
plain values for comparing two stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from drivers.models import Patient, Result, SpecimenReport
from middleware.ops import audit
from middleware.store import IncomingMessage, Store, Transmission

DAY = datetime(2025, 3, 10, tzinfo=UTC)


def incoming(
    number: int,
    at: datetime,
    *,
    decision: tuple[str, tuple[str, ...]] = ("held", ("no_rule",)),
    instrument: str = "chem-1",
) -> IncomingMessage:
    result = Result(
        specimen_id=f"S{number}",
        test_code="GLU",
        value=f"5.{number}",
        numeric=Decimal(f"5.{number}"),
        units="mmol/L",
        reference_range="3.9 to 6.1",
        flags=("N",),
        instrument=instrument,
        sequence=1,
        measured_at=at - timedelta(minutes=5),
    )
    report = SpecimenReport(f"S{number}", Patient(f"P{number}", "DUPONT", "Marie"), (result,))
    return IncomingMessage(
        message_id=f"m{number}",
        connection=instrument,
        protocol="astm",
        received_at=at,
        raw=b"\x021H|\\^&\r" + f"R|1|^^^GLU|5.{number}".encode() + b"\r\x03AA\r\n",
        reports=(report,),
        decisions=(decision,),
        lis="lis",
    )


def populate(store: Store) -> None:
    """Three messages over a day (the first delivered with AA, the second waiting), a trace
    entry and an audit row."""
    first = store.save_message(incoming(1, DAY + timedelta(hours=8)))
    store.save_message(
        incoming(2, DAY + timedelta(hours=12), decision=("autovalidated", ())),
    )
    store.save_message(
        incoming(3, DAY + timedelta(days=1, hours=1), decision=("held", ("critical_value",))),
    )
    assert first is not None
    sent = DAY + timedelta(hours=8, seconds=1)
    store.mark_delivered(
        first,
        Transmission(
            b"MSH|^~\\&|LABGATE\rOBX|1",
            sent,
            sent + timedelta(milliseconds=40),
            raw_in=b"MSH|^~\\&|LIS\rMSA|AA|C1",
            ack_code="AA",
            ack_control_id="C1",
        ),
    )
    store.save_trace("chem-1", "frame_rejected", b"\x021H|bad", detail="checksum")
    audit.record(store.engine, "Dr Martin", "device_blocked", "chem-1", {"reason": "QC"}, DAY)


def contents(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in primary-key order."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            metadata = sa.MetaData()
            metadata.reflect(connection)
            return {
                name: [
                    tuple(row)
                    for row in connection.execute(
                        sa.select(table).order_by(*table.primary_key.columns)
                    )
                ]
                for name, table in sorted(metadata.tables.items())
            }
    finally:
        engine.dispose()


def config(
    path: Path,
    url: str,
    *,
    api_port: int,
    lis_port: int,
    backups: Path | None = None,
    extra: str = "",
) -> Path:
    lines = [
        "gateway: gw-ops",
        f"store: {{url: '{url}'}}",
        f"api: {{host: 127.0.0.1, port: {api_port}}}",
        f"lis: {{name: lis, host: 127.0.0.1, port: {lis_port}, connect_timeout: 2}}",
    ]
    if backups is not None:
        lines.append(f"backup: {{directory: '{backups}', keep: 3}}")
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path
