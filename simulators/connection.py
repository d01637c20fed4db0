"""The simulators' connection layer: one byte stream to the host over TCP or a serial port.

`Line` is the asyncio protocol both transports drive, so the simulator above it never knows
which one it runs on. It also plays the physical line: `rate` paces the outgoing bytes as a slow
serial line would, and `cut_after` drops the connection once that many bytes went out.

Serial ports go through pyserial-asyncio-fast; any path pyserial opens works: a real port, or
the slave end of a pseudo-terminal (``os.openpty()``) in tests. A pseudo-terminal has no baud
rate of its own: use `rate` to give it the timing of a real line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import serial_asyncio_fast

__all__ = ["Endpoint", "Line", "SerialEndpoint", "TcpEndpoint", "open_line"]

#: Pacing granularity: a paced line writes a slice of this many seconds' worth of bytes at once.
_SLICE_SECONDS = 0.01


@dataclass(frozen=True, slots=True)
class TcpEndpoint:
    """The host listens on TCP (LIS1-A §7: the instrument is the client)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"tcp://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SerialEndpoint:
    """A serial port (or a pty slave) at `baudrate`, 8N1 [LIS1-A §5.2]."""

    path: str
    baudrate: int = 9600

    def __str__(self) -> str:
        return f"serial://{self.path}?baud={self.baudrate}"


Endpoint = TcpEndpoint | SerialEndpoint


class Line(asyncio.Protocol):
    """One connection: bytes read go to `on_data`, the end of the connection to `on_lost`.

    `rate` (bytes/s) paces what `write` sends: each slice leaves when the bytes before it would
    have finished crossing a real line, so n bytes take at least n/rate seconds. `cut_after`
    aborts the connection after that many bytes were written (possibly mid-frame); `cut` then
    says the end was ours.
    """

    def __init__(
        self,
        on_data: Callable[[bytes], None],
        on_lost: Callable[[Line, Exception | None], None],
        *,
        rate: float | None = None,
        cut_after: int | None = None,
    ) -> None:
        self.on_data = on_data
        self.on_lost = on_lost
        self.rate = rate
        self.cut_after = cut_after
        self.bytes_out = 0  #: bytes actually written to the transport
        self.cut = False  #: the connection was dropped by `cut_after`
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._made: asyncio.Future[None] = self._loop.create_future()
        self._lost: asyncio.Future[None] = self._loop.create_future()
        self._backlog = bytearray()  # paced bytes not yet written
        self._drained = asyncio.Event()  # set while the backlog is empty
        self._drained.set()
        self._free_at = 0.0  # when the paced line finishes sending what was written
        self._pacer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if not self._made.done():
            self._made.set_result(None)

    def data_received(self, data: bytes) -> None:
        if not self._lost.done():
            self.on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._drop_backlog()
        if not self._lost.done():
            self._lost.set_result(None)
            self.on_lost(self, exc)

    # --- the line -----------------------------------------------------------------------

    @property
    def open(self) -> bool:
        """True until the connection is closing or closed."""
        return (
            self._transport is not None
            and not self._transport.is_closing()
            and not self._lost.done()
        )

    def write(self, data: bytes) -> None:
        """Send `data` (at once, or paced at `rate`). Ignored once the line is closing."""
        if not data or not self.open:
            return
        if self.rate is None:
            self._put(data)
            return
        self._backlog += data
        self._drained.clear()
        if self._pacer is None:
            self._free_at = max(self._free_at, self._loop.time())
            self._schedule()

    def abort(self) -> None:
        """Drop the connection at once; unsent bytes are lost."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.abort()

    async def close(self, timeout: float = 5.0) -> None:
        """Send what is still paced (for up to `timeout` s), close, and wait until closed."""
        if not self._drained.is_set() and self.open:
            try:
                await asyncio.wait_for(self._drained.wait(), timeout)
            except TimeoutError:
                pass
        self._drop_backlog()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        if self._transport is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._lost), timeout)
            except TimeoutError:
                self._transport.abort()

    async def wait_made(self) -> None:
        """Return once the transport has handed itself to the line (`connection_made`)."""
        await asyncio.shield(self._made)

    def _schedule(self) -> None:
        assert self.rate is not None
        size = min(len(self._backlog), max(1, round(self.rate * _SLICE_SECONDS)))
        self._free_at += size / self.rate
        self._pacer = self._loop.call_at(self._free_at, self._release, size)

    def _release(self, size: int) -> None:
        self._pacer = None
        chunk = bytes(self._backlog[:size])
        del self._backlog[:size]
        self._put(chunk)
        if self._backlog and self.open:
            self._schedule()
        else:
            self._drop_backlog()

    def _drop_backlog(self) -> None:
        if self._pacer is not None:
            self._pacer.cancel()
            self._pacer = None
        self._backlog.clear()
        self._drained.set()

    def _put(self, data: bytes) -> None:
        assert self._transport is not None
        if self.cut_after is not None and self.bytes_out + len(data) >= self.cut_after:
            keep = self.cut_after - self.bytes_out
            self._transport.write(data[:keep])
            self.bytes_out += keep
            self.cut = True
            self._drop_backlog()
            self._transport.abort()
            return
        self._transport.write(data)
        self.bytes_out += len(data)


async def open_line(endpoint: Endpoint, line: Line, timeout: float = 10.0) -> None:
    """Connect `line` to `endpoint`. Raises `OSError` (incl. serial errors) or `TimeoutError`."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        if isinstance(endpoint, TcpEndpoint):
            await loop.create_connection(lambda: line, endpoint.host, endpoint.port)
            return
        transport, _ = await serial_asyncio_fast.create_serial_connection(
            loop, lambda: line, url=endpoint.path, baudrate=endpoint.baudrate
        )
        try:
            # Bytes the host sent while nobody had the port open belong to no conversation of
            # ours (as after an instrument's power cycle): start clean.
            if transport.serial is not None:
                transport.serial.reset_input_buffer()
            # The serial transport calls connection_made only on the next loop iteration:
            # writes before that would be lost.
            await line.wait_made()
        except BaseException:  # cancelled or timed out: do not leave the port open
            transport.abort()
            raise
