"""ORU^R01 (unsolicited observation results): built for the LIS, parsed by the simulated LIS.

What :func:`build_oru_r01` emits (HL7 v2.5.1, message structure ``ORU_R01``)::

    MSH|^~\\&|app|facility|app|facility|created+zzzz||ORU^R01^ORU_R01|id|P|2.5.1||||||UNICODE UTF-8
    PID|1||patient id||family^given||birth date|sex            one PATIENT_RESULT per patient
    ORC|RE|specimen id                                          one ORDER_OBSERVATION per order
    OBR|1|specimen id||test code^test text^L|||observed at
    OBX|1|NM|code^text^L||value|units|range|flag~flag|||F|||observed at||||producer
    NTE|1|L|note                                                 notes of the OBX above
    SPM|1|specimen id||specimen type                             when the order names a type

- ORC is optional in ORU_R01; it is sent (ORC-1 ``RE``, "observations to follow") because
  many LIS key results on ORC-2 = OBR-2, the placer order number, which in a lab is the
  tube barcode (the specimen id).  SPM needs SPM-4 (specimen type, required), so it is
  sent only when the order has one.
- MSH-15/16 stay empty: original acknowledgement mode, the LIS answers AA/AE/AR.
- Every leaf is escaped (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``, control characters as
  ``\\Xhh\\``); text is UTF-8 as MSH-18 says.
- A patient without an id gets no PID when it leads the message (PATIENT is optional in
  PATIENT_RESULT; an empty PID-3 is not valid 2.5.1): the specimen id identifies the results.

Building assembles the ER7 text directly, leaf by leaf through ``_er7.escape``.  Measured on
one 10-observation ORU (each with a note): hl7apy's typed elements needed about 28 ms per
message, python-hl7's containers (used until the LIS sender had to reach 3,000 messages/s)
about 0.8 ms, the text assembly about 0.07 ms, for the same bytes as python-hl7's
(``tests/protocols/hl7/test_hl7_result_builders.py``).  hl7apy stays the structure checker
(:func:`protocols.hl7.validate_message`; the tests validate the built message strictly
against the 2.5.1 ORU_R01 definition).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.hl7 import _er7 as er7
from protocols.hl7._er7 import ParsedMessage, format_date, format_ts, parse_message, parse_ts

__all__ = [
    "MessageHeader",
    "ObservationOut",
    "OrderOut",
    "ParsedObservation",
    "ParsedOru",
    "PatientOut",
    "build_oru_r01",
    "parse_oru",
]

#: HL7 version of what we build.
VERSION = "2.5.1"
_CHARSET = "UNICODE UTF-8"
_NUMERIC = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)", re.ASCII)


def _require_aware(name: str, moment: datetime | None) -> None:
    if moment is not None and moment.utcoffset() is None:
        raise LocalProtocolError(f"{name} must be timezone-aware, got {moment!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ObservationOut:
    """One result to send: becomes an OBX (and one NTE per note).

    Keyword-only, so the optional fields can keep the order of the OBX they fill.
    ``value_type`` left empty is chosen from the value: ``NM`` when it is a plain decimal
    number, else ``ST``.  ``producer`` (the instrument name) goes to OBX-18, equipment
    instance identifier.
    """

    set_id: int
    code: str
    text: str = ""
    coding_system: str = "L"
    value: str
    value_type: str = ""
    units: str = ""
    reference_range: str = ""
    abnormal_flags: tuple[str, ...] = ()
    status: str = "F"
    observed_at: datetime | None = None
    producer: str = ""
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Check what HL7 would reject or silently change."""
        if self.set_id < 1:
            raise LocalProtocolError(f"OBX set id must be >= 1, got {self.set_id}")
        if not self.code:
            raise LocalProtocolError("an observation needs a code (OBX-3)")
        if not self.status:
            raise LocalProtocolError(f"observation {self.code!r} needs a status (OBX-11)")
        if not isinstance(self.abnormal_flags, tuple) or not isinstance(self.notes, tuple):
            raise LocalProtocolError("abnormal_flags and notes must be tuples")
        _require_aware("observed_at", self.observed_at)

    @property
    def effective_value_type(self) -> str:
        """OBX-2: ``value_type`` if given, else ``NM`` for a plain number, else ``ST``."""
        if self.value_type:
            return self.value_type
        return "NM" if _NUMERIC.fullmatch(self.value) else "ST"


