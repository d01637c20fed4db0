"""``labgate astm decode FILE``: what an analyser sent, record by record, as JSON lines.

For the engineer who connects an analyser and has a capture in hand: a raw ``.astm`` capture, a
host's log with ``[STX]``-style escapes, or a dump of records (see `protocols.astm.capture`). The
file is read the way the daemon reads the wire (the same E1381 link, or the unframed reader), so
what the tool calls an error is what the daemon would refuse. One JSON object per line::

    {"message": 1, "offset": 0, "line": 1, "type": "R", "seq": "1",
     "fields": [[["R"]], [["1"]], [["", "", "", "GLU"]], ...], "raw": "R|1|^^^GLU|..."}
    {"error": "bad checksum: received 7A, computed 7B", "offset": 5120, "message": 4, "line": 17}
    {"warning": "frame outside a transfer ...", "offset": 9000, "message": 6, "line": 40}

`message` counts the messages of the capture from 1 (a message that failed keeps its number).
`offset` is a byte offset in the analyser's byte stream: for a record, where the frame that holds
its first byte starts (its STX), or for unframed data where the record itself starts. For a raw
capture that is the offset in the file; for a text log, `line` (the file's line, from 1) is
where to look. `fields` holds every field (field 1 is the record type), each a list of repeats,
each a list of components, unescaped; `raw` is the record as received. `seq` is field 2 (none
for H, whose field 2 declares the delimiters).

Exit status: 0 when every message decoded without error, 1 when anything was wrong (each
problem is an "error" line with its offset), 2 for usage errors (unreadable file, unknown
encoding). A one-line summary goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from middleware.tools._input import parse_and_read
from protocols import astm
from protocols.errors import RemoteProtocolError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labgate astm decode",
        description="Decode an ASTM capture (raw, escaped log or record dump) into JSON lines.",
    )
    parser.add_argument("file", metavar="FILE", help="the capture file")
    parser.add_argument(
        "--encoding", default="latin-1", help="character set of the records (default latin-1)"
    )
    parser.add_argument(
        "--lenient-frames",
        action="store_true",
        help="accept frames without frame number or checksum, as the link option does",
    )
    return parser


def main(argv: list[str]) -> int:
    """Run the tool; returns the exit status (0 all decoded, 1 problems found, 2 usage)."""
    parsed = parse_and_read(_parser(), argv, "astm decode")
    if isinstance(parsed, int):
        return parsed
    args, data = parsed
    capture = astm.read_capture(data)
    messages = astm.split_capture_messages(capture, lenient_frames=args.lenient_frames)
    report = _Report(capture)
    try:
        for number, message in enumerate(messages, start=1):
            report.message(number, message, args.encoding)
        if not report.decoded:
            report.errors += 1
            report.emit(0, {"error": "no message decoded", "offset": 0, "message": None})
        report.flush()
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    kind = f"{capture.kind}{', escaped log' if capture.escaped else ''}"
    print(
        f"{args.file}: {kind}; {report.decoded} of {len(messages)} message(s) decoded, "
        f"{report.records} record(s), {report.errors} error(s), {report.warnings} warning(s)",
        file=sys.stderr,
    )
    return 1 if report.errors else 0


class _Report:
    """Collects the JSON lines of one message, in offset order, and prints them."""

    def __init__(self, capture: astm.Capture) -> None:
        self.capture = capture
        self.decoded = 0
        self.records = 0
        self.errors = 0
        self.warnings = 0
        self._lines: list[tuple[int, int, dict[str, Any]]] = []

    def emit(self, offset: int, line: dict[str, Any]) -> None:
        number = self.capture.line_of(offset)
        if number is not None:
            line = {**line, "line": number}
        self._lines.append((offset, 0 if "type" not in line else 1, line))

    def message(self, number: int, message: astm.CaptureMessage, encoding: str) -> None:
        for issue in message.errors:
            self.errors += 1
            self.emit(
                issue.offset, {"error": issue.reason, "offset": issue.offset, "message": number}
            )
        for issue in message.warnings:
            self.warnings += 1
            self.emit(
                issue.offset, {"warning": issue.reason, "offset": issue.offset, "message": number}
            )
        if message.text:
            try:
                decoded = astm.decode_message(message.text, encoding)
            except RemoteProtocolError as exc:
                self.errors += 1
                self.emit(
                    message.offset, {"error": str(exc), "offset": message.offset, "message": number}
                )
            else:
                self.decoded += 1
                self._records(number, message, decoded, encoding)
        self.flush()

    def _records(
        self, number: int, message: astm.CaptureMessage, decoded: astm.Message, encoding: str
    ) -> None:
        index = 0  # where in the text the record is looked for
        for record in decoded.records:
            raw = decoded.delimiters.field.join(record.raw_fields or ())
            encoded = raw.encode(encoding, "replace")
            found = message.text.find(encoded, index)
            offset = message.offset_of(found if found >= 0 else index)
            if found >= 0:
                index = found + len(encoded)
            self.records += 1
            self.emit(
                offset,
                {
                    "message": number,
                    "offset": offset,
                    "type": record.type,
                    "seq": None if record.type == "H" else record.field(2),
                    "fields": [[list(repeat) for repeat in field] for field in record.fields],
                    "raw": raw,
                },
            )

    def flush(self) -> None:
        self._lines.sort(key=lambda entry: (entry[0], entry[1]))
        for _, _, line in self._lines:
            print(json.dumps(line))
        self._lines.clear()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
