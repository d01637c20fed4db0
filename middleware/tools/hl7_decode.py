"""``labgate hl7 decode FILE``: the HL7 v2 messages of a capture or log, as JSON lines.

For the engineer connecting an HL7 analyser or LIS with a capture in hand.  The file
may hold, in any mix:

- MLLP-framed bytes (``VT`` message ``FS CR``), as a raw TCP capture;
- plain text, one or more messages each starting at ``MSH``, segments separated by CR,
  LF or CRLF; an unframed message ends at the next ``MSH``, a blank line, VT or FS;
- text escapes of control characters as hosts log them: ``[VT]`` ``[CR]`` ``[LF]``
  ``[FS]`` and ``<cr>`` ``<lf>`` ``<vt>`` ``<fs>`` (any case); an escaped CR followed by
  the log's own line break counts once;
- comment lines: ``#`` at the start of a line followed by a space, a tab or nothing.

One JSON object per line, in file order::

    {"message": 1, "offset": 1, "type": "ORU^R01", "control_id": "...", "version": "2.3.1",
     "charset": "UNICODE", "segments": [{"id": "MSH", "fields": ["|", "^~\\\\&", ...]}, ...],
     "findings": ["message fails strict HL7 validation: ..."]}
    {"error": "not a results ...", "offset": 5120, "message": 4}
    {"warning": "37 bytes outside any message skipped", "offset": 9000}

``offset`` is the byte offset in the file where the message's ``MSH`` starts (for a
framed message, its VT is the byte before; in a text log it is where the escaped text
starts).  ``fields`` holds every field as received (ER7 text, escapes kept) so that
``fields[n - 1]`` is field *n* of the segment, MSH-1 and MSH-2 included.  ``findings``
lists what the strict structure check (hl7apy, via
:func:`protocols.hl7.validate_message`) objects to: it stops at the first problem, so
the list has at most one entry; findings do not make the run fail.  ``--no-validate``
skips the check (it costs ~25 ms a message).

Exit status: 0 when every message was split, 1 when any could not be (or none was
found), 2 for usage errors (unreadable file).  A one-line summary goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from array import array
from typing import Any

from middleware.tools._input import parse_and_read
from protocols.errors import RemoteProtocolError
from protocols.hl7.inbound import decode_inbound, message_type
from protocols.hl7.validation import validate_message

__all__ = ["main", "read_stream", "split_messages"]

_ESCAPE = re.compile(
    rb"(?P<esc>\[(?:VT|CR|LF|FS)\]|<(?:vt|cr|lf|fs)>)(?P<eol>\r\n|\n|\r)?"
    rb"|(?P<comment>(?<![^\r\n])#(?:[ \t][^\r\n]*)?(?:\r\n|\n|\r|$))",
    re.IGNORECASE,
)
_CONTROL = {b"VT": b"\x0b", b"CR": b"\r", b"LF": b"\n", b"FS": b"\x1c"}
_START = re.compile(rb"(?<![^\r\n\x0b\x1c])MSH(?=[^A-Za-z0-9\r\n])")
_BLANK_LINE = re.compile(rb"(?:\r\n|\r|\n)[ \t]*(?:\r\n|\r|\n)")


def read_stream(data: bytes) -> tuple[bytes, array[int]]:
    """Resolve text escapes and drop comment lines.

    Returns the byte stream and, for each of its bytes, its offset in ``data``.
    """
    out = bytearray()
    origin: array[int] = array("q")
    position = 0
    for match in _ESCAPE.finditer(data):
        out += data[position : match.start()]
        origin.extend(range(position, match.start()))
        escape = match.group("esc")
        if escape is not None:
            out += _CONTROL[escape[1:-1].upper()]
            origin.append(match.start())
            eol = match.group("eol")
            if eol is not None and escape[1:-1].upper() not in (b"CR", b"LF"):
                out += eol  # a line break after [VT]/[FS] is the log's, kept as is
                origin.extend(range(match.start("eol"), match.end("eol")))
        position = match.end()
    out += data[position:]
    origin.extend(range(position, len(data)))
    return bytes(out), origin


def split_messages(stream: bytes) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Find messages in ``stream``: (start, end) of each, and of each non-blank gap."""
    starts = [m.start() for m in _START.finditer(stream)]
    messages: list[tuple[int, int]] = []
    junk: list[tuple[int, int]] = []
    previous_end = 0
    for index, start in enumerate(starts):
        limit = starts[index + 1] if index + 1 < len(starts) else len(stream)
        end = limit
        for stop in (stream.find(b"\x1c", start, limit), stream.find(b"\x0b", start, limit)):
            if stop >= 0:
                end = min(end, stop)
        blank = _BLANK_LINE.search(stream, start, end)
        if blank is not None:
            end = blank.start()
        if stream[previous_end:start].strip(b"\x0b\x1c \t\r\n"):
            junk.append((previous_end, start))
        messages.append((start, end))
        previous_end = end
    if stream[previous_end:].strip(b"\x0b\x1c \t\r\n"):
        junk.append((previous_end, len(stream)))
    return messages, junk


def _describe(number: int, offset: int, payload: bytes, validate: bool) -> dict[str, Any]:
    msg, charset = decode_inbound(payload)
    kind, trigger = message_type(msg)
    msh = msg.segments[0]
    findings: list[str] = []
    if validate:
        try:
            validate_message(payload)
        except RemoteProtocolError as exc:
            findings.append(str(exc))
    return {
        "message": number,
        "offset": offset,
        "type": f"{kind}^{trigger}" if trigger else kind,
        "control_id": msg.get(msh, 10),
        "version": msg.get(msh, 12),
        "charset": charset,
        "segments": [
            {"id": msg.name(s), "fields": [str(f) for f in list(s)[1:]]} for s in msg.segments
        ],
        "findings": findings,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labgate hl7 decode",
        description="Decode an HL7 v2 capture (MLLP bytes, text, escaped log) into JSON lines.",
    )
    parser.add_argument("file", metavar="FILE", help="the capture file")
    parser.add_argument(
        "--no-validate", action="store_true", help="skip the strict structure check (hl7apy)"
    )
    return parser


def main(argv: list[str]) -> int:
    """Run the tool; returns the exit status (0 all split, 1 problems found, 2 usage)."""
    parsed = parse_and_read(_parser(), argv, "hl7 decode")
    if isinstance(parsed, int):
        return parsed
    args, data = parsed
    stream, origin = read_stream(data)
    spans, junk = split_messages(stream)
    lines: list[tuple[int, dict[str, Any]]] = []
    for start, end in junk:
        lines.append(
            (
                origin[start],
                {
                    "warning": f"{end - start} bytes outside any message skipped",
                    "offset": origin[start],
                },
            )
        )
    errors = 0
    for number, (start, end) in enumerate(spans, start=1):
        offset = origin[start]
        try:
            lines.append(
                (offset, _describe(number, offset, stream[start:end], not args.no_validate))
            )
        except RemoteProtocolError as exc:
            errors += 1
            lines.append((offset, {"error": str(exc), "offset": offset, "message": number}))
    if not spans:
        errors += 1
        lines.append((0, {"error": "no HL7 message (MSH) found", "offset": 0}))
    lines.sort(key=lambda entry: entry[0])
    try:
        for _, line in lines:
            print(json.dumps(line, ensure_ascii=False))
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    findings = sum(1 for _, line in lines if line.get("findings"))
    print(
        f"{args.file}: {len(spans) - errors if spans else 0} of {len(spans)} message(s) split, "
        f"{errors} error(s), {findings} with findings, {len(junk)} skipped chunk(s)",
        file=sys.stderr,
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
