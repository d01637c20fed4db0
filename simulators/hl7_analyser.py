"""A simulated HL7 analyser: results (OUL^R22 or ORU^R01) and work-order queries over MLLP.

It plays an IHE LAW analyser (LAB-29 results, LAB-27 queries) or a plain ORU^R01 one, as the
MLLP client (it connects to labgate's port) or as the server (labgate connects to it), in
clear or over TLS (with a client certificate for mutual TLS, see `simulators.tls`).

`send(message)` waits for the answer (ACK, ORL or RSP) and returns its acknowledgement. Every
message the peer sent is in `received`.

Orders (IHE LAW LAB-28): labgate pushes OML^O33 or ORM^O01 either on the results connection or,
the LAW way, to the analyser's own order listener (`start_order_listener`, an MLLP server; TLS
optional). Either way each is kept in `orders_received` and answered ORL^O34 (ACK for an ORM) with
`order_ack`, or with the codes of `order_acks` first; ``"none"`` leaves it unanswered, as an
analyser that lost it would.

Quirks seen on real analysers, for labgate's tolerance tests: LF instead of CR between
segments (`lf_separators`), OBX-1 counted from 0 (`obx_from_zero`), and a QC specimen
(`qc`: SPM-11 ``Q``, no PID).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import ssl as _ssl
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime

from protocols.errors import RemoteProtocolError
from protocols.hl7 import (
    ACK_CODES,
    Ack,
    MessageHeader,
    MllpFramer,
    ObservationOut,
    OrderOut,
    PatientOut,
    build_ack,
    build_oru_r01,
    message_control_id,
    mllp_frame,
)
from protocols.hl7.orders_in import InboundOrders, parse_order_message, parse_rsp_k11
from protocols.hl7.outbound import build_orl, build_oul_r22, build_qbp_q11, read_answer
from simulators.analyser import demo_results

__all__ = ["NO_ANSWER", "Hl7AnalyserSimulator"]

#: An `order_ack` (or `order_acks` entry) that leaves the order unanswered.
NO_ANSWER = "none"


def _message_type(message: bytes) -> bytes:
    """MSH-9.1 (``OML``, ``ORM``...), read from the MSH line alone; b"" if there is none."""
    header = message.split(b"\r", 1)[0].split(b"\n", 1)[0]
    if not header.startswith(b"MSH") or len(header) < 5:
        return b""
    fields = header.split(header[3:4])
    return fields[8].split(header[4:5], 1)[0].strip().upper() if len(fields) > 8 else b""


class Hl7AnalyserSimulator:
    """One HL7 analyser connection to labgate.

    `mode` ``"client"`` connects to `host:port` (`connect()`); ``"server"`` listens there
    (`start()` returns the port) and talks to the first connection labgate opens. `ssl` is
    the context for either side; `server_hostname` the name to check in client mode
    (default: `host`). `kind` is ``"OUL"`` (OUL^R22) or ``"ORU"`` (ORU^R01).
    `order_ack`, `order_acks`, `order_ack_text` and `on_order` concern the orders labgate
    pushes (see the module docstring); `on_order(message, code)` is called for each.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        mode: str = "client",
        ssl: _ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        kind: str = "OUL",
        lf_separators: bool = False,
        obx_from_zero: bool = False,
        qc: bool = False,
        ack_timeout: float = 10.0,
        name: str = "SIM-HL7",
        seed: int | None = None,
        order_ack: str = "AA",
        order_acks: Sequence[str] = (),
        order_ack_text: str = "order refused by the simulated analyser",
        on_order: Callable[[bytes, str], None] | None = None,
    ) -> None:
        if mode not in ("client", "server"):
            raise ValueError(f"mode must be client or server, not {mode!r}")
        if kind not in ("OUL", "ORU"):
            raise ValueError(f"kind must be OUL or ORU, not {kind!r}")
        if qc and kind != "OUL":
            raise ValueError("a QC specimen (SPM-11 Q) needs OUL^R22")
        for code in (order_ack, *order_acks):
            if code != NO_ANSWER and code not in ACK_CODES:
                raise ValueError(f"an order answer is one of {sorted(ACK_CODES)} or {NO_ANSWER!r}")
        self.host, self.port, self.mode, self.ssl = host, port, mode, ssl
        self.server_hostname = server_hostname
        self.kind = kind
        self.lf_separators, self.obx_from_zero, self.qc = lf_separators, obx_from_zero, qc
        self.ack_timeout = ack_timeout
        self.name = name
        self.received: list[bytes] = []  #: every message the peer sent, in order
        self.orders_received: list[bytes] = []  #: orders (any unsolicited message), in order
        self.order_answers: list[str] = []  #: the code each got, or NO_ANSWER
        self.acks: list[Ack] = []  #: answers to what `send` sent
        self.order_ack = order_ack
        self.order_acks = list(order_acks)
        self.order_ack_text = order_ack_text
        self.on_order = on_order
        self._order_server: asyncio.Server | None = None
        self._order_writers: set[asyncio.StreamWriter] = set()
        self._rng = random.Random(seed)
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._pending: dict[str, asyncio.Future[Ack]] = {}

    # --- connection ----------------------------------------------------------------------

    async def connect(self, timeout: float = 10.0) -> None:
        """Client mode: open the connection to labgate (OSError, TimeoutError)."""
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                self.host,
                self.port,
                ssl=self.ssl,
                server_hostname=(self.server_hostname or self.host) if self.ssl else None,
            )
        self._attach(reader, writer)

    async def start(self) -> int:
        """Server mode: listen; returns the bound port. Labgate's connection is awaited lazily."""
        self._server = await asyncio.start_server(self._accept, self.host, self.port, ssl=self.ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:  # one analyser, one connection
            writer.close()
            return
        self._attach(reader, writer)

    def _attach(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._connected.set()
        self._reader_task = asyncio.create_task(self._read(reader, writer))

    async def start_order_listener(
        self, host: str = "127.0.0.1", port: int = 0, *, ssl: _ssl.SSLContext | None = None
    ) -> int:
        """Listen for labgate's orders (LAW: the sender connects); returns the bound port."""
        self._order_server = await asyncio.start_server(self._serve_orders, host, port, ssl=ssl)
        return int(self._order_server.sockets[0].getsockname()[1])

    async def _serve_orders(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._order_writers.add(writer)
        framer = MllpFramer()
        try:
            while data := await reader.read(65536):
                framer.receive_data(data)
                while True:
                    try:
                        payload = framer.next_message()
                    except RemoteProtocolError:
                        continue
                    if payload is None:
                        break
                    self.received.append(payload)
                    answer = self._answer_order(payload)
                    if answer is not None:
                        writer.write(mllp_frame(answer))
                        await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._order_writers.discard(writer)
            writer.close()

    def _answer_order(self, payload: bytes) -> bytes | None:
        """Keep an order and build its answer (None: the order stays unanswered)."""
        code = self.order_acks.pop(0) if self.order_acks else self.order_ack
        self.orders_received.append(payload)
        self.order_answers.append(code)
        if self.on_order is not None:
            self.on_order(payload, code)
        if code == NO_ANSWER:
            return None
        text = "" if code in ("AA", "CA") else self.order_ack_text
        now = datetime.now(UTC)
        try:
            if _message_type(payload) == b"OML":
                return build_orl(payload, code, self._control_id(), now, text)
            return build_ack(payload, code, self._control_id(), now, text)
        except RemoteProtocolError:
            return None

    def received_orders(self) -> list[InboundOrders]:
        """`orders_received`, read (protocols.hl7.orders_in.parse_order_message)."""
        return [parse_order_message(message) for message in self.orders_received]

    async def close(self) -> None:
        """Close the connection (and the server in server mode, and the order listener)."""
        if self._order_server is not None:
            self._order_server.close()
            for writer in list(self._order_writers):
                writer.close()
            await self._order_server.wait_closed()
            self._order_server = None
        if self._server is not None:
            self._server.close()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = MllpFramer()
        failure: Exception = ConnectionError("labgate closed the connection")
        try:
            while data := await reader.read(65536):
                framer.receive_data(data)
                while True:
                    try:
                        payload = framer.next_message()
                    except RemoteProtocolError:
                        continue
                    if payload is None:
                        break
                    self._dispatch(payload, writer)
        except (ConnectionError, OSError) as exc:
            failure = exc
        finally:
            self._writer = None
            self._connected.clear()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(failure)

    def _dispatch(self, payload: bytes, writer: asyncio.StreamWriter) -> None:
        self.received.append(payload)
        try:
            answer = read_answer(payload)
        except RemoteProtocolError:
            answer = None
        if answer is not None:
            future = self._pending.get(answer.acknowledged_control_id)
            if future is not None and not future.done():
                future.set_result(answer)
            return
        # Not an answer: an order (or anything else) labgate sent on this connection.
        reply = self._answer_order(payload)
        if reply is not None:
            writer.write(mllp_frame(reply))

    # --- messages ------------------------------------------------------------------------

    def _control_id(self) -> str:
        return f"{self.name}-{next(self._ids):06d}"

    def _header(self) -> MessageHeader:
        return MessageHeader(
            self.name, "LAB", "labgate", "LAB", self._control_id(), datetime.now(UTC)
        )

    def _apply_quirks(self, message: bytes) -> bytes:
        if self.obx_from_zero:
            lines = message.split(b"\r")
            for index, line in enumerate(lines):
                if line.startswith(b"OBX|"):
                    fields = line.split(b"|")
                    fields[1] = str(int(fields[1]) - 1).encode()
                    lines[index] = b"|".join(fields)
            message = b"\r".join(lines)
        if self.lf_separators:
            message = message.replace(b"\r", b"\n")
        return message

    def results_message(
        self, specimen_id: str, patient_id: str = "PAT00001", count: int = 5
    ) -> bytes:
        """A generated results message (`kind`, quirks applied), values from `demo_results`."""
        now = datetime.now(UTC)
        observations = tuple(
            ObservationOut(
                set_id=number,
                code=result.code,
                value=result.value,
                units=result.units,
                reference_range=result.reference_range.replace(" to ", "-"),
                abnormal_flags=(result.flag,),
                observed_at=now,
                producer=self.name,
            )
            for number, result in enumerate(demo_results(count, self._rng), start=1)
        )
        order = OrderOut(specimen_id, "CHEM", "Chemistry", now, observations, "SER")
        patient = PatientOut(patient_id, "DUPONT", "MARIE", date(1980, 1, 1), "F", (order,))
        if self.kind == "OUL":
            message = build_oul_r22(self._header(), [patient], specimen_role="Q" if self.qc else "")
        else:
            message = build_oru_r01(self._header(), [patient])
        return self._apply_quirks(message)

    async def send(self, message: bytes) -> Ack:
        """Send one message and wait for its answer (matched on MSA-2 = its MSH-10).

        Raises TimeoutError after `ack_timeout` s (waiting for labgate's connection included,
        in server mode), ConnectionError (or an `ssl.SSLError`) when the connection ends first.
        """
        control_id = message_control_id(message)
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._pending[control_id] = future
        try:
            async with asyncio.timeout(self.ack_timeout):
                await self._connected.wait()
                assert self._writer is not None
                self._writer.write(mllp_frame(message))
                await self._writer.drain()
                ack = await future
        finally:
            self._pending.pop(control_id, None)
        self.acks.append(ack)
        return ack

    async def send_results(
        self, specimen_id: str, patient_id: str = "PAT00001", count: int = 5
    ) -> Ack:
        """Generate one results message (see `results_message`) and `send` it."""
        return await self.send(self.results_message(specimen_id, patient_id, count))

    async def query(self, specimen_id: str, query_tag: str | None = None) -> InboundOrders:
        """Ask for the work order of `specimen_id` (QBP^Q11) and read the RSP^K11 answer
        (`protocols.hl7.orders_in.parse_rsp_k11`: `query_status`, `query_tag`, `orders`).

        Raises RemoteProtocolError when the answer is not an RSP^K11 (an ACK refusing the
        query, say), besides what `send` raises.
        """
        header = self._header()
        tag = query_tag or f"Q{header.control_id}"
        message = self._apply_quirks(build_qbp_q11(header, tag, specimen_id))
        ack = await self.send(message)
        return parse_rsp_k11(ack.raw)
