"""An ASTM analyser connection: link core (E1381 or unframed) + E1394 + driver + store.

The session is the thin asyncio layer around a sans-IO link core. Its rules:

- The frame that completes an E1394 message (the ETX frame carrying the L record) is acknowledged
  only after the message, its results and its outbox row are committed. Frames that end an E1381
  message without completing the E1394 one (analysers that send one record per ETX frame) are
  committed to the trace before their ACK, so nothing acknowledged exists only in memory. When
  the store cannot commit, the frame is NAKed and the analyser retransmits it (LIS1-A §6.5.1.2).
- A message identical to one already stored from this analyser (it lost our ACK and resent the
  whole message) is acknowledged again and kept in the trace, but not stored twice.
- A query (Q records) is answered, after its ACK, with the orders for its specimens, or with a
  "no information" message; orders addressed to this analyser are downloaded when it connects
  and whenever new ones arrive. The link core handles establishment and contention.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

import structlog

from drivers import registry
from drivers.base import DriverError
from middleware.config.settings import AstmInstrumentSettings
from middleware.sessions.services import AnalyserSession, SessionServices, store_unless_resent
from middleware.store import Duplicate, StoreUnavailable
from protocols import astm
from protocols.errors import RemoteProtocolError

__all__ = ["AstmSession", "completes_message"]

log = structlog.get_logger("labgate.astm")

_READ_SIZE = 65536


class LinkCore(Protocol):
    """What a session needs of a link core (`astm.Link` and `astm.UnframedLink` both are)."""

    def receive_data(self, data: bytes, now: float) -> None: ...
    def next_event(self) -> astm.Event | None: ...
    def data_to_send(self) -> bytes: ...
    def get_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...
    def send_message(self, text: bytes, now: float) -> None: ...
    def acknowledge(self, now: float) -> None: ...
    def refuse(self, now: float) -> None: ...


def completes_message(text: bytes) -> bool:
    """True when E1394 text holds its L (terminator) record."""
    if not text.startswith(b"H") or len(text) < 2:
        return True  # not E1394 at all: nothing to wait for, decode it now and refuse it
    field = text[1:2]
    for line in text.replace(b"\n", b"\r").split(b"\r"):
        if line.startswith(b"L") and (len(line) == 1 or line[1:2] == field):
            return True
    return False


class AstmSession(AnalyserSession):
    """One analyser: serves each connection it makes (or labgate opens) to it."""

    def __init__(self, settings: AstmInstrumentSettings, services: SessionServices) -> None:
        super().__init__(settings.name, services.health)
        self.settings = settings
        self.store = services.store
        self.lis = services.lis
        self.on_stored = services.on_stored
        self.gateway_name = services.gateway_name
        self.ask_lis = services.ask_lis
        self.validation = services.validation
        self.driver = registry.resolve(settings.driver)
        self._timers = astm.Timers(
            establish=settings.timers.establish,
            reply=settings.timers.reply,
            receive=settings.timers.receive,
            busy=settings.timers.busy,
        )
        self._conversations: set[_Conversation] = set()

    def new_link(self) -> LinkCore:
        """A fresh link core for one connection, as the configuration frames it."""
        if self.settings.framing == "unframed":
            return astm.UnframedLink(ack_messages=self.settings.unframed_ack)
        return astm.Link(astm.Role.HOST, timers=self._timers)

    def orders_waiting(self) -> None:
        """New orders may be addressed to this analyser: every open connection looks."""
        for conversation in self._conversations:
            conversation.poke()

    async def converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: its link core and conversation, until the analyser hangs up."""
        conversation = _Conversation(self, reader, writer)
        self._conversations.add(conversation)
        try:
            await conversation.run()
        finally:
            self._conversations.discard(conversation)


