"""Acknowledgements: read the MSA of an answer, answer a received message with an ACK.

Original mode (MSH-15/16 empty) uses AA (accepted), AE (error: resend will not help
without a fix), AR (rejected: e.g. unsupported type or version); enhanced mode's commit
ACKs use CA/CE/CR.  MSA-2 carries the MSH-10 of the message acknowledged.

One reading of MSA serves every answer: :func:`parse_answer` takes the acknowledgement
out of any message that carries one (a general ``ACK``, the ``ORL^O34`` answering an IHE
LAW ``OML^O33``, ``ORL^O22`` for ``OML^O21``, ``RSP^K11`` for a query...);
:func:`parse_ack` is the same reading for callers that accept nothing but an ``ACK``
(the LIS sender, whose results are answered ``ACK^R01``/``ACK^R22``).

The ACK we build answers any received message, even one whose body cannot be parsed:
only its MSH is read, so an AR can still be sent for a broken message::

    MSH|^~\\&|<MSH-5>|<MSH-6>|<MSH-3>|<MSH-4>|now+zzzz||ACK^<trigger>^ACK|id|<MSH-11>|<MSH-12>
    MSA|AA|<MSH-10 of the original>|text
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.hl7 import _er7 as er7
from protocols.hl7._er7 import (
    ParsedMessage,
    codec_for,
    format_ts,
    msh_field,
    msh_fields,
    parse_message,
)

__all__ = ["ACK_CODES", "Ack", "build_ack", "message_control_id", "parse_ack", "parse_answer"]

#: Acknowledgement codes (HL7 table 0008).
ACK_CODES = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})


@dataclass(frozen=True, slots=True)
class Ack:
    """A received acknowledgement.

    ``text`` is MSA-3, or when that is empty the first text found in ERR (ERR-8 user
    message, ERR-7 diagnostics, ERR-3 HL7 error text, v2.3 ERR-1 text).
    """

    code: str
    acknowledged_control_id: str
    control_id: str
    text: str
    raw: bytes

    @property
    def accepted(self) -> bool:
        """True for AA and CA."""
        return self.code in ("AA", "CA")


def message_control_id(message: bytes) -> str:
    """MSH-10 of any HL7 v2 message, read from the MSH line only (no full parse).

    Raises RemoteProtocolError when the bytes do not start with an MSH segment.
    """
    fields = msh_fields(message)
    raw = msh_field(fields, 10)
    escape_char = fields[1][2:3] or b"\\"
    if escape_char not in raw:
        return raw.decode("utf-8", errors="replace")
    reader = _MshReader(message)
    return reader.get(10)


class _MshReader:
    """The MSH of a received message, parsed on its own.

    Only the first line is read, so a message with a broken body can still be answered.
    """

    __slots__ = ("msg", "msh")

    def __init__(self, message: bytes) -> None:
        line = message.lstrip(b"\x0b \t\r\n")
        ends = [i for i in (line.find(b"\r"), line.find(b"\n")) if i >= 0]
        self.msg = parse_message(line[: min(ends, default=len(line))])
        self.msh: Any = self.msg.segments[0]

    def get(self, field: int, component: int = 1) -> str:
        """Unescaped MSH-``field``.``component``."""
        return self.msg.get(self.msh, field, component)

    def components(self, field: int) -> list[str]:
        """Unescaped components of the first repetition of MSH-``field``, trailing empties cut."""
        node = self.msg.raw_field(self.msh, field)
        count = 1
        if not isinstance(node, str) and node and not isinstance(node[0], str):
            count = len(node[0])
        parts = [self.msg.get(self.msh, field, c) for c in range(1, count + 1)]
        while parts and not parts[-1]:
            parts.pop()
        return parts


def build_ack(message: bytes, code: str, control_id: str, now: datetime, text: str = "") -> bytes:
    """Build the ACK answering ``message`` (any type, any v2.x version).

    Sender and receiver are swapped from the original MSH, MSH-9 is
    ``ACK^<original trigger>^ACK``, MSH-10 is ``control_id``, MSH-11/12 and MSH-18 are
    copied, MSA-1 is ``code``, MSA-2 the original MSH-10, MSA-3 ``text``.  The result
    is encoded in the original's character set (MSH-18), characters it cannot hold
    replaced.  Raises RemoteProtocolError if ``message`` has no readable MSH, and
    LocalProtocolError for an unknown code, an empty control id or a naive ``now``.
    """
    if code not in ACK_CODES:
        raise LocalProtocolError(f"acknowledgement code must be one of {sorted(ACK_CODES)}")
    if not control_id:
        raise LocalProtocolError("the ACK needs a message control id (MSH-10)")
    created = format_ts(now)
    original = _MshReader(message)
    charset = original.components(18)[:1]
    empty = er7.field()
    msh = er7.msh_segment(
        er7.field(*original.components(5)),  # 3 sending application: whom it was sent to
        er7.field(*original.components(6)),
        er7.field(*original.components(3)),  # 5 receiving application: who sent it
        er7.field(*original.components(4)),
        er7.field(created),  # 7
        empty,
        er7.field("ACK", original.get(9, 2), "ACK"),  # 9
        er7.field(control_id),
        er7.field(*(original.components(11) or ["P"])),
        er7.field(*original.components(12)),
        empty,
        empty,
        empty,
        empty,
        empty,  # 13-17
        er7.field(*charset),  # 18
    )
    msa = er7.segment("MSA", er7.field(code), er7.field(original.get(10)), er7.field(text))
    codec = codec_for(charset[0] if charset else "")
    return er7.render([msh, msa]).encode(codec, errors="replace")


def parse_ack(message: bytes) -> Ack:
    """Read an ACK (MSH-9 ``ACK``, an MSA with a known code).

    Raises RemoteProtocolError, with the reason, when the bytes are not an HL7 message,
    not an ACK, or carry no usable MSA.  Answers of other types: :func:`parse_answer`.
    """
    plain = _plain_ack(message)
    return plain if plain is not None else _parsed_ack(message)


def _parsed_ack(message: bytes) -> Ack:
    msg = parse_message(message)
    kind = msg.get(msg.segments[0], 9)
    if kind != "ACK":
        raise RemoteProtocolError(f"not an acknowledgement: MSH-9 is {kind!r}")
    return _acknowledgement(msg, message)


# What a plain ACK's fields may hold for `_plain_ack` to read it without the parser: no
# component, repetition, subcomponent or escape character.
_PLAIN_FIELD = re.compile(rb"[^^~&\\]*")


def _plain_ack(message: bytes) -> Ack | None:
    """The Ack of the common answer, read by splitting: an ASCII ``MSH`` (standard encoding
    characters, MSH-9 ``ACK`` with or without trigger) and an ``MSA``, nothing else, no
    component, repetition or escape in the fields read. None for anything else, which
    the parser then reads. A LIS answers every message of a run: this is the sender's
    hot path (the parser cost a tenth of sending a message, profiled); a hypothesis test
    holds it to the parser's reading."""
    if not message.isascii() or not message.startswith(b"MSH|^~\\&|"):
        return None
    segments = message.rstrip(b"\r\n").split(b"\r")
    if len(segments) != 2 or not segments[1].startswith(b"MSA|"):
        return None
    msh = segments[0].split(b"|")
    msa = segments[1].split(b"|")
    if len(msh) < 10 or msh[8] not in (b"ACK", b"ACK^R01^ACK", b"ACK^R22^ACK"):
        return None
    fields = [msh[9], *msa[1:4]]
    if not all(_PLAIN_FIELD.fullmatch(field) for field in fields):
        return None
    code = msa[1].decode("ascii") if len(msa) > 1 else ""
    if code not in ACK_CODES:
        return None
    return Ack(
        code=code,
        acknowledged_control_id=msa[2].decode("ascii") if len(msa) > 2 else "",
        control_id=msh[9].decode("ascii"),
        text=msa[3].decode("ascii") if len(msa) > 3 else "",
        raw=message,
    )


