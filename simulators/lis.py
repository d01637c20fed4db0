"""A simulated LIS: an MLLP server that acknowledges HL7 results and keeps everything it got.

Tests compare what it received with what the analyser sent; `make run` shows it filling a folder.
Faults for tests: answer AE/AR instead of AA (always, or for the next answers in `ack_codes`),
answer late, say nothing at all, or drop the connection without answering (once, after
`drop_connection_after` messages).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from protocols.errors import RemoteProtocolError
from protocols.hl7 import (
    MllpFramer,
    ParsedOru,
    build_ack,
    message_control_id,
    mllp_frame,
    parse_oru,
)

__all__ = ["LisSimulator", "ReceivedMessage"]


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One message as the simulated LIS got it, with what it answered."""

    raw: bytes
    parsed: ParsedOru | None
    error: str | None
    received_at: datetime
    ack_code: str | None


class LisSimulator:
    """MLLP server on 127.0.0.1. `ack_code`, `ack_delay`, `silent`, `ack_codes` and
    `drop_connection_after` may be changed at any time.

    - `ack_codes`: codes for the next answers, in order (say ``["AE", "AE"]``: two errors);
      once they are used up, every answer is `ack_code`.
    - `drop_connection_after`: the message after that many received messages (counted from the
      start, over every connection) gets no answer: its connection is closed instead. Once: the
      setting then goes back to None. The message is kept in `received` with ``ack_code=None``.
    - `on_message` is called with every `ReceivedMessage` (the CLI prints them).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        received_dir: str | Path | None = None,
        ack_code: str = "AA",
        ack_delay: float = 0.0,
        silent: bool = False,
        ack_codes: Iterable[str] = (),
        drop_connection_after: int | None = None,
        on_message: Callable[[ReceivedMessage], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.received_dir = Path(received_dir) if received_dir else None
        self.ack_code = ack_code
        self.ack_delay = ack_delay
        self.silent = silent
        self.ack_codes: deque[str] = deque(ack_codes)
        self.drop_connection_after = drop_connection_after
        self.dropped_connections = 0  #: connections closed by `drop_connection_after`
        self.on_message = on_message
        self.received: list[ReceivedMessage] = []
        self._server: asyncio.Server | None = None
        self._arrived = asyncio.Condition()
        self._ids = itertools.count(1)
        self._connections: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Start listening; returns the bound port."""
        if self.received_dir:
            self.received_dir.mkdir(parents=True, exist_ok=True)
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._connections):
                writer.close()
            # Let each connection handler see its end before the loop goes away.
            if self._handlers:
                await asyncio.wait(self._handlers, timeout=5)
            await self._server.wait_closed()
            self._server = None

    @property
    def delivered(self) -> list[ReceivedMessage]:
        """Messages this LIS acknowledged with AA."""
        return [m for m in self.received if m.ack_code == "AA"]

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Wait until at least `count` messages were acknowledged with AA."""
        async with asyncio.timeout(timeout):
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.delivered) >= count)
        return self.delivered

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = MllpFramer()
        self._connections.add(writer)
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        try:
            while data := await reader.read(65536):
                try:
                    framer.receive_data(data)
                    while (message := framer.next_message()) is not None:
                        if not await self._answer(message, writer):
                            return
                except RemoteProtocolError:
                    continue
        except (ConnectionError, OSError):
            pass
        finally:
            self._connections.discard(writer)
            if handler is not None:
                self._handlers.discard(handler)
            writer.close()

    async def _answer(self, message: bytes, writer: asyncio.StreamWriter) -> bool:
        """Answer one message; False if the connection was dropped instead (a fault)."""
        now = datetime.now(UTC)
        try:
            parsed: ParsedOru | None = parse_oru(message)
            error = None
        except RemoteProtocolError as exc:
            parsed, error = None, str(exc)
        drop = self.drop_connection_after is not None and (
            len(self.received) >= self.drop_connection_after
        )
        if drop:
            self.drop_connection_after = None
            self.dropped_connections += 1
            code = None
        elif self.silent:
            code = None
        elif error is not None:
            code = "AR"
        else:
            code = self.ack_codes.popleft() if self.ack_codes else self.ack_code
        if self.ack_delay and not drop:
            await asyncio.sleep(self.ack_delay)
        if drop:
            writer.transport.abort()
        elif code is not None:
            ack = build_ack(message, code, f"LIS{next(self._ids):06d}", now, text=error or "")
            writer.write(mllp_frame(ack))
            await writer.drain()
        record = ReceivedMessage(message, parsed, error, now, code)
        if self.received_dir:
            control = message_control_id(message) or "unknown"
            name = f"{len(self.received) + 1:06d}-{control}.hl7"
            (self.received_dir / name).write_bytes(message.replace(b"\r", b"\r\n"))
        async with self._arrived:
            self.received.append(record)
            self._arrived.notify_all()
        if self.on_message is not None:
            self.on_message(record)
        return not drop
