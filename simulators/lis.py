"""A simulated LIS: an MLLP server that acknowledges HL7 results and keeps everything it got.

Results are ORU^R01 or IHE LAW OUL^R22, read by `protocols.hl7.inbound.parse_results_message`;
`ReceivedMessage.parsed` holds them as a flat `ParsedOru` (observations in specimen order).

Tests compare what it received with what the analyser sent; `make run` shows it filling a folder.
With `fast_ack=True` it answers from the MSH line alone (MSH-10 and the fields an ACK copies),
every message of one TCP read in one write, and reads the results only when a test asks for
them (`ReceivedMessage.parsed`): a LIS cheap enough for a throughput benchmark to measure the
sender rather than the simulator.

Faults for tests: answer AE/AR instead of AA (always, or for the next answers in `ack_codes`),
answer late, say nothing at all, or drop the connection without answering (once, after
`drop_connection_after` messages).

It also plays the LIS side of orders: it answers an IHE LAW work-order query (QBP^Q11) with
RSP^K11 from `orders_for_query` (specimen id -> orders; NF when it has none), and
`send_orders` pushes OML^O33 or ORM^O01 orders to labgate as an MLLP client. With an
`ssl.SSLContext` (see `simulators.tls`) its server speaks MLLP over TLS.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl as _ssl
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from protocols.errors import RemoteProtocolError
from protocols.hl7 import (
    Ack,
    MessageHeader,
    MllpFramer,
    ParsedObservation,
    ParsedOru,
    build_ack,
    message_control_id,
    mllp_frame,
)
from protocols.hl7._er7 import format_ts, msh_field, msh_fields
from protocols.hl7.inbound import InboundResults, parse_results_message
from protocols.hl7.orders_in import InboundQuery, parse_qbp_q11
from protocols.hl7.outbound import (
    OrderSpec,
    build_oml_o33,
    build_orm_o01,
    build_rsp_k11,
    read_answer,
)

__all__ = ["LisSimulator", "ReceivedMessage"]


def _as_parsed_oru(results: InboundResults) -> ParsedOru:
    """A results message (ORU^R01 or OUL^R22) as the flat `ParsedOru` tests compare against.

    Observations come specimen by specimen (as `InboundResults.observations`); the
    producer is OBX-18 (equipment instance identifier).
    """
    return ParsedOru(
        control_id=results.control_id,
        sending_application=results.sending_application,
        sending_facility=results.sending_facility,
        receiving_application=results.receiving_application,
        receiving_facility=results.receiving_facility,
        created_at=results.created_at,
        version=results.version,
        observations=tuple(
            ParsedObservation(
                patient_id=specimen.patient.patient_id,
                specimen_id=specimen.specimen_id,
                code=obs.code,
                value=obs.value,
                units=obs.units,
                reference_range=obs.reference_range,
                abnormal_flags=obs.abnormal_flags,
                status=obs.status,
                producer=obs.equipment,
                notes=obs.notes,
                set_id=obs.set_id,
                text=obs.text,
                coding_system=obs.coding_system,
                value_type=obs.value_type,
                observed_at=obs.observed_at,
                test_code=obs.test_code,
            )
            for specimen in results.specimens
            for obs in specimen.observations
        ),
    )


class ReceivedMessage:
    """One message as the simulated LIS got it, with what it answered.

    `parsed` (the results, None when unreadable) and `error` (why not) are read from `raw`
    when first asked for if the message was only acknowledged from its MSH (`fast_ack`).
    """

    __slots__ = (
        "_error",
        "_parsed",
        "_unread",
        "ack_code",
        "answer",
        "query",
        "raw",
        "received_at",
    )

    def __init__(
        self,
        raw: bytes,
        parsed: ParsedOru | None,
        error: str | None,
        received_at: datetime,
        ack_code: str | None,
        query: InboundQuery | None = None,
        answer: bytes | None = None,
        *,
        unread: bool = False,
    ) -> None:
        self.raw = raw
        self._parsed = parsed
        self._error = error
        self._unread = unread
        self.received_at = received_at
        self.ack_code = ack_code
        self.query = query  #: set for a QBP^Q11 (answered with RSP^K11)
        self.answer = answer  #: what was sent back (ACK or RSP), None if nothing

    @property
    def parsed(self) -> ParsedOru | None:
        self._read()
        return self._parsed

    @property
    def error(self) -> str | None:
        self._read()
        return self._error

    def _read(self) -> None:
        if self._unread:
            self._unread = False
            self._parsed, self._error = _read_results(self.raw)

    def __repr__(self) -> str:
        control = message_control_id(self.raw) if self.raw.lstrip().startswith(b"MSH") else "?"
        return f"<ReceivedMessage {control} ack={self.ack_code}>"


def _read_results(message: bytes) -> tuple[ParsedOru | None, str | None]:
    try:
        return _as_parsed_oru(parse_results_message(message)), None
    except RemoteProtocolError as exc:
        return None, str(exc)


def _has_msh(message: bytes) -> bool:
    try:
        msh_fields(message)
    except RemoteProtocolError:
        return False
    return True


def _ack_fields(message: bytes) -> list[bytes] | None:
    """The raw MSH fields of `message` if an ACK can copy them as they are: the standard
    delimiters ``|^~\\&`` and an MSH-10 (else None: `build_ack` must re-encode them)."""
    try:
        fields = msh_fields(message)
    except RemoteProtocolError:
        return None
    standard = fields[1] == b"^~\\&" and message.lstrip(b"\x0b \t\r\n")[3:4] == b"|"
    return fields if standard and msh_field(fields, 10) else None


def _quick_ack(fields: list[bytes], code: str, control_id: str, timestamp: str) -> bytes:
    """The ACK `build_ack` sends, from the raw MSH `fields` (see `_ack_fields`) of the message
    it answers. The copied fields stay in the message's own character set, as `build_ack`
    encodes them."""
    trigger = msh_field(fields, 9).split(b"^")[1:2]
    msh = b"|".join(
        (
            b"MSH|^~\\&",
            msh_field(fields, 5),  # 3: whom it was sent to
            msh_field(fields, 6),
            msh_field(fields, 3),  # 5: who sent it
            msh_field(fields, 4),
            timestamp.encode(),  # 7
            b"",
            b"ACK^" + (trigger[0] if trigger else b"") + b"^ACK",  # 9
            control_id.encode(),
            msh_field(fields, 11) or b"P",
            msh_field(fields, 12),
            b"",
            b"",
            b"",
            b"",
            b"",
            msh_field(fields, 18).split(b"~")[0],  # 18
        )
    ).rstrip(b"|")
    return b"%s\rMSA|%s|%s\r" % (msh, code.encode(), msh_field(fields, 10))


class LisSimulator:
    """MLLP server on 127.0.0.1. `ack_code`, `ack_delay`, `silent`, `ack_codes` and
    `drop_connection_after` may be changed at any time.

    - `ack_codes`: codes for the next answers, in order (say ``["AE", "AE"]``: two errors);
      once they are used up, every answer is `ack_code`.
    - `drop_connection_after`: the message after that many received messages (counted from the
      start, over every connection) gets no answer: its connection is closed instead. Once: the
      setting then goes back to None. The message is kept in `received` with ``ack_code=None``.
    - `on_message` is called with every `ReceivedMessage` (the CLI prints them).
    - `orders_for_query`: specimen id -> orders; a QBP^Q11 for a specimen listed there is
      answered RSP^K11 ``OK`` with its orders, any other ``NF``. Queries are kept in `received`
      (with `query` set) but are not `delivered`.
    - `ssl`: serve MLLP over TLS with this context (`simulators.tls.server_context`).
    - `fast_ack`: answer from the MSH line only (see the module docstring): AA (or the fault
      settings' code) to any message with a readable MSH, AR without one; results are read
      only when `ReceivedMessage.parsed` is asked for. Every fault above still applies;
      `ack_delay` is waited once per TCP read.
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
        ssl: _ssl.SSLContext | None = None,
        orders_for_query: Mapping[str, Sequence[OrderSpec]] | None = None,
        fast_ack: bool = False,
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
        self.ssl = ssl
        self.orders_for_query: dict[str, Sequence[OrderSpec]] = dict(orders_for_query or {})
        self.sent_orders: list[bytes] = []  #: order messages `send_orders` delivered
        self.fast_ack = fast_ack
        self._delivered = 0  # len(self.delivered), kept so that wait_for stays O(1)
        self._server: asyncio.Server | None = None
        self._arrived = asyncio.Condition()
        self._ids = itertools.count(1)
        self._connections: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Start listening; returns the bound port."""
        if self.received_dir:
            self.received_dir.mkdir(parents=True, exist_ok=True)
        self._server = await asyncio.start_server(self._serve, self.host, self.port, ssl=self.ssl)
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
        """Messages (not queries) this LIS acknowledged with AA."""
        return [m for m in self.received if m.ack_code == "AA" and m.query is None]

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Wait until at least `count` messages were acknowledged with AA."""
        async with asyncio.timeout(timeout):
            async with self._arrived:
                await self._arrived.wait_for(lambda: self._delivered >= count)
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
                    if self.fast_ack:
                        if not await self._answer_quickly(framer, writer):
                            return
                        continue
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
        query: InboundQuery | None = None
        if b"QBP^Q11" in message.lstrip()[:200].split(b"\r", 1)[0]:  # cheap: MSH line only
            try:
                query = parse_qbp_q11(message)
            except RemoteProtocolError:
                pass  # answered AR as any unreadable message
        if query is not None:
            await self._answer_query(message, query, writer, now)
            return True
        parsed, error = _read_results(message)
        code, drop = self._decide(error is None)
        if self.ack_delay and not drop:
            await asyncio.sleep(self.ack_delay)
        if drop:
            writer.transport.abort()
        ack: bytes | None = None
        if not drop and code is not None:
            ack = build_ack(message, code, f"LIS{next(self._ids):06d}", now, text=error or "")
            writer.write(mllp_frame(ack))
            await writer.drain()
        record = ReceivedMessage(message, parsed, error, now, code, answer=ack)
        await self._record(record)
        return not drop

    def _decide(self, readable: bool, unrecorded: int = 0) -> tuple[str | None, bool]:
        """(the code to answer or None for silence, whether to drop the connection instead)
        for the next message, from the fault settings; `unrecorded` messages were received
        before it but are not in `received` yet."""
        if self.drop_connection_after is not None and (
            len(self.received) + unrecorded >= self.drop_connection_after
        ):
            self.drop_connection_after = None
            self.dropped_connections += 1
            return None, True
        if self.silent:
            return None, False
        if not readable:
            return "AR", False
        return (self.ack_codes.popleft() if self.ack_codes else self.ack_code), False

    async def _answer_quickly(self, framer: MllpFramer, writer: asyncio.StreamWriter) -> bool:
        """Answer every complete message `framer` holds in one write (`fast_ack`); False if
        the connection was dropped instead (a fault)."""
        now = datetime.now(UTC)
        timestamp = format_ts(now)
        answers: list[bytes] = []
        records: list[ReceivedMessage] = []
        dropped = False
        while (message := framer.next_message()) is not None:
            if b"QBP^Q11" in message.lstrip()[:200].split(b"\r", 1)[0]:
                await self._flush(answers, records, writer)  # the query's answer comes after
                if not await self._answer(message, writer):
                    return False
                continue
            fields = _ack_fields(message)
            readable = fields is not None or _has_msh(message)
            code, dropped = self._decide(readable, len(records))
            if dropped:
                records.append(ReceivedMessage(message, None, None, now, None, unread=True))
                break
            ack: bytes | None = None
            if code is not None and readable:
                control_id = f"LIS{next(self._ids):06d}"
                if fields is not None:
                    ack = _quick_ack(fields, code, control_id, timestamp)
                else:  # other delimiters, or no MSH-10: as the full path answers it
                    ack = build_ack(message, code, control_id, now)
                answers.append(mllp_frame(ack))
            answered = code if ack is not None else None  # no MSH: nothing could be sent
            records.append(
                ReceivedMessage(message, None, None, now, answered, None, ack, unread=True)
            )
        if self.ack_delay and answers:
            await asyncio.sleep(self.ack_delay)
        await self._flush(answers, records, writer)
        if dropped:
            writer.transport.abort()
        return not dropped

    async def _flush(
        self, answers: list[bytes], records: list[ReceivedMessage], writer: asyncio.StreamWriter
    ) -> None:
        if answers:
            writer.write(b"".join(answers))
            answers.clear()
            await writer.drain()
        if records:
            for record in records:
                self._keep(record)
            records.clear()
            async with self._arrived:  # once for the lot
                self._arrived.notify_all()

    async def _record(self, record: ReceivedMessage) -> None:
        self._keep(record)
        async with self._arrived:
            self._arrived.notify_all()

    def _keep(self, record: ReceivedMessage) -> None:
        if self.received_dir:
            control = message_control_id(record.raw) or "unknown"
            name = f"{len(self.received) + 1:06d}-{control}.hl7"
            (self.received_dir / name).write_bytes(record.raw.replace(b"\r", b"\r\n"))
        self.received.append(record)
        if record.ack_code == "AA" and record.query is None:
            self._delivered += 1
        if self.on_message is not None:
            self.on_message(record)

    async def _answer_query(
        self, message: bytes, query: InboundQuery, writer: asyncio.StreamWriter, now: datetime
    ) -> None:
        """Answer a work-order query with RSP^K11: OK with the orders known for its specimens
        (all of them, in the query's order), else NF."""
        orders = tuple(o for sid in query.specimen_ids for o in self.orders_for_query.get(sid, ()))
        if self.ack_delay:
            await asyncio.sleep(self.ack_delay)
        answer: bytes | None = None
        if not self.silent:
            answer = build_rsp_k11(
                message,
                orders,
                f"LIS{next(self._ids):06d}",
                now,
                status="OK" if orders else "NF",
            )
            writer.write(mllp_frame(answer))
            await writer.drain()
        code = "AA" if answer is not None else None
        await self._record(ReceivedMessage(message, None, None, now, code, query, answer))

    async def send_orders(
        self,
        host: str,
        port: int,
        orders: Sequence[OrderSpec],
        *,
        kind: str = "OML",
        ssl: _ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        timeout: float = 10.0,
    ) -> list[Ack]:
        """Push `orders` to labgate at `host:port` as an MLLP client; return its answers.

        One message per order (`kind` ``"OML"``: OML^O33, ``"ORM"``: ORM^O01), each sent once
        the previous one was answered (ACK, or ORL^O34 for OML). Raises `TimeoutError` when an
        answer takes longer than `timeout` s, `ConnectionError` when labgate closes first,
        `OSError` when it cannot be reached.
        """
        builders = {"OML": build_oml_o33, "ORM": build_orm_o01}
        if kind not in builders:
            raise ValueError(f"kind must be OML or ORM, not {kind!r}")
        build = builders[kind]
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host,
                port,
                ssl=ssl,
                server_hostname=server_hostname if ssl is not None else None,
            )
        framer = MllpFramer()
        answers: list[Ack] = []
        try:
            for order in orders:
                header = MessageHeader(
                    "LIS", "LAB", "labgate", "LAB", f"LISO{next(self._ids):06d}", datetime.now(UTC)
                )
                message = build(header, [order])
                writer.write(mllp_frame(message))
                await writer.drain()
                async with asyncio.timeout(timeout):
                    while (payload := framer.next_message()) is None:
                        data = await reader.read(65536)
                        if not data:
                            raise ConnectionError("labgate closed the connection before answering")
                        framer.receive_data(data)
                answers.append(read_answer(payload))
                self.sent_orders.append(message)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        return answers
