"""Orders pushed to an HL7 analyser (IHE LAW LAB-28): OML^O33, or ORM^O01 for older analysers.

The orders the LIS addressed to an analyser (`lis.orders.download_to`) wait in the store as
`pending`. For an HL7 analyser with an `orders` section, one `Hl7OrderPusher` sends them:

    pending_downloads(analyser), oldest first
      └─ one message per order (one specimen, one action: ORC-1 NW, or CA for a cancellation)
           ├─ answered AA (ORL^O34 for OML, ACK for ORM)  -> mark_orders_sent
           ├─ answered AE / AR                              -> mark_orders_refused(reason), logged;
           │                                                   the next order goes on
           └─ no answer in `ack_timeout`, an unreadable one,
              no connection                                 -> stop there: the same bytes (same
                                                               MSH-10) again after a backoff,
                                                               never marked sent

Orders keep their order: a later order (a cancellation, say) never overtakes one left
unanswered. The pusher wakes when the LIS's orders arrive (`wake`, called by the gateway
through `Hl7Session.orders_waiting`), when a retry falls due, and at start (orders left
pending by a restart).

Where the messages go (`orders.connection`):

- `order-port` (the IHE LAW way: the sender of a message owns its MLLP connection): labgate
  is an MLLP client of the analyser's order listener, a connection of its own, kept open
  between messages and closed after any failure, so that a late answer can never be taken
  for the next message's; TLS optional.
- `results`: the connection the analyser already has with labgate for its results carries
  the orders too; answers (ACK, ORL) are told from the analyser's own messages by their
  MSH-9 and matched on MSA-2, and never acknowledged in turn.

The first part of this module is plain functions (no I/O, no clock): the message for an
order, what an answer means. The asyncio part around them is thin.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal, Protocol

import structlog

from drivers.models import Order
from middleware.config.settings import Hl7InstrumentSettings, Hl7OrdersSettings
from middleware.health import ConnectionHealth, Health
from middleware.io.tls import client_context
from middleware.lis.sender import backoff_delay
from middleware.store import Store, StoreUnavailable
from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.hl7 import (
    MessageHeader,
    MllpFramer,
    OrderPatient,
    OrderSpec,
    build_oml_o33,
    build_orm_o01,
    mllp_frame,
    parse_answer,
)

__all__ = [
    "Hl7OrderPusher",
    "NoAnswer",
    "OrderPortLink",
    "PushOutcome",
    "ResultsConnectionLink",
    "build_order_message",
    "is_answer",
    "judge_answer",
    "order_spec",
]

log = structlog.get_logger("labgate.hl7.orders")

#: MSH-9 message types that answer a message (and are never answered in turn).
_ANSWER_TYPES = frozenset({b"ACK", b"ORL", b"ORR"})


# --- no I/O: messages and answers -------------------------------------------------------


def order_spec(order: Order) -> OrderSpec:
    """The HL7 order for a stored one; LocalProtocolError when HL7 cannot carry it (no test).

    The priority is kept when it is routine, stat or ASAP (else routine); the action is
    ``C`` (ORC-1 ``CA``) for a cancellation, ``N`` (``NW``) otherwise; the patient goes to
    PID only when the order names one.
    """
    patient = order.patient
    return OrderSpec(
        specimen_id=order.specimen_id,
        tests=tuple(order.tests),
        patient=OrderPatient(
            patient.patient_id,
            patient.family_name,
            patient.given_name,
            patient.birth_date,
            patient.sex,
        )
        if patient.patient_id
        else None,
        priority=order.priority if order.priority in {"R", "S", "A"} else "R",
        action="C" if order.action == "C" else "N",
        collected_at=order.collected_at,
    )


def build_order_message(
    order: Order, message_type: Literal["OML^O33", "ORM^O01"], header: MessageHeader
) -> bytes:
    """One order as an OML^O33 (LAB-28) or ORM^O01; LocalProtocolError when it cannot be."""
    spec = order_spec(order)
    if message_type == "ORM^O01":
        return build_orm_o01(header, [spec])
    return build_oml_o33(header, [spec])


@dataclass(frozen=True, slots=True)
class PushOutcome:
    """What an answer to a pushed order means.

    ``sent``: the analyser took the order (AA, or CA in enhanced mode); ``refused``: it said
    AE/AR/CE/CR, sending it again would not help, ``reason`` says why; ``retry``: nothing
    usable came back (an unreadable answer, one for another message), so it goes again.
    """

    outcome: Literal["sent", "refused", "retry"]
    reason: str = ""
    ack_code: str = ""


def judge_answer(answer: bytes, control_id: str) -> PushOutcome:
    """Read the analyser's answer to the message whose MSH-10 is ``control_id``."""
    try:
        ack = parse_answer(answer)
    except RemoteProtocolError as exc:
        return PushOutcome("retry", f"unreadable answer: {exc}")
    if ack.acknowledged_control_id != control_id:
        return PushOutcome(
            "retry",
            f"answer for {ack.acknowledged_control_id!r}, expected {control_id!r}",
            ack.code,
        )
    if ack.accepted:
        return PushOutcome("sent", ack_code=ack.code)
    return PushOutcome("refused", f"{ack.code}: {ack.text or 'no reason given'}", ack.code)


