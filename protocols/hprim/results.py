"""Build an HPRIM Santé results message (H, P, OBR, OBX..., C, L) from plain data classes.

What `build_results` writes, field by field (numbering as in the HPRIM text, the record type
being field 1; ``~`` components and ``^`` repeats with the default delimiters)::

    H|~^\\&|file|||sender~name||ORU|||receiver~name||P|H2.2~C|created
    P|1|patient id|||NOM~Prénom|maiden name|birth date|sex
    C|1|L|patient note
    OBR|1|specimen|producer specimen|code~label~L^...|priority|requested|collected||...
        ...|received||...|result status (26)
    OBX|1|NM|code~label~L||value|unit|reference range|flag^flag|||status (12)||
        ...|observed (15)|producer (16)|responsible~observer (17)
    C|1|L|validé électroniquement - biologiste responsable ...
    L|1||patients|records before L

Field positions, code lists and maximum lengths are libHprim's (fact sheet §4); most field
*names*, and so what labgate puts in them, are inferred from the HL7 v2.2 / ASTM analogues.
Each choice that rests on inference says so where it is made. The fact sheet's own illustration
puts the observation date-time in OBX-16; its field list (from libHprim) says OBX-15, which is
what is followed here.

Date-times are ``YYYYMMDDHHMMSS`` (H-14 is ``YYYYMMDDHHMM[SS]`` [lib]; the same form is assumed
for the other date-times, and the seconds are always written). They carry no time zone
(assumed: a local time): with `Header.timezone` set, aware date-times are converted to it
first; otherwise they are written as they are.

The marks the LIS link needs:

- **"validé électroniquement"** (`ElectronicValidation`, GBUI V-3): a C record under the OBX
  names the responsible biologist (and the rule set), and OBX-17 "responsible observer"
  carries ``biologist id~name``. The field name is inferred from HL7 v2.2 OBX-16; whether a LIS
  reads it as the validating biologist is unverified, so the C record says it in words.
- **point-of-care origin** (`PointOfCare`, GBUI XIII): a C record ``origine: biologie
  délocalisée - device (location)``, and OBX-16 "producer id" is the device.
- **correction, "annule et remplace"** (``correction=True``, GBUI VI): OBX-12 result status
  ``C``, OBR-26 ``C``, and a C record saying so. ``C`` is in libHprim's code lists for both
  fields (verified as a code); that it means "correction, replaces the result sent before" is
  HL7 v2.2's meaning of the same code (tables 0085 and 0123), **unverified** for HPRIM.

The texts use ``-`` rather than a dash: HPRIM files are often ISO-8859-1 (unverified), which
has no em dash.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, tzinfo

from protocols.errors import LocalProtocolError
from protocols.hprim.records import (
    FILE_VALUE_TYPE,
    Delimiters,
    Field,
    Message,
    Record,
    components,
)
from protocols.hprim.values import VALUE_TYPES, Coded, EmbeddedFile

__all__ = [
    "ABNORMAL_FLAGS",
    "CORRECTION_NOTE",
    "OBSERVATION_STATUSES",
    "REQUEST_STATUSES",
    "ElectronicValidation",
    "Header",
    "Observation",
    "Order",
    "Patient",
    "PointOfCare",
    "build_results",
]

#: OBX-9 abnormal flags [lib], antibiogram flags R I S MS VS included.
ABNORMAL_FLAGS = frozenset(
    {"L", "H", "LL", "HH", "<", ">", "N", "A", "AA", "U", "D", "B", "W", "R", "I", "S", "MS", "VS"}
)
#: OBX-12 result status [lib]. F final, P preliminary, C correction (HL7 v2.2 meanings).
OBSERVATION_STATUSES = frozenset("RPFCIDXU")
#: OBR-26 result status [lib].
REQUEST_STATUSES = frozenset("FPMIRCODX")
_SEXES = frozenset({"", "M", "F", "U"})
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
#: Maximum lengths [lib] of the fields labgate fills from a lab's identifiers.
_MAX = {("H", 3): 12, ("P", 3): 36, ("OBR", 3): 23, ("OBR", 4): 23, ("OBX", 4): 200}

_DEFAULT_DELIMITERS = Delimiters()  # H|~^\&

#: The C record under a corrected result (with OBX-12 ``C``).
CORRECTION_NOTE = "annule et remplace le résultat transmis précédemment"


@dataclass(frozen=True, slots=True, kw_only=True)
class Header:
    """The H record: who sends, to whom, when, in which version."""

    sender_id: str  #: H-5 component 1 (required)
    sender_name: str = ""  #: H-5 component 2
    receiver_id: str  #: H-10 component 1 (required)
    receiver_name: str = ""  #: H-10 component 2
    created_at: datetime  #: H-14
    file_name: str = ""  #: H-3, ≤ 12 characters (e.g. ``R0001.HPR``)
    message_type: str = "ORU"  #: H-7; ``ORU`` is the only type libHprim reads
    processing_id: str = "P"  #: H-12: P production, D debugging, T training (HL7 meanings)
    version: str = "H2.2"  #: H-13 component 1: ``H2.2``, or ``H2.4`` for embedded files
    #: H-13 component 2: ``C``, ``L`` or ``R`` [lib]; their meanings are unverified. ``C`` is
    #: what the fact sheet's illustration shows.
    version_type: str = "C"
    delimiters: Delimiters = _DEFAULT_DELIMITERS
    #: Date-times are written in this zone (aware ones converted); None: as they are.
    timezone: tzinfo | None = None

    def __post_init__(self) -> None:
        """H-5, H-10 are required; the version must be one labgate writes."""
        if not self.sender_id or not self.receiver_id:
            raise LocalProtocolError("H-5 sender id and H-10 receiver id are required")
        if self.version not in ("H2.2", "H2.4"):
            raise LocalProtocolError(f"labgate writes H2.2 or H2.4, not {self.version!r}")
        if self.version_type not in ("C", "L", "R"):
            raise LocalProtocolError(f"H-13 type must be C, L or R, not {self.version_type!r}")


@dataclass(frozen=True, slots=True)
class ElectronicValidation:
    """The result was validated by labgate's rules under a biologist's responsibility."""

    biologist: str  #: the responsible biologist's name
    biologist_id: str = ""  #: their code in the LIS, if it has one (OBX-17 component 1)
    ruleset: str = ""  #: the rule set and version that validated it

    @property
    def note(self) -> str:
        """The C record's text."""
        text = f"validé électroniquement - biologiste responsable {self.biologist}"
        return f"{text} - règles {self.ruleset}" if self.ruleset else text


