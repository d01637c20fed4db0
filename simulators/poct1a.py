"""A simulated POCT1-A point-of-care device (a glucose meter by default): connects to labgate,
says hello (HEL), reports its status (DST), sends patient results and QC (OBS.R01 / OBS.R02)
run by an operator, and obeys the host.

It behaves as the devices of reference/POCT1A.md do:

- the device is the TCP client; it connects, sends HEL, waits for the ACK, then DST;
- one message of its own outstanding at a time (SA profile), each waiting for the host's ACK;
  the host's messages are answered whenever they come (the link is full duplex);
- results wait on the device until the host asks for them (REQ ROBS: all of them, then
  EOT OBS) or, once the host sent DTV START_CONTINUOUS, go as soon as they are measured;
- DTV LOCK locks it: `measure()` raises `MeasurementRefused` while locked, and its DST says
  condition L (our reading of the unverified letter table, like labgate's); DTV UNLOCK undoes
  it; after either it reports its status again;
- the operator list (OPL.R01 pages, installed at the host's EOT OPL; OPL.R02 updates) is kept,
  and `measure()` refuses an operator not on it (or whose certification ended), as a device
  that checks operators locally does; `enforce_operators=False` plays one that does not, to see
  the host refuse the result instead;
- each test names the lot of the strips loaded in the meter (RGT.lot_number, `reagent_lot`,
  patient tests and QC alike); changing `reagent_lot` plays a new box of strips;
- it keeps unacknowledged results across connections: after link loss it reconnects (after
  `reconnect_delay`) and sends them again; a result the host refused (ACK AE) is not resent;
- END from the host closes the connection; the device reconnects, as the DCA did at once.

`Measurement.wait()` gives the host's answer to one result. `drop_link()` cuts the TCP
connection abruptly (link loss). The command line is `labgate simulate poct1a`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from protocols import poct1a
from protocols.errors import RemoteProtocolError

__all__ = [
    "GLUCOSE",
    "Measurement",
    "MeasurementRefused",
    "Poct1aDeviceSimulator",
    "SimulatedTest",
    "add_parser",
    "run_cli",
]


class MeasurementRefused(Exception):
    """The device refuses to run the test (locked, or an operator it does not know)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SimulatedTest:
    """What the device measures: its observation id and code system, unit, normal range."""

    code: str
    name: str
    unit: str
    low: str = ""
    high: str = ""
    code_system: str = "LN"

    @property
    def normal_range(self) -> str:
        return f"[{self.low};{self.high}]" if self.low or self.high else ""

    def interpretation(self, value: str) -> str:
        """L, H or N against the normal range ("" when either is not a number)."""
        try:
            number, low, high = Decimal(value), Decimal(self.low), Decimal(self.high)
        except (InvalidOperation, ValueError):
            return ""
        return "L" if number < low else "H" if number > high else "N"


#: Glucose in capillary blood, mmol/L (LOINC 14743-9 is glucose by glucometer, moles/volume).
GLUCOSE = SimulatedTest("14743-9", "Glucose", "mmol/L", "3.9", "6.1")


@dataclass(slots=True)
class Measurement:
    """One test the device ran; `wait()` returns the host's answer (ACK AA or AE)."""

    body: poct1a.Observations
    answer: asyncio.Future[poct1a.Acknowledgement]
    queued_on: int = 0  # the connection number it was last handed to the sender on

    @property
    def specimen_id(self) -> str:
        return self.body.services[0].specimen_id

    async def wait(self, timeout: float = 10.0) -> poct1a.Acknowledgement:
        async with asyncio.timeout(timeout):
            return await asyncio.shield(self.answer)


@dataclass(slots=True)
class _Link:
    """One connection: its streams, reader, what waits for an ACK, what is to be sent."""

    number: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    messages: poct1a.MessageReader
    outbox: asyncio.Queue[poct1a.Message | Measurement] = field(default_factory=asyncio.Queue)
    waiting: dict[str, asyncio.Future[poct1a.Message]] = field(default_factory=dict)
    incoming_operators: list[poct1a.Operator] | None = None  # an OPL topic being received
    open: asyncio.Event = field(default_factory=asyncio.Event)  # HEL and DST acknowledged