def is_answer(message: bytes) -> bool:
    """True when MSH-9 says ACK, ORL or ORR: an answer, told without a full parse."""
    header = message.lstrip(b"\x0b \t\r\n").split(b"\r", 1)[0].split(b"\n", 1)[0]
    if not header.startswith(b"MSH") or len(header) < 4:
        return False
    fields = header.split(header[3:4])
    if len(fields) <= 8:
        return False
    component = header[4:5] or b"^"
    return fields[8].split(component, 1)[0].strip().upper() in _ANSWER_TYPES


# --- links: where the messages go ---------------------------------------------------------


class NoAnswer(Exception):
    """The message got no answer: no connection, a lost one, or silence past the timeout."""


class OrderLink(Protocol):
    """Sends one message and returns the analyser's answer (raises NoAnswer)."""

    async def exchange(self, message: bytes, control_id: str, timeout: float) -> bytes: ...

    async def reset(self) -> None:
        """Forget the connection after a failure (a late answer must not be read later)."""

    async def close(self) -> None: ...


class OrderPortLink:
    """labgate as the MLLP client of the analyser's order listener (LAW: the sender connects)."""

    def __init__(self, settings: Hl7OrdersSettings, name: str, health: Health) -> None:
        self.settings = settings
        self.name = name
        self.health = health
        self._tls: ssl.SSLContext | None = (
            client_context(settings.tls) if settings.tls is not None else None
        )
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._framer = MllpFramer()

    async def exchange(self, message: bytes, control_id: str, timeout: float) -> bytes:
        try:
            reader, writer = await self._connect()
            writer.write(mllp_frame(message))
            await writer.drain()
            async with asyncio.timeout(timeout):
                while (answer := self._framer.next_message()) is None:
                    data = await reader.read(65536)
                    if not data:
                        raise ConnectionError("the analyser closed the connection")
                    self._framer.receive_data(data)
        except TimeoutError:
            await self.reset()
            raise NoAnswer(f"no answer within {timeout:g} s") from None
        except (OSError, ConnectionError, RemoteProtocolError) as exc:
            await self.reset()
            raise NoAnswer(f"order link failed: {exc or type(exc).__name__}") from None
        return answer

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = self._reader, self._writer
        if reader is not None and writer is not None:
            if not writer.is_closing() and not reader.at_eof():
                return reader, writer
            await self.reset()  # the analyser hung up while idle: open a fresh connection
        settings = self.settings
        assert settings.port is not None  # checked by Hl7OrdersSettings
        tls = settings.tls
        try:
            async with asyncio.timeout(settings.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    settings.host,
                    settings.port,
                    ssl=self._tls,
                    server_hostname=(tls.server_hostname or settings.host) if tls else None,
                )
        except TimeoutError:
            raise ConnectionError(f"cannot connect within {settings.connect_timeout:g} s") from None
        self._reader, self._writer, self._framer = reader, writer, MllpFramer()
        self.health.set_state(self.name, "connected")
        log.info("order_link_connected", address=f"{settings.host}:{settings.port}")
        return reader, writer

    async def reset(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is None:
            return
        self.health.set_state(self.name, "disconnected")
        writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await writer.wait_closed()

    async def close(self) -> None:
        await self.reset()


@dataclass(slots=True)
class _Connection:
    writer: asyncio.StreamWriter
    lock: asyncio.Lock


class ResultsConnectionLink:
    """Orders on the connection the analyser has with labgate for its results.

    `serve` replaces the plain answer loop on that connection: the analyser's messages are
    handled and answered as usual, answers to pushed orders go to the waiting `exchange`.
    Writes of both directions share one lock so MLLP blocks never interleave.
    """

    def __init__(self, on_connected: Callable[[], None] = lambda: None) -> None:
        self.on_connected = on_connected
        self._current: _Connection | None = None
        self._waiting: dict[str, asyncio.Future[bytes]] = {}

    async def serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handle: Callable[[bytes], Awaitable[bytes]],
        on_refused: Callable[[RemoteProtocolError], None],
        max_message: int = 1_048_576,
    ) -> None:
        """Serve one connection until the analyser closes it (the latest one carries orders)."""
        connection = _Connection(writer, asyncio.Lock())
        self._current = connection
        self.on_connected()
        framer = MllpFramer(max_message=max_message)
        try:
            while data := await reader.read(65536):
                framer.receive_data(data)
                while True:
                    try:
                        message = framer.next_message()
                    except RemoteProtocolError as exc:
                        on_refused(exc)
                        continue
                    if message is None:
                        break
                    if is_answer(message):
                        self._answered(message)
                        continue
                    answer = await handle(message)
                    async with connection.lock:
                        writer.write(mllp_frame(answer))
                        await writer.drain()
        finally:
            if self._current is connection:
                self._current = None
                for future in self._waiting.values():
                    if not future.done():
                        future.set_exception(NoAnswer("the analyser closed the connection"))

    def _answered(self, message: bytes) -> None:
        try:
            control_id = parse_answer(message).acknowledged_control_id
        except RemoteProtocolError as exc:
            log.warning("unreadable_answer_ignored", reason=str(exc))
            return
        future = self._waiting.get(control_id)
        if future is None or future.done():
            log.warning("stray_answer_ignored", acknowledged=control_id)
            return
        future.set_result(message)

    async def exchange(self, message: bytes, control_id: str, timeout: float) -> bytes:
        connection = self._current
        if connection is None:
            raise NoAnswer("the analyser is not connected")
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[control_id] = future
        try:
            async with asyncio.timeout(timeout):
                async with connection.lock:
                    connection.writer.write(mllp_frame(message))
                    await connection.writer.drain()
                return await future
        except TimeoutError:
            raise NoAnswer(f"no answer within {timeout:g} s") from None
        except (OSError, ConnectionError) as exc:
            raise NoAnswer(f"connection failed: {exc or type(exc).__name__}") from None
        finally:
            self._waiting.pop(control_id, None)

    async def reset(self) -> None:
        """Nothing to forget: a late answer finds no waiting message and is ignored."""

    async def close(self) -> None:
        """The connection belongs to the session, which closes it."""