@dataclass(frozen=True, slots=True)
class PointOfCare:
    """The result comes from a point-of-care device (biologie délocalisée)."""

    device: str
    location: str = ""

    @property
    def note(self) -> str:
        """The C record's text."""
        where = f" ({self.location})" if self.location else ""
        return f"origine: biologie délocalisée - {self.device}{where}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    """One result: an OBX, then its C records (`notes`, then the marks).

    `value` is text (NM when it is a plain decimal number, else ST, unless `value_type`
    says otherwise, e.g. TX), a `Coded` entry (CE) or an `EmbeddedFile` (FIC, 2.4 only), whose
    text is written as it is.
    """

    code: str  #: OBX-4 component 1
    label: str = ""  #: OBX-4 component 2
    coding_system: str = "L"  #: OBX-4 component 3 (``L``: the lab's own codes, as in HL7)
    value: str | Coded | EmbeddedFile
    value_type: str = ""  #: OBX-3; "" = chosen from `value`
    units: str = ""  #: OBX-7
    reference_range: str = ""  #: OBX-8 (e.g. ``3.9-5.8``)
    #: OBX-9, several written as repeats (assumed: the fact sheet does not say OBX-9 repeats)
    abnormal_flags: tuple[str, ...] = ()
    status: str = "F"  #: OBX-12
    observed_at: datetime | None = None  #: OBX-15
    producer: str = ""  #: OBX-16 producer id: the instrument (the device for POC)
    responsible: Coded | None = None  #: OBX-17 responsible observer (code~name)
    validation: ElectronicValidation | None = None
    point_of_care: PointOfCare | None = None
    correction: bool = False
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Refuse what libHprim's code lists would refuse."""
        if not self.code:
            raise LocalProtocolError("an observation needs a code (OBX-4)")
        if self.status not in OBSERVATION_STATUSES:
            raise LocalProtocolError(
                f"{self.code}: OBX-12 status {self.status!r} is not one of "
                f"{' '.join(sorted(OBSERVATION_STATUSES))}"
            )
        if not isinstance(self.abnormal_flags, tuple) or not isinstance(self.notes, tuple):
            raise LocalProtocolError("abnormal_flags and notes must be tuples")
        unknown = [flag for flag in self.abnormal_flags if flag not in ABNORMAL_FLAGS]
        if unknown:
            raise LocalProtocolError(
                f"{self.code}: abnormal flags {unknown} are not in HPRIM's list (OBX-9): "
                f"{' '.join(sorted(ABNORMAL_FLAGS))}"
            )
        kind = self.effective_value_type
        if kind not in VALUE_TYPES:
            raise LocalProtocolError(f"{self.code}: OBX-3 value type {kind!r} is not known")
        if (kind == FILE_VALUE_TYPE) != isinstance(self.value, EmbeddedFile):
            raise LocalProtocolError(f"{self.code}: a FIC value is an EmbeddedFile, and only it")
        if isinstance(self.value, Coded) and kind != "CE":
            raise LocalProtocolError(f"{self.code}: a Coded value goes with CE, not {kind}")

    @property
    def effective_value_type(self) -> str:
        """OBX-3: `value_type`, else CE for `Coded`, FIC for `EmbeddedFile`, NM for a plain
        decimal number, ST for other text."""
        if self.value_type:
            return self.value_type
        if isinstance(self.value, Coded):
            return "CE"
        if isinstance(self.value, EmbeddedFile):
            return FILE_VALUE_TYPE
        return "NM" if _NUMBER.fullmatch(self.value) else "ST"

    @property
    def effective_status(self) -> str:
        """OBX-12: ``C`` for a correction, else `status`."""
        return "C" if self.correction else self.status


