"""Exports of a period for an inspection: results, the transmission trace, the audit trail.

    results   every result received in the period with its specimen, patient id, decision
              and reasons, rule set and biologist, and when the LIS acknowledged it
    trace     what went in and out, in time order: each analyser message (status, size),
              each protocol event kept in the trace table, each transmission to the LIS
              with its attempt and the LIS's answer (GBUI VII-2-3); bytes with `raw`
    audit     every audited action (GBUI IX)

The period is [since, until) on the time labgate received or did the thing. Rows are streamed
from the store, never all held in memory, as CSV (a header, lists and mappings as JSON in
their cell) or JSON lines (one object per line). Patient names are not exported: the patient
id links each result to the LIS's record.
"""

from __future__ import annotations

import csv
import heapq
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Literal, TextIO

from sqlalchemy import Connection, Engine, func, select

from middleware.store.tables import (
    AuditRow,
    MessageRow,
    OutboxRow,
    ResultRow,
    SpecimenRow,
    TraceRow,
    TransmissionRow,
)
from middleware.store.times import utc

__all__ = ["COLUMNS", "Kind", "export", "rows"]

Kind = Literal["results", "trace", "audit"]
Format = Literal["csv", "jsonl"]

COLUMNS: dict[Kind, tuple[str, ...]] = {
    "results": (
        "received_at",
        "message_id",
        "instrument",
        "origin",
        "location",
        "specimen_id",
        "patient_id",
        "collected_at",
        "is_qc",
        "sequence",
        "test_code",
        "lis_code",
        "test_name",
        "value",
        "units",
        "reference_range",
        "flags",
        "status",
        "measured_at",
        "decision",
        "reasons",
        "ruleset",
        "biologist",
        "previous_value",
        "previous_unit",
        "previous_at",
        "delivered_at",
    ),
    "trace": (
        "at",
        "direction",
        "connection",
        "kind",
        "message_id",
        "control_id",
        "attempt",
        "status",
        "ack_code",
        "acked_at",
        "detail",
        "size",
    ),
    "audit": ("at", "actor", "action", "subject", "detail"),
}
_RAW_COLUMNS = ("raw", "raw_in")
_CHUNK = 500


def _iso(moment: datetime | None) -> str | None:
    value = utc(moment)
    return value.isoformat() if value is not None else None


def _text(data: bytes | None) -> str | None:
    return data.decode("latin-1") if data is not None else None


def _stream(connection: Connection, statement: Any) -> Iterator[Any]:
    streaming = connection.execution_options(stream_results=True, yield_per=_CHUNK)
    return iter(streaming.execute(statement))


def _results(connection: Connection, since: datetime, until: datetime) -> Iterator[dict[str, Any]]:
    r, s, m = ResultRow, SpecimenRow, MessageRow
    statement = (
        select(
            m.received_at,
            r.message_id,
            r.instrument,
            s.origin,
            s.location,
            r.specimen_id,
            s.patient_id,
            s.collected_at,
            r.is_qc,
            r.sequence,
            r.test_code,
            r.lis_code,
            r.test_name,
            r.value,
            r.units,
            r.reference_range,
            r.flags,
            r.status,
            r.measured_at,
            r.decision,
            r.reasons,
            r.ruleset,
            r.biologist,
            r.previous_value,
            r.previous_unit,
            r.previous_at,
            r.delivered_at,
        )
        .join(s, s.id == r.specimen_row_id)
        .join(m, m.message_id == r.message_id)
        .where(m.received_at >= since, m.received_at < until)
        .order_by(m.received_at, r.id)
    )
    times = {"received_at", "collected_at", "measured_at", "previous_at", "delivered_at"}
    for row in _stream(connection, statement):
        record = dict(row._mapping)
        for key in times:
            record[key] = _iso(record[key])
        record["is_qc"] = bool(record["is_qc"])
        yield record


