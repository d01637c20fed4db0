"""Hosts for the simulator tests: a real `astm.Link(Role.HOST)` that acknowledges every message,
reached over TCP (an asyncio server) or over a pseudo-terminal (the test reads and writes the
master; the simulator opens the slave path with pyserial-asyncio-fast).

Named `sim_helpers` (not `conftest`/`helpers`): the tests have no `__init__.py`, and module names
must be unique across the test tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios
import tty
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

from protocols import astm
from protocols import hl7 as v2
from simulators.analyser import AnalyserSimulator
from simulators.faults import Faults

#: Short timers so that a lost ACK costs a fraction of a second, not 15 s.
FAST = astm.Timers(
    establish=0.3,
    reply=0.3,
    receive=3.0,
    busy=0.05,
    contention_host=3.0,
    contention_instrument=0.05,
    interrupt=0.1,
)
#: The host waits longer than the analyser for everything, so only the analyser's timers fire.
HOST_TIMERS = astm.Timers(
    establish=3.0,
    reply=3.0,
    receive=3.0,
    busy=0.05,
    contention_host=3.0,
    contention_instrument=0.05,
    interrupt=0.1,
)


class HostLink:
    """One host-side link, driven like labgate's adapter: bytes in, ACK every message, bytes
    out through `write`, one `call_at` for the link's deadline."""

    def __init__(self, host: Host, write: Callable[[bytes], None]) -> None:
        self.host = host
        self.link = astm.Link(astm.Role.HOST, host.timers)
        self._write = write
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    def feed(self, data: bytes) -> None:
        self.link.receive_data(data, self._loop.time())
        self.transmit()

    def send(self, text: bytes) -> None:
        self.link.send_message(text, self._loop.time())
        self.transmit()

    def transmit(self) -> None:
        while (event := self.link.next_event()) is not None:
            self.host.events.append(event)
            if isinstance(event, astm.MessageReceived):
                self.host.received.append(event.text)
                self.link.acknowledge(self._loop.time())
        out = self.link.data_to_send()
        if out:
            self._write(out)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.link.get_timer()
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)
        self.host.changed.set()

    def _on_timer(self) -> None:
        self._timer = None
        self.link.handle_timer(self._loop.time())
        self.transmit()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Host:
    """What every host keeps: messages received (in order, duplicates included), link events."""

    def __init__(self, timers: astm.Timers = HOST_TIMERS) -> None:
        self.timers = timers
        self.received: list[bytes] = []
        self.events: list[astm.Event] = []
        self.connections = 0
        self.changed = asyncio.Event()
        self.current: HostLink | None = None

    def count(self, kind: type[astm.Event]) -> int:
        return sum(isinstance(event, kind) for event in self.events)

    def send(self, text: bytes) -> None:
        """Queue a message for the analyser (an order) on the current connection."""
        assert self.current is not None
        self.current.send(text)

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while True:
                self.changed.clear()
                if condition():
                    return
                await self.changed.wait()


class TcpHost(Host, asyncio.Protocol):
    """An asyncio TCP server; every connection gets a fresh host link."""

    def __init__(self, timers: astm.Timers = HOST_TIMERS) -> None:
        super().__init__(timers)
        self.port = 0
        self.server: asyncio.Server | None = None
        self.transports: set[asyncio.Transport] = set()

    def factory(self) -> asyncio.Protocol:
        host = self

        class Connection(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                assert isinstance(transport, asyncio.Transport)
                self.link = HostLink(host, transport.write)
                self.transport = transport
                host.transports.add(transport)
                host.current = self.link
                host.connections += 1
                host.changed.set()

            def data_received(self, data: bytes) -> None:
                self.link.feed(data)

            def connection_lost(self, exc: Exception | None) -> None:
                self.link.close()
                host.transports.discard(self.transport)
                host.changed.set()

        return Connection()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self.factory, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for transport in list(self.transports):
                transport.abort()
            await self.server.wait_closed()


class PtyHost(Host):
    """The master side of a pseudo-terminal; the simulator opens `path` (the slave).

    The test keeps its own slave descriptor open, so the master never sees a hang-up when the
    simulator closes and reopens the port: like a cable left plugged in.
    """

    def __init__(self, timers: astm.Timers = HOST_TIMERS) -> None:
        super().__init__(timers)
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave, termios.TCSANOW)  # no echo, no CR/LF translation
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self._slave)

    async def start(self) -> None:
        self.current = HostLink(self, self._write)
        self.connections = 1
        asyncio.get_running_loop().add_reader(self.master, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except (BlockingIOError, InterruptedError):
            return
        assert self.current is not None
        self.current.feed(data)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.master, view)
            view = view[written:]

    async def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.master)
        if self.current is not None:
            self.current.close()
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)


@contextlib.asynccontextmanager
async def analyser_and_host(
    transport: str,
    *,
    faults: Faults | None = None,
    timers: astm.Timers | None = None,
    host_timers: astm.Timers = HOST_TIMERS,
    max_text: int = 240,
) -> AsyncIterator[tuple[AnalyserSimulator, TcpHost | PtyHost]]:
    """A connected simulator and its host, over "tcp" or "serial" (a pty)."""
    host: TcpHost | PtyHost
    if transport == "tcp":
        host = TcpHost(host_timers)
        await host.start()
        sim = AnalyserSimulator(
            "127.0.0.1", host.port, timers=timers, max_text=max_text, faults=faults
        )
    else:
        host = PtyHost(host_timers)
        await host.start()
        sim = AnalyserSimulator.over_serial(
            host.path, 9600, timers=timers, max_text=max_text, faults=faults
        )
    try:
        await sim.connect()
        try:
            yield sim, host
        finally:
            await sim.close()
    finally:
        await host.close()


def oru(control_id: str) -> bytes:
    """A small valid ORU^R01, as labgate sends to the LIS."""
    now = datetime(2025, 6, 28, 17, 33, 33, tzinfo=UTC)
    header = v2.MessageHeader("labgate", "LAB", "LIS", "HOSP", control_id, now)
    result = v2.ObservationOut(set_id=1, code="GLU", value="5.4", units="mmol/L")
    order = v2.OrderOut("SPEC1", "CHEM", "Chemistry", now, (result,))
    patient = v2.PatientOut("PAT1", "DUPONT", "MARIE", None, "F", (order,))
    return v2.build_oru_r01(header, [patient])