@dataclass(frozen=True, slots=True, kw_only=True)
class Order:
    """One specimen and the tests reported on it: an OBR, its C records, its OBX."""

    #: OBR-3, the specimen (sample) id, ≤ 23 characters: the tube's barcode.
    specimen_id: str
    #: OBR-4 "producer's sample id". None: the specimen id again. The fact sheet's illustration
    #: has the sample id in OBR-4 only; which of the two a LIS keys on is unverified, so both
    #: are filled by default.
    producer_specimen_id: str | None = None
    #: OBR-5, repeatable. Empty: the observations' own codes, in order, each once.
    tests: tuple[Coded, ...] = ()
    priority: str = ""  #: OBR-6 (e.g. ``R`` routine, ``S`` stat: HL7 meanings, unverified)
    requested_at: datetime | None = None  #: OBR-7
    collected_at: datetime | None = None  #: OBR-8
    received_at: datetime | None = None  #: OBR-15
    #: OBR-26. "": ``C`` when an observation is a correction, ``F`` when all are final
    #: (OBX-12 ``F``), ``P`` otherwise.
    result_status: str = ""
    observations: tuple[Observation, ...]
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """An OBR has at least one OBX [lib]."""
        if not isinstance(self.observations, tuple) or not self.observations:
            raise LocalProtocolError(f"{self.specimen_id}: observations: a non-empty tuple")
        if not isinstance(self.tests, tuple) or not isinstance(self.notes, tuple):
            raise LocalProtocolError("tests and notes must be tuples")
        if self.result_status and self.result_status not in REQUEST_STATUSES:
            raise LocalProtocolError(
                f"{self.specimen_id}: OBR-26 status {self.result_status!r} is not one of "
                f"{' '.join(sorted(REQUEST_STATUSES))}"
            )

    @property
    def effective_result_status(self) -> str:
        """OBR-26: `result_status`, else derived from the observations."""
        if self.result_status:
            return self.result_status
        statuses = {obs.effective_status for obs in self.observations}
        if "C" in statuses:
            return "C"
        return "F" if statuses == {"F"} else "P"


