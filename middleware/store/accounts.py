"""People in the store: console accounts and their sessions, and the results a biologist signs.

Accounts (GBUI II-3, the eCRF audit-trail note):
- a password is kept only as an argon2 hash; a person proves who they are to log in and again
  to sign (electronic signature = password re-entry);
- `max_failed` unsuccessful attempts in a row (3, GBUI II-3) lock the account; only an admin
  unlocks it, and the lock, the failures and the unlock are all in the audit trail;
- one active session per account: a new login ends the previous session;
- an account is never deleted (its name is the author of audit rows): it can be disabled.

Sessions are kept by the SHA-256 of their token, never the token itself, so a copy of the
database does not let anyone take over a session.

Review (GBUI V-3): a held result validated or rejected by a biologist takes that decision and
the biologist's name; the LIS is told with a correction message ("annule et remplace"), unless
the result's own message has not been built yet, in which case it leaves with the new decision.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Boolean, DateTime, ForeignKey, Integer, String, func, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from middleware.store.qc import QcStore
from middleware.store.tables import AuditRow, Base, ResultRow, SpecimenRow
from middleware.store.times import utc
from middleware.validation.indices import INDEX_CODES, indices_of

__all__ = [
    "ROLES",
    "AccountError",
    "AccountStore",
    "LoginOutcome",
    "ReviewStore",
    "SessionRow",
    "SessionView",
    "SignOutcome",
    "UserRow",
]

ROLES = ("technician", "biologist", "admin")
MIN_PASSWORD = 8  # GBUI VII-3: at least 8 characters

_hasher = PasswordHasher()
# Verified against when the name is unknown, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


class UserRow(Base):
    """A person who may use the console. `status`: active, locked (too many failed attempts:
    an admin unlocks) or disabled (never deleted: audit rows name it)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16))
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(128))
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SessionRow(Base):
    """One console session: open until logout, idle expiry, a newer login or the account's
    lock or disabling (`ended_at` and `ended_reason` then say when and why)."""

    __tablename__ = "sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_reason: Mapped[str | None] = mapped_column(String(16))
    is_open: Mapped[bool] = mapped_column(Boolean, default=True)


class AccountError(ValueError):
    """The account action does not apply (unknown name, bad role, weak password...)."""


@dataclass(frozen=True, slots=True)
class LoginOutcome:
    """A login attempt: `token` and `csrf` when it succeeded, else `refused` says why
    (`bad_credentials`, `locked`, `disabled`)."""

    name: str
    role: str = ""
    token: str = ""
    csrf: str = ""
    refused: str = ""


@dataclass(frozen=True, slots=True)
class SessionView:
    """An open session as the web layer sees it on each request."""

    session_id: int
    user: str
    role: str
    csrf: str
    last_seen_at: datetime


@dataclass(frozen=True, slots=True)
class SignOutcome:
    """What a signature changed: results decided and correction messages queued."""

    results: int
    corrections: int


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"a password has at least {MIN_PASSWORD} characters")


def _audit(
    session: Session, at: datetime, actor: str, action: str, subject: str, **detail: Any
) -> None:
    session.add(AuditRow(at=at, actor=actor, action=action, subject=subject, detail=detail))


