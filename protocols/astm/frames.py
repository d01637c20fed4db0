"""E1381 frames: checksum, encoding and decoding, and a stream tokenizer.

Layout::

    STX  FN  text...  ETB|ETX  C1 C2  CR  LF
    0x02 '1'  <=240   0x17/03  hex    0x0D 0x0A
         └──── checksum: sum of FN..ETB/ETX, low 8 bits ───┘

`FN` is one ASCII digit 0-7 (the first frame of a transfer is 1, then 2..7, 0, 1...).
An intermediate frame ends with ETB, the last frame of a message with ETX [LIS1-A §6.3.1].
The checksum is two upper-case hex digits, high nibble first [§6.3.3].

On receive we are lenient where real analysers are (PROTOCOLS.md §1.5 and §5): the LF (and even
the CR) after the checksum may be missing, and lower-case hex digits are accepted. A frame
without an FN digit decodes with ``number=None`` so that the link can refuse it with a reason.
A frame without checksum digits is refused unless ``checksum_required=False`` (the link's
``lenient_frames`` option, for analysers such as the Maglumi that send none).

`FrameReader` turns a byte stream, cut anywhere, into tokens (frames, control characters and
runs of garbage). It belongs to the link; it is not part of the public API.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum, auto

from protocols.astm.constants import (
    CR,
    ETB,
    ETX,
    LF,
    MAX_FRAME,
    MAX_TEXT,
    RESTRICTED,
    STX,
)
from protocols.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "ControlToken",
    "Frame",
    "FrameReader",
    "FrameToken",
    "GarbageToken",
    "ReadMode",
    "Token",
    "checksum",
    "split_text",
]

_HEX = frozenset(b"0123456789ABCDEFabcdef")
_LINE_ENDS = (b"", CR, CR + LF, LF)  # what may follow the checksum (or ETX/ETB without one)
_DIGITS = b"01234567"


def checksum(body: bytes) -> bytes:
    """The two upper-case hex digits for `body` (FN through ETB/ETX inclusive) [§6.3.3]."""
    return b"%02X" % (sum(body) & 0xFF)


def split_text(text: bytes, max_text: int = MAX_TEXT) -> list[bytes]:
    """Cut a message text into frame texts of at most `max_text` bytes (at least one)."""
    if max_text < 1:
        raise LocalProtocolError(f"max_text must be at least 1, not {max_text}")
    if not text:
        return [b""]
    return [text[i : i + max_text] for i in range(0, len(text), max_text)]


@dataclass(frozen=True, slots=True)
class Frame:
    """One E1381 frame: its number (None when the peer sent none), its text, ETX or ETB."""

    number: int | None
    text: bytes
    final: bool  #: True: ends with ETX (end frame); False: ETB (intermediate frame)

    def __post_init__(self) -> None:
        if self.number is not None and not 0 <= self.number <= 7:
            raise LocalProtocolError(f"frame number must be 0..7, not {self.number}")

    def to_bytes(self) -> bytes:
        """STX FN text ETX|ETB C1 C2 CR LF; refuses text holding restricted characters [§6.6]."""
        bad = RESTRICTED.intersection(self.text)
        if bad:
            raise LocalProtocolError(
                f"frame text holds restricted characters {sorted(bad)} (LIS1-A §6.6)"
            )
        number = b"" if self.number is None else _DIGITS[self.number : self.number + 1]
        body = number + self.text + (ETX if self.final else ETB)
        return STX + body + checksum(body) + CR + LF

    @classmethod
    def from_bytes(cls, raw: bytes, *, checksum_required: bool = True) -> Frame:
        """Decode one frame, STX through CR LF (LF, CR optional; hex digits in either case).

        With ``checksum_required=False`` a frame that ends right after its ETX/ETB (nothing, CR,
        LF or CR LF follows) is accepted unchecked; checksum digits, when present, must match.
        Raises `RemoteProtocolError` saying what is wrong; a checksum mismatch says "checksum".
        """
        if not raw.startswith(STX):
            raise RemoteProtocolError("frame does not start with STX")
        end = _find_end(raw)
        if end < 0:
            raise RemoteProtocolError("frame has no ETX or ETB")
        trailer = raw[end + 1 :]
        received = trailer[:2]
        if checksum_required or trailer not in _LINE_ENDS:
            if len(received) < 2 or not _HEX.issuperset(received):
                raise RemoteProtocolError(
                    f"frame has no checksum digits after ETX/ETB: {received!r}"
                )
            if trailer[2:] not in _LINE_ENDS:
                raise RemoteProtocolError(f"unexpected bytes after the checksum: {trailer[2:]!r}")
            body = raw[1 : end + 1]
            computed = checksum(body)
            if received.upper() != computed:
                raise RemoteProtocolError(
                    f"bad checksum: received {received.decode('ascii')}, "
                    f"computed {computed.decode()}"
                )
        if raw[1:2] and raw[1] in _DIGITS:
            number: int | None = raw[1] - 0x30
            text = raw[2:end]
        else:
            number, text = None, raw[1:end]
        return cls(number, text, raw[end : end + 1] == ETX)


def _find_end(raw: bytes) -> int:
    """Index of the first ETX or ETB, or -1."""
    found = [i for i in (raw.find(ETX), raw.find(ETB)) if i >= 0]
    return min(found) if found else -1


# --- stream tokenizer ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FrameToken:
    """A complete frame as received: `frame` when it decoded, else `error` says why not."""

    raw: bytes
    frame: Frame | None
    error: str | None


@dataclass(frozen=True, slots=True)
class ControlToken:
    """One byte that matters in the current mode (ENQ, EOT, ACK, NAK, or any reply byte)."""

    byte: bytes


@dataclass(frozen=True, slots=True)
class GarbageToken:
    """Bytes that mean nothing in the current mode (noise, a frame cut short...)."""

    data: bytes


Token = FrameToken | ControlToken | GarbageToken


class ReadMode(Enum):
    """What the link listens for; chosen by the link's state."""

    #: Neutral or receiving: STX starts a frame; ENQ and EOT are control; the rest is garbage.
    FRAMES = auto()
    #: We sent ENQ: ACK, NAK and ENQ are control; the rest is garbage [§6.2].
    ESTABLISHING = auto()
    #: We sent a frame: every byte is a reply (anything but ACK/EOT counts as NAK) [§6.5.1.2].
    REPLY = auto()


