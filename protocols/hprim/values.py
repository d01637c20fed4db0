"""OBX values: the value type (OBX-3) decides how OBX-6 reads.

The value types are those libHprim knows (fact sheet §4). Where a code has an HL7 v2.2 data
type of the same name (OBX maps one to one to HL7 v2.2's OBX, shifted by one field), its meaning
is taken from HL7; that is inference, not read from the HPRIM text:

====  =================================================  ==============================
NM    numeric                                             `ObservationValue.number`
ST    string                                              `ObservationValue.text`
TX    text                                                `ObservationValue.text`
CE    coded entry: code~text~coding system, repeatable    `ObservationValue.coded`
FIC   a file embedded in the message (HPRIM Santé 2.4)    `ObservationValue.file`, opaque
AD CK CNA DT PN TN GC GB GN                               the repeats only
====  =================================================  ==============================

AD (address), CK (composite id with check digit), DT (date), PN (person name) and TN
(telephone) are HL7 v2.2 names; GC, CNA, GB and GN have no HL7 v2.2 namesake and their meaning
is unknown to labgate (GC, GB and GN may concern microbiology: antibiogram flags R, I, S are
in OBX-9's list). How a FIC value encodes the file's bytes (base64? a name first?) is not
known either: labgate keeps OBX-6 as the exact text received and never interprets it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from protocols.errors import LocalProtocolError
from protocols.hprim.records import FILE_VALUE_TYPE, Field, Record

__all__ = [
    "VALUE_TYPES",
    "Coded",
    "EmbeddedFile",
    "ObservationValue",
    "observation_value",
    "parse_number",
]

#: OBX-3 value types known to libHprim [fact sheet §4].
VALUE_TYPES = frozenset(
    {"NM", "CE", "ST", "TX", "GC", FILE_VALUE_TYPE, "AD", "CK", "CNA", "DT", "PN", "TN", "GB", "GN"}
)

_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


@dataclass(frozen=True, slots=True)
class Coded:
    """A coded entry (CE): code~text~coding system. Also the shape of a test id (OBX-4,
    OBR-5): ``AU~Acide urique~L``, where ``L`` is the lab's own coding (as in HL7)."""

    code: str
    text: str = ""
    system: str = ""


@dataclass(frozen=True, slots=True)
class EmbeddedFile:
    """The OBX-6 of a FIC value (HPRIM Santé 2.4), exactly as it is written in the message:
    escapes and delimiters included, continuation lines joined. Never interpreted."""

    text: str


@dataclass(frozen=True, slots=True)
class ObservationValue:
    """What OBX-6 holds, read according to OBX-3.

    `repeats` is OBX-6 as decoded, whatever the type. `text` is the first value (first
    component of the first repeat). `number` is set for NM when that value is a decimal number
    (``"5.4"``, ``" -0.5 "``); anything else (``"<0.5"``, ``"5,4"``) leaves it None: the driver
    decides. `coded` has one entry per repeat for CE; `file` is set for FIC.
    """

    value_type: str
    repeats: Field
    number: Decimal | None = None
    coded: tuple[Coded, ...] = ()
    file: EmbeddedFile | None = None

    @property
    def text(self) -> str:
        """The first value (first component of the first repeat), "" if none or a file."""
        if self.file is not None or not self.repeats:
            return ""
        return self.repeats[0][0][0]


def parse_number(text: str) -> Decimal | None:
    """A decimal number written with a point, white space around ignored; None otherwise."""
    stripped = text.strip()
    if not _NUMBER.fullmatch(stripped):
        return None
    try:
        return Decimal(stripped)
    except InvalidOperation:  # pragma: no cover - the pattern only admits valid literals
        return None


def observation_value(record: Record) -> ObservationValue:
    """Read OBX-6 of an OBX record according to its value type (OBX-3). Never raises for a
    decoded OBX: an unknown type gives the repeats only (see `check_structure` for findings)."""
    if record.type != "OBX":
        raise LocalProtocolError(f"an OBX record is needed, not {record.type}")
    value_type = record.field(3).strip().upper()
    repeats = record.repeats(6)
    if value_type == FILE_VALUE_TYPE:
        return ObservationValue(value_type, repeats, file=EmbeddedFile(record.field(6)))
    if value_type == "NM":
        return ObservationValue(value_type, repeats, number=parse_number(record.field(6)))
    if value_type == "CE":
        coded = tuple(
            Coded(*(c[0] for c in repeat[:3])) for repeat in repeats if any(any(c) for c in repeat)
        )
        return ObservationValue(value_type, repeats, coded=coded)
    return ObservationValue(value_type, repeats)