@dataclass(frozen=True, slots=True)
class OrderOut:
    """One ordered test on one specimen: ORC + OBR, its observations, SPM if typed."""

    specimen_id: str
    test_code: str
    test_text: str
    observed_at: datetime | None
    results: tuple[ObservationOut, ...]
    specimen_type: str = ""

    def __post_init__(self) -> None:
        """Check what HL7 would reject."""
        if not isinstance(self.results, tuple):
            raise LocalProtocolError("OrderOut.results must be a tuple")
        _require_aware("observed_at", self.observed_at)


@dataclass(frozen=True, slots=True)
class PatientOut:
    """One patient (PID) and the orders reported for them; ``sex`` is HL7 table 0001."""

    patient_id: str
    family_name: str
    given_name: str
    birth_date: date | None
    sex: str
    orders: tuple[OrderOut, ...]

    def __post_init__(self) -> None:
        """ORU_R01 needs at least one ORDER_OBSERVATION per PATIENT_RESULT."""
        if not isinstance(self.orders, tuple) or not self.orders:
            raise LocalProtocolError(
                f"patient {self.patient_id!r}: orders must be a non-empty tuple"
            )


@dataclass(frozen=True, slots=True)
class MessageHeader:
    """What goes into MSH; ``created_at`` (MSH-7) must be timezone-aware."""

    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    control_id: str
    created_at: datetime
    processing_id: str = "P"
    # Enhanced acknowledgement mode (MSH-15 accept ack, MSH-16 application ack: AL, NE, ER,
    # SU); both empty = original mode, which most LIS use.
    accept_ack_type: str = ""
    application_ack_type: str = ""

    def __post_init__(self) -> None:
        """MSH-10 and MSH-11 are required; ack types come from HL7 table 0155."""
        for value in (self.accept_ack_type, self.application_ack_type):
            if value not in {"", "AL", "NE", "ER", "SU"}:
                raise LocalProtocolError(f"acknowledgement type {value!r} is not in table 0155")
        if not self.control_id:
            raise LocalProtocolError("MSH-10 message control id must not be empty")
        if not self.processing_id:
            raise LocalProtocolError("MSH-11 processing id must not be empty")
        if self.created_at.utcoffset() is None:
            raise LocalProtocolError(f"created_at must be timezone-aware: {self.created_at!r}")


# --- building ------------------------------------------------------------------------
#
# Results are assembled as ER7 text directly: every leaf goes through `er7.escape`, fields
# are joined with the standard delimiters, and a segment loses its trailing empty fields
# (`rstrip("|")` is exact for that: an escaped value never holds a raw `|`). The bytes are
# those python-hl7's containers produced (tests/protocols/hl7/test_hl7_result_builders.py
# compares both on random inputs): a message already in an outbox, rebuilt after a restart,
# must come out identical. The container helpers (`_msh`, `_ts`) stay for the order and
# query builders of `outbound`, which are not on the results hot path.

_field = er7.field
_EMPTY = er7.field()
_escape = er7.escape


def _ts(moment: datetime | None) -> Any:
    return _field(format_ts(moment) if moment is not None else "")


def _msh(
    header: MessageHeader, kind: str = "ORU", trigger: str = "R01", structure: str = "ORU_R01"
) -> Any:
    """MSH for any message labgate builds (MSH-15/16 empty: original acknowledgement mode)."""
    return er7.msh_segment(
        _field(header.sending_application),  # 3
        _field(header.sending_facility),
        _field(header.receiving_application),
        _field(header.receiving_facility),
        _ts(header.created_at),  # 7
        _EMPTY,
        _field(kind, trigger, structure),  # 9
        _field(header.control_id),
        _field(header.processing_id),
        _field(VERSION),  # 12
        _EMPTY,
        _EMPTY,
        _field(header.accept_ack_type),  # 15: enhanced mode when set (AL, NE, ER, SU)
        _field(header.application_ack_type),  # 16
        _EMPTY,
        _field(_CHARSET),  # 18
    )


def _msh_text(header: MessageHeader, kind: str, trigger: str, structure: str) -> str:
    """The same MSH as `_msh`, as text. MSH-18 is never empty, so nothing is trimmed."""
    e = _escape
    return (
        f"MSH|^~\\&|{e(header.sending_application)}"  # MSH-1, MSH-2: er7's delimiters
        f"|{e(header.sending_facility)}|{e(header.receiving_application)}"
        f"|{e(header.receiving_facility)}|{format_ts(header.created_at)}"  # 7
        f"||{e(kind)}^{e(trigger)}^{e(structure)}|{e(header.control_id)}"  # 9, 10
        f"|{e(header.processing_id)}|{VERSION}|||{e(header.accept_ack_type)}"  # 11, 12, 15
        f"|{e(header.application_ack_type)}||{_CHARSET}"  # 16, 18
    )


