"""Alarm episodes in the store: raised once per episode, seen again while it lasts, cleared when
its condition ends, acknowledged by a person (audited, GBUI IX)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from middleware.store.tables import AlarmRow, AuditRow, OutboxRow
from middleware.store.times import utc

__all__ = ["AlarmStore", "Raised"]


@dataclass(frozen=True, slots=True)
class Raised:
    """What raising did: the episode's id, and whether it is a new episode (notify people)."""

    alarm_id: int
    new: bool


def _iso(moment: datetime | None) -> str | None:
    value = utc(moment)
    return value.isoformat() if value is not None else None


def alarm_view(row: AlarmRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "subject": row.subject,
        "detail": row.detail,
        "raised_at": _iso(row.raised_at),
        "last_seen_at": _iso(row.last_seen_at),
        "occurrences": row.occurrences,
        "cleared_at": _iso(row.cleared_at),
        "acknowledged_at": _iso(row.acknowledged_at),
        "acknowledged_by": row.acknowledged_by,
        "comment": row.comment,
    }


class AlarmStore:
    """Mixed into `Store`."""

    _sessions: sessionmaker[Session]

    @staticmethod
    def _open(session: Session, kind: str, subject: str) -> AlarmRow | None:
        return session.scalars(
            select(AlarmRow)
            .where(
                AlarmRow.kind == kind,
                AlarmRow.subject == subject,
                AlarmRow.cleared_at.is_(None),
            )
            .limit(1)
        ).first()

    def raise_alarm(self, kind: str, subject: str, detail: str, at: datetime) -> Raised:
        """Start an episode, or count one more occurrence of the open one."""
        with self._sessions.begin() as session:
            row = self._open(session, kind, subject)
            if row is not None:
                row.last_seen_at, row.detail = at, detail
                row.occurrences += 1
                return Raised(row.id, False)
            row = AlarmRow(
                kind=kind,
                subject=subject,
                detail=detail,
                raised_at=at,
                last_seen_at=at,
                occurrences=1,
            )
            session.add(row)
            session.flush()
            return Raised(row.id, True)

    def clear_alarm(self, kind: str, subject: str, at: datetime) -> bool:
        """End the open episode, if any (the condition is over); True if one was open."""
        with self._sessions.begin() as session:
            row = self._open(session, kind, subject)
            if row is None:
                return False
            row.cleared_at = at
            return True

    def acknowledge_alarm(self, alarm_id: int, author: str, comment: str, at: datetime) -> None:
        """A person has seen the alarm and says so; KeyError if there is no such alarm."""
        with self._sessions.begin() as session:
            row = session.get(AlarmRow, alarm_id)
            if row is None:
                raise KeyError(alarm_id)
            row.acknowledged_at, row.acknowledged_by, row.comment = at, author, comment
            session.add(
                AuditRow(
                    at=at,
                    actor=author,
                    action="alarm_acknowledged",
                    subject=f"alarm:{alarm_id}",
                    detail={"kind": row.kind, "subject": row.subject, "comment": comment},
                )
            )

    def alarms(self, open_only: bool = False, limit: int = 100) -> list[dict[str, Any]]:
        """Alarm episodes, newest first."""
        with self._sessions() as session:
            statement = select(AlarmRow).order_by(AlarmRow.id.desc()).limit(limit)
            if open_only:
                statement = statement.where(AlarmRow.cleared_at.is_(None))
            return [alarm_view(row) for row in session.scalars(statement)]

    def open_alarm_keys(self) -> set[tuple[str, str]]:
        """(kind, subject) of every open episode (what the monitor may clear)."""
        with self._sessions() as session:
            rows = session.execute(
                select(AlarmRow.kind, AlarmRow.subject).where(AlarmRow.cleared_at.is_(None))
            ).all()
            return {(kind, subject) for kind, subject in rows}

    def outbox_oldest_pending(self, lis: str) -> datetime | None:
        """When the oldest message still owed to this LIS was queued (backlog age)."""
        with self._sessions() as session:
            moment = session.scalar(
                select(OutboxRow.created_at)
                .where(OutboxRow.lis == lis, OutboxRow.state == "pending")
                .order_by(OutboxRow.id)
                .limit(1)
            )
            return utc(moment)

    def outbox_states(self) -> dict[tuple[str, str], int]:
        """(LIS, state) -> number of outbox messages, for the alarms on the LIS link."""
        with self._sessions() as session:
            rows = session.execute(
                select(OutboxRow.lis, OutboxRow.state, func.count()).group_by(
                    OutboxRow.lis, OutboxRow.state
                )
            ).all()
            return {(lis, state): int(count) for lis, state, count in rows}
