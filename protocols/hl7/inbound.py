"""Results received from HL7 analysers: IHE LAW LAB-29 ``OUL^R22`` and ``ORU^R01``.

:func:`parse_results_message` reads what an analyser sends into plain, frozen
dataclasses, grouped by specimen: :class:`InboundResults` → :class:`InboundSpecimen` →
:class:`InboundObservation`.  Drivers map them onto the lab's models; nothing here knows
about drivers, test-code tables or the clock.

Structures read (segments not listed are skipped; a missing optional one is fine)::

    ORU^R01 (v2.3-2.5.1): MSH {PID [PV1] {[ORC] OBR [NTE] {OBX [NTE]} [SPM [OBX]]}}
    OUL^R22 (LAB-29):     MSH [PID [PV1]] {SPM [OBX] [SAC] {OBR [ORC] [TQ1] {OBX [NTE]}}}

The difference that matters: in ``OUL^R22`` (and ``R23``) the SPM *opens* the specimen
and the ORC *follows* its OBR; in ``ORU^R01`` (and ``OUL^R24``) the ORC *precedes* its
OBR and an SPM, if any, closes the order group it belongs to.

Quirks accepted (all seen in real captures or common on the bench):

- CR, LF or CRLF between segments; a stray VT before MSH, FS/CR after the last segment;
- MSH-18 character set: ``UNICODE UTF-8``, ``UNICODE`` (Erba ELite 580 means UTF-8 by
  it), ``UTF-8`` and ``8859/n`` are decoded strictly as declared; an empty, ``ASCII`` or
  unknown MSH-18 is read as UTF-8 when the bytes are valid UTF-8, else in the
  caller's ``default_encoding`` (the instrument's setting; Latin-1 by default, which
  never fails) — valid UTF-8 is almost never accidental, so trying it first is safe;
  :attr:`InboundResults.codec` says which codec was used;
- OBX-1 set ids starting at 0, restarting, or missing: they are kept as text, and
  :attr:`InboundObservation.sequence` numbers the observations of a specimen from 1;
- OBX-8 repetitions (``L~A``: flag plus an "alarm" marker), kept one per repetition,
  empty ones included (``~N`` gives ``("", "N")``);
- empty values (an ``NM`` OBX with nothing in OBX-5) are kept, as ``""``;
- any OBX-2: ``NM``/``ST``/``IS``/``TX`` values are unescaped text; composite values
  (``SN`` ``<^1.20``, ``CE`` ``POS^Positive^L``) and repeated values are kept in ER7 form
  (delimiters and escapes included) so nothing is lost; see
  :meth:`InboundObservation.structured_numeric`.

QC specimens: :attr:`InboundSpecimen.is_qc` is set only from what HL7 itself defines,
the specimen role SPM-11 (table 0369: ``Q`` control, ``E`` electronic QC, ``F``/``O``
QC by the filler/operator, ``C``/``V`` calibrators).  Vendor conventions (a QC test
code in OBR-4 or OBX-3, a specimen-id prefix, a "QC" PID) differ per analyser, so they
are left to the drivers, which get :attr:`InboundSpecimen.specimen_role`,
:attr:`InboundSpecimen.tests` and the raw ids.  MSH-11 processing id ``D`` (debugging)
or ``T`` (training) does not mean QC; it is reported in
:attr:`InboundResults.processing_id` for the caller to refuse or park such messages.

Everything unusable raises RemoteProtocolError with the reason, for the trace: bytes
that are not HL7, a message that is not a results message, an undecodable character
set, an OBX that belongs to no specimen, a malformed timestamp.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import hl7  # python-hl7 (absolute import: this package is protocols.hl7, not hl7)

from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.hl7._er7 import ParsedMessage, msh_field, msh_fields, parse_ts

__all__ = [
    "QC_SPECIMEN_ROLES",
    "InboundObservation",
    "InboundPatient",
    "InboundResults",
    "InboundSpecimen",
    "decode_inbound",
    "parse_results_message",
]

#: SPM-11 specimen roles (HL7 table 0369) that mark a specimen as QC or calibration.
QC_SPECIMEN_ROLES = frozenset({"Q", "E", "F", "O", "C", "V"})

#: Results messages accepted, as (MSH-9.1, MSH-9.2); an empty trigger is accepted for ORU.
_RESULT_TYPES = frozenset({("ORU", "R01"), ("ORU", ""), ("OUL", "R22"), ("OUL", "R23")})
_OUL_LIKE_SPM_FIRST = frozenset({"R21", "R22", "R23"})  # SPM opens the specimen group

# --- decoding, shared with orders_in -------------------------------------------------

_STRICT_CODECS = {
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "UTF-8": "utf-8",
    **{f"8859/{n}": f"iso8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 15)},
}
_BOM = b"\xef\xbb\xbf"


def _decode_bytes(message: bytes, default_encoding: str) -> tuple[str, str, str]:
    """Decode per MSH-18; return (text, MSH-18 as sent, Python codec used)."""
    stripped = message.lstrip(b"\x0b \t\r\n")
    if stripped.startswith(_BOM):
        stripped = stripped[len(_BOM) :]
    fields = msh_fields(stripped)  # RemoteProtocolError when not MSH-led
    charset = msh_field(fields, 18).split(b"~")[0].decode("latin-1").strip()
    codec = _STRICT_CODECS.get(charset.upper())
    if codec is not None:
        try:
            return stripped.decode(codec), charset, codec
        except UnicodeDecodeError as exc:
            raise RemoteProtocolError(
                f"message is not valid {codec} as MSH-18 {charset!r} declares: "
                f"{exc.reason} at byte {exc.start}"
            ) from exc
    try:  # empty, ASCII or an unknown name: UTF-8 if it is, else the default
        return stripped.decode("utf-8"), charset, "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        return stripped.decode(default_encoding), charset, default_encoding
    except LookupError as exc:
        raise LocalProtocolError(f"unknown default encoding {default_encoding!r}") from exc
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(
            f"message is neither UTF-8 nor {default_encoding} (MSH-18 {charset!r}): "
            f"{exc.reason} at byte {exc.start}"
        ) from exc


def decode_inbound(
    message: bytes, *, default_encoding: str = "latin-1"
) -> tuple[ParsedMessage, str]:
    """Decode and split any received HL7 v2 message; return it with MSH-18 as sent.

    The character set is chosen as the module docstring says, ``default_encoding``
    standing in for Latin-1 (``.codec`` of the result is the Python codec used); line
    endings are normalised to CR and blank segments dropped.  Raises
    RemoteProtocolError when the bytes are not an HL7 v2 message, LocalProtocolError
    when ``default_encoding`` is not a Python codec.
    """
    text, charset, codec = _decode_bytes(message, default_encoding)
    text = text.replace("\r\n", "\r").replace("\n", "\r").rstrip("\x1c\r")
    text = "\r".join(s for s in text.split("\r") if s.strip())
    if "\x0b" in text or "\x1c" in text:
        raise RemoteProtocolError("MLLP block characters (VT/FS) inside the message text")
    # python-hl7 strips whitespace around the whole message, which would eat trailing
    # spaces of the last segment's last field; a throw-away Z segment protects them.
    try:
        parsed = hl7.parse(text + "\rZZZ")
        del parsed[-1]
        result = ParsedMessage(parsed, codec)
    except Exception as exc:  # python-hl7 raises ParseException, IndexError, ValueError...
        raise RemoteProtocolError(f"HL7 v2 message cannot be split: {exc!r}") from exc
    if not result.segments or ParsedMessage.name(result.segments[0]) != "MSH":
        raise RemoteProtocolError("HL7 v2 message does not start with an MSH segment")
    return result, charset


def timestamp(msg: ParsedMessage, segment: Any, number: int, component: int = 1) -> datetime | None:
    """``SEG-number.component`` as a datetime (naive when no zone is sent), None if empty.

    Raises RemoteProtocolError naming the field when the text is not an HL7 timestamp.
    """
    text = msg.get(segment, number, component)
    try:
        return parse_ts(text)
    except ValueError as exc:
        name = msg.name(segment)
        raise RemoteProtocolError(f"{name}-{number} is not an HL7 timestamp: {text!r}") from exc


def message_type(msg: ParsedMessage) -> tuple[str, str]:
    """MSH-9 message code and trigger event, upper-cased and trimmed."""
    msh = msg.segments[0]
    return msg.get(msh, 9).strip().upper(), msg.get(msh, 9, 2).strip().upper()


def header_fields(msg: ParsedMessage, charset: str) -> dict[str, Any]:
    """The MSH fields every ``Inbound*`` message carries, by dataclass field name.

    Raises RemoteProtocolError when MSH-10 (message control id) is empty: the message
    could not be acknowledged.
    """
    msh = msg.segments[0]
    kind, trigger = message_type(msg)
    control_id = msg.get(msh, 10)
    if not control_id:
        raise RemoteProtocolError(f"{kind}^{trigger}: MSH-10 message control id is empty")
    return {
        "message_type": kind,
        "trigger": trigger,
        "control_id": control_id,
        "sending_application": msg.get(msh, 3),
        "sending_facility": msg.get(msh, 4),
        "receiving_application": msg.get(msh, 5),
        "receiving_facility": msg.get(msh, 6),
        "created_at": timestamp(msg, msh, 7),
        "processing_id": msg.get(msh, 11),
        "version": msg.get(msh, 12),
        "charset": charset,
        "codec": msg.codec,
    }


# --- dataclasses ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InboundPatient:
    """The patient of a received message (PID); every field ``""``/None when not sent.

    ``patient_id`` is the id of the first PID-3 repetition (CX.1), else PID-2 (v2.3's
    external id), else PID-4; ``family_name``/``given_name`` are PID-5.1.1 and PID-5.2;
    ``birth_date`` PID-7; ``sex`` PID-8 (table 0001: F M O U A N).
    """

    patient_id: str = ""
    family_name: str = ""
    given_name: str = ""
    birth_date: date | None = None
    sex: str = ""


@dataclass(frozen=True, slots=True)
class InboundObservation:
    """One OBX as the analyser sent it.

    ``value`` is OBX-5: unescaped text for a simple value, ER7 text (delimiters and
    escapes kept) for a composite (SN, CE/CWE) or repeated one.  ``units`` is OBX-6.1
    (OBX-6.2 when .1 is empty); ``reference_range`` OBX-7; ``abnormal_flags`` one entry
    per OBX-8 repetition, empty ones kept; ``status`` OBX-11; ``observed_at`` OBX-14;
    ``equipment`` OBX-18.1 (equipment instance identifier); ``notes`` one entry per NTE
    following the OBX (NTE-3 repetitions joined by line feeds).  ``set_id`` is OBX-1 as
    sent; ``sequence`` numbers the observations of one specimen from 1.
    """

    sequence: int
    set_id: str
    code: str
    text: str
    coding_system: str
    value: str
    value_type: str
    units: str
    reference_range: str
    abnormal_flags: tuple[str, ...]
    status: str
    observed_at: datetime | None
    equipment: str
    notes: tuple[str, ...] = ()
    test_code: str = ""  # OBR-4.1 of the order group the OBX belongs to ("" = specimen OBX)
    # SID-2 (substance lot number) of the first SID after the OBX: IHE LAW's OBX [TCD] {SID}
    # names the reagent the test ran on, whose new lots the QC plan can hold (`new_lot_qc`).
    reagent_lot: str = ""

    def structured_numeric(self) -> tuple[str, str, str, str] | None:
        """An ``SN`` value split into (comparator, num1, separator/suffix, num2).

        ``<^1.20`` gives ``("<", "1.20", "", "")``; ``^1^:^128`` gives
        ``("", "1", ":", "128")``.  None when OBX-2 is not ``SN``.  The components are
        split on ``^``: the standard component separator, which every analyser uses.
        """
        if self.value_type.upper() != "SN":
            return None
        parts = [*self.value.split("^"), "", "", "", ""][:4]
        return parts[0], parts[1], parts[2], parts[3]


@dataclass(frozen=True, slots=True)
class InboundSpecimen:
    """The results of one specimen, with its patient.

    ``specimen_id`` is SPM-2 (placer id, else filler id), else SAC-3 (container id),
    else OBR-3 (filler order number), OBR-2 (placer order number), ORC-3, ORC-2 — the
    first that is not empty, ``""`` when none is.  Several order groups with the same
    patient and specimen id are merged into one specimen, in message order.
    ``collected_at`` is SPM-17.1, else OBR-7; ``tests`` the OBR-4.1 codes, in order,
    without duplicates; ``notes`` NTE segments that follow an OBR or SPM (not an OBX).
    """

    specimen_id: str
    patient: InboundPatient
    observations: tuple[InboundObservation, ...]
    is_qc: bool = False
    specimen_role: str = ""
    specimen_type: str = ""
    collected_at: datetime | None = None
    tests: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class InboundResults:
    """A results message received from an analyser (``ORU^R01`` or ``OUL^R22``).

    ``message_type``/``trigger`` are MSH-9.1/.2 (``"OUL"``, ``"R22"``); ``control_id``
    MSH-10 (what the ACK's MSA-2 must echo); ``processing_id`` MSH-11 (``P``; ``D``
    debugging and ``T`` training are reported, not interpreted); ``charset`` MSH-18 as
    sent and ``codec`` the Python codec the bytes were decoded with.
    """

    message_type: str
    trigger: str
    control_id: str
    sending_application: str
    sending_facility: str
    version: str
    charset: str
    specimens: tuple[InboundSpecimen, ...]
    receiving_application: str = ""
    receiving_facility: str = ""
    created_at: datetime | None = None
    processing_id: str = ""
    codec: str = "utf-8"

    @property
    def observations(self) -> tuple[InboundObservation, ...]:
        """Every observation of every specimen, in message order."""
        return tuple(o for s in self.specimens for o in s.observations)


# --- reading helpers shared with orders_in -------------------------------------------


def read_patient(msg: ParsedMessage, pid: Any) -> InboundPatient:
    """An :class:`InboundPatient` from a PID segment."""
    patient_id = msg.get(pid, 3) or msg.get(pid, 2) or msg.get(pid, 4)
    birth = timestamp(msg, pid, 7)
    return InboundPatient(
        patient_id=patient_id,
        family_name=msg.get(pid, 5),
        given_name=msg.get(pid, 5, 2),
        birth_date=birth.date() if birth is not None else None,
        sex=msg.get(pid, 8),
    )


def spm_id(msg: ParsedMessage, spm: Any) -> str:
    """SPM-2 (EIP): the placer assigned id (2.1.1), else the filler assigned id (2.2.1)."""
    return msg.get(spm, 2) or msg.get(spm, 2, 2)


def first_id(*ids: str) -> str:
    """The first non-empty id, trimmed; ``""`` when all are empty."""
    return next((i.strip() for i in ids if i.strip()), "")


def note_text(msg: ParsedMessage, nte: Any) -> str:
    """NTE-3 with its repetitions joined by line feeds."""
    count = msg.repetition_count(nte, 3)
    return "\n".join(msg.field_text(nte, 3, r) for r in range(1, count + 1))


def repetitions(msg: ParsedMessage, segment: Any, number: int, component: int = 1) -> list[str]:
    """Component ``component`` of every repetition of a field (empty ones kept)."""
    count = msg.repetition_count(segment, number)
    return [msg.get(segment, number, component, repetition=r) for r in range(1, count + 1)]


# --- results -------------------------------------------------------------------------


@dataclass(slots=True)
class _Group:
    """One order group (or the specimen-level OBX of an SPM) being read."""

    patient: InboundPatient
    patient_number: int
    spm: tuple[str, str, str, datetime | None] = ("", "", "", None)  # id, role, type, time
    sac_id: str = ""
    obr_ids: tuple[str, str] = ("", "")
    orc_ids: tuple[str, str] = ("", "")
    test_code: str = ""
    obr_time: datetime | None = None
    observations: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def specimen_id(self) -> str:
        return first_id(
            self.spm[0],
            self.sac_id,
            self.obr_ids[1],
            self.obr_ids[0],
            self.orc_ids[1],
            self.orc_ids[0],
        )


def _observation(msg: ParsedMessage, obx: Any, test_code: str) -> dict[str, Any]:
    count = msg.repetition_count(obx, 5)
    value = msg.field_text(obx, 5) if count <= 1 else str(msg.raw_field(obx, 5))
    return {
        "set_id": msg.get(obx, 1).strip(),
        "value_type": msg.get(obx, 2).strip().upper(),
        "code": msg.get(obx, 3),
        "text": msg.get(obx, 3, 2),
        "coding_system": msg.get(obx, 3, 3),
        "value": value,
        "units": msg.get(obx, 6) or msg.get(obx, 6, 2),
        "reference_range": msg.field_text(obx, 7),
        "abnormal_flags": tuple(repetitions(msg, obx, 8)),
        "status": msg.get(obx, 11),
        "observed_at": timestamp(msg, obx, 14),
        "equipment": msg.get(obx, 18),
        "notes": (),
        "test_code": test_code,
        "reagent_lot": "",
    }


def _spm(msg: ParsedMessage, spm: Any) -> tuple[str, str, str, datetime | None]:
    roles = [r.strip().upper() for r in repetitions(msg, spm, 11)]
    role = next((r for r in roles if r in QC_SPECIMEN_ROLES), next((r for r in roles if r), ""))
    return spm_id(msg, spm), role, msg.get(spm, 4), timestamp(msg, spm, 17)


def _merge(groups: list[_Group]) -> tuple[InboundSpecimen, ...]:
    """Groups with the same patient and specimen id become one specimen, in order."""
    merged: dict[tuple[int, str], list[_Group]] = {}
    for group in groups:
        merged.setdefault((group.patient_number, group.specimen_id()), []).append(group)
    specimens = []
    for (_, specimen_id), members in merged.items():
        observations: list[InboundObservation] = []
        tests: list[str] = []
        for member in members:
            if member.test_code and member.test_code not in tests:
                tests.append(member.test_code)
            for obs in member.observations:
                observations.append(InboundObservation(sequence=len(observations) + 1, **obs))
        role = next((m.spm[1] for m in members if m.spm[1] in QC_SPECIMEN_ROLES), "")
        role = role or next((m.spm[1] for m in members if m.spm[1]), "")
        specimens.append(
            InboundSpecimen(
                specimen_id=specimen_id,
                patient=members[0].patient,
                observations=tuple(observations),
                is_qc=role in QC_SPECIMEN_ROLES,
                specimen_role=role,
                specimen_type=next((m.spm[2] for m in members if m.spm[2]), ""),
                collected_at=next(
                    (t for m in members for t in (m.spm[3], m.obr_time) if t is not None), None
                ),
                tests=tuple(tests),
                notes=tuple(n for m in members for n in m.notes),
            )
        )
    return tuple(specimens)


def parse_results_message(message: bytes, *, default_encoding: str = "latin-1") -> InboundResults:
    """Read an analyser's ``ORU^R01`` or ``OUL^R22`` (any v2.x) into specimens.

    See the module docstring for the structures and quirks accepted;
    ``default_encoding`` decodes a message that declares no MSH-18 and is not UTF-8.
    Raises RemoteProtocolError, with the reason, when the bytes are not an HL7 message,
    not a results message, cannot be decoded, or an OBX belongs to no order or specimen.
    """
    msg, charset = decode_inbound(message, default_encoding=default_encoding)
    kind, trigger = message_type(msg)
    if (kind, trigger) not in _RESULT_TYPES:
        raise RemoteProtocolError(
            f"not a results message (ORU^R01 or OUL^R22): MSH-9 is {kind}^{trigger}"
        )
    header = header_fields(msg, charset)
    spm_first = kind == "OUL" and trigger in _OUL_LIKE_SPM_FIRST

    groups: list[_Group] = []
    patient, patient_number = InboundPatient(), 0
    group: _Group | None = None  # the order group OBX and NTE attach to
    specimen: _Group | None = None  # OUL^R22: the SPM context order groups inherit
    pending_orc = ("", "")  # ORU: an ORC waiting for its OBR
    last_obx: dict[str, Any] | None = None

    def new_group() -> _Group:
        made = _Group(patient=patient, patient_number=patient_number)
        if specimen is not None:
            made.spm, made.sac_id = specimen.spm, specimen.sac_id
        groups.append(made)
        return made

    for segment in msg.segments[1:]:
        name = msg.name(segment).upper()
        if name == "NTE":
            if last_obx is not None:
                last_obx["notes"] = (*last_obx["notes"], note_text(msg, segment))
            elif group is not None:
                group.notes.append(note_text(msg, segment))
            continue
        if name in ("TCD", "SID") and last_obx is not None:
            # Both still belong to the OBX before them (its NTEs may follow them).
            if name == "SID" and not last_obx["reagent_lot"]:
                last_obx["reagent_lot"] = msg.get(segment, 2).strip()
            continue
        last_obx = None
        if name == "PID":
            patient, patient_number = read_patient(msg, segment), patient_number + 1
            group = specimen = None
            pending_orc = ("", "")
        elif name == "SPM":
            if spm_first:
                specimen = None  # a new specimen inherits nothing from the previous one
                specimen = group = new_group()
                specimen.spm = _spm(msg, segment)
            elif group is not None:  # ORU: the specimen of the current order group
                group.spm = _spm(msg, segment)
            else:
                group = new_group()
                group.spm = _spm(msg, segment)
        elif name == "SAC" and group is not None and not group.sac_id:
            group.sac_id = msg.get(segment, 3)
            if specimen is not None:
                specimen.sac_id = group.sac_id
        elif name == "ORC":
            orc = (msg.get(segment, 2), msg.get(segment, 3))
            has_obr = group is not None and (group.test_code or group.obr_ids != ("", ""))
            if spm_first and group is not None and has_obr and group.orc_ids == ("", ""):
                group.orc_ids = orc
            else:
                pending_orc = orc
        elif name == "OBR":
            group = new_group()
            group.orc_ids, pending_orc = pending_orc, ("", "")
            group.obr_ids = (msg.get(segment, 2), msg.get(segment, 3))
            group.test_code = msg.get(segment, 4)
            group.obr_time = timestamp(msg, segment, 7)
        elif name == "OBX":
            if group is None:
                raise RemoteProtocolError(
                    "OBX before any OBR or SPM: the specimen it belongs to is unknown"
                )
            last_obx = _observation(msg, segment, group.test_code)
            group.observations.append(last_obx)

    # An OUL^R22 SPM followed by OBRs leaves an empty specimen-level group: drop it
    # unless it is all the specimen has (a specimen reported with no result).
    reported = {(g.patient_number, g.specimen_id()) for g in groups if g.observations or g.obr_ids}
    kept = [
        g
        for g in groups
        if g.observations
        or g.test_code
        or g.obr_ids != ("", "")
        or (g.patient_number, g.specimen_id()) not in reported
    ]
    return InboundResults(specimens=_merge(kept), **header)
