"""The database schema (SQLAlchemy 2 declarative). Every change goes through an Alembic migration
in `migrations/versions/`; `tests/middleware/test_store.py` checks the two agree.

One id runs through everything: `messages.message_id` links the raw bytes an analyser sent to the
specimens and results decoded from them, to the outbox row that carries them to the LIS and to
every transmission of it with the LIS's acknowledgement (GBUI VII-2 "archivage des transmissions",
GBUI IX traceability).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AlarmRow",
    "AuditRow",
    "Base",
    "ChangeRecordRow",
    "DeviceRow",
    "MessageRow",
    "OrderRow",
    "OutboxRow",
    "ReagentLotRow",
    "ResultRow",
    "RuleSetVersionRow",
    "SpecimenRow",
    "SwitchRow",
    "TraceRow",
    "TransmissionRow",
]


class Base(DeclarativeBase):
    """Declarative base of every labgate table."""


class MessageRow(Base):
    """One message as received from an analyser, byte for byte, whatever became of it."""

    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[str] = mapped_column(String(36), unique=True)
    connection: Mapped[str] = mapped_column(String(64), index=True)
    protocol: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    # stored: decoded and its results kept; refused: kept with the reason, nothing forwarded.
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    # SHA-256 of the E1394 text: an analyser resending a message after a lost ACK is recognised.
    content_hash: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (Index("ix_messages_duplicate", "connection", "content_hash"),)


class SpecimenRow(Base):
    """One specimen of a message (an O record) and the patient it belongs to."""

    __tablename__ = "specimens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.message_id"), index=True)
    instrument: Mapped[str] = mapped_column(String(64))
    specimen_id: Mapped[str] = mapped_column(String(64), index=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    family_name: Mapped[str] = mapped_column(String(128))
    given_name: Mapped[str] = mapped_column(String(128))
    birth_date: Mapped[str] = mapped_column(String(10))  # ISO date or ""
    sex: Mapped[str] = mapped_column(String(8))
    collected_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    is_qc: Mapped[bool] = mapped_column(Boolean)
    # lab, or poc for a point-of-care device, with where it stands (a ward): every POC result
    # reaches the LIS marked with its origin (GBUI XIII).
    origin: Mapped[str] = mapped_column(String(8), default="lab")
    location: Mapped[str] = mapped_column(String(128), default="")


class ResultRow(Base):
    """One result with the decision taken on it (the validation issue deepens the pipeline)."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    specimen_row_id: Mapped[int] = mapped_column(ForeignKey("specimens.id"), index=True)
    message_id: Mapped[str] = mapped_column(String(36), index=True)
    instrument: Mapped[str] = mapped_column(String(64))
    specimen_id: Mapped[str] = mapped_column(String(64))
    sequence: Mapped[int] = mapped_column(Integer)
    test_code: Mapped[str] = mapped_column(String(64))
    test_name: Mapped[str] = mapped_column(String(128))
    value: Mapped[str] = mapped_column(Text)
    numeric: Mapped[str | None] = mapped_column(String(64))  # Decimal kept exact as text
    comparator: Mapped[str | None] = mapped_column(String(2))
    units: Mapped[str] = mapped_column(String(32))
    reference_range: Mapped[str] = mapped_column(String(64))
    flags: Mapped[list[str]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(4))
    measured_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    comments: Mapped[list[str]] = mapped_column(JSON)
    is_qc: Mapped[bool] = mapped_column(Boolean)
    decision: Mapped[str] = mapped_column(String(16))
    reasons: Mapped[list[str]] = mapped_column(JSON)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lis_code: Mapped[str] = mapped_column(String(64), default="")
    normalized_flags: Mapped[list[str]] = mapped_column(JSON, default=list)
    qc_level: Mapped[str] = mapped_column(String(32), default="")
    qc_lot: Mapped[str] = mapped_column(String(64), default="")
    dilution: Mapped[str] = mapped_column(String(32), default="")
    rerun: Mapped[bool] = mapped_column(Boolean, default=False)
    # The rule set that decided (name and version) and its responsible biologist: an
    # auto-validated result names both to the LIS (GBUI V-3, "validé électroniquement").
    ruleset: Mapped[str] = mapped_column(String(128), default="")
    biologist: Mapped[str] = mapped_column(String(128), default="")
    # The patient's previous result the delta check compared with, kept to be shown to the
    # biologist who reviews a held result and sent with it to the LIS (the issue: "the previous
    # value travels with the result").
    previous_value: Mapped[str | None] = mapped_column(String(64))
    previous_unit: Mapped[str | None] = mapped_column(String(32))
    previous_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class OutboxRow(Base):
    """A message owed to the LIS. It leaves this table's `pending` state only on the LIS's AA
    (`delivered`) or on an AE/AR that a person must look at (`rejected`); GBUI VII-2 requires
    automatic and complete retransmission until then."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.message_id"), index=True)
    lis: Mapped[str] = mapped_column(String(64))
    instrument: Mapped[str] = mapped_column(String(64))
    control_id: Mapped[str] = mapped_column(String(20), unique=True)
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The exact bytes sent at the first attempt; every retransmission repeats them (same MSH-10),
    # so the LIS never sees two different messages for one result.
    payload: Mapped[bytes | None] = mapped_column(LargeBinary)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # results: the message as the analyser gave it; correction: the same results sent again
    # with OBX-11 "C" because labgate changed their decision after they left ("annule et
    # remplace", GBUI VI), e.g. a late QC rejection that holds them.
    kind: Mapped[str] = mapped_column(String(16), default="results")
    # Several gateways on one PostgreSQL store: the gateway that claimed this message for
    # sending, and until when its claim holds (a crashed gateway's claim lapses).
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_outbox_due", "lis", "state", "id"),)


class TransmissionRow(Base):
    """One attempt to hand an outbox message to the LIS, with both directions' bytes."""

    __tablename__ = "transmissions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    outbox_id: Mapped[int] = mapped_column(ForeignKey("outbox.id"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    sent_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    raw_out: Mapped[bytes] = mapped_column(LargeBinary)
    raw_in: Mapped[bytes | None] = mapped_column(LargeBinary)
    ack_code: Mapped[str | None] = mapped_column(String(2))
    ack_control_id: Mapped[str | None] = mapped_column(String(64))
    acked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)


