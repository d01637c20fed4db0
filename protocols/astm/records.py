"""ASTM E1394 / CLSI LIS2-A2 records: message text <-> `Message`, and result values.

A message is a list of records, each ended by CR (LF and CRLF are accepted on input). A record
is fields separated by the field delimiter; a field holds repeats, a repeat holds components.
The H record declares the delimiters: the character right after ``H`` is the field delimiter,
and H-2 gives the repeat, component and escape delimiters, in that order (usually ``|\\^&``;
Beckman DxH uses ``|\\!~``) [PROTOCOLS.md §2.1]. Data containing a delimiter is written with
escape sequences: ``&F&`` field, ``&S&`` component, ``&R&`` repeat, ``&E&`` escape (with the
declared escape character in place of ``&``).

Field numbers follow the standard, so field 1 is the record type itself: ``record.field(1)`` is
``"H"`` and ``record.field(2)`` of an H record is its delimiter definition, kept verbatim.
Values are kept as received, space padding included; trimming is the driver's business.

Decoding cuts each record into its fields and stops there: a field is split into repeats and
components, and unescaped, when it is read (see `Record`). That keeps `decode_message` well
over the 100,000 R records per second the daemon needs (benchmarks/astm_decode.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.frozen_record import FrozenRecord

__all__ = [
    "Delimiters",
    "Field",
    "Message",
    "ParsedValue",
    "Record",
    "Repeat",
    "decode_message",
    "encode_message",
    "parse_value",
]

#: The components of one repeat, unescaped.
Repeat = tuple[str, ...]
#: The repeats of one field (at least one; an empty field is ``(("",),)``).
Field = tuple[Repeat, ...]

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_EMPTY_FIELD: Field = (("",),)


def _delimiter_problem(chars: tuple[str, str, str, str]) -> str | None:
    if any(len(c) != 1 for c in chars):
        return f"delimiters must be single characters, not {chars!r}"
    if any(c in "\r\n" for c in chars):
        return "CR and LF cannot be delimiters"
    if len(set(chars)) != 4:
        return f"delimiters must all differ, not {''.join(chars)!r}"
    return None


@dataclass(frozen=True, slots=True)
class Delimiters:
    """The four delimiters of a message (H-1 and H-2)."""

    field: str = "|"
    repeat: str = "\\"
    component: str = "^"
    escape: str = "&"

    def __post_init__(self) -> None:
        problem = _delimiter_problem((self.field, self.repeat, self.component, self.escape))
        if problem:
            raise LocalProtocolError(problem)

    @property
    def definition(self) -> str:
        """The H-2 text: repeat, component and escape delimiters (``\\^&``)."""
        return self.repeat + self.component + self.escape

    @classmethod
    def from_header(cls, line: str) -> Delimiters:
        """Read the delimiters from an H record line (``H|\\^&|...``).

        Raises `RemoteProtocolError` if the line is not an H record declaring four distinct
        delimiters.
        """
        if not line.startswith("H"):
            raise RemoteProtocolError(f"not an H record: {line[:20]!r}")
        known = _KNOWN_DELIMITERS.get(line[1:5])
        if known is not None and cls is Delimiters:
            return known
        chars = tuple(line[1:5])
        if len(chars) != 4:
            raise RemoteProtocolError(f"H record too short to declare delimiters: {line[:20]!r}")
        field, repeat, component, escape = chars
        problem = _delimiter_problem((field, repeat, component, escape))
        if problem:
            raise RemoteProtocolError(f"H record declares bad delimiters: {problem}")
        delimiters = cls(field, repeat, component, escape)
        if len(_KNOWN_DELIMITERS) < 64:  # an analyser uses one set: a few entries in practice
            _KNOWN_DELIMITERS["".join(chars)] = delimiters
        return delimiters


#: Delimiters already read from a header, by their four characters (they are immutable).
_KNOWN_DELIMITERS: dict[str, Delimiters] = {}


_set = object.__setattr__  # how a frozen object sets its own attributes


class Record(FrozenRecord):
    """One record: its type and its fields, numbered as in the standard from 1.

    ``fields[0]`` is the record type (``(("R",),)``); the other fields are unescaped. Decoded
    records also keep each field's text as received, for `raw_field`; that text takes no
    part in equality. Records are immutable, compared and hashed by type and fields.

    A decoded record splits a field into repeats and components (and unescapes it) only when
    it is read: `repeats`, `component` and `field` split the one field asked for, `fields`
    splits them all once. A driver reads a handful of a record's fields, and decoding is the
    hot path of the daemon (benchmarks/astm_decode.py). This is why `Record` is a small
    hand-written class rather than a frozen dataclass like the other value types here: a
    dataclass cannot compute a field on first use.
    """

    __slots__ = ("_delimiters", "_fields", "raw_fields", "type")
    __match_args__ = ("type", "fields")

    type: str  #: the record type: "H", "P", "O", "R", "C", "Q", "M", "S", "L"...
    raw_fields: tuple[str, ...] | None  #: the fields as received; None for a built record
    _fields: tuple[Field, ...] | None  # None until a decoded record's fields are all split
    _delimiters: Delimiters | None  # how to split raw_fields; None once _fields is set

    def __init__(
        self, type: str, fields: tuple[Field, ...], raw_fields: tuple[str, ...] | None = None
    ) -> None:
        if not fields or fields[0] != ((type,),):
            raise LocalProtocolError(
                f"fields[0] must be the record type (({type!r},),), not {fields[:1]!r}"
            )
        if not all(fields) or not all(all(field) for field in fields):
            raise LocalProtocolError("every field needs at least one repeat of one component")
        _set(self, "type", type)
        _set(self, "_fields", fields)
        _set(self, "raw_fields", raw_fields)
        _set(self, "_delimiters", None)

    @classmethod
    def _decoded(cls, raw_fields: tuple[str, ...], delimiters: Delimiters) -> Record:
        """A record read from a message: well formed by construction, split on demand."""
        record = object.__new__(cls)
        _set(record, "type", raw_fields[0])
        _set(record, "_fields", None)
        _set(record, "raw_fields", raw_fields)
        _set(record, "_delimiters", delimiters)
        return record

    @property
    def fields(self) -> tuple[Field, ...]:
        """Every field: a tuple of repeats, each a tuple of components."""
        # _fields is set before _delimiters is cleared, so a record read from two threads at
        # once always finds one of them.
        d, raw = self._delimiters, self.raw_fields
        if d is None or raw is None:
            assert self._fields is not None
            return self._fields
        known: dict[str, Field] = {"": _EMPTY_FIELD}
        fields = tuple(_split_field(self.type, n, text, d, known) for n, text in enumerate(raw, 1))
        _set(self, "_fields", fields)
        _set(self, "_delimiters", None)
        return fields

    def repeats(self, n: int) -> tuple[Repeat, ...]:
        """The repeats of field `n` (1-based); empty if the record has no such field."""
        if n < 1:
            raise LocalProtocolError(f"field numbers start at 1, not {n}")
        d, raw = self._delimiters, self.raw_fields
        if d is None or raw is None:
            fields = self.fields
            return fields[n - 1] if n <= len(fields) else ()
        return _split_field(self.type, n, raw[n - 1], d, None) if n <= len(raw) else ()

    def component(self, n: int, c: int) -> str:
        """Component `c` (1-based) of the first repeat of field `n`; "" if absent."""
        d, raw = self._delimiters, self.raw_fields
        if d is not None and raw is not None and 2 <= n <= len(raw) and c >= 1:
            text = raw[n - 1]
            if d.escape not in text and (n > 2 or self.type != "H"):
                # Straight from the text: the common case, where the field holds no escape.
                parts = text.partition(d.repeat)[0].split(d.component, c)
                return parts[c - 1] if len(parts) >= c else ""
        if c < 1:
            raise LocalProtocolError(f"component numbers start at 1, not {c}")
        repeats = self.repeats(n)
        if not repeats or c > len(repeats[0]):
            return ""
        return repeats[0][c - 1]

    def field(self, n: int) -> str:
        """The first component of the first repeat of field `n`; "" if absent."""
        return self.component(n, 1)

    def raw_field(self, n: int) -> str:
        """Field `n` as received (escaped, delimiters included); "" if absent.

        For a record that was built rather than decoded, the field is encoded with the
        default delimiters.
        """
        if n < 1:
            raise LocalProtocolError(f"field numbers start at 1, not {n}")
        if self.raw_fields is not None:
            return self.raw_fields[n - 1] if n <= len(self.raw_fields) else ""
        if n > len(self.fields):
            return ""
        return _encode_field(self, n, Delimiters())


@dataclass(frozen=True, slots=True)
class Message:
    """An E1394 message: its records (the first is normally H) and its delimiters."""

    records: tuple[Record, ...]
    delimiters: Delimiters = Delimiters()


def _is_verbatim(record_type: str, n: int) -> bool:
    """Fields kept as text: the record type, and the delimiter definition H-2."""
    return n == 1 or (n == 2 and record_type == "H")


def _unescape(text: str, d: Delimiters) -> str:
    e = d.escape
    if e not in text:
        return text
    meaning = {"F": d.field, "S": d.component, "R": d.repeat, "E": e}
    out: list[str] = []
    i = 0
    while (j := text.find(e, i)) >= 0:
        out.append(text[i:j])
        code = text[j + 1 : j + 2]
        if code in meaning and text[j + 2 : j + 3] == e:
            out.append(meaning[code])
            i = j + 3
        else:  # not a sequence we know: keep the character as it is
            out.append(e)
            i = j + 1
    out.append(text[i:])
    return "".join(out)


def _escape(text: str, d: Delimiters) -> str:
    if "\r" in text or "\n" in text:
        raise LocalProtocolError(f"CR or LF cannot be sent inside a field: {text[:40]!r}")
    e = d.escape
    sequences = {d.escape: e + "E" + e, d.field: e + "F" + e, d.repeat: e + "R" + e}
    sequences[d.component] = e + "S" + e
    if not any(c in text for c in sequences):
        return text
    return "".join(sequences.get(c, c) for c in text)


def _split_field(
    record_type: str, n: int, raw: str, d: Delimiters, known: dict[str, Field] | None
) -> Field:
    """Field `n` of a record from its text: repeats of components, unescaped (the record type
    and H-2 are kept as they are). `known` remembers the fields split already."""
    if _is_verbatim(record_type, n):
        return ((raw,),)
    if known is not None and (field := known.get(raw)) is not None:
        return field
    if d.escape in raw:
        field = tuple(
            tuple(_unescape(c, d) for c in repeat.split(d.component))
            for repeat in raw.split(d.repeat)
        )
    elif d.repeat in raw:
        field = tuple([tuple(r.split(d.component)) for r in raw.split(d.repeat)])
    elif d.component in raw:
        field = (tuple(raw.split(d.component)),)
    else:
        field = ((raw,),)
    if known is not None:
        known[raw] = field
    return field


def decode_message(text: bytes, encoding: str = "latin-1") -> Message:
    """Decode the text of an E1394 message (the records, without any E1381 framing).

    Records end with CR, LF or CRLF; blank lines are skipped. The first record must be H: it
    declares the delimiters. Raises `RemoteProtocolError` for text that is not such a message.
    """
    try:
        decoded = text.decode(encoding)
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(f"message is not valid {encoding}: {exc}") from exc
    except LookupError as exc:
        raise LocalProtocolError(f"unknown encoding {encoding!r}") from exc
    split = decoded.split("\r") if "\n" not in decoded else _LINE_BREAK.split(decoded)
    lines = [line for line in split if line.strip()]
    if not lines:
        raise RemoteProtocolError("message holds no records")
    if not lines[0].startswith("H"):
        raise RemoteProtocolError(f"message does not start with an H record: {lines[0][:20]!r}")
    delimiters = Delimiters.from_header(lines[0])
    # The fields are split when they are read (see `Record`): decoding only cuts the fields.
    separator = delimiters.field
    records = [Record._decoded(tuple(line.split(separator)), delimiters) for line in lines]
    return Message(tuple(records), delimiters)


def _encode_field(record: Record, n: int, d: Delimiters) -> str:
    field = record.fields[n - 1]
    if _is_verbatim(record.type, n):
        text = d.repeat.join(d.component.join(repeat) for repeat in field)
        if n == 2:
            if not text:
                return d.definition
            if not text.startswith(d.definition) or d.field in text:
                raise LocalProtocolError(
                    f"H-2 {text!r} does not match the delimiters {d.definition!r}"
                )
        elif not text or any(c in text for c in (d.field, "\r", "\n")):
            raise LocalProtocolError(f"invalid record type {text!r}")
        return text
    return d.repeat.join(d.component.join(_escape(c, d) for c in repeat) for repeat in field)


def encode_message(message: Message, encoding: str = "latin-1") -> bytes:
    """The text of `message`: each record CR-terminated, delimiters in data escaped.

    Raises `LocalProtocolError` if a value cannot be written (CR or LF in data, a character
    the encoding lacks, an H-2 that contradicts the message's delimiters).
    """
    d = message.delimiters
    lines: list[str] = []
    for record in message.records:
        fields = [_encode_field(record, n, d) for n in range(1, len(record.fields) + 1)]
        if record.type == "H" and len(fields) == 1:
            fields.append(d.definition)
        lines.append(d.field.join(fields))
    try:
        return "".join(line + "\r" for line in lines).encode(encoding)
    except (UnicodeEncodeError, LookupError) as exc:
        raise LocalProtocolError(f"cannot encode the message in {encoding}: {exc}") from exc


# --- values -------------------------------------------------------------------------------------

_NUMERIC = re.compile(
    r"(?P<comparator><=|>=|<|>)?\s*(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?)"
)


@dataclass(frozen=True, slots=True)
class ParsedValue:
    """A result value as received (`raw`) and, when it is one, as a number.

    ``"  5.5"`` → 5.5; ``"< 1.20"`` → comparator ``"<"``, 1.20; ``"-----"``, ``"NEG"`` → None.
    """

    raw: str
    number: Decimal | None
    comparator: str | None


def parse_value(raw: str) -> ParsedValue:
    """Parse a result value: an optional comparator (< > <= >=) and a decimal number, padding
    ignored. Anything else is kept, with ``number=None``. Never raises."""
    match = _NUMERIC.fullmatch(raw.strip())
    if match is None:
        return ParsedValue(raw, None, None)
    try:
        number = Decimal(match["number"])
    except InvalidOperation:  # pragma: no cover - the pattern only admits valid literals
        return ParsedValue(raw, None, None)
    return ParsedValue(raw, number, match["comparator"])
