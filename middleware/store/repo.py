"""The store: every read and write the daemon makes, as plain synchronous methods.

The daemon calls them through `Store.run()`, which hands them to one dedicated thread: the event
loop never blocks on the disk, and writes are serialised (SQLite allows one writer anyway). Each
public write is one transaction; `save_message` in particular commits the raw bytes, the decoded
specimens and results and the outbox row together, and the analyser is acknowledged only once it
has returned (GBUI I-3/I-4: nothing acknowledged may be lost).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Engine, create_engine, event, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from drivers.models import Order, Patient, Result, SpecimenReport
from middleware.store import migrate
from middleware.store.tables import (
    MessageRow,
    OrderRow,
    OutboxRow,
    ResultRow,
    SpecimenRow,
    TraceRow,
    TransmissionRow,
)

__all__ = [
    "IncomingMessage",
    "OutboxItem",
    "Store",
    "StoreUnavailable",
    "Transmission",
    "new_control_id",
    "utc",
]

P = ParamSpec("P")
T = TypeVar("T")


class StoreUnavailable(Exception):
    """The database could not commit (disk full, locked, server down): do not acknowledge."""


def utc(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC, so say so."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def now_utc() -> datetime:
    return datetime.now(UTC)


def new_control_id() -> str:
    """An HL7 message control id (MSH-10, at most 20 characters), unique across gateways."""
    return "LG" + uuid.uuid4().hex[:18].upper()


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """A whole message from an analyser, decoded, ready to be committed in one transaction."""

    message_id: str
    connection: str
    protocol: str
    received_at: datetime
    raw: bytes
    reports: tuple[SpecimenReport, ...]
    # (decision, reasons) for each result, in report order; same length as the flattened results.
    decisions: tuple[tuple[str, tuple[str, ...]], ...]
    lis: str
    forward: bool = True
    content_hash: str | None = None
    ruleset: str = ""  # name and version of the rule set that decided
    biologist: str = ""  # its responsible biologist


@dataclass(frozen=True, slots=True)
class Transmission:
    """One attempt to hand a message to the LIS: the bytes sent, when, and what came back (or
    why nothing usable did). Archived in the same transaction as the outcome it led to."""

    payload: bytes
    sent_at: datetime
    answered_at: datetime
    raw_in: bytes | None = None
    ack_code: str | None = None
    ack_control_id: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """What the sender needs to build and send one message to the LIS."""

    outbox_id: int
    message_id: str
    control_id: str
    instrument: str
    attempts: int
    payload: bytes | None
    created_at: datetime
    reports: tuple[SpecimenReport, ...] = field(default=())
    decisions: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the API read while the writer commits; synchronous=FULL makes each commit reach
    # the disk before it returns, which is what allows acknowledging the analyser afterwards.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class Store:
    """All database access of the daemon. Create with `Store.open(url)`; close with `close()`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="labgate-store")
        # Reads never wait behind commits: WAL lets them run beside the one writer.
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="labgate-read")

    @classmethod
    def open(cls, url: str) -> Store:
        """Connect, create the SQLite folder if needed, and migrate to the newest schema."""
        if url.startswith("sqlite:///"):
            from pathlib import Path

            path = url.removeprefix("sqlite:///")
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        migrate.upgrade(engine)
        return cls(engine)

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        self.engine.dispose()

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a store write on the store's one writer thread (writes are serialised, in the
        order they were asked for); database errors become StoreUnavailable."""
        return await self._call(self._writer, fn, *args, **kwargs)

    async def read(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a read-only store method on a reader thread."""
        return await self._call(self._readers, fn, *args, **kwargs)

    @staticmethod
    async def _call(
        executor: ThreadPoolExecutor, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        loop = asyncio.get_running_loop()

        def call() -> T:
            try:
                return fn(*args, **kwargs)
            except SQLAlchemyError as exc:
                raise StoreUnavailable(str(exc.__cause__ or exc)) from exc

        return await loop.run_in_executor(executor, call)

    # --- from analysers -------------------------------------------------------------------

    def save_message(self, incoming: IncomingMessage) -> int | None:
        """Commit a decoded message, its specimens, results and (if any are owed to the LIS) one
        outbox row, all or nothing. Returns the outbox id, or None when nothing is forwarded."""
        with self._sessions.begin() as session:
            session.add(
                MessageRow(
                    message_id=incoming.message_id,
                    connection=incoming.connection,
                    protocol=incoming.protocol,
                    received_at=incoming.received_at,
                    raw=incoming.raw,
                    status="stored",
                    error=None,
                    content_hash=incoming.content_hash,
                )
            )
            decisions = iter(incoming.decisions)
            for report in incoming.reports:
                specimen = SpecimenRow(
                    message_id=incoming.message_id,
                    instrument=incoming.connection,
                    specimen_id=report.specimen_id,
                    **_patient_columns(report.patient),
                    collected_at=report.collected_at,
                    is_qc=report.is_qc,
                )
                session.add(specimen)
                session.flush()
                for result in report.results:
                    decision, reasons = next(decisions)
                    row = _result_row(result, specimen.id, incoming.message_id, decision, reasons)
                    row.ruleset, row.biologist = incoming.ruleset, incoming.biologist
                    session.add(row)
            outbox_id = None
            if incoming.forward:
                outbox = OutboxRow(
                    message_id=incoming.message_id,
                    lis=incoming.lis,
                    instrument=incoming.connection,
                    control_id=new_control_id(),
                    state="pending",
                    created_at=incoming.received_at,
                    next_attempt_at=incoming.received_at,
                    attempts=0,
                )
                session.add(outbox)
                session.flush()
                outbox_id = outbox.id
        return outbox_id

    def previous_results(
        self, patient_id: str, codes: Sequence[str], before: datetime, specimen_id: str
    ) -> dict[str, tuple[str, str, datetime, str]]:
        """Per test code, the patient's latest earlier result from another specimen, as
        (numeric value, unit, measured at, code): what a delta check compares with."""
        if not patient_id or not codes:
            return {}
        with self._sessions() as session:
            rows = session.execute(
                select(
                    ResultRow.lis_code,
                    ResultRow.test_code,
                    ResultRow.numeric,
                    ResultRow.units,
                    ResultRow.measured_at,
                )
                .join(SpecimenRow, SpecimenRow.id == ResultRow.specimen_row_id)
                .where(
                    SpecimenRow.patient_id == patient_id,
                    SpecimenRow.specimen_id != specimen_id,
                    ResultRow.is_qc.is_(False),
                    ResultRow.numeric.is_not(None),
                    ResultRow.measured_at < before,
                    (ResultRow.test_code.in_(list(codes)) | ResultRow.lis_code.in_(list(codes))),
                )
                .order_by(ResultRow.measured_at.desc())
            ).all()
        found: dict[str, tuple[str, str, datetime, str]] = {}
        for lis_code, test_code, numeric, units, measured_at in rows:
            code = lis_code or test_code
            if code not in found and measured_at is not None:
                found[code] = (numeric, units, utc(measured_at), code)  # type: ignore[assignment]
        return found

    def find_duplicate(self, connection: str, content_hash: str, since: datetime) -> str | None:
        """The id of a message with the same content stored from this connection since `since`:
        the analyser is resending after losing our ACK (LIS1-A §6.5.1.2 retransmits in full)."""
        with self._sessions() as session:
            return session.scalar(
                select(MessageRow.message_id)
                .where(
                    MessageRow.connection == connection,
                    MessageRow.content_hash == content_hash,
                    MessageRow.received_at >= since,
                    MessageRow.status == "stored",
                )
                .limit(1)
            )

    def save_refused(
        self, connection: str, message_id: str, raw: bytes, reason: str, protocol: str = "astm"
    ) -> None:
        """Keep a message that could not be decoded or mapped, with why (never dropped silently)."""
        with self._sessions.begin() as session:
            session.add(
                MessageRow(
                    message_id=message_id,
                    connection=connection,
                    protocol=protocol,
                    received_at=now_utc(),
                    raw=raw,
                    status="refused",
                    error=reason,
                )
            )

    def save_trace(
        self,
        connection: str,
        kind: str,
        data: bytes,
        *,
        direction: str = "in",
        message_id: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Commit one trace entry (a partial message before its ACK, a refused frame...)."""
        with self._sessions.begin() as session:
            session.add(
                TraceRow(
                    at=now_utc(),
                    connection=connection,
                    direction=direction,
                    kind=kind,
                    message_id=message_id,
                    data=data,
                    detail=detail,
                )
            )

    # --- orders ------------------------------------------------------------------------------

    def add_order(self, order: Order, instrument: str = "") -> int:
        """Keep an order until an analyser asks for it or it is downloaded."""
        with self._sessions.begin() as session:
            row = _order_row(order, instrument)
            session.add(row)
            session.flush()
            return row.id

    def apply_order_message(
        self,
        connection: str,
        message_id: str,
        raw: bytes,
        orders: Sequence[Order],
        download_to: Sequence[str],
    ) -> set[str]:
        """One order message from the LIS, all or nothing: the raw bytes in the trace, new orders
        kept for any analyser's query (and copied for each of `download_to`), cancellations
        applied. Returns the analysers that have something new to be sent."""
        targets: set[str] = set()
        with self._sessions.begin() as session:
            session.add(
                TraceRow(
                    at=now_utc(),
                    connection=connection,
                    direction="in",
                    kind="order_message",
                    message_id=message_id,
                    data=raw,
                    detail=None,
                )
            )
            for order in orders:
                if order.action == "C":
                    targets |= self._cancel(session, order)
                    continue
                for instrument in ("", *download_to):
                    session.add(_order_row(order, instrument))
                targets.update(download_to)
        return targets

    @staticmethod
    def _cancel(session: Session, order: Order) -> set[str]:
        """Withdraw what was not sent; queue a cancel for each analyser that had the order."""
        rows = session.scalars(
            select(OrderRow).where(
                OrderRow.specimen_id == order.specimen_id, OrderRow.action != "C"
            )
        ).all()
        told: set[str] = set()
        for row in rows:
            if order.tests and not set(row.tests) & set(order.tests):
                continue
            if row.state == "pending":
                row.state = "cancelled"
            elif row.state == "sent" and row.instrument and row.instrument not in told:
                told.add(row.instrument)
                session.add(_order_row(order, row.instrument))
        return told

    def orders_for(self, specimen_ids: Sequence[str], instrument: str) -> list[tuple[int, Order]]:
        """Orders not cancelled for these specimens that this analyser may run, oldest first."""
        with self._sessions() as session:
            rows = session.scalars(
                select(OrderRow)
                .where(
                    OrderRow.specimen_id.in_(list(specimen_ids)),
                    OrderRow.state != "cancelled",
                    OrderRow.instrument.in_(["", instrument]),
                )
                .order_by(OrderRow.id)
            ).all()
            return [(row.id, _order_model(row)) for row in rows]

    def pending_downloads(self, instrument: str) -> list[tuple[int, Order]]:
        """Orders addressed to this analyser and not yet sent to it."""
        with self._sessions() as session:
            rows = session.scalars(
                select(OrderRow)
                .where(OrderRow.instrument == instrument, OrderRow.state == "pending")
                .order_by(OrderRow.id)
            ).all()
            return [(row.id, _order_model(row)) for row in rows]

    def mark_orders_sent(self, order_ids: Sequence[int], at: datetime) -> None:
        with self._sessions.begin() as session:
            session.execute(
                update(OrderRow)
                .where(OrderRow.id.in_(list(order_ids)), OrderRow.state == "pending")
                .values(state="sent", sent_at=at)
            )

    def mark_orders_refused(self, order_ids: Sequence[int], reason: str) -> None:
        """Orders the analyser's driver cannot express: kept, never sent, shown with why."""
        with self._sessions.begin() as session:
            session.execute(
                update(OrderRow)
                .where(OrderRow.id.in_(list(order_ids)), OrderRow.state == "pending")
                .values(state="refused", error=reason)
            )

    def list_orders(self, specimen_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Orders as plain data for the API, newest first."""
        with self._sessions() as session:
            query = select(OrderRow).order_by(OrderRow.id.desc()).limit(limit)
            if specimen_id:
                query = query.where(OrderRow.specimen_id == specimen_id)
            return [
                {
                    "id": row.id,
                    "specimen_id": row.specimen_id,
                    "instrument": row.instrument,
                    "tests": list(row.tests),
                    "priority": row.priority,
                    "action": row.action,
                    "state": row.state,
                    "error": row.error,
                    "created_at": utc(row.created_at).isoformat(),  # type: ignore[union-attr]
                    "sent_at": row.sent_at and utc(row.sent_at).isoformat(),  # type: ignore[union-attr]
                }
                for row in session.scalars(query)
            ]

    # --- to the LIS -----------------------------------------------------------------------

    def due(self, lis: str, now: datetime, limit: int = 1) -> list[OutboxItem]:
        """The oldest undelivered messages for this LIS, in order, as far as they are due.

        Strict order: if the oldest pending message is waiting for its retry time, nothing newer
        is returned (results must not overtake each other on their way to the LIS). The sender
        takes a batch to save a read per message and stops at the first one that fails.
        """
        with self._sessions() as session:
            rows = session.scalars(
                select(OutboxRow)
                .where(OutboxRow.lis == lis, OutboxRow.state == "pending")
                .order_by(OutboxRow.id)
                .limit(limit)
            ).all()
            items: list[OutboxItem] = []
            for row in rows:
                if utc(row.next_attempt_at) > now:  # type: ignore[operator]
                    break
                reports: tuple[SpecimenReport, ...] = ()
                decisions: tuple[tuple[str, tuple[str, ...]], ...] = ()
                if row.payload is None:
                    reports, decisions = self._load_reports(session, row.message_id)
                items.append(
                    OutboxItem(
                        outbox_id=row.id,
                        message_id=row.message_id,
                        control_id=row.control_id,
                        instrument=row.instrument,
                        attempts=row.attempts,
                        payload=row.payload,
                        created_at=utc(row.created_at),  # type: ignore[arg-type]
                        reports=reports,
                        decisions=decisions,
                    )
                )
            return items

    def next_attempt_time(self, lis: str) -> datetime | None:
        """When the head of this LIS's queue is due (None when the queue is empty)."""
        with self._sessions() as session:
            moment = session.scalar(
                select(OutboxRow.next_attempt_at)
                .where(OutboxRow.lis == lis, OutboxRow.state == "pending")
                .order_by(OutboxRow.id)
                .limit(1)
            )
            return utc(moment)

    @staticmethod
    def _load_reports(
        session: Session, message_id: str
    ) -> tuple[tuple[SpecimenReport, ...], tuple[tuple[str, tuple[str, ...]], ...]]:
        reports: list[SpecimenReport] = []
        decisions: list[tuple[str, tuple[str, ...]]] = []
        specimens = session.scalars(
            select(SpecimenRow).where(SpecimenRow.message_id == message_id).order_by(SpecimenRow.id)
        ).all()
        for specimen in specimens:
            rows = session.scalars(
                select(ResultRow)
                .where(ResultRow.specimen_row_id == specimen.id)
                .order_by(ResultRow.id)
            ).all()
            results = tuple(_result_model(row) for row in rows)
            decisions.extend((row.decision, tuple(row.reasons)) for row in rows)
            decided_by = (
                {"ruleset": rows[0].ruleset, "biologist": rows[0].biologist} if rows else {}
            )
            reports.append(
                SpecimenReport(
                    specimen_id=specimen.specimen_id,
                    patient=_patient_of(specimen),
                    results=results,
                    collected_at=utc(specimen.collected_at),
                    is_qc=specimen.is_qc,
                    extras=decided_by,
                )
            )
        return tuple(reports), tuple(decisions)

    def mark_delivered(self, outbox_id: int, transmission: Transmission) -> int:
        """The LIS accepted (AA): message and results are delivered; returns the result count."""
        with self._sessions.begin() as session:
            row = self._archive(session, outbox_id, transmission)
            row.state, row.delivered_at, row.last_error = (
                "delivered",
                transmission.answered_at,
                None,
            )
            result = session.execute(
                update(ResultRow)
                .where(ResultRow.message_id == row.message_id, ResultRow.is_qc.is_(False))
                .values(delivered_at=transmission.answered_at)
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def mark_retry(self, outbox_id: int, transmission: Transmission, delay: float) -> None:
        """No usable answer: try again, the same bytes, after `delay` seconds."""
        with self._sessions.begin() as session:
            row = self._archive(session, outbox_id, transmission)
            row.last_error = transmission.error
            row.next_attempt_at = transmission.answered_at + timedelta(seconds=delay)

    def mark_rejected(
        self, outbox_id: int, error: str, transmission: Transmission | None = None
    ) -> None:
        """The LIS answered AE/AR (or the message could not be built): stop, keep it, and let a
        person decide — no blind retry loop."""
        with self._sessions.begin() as session:
            if transmission is None:
                row = session.get_one(OutboxRow, outbox_id)
            else:
                row = self._archive(session, outbox_id, transmission)
            row.state, row.last_error = "rejected", error

    @staticmethod
    def _archive(session: Session, outbox_id: int, transmission: Transmission) -> OutboxRow:
        # The first payload sent is kept and every retry repeats it. The sender builds it
        # deterministically (MSH-7 is the outbox row's creation time), so a crash between sending
        # and this commit still yields the very same bytes when it is rebuilt after restart.
        row = session.get_one(OutboxRow, outbox_id)
        if row.payload is None:
            row.payload = transmission.payload
        row.attempts += 1
        session.add(
            TransmissionRow(
                outbox_id=outbox_id,
                attempt=row.attempts,
                sent_at=transmission.sent_at,
                raw_out=transmission.payload,
                raw_in=transmission.raw_in,
                ack_code=transmission.ack_code,
                ack_control_id=transmission.ack_control_id,
                acked_at=transmission.answered_at if transmission.ack_code else None,
                error=transmission.error,
            )
        )
        return row

    # --- reading -----------------------------------------------------------------------------

    def outbox_depth(self, lis: str | None = None) -> int:
        """How many messages are still owed to the LIS."""
        with self._sessions() as session:
            query = select(func.count()).select_from(OutboxRow).where(OutboxRow.state == "pending")
            if lis is not None:
                query = query.where(OutboxRow.lis == lis)
            return int(session.scalar(query) or 0)

    def result_counts(self) -> dict[str, dict[str, int]]:
        """Per instrument: results stored and delivered (survives restarts, unlike counters)."""
        with self._sessions() as session:
            rows = session.execute(
                select(
                    ResultRow.instrument,
                    func.count(),
                    func.count(ResultRow.delivered_at),
                ).group_by(ResultRow.instrument)
            ).all()
            return {
                name: {"stored": int(total), "delivered": int(done)} for name, total, done in rows
            }


def _result_row(
    result: Result, specimen_row_id: int, message_id: str, decision: str, reasons: tuple[str, ...]
) -> ResultRow:
    return ResultRow(
        specimen_row_id=specimen_row_id,
        message_id=message_id,
        instrument=result.instrument,
        specimen_id=result.specimen_id,
        sequence=result.sequence,
        test_code=result.test_code,
        test_name=result.test_name,
        value=result.value,
        numeric=str(result.numeric) if result.numeric is not None else None,
        comparator=result.comparator,
        units=result.units,
        reference_range=result.reference_range,
        flags=list(result.flags),
        status=result.status,
        measured_at=result.measured_at,
        comments=list(result.comments),
        is_qc=result.is_qc,
        decision=decision,
        reasons=list(reasons),
        delivered_at=None,
        lis_code=result.lis_code,
        normalized_flags=list(result.normalized_flags),
        qc_level=result.qc_level,
        qc_lot=result.qc_lot,
        dilution=result.dilution,
        rerun=result.rerun,
    )


def _patient_columns(patient: Patient) -> dict[str, str]:
    """A patient as the specimens and orders tables keep it (birth date as ISO text or "")."""
    return {
        "patient_id": patient.patient_id,
        "family_name": patient.family_name,
        "given_name": patient.given_name,
        "birth_date": patient.birth_date.isoformat() if patient.birth_date else "",
        "sex": patient.sex,
    }


def _patient_of(row: SpecimenRow | OrderRow) -> Patient:
    """The patient back from a specimens or orders row."""
    return Patient(
        patient_id=row.patient_id,
        family_name=row.family_name,
        given_name=row.given_name,
        birth_date=datetime.fromisoformat(row.birth_date).date() if row.birth_date else None,
        sex=row.sex,
    )


def _order_row(order: Order, instrument: str) -> OrderRow:
    return OrderRow(
        specimen_id=order.specimen_id,
        instrument=instrument,
        **_patient_columns(order.patient),
        tests=list(order.tests),
        priority=order.priority,
        action=order.action,
        collected_at=order.collected_at,
        created_at=now_utc(),
        state="pending",
        sent_at=None,
    )


def _order_model(row: OrderRow) -> Order:
    return Order(
        specimen_id=row.specimen_id,
        patient=_patient_of(row),
        tests=tuple(row.tests),
        priority=row.priority,
        collected_at=utc(row.collected_at),
        action=row.action,
    )


def _result_model(row: ResultRow) -> Result:
    from decimal import Decimal

    return Result(
        specimen_id=row.specimen_id,
        test_code=row.test_code,
        value=row.value,
        test_name=row.test_name,
        numeric=Decimal(row.numeric) if row.numeric is not None else None,
        comparator=row.comparator,
        units=row.units,
        reference_range=row.reference_range,
        flags=tuple(row.flags),
        status=row.status,
        measured_at=utc(row.measured_at),
        instrument=row.instrument,
        sequence=row.sequence,
        comments=tuple(row.comments),
        is_qc=row.is_qc,
        lis_code=row.lis_code,
        normalized_flags=tuple(row.normalized_flags),
        qc_level=row.qc_level,
        qc_lot=row.qc_lot,
        dilution=row.dilution,
        rerun=row.rerun,
    )