# --- the pusher ---------------------------------------------------------------------------


class Hl7OrderPusher:
    """Sends the orders waiting for one HL7 analyser, in order, each answered before the next.

    `connection` names the link in the health board and the trace: ``<instrument>-orders``
    for an order port (added to `health` here), the instrument's own name on the results
    connection.
    """

    def __init__(
        self,
        instrument: Hl7InstrumentSettings,
        store: Store,
        health: Health,
        *,
        sender: str = "LABGATE",
        link: OrderLink | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if instrument.orders is None:
            raise ValueError(f"instrument {instrument.name!r} has no orders section")
        self.instrument = instrument.name
        self.settings = instrument.orders
        self.store = store
        self.health = health
        self.sender = sender
        self._rng = rng or random.Random()
        if link is not None:
            self.link: OrderLink = link
            self.connection = instrument.name
        elif self.settings.connection == "results":
            self.link = ResultsConnectionLink(self.wake)
            self.connection = instrument.name
        else:
            self.connection = f"{instrument.name}-orders"
            tls = self.settings.tls
            health.add(
                ConnectionHealth(
                    self.connection,
                    "hl7",
                    "mllp-client+tls" if tls else "mllp-client",
                    f"{self.settings.host}:{self.settings.port}",
                )
            )
            self.link = OrderPortLink(self.settings, self.connection, health)
        self._wake = asyncio.Event()
        self._wake.set()  # orders left pending before a restart go at once
        # order id -> (MSH-10, bytes): an order sent again is the very same message.
        self._messages: dict[int, tuple[str, bytes]] = {}
        self._failures = 0

    def wake(self) -> None:
        """New orders may be waiting (or the analyser just connected): look now."""
        self._wake.set()

    async def run(self) -> None:
        """Push until cancelled."""
        with structlog.contextvars.bound_contextvars(
            instrument=self.instrument, connection=self.connection
        ):
            try:
                while True:
                    self._wake.clear()
                    retry_in = await self.push_pending()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(retry_in):
                            await self._wake.wait()
            finally:
                await self.link.close()

    async def push_pending(self) -> float | None:
        """Send what is pending, in order; the seconds until a retry, or None when all went."""
        store = self.store
        try:
            pending = await store.read(store.pending_downloads, self.instrument)
        except StoreUnavailable as exc:
            log.error("store_unavailable", error=str(exc))
            return self._backoff()
        live = {order_id for order_id, _ in pending}
        for order_id in set(self._messages) - live:  # cancelled before it could go
            del self._messages[order_id]
        for order_id, order in pending:
            with structlog.contextvars.bound_contextvars(order_id=order_id):
                if not await self._push(order_id, order):
                    return self._backoff()
        self._failures = 0
        return None

    def _backoff(self) -> float:
        self._failures += 1
        retry = self.settings.retry
        return backoff_delay(self._failures, retry.initial, retry.maximum, self._rng)

    def _message(self, order_id: int, order: Order) -> tuple[str, bytes]:
        known = self._messages.get(order_id)
        if known is None:
            control_id = "LGP" + uuid.uuid4().hex[:17].upper()
            header = MessageHeader(
                sending_application=self.sender,
                sending_facility="",
                receiving_application=self.settings.receiving_application or self.instrument,
                receiving_facility=self.settings.receiving_facility,
                control_id=control_id,
                created_at=datetime.now(UTC),
            )
            known = (control_id, build_order_message(order, self.settings.message_type, header))
            self._messages[order_id] = known
        return known

    async def _push(self, order_id: int, order: Order) -> bool:
        """One order to the analyser; False when it must be tried again later."""
        store, name = self.store, self.connection
        try:
            control_id, message = self._message(order_id, order)
        except LocalProtocolError as exc:
            if not await self._save(store.mark_orders_refused, [order_id], str(exc)):
                return False
            self.health.count(name, "errors")
            log.error("order_not_encodable", error=str(exc))
            return True
        if not await self._save(
            store.save_trace, name, "order_push", message, direction="out", detail=control_id
        ):
            return False
        try:
            answer = await self.link.exchange(message, control_id, self.settings.ack_timeout)
        except NoAnswer as exc:
            self.health.count(name, "errors")
            log.warning("order_push_unanswered", reason=str(exc), attempt=self._failures + 1)
            return False
        verdict = judge_answer(answer, control_id)
        if not await self._save(
            store.save_trace,
            name,
            "order_answer",
            answer,
            detail=verdict.ack_code or verdict.reason[:200],
        ):
            return False
        if verdict.outcome == "retry":
            await self.link.reset()
            self.health.count(name, "errors")
            log.warning("order_push_unanswered", reason=verdict.reason)
            return False
        if verdict.outcome == "refused":
            if not await self._save(store.mark_orders_refused, [order_id], verdict.reason):
                return False
            self._messages.pop(order_id, None)
            self.health.count(name, "errors")
            log.warning(
                "order_refused_by_analyser", ack_code=verdict.ack_code, reason=verdict.reason
            )
            return True
        if not await self._save(store.mark_orders_sent, [order_id], datetime.now(UTC)):
            return False
        self._messages.pop(order_id, None)
        log.info("order_pushed", ack_code=verdict.ack_code, action=order.action)
        await self._cancelled_meanwhile(order_id, order)
        return True

    async def _cancelled_meanwhile(self, order_id: int, order: Order) -> None:
        """The LIS cancelled this order while it was on its way: the analyser has it now, and
        the store (which only withdraws what is still pending) queued no cancel; queue one."""
        if order.action == "C":
            return
        store = self.store
        try:
            rows = await store.read(store.list_orders, order.specimen_id)
        except StoreUnavailable as exc:
            log.error("store_unavailable", error=str(exc))
            return
        if any(row["id"] == order_id and row["state"] == "cancelled" for row in rows):
            if await self._save(store.add_order, replace(order, action="C"), self.instrument):
                log.info("order_cancelled_in_flight")
                self.wake()

    async def _save(self, fn: Callable[..., object], *args: object, **kwargs: object) -> bool:
        try:
            await self.store.run(fn, *args, **kwargs)
        except StoreUnavailable as exc:
            self.health.count(self.connection, "errors")
            log.error("store_unavailable", error=str(exc))
            return False
        return True