class OrderRow(Base):
    """Tests requested for a specimen, to download to an analyser or to answer its query.

    Until the HL7 issue brings orders from the LIS, they come from the API (`POST /api/orders`).
    `instrument` empty = any analyser may be given this order."""

    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    specimen_id: Mapped[str] = mapped_column(String(64), index=True)
    instrument: Mapped[str] = mapped_column(String(64), index=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    family_name: Mapped[str] = mapped_column(String(128))
    given_name: Mapped[str] = mapped_column(String(128))
    birth_date: Mapped[str] = mapped_column(String(10))
    sex: Mapped[str] = mapped_column(String(8))
    tests: Mapped[list[str]] = mapped_column(JSON)
    priority: Mapped[str] = mapped_column(String(2))
    action: Mapped[str] = mapped_column(String(2))
    collected_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # pending: not yet given to an analyser; sent: downloaded or given in a query answer;
    # cancelled: withdrawn before it was sent; refused: the analyser's driver cannot express it.
    state: Mapped[str] = mapped_column(String(16))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)


class TraceRow(Base):
    """Bytes and protocol events worth keeping that are not a whole message: a partial message
    committed before its frame was acknowledged, a refused frame and why."""

    __tablename__ = "trace"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    connection: Mapped[str] = mapped_column(String(64), index=True)
    direction: Mapped[str] = mapped_column(String(3))  # in / out
    kind: Mapped[str] = mapped_column(String(32))
    message_id: Mapped[str | None] = mapped_column(String(36), index=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    detail: Mapped[str | None] = mapped_column(Text)


class RuleSetVersionRow(Base):
    """One activated version of a biologist's rule set, its YAML kept word for word so that any
    earlier version can be activated again (GBUI XI-2: "retour aux conditions antérieures")."""

    __tablename__ = "ruleset_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    biologist: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(512))  # the file it was read from
    text: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(128))
    # Exactly one row is active at a time (or none: nothing is auto-validated).
    active: Mapped[bool] = mapped_column(Boolean, default=False)


