"""Test helpers for the ASTM core: a host/instrument pair joined in memory, and corpus loaders.

Named `astm_helpers` (not `helpers`) because the tests have no `__init__.py`: module names
must be unique across the test tree.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from protocols import astm

CORPUS = Path(__file__).resolve().parents[2] / "data" / "corpus"

Tamper = Callable[[str, bytes], bytes]
T = TypeVar("T")
DEFAULT_TIMERS = astm.Timers()


class LinkPair:
    """A HOST and an INSTRUMENT `astm.Link` joined by an in-memory wire (as h11's ConnectionPair).

    `now` is advanced by hand. Every `MessageReceived` is acknowledged at once unless
    `auto_ack` is False. `tamper(direction, data)` may alter what crosses the wire
    (direction "h>i" or "i>h"); `wire` records what was sent, before tampering.
    """

    def __init__(
        self,
        timers: astm.Timers = DEFAULT_TIMERS,
        *,
        auto_ack: bool = True,
        tamper: Tamper | None = None,
        **options: int,
    ) -> None:
        self.host = astm.Link(astm.Role.HOST, timers, **options)
        self.instrument = astm.Link(astm.Role.INSTRUMENT, timers, **options)
        self.now = 0.0
        self.auto_ack = auto_ack
        self.tamper = tamper
        self.host_events: list[astm.Event] = []
        self.instrument_events: list[astm.Event] = []
        self.wire: list[tuple[str, bytes]] = []

    def _drain_events(self, link: astm.Link, into: list[astm.Event]) -> None:
        while (event := link.next_event()) is not None:
            into.append(event)
            if self.auto_ack and isinstance(event, astm.MessageReceived):
                link.acknowledge(self.now)

    def pump(self, rounds: int = 10_000) -> None:
        """Move bytes both ways until both sides are quiet."""
        for _ in range(rounds):
            self._drain_events(self.host, self.host_events)
            self._drain_events(self.instrument, self.instrument_events)
            moved = False
            for direction, src, dst in (
                ("h>i", self.host, self.instrument),
                ("i>h", self.instrument, self.host),
            ):
                data = src.data_to_send()
                if data:
                    moved = True
                    self.wire.append((direction, data))
                    if self.tamper is not None:
                        data = self.tamper(direction, data)
                    if data:
                        dst.receive_data(data, self.now)
            if not moved:
                self._drain_events(self.host, self.host_events)
                self._drain_events(self.instrument, self.instrument_events)
                return
        raise AssertionError("the link pair never went quiet")

    def advance(self, seconds: float) -> None:
        """Let `seconds` pass: fire due timers, then pump."""
        self.now += seconds
        self.host.handle_timer(self.now)
        self.instrument.handle_timer(self.now)
        self.pump()

    def next_deadline(self) -> float | None:
        timers = [t for t in (self.host.get_timer(), self.instrument.get_timer()) if t is not None]
        return min(timers) if timers else None

    def run(self, limit: float = 3600.0) -> None:
        """Pump and jump from deadline to deadline until both links are idle (or `limit`)."""
        self.pump()
        start = self.now
        while self.host.busy or self.instrument.busy:
            deadline = self.next_deadline()
            if deadline is None or deadline - start > limit:
                return
            self.advance(max(0.0, deadline - self.now))

    def sent(self, direction: str) -> bytes:
        """Everything one side put on the wire."""
        return b"".join(data for d, data in self.wire if d == direction)


def drive(link: astm.Link, chunks: Iterable[bytes], now: float = 0.0) -> list[astm.Event]:
    """Feed chunks to a receiving link, acknowledging each message at once; all the events."""
    events: list[astm.Event] = []
    for chunk in chunks:
        link.receive_data(chunk, now)
        while (event := link.next_event()) is not None:
            events.append(event)
            if isinstance(event, astm.MessageReceived):
                link.acknowledge(now)
    return events


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def of_type(events: Iterable[object], kind: type[T]) -> list[T]:
    return [e for e in events if isinstance(e, kind)]


def message_texts(events: Iterable[object]) -> list[bytes]:
    return [e.text for e in of_type(events, astm.MessageReceived)]


# --- corpus loaders ---------------------------------------------------------------------------

_ESCAPES = {
    "[STX]": b"\x02",
    "[ETX]": b"\x03",
    "[EOT]": b"\x04",
    "[ENQ]": b"\x05",
    "[ACK]": b"\x06",
    "[NAK]": b"\x15",
    "[ETB]": b"\x17",
    "[CR]": b"\r",
    "[LF]": b"\n",
}
_ESCAPE = re.compile("|".join(re.escape(k) for k in _ESCAPES))


def unescape(text: str) -> bytes:
    """`[STX]1H|...[CR][ETX]7A[CR][LF]` -> the bytes it stands for (latin-1 otherwise)."""
    out = bytearray()
    pos = 0
    for match in _ESCAPE.finditer(text):
        out += text[pos : match.start()].encode("latin-1")
        out += _ESCAPES[match.group()]
        pos = match.end()
    out += text[pos:].encode("latin-1")
    return bytes(out)


def log_reads(name: str) -> list[bytes]:
    """The analyser's side of a text-escaped host log, one chunk per logged read.

    Lines starting with " - " are the host's own replies and are left out; the log's CRLF line
    ends are not traffic.
    """
    text = (CORPUS / name).read_bytes().decode("latin-1")
    return [unescape(line) for line in text.split("\r\n") if line and not line.startswith(" - ")]


def astm_stream(name: str) -> bytes:
    """A `.astm` capture (real bytes), framed by ENQ ... EOT if the capture lacks them."""
    data = (CORPUS / name).read_bytes()
    if not data.startswith(b"\x05"):
        data = b"\x05" + data
    if not data.endswith(b"\x04"):
        data += b"\x04"
    return data


def record_text(name: str) -> bytes:
    """A plain record dump with `#` comments and `@send`/`@receive` directives removed."""
    lines = (CORPUS / name).read_bytes().splitlines()
    kept = [line for line in lines if not line.startswith((b"#", b"@send", b"@receive"))]
    return b"\n".join(kept) + b"\n"


def record_messages(name: str) -> list[bytes]:
    """A record dump cut into messages, each starting at an H record."""
    messages: list[list[bytes]] = []
    for line in record_text(name).splitlines():
        if not line.strip():
            continue
        if line.startswith(b"H") or not messages:
            messages.append([])
        messages[-1].append(line)
    return [b"\r".join(lines) + b"\r" for lines in messages]


def frame_texts(stream: bytes) -> list[bytes]:
    """The text of every frame in a stream (STX FN ... ETX|ETB), checksum or not."""
    return [m.group(1) for m in re.finditer(rb"\x02[0-7]?([^\x02\x03\x17]*)[\x03\x17]", stream)]
