"""Where POCT1-A messages begin and end in a TCP byte stream, sans-IO.

POCT1-A devices frame their messages differently (reference/POCT1A.md §2): the DCA Vantage
sends each message as a bare XML document, one per write, with no delimiter at all; the
HemoScreen wraps each in MLLP bytes (``VT ... FS CR``). TCP may split a write or join several.
So the end of a message is found from the XML itself: the end tag that closes the root element.

Layout of the stream as read::

    [VT] [<?xml ...?>] [<!-- ... -->] <ROOT ...> ... </ROOT> [FS CR] [whitespace] [VT] <ROOT...
    '--- optional ---'                '------- one message -------'   '----- between -----'

Theory of operation
-------------------
`MessageReader` scans the markup, not the content: it tells start tags (``<name ...>``, depth
+1), empty-element tags (``<name .../>``), end tags (``</name>``, depth -1), processing
instructions (``<?...?>``), comments (``<!--...-->``) and CDATA sections (``<![CDATA[...]]>``)
apart, skipping quoted attribute values (which may hold ``>``). A message is complete when the
depth comes back to 0 after its first element; its bytes then go to `messages.decode`, which
checks everything else (names, nesting, encoding). The reader keeps only the message being read.

- Between messages, whitespace and the MLLP bytes VT, FS, CR are separators; a UTF-8 byte-order
  mark is skipped. Any other byte starts a run of *garbage*, discarded up to the next ``<`` or
  VT and reported once as a RemoteProtocolError (a very long run: once per `max_message` bytes).
- ``<!`` that opens neither a comment nor a CDATA section is a declaration (DOCTYPE, ENTITY):
  the message is refused at once, before any parser sees it, and skipped (XML bombs and
  external entities never get through).
- A message longer than `max_message` is refused once, as soon as it passes the limit; the
  reader keeps scanning its markup without storing it, so the rest of it is not mistaken for
  new messages, and resumes with the next one. Memory stays bounded by `max_message` plus one
  read.
- VT and FS cannot occur in XML. Inside a message, FS means the MLLP block ended before the XML
  did, and VT that the sender started a new block: either way the partial message is refused
  and reading goes on from there.

Every error is delivered in stream order by `next_message`, which raises it (as MllpFramer
does), so the caller sees exactly one error per bad stretch of the stream, whatever the chunking.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from protocols.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["MLLP_END", "MLLP_START", "MessageReader", "RawMessage", "mllp_wrap"]

#: MLLP start of block (VT) and end of block (FS CR), as some devices frame POCT1-A.
MLLP_START = b"\x0b"
MLLP_END = b"\x1c\x0d"

_VT = 0x0B
_FS = 0x1C
_LT = 0x3C  # <
_SEPARATORS = frozenset(b" \t\r\n\x0b\x1c")
_BOM = b"\xef\xbb\xbf"

# What ends each markup state; VT or FS first means the message was cut short.
_CONTENT = re.compile(rb"[<\x0b\x1c]")
_TAG = re.compile(rb"[\"'>\x0b\x1c]")
_IN_QUOTE = {
    ord('"'): re.compile(rb'["\x0b\x1c]'),
    ord("'"): re.compile(rb"['\x0b\x1c]"),
}
_END_TAG = re.compile(rb"[>\x0b\x1c]")
_TERMINATORS = {
    "comment": re.compile(rb"-->|[\x0b\x1c]"),
    "pi": re.compile(rb"\?>|[\x0b\x1c]"),
    "cdata": re.compile(rb"\]\]>|[\x0b\x1c]"),
}


class _Mode(enum.Enum):
    BETWEEN = enum.auto()  #: between messages: separators, or the next message's "<"
    GARBAGE = enum.auto()  #: a run of bytes that belong to no message
    CONTENT = enum.auto()  #: in a message, outside markup
    OPEN = enum.auto()  #: just after "<": what kind of markup?
    TAG = enum.auto()  #: in a start (or empty-element) tag
    END_TAG = enum.auto()  #: in an end tag
    COMMENT = enum.auto()
    PI = enum.auto()
    CDATA = enum.auto()


_SKIPPED = {_Mode.COMMENT: "comment", _Mode.PI: "pi", _Mode.CDATA: "cdata"}


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One message's bytes as received (from its first ``<`` to the ``>`` closing its root),
    and whether it came inside an MLLP block (answer in kind)."""

    data: bytes
    mllp: bool = False


def mllp_wrap(data: bytes) -> bytes:
    """`data` inside an MLLP block. XML never contains VT or FS, so nothing needs escaping."""
    if _VT in data or _FS in data:
        raise LocalProtocolError("a POCT1-A message cannot contain VT (0x0B) or FS (0x1C)")
    return MLLP_START + data + MLLP_END


