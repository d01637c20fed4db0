"""Faults a simulated analyser can inject into its byte streams, reproducibly.

A `Faults` holds the settings and one seeded `random.Random`, so a run with the same seed and
the same traffic injects the same faults. The analyser simulator applies them:

- `bit_flips`: probability, per outgoing frame, of flipping one bit of one byte between the
  frame number and the ETX/ETB (the bytes the checksum covers). A single-bit error always
  changes the checksum [LIS1-A §6.3.3], so the receiver must answer NAK and the link resends
  the frame [§6.5.1.1]. A flip that would make a control character (STX, ETX, EOT, ENQ, LF...,
  the §6.6 restricted set) is never chosen: the frame stays recognisable as one bad frame
  instead of turning into a different kind of line noise.
- `drop_acks`: probability of discarding each ACK byte received from the host. The analyser's
  reply timer (or ENQ timer) then expires; the link goes to termination and sends the message
  again in full [§6.5]. A lost ACK of a final frame means the host stored the message and
  receives it a second time.
- `line_rate`: bytes per second of the outgoing line (960 B/s is 9600 baud with 8N1): bytes are
  released in small slices, each when the previous ones would have left a real serial line.
- `contention`: a message to send is held until the host's ENQ arrives (or `contention_hold`
  seconds pass); the analyser then sends its own ENQ at that moment, so both sides bid for the
  line and the host must yield [§6.2.7.1].
- `disconnect_after`: once, after that many bytes were written on a connection (which may be
  in the middle of a frame), the connection is dropped without EOT; the analyser reconnects
  and sends every unacknowledged message again, in full, from a fresh link.

`corrupt_checksum` is the older, deterministic fault kept by `AnalyserSimulator.corrupt_frames`.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, field

from protocols.astm.constants import RESTRICTED

__all__ = ["FaultCounts", "Faults", "corrupt_checksum", "find_frames"]

ACK_BYTE = 0x06

# STX, FN and text (no STX/ETX/ETB inside: they are restricted in text), ETX|ETB, two checksum
# digits. The link writes whole frames at once, so a frame is never cut across two writes.
_FRAME = re.compile(rb"\x02[^\x02\x03\x17]*[\x03\x17][0-9A-Fa-f]{2}")


def find_frames(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every frame in `data`: from its STX to its second checksum digit."""
    return [match.span() for match in _FRAME.finditer(data)]


def corrupt_checksum(data: bytes, count: int) -> tuple[bytes, int]:
    """Spoil the first checksum digit of up to `count` frames in `data`.

    Returns the new bytes and how many frames were spoiled.
    """
    spoiled = 0
    out = bytearray(data)
    for _, end in find_frames(data):
        if spoiled >= count:
            break
        digit = end - 2
        out[digit] = ord("1") if out[digit] == ord("0") else ord("0")
        spoiled += 1
    return bytes(out), spoiled


@dataclass(slots=True)
class FaultCounts:
    """How many faults were actually injected (tests check the fault really happened)."""

    bit_flips: int = 0  #: frames sent with one flipped bit
    checksums_corrupted: int = 0  #: frames sent with a spoiled checksum (`corrupt_frames`)
    acks_dropped: int = 0  #: ACK bytes from the host thrown away
    contentions: int = 0  #: ENQs sent in answer to the host's ENQ
    disconnects: int = 0  #: connections cut by `disconnect_after`

    def as_dict(self) -> dict[str, int]:
        """The counts by name (for JSON output)."""
        return asdict(self)


@dataclass(slots=True)
class Faults:
    """Fault settings for a simulated analyser, with their own seeded random generator.

    Probabilities are in [0, 1]; `line_rate` is in bytes per second; `disconnect_after` in
    bytes. Raises `ValueError` for settings out of range.
    """

    bit_flips: float = 0.0
    drop_acks: float = 0.0
    line_rate: float | None = None
    contention: bool = False
    contention_hold: float = 5.0  #: longest wait for the host's ENQ before sending anyway
    disconnect_after: int | None = None
    seed: int | None = None
    rng: random.Random = field(init=False, repr=False, compare=False)
    counts: FaultCounts = field(init=False, compare=False, default_factory=FaultCounts)

    def __post_init__(self) -> None:
        for name in ("bit_flips", "drop_acks"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a probability between 0 and 1, not {value}")
        if self.line_rate is not None and self.line_rate <= 0:
            raise ValueError(f"line_rate must be positive, not {self.line_rate}")
        if self.disconnect_after is not None and self.disconnect_after < 1:
            raise ValueError(f"disconnect_after must be >= 1 byte, not {self.disconnect_after}")
        if self.contention_hold < 0:
            raise ValueError(f"contention_hold must not be negative, not {self.contention_hold}")
        self.rng = random.Random(self.seed)

    def tamper_outgoing(self, data: bytes) -> bytes:
        """Apply `bit_flips` to the frames in bytes about to be written."""
        if not self.bit_flips:
            return data
        out = bytearray(data)
        for start, end in find_frames(data):
            if self.rng.random() < self.bit_flips:
                # FN and text: between STX and the ETX/ETB (which sits 3 bytes before `end`).
                self._flip_one_bit(out, start + 1, end - 3)
        return bytes(out)

    def tamper_incoming(self, data: bytes) -> bytes:
        """Apply `drop_acks` to bytes just read from the host."""
        if not self.drop_acks or ACK_BYTE not in data:
            return data
        kept = bytearray()
        for byte in data:
            if byte == ACK_BYTE and self.rng.random() < self.drop_acks:
                self.counts.acks_dropped += 1
            else:
                kept.append(byte)
        return bytes(kept)

    def _flip_one_bit(self, out: bytearray, first: int, stop: int) -> None:
        """Flip one bit of one byte in out[first:stop], never making a restricted character."""
        if stop <= first:
            return
        index = self.rng.randrange(first, stop)
        # Every byte has safe flips: at least 4 of its 8 one-bit neighbours are not restricted.
        masks = [1 << bit for bit in range(8) if out[index] ^ (1 << bit) not in RESTRICTED]
        out[index] ^= self.rng.choice(masks)
        self.counts.bit_flips += 1
