"""Capture files of analyser traffic, as found in the wild, read back through the links.

`read_capture` turns a file into the byte stream the analyser sent, in one of three shapes:

- raw bytes (``.astm`` files): E1381 frames, or unframed records, as they crossed the wire;
- text logs that write control characters as escapes (``[STX]``, ``<STX>``, ``<stx>``, ``[CR]``,
  ``<cr>`` ... for STX ETX ETB ENQ EOT ACK NAK CR LF), one log line per read: the log's own line
  ends are not traffic and are dropped, as are lines holding the other side's replies
  (``- [ACK]``);
- record dumps (plain lines, LF or CRLF).

In all three, ``#`` comment lines and ``@send`` / ``@receive`` test-script directive lines are
dropped. The stream is "framed" when it holds an STX followed by a frame number, else
"unframed".

`split_capture_messages` then reads the stream the way the daemon would, with the same cores:
framed data through `Link(Role.HOST)`, acknowledging every message, and unframed data through
`UnframedLink`. The E1381 messages are assembled into E1394 messages (H ... L), as a session
does for analysers that send one record per frame. Each message comes with its offset in
`Capture.data`, and with what went wrong (errors: a frame refused, bytes that mean nothing, a
message cut short) or looked odd (warnings) on the way, each at its byte offset.

A capture is not always a faithful byte stream: it may start in the middle of a transfer, and a
host's log may write an ENQ after the frame it announced, or lose it. So that such a log can
still be read, a frame that arrives while the link is neutral is read as if ENQ had come just
before it, and a frame that repeats the number of the end frame accepted just before it with
another text (a sender only does that for a new message, after EOT and ENQ) is read as the
first frame of a new transfer. Both are reported as warnings; a capture that starts with a frame
gets no warning for it. Inside a message the link's reading stands: such a frame is ignored as a
retransmission, and that is an error.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass
from typing import Literal

from protocols.astm.constants import ACK, CR, ENQ, EOT, ETB, ETX, LF, NAK, STX
from protocols.astm.events import (
    DuplicateFrameIgnored,
    Event,
    FrameRejected,
    GarbageDiscarded,
    MessageReceived,
    TransferAborted,
    TransferEnded,
)
from protocols.astm.frames import (
    ControlToken,
    Frame,
    FrameReader,
    FrameToken,
    GarbageToken,
    ReadMode,
    Token,
)
from protocols.astm.link import Link, LinkState, Role
from protocols.astm.unframed import UnframedLink, record_lines

__all__ = ["Capture", "CaptureIssue", "CaptureMessage", "read_capture", "split_capture_messages"]

_CONTROLS = {
    b"STX": STX,
    b"ETX": ETX,
    b"ETB": ETB,
    b"ENQ": ENQ,
    b"EOT": EOT,
    b"ACK": ACK,
    b"NAK": NAK,
    b"CR": CR,
    b"LF": LF,
}
_NAMES = b"|".join(_CONTROLS)
_ESCAPE = re.compile(rb"\[(" + _NAMES + rb")\]|<(" + _NAMES + rb")>", re.IGNORECASE)
_LINE_END_ESCAPE = re.compile(rb"\[(CR|LF)\]|<(CR|LF)>", re.IGNORECASE)
#: A log line holding what the other side sent: "- [ACK]", " - <ACK>", " - [STX]1H|..."
_REPLY_LINE = re.compile(rb"\s*-\s+(\[(" + _NAMES + rb")\]|<(" + _NAMES + rb")>)", re.IGNORECASE)
_DROPPED_PREFIXES = (b"#", b"@send", b"@receive")
_FRAMED = re.compile(rb"\x02[0-7]")
_CONTROL_ONLY = frozenset(b"\x02\x03\x04\x05\x06\x15\x17\r\n \t")
_NEUTRAL = (LinkState.NEUTRAL, LinkState.BACKOFF)


@dataclass(frozen=True, slots=True)
class Capture:
    """A capture file read back into the bytes the analyser sent.

    `kind` says which link reads `data`; `dropped_lines` counts the comment, directive and
    reply lines left out. `escaped` is True for a text log with ``[STX]``-style escapes.
    `line_starts` maps offsets in `data` back to line numbers in the file (see `line_of`).
    """

    kind: Literal["framed", "unframed"]
    data: bytes
    dropped_lines: int
    escaped: bool = False
    #: (offset in `data`, line number in the file) where each line that gave bytes begins.
    line_starts: tuple[tuple[int, int], ...] = ()

    def line_of(self, offset: int) -> int | None:
        """The line of the file (from 1) that holds the byte at `offset` of `data`."""
        index = bisect_right(self.line_starts, offset, key=lambda start: start[0])
        return self.line_starts[index - 1][1] if index else None


@dataclass(frozen=True, slots=True)
class CaptureIssue:
    """Something wrong (an error) or odd (a warning) at a byte `offset` of `Capture.data`."""

    offset: int
    reason: str


@dataclass(frozen=True, slots=True)
class CaptureMessage:
    """One E1394 message of a capture, or what is left of a message that failed.

    `offset` is where it starts in `Capture.data` (its first frame's STX, or its H record), or
    for a failed message where its first error is. `text` holds its records, CR-terminated, as
    the link delivered them (empty when nothing was received); `raw` its frames or record lines
    as received (for a failed message, the refused frames). `segments` maps `text` back to
    `data`: (index in `text`, offset in `data`) where each frame's text or each record begins.
    """

    offset: int
    text: bytes
    raw: bytes
    errors: tuple[CaptureIssue, ...] = ()
    warnings: tuple[CaptureIssue, ...] = ()
    segments: tuple[tuple[int, int], ...] = ()

    def offset_of(self, index: int) -> int:
        """Offset in `Capture.data` of the frame (framed) or record (unframed) that holds
        ``text[index]``; `offset` when the message has no text."""
        found = bisect_right(self.segments, index, key=lambda segment: segment[0])
        return self.segments[found - 1][1] if found else self.offset


# --- reading files --------------------------------------------------------------------------------


def read_capture(data: bytes) -> Capture:
    """The bytes an analyser sent, from a capture file's contents (see the module docstring)."""
    # A capture holding real STX/ENQ bytes is a byte stream: `[ETX]` in it is data, not an escape.
    raw_controls = b"\x02" in data or b"\x05" in data
    escaped = not raw_controls and _ESCAPE.search(data) is not None
    # In an escaped log the real line ends are the logger's, unless it wrote no CR/LF escapes
    # at all: then they stand for the record separators and are kept.
    keep_line_ends = not escaped or _LINE_END_ESCAPE.search(data) is None
    out = bytearray()
    starts: list[tuple[int, int]] = []
    dropped = 0
    for number, line in enumerate(_lines(data), 1):
        content = line.removesuffix(LF).removesuffix(CR)
        if content.startswith(_DROPPED_PREFIXES) or (escaped and _REPLY_LINE.match(content)):
            dropped += 1
            continue
        if escaped:
            piece = _ESCAPE.sub(_unescape, line if keep_line_ends else content)
        else:
            piece = line
        if piece:
            starts.append((len(out), number))
            out += piece
    stream = bytes(out)
    kind: Literal["framed", "unframed"] = "framed" if _FRAMED.search(stream) else "unframed"
    return Capture(kind, stream, dropped, escaped, tuple(starts))


def _lines(data: bytes) -> list[bytes]:
    """The lines of `data`, each with its LF (the file's lines as an editor numbers them)."""
    lines = data.split(LF)
    last = lines.pop()
    return [line + LF for line in lines] + ([last] if last else [])


def _unescape(match: re.Match[bytes]) -> bytes:
    return _CONTROLS[(match.group(1) or match.group(2)).upper()]


# --- reading messages -----------------------------------------------------------------------------


def split_capture_messages(
    capture: Capture, *, lenient_frames: bool = False
) -> list[CaptureMessage]:
    """The messages of a capture, read through the daemon's own links (module docstring).

    `lenient_frames` is `Link`'s option (frames without FN or checksum). Never raises for
    what the capture holds: whatever is wrong is in the messages' errors.
    """
    if capture.kind == "framed":
        return _FramedReplay(capture.data, lenient_frames).run()
    return _replay_unframed(capture.data)


class _Assembler:
    """Collects link events into E1394 messages (H ... L), with the issues met on the way.

    Issues belong to the message being received; warnings met between messages wait for the
    next one (or join the last one at the end of the capture).
    """

    def __init__(self) -> None:
        self.messages: list[CaptureMessage] = []
        self._text = bytearray()
        self._raw = bytearray()
        self._refused = bytearray()
        self._segments: list[tuple[int, int]] = []
        self._errors: list[CaptureIssue] = []
        self._warnings: list[CaptureIssue] = []

    def error(self, offset: int, reason: str) -> None:
        self._errors.append(CaptureIssue(offset, reason))

    def warning(self, offset: int, reason: str) -> None:
        self._warnings.append(CaptureIssue(offset, reason))

    def refused(self, offset: int, raw: bytes, reason: str) -> None:
        self._refused += raw
        self.error(offset, reason)

    def received(self, text: bytes, raw: bytes, segments: list[tuple[int, int]]) -> None:
        """A message delivered by the link; `segments` index its own `text`."""
        if self._text and text.startswith(b"H"):
            self.close()  # a new H record: the message before it had no L
        base = len(self._text)
        self._segments += [(base + index, offset) for index, offset in segments]
        self._text += text
        self._raw += raw
        if _terminated(self._text):
            self.close()

    def close(self) -> None:
        """The message in progress is over (L, end of transfer, end of capture)."""
        if not self._text and not self._errors:
            return  # nothing to show: its warnings wait for the next message
        if self._segments:
            offset = self._segments[0][1]
        else:
            offset = min((issue.offset for issue in self._errors), default=0)
        if self._text and not _terminated(self._text):
            self.warning(offset, "message ends without an L record")
        self.messages.append(
            CaptureMessage(
                offset,
                bytes(self._text),
                bytes(self._raw if self._text else self._refused),
                tuple(sorted(self._errors, key=_by_offset)),
                tuple(sorted(self._warnings, key=_by_offset)),
                tuple(self._segments),
            )
        )
        self._text.clear()
        self._raw.clear()
        self._refused.clear()
        self._segments = []
        self._errors = []
        self._warnings = []

    def finish(self) -> list[CaptureMessage]:
        self.close()
        if self._warnings:
            warnings = tuple(self._warnings)
            if self.messages:
                last = self.messages.pop()
                merged = tuple(sorted(last.warnings + warnings, key=_by_offset))
                self.messages.append(
                    CaptureMessage(
                        last.offset, last.text, last.raw, last.errors, merged, last.segments
                    )
                )
            else:
                self.messages.append(CaptureMessage(warnings[0].offset, b"", b"", (), warnings))
        return self.messages


def _by_offset(issue: CaptureIssue) -> int:
    return issue.offset


def _terminated(text: bytes | bytearray) -> bool:
    """True when E1394 text holds its L record (field delimiter from its H, else "|")."""
    field = text[1:2] if text[:1] == b"H" else b"|"
    return any(
        line[:1] == b"L" and line[1:2] in (b"", field)
        for line in bytes(text).replace(LF, CR).split(CR)
    )


def _describe(data: bytes) -> str:
    """`data` for a reason text: its repr, cut after 60 bytes."""
    shown = data[:60]
    return f"{shown!r}{'...' if len(data) > len(shown) else ''}"


class _FramedReplay:
    """Framed data through `Link(Role.HOST)`, acknowledging every message.

    The stream is cut into tokens by a `FrameReader` here, in the mode a host that never sends
    always reads in, exactly as the link's own reader would cut it; the link is handed one
    token at a time, so that each event is known to come from the token at a known offset (fed
    as bytes, a frame without CR after its checksum, or a run of garbage, is only reported when
    the next bytes arrive).
    """

    def __init__(self, data: bytes, lenient_frames: bool) -> None:
        self.data = data
        self.lenient = lenient_frames
        self.link = Link(Role.HOST, lenient_frames=lenient_frames)
        self.out = _Assembler()
        self.seen_enq = False
        self.last_frame: Frame | None = None  # the last frame the link accepted
        # (offset, text length) of the intermediate frames accepted for the message in progress
        self.frames: list[tuple[int, int]] = []

    def run(self) -> list[CaptureMessage]:
        reader = FrameReader(self.link.max_frame, checksum_required=not self.lenient)
        reader.feed(self.data)
        end = len(self.data)
        while True:
            start = end - reader.buffered
            token = reader.next_token(ReadMode.FRAMES)
            if token is None:
                break
            chunk = self.data[start : end - reader.buffered]  # with the LF after a frame, if any
            if isinstance(token, FrameToken):
                self._frame(token, start + chunk.index(STX))
                continue
            if isinstance(token, ControlToken) and token.byte == ENQ:
                self.seen_enq = True
            self._hand(token, start + len(chunk) - len(_token_bytes(token)))
        rest = end - reader.buffered
        if rest < end:  # a frame (or garbage) cut short by the end of the capture
            self._hand(GarbageToken(reader.flush()), rest, at_end=True)
        if self.link.state not in _NEUTRAL:
            self._hand(ControlToken(EOT), end, at_end=True)
        return self.out.finish()

    def _frame(self, token: FrameToken, offset: int) -> None:
        if self.link.state in _NEUTRAL:
            if self.seen_enq:
                self.out.warning(
                    offset,
                    "frame outside a transfer (no ENQ before it in the capture): "
                    "read as if ENQ had come",
                )
            self._hand(ControlToken(ENQ), offset)
        frame = token.frame
        events = self._hand(token, offset)
        if frame is None:
            return
        if not events:  # an intermediate frame, accepted
            self.last_frame = frame
            self.frames.append((offset, len(frame.text)))
        elif isinstance(events[0], MessageReceived):
            self.last_frame = frame
        elif isinstance(events[0], DuplicateFrameIgnored):
            last = self.last_frame
            if last is not None and last.final and frame.text != last.text:
                self.out.warning(
                    offset,
                    f"frame {frame.number} has the number of the frame before it but another "
                    "text: the capture lost the EOT and ENQ between two messages; read as a "
                    "new transfer",
                )
                self._hand(ControlToken(EOT), offset)
                self._hand(ControlToken(ENQ), offset)
                self._frame(token, offset)
            elif last is not None and frame.text != last.text:
                self.out.error(
                    offset,
                    f"frame {frame.number} has the number of the frame before it but another "
                    "text: ignored as its retransmission (LIS1-A §6.5.1.1)",
                )
            else:
                self.out.warning(offset, f"frame {frame.number} received again: ignored")

    def _hand(self, token: Token, offset: int, *, at_end: bool = False) -> list[Event]:
        """Give one token, which starts at `offset`, to the link; handle its events.

        `at_end`: what is left at the end of the capture, or the EOT that ends its transfer.
        """
        link = self.link
        link._handle_token(token, 0.0)
        events: list[Event] = []
        while (event := link.next_event()) is not None:
            events.append(event)
            self._event(event, offset, at_end)
            if isinstance(event, MessageReceived):
                link.acknowledge(0.0)
        link.data_to_send()
        return events

    def _event(self, event: Event, offset: int, at_end: bool) -> None:
        out = self.out
        if isinstance(event, MessageReceived):
            segments, index = [], 0
            for position, length in self.frames:
                segments.append((index, position))
                index += length
            segments.append((index, offset))  # the end frame: the one just handed over
            self.frames = []
            out.received(event.text, event.raw, segments)
        elif isinstance(event, FrameRejected):
            out.refused(offset, event.raw, event.reason)
        elif isinstance(event, GarbageDiscarded):
            data = event.data
            if _CONTROL_ONLY.issuperset(data):
                out.warning(offset, f"stray control bytes {_describe(data)}: ignored")
            elif at_end and data.startswith(STX):
                out.error(offset, f"the capture ends inside a frame: {_describe(data)}")
            else:
                out.error(offset, f"{len(data)} bytes outside any frame: {_describe(data)}")
        elif isinstance(event, TransferAborted):
            self.frames = []
            reason = "the capture ends in the middle of a message" if at_end else event.reason
            out.error(offset, reason)
        elif isinstance(event, TransferEnded):
            self.frames = []
            out.close()


def _token_bytes(token: Token) -> bytes:
    if isinstance(token, FrameToken):
        return token.raw
    if isinstance(token, ControlToken):
        return token.byte
    return token.data


def _replay_unframed(data: bytes) -> list[CaptureMessage]:
    """Unframed data through `UnframedLink`; events are found in `data` in stream order."""
    link = UnframedLink(idle_flush=None)
    out = _Assembler()
    cursor = 0

    def locate(piece: bytes) -> int:
        nonlocal cursor
        found = data.find(piece, cursor)
        if found < 0:  # pragma: no cover - every event holds bytes of the stream, in order
            return cursor
        cursor = found + len(piece)
        return found

    link.receive_data(data, 0.0)
    link.flush(0.0)
    while (event := link.next_event()) is not None:
        if isinstance(event, MessageReceived):
            link.acknowledge(0.0)
            start = locate(event.raw)
            segments: list[tuple[int, int]] = []
            index = 0
            for position, line in record_lines(event.raw):
                segments.append((index, start + position))
                index += len(line) + 1
            out.received(event.text, event.raw, segments)
        elif isinstance(event, GarbageDiscarded):
            start = locate(event.data)
            if _CONTROL_ONLY.issuperset(event.data):
                out.warning(start, f"control bytes around no record {_describe(event.data)}")
            else:
                out.error(
                    start,
                    f"{len(event.data)} bytes outside any H...L message: {_describe(event.data)}",
                )
        elif isinstance(event, FrameRejected):
            out.refused(locate(event.raw), event.raw, event.reason)
        elif isinstance(event, TransferEnded):
            out.close()
    return out.finish()