class MessageReader:
    """Incremental message finder: bytes in, complete messages (or errors) out, in order."""

    __slots__ = (
        "_buffer",
        "_depth",
        "_discarded",
        "_garbage",
        "_in_block",
        "_max_message",
        "_message_mllp",
        "_mode",
        "_position",
        "_quote",
        "_ready",
        "_skipping",
    )

    def __init__(self, max_message: int = 1_048_576) -> None:
        """Accept messages of up to `max_message` bytes."""
        if max_message < 64:
            raise LocalProtocolError(f"max_message must be at least 64 bytes, not {max_message}")
        self._max_message = max_message
        self._buffer = bytearray()  # the message being read (from its "<"), or unscanned bytes
        self._position = 0  # scanned up to here in _buffer
        self._mode = _Mode.BETWEEN
        self._depth = 0
        self._quote: int | None = None
        self._skipping = False  # the current message is oversize: scan it, keep nothing
        self._in_block = False  # a VT came and its FS not yet
        self._message_mllp = False
        self._garbage = 0
        self._discarded = 0
        self._ready: deque[RawMessage | RemoteProtocolError] = deque()

    @property
    def max_message(self) -> int:
        """Largest message accepted, in bytes."""
        return self._max_message

    @property
    def discarded(self) -> int:
        """Bytes received that belong to no delivered message (garbage, refused messages)."""
        return self._discarded

    @property
    def buffered(self) -> int:
        """Bytes held for a message not finished yet (at most `max_message` plus one read)."""
        return len(self._buffer)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes as read from the transport; any chunking gives the same messages."""
        self._buffer += data
        self._scan()
        if self._mode in (_Mode.BETWEEN, _Mode.GARBAGE) or self._skipping:
            # Nothing scanned needs keeping (a skipped message keeps only unscanned bytes).
            del self._buffer[: self._position]
            self._position = 0
        elif len(self._buffer) > self._max_message:
            self._oversize()

    def next_message(self) -> RawMessage | None:
        """The next complete message, or None until more data arrives. Raises
        RemoteProtocolError, once and in stream order, for each stretch that was discarded."""
        if not self._ready:
            return None
        item = self._ready.popleft()
        if isinstance(item, RemoteProtocolError):
            raise item
        return item

    # --- scanning -----------------------------------------------------------------------

    def _scan(self) -> None:
        buffer = self._buffer
        while self._position < len(buffer):
            mode = self._mode
            if mode is _Mode.BETWEEN:
                going = self._between()
            elif mode is _Mode.GARBAGE:
                going = self._in_garbage()
            elif mode is _Mode.CONTENT:
                going = self._search(_CONTENT, self._at_markup)
            elif mode is _Mode.OPEN:
                going = self._open()
            elif mode is _Mode.TAG:
                if self._quote is None:
                    # Keep the tag's last byte: a "/" just before ">" makes it empty.
                    going = self._search(_TAG, self._in_tag, keep=1)
                else:
                    going = self._search(_IN_QUOTE[self._quote], self._in_tag)
            elif mode is _Mode.END_TAG:
                going = self._search(_END_TAG, self._end_tag_closed)
            else:
                going = self._search(_TERMINATORS[_SKIPPED[mode]], self._skipped_closed, keep=2)
            if not going:
                return

    def _between(self) -> bool:
        """Skip separators; start a message at "<" or a garbage run at anything else."""
        buffer, position = self._buffer, self._position
        byte = buffer[position]
        if byte in _SEPARATORS:
            if byte == _VT:
                self._in_block = True
            elif byte == _FS:
                self._in_block = False
            self._position += 1
            return True
        if byte == _BOM[0]:
            ahead = bytes(buffer[position : position + 3])
            if ahead == _BOM:
                self._position += 3
                return True
            if _BOM.startswith(ahead):
                return False  # the rest of the mark has not arrived
        if byte == _LT:
            del buffer[:position]
            self._position = 1  # past the "<"
            self._mode = _Mode.OPEN
            self._depth = 0
            self._skipping = False
            self._message_mllp = self._in_block
            return True
        self._mode = _Mode.GARBAGE
        self._garbage = 0
        return True

    def _in_garbage(self) -> bool:
        buffer, position = self._buffer, self._position
        ends = (buffer.find(b"<", position), buffer.find(MLLP_START, position))
        found = [index for index in ends if index >= 0]
        end = min(found) if found else len(buffer)
        room = self._max_message - self._garbage
        if end - position > room:  # a long run is reported every max_message bytes
            self._garbage_done(self._max_message)
            self._position = position + room
            self._garbage = 0
            return True
        self._garbage += end - position
        self._position = end
        if found:
            self._garbage_done(self._garbage)
            self._mode = _Mode.BETWEEN
        return True

    def _garbage_done(self, size: int) -> None:
        self._discarded += size
        self._ready.append(
            RemoteProtocolError(f"{size} byte(s) that are not a POCT1-A message discarded")
        )

    def _search(
        self,
        pattern: re.Pattern[bytes],
        found: Callable[[int, int], None],
        keep: int = 0,
    ) -> bool:
        """Look for `pattern` from the scan position; on a match call `found(start, end)`,
        else consume all but the last `keep` bytes (a terminator may straddle two reads)."""
        match = pattern.search(self._buffer, self._position)
        if match is None:
            self._position = max(self._position, len(self._buffer) - keep)
            return False
        byte = self._buffer[match.start()]
        if byte in (_VT, _FS) and match.end() - match.start() == 1:
            self._cut_short(match.start(), byte)
        else:
            found(match.start(), match.end())
        return True

    def _at_markup(self, start: int, end: int) -> None:
        self._position = end
        self._mode = _Mode.OPEN

    def _open(self) -> bool:
        """Just after "<": decide what the markup is (needs up to 8 bytes of look-ahead)."""
        buffer, position = self._buffer, self._position
        ahead = bytes(buffer[position : position + 8])
        if not ahead:
            return False
        first = ahead[:1]
        if first == b"/":
            self._mode, self._position = _Mode.END_TAG, position + 1
        elif first == b"?":
            self._mode, self._position = _Mode.PI, position + 1
        elif first == b"!":
            if ahead.startswith(b"!--"):
                self._mode, self._position = _Mode.COMMENT, position + 3
            elif ahead.startswith(b"![CDATA["):
                self._mode, self._position = _Mode.CDATA, position + 8
            elif b"!--".startswith(ahead) or b"![CDATA[".startswith(ahead):
                return False  # wait for the bytes that tell
            else:
                self._refuse(
                    "declarations (<!DOCTYPE, <!ENTITY...) are refused in POCT1-A messages"
                )
        elif first in (b"\x0b", b"\x1c"):
            self._cut_short(position, first[0])
        else:
            self._mode, self._position, self._quote = _Mode.TAG, position, None
        return True

    def _in_tag(self, start: int, end: int) -> None:
        byte = self._buffer[start]
        self._position = end
        if self._quote is not None:  # the closing quote
            self._quote = None
        elif byte != ord(">"):  # an opening quote
            self._quote = byte
        else:
            empty = start > 0 and self._buffer[start - 1] == ord("/")
            self._mode = _Mode.CONTENT
            if not empty:
                self._depth += 1
            elif self._depth == 0:
                self._complete()

    def _end_tag_closed(self, start: int, end: int) -> None:
        self._position = end
        self._mode = _Mode.CONTENT
        self._depth -= 1
        if self._depth <= 0:  # below 0: a stray end tag; decode() will say what is wrong
            self._complete()

    def _skipped_closed(self, start: int, end: int) -> None:
        self._position = end
        self._mode = _Mode.CONTENT

    # --- outcomes -----------------------------------------------------------------------

    def _complete(self) -> None:
        size = self._position
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        self._position = 0
        self._mode = _Mode.BETWEEN
        if self._skipping:
            self._discarded += size
            self._skipping = False
            return
        if size > self._max_message:
            self._discarded += size
            self._ready.append(self._too_long())
            return
        self._ready.append(RawMessage(data, self._message_mllp))

    def _too_long(self) -> RemoteProtocolError:
        return RemoteProtocolError(
            f"message longer than {self._max_message} bytes: refused and skipped"
        )

    def _oversize(self) -> None:
        """The message being read passed the limit: report it and keep only its markup state."""
        self._ready.append(self._too_long())
        self._discarded += self._position
        self._skipping = True
        del self._buffer[: self._position]
        self._position = 0

    def _cut_short(self, at: int, byte: int) -> None:
        """VT or FS inside a message: it is lost; read on from that byte (a separator)."""
        if not self._skipping:
            why = "an MLLP block ended" if byte == _FS else "a new MLLP block began"
            self._ready.append(RemoteProtocolError(f"message cut short: {why} inside it"))
        self._discarded += at
        del self._buffer[:at]
        self._position = 0
        self._mode = _Mode.BETWEEN
        self._skipping = False

    def _refuse(self, reason: str) -> None:
        """Refuse the message being read and skip the rest of it."""
        if not self._skipping:
            self._ready.append(RemoteProtocolError(reason))
        self._discarded += self._position
        self._skipping = True
        self._mode = _Mode.CONTENT
        del self._buffer[: self._position]
        self._position = 0
