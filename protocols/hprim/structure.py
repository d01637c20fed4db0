"""What a decoded message should look like, as findings rather than refusals.

The record hierarchy is the one libHprim's grammar enforces (fact sheet §3)::

    H                    header (exactly one: `decode_message` sees to it)
     P   (C*)            patient, 0..n, each followed by optional comments
      OBR (C*)           request / sample, 1..n per P
       OBX (C*)          result, 1..n per OBR
    L                    trailer (exactly one, last)

libHprim refuses a file that breaks it. labgate reports instead (`check_structure` returns
findings, `decode_message` has already refused what cannot be read): the HPRIM text itself was
not available, so the hierarchy is what one reader implemented, and a lab must be able to see
a deviating file whole before deciding. Records of other types (REG, FAC, ACT... for
administrative and billing use) are passed over: where they belong is not known.

The checks of the H record come from the same source: H-5 sender and H-10 receiver and H-14
date-time are required; H-13 carries the version. libHprim reads H2.0 to H2.2; H2.4 (2.2 plus
embedded files) is from the French Wikipedia page; it is assumed to be written ``H2.4``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from protocols.hprim.records import FILE_VALUE_TYPE, Message, Record
from protocols.hprim.values import VALUE_TYPES

__all__ = ["KNOWN_VERSIONS", "Finding", "check_structure"]

#: H-13 versions labgate reads: libHprim's three, and 2.4 (embedded files).
KNOWN_VERSIONS = ("H2.0", "H2.1", "H2.2", "H2.4")
_DATE_TIME = re.compile(r"[0-9]{12}(?:[0-9]{2})?")  # YYYYMMDDHHMM[SS], H-14 [lib]


@dataclass(frozen=True, slots=True)
class Finding:
    """One way the message departs from the expected structure."""

    line: int | None  #: the record's first line (None for a record that was built)
    record: str  #: its type
    text: str


# The hierarchy as a transition table: (where we are, record type) -> where we go. Anything
# not in the table is a finding; `_RECOVER` says where we are after it, so one misplaced
# record gives one finding, not one per record after it.
_NEXT = {
    ("header", "P"): "patient",
    ("header", "L"): "trailer",
    ("patient", "C"): "patient",
    ("patient", "OBR"): "request",
    ("request", "C"): "request",
    ("request", "OBX"): "result",
    ("result", "C"): "result",
    ("result", "OBX"): "result",
    ("result", "OBR"): "request",
    ("result", "P"): "patient",
    ("result", "L"): "trailer",
}
_RECOVER = {"P": "patient", "OBR": "request", "OBX": "result", "L": "trailer"}
_CHECKED = frozenset({"P", "OBR", "OBX", "C", "L"})


def _where(record: Record) -> int | None:
    return record.lines[0] if record.lines is not None else None


def _header_findings(message: Message) -> list[Finding]:
    h = message.records[0]
    line = _where(h)
    found: list[Finding] = []
    for n, name in ((5, "sender"), (10, "receiver"), (7, "message type")):
        if not h.field(n):
            found.append(Finding(line, "H", f"H-{n} ({name}) is empty"))
    version = message.version
    if version not in KNOWN_VERSIONS:
        found.append(
            Finding(
                line, "H", f"H-13 version {version!r} is not one of {', '.join(KNOWN_VERSIONS)}"
            )
        )
    when = h.field(14)
    if not _DATE_TIME.fullmatch(when):
        found.append(Finding(line, "H", f"H-14 date-time {when!r} is not YYYYMMDDHHMM[SS]"))
    return found


def _obx_findings(record: Record, version: str) -> list[Finding]:
    value_type = record.field(3).strip().upper()
    line = _where(record)
    if not value_type:
        return [Finding(line, "OBX", "OBX-3 value type is empty")]
    if value_type not in VALUE_TYPES:
        return [Finding(line, "OBX", f"OBX-3 value type {value_type!r} is not a known one")]
    if value_type == FILE_VALUE_TYPE and version != "H2.4":
        return [Finding(line, "OBX", f"an embedded file (FIC) in a {version or '?'} message")]
    return []


def _hierarchy_finding(state: str, record: Record, opened: Record | None) -> str:
    """Why `record` cannot come where we are; `opened` is the P or OBR still waiting for its
    first OBR or OBX."""
    kind = record.type
    if state == "trailer":
        return f"{kind} record after the L record"
    if state == "patient" and kind != "OBX" and opened is not None:
        return f"the P record of line {_where(opened)} has no OBR"
    if state == "request" and opened is not None:
        return f"the OBR record of line {_where(opened)} has no OBX"
    if kind == "C":
        return "C record right after H: no patient, request or result to attach it to"
    if kind == "OBX":
        return "OBX record with no OBR before it"
    return "OBR record with no P before it"


def check_structure(message: Message) -> tuple[Finding, ...]:
    """How `message` departs from the HPRIM Santé structure libHprim enforces: the H record's
    required fields, the P/OBR/OBX/C hierarchy, one L last, known OBX value types, embedded
    files only in 2.4. An empty tuple means none found."""
    found = _header_findings(message)
    state = "header"
    opened: Record | None = None  # the P or OBR that has not had its OBR / OBX yet
    for record in message.records[1:]:
        kind = record.type
        if kind not in _CHECKED:
            continue
        if kind == "OBX":
            found += _obx_findings(record, message.version)
        following = _NEXT.get((state, kind))
        if following is None:
            found.append(Finding(_where(record), kind, _hierarchy_finding(state, record, opened)))
            following = "trailer" if state == "trailer" else _RECOVER.get(kind, state)
        if kind in ("P", "OBR"):
            opened = record
        elif kind in ("OBX", "L"):
            opened = None
        state = following
    if state != "trailer":
        last = message.records[-1]
        if opened is not None:
            found.append(
                Finding(_where(opened), opened.type, _hierarchy_finding(state, last, opened))
            )
        found.append(
            Finding(_where(last), last.type, "no L record at the end: the file may be truncated")
        )
    return tuple(found)
