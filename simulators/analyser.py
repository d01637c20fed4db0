"""A simulated ASTM analyser: sends E1394 results in E1381 frames to labgate over TCP or serial.

It plays the instrument role of the same sans-IO link core labgate uses as host, so both ends
are checked against one reading of the standard. The connection (TCP client, or a serial port
such as a pty slave) is `simulators.connection`'s `Line`; the analyser logic is the same on both.

Faults (`simulators.faults.Faults`): bit flips in frames, dropped ACKs, a slow line, contention
and an abrupt disconnect; plus `corrupt_frames`, a count of frames whose checksum is spoiled.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from dataclasses import dataclass
from datetime import datetime

from protocols import astm
from protocols.astm.constants import ENQ, MAX_RETRIES, RESTRICTED
from protocols.errors import LocalProtocolError
from simulators.connection import Endpoint, Line, SerialEndpoint, TcpEndpoint, open_line
from simulators.faults import Faults, corrupt_checksum

__all__ = ["AnalyserSimulator", "SimulatedResult", "build_result_message", "demo_results"]


@dataclass(frozen=True, slots=True)
class SimulatedResult:
    """One result line the simulated analyser will report."""

    code: str
    value: str
    units: str
    reference_range: str
    flag: str = "N"


# A small chemistry panel with plausible values (units as a French lab reports them).
_PANEL = (
    ("GLU", "mmol/L", 3.9, 6.1, 5.0, 1.2),
    ("CREA", "umol/L", 45, 104, 80, 25),
    ("NA", "mmol/L", 136, 145, 140, 3),
    ("K", "mmol/L", 3.5, 5.1, 4.2, 0.5),
    ("CL", "mmol/L", 98, 107, 102, 3),
    ("UREA", "mmol/L", 2.5, 7.5, 5.0, 1.5),
    ("ALT", "U/L", 7, 56, 30, 15),
    ("AST", "U/L", 10, 40, 25, 10),
)


def demo_results(count: int, rng: random.Random) -> list[SimulatedResult]:
    """`count` results drawn around normal values, some outside the reference range."""
    results = []
    for index in range(count):
        code, units, low, high, mean, sd = _PANEL[index % len(_PANEL)]
        value = round(rng.gauss(mean, sd), 1)
        flag = "L" if value < low else "H" if value > high else "N"
        results.append(SimulatedResult(code, f"{value:g}", units, f"{low} to {high}", flag))
    return results


def build_result_message(
    specimen_id: str,
    patient_id: str,
    results: list[SimulatedResult],
    *,
    patient_name: tuple[str, str] = ("DUPONT", "MARIE"),
    sender: str = "SIM-CHEM^1.0",
    when: datetime | None = None,
    qc: bool = False,
) -> bytes:
    """An H, P, O, R..., L message as a LIS2-A2 analyser sends it (records CR-terminated)."""
    stamp = (when or datetime.now()).strftime("%Y%m%d%H%M%S")
    tests = "\\".join(f"^^^{r.code}" for r in results)
    records = [
        f"H|\\^&|||{sender}|||||||{'Q' if qc else 'P'}|LIS2-A2|{stamp}",
        f"P|1||{patient_id}||{patient_name[0]}^{patient_name[1]}||19800101|F",
        f"O|1|{specimen_id}||{tests}|R||{stamp}||||{'Q' if qc else 'N'}",
    ]
    for seq, result in enumerate(results, 1):
        records.append(
            f"R|{seq}|^^^{result.code}|{result.value}|{result.units}|{result.reference_range}"
            f"|{result.flag}||F||||{stamp}"
        )
    records.append("L|1|N")
    return ("\r".join(records) + "\r").encode("latin-1")


@dataclass(slots=True)
class _Pending:
    """A message `send()` waits for, until the host acknowledged it or the link dropped it."""

    text: bytes
    done: asyncio.Future[bool]


class AnalyserSimulator:
    """One analyser connection to labgate (E1381 instrument role), over TCP or a serial port.

    `AnalyserSimulator(host, port)` is a TCP client; `AnalyserSimulator.over_serial(path)` opens
    a serial port. `faults` injects line faults (see `simulators.faults`); with `reconnect`, a
    connection the host closes is opened again and the unacknowledged messages are resent
    (otherwise they fail). Messages the host sends (orders, queries) are acknowledged and kept
    in `received`.
    """

    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        *,
        timers: astm.Timers | None = None,
        max_text: int = 240,
        max_retries: int = MAX_RETRIES,
        faults: Faults | None = None,
        endpoint: Endpoint | None = None,
        reconnect: bool = False,
    ) -> None:
        if endpoint is None:
            if host is None or port is None:
                raise ValueError("give host and port (TCP), or an endpoint")
            endpoint = TcpEndpoint(host, port)
        self.endpoint = endpoint
        self.host = host
        self.port = port
        self.timers = timers or astm.Timers()
        self.max_text = max_text
        self.max_retries = max_retries
        self.faults = faults or Faults()
        self.reconnect = reconnect
        self.link = self._new_link()
        self.corrupt_frames = 0  #: spoil the checksum of this many next frames
        self.sent = 0  #: messages acknowledged by the host
        self.failed = 0  #: failed transfers (each retried by the link until it drops the message)
        self.received: list[bytes] = []  #: message texts the host sent to the analyser
        self.connections = 0  #: connections opened (more than one after a reconnect)
        self._pending: deque[_Pending] = deque()  # in order; the last `_held` are not in the link
        self._held = 0
        self._line: Line | None = None
        self._bytes_out_before = 0  # bytes written on connections already closed
        self._cut_done = False  # `disconnect_after` fires once
        self._closing = False
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        self._hold_timer: asyncio.TimerHandle | None = None
        self._reconnecting: asyncio.Task[None] | None = None

    @classmethod
    def over_serial(
        cls,
        path: str,
        baudrate: int = 9600,
        *,
        timers: astm.Timers | None = None,
        max_text: int = 240,
        max_retries: int = MAX_RETRIES,
        faults: Faults | None = None,
        reconnect: bool = False,
    ) -> AnalyserSimulator:
        """An analyser on the serial port `path` (a real port, or a pty slave: /dev/pts/3)."""
        return cls(
            timers=timers,
            max_text=max_text,
            max_retries=max_retries,
            faults=faults,
            endpoint=SerialEndpoint(path, baudrate),
            reconnect=reconnect,
        )

    @property
    def bytes_out(self) -> int:
        """Bytes written to the host so far, over every connection."""
        return self._bytes_out_before + (self._line.bytes_out if self._line else 0)

    @property
    def held(self) -> int:
        """Messages waiting for the host's ENQ (the `contention` fault)."""
        return self._held

    @property
    def connected(self) -> bool:
        """True while a connection is open."""
        return self._line is not None

    async def connect(self, timeout: float = 10.0) -> None:
        """Open the connection. Raises `OSError` or `TimeoutError` if the host cannot be reached."""
        self._closing = False
        await self._open(timeout)

    async def close(self) -> None:
        """Close the connection; messages not yet acknowledged fail (`send()` returns False)."""
        self._closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnecting
            self._reconnecting = None
        self._cancel_timers()
        line, self._line = self._line, None
        if line is not None:
            self._bytes_out_before += line.bytes_out
            await line.close()
        self._fail_all()

    async def send(self, message: bytes) -> bool:
        """Send one message: True once its last frame is acknowledged; False if the link dropped
        it (too many failed transfers) or the connection was lost without `reconnect`.

        Raises `LocalProtocolError` for text LIS1-A forbids (empty, or restricted characters).
        """
        if not message:
            raise LocalProtocolError("cannot send an empty message")
        bad = RESTRICTED.intersection(message)
        if bad:
            raise LocalProtocolError(f"message holds characters LIS1-A forbids: {sorted(bad)}")
        if self._line is None and self._reconnecting is None:
            return False
        loop = asyncio.get_running_loop()
        pending = _Pending(bytes(message), loop.create_future())
        self._pending.append(pending)
        if self.faults.contention:
            self._held += 1
            if self._hold_timer is None:
                self._hold_timer = loop.call_later(self.faults.contention_hold, self._hold_over)
        elif self._line is not None:
            self.link.send_message(pending.text, loop.time())
            self._transmit()
        return await pending.done

    # --- connection -----------------------------------------------------------------------

    def _new_link(self) -> astm.Link:
        return astm.Link(
            astm.Role.INSTRUMENT,
            timers=self.timers,
            max_text=self.max_text,
            max_retries=self.max_retries,
        )

    async def _open(self, timeout: float = 10.0) -> None:
        cut_after = None if self._cut_done else self.faults.disconnect_after
        line = Line(self._on_data, self._on_lost, rate=self.faults.line_rate, cut_after=cut_after)
        await open_line(self.endpoint, line, timeout)
        self._line = line
        self.connections += 1
        # A fresh link: whatever the last one was doing died with its connection (LIS1-A has no
        # resumption), so every unacknowledged message goes again in full, in order.
        self.link = self._new_link()
        now = asyncio.get_running_loop().time()
        for pending in list(self._pending)[: len(self._pending) - self._held]:
            self.link.send_message(pending.text, now)
        self._transmit()

    def _on_lost(self, line: Line, exc: Exception | None) -> None:
        if line is not self._line:
            return
        self._line = None
        self._bytes_out_before += line.bytes_out
        self._cancel_timers(keep_hold=True)
        if self._closing:
            return
        if line.cut:
            self._cut_done = True
            self.faults.counts.disconnects += 1
        if line.cut or self.reconnect:
            self._reconnecting = asyncio.get_running_loop().create_task(
                self._reconnect(), name=f"analyser-sim-reconnect-{self.endpoint}"
            )
        else:
            self._fail_all()

    async def _reconnect(self) -> None:
        delay = 0.05
        try:
            while not self._closing:
                try:
                    await self._open()
                    return
                except (OSError, TimeoutError):
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
        finally:
            self._reconnecting = None

    # --- bytes in, bytes out --------------------------------------------------------------

    def _on_data(self, data: bytes) -> None:
        data = self.faults.tamper_incoming(data)
        now = asyncio.get_running_loop().time()
        if self._held and ENQ in data and self.link.state is astm.LinkState.NEUTRAL:
            # Contention on demand: the host bids for the line while we hold a message, so we
            # bid too, before reading its ENQ (both ENQs cross on the wire).
            cut = data.index(ENQ)
            self.link.receive_data(data[:cut], now)
            self._transmit()
            data = data[cut:]
            if self.link.state is astm.LinkState.NEUTRAL and self._line is not None:
                self.faults.counts.contentions += 1
                self._release_held(now)
        self.link.receive_data(data, now)
        self._transmit()

    def _transmit(self) -> None:
        """Act on the link's events, write what it has to send, re-arm its timer."""
        while True:
            self._events()
            out = self.link.data_to_send()
            if not out:
                break
            if self._line is not None:
                self._line.write(self._tamper(out))
        self._arm_timer()

    def _tamper(self, out: bytes) -> bytes:
        if self.corrupt_frames:
            out, spoiled = corrupt_checksum(out, self.corrupt_frames)
            self.corrupt_frames -= spoiled
            self.faults.counts.checksums_corrupted += spoiled
        return self.faults.tamper_outgoing(out)

    def _events(self) -> None:
        while (event := self.link.next_event()) is not None:
            if isinstance(event, astm.MessageSent):
                self.sent += 1
                self._resolve(True)
            elif isinstance(event, astm.MessageFailed):
                # A failed transfer is retried by the link itself; only a dropped message is final.
                self.failed += 1
                if event.dropped:
                    self._resolve(False)
            elif isinstance(event, astm.MessageReceived):
                self.received.append(event.text)
                self.link.acknowledge(asyncio.get_running_loop().time())

    # --- timers ---------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        deadline = self.link.get_timer() if self._line is not None else None
        if deadline == self._deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadline = deadline
        if deadline is not None:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._deadline = None
        if self._line is None:
            return
        self.link.handle_timer(asyncio.get_running_loop().time())
        self._transmit()

    def _hold_over(self) -> None:
        """No ENQ from the host came while a message was held: send it anyway."""
        self._hold_timer = None
        if self._line is not None:
            self._release_held(asyncio.get_running_loop().time())
        elif self._held:  # offline: try again after the reconnection
            self._hold_timer = asyncio.get_running_loop().call_later(
                self.faults.contention_hold, self._hold_over
            )

    def _release_held(self, now: float) -> None:
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        held, self._held = self._held, 0
        for pending in list(self._pending)[len(self._pending) - held :]:
            self.link.send_message(pending.text, now)
        self._transmit()

    def _cancel_timers(self, *, keep_hold: bool = False) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadline = None
        if self._hold_timer is not None and not keep_hold:
            self._hold_timer.cancel()
            self._hold_timer = None

    # --- results --------------------------------------------------------------------------

    def _resolve(self, ok: bool) -> None:
        if len(self._pending) > self._held:
            pending = self._pending.popleft()
            if not pending.done.done():
                pending.done.set_result(ok)

    def _fail_all(self) -> None:
        self._held = 0
        while self._pending:
            pending = self._pending.popleft()
            if not pending.done.done():
                pending.done.set_result(False)
