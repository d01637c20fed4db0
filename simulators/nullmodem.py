"""A virtual null-modem cable: two pseudo-terminals whose masters are joined, so two programs
can each open a real serial device path (/dev/pts/N) and talk as over RS-232.

    program A -> /dev/pts/A (slave) ~ master A <=relay=> master B ~ (slave) /dev/pts/B <- program B

`line_rate` (bytes per second, each direction) paces the relay like a real line: 9600 baud 8N1
carries 960 bytes/s. Used by the tests and benchmarks to run labgate's serial transport for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios
import tty

__all__ = ["NullModem", "line_rate_for"]


def line_rate_for(baudrate: int, bits_per_byte: int = 10) -> float:
    """Bytes per second an asynchronous line carries (8N1 = start + 8 data + stop = 10 bits)."""
    return baudrate / bits_per_byte


class NullModem:
    """Two joined pseudo-terminals; `start()` returns the two device paths."""

    def __init__(self, line_rate: float | None = None) -> None:
        self.line_rate = line_rate
        self.carried = [0, 0]  # bytes relayed A->B and B->A
        self._fds: list[int] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> tuple[str, str]:
        masters, paths = [], []
        for _ in range(2):
            master, slave = os.openpty()
            # Raw mode: no echo, no CR/LF translation; ASTM and MLLP bytes pass untouched.
            tty.setraw(slave, termios.TCSANOW)
            os.set_blocking(master, False)
            self._fds += [master, slave]  # the slave stays open so the master never sees EIO
            masters.append(master)
            paths.append(os.ttyname(slave))
        a, b = masters
        self._tasks = [
            asyncio.create_task(self._relay(a, b, 0), name="nullmodem-a-b"),
            asyncio.create_task(self._relay(b, a, 1), name="nullmodem-b-a"),
        ]
        return paths[0], paths[1]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []

    async def _relay(self, source: int, target: int, direction: int) -> None:
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        loop.add_reader(source, readable.set)
        try:
            while True:
                await readable.wait()
                readable.clear()
                try:
                    data = os.read(source, 4096)
                except BlockingIOError:
                    continue
                except OSError:
                    await asyncio.sleep(0.01)  # the other end is not open yet
                    continue
                await self._write(target, data, direction)
        finally:
            loop.remove_reader(source)

    async def _write(self, target: int, data: bytes, direction: int) -> None:
        # Paced in slices of ~10 ms of line time, so a 9600-baud line behaves like one.
        step = len(data) if self.line_rate is None else max(1, int(self.line_rate / 100))
        for start in range(0, len(data), step):
            chunk = data[start : start + step]
            while chunk:
                try:
                    written = os.write(target, chunk)
                except BlockingIOError:
                    await asyncio.sleep(0.001)
                    continue
                chunk = chunk[written:]
            self.carried[direction] += min(step, len(data) - start)
            if self.line_rate is not None:
                await asyncio.sleep(min(step, len(data) - start) / self.line_rate)
