"""LIS2-A2 records over TCP without E1381 frames ("unframed" mode), as a sans-IO core.

Many analysers offer, next to (or instead of) the E1381 link, a mode where the E1394 records go
over the socket as plain lines: no frames, no checksums, often no ENQ/EOT [PROTOCOLS.md §1.2].
`UnframedLink` reads that mode with the same five calls and commands as `Link`, so that an
analyser session can hold either one (the daemon chooses per connection)::

    link = astm.UnframedLink(ack_messages=True)
    link.receive_data(data, now)
    while (event := link.next_event()) is not None:
        if isinstance(event, astm.MessageReceived):
            store(event.raw)
            link.acknowledge(now)             # ACK (0x06) with ack_messages=True, else nothing
    transport.write(link.data_to_send())
    call_at(link.get_timer(), link.handle_timer)

Only use it for analysers that offer nothing better: without frames and replies there is no
flow control. With ``ack_messages=False`` the analyser considers a message delivered as soon
as TCP has carried it; labgate cannot hold it back while a message is made durable, nor make
it send a message again (`refuse()` writes nothing). With ``ack_messages=True`` an analyser that
waits for a bare ACK (0x06) or NAK (0x15) after each message gets one from `acknowledge()` or
`refuse()`, and then behaves much like an E1381 sender at the message level.
"""

from __future__ import annotations

import re
import string
from enum import Enum, auto

from protocols.astm._core import CoreOutput
from protocols.astm.constants import ACK, CR, LF, NAK, RESTRICTED
from protocols.astm.events import (
    FrameRejected,
    GarbageDiscarded,
    MessageReceived,
    MessageSent,
    TransferEnded,
)
from protocols.errors import LocalProtocolError

__all__ = ["UnframedLink", "UnframedState"]

# Theory of operation
# ===================
#
# The input is a byte stream cut anywhere. It is read as lines: a line ends at CR or LF (so CR,
# LF and CRLF all end records; the empty line between CR and LF is skipped), and also at the
# control bytes vendors wrap unframed records in: STX ETX ETB ENQ EOT, plus ACK and NAK.
#
#   state        input                                we do                          next state
#   -----------  -----------------------------------  -----------------------------  ----------
#   IDLE         a line starting "H" + 4 delimiters   start a message with it         RECEIVING
#   IDLE         ENQ / STX (openers)                  keep them aside                 IDLE
#   IDLE         EOT / ETX / ETB (closers)            drop; report the kept openers   IDLE
#                                                     with it as garbage if there
#                                                     are any ("wrapped nothing");
#                                                     EOT after a message:
#                                                     TransferEnded
#   IDLE         CR, LF, ACK, blank text              drop                            IDLE
#   IDLE         other text, NAK                      GarbageDiscarded                IDLE
#   RECEIVING    a record line                        keep it                         RECEIVING
#   RECEIVING    the L record line                    MessageReceived                 IDLE
#   RECEIVING    a new H line, EOT, ENQ, silence      MessageReceived (as it is),     IDLE (H:
#                (idle_flush), flush()                TransferEnded                   RECEIVING)
#   RECEIVING    more than max_message bytes          FrameRejected                   DISCARDING
#   DISCARDING   anything but an H line, ENQ or EOT   drop                            DISCARDING
#
# A message is H ... L. Its `text` is its records, each ended by CR whatever ended it on the wire
# (control bytes between records are dropped); its `raw` is the exact bytes from the H through
# the CR or LF that ends the L record (a LF after that CR, or a control byte, is read between
# messages). A message whose L never comes is delivered as it is when the sender shows it is
# done: a new H record, EOT or ENQ, `idle_flush` seconds without data, or `flush()` when the
# connection closes. It is then followed by `TransferEnded`, so that a session that assembles
# messages until their L record (as it must for E1381 analysers that send one record per frame)
# knows the message will get no more records.
#
# Between messages, wrapper control bytes are dropped silently when they wrap a message (ENQ or
# STX before an H, ETX and EOT after an L). They are reported as garbage only when they wrap
# nothing: an ENQ or STX followed by EOT, ETX or ETB with no H in between. Any other bytes before
# an H record are `GarbageDiscarded`, in pieces of at most 256 bytes. A NAK from the peer is
# reported too (it refused something we sent); a bare ACK is taken as its reply and dropped.
#
# A line is an H record when it starts with "H" followed by four distinct punctuation characters
# (the field delimiter and H-2, PROTOCOLS.md §2.1): "Hello" is not one. The L record is "L"
# alone or "L" followed by the field delimiter its H declared.
#
# Every message delivered waits for one `acknowledge()` or `refuse()`, in order. The reading goes
# on meanwhile (unlike `Link`, which holds the next frame until it has answered): an unframed
# analyser that does not wait for ACK sends its next message at once, and one that waits sends
# nothing before the answer anyway. `max_message` bounds the buffer: a message that grows past
# it without an L is refused (`FrameRejected`, its first `max_message` bytes) and everything up
# to the next H record, ENQ or EOT is dropped. Every decision depends on the bytes alone, never
# on how they were cut into reads, so any chunking gives the same events.

