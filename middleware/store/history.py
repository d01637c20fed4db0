"""The stored history as replay events: `labgate replay --from-store`, read-only.

Past patient and QC results come out as the same event dictionaries as a replay's JSON lines
(`middleware.validation.replay`), in time order, so a rule set or a QC plan can be tried on what
the lab really received before it is switched on (AUTOVERIFICATION.md: "replay historical
results"). Nothing is ever written: SQLite is opened read-only (`mode=ro`), PostgreSQL in
read-only transactions, and the schema is neither created nor migrated.

A result's time is its measurement time, or when its message was received if the analyser gave
none (the daemon's QC gate does the same). Patient events carry the driver's parse of the value
(`numeric`, `comparator`) and its normalised flags, exactly what the live pipeline decided on,
and the serum indices of its specimen (index results of their own, read as the live pipeline
reads them). QC results
without a numeric value cannot be judged by the Westgard rules and are left out.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, func, or_, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from middleware.store.tables import MessageRow, ResultRow, SpecimenRow
from middleware.validation.indices import INDEX_CODES, index_reading

__all__ = ["HistoryError", "open_read_only", "read_history"]

_BATCH = 2000


class HistoryError(Exception):
    """The stored history cannot be read (no such database, not a labgate store)."""


def _utc(moment: datetime | None) -> datetime | None:
    # SQLite hands datetimes back without an offset; the store keeps UTC.
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def open_read_only(url: str) -> Engine:
    """An engine on the store at `url` that cannot write to it."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise HistoryError(f"not a database URL: {url!r} ({exc})") from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if not database or database == ":memory:":
            raise HistoryError("an in-memory SQLite database has no history")
        path = Path(database).resolve()
        if not path.is_file():
            raise HistoryError(f"no database at {path}")
        uri = f"{path.as_uri()}?mode=ro"

        def connect() -> sqlite3.Connection:
            return sqlite3.connect(uri, uri=True, check_same_thread=False)

        return create_engine("sqlite://", creator=connect)
    if parsed.get_backend_name() == "postgresql":
        engine = create_engine(url)
        return engine.execution_options(postgresql_readonly=True)
    raise HistoryError(f"unsupported database {parsed.get_backend_name()!r}")


def read_history(
    engine: Engine, since: datetime | None = None, until: datetime | None = None
) -> Iterator[dict[str, Any]]:
    """Patient and QC results measured in [`since`, `until`) (either open), oldest first, as
    replay events. A patient event's `id` is the result's row id in the store."""
    at = func.coalesce(ResultRow.measured_at, MessageRow.received_at)
    query = (
        select(
            ResultRow.id,
            ResultRow.is_qc,
            ResultRow.instrument,
            SpecimenRow.instrument.label("connection"),
            SpecimenRow.patient_id,
            SpecimenRow.origin,
            ResultRow.specimen_id,
            ResultRow.test_code,
            ResultRow.lis_code,
            ResultRow.value,
            ResultRow.numeric,
            ResultRow.comparator,
            ResultRow.units,
            ResultRow.flags,
            ResultRow.normalized_flags,
            ResultRow.qc_level,
            ResultRow.qc_lot,
            ResultRow.measured_at,
            MessageRow.received_at,
            ResultRow.specimen_row_id,
        )
        .join(SpecimenRow, SpecimenRow.id == ResultRow.specimen_row_id)
        .join(MessageRow, MessageRow.message_id == ResultRow.message_id)
        .order_by(at, ResultRow.id)
    )
    if since is not None:
        query = query.where(at >= since.astimezone(UTC))
    if until is not None:
        query = query.where(at < until.astimezone(UTC))
    try:
        with engine.connect() as connection:
            indices = _specimen_indices(connection, since, until)
            rows = connection.execution_options(yield_per=_BATCH).execute(query)
            for row in rows:
                event = _event(row, indices.get(row.specimen_row_id))
                if event is not None:
                    yield event
    except SQLAlchemyError as exc:
        raise HistoryError(f"cannot read the stored results: {exc.__cause__ or exc}") from None


def _specimen_indices(
    connection: Connection, since: datetime | None, until: datetime | None
) -> dict[int, dict[str, str]]:
    """The serum indices of the specimens measured in the window, by specimen row: read once
    before the results (they are results of their own, `validation/indices.py`), as text the
    replay reads as a number ("Infinity" for one that cannot be compared)."""
    at = func.coalesce(ResultRow.measured_at, MessageRow.received_at)
    codes = list(INDEX_CODES)
    query = (
        select(
            ResultRow.specimen_row_id,
            ResultRow.lis_code,
            ResultRow.test_code,
            ResultRow.value,
            ResultRow.numeric,
            ResultRow.comparator,
        )
        .join(MessageRow, MessageRow.message_id == ResultRow.message_id)
        .where(
            ResultRow.is_qc.is_(False),
            or_(
                func.upper(ResultRow.lis_code).in_(codes),
                func.upper(ResultRow.test_code).in_(codes),
            ),
        )
        .order_by(ResultRow.id)
    )
    if since is not None:
        query = query.where(at >= since.astimezone(UTC))
    if until is not None:
        query = query.where(at < until.astimezone(UTC))
    found: dict[int, dict[str, str]] = {}
    for specimen_row_id, lis_code, test_code, value, numeric, comparator in connection.execute(
        query
    ):
        number = Decimal(numeric) if numeric is not None else None
        reading = index_reading(lis_code or "", test_code or "", value or "", number, comparator)
        if reading is not None:
            name, index = reading
            found.setdefault(specimen_row_id, {})[name] = str(index)
    return found


def _event(row: Any, indices: dict[str, str] | None = None) -> dict[str, Any] | None:
    moment = _utc(row.measured_at) or _utc(row.received_at)
    if moment is None:
        return None
    instrument = row.instrument or row.connection
    test = row.lis_code or row.test_code
    if row.is_qc:
        if row.numeric is None:
            return None
        return {
            "kind": "qc",
            "instrument": instrument,
            "test": test,
            "level": row.qc_level,
            "lot": row.qc_lot,
            "value": row.numeric,
            "at": moment.isoformat(),
        }
    return {
        "kind": "result",
        "id": row.id,
        "patient": row.patient_id,
        "specimen": row.specimen_id,
        "test": test,
        "value": row.value,
        "numeric": row.numeric,
        "comparator": row.comparator or "",
        "unit": row.units,
        "flags": list(row.flags or ()),
        "normalized_flags": list(row.normalized_flags or ()),
        "at": moment.isoformat(),
        "instrument": instrument,
        "origin": row.origin or "lab",
        "indices": indices or {},
    }
