"""What people decide about labgate's behaviour, kept with who and when: the active rule-set
version and its change records (GBUI XI-2), the auto-validation switches (GBUI V-3), the
blocked devices (GBUI XIII), and the audit trail of all of them (GBUI IX, the eCRF audit note).

Every change writes an `audit` row in the same transaction, and the id of the newest audit row
is the daemon's cue to reload (`governance_stamp`): a switch thrown from the command line or the
API takes effect within the daemon's polling interval, without a restart.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from middleware.store.tables import (
    AuditRow,
    ChangeRecordRow,
    DeviceRow,
    RuleSetVersionRow,
    SwitchRow,
)
from middleware.store.times import utc

__all__ = ["ActivationRecord", "GovernanceState", "GovernanceStore", "RuleSetVersion"]


@dataclass(frozen=True, slots=True)
class RuleSetVersion:
    """One stored version of a rule set (its YAML text, as activated)."""

    version_id: int
    name: str
    version: str
    biologist: str
    source: str
    text: str
    sha256: str
    created_at: datetime
    created_by: str
    active: bool


@dataclass(frozen=True, slots=True)
class ActivationRecord:
    """What an activation attempt found: GBUI XI-2's expected and obtained results."""

    author: str
    change: str
    expected: dict[str, Any]
    obtained: dict[str, Any]
    accepted: bool
    anomaly: str | None = None
    probation_days: int = 0


@dataclass(frozen=True, slots=True)
class GovernanceState:
    """Everything the live pipeline needs from people's decisions, read at once."""

    stamp: int
    active: RuleSetVersion | None
    autovalidation: bool
    disabled_biologists: frozenset[str]
    blocked_devices: frozenset[str]


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _version(row: RuleSetVersionRow) -> RuleSetVersion:
    return RuleSetVersion(
        version_id=row.id,
        name=row.name,
        version=row.version,
        biologist=row.biologist,
        source=row.source,
        text=row.text,
        sha256=row.sha256,
        created_at=utc(row.created_at),  # type: ignore[arg-type]
        created_by=row.created_by,
        active=row.active,
    )


