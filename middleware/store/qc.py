"""The QC side of the store: the QC history the Westgard rules need at start-up, and the
re-holding of patient results that a late QC rejection puts in doubt.

AUTOVERIFICATION.md §3 "On rejection": every patient result of that instrument and test since
the last accepted QC run is held. A result still waiting in the outbox simply leaves with its
new decision (its message is built when it is sent). One that already reached the LIS, or whose
bytes are already fixed for retransmission, is sent again as a correction (OBX-11 "C", "annule
et remplace", GBUI VI) so the LIS never keeps an auto-validation labgate has withdrawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from middleware.store.ids import new_control_id
from middleware.store.tables import AuditRow, MessageRow, OutboxRow, ResultRow
from middleware.store.times import utc

__all__ = ["QcHistoryPoint", "QcStore", "Rehold"]

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


@dataclass(frozen=True, slots=True)
class Rehold:
    """What a re-hold changed: results held again and the correction messages it queued."""

    results: int
    corrections: int


class QcStore:
    """Mixed into `Store`."""

    _sessions: sessionmaker[Session]

    def qc_history(self, since: datetime) -> list[QcHistoryPoint]:
        """Numeric QC results measured (or received) since `since`, oldest first."""
        with self._sessions() as session:
            rows = session.execute(
                select(
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
                    MessageRow.received_at >= since - _OPEN_BRACKET_LOOKBACK,
                )
                .order_by(ResultRow.id)
            ).all()
        points = []
        for instrument, lis_code, code, level, lot, numeric, measured, received in rows:
            at = utc(measured or received)
            if at is None or at < since:
                continue
            try:
                value = Decimal(numeric or "")
            except (InvalidOperation, TypeError):
                continue
            points.append(QcHistoryPoint(instrument, lis_code or code, level, lot, value, at))
        points.sort(key=lambda point: point.at)
        return points

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
