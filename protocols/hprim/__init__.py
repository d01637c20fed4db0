"""HPRIM Santé 2.2 / 2.4, the French records format between labs and hospital systems.

Sans-IO, like `protocols.astm`: text in, records out; records in, text out. How the text
travels (files in a spool directory, TCP) is the LIS link's business, not this package's::

    from protocols import hprim

    for part in hprim.split_messages(data):                 # a file may hold several
        message = hprim.decode_message(part.data, first_line=part.line)
        for finding in hprim.check_structure(message):      # hierarchy, H fields, versions
            print(finding.line, finding.text)
        for record in message.records:
            if record.type == "OBX":
                value = hprim.observation_value(record)     # NM/ST/TX/CE/FIC...

    message = hprim.build_results(header, patients)         # H P OBR OBX C L
    data = hprim.encode_message(message)                    # A| lines past 220 characters

The facts, and which of them are verified, are in `reference/HPRIM.md` and the README
section "French LIS links: HPRIM Santé": the HPRIM texts are member-only and were not read.
Modules: `records` (delimiters, escapes, continuation lines, the codec), `values` (OBX value
types), `structure` (the record hierarchy, as findings), `results` (the results builder).
"""

from __future__ import annotations

from protocols.hprim.records import (
    FILE_VALUE_TYPE,
    MAX_LINE,
    Component,
    DecodeError,
    Delimiters,
    Field,
    Message,
    MessageText,
    Record,
    Repeat,
    components,
    decode_message,
    encode_message,
    split_messages,
)
from protocols.hprim.results import (
    ABNORMAL_FLAGS,
    CORRECTION_NOTE,
    OBSERVATION_STATUSES,
    REQUEST_STATUSES,
    ElectronicValidation,
    Header,
    Observation,
    Order,
    Patient,
    PointOfCare,
    build_results,
)
from protocols.hprim.structure import KNOWN_VERSIONS, Finding, check_structure
from protocols.hprim.values import (
    VALUE_TYPES,
    Coded,
    EmbeddedFile,
    ObservationValue,
    observation_value,
    parse_number,
)

__all__ = [
    "ABNORMAL_FLAGS",
    "CORRECTION_NOTE",
    "FILE_VALUE_TYPE",
    "KNOWN_VERSIONS",
    "MAX_LINE",
    "OBSERVATION_STATUSES",
    "REQUEST_STATUSES",
    "VALUE_TYPES",
    "Coded",
    "Component",
    "DecodeError",
    "Delimiters",
    "ElectronicValidation",
    "EmbeddedFile",
    "Field",
    "Finding",
    "Header",
    "Message",
    "MessageText",
    "Observation",
    "ObservationValue",
    "Order",
    "Patient",
    "PointOfCare",
    "Record",
    "Repeat",
    "build_results",
    "check_structure",
    "components",
    "decode_message",
    "encode_message",
    "observation_value",
    "parse_number",
    "split_messages",
]
