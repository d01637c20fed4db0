"""A simulated ASTM analyser: connects to labgate over TCP and sends E1394 results in E1381 frames.

It plays the instrument role of the same sans-IO link core labgate uses as host, so both ends
are checked against one reading of the standard. Fault injection for tests: corrupt the checksum
of the next frames (labgate must NAK and the analyser retransmits).
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from dataclasses import dataclass
from datetime import datetime

from protocols import astm

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


class AnalyserSimulator:
    """One analyser connection to labgate (TCP client, E1381 instrument role)."""

    def __init__(
        self, host: str, port: int, *, timers: astm.Timers | None = None, max_text: int = 240
    ) -> None:
        self.host = host
        self.port = port
        self.link = astm.Link(
            astm.Role.INSTRUMENT, timers=timers or astm.Timers(), max_text=max_text
        )
        self.corrupt_frames = 0
        self.sent = 0
        self.failed = 0
        self._waiters: deque[asyncio.Future[bool]] = deque()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._poke = asyncio.Event()

    async def connect(self, timeout: float = 10.0) -> None:
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), timeout
        )
        self._task = asyncio.create_task(self._pump(), name=f"analyser-sim-{self.port}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except (OSError, ConnectionError):
                pass
            self._writer = None

    async def send(self, message: bytes) -> bool:
        """Send one message: True once its last frame is acknowledged, False if the link gave up."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(waiter)
        self.link.send_message(message, loop.time())
        self._poke.set()
        return await waiter

    async def _pump(self) -> None:
        assert self._reader is not None
        loop = asyncio.get_running_loop()
        read: asyncio.Task[bytes] | None = None
        try:
            while True:
                self._flush()
                self._events()
                timer = self.link.get_timer()
                timeout = None if timer is None else max(0.0, timer - loop.time())
                if read is None:
                    read = asyncio.ensure_future(self._reader.read(65536))
                poke = asyncio.ensure_future(self._poke.wait())
                done, _ = await asyncio.wait(
                    {read, poke}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                poke.cancel()
                self._poke.clear()
                if read in done:
                    data = read.result()
                    read = None
                    if not data:
                        self._fail_all()
                        return
                    self.link.receive_data(data, loop.time())
                elif not done:
                    self.link.handle_timer(loop.time())
        finally:
            if read is not None:
                read.cancel()
            self._fail_all()

    def _flush(self) -> None:
        out = self.link.data_to_send()
        if not out or self._writer is None:
            return
        if self.corrupt_frames and out.startswith(b"\x02") and len(out) >= 4:
            self.corrupt_frames -= 1
            tail = out[-4:] if out.endswith(b"\r\n") else out[-3:]
            bad = b"0" if tail[:1] != b"0" else b"1"
            out = out[: len(out) - len(tail)] + bad + tail[1:]
        self._writer.write(out)

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
                self.link.acknowledge(asyncio.get_running_loop().time())
            self._flush()

    def _resolve(self, ok: bool) -> None:
        if self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(ok)

    def _fail_all(self) -> None:
        while self._waiters:
            self._resolve(False)
