"""``labgate hprim decode FILE``: an HPRIM Santé file, record by record, as JSON lines.

For the engineer connecting labgate to a French LIS with an HPRIM file in hand (results or
requests, version 2.2 or 2.4). The file is read by the codec the LIS link uses
(`protocols.hprim`), so what the tool calls an error is what labgate would refuse. A file may
hold several messages, each from its H record. One JSON object per line, in file order::

    {"message": 1, "offset": 0, "line": 1, "continued": 0, "type": "H", "seq": null,
     "delimiters": "|~^\\\\&", "version": "H2.2", "message_type": "ORU",
     "fields": [...], "raw": "H|~^\\\\&|..."}
    {"message": 1, "offset": 212, "line": 4, "continued": 0, "type": "OBX", "seq": "1",
     "value_type": "NM", "number": "5.4", "fields": [[["OBX"]], [["1"]], [["NM"]], ...],
     "raw": "..."}
    {"warning": "the OBR record of line 3 has no OBX", "message": 1, "offset": 150, "line": 3}
    {"error": "line 9: not a record: ...", "message": 2, "offset": 700, "line": 9}

``line`` is the file's line (from 1) where the record starts, ``offset`` the byte offset of
its first character, and ``continued`` the number of ``A|`` continuation lines joined to it.
``fields`` holds every field (field 1 is the record type), each a list of repeats, each a list
of components, unescaped; a component with sub-components is a list of them instead of a
string. H-2 and the OBX-6 of an embedded file (FIC) are their text as received. ``raw`` is the
record as received, continuation lines joined. ``seq`` is field 2 (none for H). OBX lines add
``value_type`` (OBX-3), ``number`` (an NM value as a decimal string, or null) and, for FIC,
``file_chars`` (the size of the opaque text).

A message that cannot be read is one "error" line (with the line where reading stopped) and
no records. A message that reads but departs from the expected structure (record hierarchy,
required H fields, version, value types: `protocols.hprim.check_structure`) gets "warning"
lines: labgate's structure rules come from one reader's grammar, not from the HPRIM text.

Exit status: 0 when every message decoded (warnings allowed, unless ``--strict``), 1 when
anything could not be decoded or no message was found (or, with ``--strict``, any warning),
2 for usage errors (unreadable file, unknown encoding). A one-line summary goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

from middleware.tools._input import parse_and_read
from protocols import hprim

__all__ = ["main"]

_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_CONTROL = bytes(range(32))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labgate hprim decode",
        description="Decode an HPRIM Santé file (2.2 or 2.4) into JSON lines, one per record.",
    )
    parser.add_argument("file", metavar="FILE", help="the HPRIM file")
    parser.add_argument(
        "--encoding", default="latin-1", help="character set of the file (default latin-1)"
    )
    parser.add_argument(
        "--strict", action="store_true", help="structure warnings make the exit status 1"
    )
    return parser


def main(argv: list[str]) -> int:
    """Run the tool; returns the exit status (0 all decoded, 1 problems found, 2 usage)."""
    parsed = parse_and_read(_parser(), argv, "hprim decode")
    if isinstance(parsed, int):
        return parsed
    args, data = parsed
    report = _Report(data, args.encoding)
    parts = hprim.split_messages(data)
    for number, part in enumerate(parts, start=1):
        report.message(number, part)
    if not parts:
        report.errors += 1
        report.emit({"error": "no HPRIM message (H record) found", "offset": 0, "message": None})
    try:
        report.flush()
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    print(
        f"{args.file}: {report.decoded} of {len(parts)} message(s) decoded, "
        f"{report.records} record(s), {report.errors} error(s), {report.warnings} warning(s)",
        file=sys.stderr,
    )
    return 1 if report.errors or (args.strict and report.warnings) else 0


def _component(parts: tuple[str, ...]) -> str | list[str]:
    return parts[0] if len(parts) == 1 else list(parts)


class _Report:
    """The JSON lines of the whole file, in line order."""

    def __init__(self, data: bytes, encoding: str) -> None:
        self.data = data
        self.encoding = encoding
        start = 3 if data.startswith(b"\xef\xbb\xbf") else 0  # a UTF-8 byte order mark
        self.line_starts = [start, *(m.end() for m in _LINE_BREAK.finditer(data))]
        self.decoded = 0
        self.records = 0
        self.errors = 0
        self.warnings = 0
        self._lines: list[tuple[int, int, dict[str, Any]]] = []

    def offset_of(self, line: int | None) -> int:
        """Where the text of the file's line `line` starts (control characters skipped)."""
        if line is None or not 1 <= line <= len(self.line_starts):
            return 0
        start = self.line_starts[line - 1]
        head = self.data[start : start + 64]
        return start + len(head) - len(head.lstrip(_CONTROL))

    def continuations(self, first: int, last: int, field: str) -> int:
        """How many ``A|`` lines lie between the file's lines `first` and `last` (blank lines
        in between are not counted)."""
        prefix = ("A" + field).encode(self.encoding, "replace")
        return sum(
            1 for n in range(first + 1, last + 1) if self.data.startswith(prefix, self.offset_of(n))
        )

    def emit(self, line: dict[str, Any]) -> None:
        self._lines.append((line["offset"], 1 if "type" in line else 0, line))

    def message(self, number: int, part: hprim.MessageText) -> None:
        try:
            message = hprim.decode_message(part.data, self.encoding, first_line=part.line)
        except hprim.DecodeError as exc:
            self.errors += 1
            line = exc.line if exc.line is not None else part.line
            self.emit(
                {"error": str(exc), "message": number, "offset": self.offset_of(line), "line": line}
            )
            return
        self.decoded += 1
        for finding in hprim.check_structure(message):
            self.warnings += 1
            self.emit(
                {
                    "warning": finding.text,
                    "message": number,
                    "offset": self.offset_of(finding.line),
                    "line": finding.line,
                }
            )
        for record in message.records:
            self.records += 1
            self.emit(self._record(number, message, record))

    def _record(self, number: int, message: hprim.Message, record: hprim.Record) -> dict[str, Any]:
        first, last = record.lines or (0, 0)
        line: dict[str, Any] = {
            "message": number,
            "offset": self.offset_of(first),
            "line": first,
            "continued": self.continuations(first, last, message.delimiters.field),
            "type": record.type,
            "seq": None if record.type == "H" else record.field(2),
        }
        if record.type == "H":
            line["delimiters"] = "".join(message.delimiters.chars)
            line["version"] = message.version
            line["message_type"] = message.message_type
        elif record.type == "OBX":
            value = hprim.observation_value(record)
            line["value_type"] = value.value_type
            if value.value_type == "NM":
                line["number"] = None if value.number is None else str(value.number)
            if value.file is not None:
                line["file_chars"] = len(value.file.text)
        line["fields"] = [
            [[_component(component) for component in repeat] for repeat in field]
            for field in record.fields
        ]
        line["raw"] = message.delimiters.field.join(record.raw_fields or ())
        return line

    def flush(self) -> None:
        self._lines.sort(key=lambda entry: (entry[0], entry[1]))
        for _, _, line in self._lines:
            print(json.dumps(line, ensure_ascii=False))
        self._lines.clear()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
