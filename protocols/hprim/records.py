"""HPRIM Santé records: message text <-> `Message`, with `A|` continuation lines.

Facts from the labgate fact sheet (`reference/HPRIM.md`, itself built from libHprim and a
published 2.2 sample; the HPRIM Santé texts are member-only and were not read):

- A message is records ended by CR. The first is ``H`` followed by **five** delimiter
  characters: field, component, repetition, escape, sub-component, usually ``H|~^\\&``.
  Component and repetition are swapped relative to ASTM (``|\\^&``): ``~`` separates
  components, ``^`` repeats. The five are read from each message and must all differ.
- After the escape character, the next character is taken literally: ``\\|`` is a ``|`` in
  the data, ``\\\\`` a backslash. (HL7-style named sequences such as ``\\F\\`` are not known
  to exist in HPRIM; a sender that used them would be read literally, character by character.)
- A line made of ``A`` and the field delimiter continues the record before it: the CR, the
  ``A`` and that delimiter are dropped and the text is joined, before fields are split.
- The reader tolerates non-printable characters (LF in practice) after the CR.

Theory of operation
-------------------
Decoding goes line -> record -> field -> repeat -> component -> sub-component:

1. The text is cut into physical lines (CR, LF or CRLF; blank lines skipped, leading control
   characters dropped). The first line must be the H record: it declares the delimiters.
2. ``A`` + field delimiter lines are appended to the record before them. A record therefore
   spans lines `Record.lines` = (first, last).
3. The joined text is cut into fields at every field delimiter that is not escaped. The H
   record is special: its first six characters (``H`` and the five delimiters) are H-1 and
   H-2, kept verbatim, since ``\\&`` there is the definition and not an escaped ``&``.
4. Fields are split into repeats, components and sub-components (again skipping escaped
   delimiters) and unescaped only when read (`Record.fields`), as the ASTM codec does.
5. OBX-6 of an OBX whose value type (OBX-3) is ``FIC`` -- a file embedded in a 2.4 message --
   is *opaque*: kept as the exact text received, never split nor unescaped, and written back
   as it is. Its bytes round-trip exactly.

Encoding escapes the five delimiters in data, writes each record on one line and, when a line
would exceed `MAX_LINE` characters, folds it into ``A|`` continuation lines, never between an
escape character and the character it escapes.

Field numbers follow the HPRIM text's numbering as libHprim's field ids show it: field 1 is the
record type, so ``record.field(1)`` is ``"OBX"`` and OBX-6 is ``record.field(6)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.frozen_record import FrozenRecord

__all__ = [
    "FILE_VALUE_TYPE",
    "MAX_LINE",
    "Component",
    "DecodeError",
    "Delimiters",
    "Field",
    "Message",
    "MessageText",
    "Record",
    "Repeat",
    "components",
    "decode_message",
    "encode_message",
    "split_messages",
]

#: The longest line labgate writes; longer records are folded into ``A|`` continuation lines.
#: 220 is the figure commonly quoted for HPRIM Santé, **unverified** (the fact sheet found no
#: source). It counts the characters of the line, ``A|`` included, CR excluded. The decoder
#: accepts lines of any length.
MAX_LINE = 220
#: The smallest `max_line` `encode_message` accepts: the H record's first line must hold ``H``,
#: the five delimiters and a field delimiter, and a continuation line ``A|`` and an escape pair.
_MIN_LINE = 8

#: OBX-3 value type of a file embedded in the message (HPRIM Santé 2.4): OBX-6 is opaque.
FILE_VALUE_TYPE = "FIC"

#: The sub-components of one component, unescaped.
Component = tuple[str, ...]
#: The components of one repeat.
Repeat = tuple[Component, ...]
#: The repeats of one field (at least one; an empty field is ``((("",),),)``).
Field = tuple[Repeat, ...]

_EMPTY_FIELD: Field = ((("",),),)
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_LINE_BREAK_BYTES = re.compile(rb"\r\n|\r|\n")
_CONTROL = "".join(map(chr, range(32)))  # dropped at the start of a line, as after the CR
_BLANK = _CONTROL + " "
_RECORD_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_BOM = b"\xef\xbb\xbf"


class DecodeError(RemoteProtocolError):
    """The text is not an HPRIM message we can read.

    `line` is the line of the text where it happened (counted from `decode_message`'s
    ``first_line``, so it is the file's line when the caller passes it), `record` the type of
    the record concerned when there is one. Both are in the message too.
    """

    def __init__(self, reason: str, line: int | None = None, record: str | None = None) -> None:
        where = f"line {line}" if line is not None else ""
        if record:
            where = f"{where} ({record} record)" if where else f"{record} record"
        super().__init__(f"{where}: {reason}" if where else reason)
        self.reason = reason
        self.line = line
        self.record = record


def _delimiter_problem(chars: tuple[str, ...]) -> str | None:
    if len(chars) != 5 or any(len(c) != 1 for c in chars):
        return f"five single-character delimiters are needed, not {chars!r}"
    # Distinct: libHprim rejects the header otherwise. Letters, digits and white space are
    # refused by labgate (our rule): a record type or the ``A`` of a continuation line could
    # no longer be told from a delimiter.
    if any(c.isalnum() or c.isspace() or c in "\r\n" for c in chars):
        return f"delimiters cannot be letters, digits or white space: {''.join(chars)!r}"
    if len(set(chars)) != 5:
        return f"the five delimiters must all differ, not {''.join(chars)!r}"
    return None


@dataclass(frozen=True, slots=True)
class Delimiters:
    """The five delimiters of a message, as the H record declares them (``H|~^\\&``)."""

    field: str = "|"
    component: str = "~"
    repeat: str = "^"
    escape: str = "\\"
    subcomponent: str = "&"

    def __post_init__(self) -> None:
        problem = _delimiter_problem(self.chars)
        if problem:
            raise LocalProtocolError(problem)

    @property
    def chars(self) -> tuple[str, str, str, str, str]:
        """The five, in the order the H record declares them."""
        return (self.field, self.component, self.repeat, self.escape, self.subcomponent)

    @property
    def definition(self) -> str:
        """H-2: component, repetition, escape and sub-component delimiters (``~^\\&``)."""
        return self.component + self.repeat + self.escape + self.subcomponent

    @classmethod
    def from_header(cls, line: str, line_number: int | None = None) -> Delimiters:
        """Read the delimiters from the H record's text (``H|~^\\&|...``).

        Raises `DecodeError` if it is not an H record declaring five distinct delimiters.
        """
        if not line.startswith("H"):
            raise DecodeError(f"not an H record: {line[:20]!r}", line_number)
        if len(line) < 6:
            raise DecodeError(
                f"too short to declare the five delimiters: {line[:20]!r}", line_number, "H"
            )
        problem = _delimiter_problem(tuple(line[1:6]))
        if problem:
            raise DecodeError(f"bad delimiters: {problem}", line_number, "H")
        return cls(*line[1:6])


# --- lexical helpers ------------------------------------------------------------------------


def _cut(text: str, separator: str, escape: str) -> list[str]:
    """`text` cut at every `separator` that is not escaped; escape pairs are left in place."""
    if escape not in text:
        return text.split(separator)
    parts: list[str] = []
    start = i = 0
    end = len(text)
    while i < end:
        char = text[i]
        if char == escape:
            i += 2  # the escaped character is data, whatever it is
            continue
        if char == separator:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def _unescape(text: str, escape: str) -> str:
    """The data of `text`: each escape character gives way to the character after it. A lone
    escape character at the very end of a record escapes nothing and is kept as data."""
    if escape not in text:
        return text
    out: list[str] = []
    i = 0
    while (j := text.find(escape, i)) >= 0:
        out.append(text[i:j])
        if j + 1 < len(text):
            out.append(text[j + 1])
            i = j + 2
        else:
            out.append(escape)
            i = j + 1
    out.append(text[i:])
    return "".join(out)


def _escape(text: str, d: Delimiters) -> str:
    if "\r" in text or "\n" in text:
        raise LocalProtocolError(f"CR or LF cannot be sent inside a field: {text[:40]!r}")
    special = d.chars
    if not any(c in text for c in special):
        return text
    return "".join(d.escape + c if c in special else c for c in text)


def _escape_pairs(text: str, escape: str) -> set[int]:
    """Where each escape pair of `text` starts (read from the start, as the decoder does)."""
    starts: set[int] = set()
    i = 0
    while (j := text.find(escape, i)) >= 0:
        starts.add(j)
        i = j + 2
    return starts


def _ends_with_lone_escape(text: str, escape: str) -> bool:
    return bool(text) and text[-1] == escape and (len(text) - 1) in _escape_pairs(text, escape)


def _split_field(text: str, d: Delimiters) -> Field:
    """A field's text -> repeats -> components -> sub-components, unescaped."""
    if not text:
        return _EMPTY_FIELD
    e = d.escape
    if e not in text:
        if d.repeat not in text and d.component not in text and d.subcomponent not in text:
            return (((text,),),)
        return tuple(
            tuple(tuple(c.split(d.subcomponent)) for c in r.split(d.component))
            for r in text.split(d.repeat)
        )
    return tuple(
        tuple(
            tuple(_unescape(s, e) for s in _cut(c, d.subcomponent, e))
            for c in _cut(r, d.component, e)
        )
        for r in _cut(text, d.repeat, e)
    )


def _value_type(field: Field) -> str:
    """OBX-3, normalised for the one decision it drives here (is OBX-6 opaque?)."""
    return field[0][0][0].strip().upper()


def _is_verbatim(record_type: str, n: int, opaque: bool) -> bool:
    """Fields kept as text: the record type, H-2, and OBX-6 when it holds an embedded file."""
    return n == 1 or (n == 2 and record_type == "H") or (opaque and n == 6)


_set = object.__setattr__  # how a frozen object sets its own attributes


class Record(FrozenRecord):
    """One record: its type and its fields, numbered from 1 as in the HPRIM text.

    ``fields[0]`` is the record type (``((("OBX",),),)``). Each field is a tuple of repeats,
    each repeat a tuple of components, each component a tuple of sub-components, unescaped;
    H-2 and the opaque OBX-6 of an embedded file are single texts kept verbatim.

    A decoded record keeps its fields' text as received (`raw_fields`) and the lines it came
    from (`lines`); neither takes part in equality. Fields are split on first use, like the
    ASTM `Record`: a reader looks at a few fields of each record. Records are immutable,
    compared and hashed by type and fields.
    """

    __slots__ = ("_delimiters", "_fields", "lines", "raw_fields", "type")
    __match_args__ = ("type", "fields")

    type: str  #: "H", "P", "OBR", "OBX", "C", "L", or any other record type
    raw_fields: tuple[str, ...] | None  #: the fields as received (joined); None when built
    lines: tuple[int, int] | None  #: first and last line of a decoded record (A| lines)
    _fields: tuple[Field, ...] | None  # None until a decoded record's fields are split
    _delimiters: Delimiters | None  # how to split raw_fields; None once _fields is set

    def __init__(
        self, type: str, fields: tuple[Field, ...], raw_fields: tuple[str, ...] | None = None
    ) -> None:
        problem = _record_type_problem(type)
        if problem:
            raise LocalProtocolError(problem)
        if not fields or fields[0] != (((type,),),):
            raise LocalProtocolError(
                f"fields[0] must be the record type ((({type!r},),),), not {fields[:1]!r}"
            )
        if not all(fields) or not all(
            repeat and all(repeat) for field in fields for repeat in field
        ):
            raise LocalProtocolError(
                "every field needs a repeat of one component of one sub-component"
            )
        _set(self, "type", type)
        _set(self, "_fields", fields)
        _set(self, "raw_fields", raw_fields)
        _set(self, "lines", None)
        _set(self, "_delimiters", None)

    @classmethod
    def of(cls, type: str, *values: str | Field) -> Record:
        """A record from its fields 2, 3...: a `str` is a field of one value, anything else
        a `Field` (see `components`). ``Record.of("C", "1", "L", "texte")``."""
        fields = tuple((((v,),),) if isinstance(v, str) else v for v in values)
        return cls(type, ((((type,),),), *fields))

    @classmethod
    def _decoded(
        cls, raw_fields: tuple[str, ...], delimiters: Delimiters, lines: tuple[int, int]
    ) -> Record:
        record = object.__new__(cls)
        _set(record, "type", raw_fields[0])
        _set(record, "_fields", None)
        _set(record, "raw_fields", raw_fields)
        _set(record, "lines", lines)
        _set(record, "_delimiters", delimiters)
        return record

    @property
    def fields(self) -> tuple[Field, ...]:
        """Every field: repeats of components of sub-components."""
        # _fields is set before _delimiters is cleared, so a record read from two threads at
        # once always finds one of them.
        d, raw = self._delimiters, self.raw_fields
        if d is None or raw is None:
            assert self._fields is not None
            return self._fields
        opaque = (
            self.type == "OBX"
            and len(raw) >= 6
            and _value_type(_split_field(raw[2], d)) == FILE_VALUE_TYPE
        )
        fields = tuple(
            (((text,),),) if _is_verbatim(self.type, n, opaque) else _split_field(text, d)
            for n, text in enumerate(raw, 1)
        )
        _set(self, "_fields", fields)
        _set(self, "_delimiters", None)
        return fields

    def repeats(self, n: int) -> Field:
        """The repeats of field `n` (1-based); empty if the record has no such field."""
        if n < 1:
            raise LocalProtocolError(f"field numbers start at 1, not {n}")
        fields = self.fields
        return fields[n - 1] if n <= len(fields) else ()

    def subcomponents(self, n: int, c: int) -> Component:
        """The sub-components of component `c` of the first repeat of field `n`; () if absent."""
        if c < 1:
            raise LocalProtocolError(f"component numbers start at 1, not {c}")
        repeats = self.repeats(n)
        if not repeats or c > len(repeats[0]):
            return ()
        return repeats[0][c - 1]

    def component(self, n: int, c: int) -> str:
        """Component `c` (1-based) of the first repeat of field `n` (its first sub-component);
        "" if absent."""
        parts = self.subcomponents(n, c)
        return parts[0] if parts else ""

    def field(self, n: int) -> str:
        """The first component of the first repeat of field `n`; "" if absent."""
        return self.component(n, 1)

    def raw_field(self, n: int) -> str:
        """Field `n` as received (escapes and delimiters included); "" if absent. For a
        record that was built, the field encoded with the default delimiters."""
        if n < 1:
            raise LocalProtocolError(f"field numbers start at 1, not {n}")
        if self.raw_fields is not None:
            return self.raw_fields[n - 1] if n <= len(self.raw_fields) else ""
        if n > len(self.fields):
            return ""
        return _encode_fields(self, Delimiters())[n - 1]


def components(*values: str) -> Field:
    """A field of one repeat made of these components (``code~label~system``)."""
    if not values:
        return _EMPTY_FIELD
    return (tuple((v,) for v in values),)


def _record_type_problem(record_type: str) -> str | None:
    if not _RECORD_TYPE.fullmatch(record_type):
        return f"a record type is letters and digits, starting with a letter: {record_type!r}"
    if record_type == "A":
        return "'A' is the continuation line, not a record type"
    return None


@dataclass(frozen=True, slots=True)
class Message:
    """An HPRIM Santé message: H, then its records (L last), and its delimiters."""

    records: tuple[Record, ...]
    delimiters: Delimiters = Delimiters()

    @property
    def header(self) -> Record:
        """The H record."""
        if not self.records or self.records[0].type != "H":
            raise LocalProtocolError("the message does not start with an H record")
        return self.records[0]

    @property
    def message_type(self) -> str:
        """H-7, e.g. ``ORU`` (the only type libHprim reads)."""
        return self.header.field(7)

    @property
    def version(self) -> str:
        """H-13 first component, e.g. ``H2.2`` or ``H2.4``."""
        return self.header.component(13, 1)


# --- decoding --------------------------------------------------------------------------------


def _line_of(text: bytes, position: int, first_line: int) -> int:
    return first_line + len(_LINE_BREAK_BYTES.findall(text, 0, position))


def decode_message(text: bytes, encoding: str = "latin-1", *, first_line: int = 1) -> Message:
    """Decode the text of one HPRIM Santé message (a whole file, or one `split_messages` part).

    Records end with CR (LF and CRLF accepted; blank lines and control characters at the start
    of a line skipped). ``A|`` lines are joined to the record before them. Line numbers in
    errors and in `Record.lines` count from `first_line`. Raises `DecodeError` (a
    `RemoteProtocolError`) if the text does not start with an H record declaring five distinct
    delimiters, holds a second H, a line that is not a record, or bytes the encoding refuses.
    The order of the records is not checked here: see `check_structure`.
    """
    if text.startswith(_BOM):
        text = text[len(_BOM) :]
    try:
        decoded = text.decode(encoding)
    except UnicodeDecodeError as exc:
        at = _line_of(text, exc.start, first_line)
        raise DecodeError(f"not valid {encoding} at byte {exc.start}: {exc.reason}", at) from exc
    except LookupError as exc:
        raise LocalProtocolError(f"unknown encoding {encoding!r}") from exc

    delimiters: Delimiters | None = None
    continuation = ""
    pending: list[tuple[int, int, list[str]]] = []  # first line, last line, its texts
    for index, line in enumerate(_LINE_BREAK.split(decoded)):
        number = first_line + index
        if not line.strip(_BLANK):
            continue
        line = line.lstrip(_CONTROL)
        if delimiters is None:
            if not line.startswith("H"):
                raise DecodeError(f"the message must start with an H record: {line[:20]!r}", number)
            delimiters = Delimiters.from_header(line, number)
            continuation = "A" + delimiters.field
        elif line.startswith(continuation):
            first, _, texts = pending[-1]
            texts.append(line[2:])
            pending[-1] = (first, number, texts)
            continue
        pending.append((number, number, [line]))
    if delimiters is None:
        raise DecodeError("the message holds no records", first_line)
    records = tuple(
        _decode_record("".join(texts), delimiters, (first, last), index == 0)
        for index, (first, last, texts) in enumerate(pending)
    )
    return Message(records, delimiters)


def _decode_record(text: str, d: Delimiters, lines: tuple[int, int], first: bool) -> Record:
    if first:  # the H record: "H", the five delimiters (H-1, H-2), then its other fields
        rest = text[6:]
        if rest and rest[0] != d.field:
            raise DecodeError(
                f"the five delimiters must be followed by the field delimiter {d.field!r}, "
                f"not {rest[0]!r}",
                lines[0],
                "H",
            )
        raw = ("H", text[2:6], *(_cut(rest[1:], d.field, d.escape) if rest else ()))
        return Record._decoded(raw, d, lines)
    raw = tuple(_cut(text, d.field, d.escape))
    problem = _record_type_problem(raw[0])
    if problem:
        raise DecodeError(f"not a record: {text[:20]!r} ({problem})", lines[0])
    if raw[0] == "H":
        raise DecodeError(
            "a second H record: one message per text (split the file with split_messages)",
            lines[0],
            "H",
        )
    return Record._decoded(raw, d, lines)


@dataclass(frozen=True, slots=True)
class MessageText:
    """One message's bytes in a file (`split_messages`): where it starts and its text."""

    line: int  #: the file's line (from 1) of the message's first line
    offset: int  #: the byte offset of that line
    data: bytes


def split_messages(data: bytes) -> list[MessageText]:
    """Cut a file into messages: each starts at a line beginning with ``H`` and a delimiter.

    Anything before the first H record is returned as a part of its own, which
    `decode_message` refuses (it does not start with H). Blank input gives no part.
    """
    start = len(_BOM) if data.startswith(_BOM) else 0
    line_starts = [start, *(m.end() for m in _LINE_BREAK_BYTES.finditer(data, start))]
    heads: list[int] = []  # indexes into line_starts
    for index, offset in enumerate(line_starts):
        head = data[offset : offset + 32].lstrip(_CONTROL.encode())
        if head[:1] == b"H" and len(head) > 1 and not head[1:2].isalnum() and head[1] >= 32:
            heads.append(index)
    if not heads or heads[0] != 0:
        heads.insert(0, 0)
    parts: list[MessageText] = []
    for n, index in enumerate(heads):
        begin = line_starts[index]
        end = line_starts[heads[n + 1]] if n + 1 < len(heads) else len(data)
        chunk = data[begin:end]
        if chunk.strip(_BLANK.encode()):
            parts.append(MessageText(index + 1, begin, chunk))
    return parts


# --- encoding --------------------------------------------------------------------------------


def _encode_fields(record: Record, d: Delimiters) -> list[str]:
    fields = record.fields
    opaque = record.type == "OBX" and len(fields) >= 6 and _value_type(fields[2]) == FILE_VALUE_TYPE
    out = [record.type]
    for n in range(2, len(fields) + 1):
        field = fields[n - 1]
        if not _is_verbatim(record.type, n, opaque):
            out.append(
                d.repeat.join(
                    d.component.join(d.subcomponent.join(_escape(s, d) for s in c) for c in r)
                    for r in field
                )
            )
            continue
        if len(field) != 1 or len(field[0]) != 1 or len(field[0][0]) != 1:
            raise LocalProtocolError(f"{record.type}-{n} must be one text, not {field!r}")
        text = field[0][0][0]
        if n == 2:  # H-2
            if text not in ("", d.definition):
                raise LocalProtocolError(
                    f"H-2 {text!r} does not match the delimiters {d.definition!r}"
                )
            out.append(d.definition)
            continue
        # OBX-6 of an embedded file: written as it is, so it must read back as this one field
        if "\r" in text or "\n" in text:
            raise LocalProtocolError("CR or LF cannot be sent inside an embedded file (OBX-6)")
        if len(_cut(text, d.field, d.escape)) != 1 or (
            n < len(fields) and _ends_with_lone_escape(text, d.escape)
        ):
            raise LocalProtocolError(
                f"the embedded file (OBX-6) holds an unescaped field delimiter {d.field!r}"
            )
        out.append(text)
    if record.type == "H" and len(out) == 1:
        out.append(d.definition)
    return out


def _fold(text: str, max_line: int | None, d: Delimiters) -> list[str]:
    """One record's text as lines of at most `max_line` characters (``A|`` continuations)."""
    if max_line is None or len(text) <= max_line:
        return [text]
    pairs = _escape_pairs(text, d.escape) if d.escape in text else set()
    lines: list[str] = []
    start, room = 0, max_line
    while len(text) - start > room:
        cut = start + room
        if cut - 1 in pairs:  # never between an escape character and what it escapes
            cut -= 1
        lines.append(text[start:cut])
        start, room = cut, max_line - 2
    lines.append(text[start:])
    prefix = "A" + d.field
    return [lines[0], *(prefix + line for line in lines[1:])]


def encode_message(
    message: Message, encoding: str = "latin-1", *, max_line: int | None = MAX_LINE
) -> bytes:
    """The text of `message`: each record CR-terminated, delimiters in data escaped, lines
    longer than `max_line` folded into ``A|`` continuation lines (None: never fold).

    Raises `LocalProtocolError` if the message cannot be written: no H first or a second H,
    CR or LF in data, a character the encoding lacks, an H-2 that contradicts the delimiters,
    an embedded file that would not read back as one field.
    """
    if max_line is not None and max_line < _MIN_LINE:
        raise LocalProtocolError(f"max_line must be at least {_MIN_LINE}, not {max_line}")
    d = message.delimiters
    if not message.records or message.records[0].type != "H":
        raise LocalProtocolError("a message starts with its H record")
    lines: list[str] = []
    for index, record in enumerate(message.records):
        if index and record.type == "H":
            raise LocalProtocolError("a message has one H record")
        lines += _fold(d.field.join(_encode_fields(record, d)), max_line, d)
    try:
        return "".join(line + "\r" for line in lines).encode(encoding)
    except (UnicodeEncodeError, LookupError) as exc:
        raise LocalProtocolError(f"cannot encode the message in {encoding}: {exc}") from exc
