"""An HL7 analyser connection (IHE LAW LAB-29): MLLP in, OUL^R22 / ORU^R01 results, ACK out.

Queries for work (LAB-27 QBP^Q11) are answered RSP^K11; orders pushed to the analyser (LAB-28)
are sent by `middleware.sessions.hl7_orders`, on a connection of their own or on this one.

The same rule as for ASTM: the analyser gets `AA` only once the message, its results and its
outbox row are committed. A message that cannot be read is kept as refused, with why, and
answered `AE` (sending the same bytes again would not help); when the store cannot commit, the
answer is `AR` so the analyser sends it again later. A message identical to one already stored
(resent after a lost ACK) is acknowledged again and not stored twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from datetime import UTC, datetime

import structlog

from drivers.hl7_results import reports_from_hl7
from middleware.config.settings import Hl7InstrumentSettings
from middleware.io.mllp import answer_messages
from middleware.sessions.hl7_orders import Hl7OrderPusher, ResultsConnectionLink, order_spec
from middleware.sessions.services import AnalyserSession, SessionServices, store_unless_resent
from middleware.store import Duplicate, StoreUnavailable
from protocols.errors import RemoteProtocolError
from protocols.hl7 import build_ack, build_rsp_k11, parse_qbp_q11
from protocols.hl7.inbound import parse_results_message

__all__ = ["Hl7Session"]

log = structlog.get_logger("labgate.hl7")


def _is_query(message: bytes) -> bool:
    """A QBP (LAB-27 work order query), told from MSH-9 without a full parse."""
    header = message.split(b"\r", 1)[0].split(b"\n", 1)[0]
    fields = header.split(header[3:4]) if len(header) > 3 else []
    return len(fields) > 8 and fields[8].startswith(b"QBP")


def _control_id() -> str:
    return "LGA" + uuid.uuid4().hex[:17].upper()


class Hl7Session(AnalyserSession):
    """One HL7 analyser: serves each MLLP connection it makes (or labgate opens) to it."""

    def __init__(self, settings: Hl7InstrumentSettings, services: SessionServices) -> None:
        super().__init__(settings.name, services.health)
        self.settings = settings
        self.store = services.store
        self.lis = services.lis
        self.on_stored = services.on_stored
        self.ask_lis = services.ask_lis
        self.validation = services.validation
        #: Pushes the LIS's orders to the analyser (LAB-28) when `settings.orders` says how;
        #: the gateway runs it. Without it the analyser asks for its work (LAB-27).
        self.order_pusher = (
            Hl7OrderPusher(settings, services.store, services.health, sender=services.gateway_name)
            if settings.orders is not None
            else None
        )

    def orders_waiting(self) -> None:
        """New orders for this analyser were stored: the pusher (if any) sends them now."""
        if self.order_pusher is not None:
            self.order_pusher.wake()

    async def converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer each message on the connection, in order, after it is committed (and, when
        orders go on this connection, hand the analyser's answers to them to the pusher)."""
        link = self.order_pusher.link if self.order_pusher is not None else None
        if isinstance(link, ResultsConnectionLink):
            await link.serve(reader, writer, self._handle, self._refused, self.settings.max_message)
            return
        await answer_messages(
            reader, writer, self._handle, self._refused, self.settings.max_message
        )

    def _refused(self, exc: RemoteProtocolError) -> None:
        self.health.count(self.settings.name, "errors")
        log.warning("mllp_block_refused", reason=str(exc))

    async def _handle(self, message: bytes) -> bytes:
        """Store one message and return the acknowledgement to send (after the commit)."""
        settings = self.settings
        name = settings.name
        store = self.store
        message_id = uuid.uuid4().hex
        now = datetime.now(UTC)
        with structlog.contextvars.bound_contextvars(message_id=message_id):
            if _is_query(message):
                return await self._answer_query(message, message_id, now)
            try:
                inbound = parse_results_message(message, default_encoding=settings.encoding)
                reports = reports_from_hl7(inbound, name)
            except RemoteProtocolError as exc:
                try:
                    await store.run(store.save_refused, name, message_id, message, str(exc), "hl7")
                except StoreUnavailable:
                    return build_ack(message, "AR", _control_id(), now, text="not stored")
                self.health.count(name, "received")
                self.health.count(name, "errors")
                log.warning("message_refused", reason=str(exc))
                return build_ack(message, "AE", _control_id(), now, text=str(exc)[:200])
            digest = hashlib.sha256(message).hexdigest()
            try:
                incoming = await self.validation.message(
                    message_id=message_id,
                    connection=name,
                    protocol="hl7",
                    received_at=now,
                    raw=message,
                    reports=reports,
                    lis=self.lis,
                    content_hash=digest,
                    origin="poc" if settings.poc else "lab",
                    location=settings.location,
                )
                stored = await store_unless_resent(
                    store, incoming, settings.duplicate_window_hours, message, "analyser"
                )
                if isinstance(stored, Duplicate):
                    return build_ack(message, "AA", _control_id(), now)
            except StoreUnavailable as exc:
                self.health.count(name, "errors")
                log.error("store_unavailable", error=str(exc))
                return build_ack(message, "AR", _control_id(), now, text="not stored, send again")
            await self.validation.qc_stored(incoming.reports, now, self.lis, message_id)
            results = sum(len(report.results) for report in reports)
            self.health.count(name, "received")
            self.health.count(name, "stored", results)
            log.info("message_stored", specimens=len(reports), results=results)
            if incoming.forward:
                self.on_stored()
            return build_ack(message, "AA", _control_id(), now)

    async def _answer_query(self, message: bytes, message_id: str, now: datetime) -> bytes:
        """LAB-27: the work orders held for the specimens asked about (RSP^K11), or NF."""
        store = self.store
        name = self.settings.name
        try:
            query = parse_qbp_q11(message, default_encoding=self.settings.encoding)
        except RemoteProtocolError as exc:
            log.warning("query_refused", reason=str(exc))
            return build_ack(message, "AE", _control_id(), now, text=str(exc)[:200])
        try:
            await store.run(store.save_trace, name, "query", message, message_id=message_id)
            found = await store.read(store.orders_for, query.specimen_ids, name)
        except StoreUnavailable as exc:
            log.error("store_unavailable", error=str(exc))
            return build_ack(message, "AR", _control_id(), now, text="try again")
        if not found and self.ask_lis is not None:
            found = await self.ask_lis(query.specimen_ids, name)
        orders = [order_spec(order) for _, order in found if order.tests]
        answer = build_rsp_k11(message, orders, _control_id(), now, status="OK" if orders else "NF")
        if found:
            try:
                await store.run(store.mark_orders_sent, [order_id for order_id, _ in found], now)
            except StoreUnavailable as exc:
                log.error("store_unavailable", error=str(exc))
        log.info("query_answered", specimens=len(query.specimen_ids), orders=len(orders))
        return answer
