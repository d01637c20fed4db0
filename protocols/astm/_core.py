"""What every sans-IO link core shares: the event queue, the output buffer and the one deadline.

`Link` (E1381) and `UnframedLink` differ in everything they decide, not in how a caller drains
them; this base holds the draining half so the two cannot drift apart.
"""

from __future__ import annotations

from collections import deque

from protocols.astm.events import Event

__all__ = ["CoreOutput"]


class CoreOutput:
    """Events out, bytes out, one deadline: the caller's side of a sans-IO core."""

    def __init__(self) -> None:
        self._events: deque[Event] = deque()
        self._out = bytearray()
        self._deadline: float | None = None

    def next_event(self) -> Event | None:
        """The oldest event not yet read, or None."""
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        """All bytes waiting to be written to the peer (and forget them)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def get_timer(self) -> float | None:
        """The deadline (same clock as `now`) at which `handle_timer` must be called, or None."""
        return self._deadline
