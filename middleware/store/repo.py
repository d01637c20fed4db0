"""The store: every read and write the daemon makes, as plain synchronous methods.

The daemon calls them through `Store.run()`, which hands them to one dedicated thread: the event
loop never blocks on the disk, and writes are serialised (SQLite allows one writer anyway). Each
public write is one transaction; `save_message` in particular commits the raw bytes, the decoded
specimens and results and the outbox row together, and the analyser is acknowledged only once it
has returned (GBUI I-3/I-4: nothing acknowledged may be lost).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, ClassVar, ParamSpec, TypeVar

from sqlalchemy import (
    JSON,
    Connection,
    Engine,
    Text,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from drivers.models import Order, Patient, PreviousResult, Result, SpecimenReport
from middleware.store import migrate
from middleware.store.accounts import AccountStore, ReviewStore
from middleware.store.alarms import AlarmStore
from middleware.store.archive import ArchiveStore
from middleware.store.governance import GovernanceStore
from middleware.store.group_commit import GroupCommit
from middleware.store.ids import new_control_id
from middleware.store.outbox_admin import OutboxAdminStore
from middleware.store.qc import QcStore
from middleware.store.tables import (
    MessageRow,
    OrderRow,
    OutboxRow,
    ResultRow,
    SpecimenRow,
    TraceRow,
    TransmissionRow,
)
from middleware.store.times import utc

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


def now_utc() -> datetime:
    return datetime.now(UTC)


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
    origin: str = "lab"  # or "poc": a point-of-care device, at `location`
    location: str = ""
    # Look, in the same transaction and before storing anything, for a message from this
    # connection since then that this one repeats (`Store.find_duplicate`'s rules); None: no.
    duplicate_since: datetime | None = None


@dataclass(frozen=True, slots=True)
class Duplicate:
    """What `Store.save` returns for a message the analyser sent before (its ACK was lost):
    nothing was stored; `original` is the message id it repeats."""

    original: str


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
    # Transactions are begun by SQLAlchemy (`_sqlite_begin`), not by the driver. Left to
    # itself, Python's sqlite3 opens one only before an INSERT/UPDATE/DELETE: a SAVEPOINT
    # (each message of a group commit has one) then began a transaction of its own, and its
    # RELEASE committed it, one disk sync per message, and a batch was no longer all or
    # nothing. (SQLAlchemy's documented recipe for pysqlite savepoints.)
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL lets the API read while the writer commits; synchronous=FULL makes each commit reach
    # the disk before it returns, which is what allows acknowledging the analyser afterwards.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN")


# The inserts of every received message, built once (see `Store._add_messages`).
_INSERT_MESSAGE = insert(MessageRow)
# Several rows a statement: the ids come back in the order of the rows given.
_INSERT_SPECIMEN = insert(SpecimenRow).returning(SpecimenRow.id, sort_by_parameter_order=True)
_INSERT_RESULT = insert(ResultRow)
_INSERT_OUTBOX = insert(OutboxRow).returning(OutboxRow.id, sort_by_parameter_order=True)
# The duplicate look-ups run for every received message too (see `Store.find_duplicate`).
_SAME_BYTES = (
    select(MessageRow.message_id)
    .where(
        MessageRow.connection == bindparam("connection"),
        MessageRow.content_hash == bindparam("hash"),
        MessageRow.received_at >= bindparam("since"),
        MessageRow.status == "stored",
    )
    .limit(1)
)
_SAME_RESULTS = (
    select(
        ResultRow.message_id,
        ResultRow.specimen_id,
        ResultRow.test_code,
        ResultRow.value,
        ResultRow.units,
        ResultRow.status,
        ResultRow.measured_at,
    )
    # From the specimens table, whose specimen id is indexed: the results table grows the
    # fastest.
    .select_from(SpecimenRow)
    .join(ResultRow, ResultRow.specimen_row_id == SpecimenRow.id)
    .join(MessageRow, MessageRow.message_id == SpecimenRow.message_id)
    .where(
        SpecimenRow.specimen_id.in_(bindparam("specimens", expanding=True)),
        SpecimenRow.instrument == bindparam("connection"),
        MessageRow.received_at >= bindparam("since"),
        MessageRow.status == "stored",
    )
    .order_by(ResultRow.id)
)


class Store(
    GovernanceStore, QcStore, ArchiveStore, OutboxAdminStore, AlarmStore, AccountStore, ReviewStore
):
    """All database access of the daemon. Create with `Store.open(url)`; close with `close()`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="labgate-store")
        # Reads never wait behind commits: WAL lets them run beside the one writer.
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="labgate-read")
        # Who this gateway is when several share one PostgreSQL store (set by the gateway), and
        # how long its hold on a LIS's queue lasts without renewal.
        self.claimant: str | None = None
        self.claim_lease = timedelta(seconds=120)
        self._group: GroupCommit[IncomingMessage, int | Duplicate | None] = GroupCommit(
            self._writer,
            self._save_batch,
            lambda exc: StoreUnavailable(str(exc.__cause__ or exc)),
        )

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
            event.listen(engine, "begin", _sqlite_begin)
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

    def save_message(self, incoming: IncomingMessage) -> int | Duplicate | None:
        """Commit a decoded message, its specimens, results and (if any are owed to the LIS) one
        outbox row, all or nothing. Returns the outbox id, None when nothing is forwarded, or
        `Duplicate` (nothing stored) for a repeat when `duplicate_since` asks to look."""
        with self._sessions.begin() as session:
            return self._add_message(session, incoming)

    def save_messages(
        self, batch: Sequence[IncomingMessage]
    ) -> list[int | Duplicate | Exception | None]:
        """`save_message` for many messages in one transaction (an import, a benchmark's
        backlog): the outbox id of each, None when nothing is forwarded, or the database's
        refusal of that message alone (the others are kept)."""
        return self._save_batch(batch)

    async def save(self, incoming: IncomingMessage) -> int | Duplicate | None:
        """`save_message` as the sessions call it: messages arriving together from several
        analysers are committed together (one transaction, one sync to disk; see `_save_batch`),
        and each caller returns only once its message is durable. Many analysers then cost one
        disk sync per batch instead of one per message; a message the database refuses does not
        touch the others, a failed commit fails them all (none is acknowledged)."""
        return await self._group.submit(incoming)

    def _save_batch(
        self, batch: Sequence[IncomingMessage]
    ) -> list[int | Duplicate | Exception | None]:
        """The writer-thread half of `save`: one transaction for the whole batch.

        The whole batch goes in with one statement per table (executemany): with fifty
        analysers this thread is the daemon's bottleneck, and statements per message cost more
        than the rows (profiled). Should the database refuse any of it, the batch is done
        again message by message, each in its own savepoint, so that only the message refused
        is refused."""
        try:
            with self._sessions.begin() as session:
                return list(self._add_messages(session, batch))
        except SQLAlchemyError:
            if len(batch) == 1:
                raise
        outcomes: list[int | Duplicate | Exception | None] = []
        with self._sessions.begin() as session:
            for incoming in batch:
                try:
                    with session.begin_nested():
                        outcomes.extend(self._add_messages(session, (incoming,)))
                except SQLAlchemyError as exc:
                    outcomes.append(StoreUnavailable(str(exc.__cause__ or exc)))
        return outcomes

    @staticmethod
    def _add_message(session: Session, incoming: IncomingMessage) -> int | Duplicate | None:
        [outbox_id] = Store._add_messages(session, (incoming,))
        return outbox_id

    @staticmethod
    def _add_messages(
        session: Session, batch: Sequence[IncomingMessage]
    ) -> list[int | Duplicate | None]:
        """Insert `batch` (messages, specimens, results, outbox rows) in the session's
        transaction; the outbox id of each message, None for those owing nothing to the LIS,
        `Duplicate` for those that repeat a stored one (`duplicate_since`: nothing stored).

        Fixed Core statements with parameters, one executemany per table: this runs for every
        message of every analyser on the store's one writer thread, and statements built per
        call cost more in compiling than the inserts themselves (profiled). The duplicate
        look-up is made here too, in the transaction that would store the message: no read
        session and thread hop of its own for every message, and nothing can come between the
        look-up and the storing."""
        connection = session.connection()
        repeated: dict[int, Duplicate] = {}
        for position, incoming in enumerate(batch):
            if incoming.duplicate_since is None:
                continue
            original = Store._same_message(
                connection,
                incoming.connection,
                incoming.content_hash or "",
                incoming.duplicate_since,
                incoming.reports,
            )
            if original is not None:
                repeated[position] = Duplicate(original)
        if repeated:
            stored = [m for position, m in enumerate(batch) if position not in repeated]
            ids = iter(Store._add_messages(session, stored) if stored else ())
            return [repeated.get(position) or next(ids) for position in range(len(batch))]
        connection.execute(
            _INSERT_MESSAGE,
            [
                {
                    "message_id": incoming.message_id,
                    "connection": incoming.connection,
                    "protocol": incoming.protocol,
                    "received_at": incoming.received_at,
                    "raw": incoming.raw,
                    "status": "stored",
                    "error": None,
                    "content_hash": incoming.content_hash,
                }
                for incoming in batch
            ],
        )
        specimens = [
            {
                "message_id": incoming.message_id,
                "instrument": incoming.connection,
                "specimen_id": report.specimen_id,
                **_patient_columns(report.patient),
                "collected_at": report.collected_at,
                "is_qc": report.is_qc,
                "origin": incoming.origin,
                "location": incoming.location,
            }
            for incoming in batch
            for report in incoming.reports
        ]
        specimen_row_ids = iter(
            connection.execute(_INSERT_SPECIMEN, specimens).scalars().all() if specimens else ()
        )
        results: list[dict[str, Any]] = []
        owed: list[dict[str, Any]] = []
        for incoming in batch:
            decisions = iter(incoming.decisions)
            for report in incoming.reports:
                specimen_row_id = next(specimen_row_ids)
                for result in report.results:
                    decision, reasons = next(decisions)
                    values = _result_values(
                        result, specimen_row_id, incoming.message_id, decision, reasons
                    )
                    values.update(ruleset=incoming.ruleset, biologist=incoming.biologist)
                    results.append(values)
            if incoming.forward:
                # A blocked device's results wait, quarantined, for a person to release them.
                quarantined = any(decision == "quarantined" for decision, _ in incoming.decisions)
                owed.append(
                    {
                        "message_id": incoming.message_id,
                        "lis": incoming.lis,
                        "instrument": incoming.connection,
                        "control_id": new_control_id(),
                        "state": "quarantined" if quarantined else "pending",
                        "created_at": incoming.received_at,
                        "next_attempt_at": incoming.received_at,
                        "attempts": 0,
                        "kind": "results",
                        "payload": None,
                        "last_error": None,
                        "delivered_at": None,
                        "claimed_by": None,
                        "claimed_until": None,
                    }
                )
        if results:
            connection.execute(_INSERT_RESULT, results)
        outbox_ids = iter(connection.execute(_INSERT_OUTBOX, owed).scalars().all() if owed else ())
        return [int(next(outbox_ids)) if incoming.forward else None for incoming in batch]

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

    def find_duplicate(
        self,
        connection: str,
        content_hash: str,
        since: datetime,
        reports: Sequence[SpecimenReport] = (),
    ) -> str | None:
        """The id of a message stored from this connection since `since` that this one repeats:
        the analyser is resending after losing our ACK (LIS1-A §6.5.1.2 retransmits in full).

        Same bytes is the plain case. An analyser that rebuilds the message for the resend (a
        new header time, a new session) is recognised by its results: every one of them
        (specimen, test, value, unit, status, measurement time) is already stored from this
        connection. A result without a measurement time cannot be told from a rerun, so such
        messages are only recognised by their bytes."""
        with self._sessions() as session:
            return self._same_message(
                session.connection(), connection, content_hash, since, reports
            )

    @staticmethod
    def _same_message(
        link: Connection,
        connection: str,
        content_hash: str,
        since: datetime,
        reports: Sequence[SpecimenReport],
    ) -> str | None:
        """`find_duplicate` on an open connection (a reader's, or the writer's transaction)."""
        if content_hash:
            same_bytes = link.execute(
                _SAME_BYTES, {"connection": connection, "hash": content_hash, "since": since}
            ).scalar()
            if same_bytes is not None:
                return str(same_bytes)
        results = [r for report in reports for r in report.results]
        if not results or any(r.measured_at is None for r in results):
            return None
        wanted = {_result_key(r.specimen_id, r.test_code, r.value, r.units, r.status,
                              r.measured_at) for r in results}  # fmt: skip
        rows = link.execute(
            _SAME_RESULTS,
            {
                "specimens": sorted({r.specimen_id for r in results}),
                "connection": connection,
                "since": since,
            },
        ).all()
        found: dict[tuple[str, ...], str] = {}
        for message_id, specimen_id, code, value, units, status, measured_at in rows:
            found[_result_key(specimen_id, code, value, units, status, measured_at)] = message_id
        if wanted <= found.keys():
            return found[max(wanted, key=lambda key: found[key])]
        return None

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

    # Values in one SQL IN list: below the 999 bound parameters an old SQLite allows.
    _IN_CHUNK = 500

    def due(
        self, lis: str, now: datetime, limit: int = 1, *, after: int | None = None
    ) -> list[OutboxItem]:
        """The oldest undelivered messages for this LIS, in order, as far as they are due.

        Strict order: if the oldest pending message is waiting for its retry time, nothing newer
        is returned (results must not overtake each other on their way to the LIS). The sender
        takes a batch to save a read per message and stops at the first one that fails.
        `after` skips the rows up to that outbox id: a pipelining sender reads the next batch
        while the end of the previous one is still in flight, and so still pending.
        """
        if self._claims and not self._claim(lis, now, limit, after):
            return []  # another gateway holds the head of this LIS's queue
        with self._sessions() as session:
            where = [OutboxRow.lis == lis, OutboxRow.state == "pending"]
            if self._claims:
                where.append(OutboxRow.claimed_by == self.claimant)
            if after is not None:
                where.append(OutboxRow.id > after)
            due: list[Any] = []
            for row in self._plain_rows(session, OutboxRow, *where, limit=limit):
                if utc(row.next_attempt_at) > now:  # type: ignore[operator]
                    break
                due.append(row)
            unbuilt = [row for row in due if row.payload is None]
            loaded = self._load_reports(
                session,
                [row.message_id for row in unbuilt],
                corrections={row.message_id for row in unbuilt if row.kind == "correction"},
            )
            nothing: tuple[tuple[SpecimenReport, ...], tuple[tuple[str, tuple[str, ...]], ...]]
            nothing = ((), ())
            items: list[OutboxItem] = []
            for row in due:
                reports, decisions = loaded.get(row.message_id, nothing)
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
        """When the head of this LIS's queue is due (None when the queue is empty); while
        another gateway holds it, when that gateway's claim lapses at the earliest."""
        with self._sessions() as session:
            head = session.execute(
                select(OutboxRow.next_attempt_at, OutboxRow.claimed_by, OutboxRow.claimed_until)
                .where(OutboxRow.lis == lis, OutboxRow.state == "pending")
                .order_by(OutboxRow.id)
                .limit(1)
            ).first()
        if head is None:
            return None
        moment = utc(head.next_attempt_at)
        if self._claims and head.claimed_by not in (None, self.claimant):
            moment = max(moment, utc(head.claimed_until) or moment)  # type: ignore[type-var]
        return moment

    # --- gateways sharing one PostgreSQL store ------------------------------------------------

    @property
    def _claims(self) -> bool:
        return self.claimant is not None and self.engine.dialect.name == "postgresql"

    def _claim(self, lis: str, now: datetime, limit: int, after: int | None) -> bool:
        """Take (or keep) this LIS's queue for this gateway: False if another gateway holds its
        head. One gateway sends a LIS's messages at a time, so they leave in order; the others
        take over when its claim lapses (it stopped, or crashed: `claim_lease` after its last
        renewal). Claimers queue on a per-LIS advisory lock, and rows are taken with
        FOR UPDATE SKIP LOCKED, so two gateways never hold the same message."""
        me = self.claimant
        until = now + self.claim_lease
        with self._sessions.begin() as session:
            session.execute(
                text("select pg_advisory_xact_lock(hashtext(:key))"),
                {"key": f"labgate-outbox:{lis}"},
            )
            pending = (OutboxRow.lis == lis, OutboxRow.state == "pending")
            head = session.execute(
                select(OutboxRow.claimed_by, OutboxRow.claimed_until)
                .where(*pending)
                .order_by(OutboxRow.id)
                .limit(1)
            ).first()
            if head is None:
                return True
            held = utc(head.claimed_until)
            if head.claimed_by not in (None, me) and held is not None and held > now:
                return False
            taken = select(OutboxRow.id).where(*pending).order_by(OutboxRow.id).limit(limit)
            if after is not None:
                taken = taken.where(OutboxRow.id > after)
            ids = session.scalars(taken.with_for_update(skip_locked=True)).all()
            if ids:
                session.execute(
                    update(OutboxRow)
                    .where(OutboxRow.id.in_(ids))
                    .values(claimed_by=me, claimed_until=until)
                )
            # What this gateway already holds (in flight, waiting for a retry) stays its own.
            session.execute(
                update(OutboxRow)
                .where(*pending, OutboxRow.claimed_by == me)
                .values(claimed_until=until)
            )
            return True

    # JSON texts already decoded by _plain_rows: a few distinct values (flags, reasons) repeat
    # over thousands of results. Bounded; shared by the reader threads (a race only decodes
    # a text twice).
    _json_seen: ClassVar[dict[str, tuple[Any, ...]]] = {}

    @staticmethod
    def _plain_rows(
        session: Session, model: type[Any], *where: Any, limit: int | None = None
    ) -> list[Any]:
        """The rows of `model`'s table matching `where`, in id order, read without the ORM:
        plain objects whose attributes are the mapped ones (here always the column names), as
        `_result_model` and `_patient_of` read them, JSON columns decoded once per distinct
        text, lists as tuples.

        Read as ORM objects, each JSON value through SQLAlchemy's processor, a batch of results
        cost the sender more than sending it (measured: ~2.5x this per message).
        """
        table = model.__table__
        json_columns = [c.name for c in table.columns if isinstance(c.type, JSON)]
        columns = [
            type_coerce(c, Text).label(c.name) if c.name in json_columns else c
            for c in table.columns
        ]
        query = select(*columns).where(*where).order_by(table.c.id).limit(limit)
        seen = Store._json_seen
        rows: list[Any] = []
        result = session.execute(query)
        names = tuple(result.keys())
        for row in result:
            values = dict(zip(names, row, strict=True))
            for name in json_columns:
                text = values[name]
                if not isinstance(text, str):  # NULL, or a driver that decodes JSON itself
                    continue
                value: Any = seen.get(text)
                if value is None:
                    value = json.loads(text)
                    if isinstance(value, list):  # kept only immutable: rows share it
                        if len(seen) > 4096:
                            seen.clear()
                        value = seen[text] = tuple(value)
                values[name] = value
            rows.append(SimpleNamespace(**values))
        return rows

    @staticmethod
    def _load_reports(
        session: Session, message_ids: Sequence[str], corrections: set[str]
    ) -> dict[str, tuple[tuple[SpecimenReport, ...], tuple[tuple[str, tuple[str, ...]], ...]]]:
        """The specimen reports and decisions of each message, as `save_message` got them.

        Two queries per chunk of messages, not two per specimen: the sender reads a batch of
        messages at a time and this is most of what reading them costs. `corrections` are
        the messages whose sending replaces an earlier one.
        """
        specimens: list[Any] = []  # SpecimenRow and ResultRow as plain rows, see _plain_rows
        rows_of: dict[int, list[Any]] = {}
        for start in range(0, len(message_ids), Store._IN_CHUNK):  # SQLite's bound-parameter cap
            chunk = message_ids[start : start + Store._IN_CHUNK]
            found = Store._plain_rows(session, SpecimenRow, SpecimenRow.message_id.in_(chunk))
            specimens += found
            for result_row in Store._plain_rows(
                session, ResultRow, ResultRow.specimen_row_id.in_([s.id for s in found])
            ):
                rows_of.setdefault(result_row.specimen_row_id, []).append(result_row)
        loaded: dict[str, tuple[list[SpecimenReport], list[tuple[str, tuple[str, ...]]]]] = {
            message_id: ([], []) for message_id in message_ids
        }
        for specimen in specimens:  # in id order within each message, as saved
            reports, decisions = loaded[specimen.message_id]
            correction = specimen.message_id in corrections
            rows = rows_of.get(specimen.id, [])
            results = tuple(_result_model(row) for row in rows)
            decisions.extend((row.decision, tuple(row.reasons)) for row in rows)
            # Who decided, where the specimen was measured, and whether this sending replaces
            # an earlier one: read by the LIS message builder (middleware/lis/oru.py).
            decided_by = (
                {"ruleset": rows[0].ruleset, "biologist": rows[0].biologist} if rows else {}
            )
            decided_by.update(origin=specimen.origin, location=specimen.location)
            if correction:
                decided_by["correction"] = "1"
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
        return {
            message_id: (tuple(reports), tuple(decisions))
            for message_id, (reports, decisions) in loaded.items()
        }

    @dataclass(frozen=True, slots=True)
    class Outcome:
        """What one attempt to send a message led to, for `record_outcomes`.

        `state` is `delivered` (the LIS answered AA/CA), `retry` (no usable answer, or AE/AR
        with `on_reject: retry`: the same bytes again after `delay` seconds) or `rejected`
        (AE/AR: kept for a person, `error` says why). `transmission` is the attempt, archived
        with its outcome; only a message that could not even be built has none.
        """

        outbox_id: int
        state: str
        transmission: Transmission | None
        delay: float = 0.0
        error: str = ""

    def mark_delivered(self, outbox_id: int, transmission: Transmission) -> int:
        """The LIS accepted (AA): message and results are delivered; returns the result count."""
        return self.record_outcomes([Store.Outcome(outbox_id, "delivered", transmission)])[0]

    def mark_retry(self, outbox_id: int, transmission: Transmission, delay: float) -> None:
        """No usable answer: try again, the same bytes, after `delay` seconds."""
        self.record_outcomes([Store.Outcome(outbox_id, "retry", transmission, delay=delay)])

    def mark_rejected(
        self, outbox_id: int, error: str, transmission: Transmission | None = None
    ) -> None:
        """The LIS answered AE/AR (or the message could not be built): stop, keep it, and let a
        person decide — no blind retry loop."""
        self.record_outcomes([Store.Outcome(outbox_id, "rejected", transmission, error=error)])

    def record_outcomes(self, outcomes: Sequence[Store.Outcome]) -> list[int]:
        """Record many outcomes in one transaction (a pipelining sender commits a window's
        worth at once: one disk sync instead of one per message), each archived with its
        transmission exactly as `mark_delivered`/`mark_retry`/`mark_rejected` do one by one.

        Returns, for each outcome in order, the number of results it delivered (0 unless
        `delivered`). Outcomes are applied in order, so two for one message (a retry, then
        its later answer) leave the second's state.
        """
        for outcome in outcomes:
            if outcome.state not in ("delivered", "retry", "rejected"):
                raise ValueError(f"unknown outcome {outcome.state!r}")
            if outcome.transmission is None and outcome.state != "rejected":
                raise ValueError(f"a {outcome.state} outcome needs its transmission")
        if not outcomes:
            return []
        # Plain SQL statements rather than ORM objects: a batch is one SELECT of the rows'
        # counters, one INSERT of the transmissions, one UPDATE per kind of change, and the
        # results' UPDATE, each an executemany. The ORM's unit of work cost twice as much
        # per message as everything else the pipelining sender does.
        with self._sessions.begin() as session:
            rows: dict[int, dict[str, Any]] = {}  # outbox id -> what this batch knows of it
            ids = list({outcome.outbox_id for outcome in outcomes})
            for start in range(0, len(ids), Store._IN_CHUNK):
                chunk = ids[start : start + Store._IN_CHUNK]
                found = session.execute(
                    select(
                        OutboxRow.id,
                        OutboxRow.message_id,
                        OutboxRow.attempts,
                        OutboxRow.payload.is_(None),
                    ).where(OutboxRow.id.in_(chunk))
                )
                for outbox_id, message_id, attempts, unsent in found:
                    rows[outbox_id] = {
                        "message_id": message_id,
                        "attempts": attempts,
                        "unsent": unsent,
                        "changes": {},
                    }
            archived: list[dict[str, Any]] = []
            messages = [self._apply_outcome(rows, outcome, archived) for outcome in outcomes]
            if archived:
                session.execute(insert(TransmissionRow), archived)
            self._update_outbox(session, rows)
            delivered_at = {
                message_id: outcome.transmission.answered_at
                for message_id, outcome in zip(messages, outcomes, strict=True)
                if message_id is not None and outcome.transmission is not None
            }
            counts = self._deliver_results(session, delivered_at)
            return [counts.get(m, 0) if m is not None else 0 for m in messages]

    @staticmethod
    def _apply_outcome(
        rows: dict[int, dict[str, Any]], outcome: Store.Outcome, archived: list[dict[str, Any]]
    ) -> str | None:
        """Apply one outcome to what `record_outcomes` read of its outbox row, archiving its
        transmission; the message id when delivered (its results are marked by
        `_deliver_results`, for all messages at once)."""
        row = rows.get(outcome.outbox_id)
        if row is None:
            raise ValueError(f"no outbox row {outcome.outbox_id}")
        transmission = outcome.transmission
        if transmission is not None:  # None: rejected before anything was sent
            archived.append(Store._archive(row, outcome.outbox_id, transmission))
        changes = row["changes"]
        if outcome.state == "rejected":
            changes.update(state="rejected", last_error=outcome.error)
            return None
        assert transmission is not None  # checked by record_outcomes
        if outcome.state == "retry":
            changes.update(
                last_error=transmission.error,
                next_attempt_at=transmission.answered_at + timedelta(seconds=outcome.delay),
            )
            return None
        changes.update(state="delivered", delivered_at=transmission.answered_at, last_error=None)
        return str(row["message_id"])

    @staticmethod
    def _update_outbox(session: Session, rows: dict[int, dict[str, Any]]) -> None:
        """Write the changed columns of each outbox row: one executemany per set of columns
        (a delivery, a retry and a rejection change different ones)."""
        by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for outbox_id, row in rows.items():
            changes = row["changes"]
            if changes:
                columns = tuple(sorted(changes))
                values = {f"new_{column}": value for column, value in changes.items()}
                by_columns.setdefault(columns, []).append({"outbox_id": outbox_id, **values})
        for columns, params in by_columns.items():
            # On the connection: given a list of parameters the session would run an ORM
            # bulk update, which wants the primary key under its own name.
            session.connection().execute(
                update(OutboxRow)
                .where(OutboxRow.id == bindparam("outbox_id"))
                .values({column: bindparam(f"new_{column}") for column in columns}),
                params,
            )

    @staticmethod
    def _deliver_results(session: Session, delivered_at: dict[str, datetime]) -> dict[str, int]:
        """Mark the patient results of each delivered message; how many each had.

        One count and one executemany UPDATE for the lot: building and running an UPDATE
        statement per message cost more than everything else a batch commit does.
        """
        counts: dict[str, int] = {}
        message_ids = list(delivered_at)
        for start in range(0, len(message_ids), Store._IN_CHUNK):
            chunk = message_ids[start : start + Store._IN_CHUNK]
            found = session.execute(
                select(ResultRow.message_id, func.count())
                .where(ResultRow.message_id.in_(chunk), ResultRow.is_qc.is_(False))
                .group_by(ResultRow.message_id)
            )
            counts.update((message_id, count) for message_id, count in found)
        if counts:
            # On the connection: the session would take a list of parameters for an ORM
            # bulk update by primary key, and this one updates by message id.
            session.connection().execute(
                update(ResultRow)
                .where(ResultRow.message_id == bindparam("m"), ResultRow.is_qc.is_(False))
                .values(delivered_at=bindparam("at")),
                [{"m": message_id, "at": delivered_at[message_id]} for message_id in counts],
            )
        return counts

    @staticmethod
    def _archive(row: dict[str, Any], outbox_id: int, transmission: Transmission) -> dict[str, Any]:
        """Count one more attempt on `row` (as `record_outcomes` read it) and return the
        transmissions row that archives it."""
        # The first payload sent is kept and every retry repeats it. The sender builds it
        # deterministically (MSH-7 is the outbox row's creation time), so a crash between sending
        # and this commit still yields the very same bytes when it is rebuilt after restart.
        if row["unsent"]:
            row["unsent"] = False
            row["changes"]["payload"] = transmission.payload
        row["attempts"] += 1
        row["changes"]["attempts"] = row["attempts"]
        return {
            "outbox_id": outbox_id,
            "attempt": row["attempts"],
            "sent_at": transmission.sent_at,
            "raw_out": transmission.payload,
            "raw_in": transmission.raw_in,
            "ack_code": transmission.ack_code,
            "ack_control_id": transmission.ack_control_id,
            "acked_at": transmission.answered_at if transmission.ack_code else None,
            "error": transmission.error,
        }

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


def _result_values(
    result: Result, specimen_row_id: int, message_id: str, decision: str, reasons: tuple[str, ...]
) -> dict[str, Any]:
    """A result as the columns of its `results` row."""
    return dict(
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
        previous_value=result.previous.value if result.previous else None,
        previous_unit=result.previous.unit if result.previous else None,
        previous_at=result.previous.at if result.previous else None,
        ruleset="",
        biologist="",
    )


def _result_key(
    specimen_id: str,
    test_code: str,
    value: str,
    units: str,
    status: str,
    measured_at: datetime | None,
) -> tuple[str, ...]:
    """What makes a result the same result again (see `Store.find_duplicate`)."""
    moment = utc(measured_at)
    return (specimen_id, test_code, value, units, status, moment.isoformat() if moment else "")


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
        previous=(
            PreviousResult(row.previous_value, row.previous_unit or "", utc(row.previous_at))  # type: ignore[arg-type]
            if row.previous_value is not None and row.previous_at is not None
            else None
        ),
    )
