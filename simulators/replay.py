"""Replay: the E1394 message texts held in a corpus capture, for a simulated analyser to send.

Three kinds of file are read:

- framed captures (real bytes: STX FN text ETX C1 C2 CR LF, with or without ENQ/EOT and LF):
  the bytes go through a host `astm.Link`, which checks every frame as labgate would, and each
  message it delivers (one per ETX frame, with its ETB frames) is one message to replay. A
  frame the link refuses makes the file unusable for replay (`ValueError`): replaying a capture
  must not silently lose part of it;
- host logs that write control characters as text (``[STX]1H|...[CR][ETX]7A[CR][LF]``), one
  line per read, the host's own replies on lines starting with `` - ``: the analyser's lines are
  joined and un-escaped, and frames are cut out without checking checksums (such logs often lost
  characters, which breaks checksums but not the records). Best effort: a log whose lines are
  out of order (astm-access2-1.txt) gives fragments, and frames it mangled are skipped;
- plain record dumps (one record per line, LF or CRLF): `#` comment lines and `@` script lines
  are dropped, the records are joined with CR, and a new message starts at each H record.

When `protocols.astm` offers `read_capture` and `split_capture_messages` (the daemon's own
capture reader, which assembles E1381 messages into E1394 H...L messages), they are used first,
as long as they read the file without errors; otherwise the simpler reader here is used, which
keeps each E1381 message as the analyser framed it, and reads logs whose checksums are broken.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protocols import astm
from protocols.astm.constants import ENQ, EOT, ETX, RESTRICTED, STX
from protocols.errors import ProtocolError

__all__ = ["messages_from_capture", "messages_from_file", "specimen_of"]

_ESCAPES = {
    b"[STX]": b"\x02",
    b"[ETX]": b"\x03",
    b"[EOT]": b"\x04",
    b"[ENQ]": b"\x05",
    b"[ACK]": b"\x06",
    b"[NAK]": b"\x15",
    b"[ETB]": b"\x17",
    b"[CR]": b"\r",
    b"[LF]": b"\n",
}
_ESCAPE = re.compile(b"|".join(re.escape(name) for name in _ESCAPES))
# A frame in a log: STX, an optional FN, a text free of restricted characters [LIS1-A §6.6],
# ETX or ETB (the checksum is not read). A log whose lines are out of order can hold an STX
# whose text runs into another frame's trailer (CR LF): that frame is skipped.
_TEXT_BYTE = b"[^" + b"".join(re.escape(bytes([c])) for c in sorted(RESTRICTED)) + b"]"
_LOGGED_FRAME = re.compile(rb"\x02([0-7]?)(" + _TEXT_BYTE + rb"*)([\x03\x17])")


def messages_from_file(path: str | Path, *, shared: bool = True) -> list[bytes]:
    """The message texts (E1394 records, CR-terminated) held in a capture file.

    `shared=False` skips `protocols.astm`'s reader. Raises `ValueError` when the file holds no
    message, or a framed capture has a bad frame.
    """
    try:
        return messages_from_capture(Path(path).read_bytes(), shared=shared)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def messages_from_capture(data: bytes, *, shared: bool = True) -> list[bytes]:
    """As `messages_from_file`, from the bytes of a capture."""
    messages = _shared_reader(data) if shared else []
    if not messages:
        if STX in data:
            messages = _framed(data)
        elif _ESCAPE.search(data):
            messages = _escaped_log(data)
        else:
            messages = _records(data)
    messages = [text for text in messages if text.strip()]
    if not messages:
        raise ValueError("no ASTM message found")
    return messages


def specimen_of(text: bytes) -> str | None:
    """The specimen id of the first O record, if any: O-3 (specimen id), else O-4 (instrument
    specimen id), each read as its first non-empty component."""
    field, component = "|", "^"
    for line in re.split(rb"\r\n|\r|\n", text):
        record = line.decode("latin-1")
        if record.startswith("H") and len(record) >= 5:
            field, component = record[1], record[3]
        elif record.startswith("O"):
            fields = record.split(field)
            for value in fields[2:4]:
                parts = (part.strip() for part in value.split(component))
                specimen = next((part for part in parts if part), None)
                if specimen:
                    return specimen
            return None
    return None


def _shared_reader(data: bytes) -> list[bytes]:
    """`protocols.astm`'s capture reader, if it exists and reads `data` without errors; else []."""
    read_capture: Callable[[bytes], Any] | None = getattr(astm, "read_capture", None)
    split: Callable[[Any], Any] | None = getattr(astm, "split_capture_messages", None)
    if read_capture is None or split is None:
        return []
    try:
        messages = split(read_capture(data))
    except (ProtocolError, ValueError):
        return []  # a file it does not read: use ours
    if any(getattr(message, "errors", ()) for message in messages):
        return []  # it lost part of the file (refused frames...): ours may keep it
    return [bytes(message.text) for message in messages if message.text]


def _framed(data: bytes) -> list[bytes]:
    """Frames checked and assembled by a host link, as labgate would receive them."""
    link = astm.Link(astm.Role.HOST)
    messages: list[bytes] = []
    # A capture may start after the ENQ and stop before the EOT; an extra ENQ or EOT is harmless.
    stream = (b"" if data.lstrip().startswith(ENQ) else ENQ) + data + EOT
    link.receive_data(stream, 0.0)
    while (event := link.next_event()) is not None:
        if isinstance(event, astm.MessageReceived):
            messages.append(event.text)
            link.acknowledge(0.0)
        elif isinstance(event, astm.FrameRejected):
            raise ValueError(f"frame refused ({event.reason}): {event.raw[:40]!r}")
    return messages


def _escaped_log(data: bytes) -> list[bytes]:
    """Frames cut out of a text log (checksums not checked); ETB frames join the next ones."""
    lines = re.split(rb"\r\n|\n", data)
    analyser = b"".join(line for line in lines if not line.startswith(b" - "))
    stream = _ESCAPE.sub(lambda match: _ESCAPES[match.group()], analyser)
    messages: list[bytes] = []
    text = bytearray()
    for match in _LOGGED_FRAME.finditer(stream):
        text += match.group(2)
        if match.group(3) == ETX:
            messages.append(bytes(text))
            text.clear()
    return messages


def _records(data: bytes) -> list[bytes]:
    """A record dump cut into messages at each H record."""
    messages: list[list[bytes]] = []
    for line in re.split(rb"\r\n|\r|\n", data):
        if not line.strip() or line.startswith((b"#", b"@")):
            continue
        if line.startswith(b"H") or not messages:
            messages.append([])
        messages[-1].append(line)
    return [b"".join(record + b"\r" for record in records) for records in messages]