def parse_answer(message: bytes) -> Ack:
    """Read the acknowledgement of any answer: its MSA, whatever MSH-9 says.

    An ``ACK``, an ``ORL^O34`` (or ``ORL^O22``, ``ORR^O02``), an ``RSP^K11``: each
    carries the MSA a sender waits for, and it is read the same way as by
    :func:`parse_ack` (MSA-1 code, MSA-2 acknowledged control id, MSA-3 or ERR text).
    The rest of the message (an ORL's order echo, an RSP's query answer) is left to the
    caller.  Raises RemoteProtocolError when the bytes are not an HL7 message, have no
    MSA (they are not an answer), or MSA-1 is no acknowledgement code.
    """
    return _acknowledgement(parse_message(message), message)


def _acknowledgement(msg: ParsedMessage, message: bytes) -> Ack:
    """The Ack of a parsed answer: MSA-1..3, the text from ERR when MSA-3 is empty."""
    msh = msg.segments[0]
    msa = next((s for s in msg.segments if msg.name(s) == "MSA"), None)
    if msa is None:
        kind, trigger = msg.get(msh, 9), msg.get(msh, 9, 2)
        raise RemoteProtocolError(
            f"{kind}^{trigger} without an MSA segment: not an acknowledgement"
        )
    code = msg.get(msa, 1)
    if code not in ACK_CODES:
        raise RemoteProtocolError(f"MSA-1 {code!r} is not an acknowledgement code")
    text = msg.get(msa, 3)
    if not text:
        err = next((s for s in msg.segments if msg.name(s) == "ERR"), None)
        if err is not None:
            candidates = (
                msg.get(err, 8),
                msg.get(err, 7),
                msg.get(err, 3, 2),
                msg.get(err, 1, 4, subcomponent=2),
            )
            text = next((t for t in candidates if t), "")
    return Ack(
        code=code,
        acknowledged_control_id=msg.get(msa, 2),
        control_id=msg.get(msh, 10),
        text=text,
        raw=message,
    )