def _pid(set_id: int, patient: PatientOut) -> str:
    birth = format_date(patient.birth_date) if patient.birth_date is not None else ""
    e = _escape
    return (
        f"PID|{set_id}||{e(patient.patient_id)}"  # 3 patient identifier list
        f"||{e(patient.family_name)}^{e(patient.given_name)}"  # 5 XPN
        f"||{birth}|{e(patient.sex)}"  # 7, 8
    ).rstrip("|")


def _obx(obs: ObservationOut) -> str:
    """The OBX of one result, followed by one NTE per note (CR-joined)."""
    e = _escape
    observed = format_ts(obs.observed_at) if obs.observed_at is not None else ""
    text = (
        f"OBX|{obs.set_id}|{e(obs.effective_value_type)}"
        f"|{e(obs.code)}^{e(obs.text)}^{e(obs.coding_system)}"  # 3 CWE
        f"||{e(obs.value)}|{e(obs.units)}|{e(obs.reference_range)}"  # 5, 6, 7
        f"|{'~'.join(map(e, obs.abnormal_flags))}"  # 8 repeats in 2.5.1
        f"|||{e(obs.status)}|||{observed}"  # 11, 14
        f"||||{e(obs.producer)}"  # 18 equipment instance identifier
    ).rstrip("|")
    if not obs.notes:
        return text
    notes = (f"NTE|{n}|L|{e(note)}".rstrip("|") for n, note in enumerate(obs.notes, start=1))
    return "\r".join((text, *notes))


def _order_segments(set_id: int, order: OrderOut) -> list[str]:
    e = _escape
    specimen = e(order.specimen_id)
    if order.test_code:
        test = f"{e(order.test_code)}^{e(order.test_text)}^L"
    else:
        test = f"^{e(order.test_text)}"
    observed = format_ts(order.observed_at) if order.observed_at is not None else ""
    segments = [
        f"ORC|RE|{specimen}".rstrip("|"),
        # 2 placer order number, 4 universal service identifier, 7 observation date/time
        f"OBR|{set_id}|{specimen}||{test}|||{observed}".rstrip("|"),
    ]
    segments += [_obx(obs) for obs in order.results]
    if order.specimen_type:
        segments.append(f"SPM|1|{specimen}||{e(order.specimen_type)}")
    return segments


def _render(segments: list[str]) -> bytes:
    """The message: segments CR-joined and CR-terminated, in UTF-8 (MSH-18)."""
    segments.append("")
    return "\r".join(segments).encode("utf-8")


def build_oru_r01(header: MessageHeader, patients: Sequence[PatientOut]) -> bytes:
    """Encode results as one HL7 v2.5.1 ``ORU^R01^ORU_R01`` message (UTF-8, CR-separated).

    A first patient without an id gets no PID: PATIENT is optional in a PATIENT_RESULT, and an
    empty PID-3 is refused by a strict 2.5.1 receiver; the specimen id in ORC/OBR identifies
    the results. A later patient without an id keeps its PID (PID-3 empty): without it, a
    receiver would file those results under the patient before.

    The returned bytes are the MLLP payload (frame them with ``mllp_frame``).  Raises
    LocalProtocolError when there is nothing to send.
    """
    if not patients:
        raise LocalProtocolError("an ORU^R01 needs at least one patient result")
    segments = [_msh_text(header, "ORU", "R01", "ORU_R01")]
    order_number = 0
    pid_number = 0
    for patient in patients:
        if patient.patient_id or order_number:
            pid_number += 1
            segments.append(_pid(pid_number, patient))
        for order in patient.orders:
            order_number += 1
            segments += _order_segments(order_number, order)
    return _render(segments)


# --- parsing -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedObservation:
    """One OBX of a received ORU, with the patient and specimen it belongs to.

    ``value`` is the unescaped text of OBX-5, except for a composite value (an SN such
    as ``^182``, a CWE) which is kept in ER7 form, delimiters and escapes included.
    ``specimen_id`` is SPM-2, else OBR-2 (placer), OBR-3 (filler), ORC-2, ORC-3.
    """

    patient_id: str
    specimen_id: str
    code: str
    value: str
    units: str
    reference_range: str
    abnormal_flags: tuple[str, ...]
    status: str
    producer: str
    notes: tuple[str, ...]
    set_id: str = ""
    text: str = ""
    coding_system: str = ""
    value_type: str = ""
    observed_at: datetime | None = None
    test_code: str = ""


@dataclass(frozen=True, slots=True)
class ParsedOru:
    """A received ORU^R01: header fields and every observation, in message order."""

    control_id: str
    sending_application: str
    observations: tuple[ParsedObservation, ...]
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    created_at: datetime | None = None
    version: str = ""