#: Garbage is reported in pieces of at most this many bytes.
GARBAGE_RUN = 256

_SEPARATOR = re.compile(rb"[\r\n\x02\x03\x04\x05\x06\x15\x17]")  # ends a line
_SEPARATORS = frozenset(b"\r\n\x02\x03\x04\x05\x06\x15\x17")
_LINE_BREAKS = frozenset(b"\r\n")
_OPENERS = frozenset(b"\x02\x05")  # STX ENQ
_CLOSERS = frozenset(b"\x03\x04\x17")  # ETX EOT ETB
_ENDS_MESSAGE = frozenset(b"\x04\x05")  # EOT ENQ: the sender is done with this transmission
_EOT, _NAK = 0x04, NAK[0]
_DELIMITER_CHARS = frozenset(string.punctuation.encode("ascii"))
_NOT_SENDABLE = RESTRICTED - _LINE_BREAKS  # LF may separate records in unframed text


def is_header(line: bytes | bytearray) -> bool:
    """True when `line` starts an H record: "H" and four distinct punctuation delimiters."""
    delimiters = line[1:5]
    return (
        line[:1] == b"H"
        and len(delimiters) == 4
        and len(set(delimiters)) == 4
        and _DELIMITER_CHARS.issuperset(delimiters)
    )


def record_lines(raw: bytes) -> list[tuple[int, bytes]]:
    """The records in the `raw` bytes of a message: (offset in `raw`, line), as `text` has them."""
    lines: list[tuple[int, bytes]] = []
    start = 0
    for match in _SEPARATOR.finditer(raw):
        if match.start() > start:
            lines.append((start, raw[start : match.start()]))
        start = match.end()
    if start < len(raw):
        lines.append((start, raw[start:]))
    return lines


class UnframedState(Enum):
    """Where an `UnframedLink` is in the stream."""

    #: Between messages, waiting for an H record.
    IDLE = auto()
    #: Inside a message, reading records until its L record.
    RECEIVING = auto()
    #: A message outgrew `max_message`: dropping bytes until the next H record, ENQ or EOT.
    DISCARDING = auto()