@dataclass(frozen=True, slots=True, kw_only=True)
class Patient:
    """One patient: a P record, its C records, its orders."""

    patient_id: str  #: P-3, the lab's patient id, ≤ 36 characters
    family_name: str = ""  #: P-6 component 1
    given_name: str = ""  #: P-6 component 2
    maiden_name: str = ""  #: P-7
    birth_date: date | None = None  #: P-8, ``YYYYMMDD``
    sex: str = ""  #: P-9: M, F or U
    orders: tuple[Order, ...]
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """A P has at least one OBR [lib]; P-9 is M, F or U."""
        if not isinstance(self.orders, tuple) or not self.orders:
            raise LocalProtocolError(f"patient {self.patient_id!r}: orders: a non-empty tuple")
        if self.sex not in _SEXES:
            raise LocalProtocolError(f"patient {self.patient_id!r}: sex is M, F, U or empty")
        if not isinstance(self.notes, tuple):
            raise LocalProtocolError("notes must be a tuple")


# --- building --------------------------------------------------------------------------------


def _trimmed(record_type: str, *values: str | Field) -> Record:
    """A record without its trailing empty fields, after the length checks of `_MAX`."""
    fields = [(((v,),),) if isinstance(v, str) else v for v in values]
    while fields and fields[-1] == ((("",),),):
        fields.pop()
    for n, field in enumerate(fields, start=2):
        limit = _MAX.get((record_type, n))
        if limit is not None:
            text = "^".join("~".join("&".join(c) for c in r) for r in field)
            if len(text) > limit:
                raise LocalProtocolError(
                    f"{record_type}-{n} is longer than {limit} characters: {text[:40]!r}"
                )
    return Record.of(record_type, *fields)


def _coded(code: str, text: str = "", system: str = "") -> Field:
    values = [code, text, system]
    while len(values) > 1 and not values[-1]:
        values.pop()
    return components(*values)