class _Conversation:
    """The state of one connection: its link core, the E1394 message being assembled, and the
    messages labgate sends on it (query answers, order downloads) until the link confirms them."""

    def __init__(
        self, session: AstmSession, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.session = session
        self.reader = reader
        self.writer = writer
        self.loop = asyncio.get_running_loop()
        self.link = session.new_link()
        self.text = bytearray()
        self.raw = bytearray()
        self.message_id = uuid.uuid4().hex
        # Order ids carried by each message handed to the link, in the link's queue order.
        self.outgoing: deque[tuple[int, ...]] = deque()
        self._poke = asyncio.Event()
        self._poke.set()  # look for orders to download as soon as the link is up

    def poke(self) -> None:
        self._poke.set()

    async def run(self) -> None:
        read: asyncio.Task[bytes] | None = None
        try:
            while True:
                await self._flush()
                if self._poke.is_set():
                    self._poke.clear()
                    await self._queue_downloads()
                    await self._flush()
                timer = self.link.get_timer()
                timeout = None if timer is None else max(0.0, timer - self.loop.time())
                if read is None:
                    read = asyncio.ensure_future(self.reader.read(_READ_SIZE))
                poked = asyncio.ensure_future(self._poke.wait())
                done, _ = await asyncio.wait(
                    {read, poked}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                poked.cancel()
                if read in done:
                    data = read.result()
                    read = None
                    if not data:
                        # The analyser hung up: an unframed link may still hold a message
                        # whose L never came; it is delivered now rather than lost.
                        if isinstance(self.link, astm.UnframedLink):
                            self.link.flush(self.loop.time())
                            await self._handle_events()
                        await self._commit_unterminated()
                        return
                    self.link.receive_data(data, self.loop.time())
                elif not done:
                    self.link.handle_timer(self.loop.time())
                await self._handle_events()
        finally:
            if read is not None:
                read.cancel()
            if isinstance(self.link, astm.Link):
                # Stopping (or this analyser was removed): a download in progress ends with
                # EOT rather than in silence; the orders not sent stay pending in the store.
                self.link.close(self.loop.time())
                out = self.link.data_to_send()
                if out and not self.writer.is_closing():
                    self.writer.write(out)

    async def _flush(self) -> None:
        out = self.link.data_to_send()
        if out:
            self.writer.write(out)
            await self.writer.drain()

    async def _handle_events(self) -> None:
        name = self.session.settings.name
        while (event := self.link.next_event()) is not None:
            if isinstance(event, astm.MessageReceived):
                await self._on_message(event)
            elif isinstance(event, astm.FrameRejected):
                self.session.health.count(name, "errors")
                self.session.health.count(name, "naks")
                log.warning("frame_nak_sent", reason=event.reason, length=len(event.raw))
                await self._trace("frame_rejected", event.raw, event.reason)
            elif isinstance(event, astm.TransferAborted):
                # Only the unacknowledged frames are lost, and the analyser sends them again;
                # records already acknowledged stay assembled for the rest of the message.
                self.session.health.count(name, "errors")
                log.warning("transfer_aborted", reason=event.reason, pending=len(self.text))
            elif isinstance(event, astm.TransferEnded):
                await self._commit_unterminated()
            elif isinstance(event, astm.DuplicateFrameIgnored):
                log.info("duplicate_frame_ignored", length=len(event.raw))
            elif isinstance(event, astm.MessageSent):
                await self._sent()
            elif isinstance(event, astm.MessageFailed):
                log.warning("message_to_analyser_failed", reason=event.reason)
                if event.dropped and self.outgoing:
                    self.outgoing.popleft()  # its orders stay pending: sent again next time
            await self._flush()

    # --- from the analyser --------------------------------------------------------------

    async def _on_message(self, event: astm.MessageReceived) -> None:
        text_mark, raw_mark = len(self.text), len(self.raw)
        self.text += event.text
        self.raw += event.raw
        complete = completes_message(bytes(self.text))
        if complete:
            message = await self._commit()
            stored = message is not False
        else:
            stored = await self._save(
                self.session.store.save_trace,
                self.session.settings.name,
                "partial_message",
                event.raw,
                message_id=self.message_id,
            )
        if not stored:
            # Not durable: NAK the frame so the analyser retransmits it (LIS1-A §6.5.1.2); the
            # frames before it stay assembled and the retransmission completes the message.
            del self.text[text_mark:]
            del self.raw[raw_mark:]
            self.link.refuse(self.loop.time())
            return
        self.link.acknowledge(self.loop.time())
        if complete:
            self._reset()
            if isinstance(message, astm.Message):
                await self._answer_queries(message)

    async def _commit_unterminated(self) -> None:
        """The analyser ended the transfer (or the connection) without an L record: every frame
        of what it sent was acknowledged and is in the trace; keep the message, never lose it."""
        if self.text:
            log.warning("message_without_terminator", message_id=self.message_id)
            message = await self._commit()
            self._reset()
            if isinstance(message, astm.Message):
                await self._answer_queries(message)

    async def _commit(self) -> astm.Message | bool | None:
        """Decode, map and commit the assembled message.

        Returns the decoded message once it is durable (or was already stored: a duplicate),
        None when it could not be decoded and was kept as refused, False when nothing could be
        committed. A message that cannot be decoded or mapped is still acknowledged: resending
        the same bytes would not make them valid."""
        session = self.session
        settings = session.settings
        name = settings.name
        raw, text, message_id = bytes(self.raw), bytes(self.text), self.message_id
        with structlog.contextvars.bound_contextvars(message_id=message_id):
            try:
                message = astm.decode_message(text, settings.encoding)
                reports = session.driver.to_reports(message, name)
            except (RemoteProtocolError, DriverError) as exc:
                if not await self._save(
                    session.store.save_refused, name, message_id, raw, str(exc)
                ):
                    return False
                session.health.count(name, "received")
                session.health.count(name, "errors")
                log.warning("message_refused", reason=str(exc))
                return None
            digest = hashlib.sha256(text).hexdigest()
            received_at = datetime.now(UTC)
            try:
                incoming = await session.validation.message(
                    message_id=message_id,
                    connection=name,
                    protocol="astm",
                    received_at=received_at,
                    raw=raw,
                    reports=reports,
                    lis=session.lis,
                    content_hash=digest,
                    origin="poc" if settings.poc else "lab",
                    location=settings.location,
                )
            except StoreUnavailable as exc:
                log.error("store_unavailable", error=str(exc))
                return False
            try:
                stored = await store_unless_resent(
                    session.store, incoming, settings.duplicate_window_hours, raw, "analyser"
                )
            except StoreUnavailable as exc:
                session.health.count(name, "errors")
                log.error("store_unavailable", error=str(exc))
                return False
            if isinstance(stored, Duplicate):
                return message
            await session.validation.qc_stored(
                incoming.reports, received_at, session.lis, message_id
            )
            results = sum(len(report.results) for report in reports)
            session.health.count(name, "received")
            session.health.count(name, "stored", results)
            log.info(
                "message_stored",
                specimens=len(reports),
                results=results,
                forwarded=incoming.forward,
            )
            if incoming.forward:
                session.on_stored()
            return message

    # --- to the analyser ----------------------------------------------------------------

    async def _answer_queries(self, message: astm.Message) -> None:
        session = self.session
        queries = session.driver.parse_queries(message)
        if not queries:
            return
        now = datetime.now(UTC)
        for query in queries:
            try:
                found = await session.store.read(
                    session.store.orders_for, query.specimen_ids, session.settings.name
                )
            except StoreUnavailable as exc:
                log.error("store_unavailable", error=str(exc))
                found = []
            if not found and session.ask_lis is not None:
                found = await session.ask_lis(query.specimen_ids, session.settings.name)
            sender, receiver = session.gateway_name, message.records[0].field(5)
            answer = None
            if found:
                try:
                    answer = session.driver.build_order_message(
                        [order for _, order in found],
                        sender=sender,
                        receiver=receiver,
                        now=now,
                        query_answer=True,
                    )
                except DriverError as exc:
                    # An order this analyser cannot carry (encoding, code): say "no information"
                    # rather than nothing, so it does not wait out its timeout.
                    log.error("orders_not_encodable", error=str(exc))
                    found = []
            if answer is None:
                answer = session.driver.build_no_order_message(
                    query, sender=sender, receiver=receiver, now=now
                )
            log.info("query_answered", specimens=len(query.specimen_ids), orders=len(found))
            self._send(answer, tuple(order_id for order_id, _ in found))

    async def _queue_downloads(self) -> None:
        session = self.session
        try:
            pending = await session.store.read(
                session.store.pending_downloads, session.settings.name
            )
        except StoreUnavailable as exc:
            log.error("store_unavailable", error=str(exc))
            return
        in_flight = {order_id for ids in self.outgoing for order_id in ids}
        pending = [(order_id, order) for order_id, order in pending if order_id not in in_flight]
        if not pending:
            return
        try:
            message = session.driver.build_order_message(
                [order for _, order in pending],
                sender=session.gateway_name,
                receiver=session.settings.name,
                now=datetime.now(UTC),
            )
        except DriverError as exc:
            ids = [order_id for order_id, _ in pending]
            await self._save(session.store.mark_orders_refused, ids, str(exc))
            session.health.count(session.settings.name, "errors")
            log.error("orders_refused", orders=len(ids), error=str(exc))
            return
        log.info("orders_queued_for_download", orders=len(pending))
        self._send(message, tuple(order_id for order_id, _ in pending))

    def _send(self, text: bytes, order_ids: tuple[int, ...]) -> None:
        self.outgoing.append(order_ids)
        self.link.send_message(text, self.loop.time())

    async def _sent(self) -> None:
        if not self.outgoing:
            return
        order_ids = self.outgoing.popleft()
        if order_ids:
            await self._save(self.session.store.mark_orders_sent, order_ids, datetime.now(UTC))
            log.info("orders_sent", orders=len(order_ids))

    # --- store --------------------------------------------------------------------------

    async def _save(self, fn: Callable[..., object], *args: object, **kwargs: object) -> bool:
        try:
            await self.session.store.run(fn, *args, **kwargs)
        except StoreUnavailable as exc:
            self.session.health.count(self.session.settings.name, "errors")
            log.error("store_unavailable", error=str(exc))
            return False
        return True

    def _reset(self) -> None:
        self.text = bytearray()
        self.raw = bytearray()
        self.message_id = uuid.uuid4().hex

    async def _trace(self, kind: str, data: bytes, detail: str) -> None:
        await self._save(
            self.session.store.save_trace, self.session.settings.name, kind, data, detail=detail
        )