class AccountStore:
    """Mixed into `Store`: accounts, logins and sessions."""

    _sessions: sessionmaker[Session]

    # --- accounts --------------------------------------------------------------------------

    def create_user(self, name: str, role: str, password: str, author: str, at: datetime) -> int:
        """A new active account; AccountError if the name is taken or the role unknown."""
        name = name.strip()
        if not name or len(name) > 64:
            raise AccountError("a user name has 1 to 64 characters")
        if role not in ROLES:
            raise AccountError(f"role must be one of {', '.join(ROLES)}")
        _check_password(password)
        digest = _hasher.hash(password)
        with self._sessions.begin() as session:
            if session.scalar(select(UserRow.id).where(UserRow.name == name)) is not None:
                raise AccountError(f"user {name!r} exists (accounts are never deleted)")
            row = UserRow(
                name=name,
                role=role,
                password_hash=digest,
                status="active",
                failed_logins=0,
                created_at=at,
                created_by=author,
                changed_at=at,
            )
            session.add(row)
            session.flush()
            _audit(session, at, author, "user_created", f"user:{name}", role=role)
            return row.id

    def has_admin(self) -> bool:
        with self._sessions() as session:
            found = session.scalar(
                select(UserRow.id).where(UserRow.role == "admin", UserRow.status == "active")
            )
            return found is not None

    def users(self) -> list[dict[str, Any]]:
        """Every account, with the time of its newest session."""
        with self._sessions() as session:
            last = (
                select(SessionRow.user_id, func.max(SessionRow.created_at).label("at"))
                .group_by(SessionRow.user_id)
                .subquery()
            )
            rows = session.execute(
                select(UserRow, last.c.at)
                .outerjoin(last, last.c.user_id == UserRow.id)
                .order_by(UserRow.name)
            ).all()
            return [
                {
                    "name": row.name,
                    "role": row.role,
                    "status": row.status,
                    "failed_logins": row.failed_logins,
                    "created_at": utc(row.created_at).isoformat(),  # type: ignore[union-attr]
                    "created_by": row.created_by,
                    "last_login_at": utc(at).isoformat() if at is not None else None,  # type: ignore[union-attr]
                }
                for row, at in rows
            ]

    def unlock_user(self, name: str, author: str, at: datetime) -> None:
        """Give a locked (or disabled) account its access back: only an admin does this."""
        with self._sessions.begin() as session:
            row = self._user(session, name)
            previous = row.status
            row.status, row.failed_logins, row.changed_at = "active", 0, at
            _audit(session, at, author, "user_unlocked", f"user:{name}", was=previous)

    def disable_user(self, name: str, author: str, reason: str, at: datetime) -> None:
        """No more access for this account, its sessions ended; the account stays."""
        with self._sessions.begin() as session:
            row = self._user(session, name)
            row.status, row.changed_at = "disabled", at
            self._end_sessions(session, row.id, at, "disabled")
            _audit(session, at, author, "user_disabled", f"user:{name}", reason=reason)

    def set_password(self, name: str, password: str, author: str, at: datetime) -> None:
        _check_password(password)
        digest = _hasher.hash(password)
        with self._sessions.begin() as session:
            row = self._user(session, name)
            row.password_hash, row.changed_at = digest, at
            _audit(session, at, author, "password_changed", f"user:{name}")

    def change_own_password(
        self,
        name: str,
        current: str,
        new: str,
        at: datetime,
        keep_session: int,
        max_failed: int = 3,
    ) -> str:
        """A signed-in person changes their own password, proving it with the current one.
        "" when done: the account's other sessions are ended, `keep_session` (the one asking)
        stays open. Else why not (`bad_credentials`, `locked`...): nothing changed.

        A wrong current password counts as a failed attempt, like a wrong signature, and may
        lock the account (GBUI II-3): otherwise whoever finds a session left open on a ward
        workstation could try passwords on this form without limit, then own the account. A
        lock ends every session, this one too. AccountError (nothing counted) when the new
        password breaks the policy of `labgate user add` or repeats the current one."""
        _check_password(new)
        if new == current:
            raise AccountError("the new password must differ from the current one")
        digest = _hasher.hash(new)  # argon2 is slow on purpose: not inside the transaction
        with self._sessions.begin() as session:
            row, refused = self._verify(session, name, current, at, max_failed, "password_change")
            if row is None:
                return refused
            row.password_hash, row.changed_at = digest, at
            others = session.scalars(
                select(SessionRow).where(
                    SessionRow.user_id == row.id,
                    SessionRow.is_open,
                    SessionRow.id != keep_session,
                )
            ).all()
            for other in others:
                other.is_open, other.ended_at, other.ended_reason = False, at, "password_changed"
            _audit(
                session,
                at,
                row.name,
                "password_changed",
                f"user:{row.name}",
                by="self",
                sessions_ended=len(others),
            )
            return ""

    # --- logging in and signing ------------------------------------------------------------

    def login(
        self, name: str, password: str, at: datetime, address: str = "", max_failed: int = 3
    ) -> LoginOutcome:
        """Check a password and open a session (ending the account's other one). Every
        attempt is audited; the `max_failed`-th failure in a row locks the account."""
        with self._sessions.begin() as session:
            row, refused = self._verify(session, name, password, at, max_failed, "login")
            if row is None:
                return LoginOutcome(name=name, refused=refused)
            self._end_sessions(session, row.id, at, "replaced")
            token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
            session.add(
                SessionRow(
                    token_sha256=token_digest(token),
                    user_id=row.id,
                    csrf=csrf,
                    address=address[:64],
                    created_at=at,
                    last_seen_at=at,
                    is_open=True,
                )
            )
            _audit(session, at, row.name, "login", f"user:{row.name}", address=address)
            return LoginOutcome(name=row.name, role=row.role, token=token, csrf=csrf)

    def check_signature(self, name: str, password: str, at: datetime, max_failed: int = 3) -> str:
        """An electronic signature: the password typed again. "" when it is right, else why
        not; a wrong signature counts as a failed attempt (and may lock the account)."""
        with self._sessions.begin() as session:
            row, refused = self._verify(session, name, password, at, max_failed, "signature")
            return "" if row is not None else refused

    def _verify(
        self,
        session: Session,
        name: str,
        password: str,
        at: datetime,
        max_failed: int,
        what: str,
    ) -> tuple[UserRow | None, str]:
        row = session.scalars(select(UserRow).where(UserRow.name == name)).first()
        good: bool
        try:
            good = _hasher.verify(row.password_hash if row else _DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            good = False
        subject = f"user:{name[:64]}"
        if row is None:
            _audit(session, at, name[:128], f"{what}_failed", subject, why="unknown user")
            return None, "bad_credentials"
        if row.status != "active":
            _audit(session, at, row.name, f"{what}_refused", subject, why=row.status)
            return None, row.status
        if not good:
            row.failed_logins += 1
            _audit(session, at, row.name, f"{what}_failed", subject, attempt=row.failed_logins)
            if row.failed_logins >= max_failed:
                row.status, row.changed_at = "locked", at
                self._end_sessions(session, row.id, at, "locked")
                _audit(session, at, "labgate", "user_locked", subject, failures=row.failed_logins)
                return None, "locked"
            return None, "bad_credentials"
        row.failed_logins = 0
        return row, ""

    # --- sessions --------------------------------------------------------------------------

    def session_for(self, token: str) -> SessionView | None:
        """The open session of this token, if its account is still active (read-only: the
        caller decides about idle expiry and touches the session)."""
        if not token:
            return None
        with self._sessions() as session:
            found = session.execute(
                select(SessionRow, UserRow)
                .join(UserRow, UserRow.id == SessionRow.user_id)
                .where(SessionRow.token_sha256 == token_digest(token), SessionRow.is_open)
            ).first()
            if found is None:
                return None
            row, user = found
            if user.status != "active":
                return None
            return SessionView(row.id, user.name, user.role, row.csrf, utc(row.last_seen_at))  # type: ignore[arg-type]

    def touch_session(self, session_id: int, at: datetime) -> None:
        with self._sessions.begin() as session:
            session.execute(
                update(SessionRow)
                .where(SessionRow.id == session_id, SessionRow.is_open)
                .values(last_seen_at=at)
            )

    def end_session(self, session_id: int, at: datetime, reason: str) -> None:
        """Close a session: `logout` or `expired` (idle too long), audited."""
        with self._sessions.begin() as session:
            row = session.get(SessionRow, session_id)
            if row is None or not row.is_open:
                return
            user = session.get(UserRow, row.user_id)
            row.is_open, row.ended_at, row.ended_reason = False, at, reason
            name = user.name if user else "?"
            _audit(session, at, name, f"session_{reason}", f"user:{name}")

    # --- the audit trail, as the console filters it --------------------------------------

    def audit_search(
        self,
        actor: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 200,
    ) -> list[dict[str, Any]]:
        """Audit rows newest first; `action` matches a prefix (`result_`, `login`...)."""
        with self._sessions() as session:
            statement = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
            if actor:
                statement = statement.where(AuditRow.actor == actor)
            if action:
                statement = statement.where(AuditRow.action.startswith(action, autoescape=True))
            if since is not None:
                statement = statement.where(AuditRow.at >= since)
            if until is not None:
                statement = statement.where(AuditRow.at <= until)
            return [
                {
                    "id": row.id,
                    "at": _iso(row.at),
                    "actor": row.actor,
                    "action": row.action,
                    "subject": row.subject,
                    "detail": row.detail,
                }
                for row in session.scalars(statement)
            ]

    @staticmethod
    def _user(session: Session, name: str) -> UserRow:
        row = session.scalars(select(UserRow).where(UserRow.name == name)).first()
        if row is None:
            raise AccountError(f"no user {name!r}")
        return row

    @staticmethod
    def _end_sessions(session: Session, user_id: int, at: datetime, reason: str) -> None:
        session.execute(
            update(SessionRow)
            .where(SessionRow.user_id == user_id, SessionRow.is_open)
            .values(is_open=False, ended_at=at, ended_reason=reason)
        )


def _delta(value: str | None, previous: str | None) -> str | None:
    try:
        if value is None or previous is None:
            return None
        change = Decimal(value) - Decimal(previous)
    except (InvalidOperation, ValueError):
        return None
    return f"{change:+}"


class ReviewStore:
    """Mixed into `Store`: the biologists' review queue and their signed decisions."""

    _sessions: sessionmaker[Session]

    def results_page(
        self,
        decision: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
        instrument: str | None = None,
    ) -> list[dict[str, Any]]:
        """Patient results newest first (optionally of one decision), each with everything a
        reviewer weighs: reasons, flags, the previous value and the delta, the rule set."""
        with self._sessions() as session:
            statement = (
                select(ResultRow, SpecimenRow.patient_id, SpecimenRow.origin, SpecimenRow.location)
                .join(SpecimenRow, SpecimenRow.id == ResultRow.specimen_row_id)
                .where(ResultRow.is_qc.is_(False))
                .order_by(ResultRow.id.desc())
                .limit(limit)
            )
            if decision is not None:
                statement = statement.where(ResultRow.decision == decision)
            if before_id is not None:
                statement = statement.where(ResultRow.id < before_id)
            if instrument:
                statement = statement.where(ResultRow.instrument == instrument)
            found = session.execute(statement).all()
            indices = self._specimen_indices(session, {row.specimen_row_id for row, *_ in found})
            return [
                {
                    "id": row.id,
                    "message_id": row.message_id,
                    "instrument": row.instrument,
                    "specimen_id": row.specimen_id,
                    "patient_id": patient_id,
                    "origin": origin,
                    "location": location,
                    "test": row.lis_code or row.test_code,
                    "name": row.test_name,
                    "value": row.value,
                    "unit": row.units,
                    "reference_range": row.reference_range,
                    "flags": list(row.flags or []),
                    "normalized_flags": list(row.normalized_flags or []),
                    "comments": list(row.comments or []),
                    "dilution": row.dilution or "",
                    "rerun": bool(row.rerun),
                    # The specimen's H/I/L (validation/indices.py), apart from the reasons: a
                    # `specimen_index` reason says a limit was passed, these say by how much.
                    # GBUI IV-3: the specimen's aspect is among what the reviewer must see.
                    "indices": indices.get(row.specimen_row_id, {}),
                    "measured_at": _iso(row.measured_at),
                    "decision": row.decision,
                    "reasons": list(row.reasons or []),
                    "critical": "critical_value" in (row.reasons or []),
                    "ruleset": row.ruleset,
                    "biologist": row.biologist,
                    "previous_value": row.previous_value,
                    "previous_unit": row.previous_unit,
                    "previous_at": _iso(row.previous_at),
                    "delta": _delta(row.numeric, row.previous_value),
                    "delivered_at": _iso(row.delivered_at),
                }
                for row, patient_id, origin, location in found
            ]

    @staticmethod
    def _specimen_indices(
        session: Session, specimen_row_ids: set[int]
    ) -> dict[int, dict[str, str]]:
        """specimen row id -> its serum indices, from the specimen's index results."""
        if not specimen_row_ids:
            return {}
        codes = list(INDEX_CODES)
        rows = session.execute(
            select(
                ResultRow.specimen_row_id, ResultRow.lis_code, ResultRow.test_code, ResultRow.value
            )
            .where(
                ResultRow.specimen_row_id.in_(sorted(specimen_row_ids)),
                func.upper(ResultRow.lis_code).in_(codes)
                | func.upper(ResultRow.test_code).in_(codes),
            )
            .order_by(ResultRow.id)
        ).all()
        by_specimen: dict[int, list[tuple[str, str, str]]] = {}
        for specimen_row_id, lis_code, test_code, value in rows:
            by_specimen.setdefault(specimen_row_id, []).append((lis_code, test_code, value))
        return {key: indices_of(results) for key, results in by_specimen.items()}

    def count_held(self) -> int:
        with self._sessions() as session:
            return int(
                session.scalar(
                    select(func.count()).select_from(ResultRow).where(ResultRow.decision == "held")
                )
                or 0
            )

    def sign_results(
        self,
        result_ids: Sequence[int],
        decision: str,
        biologist: str,
        comment: str,
        lis: str,
        at: datetime,
    ) -> SignOutcome:
        """A biologist's signed decision on held results: `validated` or `rejected`, with the
        biologist's name on each result, one audit row per result, and the LIS told. Results
        no longer held (decided meanwhile by someone else) are left alone."""
        if decision not in {"validated", "rejected"}:
            raise ValueError(f"unknown decision {decision!r}")
        with self._sessions.begin() as session:
            rows = session.scalars(
                select(ResultRow)
                .where(ResultRow.id.in_(list(result_ids)), ResultRow.decision == "held")
                .order_by(ResultRow.id)
            ).all()
            touched: set[str] = set()
            for row in rows:
                row.decision, row.biologist = decision, biologist
                touched.add(row.message_id)
                _audit(
                    session,
                    at,
                    biologist,
                    f"result_{decision}",
                    f"result:{row.id}",
                    specimen_id=row.specimen_id,
                    test=row.lis_code or row.test_code,
                    value=row.value,
                    reasons=list(row.reasons or []),
                    comment=comment,
                    signature="password re-entered",
                )
            corrections = sum(
                QcStore._correct(session, message_id, lis, at) for message_id in sorted(touched)
            )
            return SignOutcome(len(rows), corrections)


def _iso(moment: datetime | None) -> str | None:
    value = utc(moment)
    return value.isoformat() if value is not None else None