class _Builder:
    """The records of one message, with the counters HPRIM's sequence numbers need."""

    def __init__(self, header: Header) -> None:
        self.header = header
        self.records: list[Record] = []
        self.patients = 0

    def time(self, moment: datetime | None) -> str:
        if moment is None:
            return ""
        zone = self.header.timezone
        if zone is not None and moment.utcoffset() is not None:
            moment = moment.astimezone(zone)
        return moment.strftime("%Y%m%d%H%M%S")

    def comments(self, notes: Sequence[str]) -> None:
        # C-2 counts the comments of one record from 1 (assumed, as ASTM does); C-3 ``L``: the
        # comment comes from the lab [lib: P practice / L lab].
        for n, note in enumerate(notes, start=1):
            self.records.append(_trimmed("C", str(n), "L", note))

    def header_record(self) -> None:
        h = self.header
        self.records.append(
            _trimmed(
                "H",
                h.delimiters.definition,  # 2
                h.file_name,  # 3
                "",  # 4 password
                _coded(h.sender_id, h.sender_name),  # 5
                "",  # 6 sender address
                h.message_type,  # 7
                "",  # 8 phone
                "",  # 9 characteristics
                _coded(h.receiver_id, h.receiver_name),  # 10
                "",  # 11 comment
                h.processing_id,  # 12
                components(h.version, h.version_type),  # 13
                self.time(h.created_at),  # 14
            )
        )

    def patient(self, patient: Patient) -> None:
        self.patients += 1
        birth = patient.birth_date.strftime("%Y%m%d") if patient.birth_date else ""
        self.records.append(
            _trimmed(
                "P",
                str(self.patients),  # 2
                patient.patient_id,  # 3
                "",  # 4 other ids
                "",  # 5
                _coded(patient.family_name, patient.given_name),  # 6
                patient.maiden_name,  # 7
                birth,  # 8
                patient.sex,  # 9
            )
        )
        self.comments(patient.notes)
        # OBR-2 counts the requests of one patient from 1 (assumed, as ASTM counts O records).
        for n, order in enumerate(patient.orders, start=1):
            self.order(n, order)

    def order(self, sequence: int, order: Order) -> None:
        tests = order.tests or tuple(
            dict.fromkeys(Coded(o.code, o.label, o.coding_system) for o in order.observations)
        )
        producer = order.producer_specimen_id
        self.records.append(
            _trimmed(
                "OBR",
                str(sequence),  # 2
                order.specimen_id,  # 3
                order.specimen_id if producer is None else producer,  # 4
                tuple(_coded(t.code, t.text, t.system)[0] for t in tests),  # 5, repeats
                order.priority,  # 6
                self.time(order.requested_at),  # 7
                self.time(order.collected_at),  # 8
                *([""] * 6),  # 9-14
                self.time(order.received_at),  # 15
                *([""] * 10),  # 16-25
                order.effective_result_status,  # 26
            )
        )
        self.comments(order.notes)
        for n, observation in enumerate(order.observations, start=1):
            self.observation(n, observation)

    def observation(self, sequence: int, obs: Observation) -> None:
        kind = obs.effective_value_type
        if kind == FILE_VALUE_TYPE and self.header.version != "H2.4":
            raise LocalProtocolError(
                f"{obs.code}: an embedded file (FIC) needs version H2.4, not {self.header.version}"
            )
        value: str | Field
        if isinstance(obs.value, Coded):
            value = _coded(obs.value.code, obs.value.text, obs.value.system)
        elif isinstance(obs.value, EmbeddedFile):
            value = obs.value.text  # opaque: the encoder writes it as it is
        else:
            value = obs.value
        producer = obs.producer or (obs.point_of_care.device if obs.point_of_care else "")
        responsible = obs.responsible
        if responsible is None and obs.validation is not None:
            responsible = Coded(obs.validation.biologist_id, obs.validation.biologist)
        flags: Field = tuple(((flag,),) for flag in obs.abnormal_flags) or ((("",),),)
        self.records.append(
            _trimmed(
                "OBX",
                str(sequence),  # 2
                kind,  # 3
                _coded(obs.code, obs.label, obs.coding_system),  # 4
                "",  # 5 sub-id
                value,  # 6
                obs.units,  # 7
                obs.reference_range,  # 8
                flags,  # 9
                "",  # 10 probability
                "",  # 11 nature of abnormal test
                obs.effective_status,  # 12
                "",  # 13 date of last normal-range change
                "",  # 14 access checks
                self.time(obs.observed_at),  # 15
                producer,  # 16
                _coded(responsible.code, responsible.text) if responsible else "",  # 17
            )
        )
        notes = list(obs.notes)
        if obs.validation is not None:
            notes.append(obs.validation.note)
        if obs.point_of_care is not None:
            notes.append(obs.point_of_care.note)
        if obs.correction:
            notes.append(CORRECTION_NOTE)
        self.comments(notes)


def build_results(header: Header, patients: Sequence[Patient]) -> Message:
    """The records of one results message: H, then per patient P (C) and per order OBR (C)
    and its OBX (C), then L. Encode it with `encode_message`.

    L-4 is the number of P records and L-5 the number of records before L. Both counts are
    **assumed** (libHprim gives their positions and sizes only; the fact sheet's illustration
    counts the lines before L, which is the same number when no record is folded into ``A|``
    lines). Raises `LocalProtocolError` for what HPRIM cannot carry.
    """
    if not patients:
        raise LocalProtocolError("a results message needs at least one patient")
    builder = _Builder(header)
    builder.header_record()
    for patient in patients:
        builder.patient(patient)
    builder.records.append(_trimmed("L", "1", "", str(builder.patients), str(len(builder.records))))
    return Message(tuple(builder.records), header.delimiters)
