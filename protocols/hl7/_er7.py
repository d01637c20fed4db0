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

Building: the result messages sent to the LIS (ORU^R01, OUL^R22: the sender's hot path)
are assembled as text with :func:`escape`; the python-hl7 container helpers (:func:`field`,
:func:`segment`, :func:`render`...) serve the other builders and produce the same bytes.

Nothing here does I/O or reads the clock.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
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
    "split",
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
# Most values (codes, numbers, units) need no escape at all, and translate() with a dict
# looks up every character: one regex scan first makes the common case ~5x faster on long
# text (measured on the decision notes the LIS sender writes under every result).
_NEEDS_ESCAPE = re.compile("[" + "".join(re.escape(chr(c)) for c in sorted(_ESCAPES)) + "]")


def escape(text: str) -> str:
    """Escape ``text`` for one leaf (sub-component) of a message we build.

    Every delimiter becomes its named escape (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``) and every
    C0 control character and DEL a hex escape (``\\X0D\\``), so a value can never end
    a segment or an MLLP block.  Other characters, non-ASCII included, are kept.
    """
    if _NEEDS_ESCAPE.search(text) is None:
        return text
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
        # MSH-1 and MSH-2 are special; the segment's name is read only for them (it is the
        # costly part of a lookup).
        if field in (1, 2) and self.name(segment) == "MSH":
            return self._field if field == 1 else str(segment[2])
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
        if field in (1, 2) and self.name(segment) == "MSH":
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
        parsed = split(text + "\rZZZ")
    except Exception as exc:  # ParseException, IndexError, ValueError... as python-hl7 raises
        raise RemoteProtocolError(f"HL7 v2 message cannot be split: {exc!r}") from exc
    del parsed[-1]
    return ParsedMessage(parsed, codec)


# python-hl7's containers, outermost first, as its parser builds them.
_CONTAINERS: tuple[type[Any], ...] = (
    hl7.Message,
    hl7.Segment,
    hl7.Field,
    hl7.Repetition,
    hl7.Component,
)


def split(text: str) -> Any:
    """``hl7.parse(text)``, 3-4 times faster: the same ``hl7.Message`` of the same containers.

    python-hl7 makes a new parse plan object at every level of every value and builds each
    container through two ``__init__``; on an ACK that was most of the time the LIS sender
    spent reading it.  Here the plan is worked out once per message and the containers are
    filled directly with the attributes those ``__init__`` set.  The rules are python-hl7's,
    quirks included (a level is split only if it holds its own or a deeper separator, MSH-1
    and MSH-2 are fields of their own, separators are found as ``str.find`` finds them);
    ``tests/protocols/hl7/test_hl7_split.py`` compares both on random messages.
    """
    message = text.strip()
    if message[:3] not in ("MSH", "FHS", "BHS"):
        raise hl7.ParseException(f"First segment is {message[:3]}, must be one of MHS, FHS or BHS")
    first = message[3]
    declared = message[3 : message.find(first, 4)]
    separators = (
        "\r"
        + declared[0]
        + (declared[2] if len(declared) > 2 else "~")
        + (declared[1] if len(declared) > 1 else "^")
        + (declared[4] if len(declared) > 4 else "&")
    )
    escape_char = declared[3] if len(declared) > 3 else "\\"
    return _split_level(message, 0, _split_plan(separators, escape_char))


#: One level of a split plan: the separator it splits on, a search for any separator that makes
#: it split (its own or a deeper one), its container, the attributes that container's
#: ``__init__`` would set, and whether python-hl7 accepts to enter it.
_Level = tuple[str, Callable[[str], Any], type[Any], dict[str, Any], bool]


@functools.lru_cache(maxsize=32)
def _split_plan(separators: str, escape_char: str) -> tuple[_Level, ...]:
    """The levels of :func:`split` for a message's delimiters (a handful per interface)."""
    levels: list[_Level] = []
    separator = separators[0]
    for depth, container in enumerate(_CONTAINERS):
        start = separators.find(separator)
        attributes = {
            "separator": separators[depth],
            "esc": escape_char,
            "separators": separators,
            "factory": hl7.Factory,
        }
        splitting = re.compile("[" + "".join(re.escape(s) for s in separators[start:]) + "]")
        # python-hl7 asserts, on entering a level, that as many separators as containers are
        # left: declared separators that repeat (``|^^\\&``) fail it there.
        consistent = len(_CONTAINERS) - depth == len(separators) - start
        levels.append((separator, splitting.search, container, attributes, consistent))
        separator = separators[start + 1] if start + 1 < len(separators) else ""
    return tuple(levels)


def _container(container: type[Any], attributes: dict[str, Any], items: Sequence[Any]) -> Any:
    node = list.__new__(container)
    node.extend(items)
    node.__dict__.update(attributes)
    return node


def _split_level(value: str, depth: int, plan: tuple[_Level, ...]) -> Any:
    if depth == len(plan):
        return value
    separator, splitting, container, attributes, _ = plan[depth]
    if splitting(value) is None:
        return _container(container, attributes, (value,))
    items: list[Any] = []
    if depth == 1 and value[:3] in ("MSH", "BHS", "FHS"):
        end = value.find(value[3], 4)
        field_attributes = plan[2][3]
        for part in (value[:3], value[3], value[4:end]):
            items.append(_container(hl7.Field, field_attributes, (part,)))
        value = value[end + 1 :]
    if value:
        if depth + 1 < len(plan) and not plan[depth + 1][4]:
            raise AssertionError(f"inconsistent separators {plan[0][3]['separators']!r}")
        if depth + 1 < len(plan):
            # Most parts hold no deeper separator: wrapped here, without a call each.
            _, deeper, part_container, part_attributes, _ = plan[depth + 1]
            for part in value.split(separator):
                if deeper(part) is None:
                    items.append(_container(part_container, part_attributes, (part,)))
                else:
                    items.append(_split_level(part, depth + 1, plan))
        else:
            items += value.split(separator)
    return _container(container, attributes, items)


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
    # By hand, not strftime: every OBX of every message has one (profiled).
    m = moment
    return (
        f"{m.year:04d}{m.month:02d}{m.day:02d}{m.hour:02d}{m.minute:02d}{m.second:02d}"
        f"{sign}{hours:02d}{minutes:02d}"
    )


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
