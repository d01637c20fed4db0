"""The QC side of the store: the QC history the Westgard rules need at start-up, and the
re-holding of patient results that a late QC rejection puts in doubt.

At start-up the QC monitor also reads back what it counts (`qc_plan.py`): the patient results
stored since the newest accepted run (`patient_times`), and the reagent lots (`reagent_lots`
table) of QC runs and of patient results measured on a lot no QC had covered
(`record_reagent_lots`, `new_lot_results`).

AUTOVERIFICATION.md §3 "On rejection": every patient result of that instrument and test since
the last accepted QC run is held. A result still waiting in the outbox simply leaves with its
new decision (its message is built when it is sent). One that already reached the LIS, or whose
bytes are already fixed for retransmission, is sent again as a correction (OBX-11 "C", "annule
et remplace", GBUI VI) so the LIS never keeps an auto-validation labgate has withdrawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation

from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from middleware.store.ids import new_control_id
from middleware.store.tables import AuditRow, MessageRow, OutboxRow, ReagentLotRow, ResultRow
from middleware.store.times import utc

__all__ = ["LotSeen", "QcHistoryPoint", "QcStore", "Rehold"]

QC_FAILED = "qc_failed"

# How far back a rejection without any earlier accepted run reaches: the QC gate would hold
# everything, but results older than this were covered by QC that has since left the history.
_OPEN_BRACKET_LOOKBACK = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class QcHistoryPoint:
    """One stored QC result, as the Westgard history needs it."""

    instrument: str
    test: str
    level: str
    lot: str
    value: Decimal
    at: datetime
    reagent_lot: str = ""  # the reagent lot it was measured on (not the control's `lot`)


@dataclass(frozen=True, slots=True)
class LotSeen:
    """One result on a named reagent lot, as the `reagent_lots` table keeps it."""

    message_id: str
    instrument: str
    test: str
    reagent_lot: str
    at: datetime
    is_qc: bool
    level: str = ""


@dataclass(frozen=True, slots=True)
class Rehold:
    """What a re-hold changed: results held again and the correction messages it queued."""

    results: int
    corrections: int


class QcStore:
    """Mixed into `Store`."""

    _sessions: sessionmaker[Session]

    def qc_history(self, since: datetime) -> list[QcHistoryPoint]:
        """Numeric QC results measured (or received) since `since`, oldest first, each with the
        reagent lot it was measured on when one was recorded."""
        lower = since - _OPEN_BRACKET_LOOKBACK
        with self._sessions() as session:
            lots = {
                (message_id, test, level): lot
                for message_id, test, level, lot in session.execute(
                    select(
                        ReagentLotRow.message_id,
                        ReagentLotRow.test,
                        ReagentLotRow.level,
                        ReagentLotRow.reagent_lot,
                    ).where(ReagentLotRow.is_qc.is_(True), ReagentLotRow.at >= lower)
                )
            }
            rows = session.execute(
                select(
                    ResultRow.message_id,
                    ResultRow.instrument,
                    ResultRow.lis_code,
                    ResultRow.test_code,
                    ResultRow.qc_level,
                    ResultRow.qc_lot,
                    ResultRow.numeric,
                    ResultRow.measured_at,
                    MessageRow.received_at,
                )
                .join(MessageRow, MessageRow.message_id == ResultRow.message_id)
                .where(
                    ResultRow.is_qc.is_(True),
                    ResultRow.numeric.is_not(None),
                    MessageRow.received_at >= lower,
                )
                .order_by(ResultRow.id)
            ).all()
        points = []
        for message_id, instrument, lis_code, code, level, lot, numeric, measured, received in rows:
            at = utc(measured or received)
            if at is None or at < since:
                continue
            try:
                value = Decimal(numeric or "")
            except (InvalidOperation, TypeError):
                continue
            test = lis_code or code
            reagent = lots.get((message_id, test, level), "")
            points.append(QcHistoryPoint(instrument, test, level, lot, value, at, reagent))
        points.sort(key=lambda point: point.at)
        return points

    def patient_times(
        self, instrument: str, test: str, after: datetime, limit: int
    ) -> list[datetime]:
        """The times of the patient results of `instrument` and `test` measured (or received)
        after `after`, whatever their decision, oldest first: what the QC monitor counts against
        its `results` limit since the newest accepted run. Beyond 2 x `limit`, only the first
        and the last `limit` (all the monitor keeps, `QcMonitor.count_patient`)."""
        with self._sessions() as session:
            rows = session.execute(
                select(ResultRow.measured_at, MessageRow.received_at)
                .join(MessageRow, MessageRow.message_id == ResultRow.message_id)
                .where(
                    ResultRow.instrument == instrument,
                    ResultRow.is_qc.is_(False),
                    (ResultRow.lis_code == test)
                    | ((ResultRow.lis_code == "") & (ResultRow.test_code == test)),
                    MessageRow.received_at > after - _OPEN_BRACKET_LOOKBACK,
                )
            ).all()
        times = sorted(
            at for measured, received in rows if (at := utc(measured or received)) and at > after
        )
        return times if len(times) <= 2 * limit else times[:limit] + times[-limit:]

    def record_reagent_lots(self, seen: Sequence[LotSeen]) -> None:
        """Keep the reagent lots of results just stored (see `ReagentLotRow`)."""
        if not seen:
            return
        with self._sessions.begin() as session:
            session.execute(
                insert(ReagentLotRow),
                [
                    {
                        "message_id": lot.message_id,
                        "instrument": lot.instrument,
                        "test": lot.test,
                        "reagent_lot": lot.reagent_lot,
                        "is_qc": lot.is_qc,
                        "level": lot.level,
                        "at": lot.at,
                    }
                    for lot in seen
                ],
            )

    def new_lot_results(self, since: datetime) -> list[LotSeen]:
        """Patient results measured since `since` on a reagent lot no accepted QC run covered
        when they were stored, oldest first."""
        with self._sessions() as session:
            rows = session.scalars(
                select(ReagentLotRow)
                .where(ReagentLotRow.is_qc.is_(False), ReagentLotRow.at >= since)
                .order_by(ReagentLotRow.id)
            ).all()
            found = [
                LotSeen(
                    row.message_id,
                    row.instrument,
                    row.test,
                    row.reagent_lot,
                    utc(row.at) or since,
                    is_qc=False,
                )
                for row in rows
            ]
        found.sort(key=lambda lot: lot.at)
        return found

    def rehold_for_qc(
        self,
        instrument: str,
        test: str,
        since: datetime | None,
        until: datetime,
        lis: str,
        detail: str,
    ) -> Rehold:
        """Hold again (reason `qc_failed`) the patient results of `instrument` and `test`
        measured in (`since`, `until`], queue a correction for those already out, and audit it.
        `since` None: no accepted run is known before the rejection (one day back)."""
        lower = since if since is not None else until - _OPEN_BRACKET_LOOKBACK
        with self._sessions.begin() as session:
            rows = session.execute(
                select(ResultRow, MessageRow.received_at)
                .join(MessageRow, MessageRow.message_id == ResultRow.message_id)
                .where(
                    ResultRow.instrument == instrument,
                    ResultRow.is_qc.is_(False),
                    (ResultRow.lis_code == test)
                    | ((ResultRow.lis_code == "") & (ResultRow.test_code == test)),
                    ResultRow.decision.in_(("autovalidated", "held")),
                    MessageRow.received_at > lower - _OPEN_BRACKET_LOOKBACK,
                )
            ).all()
            touched: set[str] = set()
            count = 0
            for row, received in rows:
                at = utc(row.measured_at or received)
                if at is None or not (lower < at <= until) or QC_FAILED in row.reasons:
                    continue
                row.decision = "held"
                row.reasons = [*row.reasons, QC_FAILED]
                touched.add(row.message_id)
                count += 1
            corrections = sum(
                self._correct(session, message_id, lis, until) for message_id in sorted(touched)
            )
            if count:
                session.add(
                    AuditRow(
                        at=until,
                        actor="labgate",
                        action="qc_rehold",
                        subject=f"{instrument}:{test}",
                        detail={
                            "results": count,
                            "corrections": corrections,
                            "since": since.isoformat() if since else None,
                            "until": until.isoformat(),
                            "qc": detail,
                        },
                    )
                )
            return Rehold(count, corrections)

    @staticmethod
    def _correct(session: Session, message_id: str, lis: str, at: datetime) -> int:
        """1 if a correction message had to be queued for this message, else 0 (its pending
        outbox row will carry the new decisions when it is built)."""
        rows = session.scalars(
            select(OutboxRow).where(OutboxRow.message_id == message_id).order_by(OutboxRow.id)
        ).all()
        if any(row.state == "pending" and row.payload is None for row in rows):
            return 0
        if not rows:
            return 0  # never meant for the LIS (e.g. a QC-only message)
        session.add(
            OutboxRow(
                message_id=message_id,
                lis=rows[0].lis or lis,
                instrument=rows[0].instrument,
                control_id=new_control_id(),
                state="pending",
                created_at=at,
                next_attempt_at=at,
                attempts=0,
                kind="correction",
            )
        )
        return 1