class ChangeRecordRow(Base):
    """The "fiche de contrôle initial" of GBUI XI-2 for each activation attempt, accepted or
    not: when, who, what changed, expected and obtained results (embedded cases, replay), the
    verdict, and the delay after which the change counts as definitively validated."""

    __tablename__ = "change_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    author: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))  # activate / rollback
    change: Mapped[str] = mapped_column(Text)
    ruleset_version_id: Mapped[int | None] = mapped_column(ForeignKey("ruleset_versions.id"))
    expected: Mapped[dict[str, object]] = mapped_column(JSON)
    obtained: Mapped[dict[str, object]] = mapped_column(JSON)
    accepted: Mapped[bool] = mapped_column(Boolean)
    anomaly: Mapped[str | None] = mapped_column(Text)
    probation_days: Mapped[int] = mapped_column(Integer, default=0)


class SwitchRow(Base):
    """Auto-validation switched on or off, globally (`scope` global, `name` "") or for one
    responsible biologist (`scope` biologist). Absent = on. Every change is also audited."""

    __tablename__ = "autovalidation_switches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(128))
    enabled: Mapped[bool] = mapped_column(Boolean)
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    changed_by: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ux_switch_scope_name", "scope", "name", unique=True),)


class DeviceRow(Base):
    """The lab's standing decision on one analyser: blocked devices have their results
    quarantined, never forwarded until a person releases them (GBUI XIII)."""

    __tablename__ = "devices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    blocked: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(Text)
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    changed_by: Mapped[str] = mapped_column(String(128))


class AuditRow(Base):
    """Who did what and when, for every action of a person on labgate's behaviour (switches,
    activations, rollbacks, blocks, releases): the eCRF audit-trail note and GBUI IX."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(256))
    detail: Mapped[dict[str, object]] = mapped_column(JSON)


class AlarmRow(Base):
    """One alarm episode: raised once when a condition starts (a link lost, a QC rejection, a
    LIS refusal...), seen again any number of times while it lasts, cleared when it ends, and
    acknowledged by a person (audited). A new episode starts only after the last one cleared."""

    __tablename__ = "alarms"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(128))
    detail: Mapped[str] = mapped_column(Text)
    raised_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    occurrences: Mapped[int] = mapped_column(Integer, default=1)
    cleared_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    acknowledged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    acknowledged_by: Mapped[str | None] = mapped_column(String(128))
    comment: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_alarms_open", "kind", "subject", "cleared_at"),)


class ReagentLotRow(Base):
    """A reagent lot (test strips, cartridge, gel card) as the QC monitor must find it again
    after a restart: one row per stored QC result measured on a named lot (its run qualifies
    the lot once the Westgard rules accept it), and one per stored patient result measured on a
    lot no accepted QC run covered yet (`qc_new_lot`). Written after the result's own commit,
    by the same code that feeds the monitor; the lot also stays in the raw message."""

    __tablename__ = "reagent_lots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[str] = mapped_column(String(36), index=True)
    instrument: Mapped[str] = mapped_column(String(64))
    test: Mapped[str] = mapped_column(String(64))  # the LIS code, else the analyser's
    reagent_lot: Mapped[str] = mapped_column(String(64))
    is_qc: Mapped[bool] = mapped_column(Boolean)
    level: Mapped[str] = mapped_column(String(32))  # the control's level; "" for a patient
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
