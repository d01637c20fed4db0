"""What a person may do to the outbox: look at it, send a message again, release what a
blocked device's quarantine kept back. Each action is audited with its author and reason, and
the daemon's sender is woken by the audit change (see `LiveValidation.reload`).

- resend: a `rejected` message (the LIS answered AE/AR and labgate stopped, GBUI VII-2) goes
  back to `pending` with the same bytes and control id once the cause is fixed; a `delivered`
  one is queued again as a new message (new control id: the LIS sees a second sending, which a
  person asked for).
- release: a `quarantined` message (device blocked, GBUI XIII) goes to the LIS; its results
  leave `held`, never auto-validated, keeping `device_blocked` among their reasons.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from middleware.store.ids import new_control_id
from middleware.store.tables import AuditRow, OutboxRow, ResultRow
from middleware.store.times import utc

__all__ = ["OutboxActionRefused", "OutboxAdminStore"]


class OutboxActionRefused(ValueError):
    """The action does not apply to that message in its present state."""


class OutboxAdminStore:
    """Mixed into `Store`."""

    _sessions: sessionmaker[Session]

    def outbox_list(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Outbox rows, newest first (optionally in one state)."""
        with self._sessions() as session:
            statement = select(OutboxRow).order_by(OutboxRow.id.desc()).limit(limit)
            if state is not None:
                statement = statement.where(OutboxRow.state == state)
            return [
                {
                    "outbox_id": row.id,
                    "message_id": row.message_id,
                    "instrument": row.instrument,
                    "lis": row.lis,
                    "kind": row.kind,
                    "control_id": row.control_id,
                    "state": row.state,
                    "attempts": row.attempts,
                    "created_at": utc(row.created_at).isoformat(),  # type: ignore[union-attr]
                    "last_error": row.last_error,
                }
                for row in session.scalars(statement)
            ]

    def resend(self, outbox_id: int, author: str, reason: str, at: datetime) -> int:
        """Send a rejected or delivered message again; returns the outbox id that will go."""
        with self._sessions.begin() as session:
            row = session.get(OutboxRow, outbox_id)
            if row is None:
                raise OutboxActionRefused(f"no outbox message {outbox_id}")
            if row.state == "rejected":
                row.state, row.next_attempt_at, row.last_error = "pending", at, None
                going = row.id
            elif row.state == "delivered":
                again = OutboxRow(
                    message_id=row.message_id,
                    lis=row.lis,
                    instrument=row.instrument,
                    control_id=new_control_id(),
                    state="pending",
                    created_at=at,
                    next_attempt_at=at,
                    attempts=0,
                    kind=row.kind,
                )
                session.add(again)
                session.flush()
                going = again.id
            else:
                raise OutboxActionRefused(
                    f"outbox message {outbox_id} is {row.state}: only rejected or delivered "
                    "messages can be sent again"
                )
            _audit(session, at, author, "outbox_resend", row, reason, going)
            return going

    def release(self, outbox_id: int, author: str, reason: str, at: datetime) -> None:
        """Let a quarantined message go to the LIS, its results held (never auto-validated)."""
        with self._sessions.begin() as session:
            row = session.get(OutboxRow, outbox_id)
            if row is None:
                raise OutboxActionRefused(f"no outbox message {outbox_id}")
            if row.state != "quarantined":
                raise OutboxActionRefused(
                    f"outbox message {outbox_id} is {row.state}, not quarantined"
                )
            row.state, row.next_attempt_at = "pending", at
            session.execute(
                update(ResultRow)
                .where(ResultRow.message_id == row.message_id, ResultRow.decision == "quarantined")
                .values(decision="held")
            )
            _audit(session, at, author, "outbox_release", row, reason, row.id)


def _audit(
    session: Session,
    at: datetime,
    author: str,
    action: str,
    row: OutboxRow,
    reason: str,
    going: int,
) -> None:
    session.add(
        AuditRow(
            at=at,
            actor=author,
            action=action,
            subject=f"outbox:{row.id}",
            detail={"reason": reason, "message_id": row.message_id, "outbox_id": going},
        )
    )