class UnframedLink(CoreOutput):
    """One end of an unframed LIS2-A2 connection (see the theory of operation in this module).

    Same calls and events as `Link` where they apply: `MessageReceived`, `TransferEnded`,
    `GarbageDiscarded`, `FrameRejected` (a message over `max_message` bytes) and `MessageSent`.
    ``ack_messages`` makes `acknowledge()` write ACK and `refuse()` write NAK; without it they
    write nothing. A message whose L record never comes is delivered after ``idle_flush``
    seconds without data (None: never; it then waits for an H, ENQ, EOT or `flush()`).
    Raises `LocalProtocolError` for impossible settings.
    """

    def __init__(
        self,
        *,
        ack_messages: bool = False,
        idle_flush: float | None = 5.0,
        max_message: int = 1_000_000,
    ) -> None:
        if idle_flush is not None and not idle_flush > 0:
            raise LocalProtocolError(f"idle_flush must be positive or None, not {idle_flush}")
        if max_message < GARBAGE_RUN:
            raise LocalProtocolError(
                f"max_message must be at least {GARBAGE_RUN}, not {max_message}"
            )
        self.ack_messages = ack_messages
        self.idle_flush = idle_flush
        self.max_message = max_message
        self._buf = bytearray()  # received, not yet read
        self._scan = 0  # RECEIVING: where to resume looking for the end of the line in _buf
        self._line_start = True  # the next byte in _buf starts a line
        super().__init__()  # events, output, deadline (CoreOutput)
        self._state = UnframedState.IDLE
        self._openers = bytearray()  # IDLE: from an ENQ/STX on, until we know what it wraps
        self._raw = bytearray()  # RECEIVING: the message's bytes up to the line being read
        self._records: list[bytes] = []
        self._field = b"|"  # the field delimiter of the message being read
        self._in_transfer = False  # a message started since the last TransferEnded
        self._unanswered = 0  # messages delivered and not yet acknowledged or refused

    # --- public API -----------------------------------------------------------------------

    @property
    def state(self) -> UnframedState:
        """The current `UnframedState`."""
        return self._state

    @property
    def busy(self) -> bool:
        """True while a message is being read or a delivered one awaits its answer."""
        return self._state is not UnframedState.IDLE or self._unanswered > 0

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes from the peer, cut anywhere; then read `next_event()` and `data_to_send()`."""
        if not data:
            return
        self._buf += data
        self._process()
        if self._state is UnframedState.RECEIVING and self.idle_flush is not None:
            self._deadline = now + self.idle_flush  # silence is counted from the last bytes
        else:
            self._deadline = None

    def handle_timer(self, now: float) -> None:
        """Deliver the open message as it is if nothing came for `idle_flush` seconds."""
        if self._deadline is None or now < self._deadline:
            return
        self._deadline = None
        if self._state is UnframedState.RECEIVING:
            self._deliver_partial()

    def flush(self, now: float) -> None:
        """The connection closed: deliver the message being read as it is, and report any
        other bytes left over as garbage (an ENQ or STX left over wrapped nothing)."""
        if self._state is UnframedState.RECEIVING:
            self._deliver_partial()
        elif self._state is UnframedState.IDLE and (self._openers or self._buf.strip()):
            self._report(bytes(self._buf))
        self._buf.clear()
        self._openers.clear()
        self._scan = 0
        self._line_start = True
        self._state = UnframedState.IDLE
        self._deadline = None

    def send_message(self, text: bytes, now: float) -> None:
        """Write one message (E1394 records, CR-terminated; a final CR is added if missing).

        `MessageSent` follows at once: nothing in this mode confirms delivery. Raises
        `LocalProtocolError` if the text is empty or holds control characters (§6.6) other
        than CR and LF.
        """
        if not text:
            raise LocalProtocolError("cannot send an empty message")
        bad = _NOT_SENDABLE.intersection(text)
        if bad:
            raise LocalProtocolError(f"message holds control characters: {sorted(bad)}")
        self._out += text
        if not text.endswith((CR, LF)):
            self._out += CR
        self._events.append(MessageSent())

    def acknowledge(self, now: float) -> None:
        """Answer the oldest delivered message: ACK with ``ack_messages``, else nothing.

        Call it once per `MessageReceived`, in order, after the message is durable. Raises
        `LocalProtocolError` when no message awaits an answer.
        """
        self._answer(ACK)

    def refuse(self, now: float) -> None:
        """Answer the oldest delivered message with NAK (with ``ack_messages``; else nothing,
        and the message is not sent again: the caller must keep it). Same rules as
        `acknowledge()`."""
        self._answer(NAK)

    # --- the machinery --------------------------------------------------------------------

    def _answer(self, reply: bytes) -> None:
        if not self._unanswered:
            raise LocalProtocolError("no received message awaits a reply")
        self._unanswered -= 1
        if self.ack_messages:
            self._out += reply

    def _process(self) -> None:
        """Read lines until the rest of the buffer says nothing yet."""
        i = 0
        while i < len(self._buf):
            if self._state is UnframedState.RECEIVING:
                j = self._read_record(i)
            else:
                j = self._read_between(i)
            if j is None:
                break
            i = j
        del self._buf[:i]
        self._scan = max(0, self._scan - i)

    def _read_between(self, i: int) -> int | None:
        """IDLE or DISCARDING at `_buf[i]`: the next index, or None to wait for more bytes."""
        buf = self._buf
        byte = buf[i]
        idle = self._state is UnframedState.IDLE
        if byte in _SEPARATORS:
            self._line_start = True
            if not idle:
                if byte not in _ENDS_MESSAGE:
                    return i + 1
                self._state = UnframedState.IDLE  # ENQ or EOT ends the discarding
            if byte in _OPENERS:
                self._keep(buf[i : i + 1])
            elif byte in _CLOSERS:
                if self._openers:
                    self._report(buf[i : i + 1])  # ENQ ... EOT (or STX ... ETX) around nothing
                if byte == _EOT and self._in_transfer:
                    self._in_transfer = False
                    self._events.append(TransferEnded())
            elif byte == _NAK:
                self._report(buf[i : i + 1])
            elif self._openers:  # CR, LF, ACK after an opener: part of what it wraps
                self._keep(buf[i : i + 1])
            return i + 1
        if self._line_start and byte == ord("H"):
            if len(buf) - i < 5 and not _SEPARATOR.search(buf, i):
                return None  # too short to tell yet
            if is_header(buf[i : i + 5]):
                self._openers.clear()  # they opened this message
                self._start(buf[i + 1 : i + 2])
                return i
        found = _SEPARATOR.search(buf, i, i + GARBAGE_RUN)
        if found is not None:
            end = found.start()
        elif len(buf) - i >= GARBAGE_RUN:
            end = i + GARBAGE_RUN
        else:
            return None
        self._line_start = False
        if idle:
            if buf[i:end].strip():
                self._report(buf[i:end])
            elif self._openers:
                self._keep(buf[i:end])
        return end

    def _read_record(self, i: int) -> int | None:
        """RECEIVING at `_buf[i]`, a line start: the next index, or None to wait for more bytes."""
        buf = self._buf
        found = _SEPARATOR.search(buf, max(i, self._scan))
        end = len(buf) if found is None else found.start()
        if self._records and buf[i : i + 1] == b"H":
            if found is None and end - i < 5:
                return None  # too short to tell whether it is a new H record
            if is_header(buf[i : i + 5]):  # a new H: the message before it has no L
                self._deliver(complete=False)
                self._start(buf[i + 1 : i + 2])
        if len(self._raw) + end - i > self.max_message:
            return self._overflow(i, end)
        if found is None:
            self._scan = len(buf)
            return None
        self._scan = 0
        line = bytes(buf[i:end])
        byte = buf[end]
        if line:
            self._records.append(line)
            self._raw += line
        last = line[:1] == b"L" and line[1:2] in (b"", self._field)
        if byte in _LINE_BREAKS:
            self._raw.append(byte)
            if last:
                self._deliver(complete=True)
            return end + 1
        if last or byte in _ENDS_MESSAGE:  # the control byte is read between messages
            self._deliver(complete=last)
            return end
        self._raw.append(byte)  # STX, ETX... between records: dropped from the text
        return end + 1

    def _start(self, field: bytes | bytearray) -> None:
        self._state = UnframedState.RECEIVING
        self._field = bytes(field)
        self._raw.clear()
        self._records = []
        self._scan = 0
        self._in_transfer = True

    def _overflow(self, i: int, end: int) -> int:
        head = bytes(self._raw[: self.max_message])
        head += self._buf[i : i + self.max_message - len(head)]
        reason = (
            f"message exceeds {self.max_message} bytes without an L record: "
            "dropped up to the next H record"
        )
        self._events.append(FrameRejected(head, reason))
        self._raw.clear()
        self._records = []
        self._scan = 0
        self._state = UnframedState.DISCARDING
        self._line_start = False
        return end

    def _deliver(self, *, complete: bool) -> None:
        text = b"".join(record + CR for record in self._records)
        self._events.append(MessageReceived(text, bytes(self._raw)))
        self._unanswered += 1
        if not complete:
            self._in_transfer = False
            self._events.append(TransferEnded())
        self._raw.clear()
        self._records = []
        self._state = UnframedState.IDLE
        self._line_start = True
        self._deadline = None

    def _deliver_partial(self) -> None:
        """Deliver the open message with the line being read, if any (no more bytes come)."""
        line = bytes(self._buf)
        self._buf.clear()
        self._scan = 0
        if line and self._records and is_header(line):
            self._deliver(complete=False)
            self._start(line[1:2])
        if line:
            self._records.append(line)
            self._raw += line
        self._deliver(complete=line[:1] == b"L" and line[1:2] in (b"", self._field))

    def _keep(self, data: bytes | bytearray) -> None:
        """Set aside bytes that may open a message; past GARBAGE_RUN they are garbage."""
        self._openers += data
        if len(self._openers) >= GARBAGE_RUN:
            self._report(b"")

    def _report(self, data: bytes | bytearray) -> None:
        """GarbageDiscarded: the openers set aside, then `data`."""
        self._events.append(GarbageDiscarded(bytes(self._openers + data)))
        self._openers.clear()
