"""MLLP (Minimal Lower Layer Protocol) framing, sans-IO.

Layout::

    0x0B | payload (one HL7 message, segments CR-separated) | 0x1C 0x0D
    VT     start block                                        FS   CR  end block

The framer is fed whatever the transport read (:meth:`MllpFramer.receive_data`, any
chunking) and hands back complete payloads (:meth:`MllpFramer.next_message`).  It never
does I/O and has no timers: an idle or half-received block is the caller's business.

Theory of operation
-------------------
The receiver is *hunting* outside a block: every byte up to the next VT is discarded
and counted (:attr:`MllpFramer.discarded`) — line noise, a peer's keep-alive, the CR
of a sender that ends blocks with ``FS CR CR``.  Inside a block, payload bytes are
buffered until FS.  Two recoveries keep it in step with a misbehaving peer:

- a VT inside a block means the sender gave up on the previous block and started over:
  the partial payload is discarded and the new block is read;
- a block longer than ``max_message`` is dropped as soon as it passes the limit, so the
  buffer stays bounded; the caller gets one RemoteProtocolError (in order, from
  :meth:`MllpFramer.next_message`) and the framer hunts for the next VT.

FS ends a block even when its CR has not arrived yet (some senders omit it, and waiting
for it would stall a sender that then waits for our ACK); a CR right after FS is taken
as part of the trailer and not counted as discarded.  HL7 text never contains VT or FS
(the message builders escape every control character), so neither can occur in a payload.
"""

from __future__ import annotations

import enum
from collections import deque

from protocols.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["END_BLOCK", "START_BLOCK", "MllpFramer", "mllp_frame"]

#: Start of block (VT).
START_BLOCK = b"\x0b"
#: End of block (FS CR).
END_BLOCK = b"\x1c\x0d"

_VT = 0x0B
_FS = 0x1C
_CR = 0x0D


class _State(enum.Enum):
    HUNTING = enum.auto()  #: outside a block: discard up to the next VT
    IN_BLOCK = enum.auto()  #: after VT: buffer payload up to FS
    AFTER_FS = enum.auto()  #: block delivered: swallow one CR if it comes next
    SKIPPING = enum.auto()  #: oversize block: discard up to the next VT


def mllp_frame(payload: bytes) -> bytes:
    """Wrap one message in an MLLP block: ``VT + payload + FS CR``.

    Raises LocalProtocolError if ``payload`` contains VT or FS, which would break the
    framing on the receiving side (the message builders never produce them).
    """
    if _VT in payload or _FS in payload:
        raise LocalProtocolError("an MLLP payload cannot contain VT (0x0B) or FS (0x1C)")
    return START_BLOCK + payload + END_BLOCK


class MllpFramer:
    """Incremental MLLP deframer: bytes in, complete payloads out.

    ``max_message`` bounds one payload (and so the buffer); a longer block is reported
    once as RemoteProtocolError by :meth:`next_message` and skipped.
    """

    __slots__ = ("_buffer", "_discarded", "_max_message", "_ready", "_state")

    def __init__(self, max_message: int = 1_048_576) -> None:
        """Create a framer that accepts payloads of up to ``max_message`` bytes."""
        if max_message < 1:
            raise LocalProtocolError(f"max_message must be positive, not {max_message}")
        self._max_message = max_message
        self._state = _State.HUNTING
        self._buffer = bytearray()
        self._ready: deque[bytes | RemoteProtocolError] = deque()
        self._discarded = 0

    @property
    def discarded(self) -> int:
        """Bytes received that belong to no delivered block (noise, partial or oversize blocks)."""
        return self._discarded

    @property
    def buffered(self) -> int:
        """Payload bytes held for a block not finished yet (never more than ``max_message``)."""
        return len(self._buffer)

    @property
    def max_message(self) -> int:
        """Largest payload accepted, in bytes."""
        return self._max_message

    def receive_data(self, data: bytes) -> None:
        """Feed bytes as read from the transport; any chunking is fine."""
        position = 0
        size = len(data)
        while position < size:
            state = self._state
            if state is _State.IN_BLOCK:
                position = self._read_block(data, position)
            elif state is _State.AFTER_FS:
                if data[position] == _CR:
                    position += 1
                self._state = _State.HUNTING
            else:  # HUNTING or SKIPPING: look for the next start of block
                start = data.find(START_BLOCK, position)
                if start < 0:
                    self._discarded += size - position
                    return
                self._discarded += start - position
                position = start + 1
                self._buffer.clear()
                self._state = _State.IN_BLOCK

    def _read_block(self, data: bytes, position: int) -> int:
        """Consume payload bytes from ``position``; return where to continue."""
        size = len(data)
        end_block = data.find(b"\x1c", position)
        restart = data.find(START_BLOCK, position, end_block if end_block >= 0 else size)
        stop = restart if restart >= 0 else end_block if end_block >= 0 else size
        if len(self._buffer) + (stop - position) > self._max_message:
            # The VT and the part kept so far are lost with it.
            self._discarded += 1 + len(self._buffer) + (stop - position)
            self._buffer.clear()
            self._ready.append(
                RemoteProtocolError(
                    f"MLLP block longer than {self._max_message} bytes: dropped, "
                    "resynchronising at the next start of block"
                )
            )
            self._state = _State.SKIPPING
            return stop
        self._buffer += data[position:stop]
        if stop == size:
            return stop
        if stop == restart:  # VT inside a block: the sender started over
            self._discarded += 1 + len(self._buffer)
            self._buffer.clear()
            return stop + 1
        self._ready.append(bytes(self._buffer))
        self._buffer.clear()
        self._state = _State.AFTER_FS
        return stop + 1

    def next_message(self) -> bytes | None:
        """The next complete payload, or None until more data arrives.

        Raises RemoteProtocolError once, in stream order, for each oversize block.
        """
        if not self._ready:
            return None
        item = self._ready.popleft()
        if isinstance(item, RemoteProtocolError):
            raise item
        return item
