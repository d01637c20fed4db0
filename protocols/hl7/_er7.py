"""ER7 (the ``|^~\\&`` text encoding of HL7 v2) helpers shared by the message modules.

Structure is left to the libraries: python-hl7 splits a received message into segments,
fields, repetitions, components and sub-components using the delimiters its MSH declares.
What python-hl7 gets wrong for a UTF-8 middleware is done here instead:

- **escaping** (HL7 v2.5.1 §2.7): python-hl7's ``escape`` turns every non-ASCII character
  into ``\\Xhh\\`` (wrong for ``µ`` or ``Müller`` in a UTF-8 message) and its ``unescape``
  decodes ``\\Xhh\\`` byte by byte as Latin-1 and drops unknown sequences.  Here, every
  delimiter and every control character is escaped, non-ASCII text is kept as is, and
  hex escapes are decoded as bytes in the message's character set;
- **character sets** (MSH-18): the bytes are decoded with the codec MSH-18 names;
- **line endings**: files and logs carry LF or CRLF where the wire has CR;
- **timestamps** (DTM): ``YYYY[MM[DD[HH[MM[SS[.S...]]]]]][+/-ZZZZ]`` both ways.

Nothing here does I/O or reads the clock.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import hl7  # python-hl7 (absolute import: this package is protocols.hl7, not hl7)

from protocols.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "ENCODING_CHARACTERS",
    "FIELD_SEPARATOR",
    "ParsedMessage",
    "codec_for",
    "decode",
    "escape",
    "field",
    "format_date",
    "format_ts",
    "msh_field",
    "msh_fields",
    "msh_segment",
    "parse_message",
    "parse_ts",
    "render",
    "repeated",
    "segment",
]

#: Field separator we emit (MSH-1).
FIELD_SEPARATOR = "|"
#: Component, repetition, escape and sub-component characters we emit (MSH-2).
ENCODING_CHARACTERS = "^~\\&"

_COMPONENT, _REPETITION, _ESCAPE, _SUBCOMPONENT = tuple(ENCODING_CHARACTERS)

# Escaping for what we emit: the five delimiters by name, control characters (CR would
# end the segment, VT/FS would break MLLP framing) as hex.  Built once: str.translate is
# the fastest way to escape in CPython.
_ESCAPES: dict[int, str] = {
    ord(_ESCAPE): "\\E\\",
    ord(FIELD_SEPARATOR): "\\F\\",
    ord(_COMPONENT): "\\S\\",
    ord(_SUBCOMPONENT): "\\T\\",
    ord(_REPETITION): "\\R\\",
}
_ESCAPES.update({c: f"\\X{c:02X}\\" for c in (*range(0x20), 0x7F)})


def escape(text: str) -> str:
    """Escape ``text`` for one leaf (sub-component) of a message we build.

    Every delimiter becomes its named escape (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``) and every
    C0 control character and DEL a hex escape (``\\X0D\\``), so a value can never end
    a segment or an MLLP block.  Other characters, non-ASCII included, are kept.
    """
    return text.translate(_ESCAPES)


# --- building with python-hl7 containers ---------------------------------------------

# Every container carries the delimiters it joins with; ours are always the standard ones.
_SEPARATORS = "\r" + FIELD_SEPARATOR + _REPETITION + _COMPONENT + _SUBCOMPONENT


def field(*components: str) -> Any:
    """A one-repetition ``hl7.Field`` from plain-text components (escaped here)."""
    return hl7.Field(
        sequence=[hl7.Repetition(sequence=[escape(c) for c in components], separators=_SEPARATORS)],
        separators=_SEPARATORS,
    )


def repeated(values: Sequence[str]) -> Any:
    """An ``hl7.Field`` with one plain-text repetition per value (escaped here)."""
    return hl7.Field(sequence=[escape(v) for v in values], separators=_SEPARATORS)


def segment(name: str, *fields: Any) -> Any:
    """An ``hl7.Segment`` from its fields (field 1 first); trailing empty fields dropped."""
    items = list(fields)
    while items and not str(items[-1]):
        items.pop()
    return hl7.Segment(sequence=[field(name), *items], separators=_SEPARATORS)


def msh_segment(*fields: Any) -> Any:
    """An MSH from MSH-3 onwards; MSH-1/2 are the standard delimiters."""
    items = list(fields)
    while items and not str(items[-1]):
        items.pop()
    head = [
        hl7.Field(sequence=["MSH"], separators=_SEPARATORS),
        hl7.Field(sequence=[FIELD_SEPARATOR], separators=_SEPARATORS),
        hl7.Field(sequence=[ENCODING_CHARACTERS], separators=_SEPARATORS),
    ]
    return hl7.Segment(sequence=[*head, *items], separators=_SEPARATORS)


def render(segments: Sequence[Any]) -> str:
    """ER7 text of a message: segments joined and terminated by CR."""
    return str(hl7.Message(sequence=list(segments), separators=_SEPARATORS))


# --- character sets (HL7 table 0211) -------------------------------------------------

_CODECS = {
    "": "utf-8",  # not declared: UTF-8 reads ASCII and is the v2.8+ default
    "ASCII": "ascii",
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",  # v2.3-era spelling; analysers (Erba ELite 580) mean UTF-8 by it
    "UTF-8": "utf-8",
    **{f"8859/{n}": f"iso8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 15)},
}


def codec_for(charset: str) -> str:
    """Python codec for an MSH-18 value (first repetition); unknown names read as UTF-8."""
    return _CODECS.get(charset.strip().upper(), "utf-8")


# --- reading MSH cheaply -------------------------------------------------------------

_LEADING_JUNK = b"\x0b \t\r\n"


def msh_fields(message: bytes) -> list[bytes]:
    """The raw MSH fields of ``message``, split on its own field separator.

    ``result[0]`` is ``b"MSH"``, ``result[1]`` is MSH-2 and ``result[n - 1]`` is MSH-n
    for n >= 2 (MSH-1, the separator itself, has no slot).  Leading whitespace or a stray
    VT is skipped.  Raises RemoteProtocolError when the message does not start with MSH.
    """
    start = len(message) - len(message.lstrip(_LEADING_JUNK))
    if message[start : start + 3] != b"MSH" or len(message) < start + 4:
        head = message[start : start + 20]
        raise RemoteProtocolError(f"not an HL7 v2 message: does not start with MSH ({head!r})")
    separator = message[start + 3 : start + 4]
    if separator.isalnum() or separator in b"\r\n":
        raise RemoteProtocolError(f"MSH-1 field separator {separator!r} is not usable")
    end = len(message)
    for terminator in (b"\r", b"\n"):
        found = message.find(terminator, start)
        if 0 <= found < end:
            end = found
    return message[start:end].split(separator)


def msh_field(fields: Sequence[bytes], number: int) -> bytes:
    """MSH-``number`` (``number`` >= 2) from :func:`msh_fields`, ``b""`` if absent."""
    index = number - 1
    return fields[index] if index < len(fields) else b""


# --- parsing with python-hl7 ---------------------------------------------------------


class ParsedMessage:
    """A received message split by python-hl7, with typed, unescaping accessors.

    python-hl7 keeps leaves escaped when indexed directly; :meth:`get` unescapes them with
    this message's own delimiters and character set.
    """

    __slots__ = (
        "_component",
        "_escape",
        "_field",
        "_named",
        "_repetition",
        "_subcomponent",
        "codec",
        "segments",
    )

    def __init__(self, message: Any, codec: str) -> None:
        """Wrap the ``hl7.Message`` ``message`` whose bytes were decoded with ``codec``."""
        separators: str = message.separators  # "\r" field repetition component subcomponent
        self._field = separators[1]
        self._repetition = separators[2]
        self._component = separators[3]
        self._subcomponent = separators[4]
        self._escape: str = message.esc
        self._named: dict[str, str] = {
            "F": self._field,
            "S": self._component,
            "T": self._subcomponent,
            "R": self._repetition,
            "E": self._escape,
            "H": "",
            "N": "",
            ".br": "\n",
        }
        self.codec = codec
        #: The segments in order, as python-hl7 ``Segment`` objects.
        self.segments: list[Any] = list(message)

    @staticmethod
    def name(segment: Any) -> str:
        """Segment id (``"OBX"``)."""
        return str(segment[0])

    @staticmethod
    def _child(node: Any, index: int) -> Any:
        # python-hl7 stores a level that holds no deeper delimiter as a plain string: it is
        # then its own first child (HL7's rule for reading a shallower value deeper).
        if isinstance(node, str):
            return node if index == 1 else ""
        return node[index - 1] if 0 < index <= len(node) else ""

    def raw_field(self, segment: Any, field: int) -> Any:
        """Field ``field`` of ``segment`` as python-hl7 holds it (``""`` when absent)."""
        if self.name(segment) == "MSH":
            if field == 1:
                return self._field
            if field == 2:
                return str(segment[2])
        return segment[field] if 0 < field < len(segment) else ""

    def repetition_count(self, segment: Any, field: int) -> int:
        """How many repetitions field ``field`` holds (0 when empty)."""
        node = self.raw_field(segment, field)
        if isinstance(node, str):
            return 1 if node else 0
        if len(node) == 1 and not str(node[0]):
            return 0
        return len(node)

    def get(
        self,
        segment: Any,
        field: int,
        component: int = 1,
        repetition: int = 1,
        subcomponent: int = 1,
    ) -> str:
        """The unescaped text at ``field.repetition.component.subcomponent`` (1-based)."""
        if self.name(segment) == "MSH" and field in (1, 2):
            return str(self.raw_field(segment, field))
        node = self.raw_field(segment, field)
        if not isinstance(node, str):
            node = self._child(node, repetition)
            node = self._child(node, component)
            node = self._child(node, subcomponent)
        elif (repetition, component, subcomponent) != (1, 1, 1):
            node = ""
        return self.unescape(str(node))

    def field_text(self, segment: Any, field: int, repetition: int = 1) -> str:
        """One repetition of a field: unescaped when it is a single value, else its ER7 text.

        For a composite (``^182`` of an SN, ``POS^Positive^L`` of a CWE) the delimiters
        are kept and the leaves stay escaped, so nothing is lost or made ambiguous.
        """
        node = self._child(self.raw_field(segment, field), repetition)
        if isinstance(node, str):
            return self.unescape(node)
        text = str(node)
        if self._component in text or self._subcomponent in text:
            return text
        return self.unescape(text)

    def unescape(self, text: str) -> str:
        """Resolve HL7 escape sequences in one leaf.

        Delimiter escapes give the delimiter; ``\\Xhh..\\`` gives those bytes decoded in
        the message's character set; ``\\.br\\`` a line feed; highlighting (``\\H\\``,
        ``\\N\\``) is dropped; anything else (``\\Zxx\\``, a lone escape character) is
        kept verbatim, so no text is silently lost.
        """
        esc = self._escape
        if esc not in text:
            return text
        out: list[str] = []
        position = 0
        while True:
            start = text.find(esc, position)
            if start < 0:
                out.append(text[position:])
                break
            end = text.find(esc, start + 1)
            if end < 0:
                out.append(text[position:])
                break
            out.append(text[position:start])
            out.append(self._resolve(text[start + 1 : end], text[start : end + 1]))
            position = end + 1
        return "".join(out)

    def _resolve(self, sequence: str, verbatim: str) -> str:
        named = self._named.get(sequence)
        if named is not None:
            return named
        if sequence[:1] == "X" and len(sequence) % 2 == 1 and len(sequence) > 1:
            try:
                return bytes.fromhex(sequence[1:]).decode(self.codec)
            except (ValueError, UnicodeDecodeError):
                try:
                    return bytes.fromhex(sequence[1:]).decode("latin-1")
                except ValueError:
                    pass
        return verbatim


def decode(message: bytes) -> tuple[str, str]:
    """Decode ``message`` per its MSH-18 and normalise it; return (text, codec).

    Accepts CR, CRLF or LF between segments, a stray VT before MSH and a trailing
    FS/CR (a block copied with its framing), and drops blank segments; the text has
    CR-separated segments and no final CR.  RemoteProtocolError when impossible.
    """
    fields = msh_fields(message)
    charset = msh_field(fields, 18).split(b"~")[0]
    codec = codec_for(charset.decode("latin-1"))
    try:
        text = message.decode(codec)
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(
            f"message is not valid {codec} (MSH-18 {charset!r}): {exc.reason} at byte {exc.start}"
        ) from exc
    text = text.replace("\r\n", "\r").replace("\n", "\r").lstrip("\x0b \t\r").rstrip("\x1c\r")
    return "\r".join(s for s in text.split("\r") if s.strip()), codec


def parse_message(message: bytes) -> ParsedMessage:
    """Decode (see :func:`decode`) and split ``message`` with python-hl7.

    Raises RemoteProtocolError when the bytes are not an HL7 v2 message.
    """
    text, codec = decode(message)
    # python-hl7 strips whitespace around the whole message, which would eat trailing
    # spaces of the last segment's last field; a throw-away Z segment protects them.
    try:
        parsed = hl7.parse(text + "\rZZZ")
    except Exception as exc:  # python-hl7 raises ParseException, IndexError, ValueError...
        raise RemoteProtocolError(f"HL7 v2 message cannot be split: {exc!r}") from exc
    del parsed[-1]
    return ParsedMessage(parsed, codec)


# --- dates and times (DT, DTM/TS) ----------------------------------------------------


def format_ts(moment: datetime) -> str:
    """``YYYYMMDDHHMMSS+zzzz`` for an aware datetime; LocalProtocolError if naive."""
    offset = moment.utcoffset()
    if offset is None:
        raise LocalProtocolError(f"timestamp {moment!r} has no time zone; HL7 needs +zzzz")
    if offset % timedelta(minutes=1):
        raise LocalProtocolError(f"UTC offset {offset} of {moment!r} is not whole minutes")
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    return f"{moment:%Y%m%d%H%M%S}{sign}{hours:02d}{minutes:02d}"


def format_date(day: date) -> str:
    """``YYYYMMDD`` (HL7 DT)."""
    return f"{day:%Y%m%d}"


_TS = re.compile(
    r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?([+-]\d{4})?",
    re.ASCII,
)


def parse_ts(text: str) -> datetime | None:
    """Parse an HL7 DTM/TS (``20190331102500.0000-0400``); None when ``text`` is empty.

    Missing precision reads as the start of the period; with a zone the result is
    aware, without one it is naive (the sender's local time).  A TS's second component
    (degree of precision, pre-2.6) is ignored.  Raises ValueError when malformed.
    """
    text = text.split("^", 1)[0].strip()
    if not text:
        return None
    match = _TS.fullmatch(text)
    if match is None:
        raise ValueError(f"not an HL7 timestamp: {text!r}")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    tz: timezone | None = None
    if zone is not None:
        sign = -1 if zone[0] == "-" else 1
        hours, minutes = int(zone[1:3]), int(zone[3:5])
        if minutes >= 60 or hours >= 24:
            raise ValueError(f"not an HL7 time zone: {zone!r}")
        tz = (
            UTC
            if hours == minutes == 0
            else timezone(sign * timedelta(hours=hours, minutes=minutes))
        )
    micro = int((fraction or "0").ljust(6, "0")[:6])
    return datetime(
        int(year),
        int(month or 1),
        int(day or 1),
        int(hour or 0),
        int(minute or 0),
        int(second or 0),
        micro,
        tzinfo=tz,
    )