class GovernanceStore:
    """Mixed into `Store`: rule-set versions, switches, devices and the audit trail."""

    _sessions: sessionmaker[Session]

    # --- reading ---------------------------------------------------------------------------

    def governance_stamp(self) -> int:
        """The id of the newest audit row: changes whenever a person changed anything here."""
        with self._sessions() as session:
            return int(session.scalar(select(func.max(AuditRow.id))) or 0)

    def governance_state(self) -> GovernanceState:
        with self._sessions() as session:
            stamp = int(session.scalar(select(func.max(AuditRow.id))) or 0)
            active = session.scalars(
                select(RuleSetVersionRow).where(RuleSetVersionRow.active.is_(True)).limit(1)
            ).first()
            switches = session.scalars(select(SwitchRow)).all()
            blocked = session.scalars(select(DeviceRow.name).where(DeviceRow.blocked.is_(True)))
            return GovernanceState(
                stamp=stamp,
                active=_version(active) if active is not None else None,
                autovalidation=not any(
                    row.scope == "global" and not row.enabled for row in switches
                ),
                disabled_biologists=frozenset(
                    row.name for row in switches if row.scope == "biologist" and not row.enabled
                ),
                blocked_devices=frozenset(blocked),
            )

    def ruleset_versions(self) -> list[RuleSetVersion]:
        """Every stored version, oldest first."""
        with self._sessions() as session:
            rows = session.scalars(select(RuleSetVersionRow).order_by(RuleSetVersionRow.id))
            return [_version(row) for row in rows]

    def ruleset_version(self, version_id: int) -> RuleSetVersion | None:
        with self._sessions() as session:
            row = session.get(RuleSetVersionRow, version_id)
            return _version(row) if row is not None else None

    def change_records(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest change records first, as plain data for the CLI and the API."""
        with self._sessions() as session:
            rows = session.scalars(
                select(ChangeRecordRow).order_by(ChangeRecordRow.id.desc()).limit(limit)
            )
            return [
                {
                    "id": row.id,
                    "at": utc(row.at).isoformat(),  # type: ignore[union-attr]
                    "author": row.author,
                    "action": row.action,
                    "change": row.change,
                    "ruleset_version_id": row.ruleset_version_id,
                    "expected": row.expected,
                    "obtained": row.obtained,
                    "accepted": row.accepted,
                    "anomaly": row.anomaly,
                    "probation_days": row.probation_days,
                }
                for row in rows
            ]

    def audit_trail(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest audit rows first."""
        with self._sessions() as session:
            rows = session.scalars(select(AuditRow).order_by(AuditRow.id.desc()).limit(limit))
            return [
                {
                    "id": row.id,
                    "at": utc(row.at).isoformat(),  # type: ignore[union-attr]
                    "actor": row.actor,
                    "action": row.action,
                    "subject": row.subject,
                    "detail": row.detail,
                }
                for row in rows
            ]

    # --- changing --------------------------------------------------------------------------

    def record_activation(
        self,
        *,
        name: str,
        version: str,
        biologist: str,
        source: str,
        text: str,
        record: ActivationRecord,
        at: datetime,
    ) -> tuple[int | None, int]:
        """Keep the change record of an activation attempt and, when it was accepted, make the
        text the active version (a new version row, or the existing one with the same text).
        Returns (version id or None when refused, change record id)."""
        with self._sessions.begin() as session:
            version_id: int | None = None
            if record.accepted:
                digest = text_digest(text)
                row = session.scalars(
                    select(RuleSetVersionRow)
                    .where(
                        RuleSetVersionRow.sha256 == digest,
                        RuleSetVersionRow.name == name,
                        RuleSetVersionRow.version == version,
                    )
                    .limit(1)
                ).first()
                if row is None:
                    row = RuleSetVersionRow(
                        name=name,
                        version=version,
                        biologist=biologist,
                        source=source,
                        text=text,
                        sha256=digest,
                        created_at=at,
                        created_by=record.author,
                        active=False,
                    )
                    session.add(row)
                    session.flush()
                self._make_active(session, row.id)
                version_id = row.id
            change_id = self._change_record(session, "activate", record, version_id, at)
            self._audit(
                session,
                at,
                record.author,
                "ruleset_activated" if record.accepted else "ruleset_refused",
                f"{name} {version}",
                {"change_record": change_id, "version_id": version_id, "change": record.change},
            )
            return version_id, change_id

    def rollback(self, version_id: int, author: str, reason: str, at: datetime) -> int:
        """Activate an earlier version again (GBUI XI-2: "retour aux conditions antérieures");
        returns the change record id. KeyError if there is no such version."""
        with self._sessions.begin() as session:
            row = session.get(RuleSetVersionRow, version_id)
            if row is None:
                raise KeyError(version_id)
            self._make_active(session, version_id)
            record = ActivationRecord(
                author=author,
                change=reason,
                expected={"version_id": version_id},
                obtained={"active": f"{row.name} {row.version}"},
                accepted=True,
            )
            change_id = self._change_record(session, "rollback", record, version_id, at)
            self._audit(
                session,
                at,
                author,
                "ruleset_rolled_back",
                f"{row.name} {row.version}",
                {"change_record": change_id, "version_id": version_id, "reason": reason},
            )
            return change_id

    def set_switch(
        self, scope: str, name: str, enabled: bool, author: str, reason: str, at: datetime
    ) -> None:
        """Switch auto-validation on or off, globally (`scope` "global", `name` "") or for one
        responsible biologist (`scope` "biologist")."""
        if scope not in {"global", "biologist"}:
            raise ValueError(f"unknown switch scope {scope!r}")
        with self._sessions.begin() as session:
            row = session.scalars(
                select(SwitchRow).where(SwitchRow.scope == scope, SwitchRow.name == name)
            ).first()
            if row is None:
                row = SwitchRow(scope=scope, name=name)
                session.add(row)
            row.enabled, row.changed_at, row.changed_by, row.reason = enabled, at, author, reason
            action = "autovalidation_on" if enabled else "autovalidation_off"
            subject = "global" if scope == "global" else f"biologist:{name}"
            self._audit(session, at, author, action, subject, {"reason": reason})

    def set_device_blocked(
        self, name: str, blocked: bool, author: str, reason: str, at: datetime
    ) -> None:
        """Block or unblock a device; blocked devices have their results quarantined."""
        with self._sessions.begin() as session:
            row = session.scalars(select(DeviceRow).where(DeviceRow.name == name)).first()
            if row is None:
                row = DeviceRow(name=name)
                session.add(row)
            row.blocked, row.reason, row.changed_at, row.changed_by = blocked, reason, at, author
            action = "device_blocked" if blocked else "device_unblocked"
            self._audit(session, at, author, action, f"device:{name}", {"reason": reason})

    # --- shared ----------------------------------------------------------------------------

    @staticmethod
    def _make_active(session: Session, version_id: int) -> None:
        session.execute(
            update(RuleSetVersionRow).where(RuleSetVersionRow.id != version_id).values(active=False)
        )
        session.execute(
            update(RuleSetVersionRow).where(RuleSetVersionRow.id == version_id).values(active=True)
        )

    @staticmethod
    def _change_record(
        session: Session,
        action: str,
        record: ActivationRecord,
        version_id: int | None,
        at: datetime,
    ) -> int:
        row = ChangeRecordRow(
            at=at,
            author=record.author,
            action=action,
            change=record.change,
            ruleset_version_id=version_id,
            expected=record.expected,
            obtained=record.obtained,
            accepted=record.accepted,
            anomaly=record.anomaly,
            probation_days=record.probation_days,
        )
        session.add(row)
        session.flush()
        return row.id

    @staticmethod
    def _audit(
        session: Session,
        at: datetime,
        actor: str,
        action: str,
        subject: str,
        detail: dict[str, Any],
    ) -> None:
        session.add(AuditRow(at=at, actor=actor, action=action, subject=subject, detail=detail))