def _trace(
    connection: Connection, since: datetime, until: datetime, raw: bool
) -> Iterator[dict[str, Any]]:
    """Three time-ordered streams merged into one."""
    m, t, x, o = MessageRow, TraceRow, TransmissionRow, OutboxRow
    messages = (
        select(
            m.received_at.label("at"),
            m.connection,
            m.message_id,
            m.status,
            m.error,
            func.length(m.raw).label("size"),
            *([m.raw] if raw else []),
        )
        .where(m.received_at >= since, m.received_at < until)
        .order_by(m.received_at, m.id)
    )
    events = (
        select(
            t.at,
            t.direction,
            t.connection,
            t.kind,
            t.message_id,
            t.detail,
            func.length(t.data).label("size"),
            *([t.data] if raw else []),
        )
        .where(t.at >= since, t.at < until)
        .order_by(t.at, t.id)
    )
    sendings = (
        select(
            x.sent_at.label("at"),
            o.lis,
            o.message_id,
            o.control_id,
            o.kind,
            x.attempt,
            x.ack_code,
            x.acked_at,
            x.error,
            func.length(x.raw_out).label("size"),
            *([x.raw_out, x.raw_in] if raw else []),
        )
        .join(o, o.id == x.outbox_id)
        .where(x.sent_at >= since, x.sent_at < until)
        .order_by(x.sent_at, x.id)
    )

    def from_messages() -> Iterator[dict[str, Any]]:
        for row in _stream(connection, messages):
            record = {
                "at": _iso(row.at),
                "direction": "in",
                "connection": row.connection,
                "kind": "message",
                "message_id": row.message_id,
                "status": row.status,
                "detail": row.error,
                "size": row.size,
            }
            if raw:
                record["raw"] = _text(row.raw)
            yield record

    def from_events() -> Iterator[dict[str, Any]]:
        for row in _stream(connection, events):
            record = {
                "at": _iso(row.at),
                "direction": row.direction,
                "connection": row.connection,
                "kind": row.kind,
                "message_id": row.message_id,
                "detail": row.detail,
                "size": row.size,
            }
            if raw:
                record["raw"] = _text(row.data)
            yield record

    def from_sendings() -> Iterator[dict[str, Any]]:
        for row in _stream(connection, sendings):
            record = {
                "at": _iso(row.at),
                "direction": "out",
                "connection": row.lis,
                "kind": f"transmission:{row.kind}",
                "message_id": row.message_id,
                "control_id": row.control_id,
                "attempt": row.attempt,
                "ack_code": row.ack_code,
                "acked_at": _iso(row.acked_at),
                "detail": row.error,
                "size": row.size,
            }
            if raw:
                record["raw"], record["raw_in"] = _text(row.raw_out), _text(row.raw_in)
            yield record

    # ISO times in UTC with the same offset compare correctly as text.
    yield from heapq.merge(
        from_messages(), from_events(), from_sendings(), key=lambda r: r["at"] or ""
    )


def _audit(connection: Connection, since: datetime, until: datetime) -> Iterator[dict[str, Any]]:
    a = AuditRow
    statement = (
        select(a.at, a.actor, a.action, a.subject, a.detail)
        .where(a.at >= since, a.at < until)
        .order_by(a.at, a.id)
    )
    for row in _stream(connection, statement):
        record = dict(row._mapping)
        record["at"] = _iso(record["at"])
        yield record


def rows(
    connection: Connection, kind: Kind, since: datetime, until: datetime, raw: bool = False
) -> Iterator[dict[str, Any]]:
    """The records of `kind` in [since, until), oldest first."""
    if kind == "results":
        return _results(connection, since, until)
    if kind == "trace":
        return _trace(connection, since, until, raw)
    return _audit(connection, since, until)


def _cell(value: Any) -> Any:
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else value


def export(
    engine: Engine,
    kind: Kind,
    since: datetime,
    until: datetime,
    out: TextIO,
    fmt: Format = "csv",
    raw: bool = False,
) -> int:
    """Write the records of `kind` in [since, until) to `out`; returns how many."""
    columns = COLUMNS[kind] + (_RAW_COLUMNS if raw and kind == "trace" else ())
    count = 0
    with engine.connect() as connection:
        records = rows(connection, kind, since, until, raw)
        if fmt == "csv":
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(columns)
            for record in records:
                writer.writerow([_cell(record.get(column)) for column in columns])
                count += 1
        else:
            for record in records:
                ordered = {column: record.get(column) for column in columns}
                out.write(json.dumps(ordered, ensure_ascii=False) + "\n")
                count += 1
    return count
