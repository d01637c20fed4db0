"""The transmission archive as people consult it: for a patient, a specimen, a message or a
time span, everything labgate received and sent, with every attempt and the LIS's answer.

GBUI VII-2-3: the archive keeps, for the legal retention time of patient records, the
reference of each record sent, who received it, and the date and time of the message the
receiver acknowledged; every transmission of the same record (complement, correction) is kept
in the same form, and the archive can be consulted and printed at any time. `purge_raw_bytes`
is the only deletion: it drops the bytes of old, settled messages and keeps that summary.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

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

__all__ = ["ArchiveStore", "TraceQuery"]

_PURGED = b""


@dataclass(frozen=True, slots=True)
class TraceQuery:
    """What to look for; every given criterion must match."""

    patient_id: str | None = None
    specimen_id: str | None = None
    message_id: str | None = None
    control_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 50
    raw: bool = False  # include the bytes both ways (text, latin-1)


def _iso(moment: datetime | None) -> str | None:
    value = utc(moment)
    return value.isoformat() if value is not None else None


def _text(data: bytes | None) -> str | None:
    return data.decode("latin-1") if data is not None else None


class ArchiveStore:
    """Mixed into `Store`."""

    _sessions: sessionmaker[Session]

    def trace(self, query: TraceQuery) -> list[dict[str, Any]]:
        """Messages matching `query`, newest first, each with its specimens and results (and
        decisions), its outbox rows and every transmission attempt, and its trace entries."""
        with self._sessions() as session:
            ids = self._matching_messages(session, query)
            return [self._message_story(session, message_id, query.raw) for message_id in ids]

    @staticmethod
    def _matching_messages(session: Session, query: TraceQuery) -> list[str]:
        statement = select(MessageRow.message_id, MessageRow.received_at).distinct()
        if query.patient_id is not None or query.specimen_id is not None:
            statement = statement.join(SpecimenRow, SpecimenRow.message_id == MessageRow.message_id)
            if query.patient_id is not None:
                statement = statement.where(SpecimenRow.patient_id == query.patient_id)
            if query.specimen_id is not None:
                statement = statement.where(SpecimenRow.specimen_id == query.specimen_id)
        if query.control_id is not None:
            statement = statement.join(
                OutboxRow, OutboxRow.message_id == MessageRow.message_id
            ).where(OutboxRow.control_id == query.control_id)
        if query.message_id is not None:
            statement = statement.where(MessageRow.message_id == query.message_id)
        if query.since is not None:
            statement = statement.where(MessageRow.received_at >= query.since)
        if query.until is not None:
            statement = statement.where(MessageRow.received_at <= query.until)
        statement = statement.order_by(MessageRow.received_at.desc()).limit(query.limit)
        return [message_id for message_id, _ in session.execute(statement)]

    @staticmethod
    def _message_story(session: Session, message_id: str, raw: bool) -> dict[str, Any]:
        message = session.scalars(
            select(MessageRow).where(MessageRow.message_id == message_id)
        ).one()
        specimens = session.scalars(
            select(SpecimenRow).where(SpecimenRow.message_id == message_id).order_by(SpecimenRow.id)
        ).all()
        results = session.scalars(
            select(ResultRow).where(ResultRow.message_id == message_id).order_by(ResultRow.id)
        ).all()
        outbox = session.scalars(
            select(OutboxRow).where(OutboxRow.message_id == message_id).order_by(OutboxRow.id)
        ).all()
        traces = session.scalars(
            select(TraceRow).where(TraceRow.message_id == message_id).order_by(TraceRow.id)
        ).all()
        story: dict[str, Any] = {
            "message_id": message.message_id,
            "connection": message.connection,
            "protocol": message.protocol,
            "received_at": _iso(message.received_at),
            "status": message.status,
            "error": message.error,
            "specimens": [
                {
                    "specimen_id": s.specimen_id,
                    "patient_id": s.patient_id,
                    "origin": s.origin,
                    "location": s.location,
                    "is_qc": s.is_qc,
                    "results": [
                        {
                            "test": r.lis_code or r.test_code,
                            "value": r.value,
                            "unit": r.units,
                            "flags": r.flags,
                            "status": r.status,
                            "measured_at": _iso(r.measured_at),
                            "decision": r.decision,
                            "reasons": r.reasons,
                            "ruleset": r.ruleset,
                            "biologist": r.biologist,
                            "previous_value": r.previous_value,
                            "delivered_at": _iso(r.delivered_at),
                        }
                        for r in results
                        if r.specimen_row_id == s.id
                    ],
                }
                for s in specimens
            ],
            "to_lis": [],
            "trace": [
                {
                    "at": _iso(t.at),
                    "direction": t.direction,
                    "kind": t.kind,
                    "detail": t.detail,
                    **({"data": _text(t.data)} if raw else {}),
                }
                for t in traces
            ],
        }
        if raw:
            story["raw"] = _text(message.raw)
        for row in outbox:
            attempts = session.scalars(
                select(TransmissionRow)
                .where(TransmissionRow.outbox_id == row.id)
                .order_by(TransmissionRow.attempt)
            ).all()
            story["to_lis"].append(
                {
                    "outbox_id": row.id,
                    "lis": row.lis,
                    "kind": row.kind,
                    "control_id": row.control_id,
                    "state": row.state,
                    "created_at": _iso(row.created_at),
                    "delivered_at": _iso(row.delivered_at),
                    "last_error": row.last_error,
                    "attempts": [
                        {
                            "attempt": a.attempt,
                            "sent_at": _iso(a.sent_at),
                            "ack_code": a.ack_code,
                            "ack_control_id": a.ack_control_id,
                            "acked_at": _iso(a.acked_at),
                            "error": a.error,
                            **(
                                {"raw_out": _text(a.raw_out), "raw_in": _text(a.raw_in)}
                                if raw
                                else {}
                            ),
                        }
                        for a in attempts
                    ],
                }
            )
        return story

    def purge_raw_bytes(self, before: datetime, author: str) -> int:
        """Drop the bytes of messages received before `before` whose every outbox row is
        settled (delivered), keeping who received what and when (GBUI VII-2-3). Messages still
        owed to the LIS, rejected or quarantined ones keep their bytes. Returns how many."""
        with self._sessions.begin() as session:
            unsettled = select(OutboxRow.message_id).where(OutboxRow.state != "delivered")
            old = session.scalars(
                select(MessageRow.message_id).where(
                    MessageRow.received_at < before,
                    MessageRow.status == "stored",
                    MessageRow.raw != _PURGED,
                    MessageRow.message_id.not_in(unsettled),
                )
            ).all()
            if not old:
                return 0
            session.execute(
                update(MessageRow).where(MessageRow.message_id.in_(old)).values(raw=_PURGED)
            )
            outbox_ids = select(OutboxRow.id).where(OutboxRow.message_id.in_(old))
            session.execute(
                update(TransmissionRow)
                .where(TransmissionRow.outbox_id.in_(outbox_ids))
                .values(raw_out=_PURGED, raw_in=None)
            )
            session.execute(
                update(OutboxRow).where(OutboxRow.message_id.in_(old)).values(payload=None)
            )
            session.add(
                AuditRow(
                    at=datetime.now(UTC),
                    actor=author,
                    action="archive_bytes_purged",
                    subject="messages",
                    detail={"before": before.isoformat(), "messages": len(old)},
                )
            )
            return len(old)