#: A run of garbage is reported in pieces of at most this many bytes.
GARBAGE_RUN = 256

_FRAME_STOP = re.compile(b"[\x02\x03\x04\x05\x17]")  # STX ETX EOT ENQ ETB
_ABORT = frozenset(b"\x02\x04\x05")  # STX EOT ENQ: the sender gave up on this frame
_GARBAGE_STOP = {
    ReadMode.FRAMES: re.compile(b"[\x02\x04\x05]"),  # STX EOT ENQ
    ReadMode.ESTABLISHING: re.compile(b"[\x05\x06\x15]"),  # ENQ ACK NAK
}


class FrameReader:
    """Cuts a byte stream into tokens; the result never depends on how the stream was chunked.

    Tokens are produced one at a time by `next_token(mode)` so that the link can change mode
    between two tokens. A frame ends at the CR after its checksum; the LF that normally follows
    is swallowed as part of it (some analysers send none and wait for our reply: waiting for
    the LF would dead-lock them). A frame longer than `max_frame` is not buffered: its first
    `max_frame` bytes are kept for the report and the rest is skipped up to its end.
    An STX, ENQ or EOT inside a frame ends it as garbage (the sender gave up, or it was noise)
    and is then read on its own. With ``checksum_required=False`` frames without checksum
    digits decode (see `Frame.from_bytes`).
    """

    def __init__(self, max_frame: int = MAX_FRAME, *, checksum_required: bool = True) -> None:
        self._max_frame = max_frame
        self._checksum_required = checksum_required
        self._buf = bytearray()
        self._scan = 0  # where to resume searching in _buf for the current item
        self._partial = False  # the last next_token() ran out of bytes inside an item
        self._oversized: bytes | None = None  # head of a too-long frame being skipped
        self._size = 0  # length of that frame so far
        self._after_frame = False  # the next byte, if LF, belongs to the previous frame

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet turned into tokens."""
        return len(self._buf)

    def truncate(self, limit: int) -> bytes:
        """Drop and return the bytes beyond the first `limit` (bounds a held-back buffer)."""
        extra = bytes(self._buf[limit:])
        del self._buf[limit:]
        self._scan = min(self._scan, limit)
        return extra

    def flush(self) -> bytes:
        """Give up the item being read (a partial frame or garbage run) and return its bytes."""
        if not self._partial:
            return b""
        partial = (self._oversized or b"") + bytes(self._buf)
        self._buf.clear()
        self._reset_item()
        self._partial = False
        return partial

    def drop_unread(self) -> bytes:
        """Drop and return everything buffered (valid only between tokens)."""
        data = (self._oversized or b"") + bytes(self._buf)
        self._buf.clear()
        self._reset_item()
        self._partial = False
        return data

    def next_token(self, mode: ReadMode) -> Token | None:
        """The next complete token in `mode`, or None until more bytes arrive."""
        buf = self._buf
        if self._after_frame and buf:
            self._after_frame = False
            if buf[0] == LF[0]:
                del buf[0]
        if not buf and self._oversized is None:
            return None
        if mode is ReadMode.REPLY:
            token: Token | None = ControlToken(self._take(1))
        elif mode is ReadMode.FRAMES and (self._oversized is not None or buf[0] == STX[0]):
            token = self._next_frame()
        elif _GARBAGE_STOP[mode].match(buf):
            token = ControlToken(self._take(1))
        else:
            token = self._next_garbage(_GARBAGE_STOP[mode])
        self._partial = token is None
        return token

    def _next_garbage(self, stop: re.Pattern[bytes]) -> Token | None:
        found = stop.search(self._buf, max(self._scan, 1))
        end = found.start() if found else len(self._buf)
        if end >= GARBAGE_RUN:
            end = GARBAGE_RUN
        elif found is None:
            self._scan = len(self._buf)
            return None
        return GarbageToken(self._take(end))

    def _next_frame(self) -> Token | None:
        buf = self._buf
        start = self._scan if self._oversized is not None else max(self._scan, 1)
        found = _FRAME_STOP.search(buf, start)
        if found is None:
            if self._oversized is None and len(buf) > self._max_frame:
                self._oversized = bytes(buf[: self._max_frame])
                self._size = 0
            if self._oversized is not None:
                self._size += len(buf)  # skip: keep only the head for the report
                buf.clear()
                self._scan = 0
            else:
                self._scan = len(buf)
            return None
        stop = found.start()
        if buf[stop] in _ABORT:  # STX, ENQ or EOT before ETX/ETB: this frame was cut short
            if self._oversized is not None:
                del buf[:stop]
                head = self._oversized
                self._reset_item()
                return GarbageToken(head)
            return GarbageToken(self._take(stop))
        end = self._frame_end(stop)
        if end is None:
            self._scan = stop  # re-examine the trailer when more bytes arrive
            return None
        if self._oversized is not None:
            size = self._size + end
            del buf[:end]
            head = self._oversized
            self._reset_item()
            return FrameToken(head, None, f"frame of {size} bytes exceeds {self._max_frame}")
        raw = self._take(end)
        if len(raw) > self._max_frame:
            reason = f"frame of {len(raw)} bytes exceeds {self._max_frame}"
            return FrameToken(raw[: self._max_frame], None, reason)
        try:
            frame = Frame.from_bytes(raw, checksum_required=self._checksum_required)
            return FrameToken(raw, frame, None)
        except RemoteProtocolError as exc:
            return FrameToken(raw, None, str(exc))

    def _frame_end(self, stop: int) -> int | None:
        """Where the frame whose ETX/ETB is at `stop` ends, or None if more bytes are needed.

        Normally ETX C1 C2 CR; tolerated: no CR (the frame ends after C2, or at an LF there),
        no checksum (ETX CR), and STX/ENQ/EOT anywhere in the trailer, which start something new.
        """
        buf = self._buf
        end = stop + 1
        for _ in range(3):  # C1, C2, then CR
            if end >= len(buf):
                return None
            byte = buf[end]
            if byte in _ABORT:
                return end
            if byte == CR[0]:
                self._after_frame = True
                return end + 1
            if byte == LF[0]:
                return end + 1
            end += 1
        return end - 1  # C1 C2 and then neither CR nor LF: that byte is not ours

    def _take(self, end: int) -> bytes:
        data = bytes(self._buf[:end])
        del self._buf[:end]
        self._reset_item()
        return data

    def _reset_item(self) -> None:
        self._scan = 0
        self._oversized = None
        self._size = 0