class Poct1aDeviceSimulator:
    """A POCT1-A device connected to `host`:`port` (labgate), reconnecting until `close()`."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        device_id: str = "SIM^GLUCO-SIM^0001",
        model: str = "GLUCO-SIM",
        test: SimulatedTest = GLUCOSE,
        mllp: bool = False,
        enforce_operators: bool = True,
        reconnect_delay: float = 0.2,
        ack_timeout: float = 10.0,
        max_message_size: int = 16000,
        reagent_lot: str = "",
    ) -> None:
        self.host = host
        self.port = port
        self.device_id = device_id
        self.model = model
        self.test = test
        self.mllp = mllp
        self.enforce_operators = enforce_operators
        self.reconnect_delay = reconnect_delay
        self.ack_timeout = ack_timeout
        self.max_message_size = max_message_size
        #: The lot of the test strips loaded ("" = not said in its messages).
        self.reagent_lot = reagent_lot
        #: The device's state, as the host left it.
        self.locked = False
        self.continuous = False
        self.operators: dict[str, poct1a.Operator] | None = None  # None: no list received yet
        #: Results not yet answered by the host, oldest first (kept across connections).
        self.pending: list[Measurement] = []
        self.directives: list[str] = []  #: every directive received, in order
        self.connections = 0  #: connections opened
        self.on_change: Callable[[str], None] | None = None  #: called with what changed
        self._next_id = 10000  # devices number from their own base (the DCA from 10014)
        self._sequence = 0
        self._link: _Link | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._changed = asyncio.Event()

    # --- the device's user --------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a conversation is open (HEL and DST acknowledged)."""
        return self._link is not None and self._link.open.is_set()

    async def connect(self, timeout: float = 10.0) -> None:
        """Start connecting (and reconnecting); return once a conversation is open."""
        self._closing = False
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name=f"poct1a-{self.device_id}")
        await self.wait_until(lambda: self.connected, timeout)

    async def close(self) -> None:
        """Say END, close the connection and stop reconnecting."""
        self._closing = True
        link = self._link
        if link is not None and link.open.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                self._write(link, poct1a.End(self._header(), "NRM"))
                await link.writer.drain()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None

    def drop_link(self) -> None:
        """Cut the connection abruptly (cable pulled, Wi-Fi lost); the device reconnects."""
        if self._link is not None:
            self._link.writer.transport.abort()

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until `condition()` holds: checked after every change of the device's state,
        and every 50 ms for conditions on something else (the host's side, say)."""
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await self._changed.wait()

    def measure(
        self,
        value: str,
        *,
        operator: str,
        patient_id: str = "",
        specimen_id: str = "",
        qc_level: str = "",
        qc_lot: str = "",
        when: datetime | None = None,
        reagent_lot: str | None = None,
    ) -> Measurement:
        """Run one test (a QC when `qc_level` is given) and queue its result for the host.
        `reagent_lot` overrides the strip lot loaded (`self.reagent_lot`) for this test.

        Raises MeasurementRefused when the device is locked, or when the operator is not on the
        list it holds (with `enforce_operators`)."""
        if self.locked:
            raise MeasurementRefused("the device is locked by the laboratory")
        refusal = self._operator_refusal(operator, (when or datetime.now()).date())
        if refusal is not None:
            raise MeasurementRefused(refusal)
        self._sequence += 1
        qc = bool(qc_level)
        test = self.test
        service = poct1a.Service(
            observations=(
                poct1a.Observation(
                    code=test.code,
                    code_system=test.code_system,
                    name=test.name,
                    value=value,
                    unit=test.unit,
                    method="M",
                    status="A",
                    interpretation=test.interpretation(value),
                    normal_range="" if qc else test.normal_range,
                ),
            ),
            role="LQC" if qc else "OBS",
            observed_at=(when or datetime.now()).astimezone().replace(microsecond=0),
            status="NRM",
            reason="NEW",
            sequence=str(self._sequence),
            patient=None if qc else poct1a.PatientInfo(patient_id=patient_id),
            control=poct1a.ControlMaterial("GLU CONTROL", qc_lot, "", qc_level) if qc else None,
            operator_id=operator,
            specimen_id=specimen_id or f"{self.model}-{self._sequence:06d}",
            specimen_type="BLDC",
            reagent_lot=self.reagent_lot if reagent_lot is None else reagent_lot,
        )
        loop = asyncio.get_running_loop()
        body = poct1a.Observations(poct1a.Header(""), (service,), non_patient=qc)
        measurement = Measurement(body, loop.create_future())
        self.pending.append(measurement)
        link = self._link
        if link is not None and link.open.is_set() and self.continuous:
            self._queue_measurement(link, measurement)
        self._notify("measured")
        return measurement

    def _operator_refusal(self, operator: str, today: date) -> str | None:
        if not self.enforce_operators or self.operators is None:
            return None
        known = self.operators.get(operator)
        if known is None:
            return f"operator {operator} is not on the device's operator list"
        if known.expiration_date and known.expiration_date < today.isoformat():
            return f"operator {operator}'s certification has ended"
        return None

    # --- connection ---------------------------------------------------------------------

    async def _run(self) -> None:
        """Connect, converse until the link is lost or ended, wait, again; until close()."""
        while not self._closing:
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                await asyncio.sleep(self.reconnect_delay)
                continue
            self.connections += 1
            self.continuous = False  # until this host says START_CONTINUOUS again
            link = _Link(self.connections, reader, writer, poct1a.MessageReader())
            self._link = link
            self._notify("connected")
            try:
                await self._converse(link)
            except (OSError, TimeoutError, RemoteProtocolError):
                pass  # link lost, or the host stopped answering: reconnect
            finally:
                self._link = None
                writer.transport.abort()
                for waiter in link.waiting.values():
                    waiter.cancel()
                self._notify("disconnected")
            if not self._closing:
                await asyncio.sleep(self.reconnect_delay)

    async def _converse(self, link: _Link) -> None:
        reading = asyncio.create_task(self._read(link))
        sending = asyncio.create_task(self._send_loop(link))
        try:
            await self._request(link, self._hello())
            await self._request(link, self._status())
            link.open.set()
            self._notify("open")
            done, _ = await asyncio.wait({reading, sending}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raise what ended it
        finally:
            reading.cancel()
            sending.cancel()
            await asyncio.gather(reading, sending, return_exceptions=True)

    async def _read(self, link: _Link) -> None:
        while True:
            data = await link.reader.read(65536)
            if not data:
                raise ConnectionResetError("the host closed the connection")
            link.messages.receive_data(data)
            while True:
                try:
                    raw = link.messages.next_message()
                except RemoteProtocolError:
                    continue  # garbage from the host: a real device would ignore it too
                if raw is None:
                    break
                try:
                    message = poct1a.decode(raw.data)
                except RemoteProtocolError:
                    continue  # a message it cannot read: no answer, as a real device
                self._on_message(link, message)

    async def _send_loop(self, link: _Link) -> None:
        """Send queued messages one at a time, each after the host's answer to the previous."""
        while True:
            item = await link.outbox.get()
            if isinstance(item, Measurement):
                if item.answer.done():
                    continue
                answer = await self._request(link, item.body)
                if isinstance(answer, poct1a.Acknowledgement) and not item.answer.done():
                    with contextlib.suppress(ValueError):
                        self.pending.remove(item)
                    item.answer.set_result(answer)
                    self._notify("answered")
            else:
                await self._request(link, item)

    async def _request(self, link: _Link, message: poct1a.Message) -> poct1a.Message:
        """Send `message` with a fresh header and wait for the host's ACK (or ESC)."""
        message = self._write(link, message)
        waiter: asyncio.Future[poct1a.Message] = asyncio.get_running_loop().create_future()
        link.waiting[message.header.control_id] = waiter
        try:
            async with asyncio.timeout(self.ack_timeout):
                return await waiter
        finally:
            link.waiting.pop(message.header.control_id, None)

    def _write(self, link: _Link, message: poct1a.Message) -> poct1a.Message:
        if not message.header.control_id:  # queued bodies get their header when sent
            message = dataclasses.replace(message, header=self._header())
        raw = poct1a.encode(message)
        link.writer.write(poct1a.mllp_wrap(raw) if self.mllp else raw)
        return message

    def _header(self) -> poct1a.Header:
        self._next_id += 1
        return poct1a.Header(str(self._next_id), datetime.now().astimezone().replace(microsecond=0))

    def _hello(self) -> poct1a.Hello:
        return poct1a.Hello(
            header=poct1a.Header(""),
            device_id=self.device_id,
            vendor_id="SIM",
            model_id=self.model,
            serial_id=self.device_id.rsplit("^", 1)[-1],
            manufacturer_name="labgate simulators",
            sw_version="1.0",
            application_timeout=round(self.ack_timeout),
            connection_profile="SA",
            topics=("OBS", "DTV", "OP_LST"),
            directives=(poct1a.START_CONTINUOUS, poct1a.LOCK, poct1a.UNLOCK),
            max_message_size=self.max_message_size,
        )

    def _status(self) -> poct1a.DeviceStatus:
        return poct1a.DeviceStatus(
            header=poct1a.Header(""),
            new_observations=sum(not m.answer.done() for m in self.pending),
            condition=poct1a.CONDITION_LOCKED if self.locked else poct1a.CONDITION_READY,
            status_at=datetime.now().astimezone().replace(microsecond=0),
        )

    # --- the host's messages ------------------------------------------------------------

    def _on_message(self, link: _Link, message: poct1a.Message) -> None:
        if isinstance(message, poct1a.Acknowledgement):
            waiter = link.waiting.get(message.acknowledged)
            if waiter is not None and not waiter.done():
                waiter.set_result(message)
            return
        if isinstance(message, poct1a.Escape):
            waiter = link.waiting.get(message.escaped)
            if waiter is not None and not waiter.done():
                waiter.set_result(message)
            return
        if isinstance(message, poct1a.End):
            self._answer(link, message)
            raise ConnectionAbortedError(f"the host ended the conversation ({message.reason})")
        if isinstance(message, poct1a.Directive):
            self._on_directive(link, message)
        elif isinstance(message, poct1a.OperatorList):
            self._on_operator_list(link, message)
        elif isinstance(message, poct1a.EndOfTopic):
            self._answer(link, message)
            if message.topic == "OPL" and link.incoming_operators is not None:
                self.operators = {op.operator_id: op for op in link.incoming_operators}
                link.incoming_operators = None
                self._notify("operators")
        elif isinstance(message, poct1a.Request) and message.request == "ROBS":
            self._answer(link, message)
            for measurement in list(self.pending):
                self._queue_measurement(link, measurement)
            link.outbox.put_nowait(
                poct1a.EndOfTopic(poct1a.Header(""), "OBS", message.header.control_id)
            )
        else:
            name = poct1a.message_name(message)
            self._answer(link, message, "AE", f"{name} is not supported", "200")

    def _on_directive(self, link: _Link, message: poct1a.Directive) -> None:
        command = message.command
        self.directives.append(command)
        if command not in (poct1a.LOCK, poct1a.UNLOCK, poct1a.START_CONTINUOUS):
            self._answer(link, message, "AE", f"directive {command} is not supported", "200")
            return
        self._answer(link, message)
        if command == poct1a.START_CONTINUOUS:
            self.continuous = True
            for measurement in list(self.pending):
                self._queue_measurement(link, measurement)
        else:
            self.locked = command == poct1a.LOCK
            link.outbox.put_nowait(self._status())  # report the new condition
        self._notify(command.lower())

    def _on_operator_list(self, link: _Link, message: poct1a.OperatorList) -> None:
        self._answer(link, message)
        if message.incremental:
            current = dict(self.operators or {})
            for operator in message.operators:
                if operator.action == "D":
                    current.pop(operator.operator_id, None)
                else:
                    current[operator.operator_id] = operator
            self.operators = current
            self._notify("operators")
            return
        # The pages of one complete list accumulate until the host's EOT OPL installs it.
        if link.incoming_operators is None:
            link.incoming_operators = []
        link.incoming_operators.extend(message.operators)

    def _answer(
        self,
        link: _Link,
        message: poct1a.Message,
        kind: str = "AA",
        note: str = "",
        code: str = "",
    ) -> None:
        ack = poct1a.Acknowledgement(self._header(), message.header.control_id, kind, note, code)
        self._write(link, ack)

    def _queue_measurement(self, link: _Link, measurement: Measurement) -> None:
        if measurement.queued_on != link.number and not measurement.answer.done():
            measurement.queued_on = link.number
            link.outbox.put_nowait(measurement)

    def _notify(self, what: str) -> None:
        self._changed.set()
        if self.on_change is not None:
            self.on_change(what)


# --- command line (`labgate simulate poct1a`) ---------------------------------------------


def add_parser(commands: Any) -> None:
    """Add the `poct1a` command to the simulators' argument parser."""
    parser = commands.add_parser(
        "poct1a",
        help="a simulated POCT1-A point-of-care device (glucose meter)",
        description="Connect to labgate as a POCT1-A glucose meter, send results and QC, obey "
        "lock/unlock directives and the operator list; reconnect after link loss.",
    )
    parser.add_argument("--tcp", metavar="HOST:PORT", required=True, type=_host_port)
    parser.add_argument("--operator", default="OP1", help="operator id running the tests")
    parser.add_argument("--generate", metavar="N", type=int, default=5, help="tests to run")
    parser.add_argument("--interval", metavar="S", type=float, default=1.0)
    parser.add_argument(
        "--qc-every", metavar="K", type=int, default=0, help="run a QC before every K-th test"
    )
    parser.add_argument("--mllp", action="store_true", help="frame messages with MLLP bytes")
    parser.add_argument(
        "--reagent-lot", default="", help="lot of the test strips loaded (RGT.lot_number)"
    )
    parser.add_argument(
        "--no-operator-check",
        action="store_true",
        help="do not check operators locally (the host refuses unknown ones)",
    )
    parser.add_argument(
        "--stay", action="store_true", help="stay connected after the tests, until Ctrl-C"
    )
    parser.add_argument("--seed", type=int, help="seed for reproducible values")


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _emit(**fields: object) -> None:
    print(json.dumps(fields, default=str), flush=True)


async def run_cli(args: argparse.Namespace) -> int:
    """Run the device from parsed arguments; exit 0 when every test ran and was accepted."""
    host, port = args.tcp
    device = Poct1aDeviceSimulator(host, port, mllp=args.mllp, reagent_lot=args.reagent_lot)
    device.enforce_operators = not args.no_operator_check
    device.on_change = lambda what: (
        _emit(event=what, locked=device.locked) if what in ("lock", "unlock") else None
    )
    try:
        await device.connect()
    except TimeoutError:
        await device.close()
        print(f"simulate poct1a: no conversation with {host}:{port}", file=sys.stderr)
        return 1
    rng = random.Random(args.seed)
    accepted = 0
    try:
        for number in range(1, args.generate + 1):
            if number > 1 and args.interval:
                await asyncio.sleep(args.interval)
            runs: list[tuple[str, str, str]] = []
            if args.qc_every and number % args.qc_every == 1 % args.qc_every:
                runs.append(("qc", f"{rng.gauss(5.5, 0.15):.1f}", "1"))
            runs.append(("patient", f"{rng.gauss(5.8, 1.4):.1f}", ""))
            for kind, value, level in runs:
                try:
                    measurement = device.measure(
                        value,
                        operator=args.operator,
                        patient_id="" if level else f"PAT{rng.randint(1, 500):05d}",
                        qc_level=level,
                        qc_lot="QC-LOT-1" if level else "",
                    )
                except MeasurementRefused as exc:
                    _emit(test=number, kind=kind, refused=exc.reason)
                    continue
                answer = await measurement.wait(timeout=60)
                accepted += kind == "patient" and answer.accepted
                _emit(
                    test=number,
                    kind=kind,
                    specimen=measurement.specimen_id,
                    value=value,
                    ack=answer.type,
                    note=answer.note or None,
                )
        _emit(
            summary={
                "tests": args.generate,
                "accepted": accepted,
                "connections": device.connections,
            }
        )
        if args.stay:
            await asyncio.Event().wait()  # obey directives until Ctrl-C cancels us
    finally:
        await device.close()
    return 0 if accepted == args.generate else 1
