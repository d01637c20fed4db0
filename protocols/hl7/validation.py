"""Strict structure check of a message against the HL7 standard, by hl7apy.

hl7apy knows every message structure, segment, field, datatype and table of v2.1 to
v2.8.2; it checks group nesting and cardinality, datatypes and lengths.  It is slow
(about 25 ms for a 10-observation ORU), so it is meant for tests, a strict simulated LIS,
or diagnosing an interface, not for every message in production.

hl7apy 1.3.5 cannot *parse* an ORU^R01 with more than one PATIENT_RESULT group (its
group finder puts the second PID in the first group and fails with "max limit (1)
reached for ORU_R01_PATIENT_RESULT"), although the standard allows any number.  Such a
message is therefore checked one patient at a time: MSH plus each PID-led part.
"""

from __future__ import annotations

import itertools

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message as _hl7apy_parse

from protocols.errors import RemoteProtocolError
from protocols.hl7._er7 import decode, msh_field, msh_fields

__all__ = ["validate_message"]


def _patient_parts(segments: list[str]) -> list[list[str]]:
    """MSH + each PATIENT_RESULT (from one PID to the next) as separate messages."""
    msh, body = segments[0], segments[1:]
    separator = msh[3:4]
    starts = [i for i, s in enumerate(body) if s[:3] == "PID" and s[3:4] in ("", separator)]
    if len(starts) < 2:
        return [segments]
    bounds = [0, *starts[1:], len(body)]
    return [[msh, *body[a:b]] for a, b in itertools.pairwise(bounds)]


def validate_message(message: bytes) -> None:
    """Raise RemoteProtocolError, with hl7apy's reason, unless ``message`` is valid.

    The version and message structure are taken from the message (MSH-12, MSH-9).
    Line endings are normalised first, as for parsing.
    """
    text, _codec = decode(message)
    segments = text.split("\r")
    parts = [segments]
    if msh_field(msh_fields(message), 9).startswith(b"ORU"):
        parts = _patient_parts(segments)
    for part in parts:
        try:
            parsed = _hl7apy_parse(
                "\r".join(part), validation_level=VALIDATION_LEVEL.STRICT, find_groups=True
            )
            parsed.validate()
        except Exception as exc:  # hl7apy raises its own tree, but also KeyError, ValueError...
            raise RemoteProtocolError(f"message fails strict HL7 validation: {exc}") from exc