@dataclass(slots=True)
class _OrderReader:
    """Collects one ORDER_OBSERVATION group; the specimen id is known only at its end."""

    patient_id: str
    orc_ids: tuple[str, str] = ("", "")
    obr_ids: tuple[str, str] = ("", "")
    test_code: str = ""
    spm_id: str = ""
    observations: list[dict[str, Any]] = field(default_factory=list)

    def finish(self) -> list[ParsedObservation]:
        ids = (self.spm_id, *self.obr_ids, *self.orc_ids)
        specimen = next((i for i in ids if i), "")
        return [
            ParsedObservation(
                patient_id=self.patient_id, specimen_id=specimen, test_code=self.test_code, **obs
            )
            for obs in self.observations
        ]


def _timestamp(msg: ParsedMessage, segment: Any, number: int) -> datetime | None:
    text = msg.get(segment, number)
    try:
        return parse_ts(text)
    except ValueError as exc:
        name = msg.name(segment)
        raise RemoteProtocolError(f"{name}-{number} is not an HL7 timestamp: {text!r}") from exc


def _observation(msg: ParsedMessage, obx: Any) -> dict[str, Any]:
    units = msg.get(obx, 6) or msg.get(obx, 6, 2)
    flags = tuple(msg.get(obx, 8, repetition=r) for r in range(1, msg.repetition_count(obx, 8) + 1))
    return {
        "set_id": msg.get(obx, 1),
        "value_type": msg.get(obx, 2),
        "code": msg.get(obx, 3),
        "text": msg.get(obx, 3, 2),
        "coding_system": msg.get(obx, 3, 3),
        "value": msg.field_text(obx, 5),
        "units": units,
        "reference_range": msg.get(obx, 7),
        "abnormal_flags": flags,
        "status": msg.get(obx, 11),
        "observed_at": _timestamp(msg, obx, 14),
        "producer": msg.get(obx, 18),
        "notes": (),
    }


def _note(msg: ParsedMessage, nte: Any) -> str:
    count = msg.repetition_count(nte, 3)
    return "\n".join(msg.field_text(nte, 3, r) for r in range(1, count + 1))


def parse_oru(message: bytes) -> ParsedOru:
    """Read an ORU^R01 (any v2.x) into a flat list of observations.

    CR, LF or CRLF between segments are accepted.  Raises RemoteProtocolError, with the
    reason, when the bytes are not an HL7 message, not an ORU^R01, or break its outline
    (an OBX outside an OBR group, a malformed timestamp, no control id).
    """
    msg = parse_message(message)
    msh = msg.segments[0]
    kind, trigger = msg.get(msh, 9), msg.get(msh, 9, 2)
    if kind != "ORU" or trigger not in ("R01", ""):
        raise RemoteProtocolError(f"not an ORU^R01 message: MSH-9 is {kind}^{trigger}")
    control_id = msg.get(msh, 10)
    if not control_id:
        raise RemoteProtocolError("MSH-10 message control id is empty")

    observations: list[ParsedObservation] = []
    patient_id = ""
    orc_ids = ("", "")
    order: _OrderReader | None = None
    last_obx: dict[str, Any] | None = None
    for segment in msg.segments[1:]:
        name = msg.name(segment)
        if name == "NTE":
            if last_obx is not None:
                last_obx["notes"] = (*last_obx["notes"], _note(msg, segment))
            continue
        last_obx = None
        if name == "PID":
            patient_id = msg.get(segment, 3) or msg.get(segment, 2)
        elif name == "ORC":
            orc_ids = (msg.get(segment, 2), msg.get(segment, 3))
        elif name == "OBR":
            if order is not None:
                observations.extend(order.finish())
            order = _OrderReader(
                patient_id=patient_id,
                orc_ids=orc_ids,
                obr_ids=(msg.get(segment, 2), msg.get(segment, 3)),
                test_code=msg.get(segment, 4),
            )
            orc_ids = ("", "")
        elif name == "OBX":
            if order is None:
                raise RemoteProtocolError("OBX outside an order group (no OBR before it)")
            last_obx = _observation(msg, segment)
            order.observations.append(last_obx)
        elif name == "SPM" and order is not None and not order.spm_id:
            order.spm_id = msg.get(segment, 2)
    if order is not None:
        observations.extend(order.finish())

    return ParsedOru(
        control_id=control_id,
        sending_application=msg.get(msh, 3),
        sending_facility=msg.get(msh, 4),
        receiving_application=msg.get(msh, 5),
        receiving_facility=msg.get(msh, 6),
        created_at=_timestamp(msg, msh, 7),
        version=msg.get(msh, 12),
        observations=tuple(observations),
    )
