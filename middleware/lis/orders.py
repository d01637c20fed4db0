"""Orders from the LIS (IHE LAB-28 OML^O33, or ORM^O01): an MLLP server labgate runs.

Each order message is stored before it is acknowledged (`AA` after the commit; `AR` when the
store cannot commit, so the LIS sends it again; `AE` with the reason when it cannot be read,
kept as refused). Stored orders answer analysers' queries; the analysers named in
`orders.download_to` also get them downloaded at once. A cancellation withdraws what was not
sent yet, and sends a cancel (O-12 "C") to every analyser that already had the order.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from drivers.models import Order, Patient
from middleware.config.settings import LisOrdersSettings
from middleware.health import Health
from middleware.io.mllp import answer_messages
from middleware.store import Store, StoreUnavailable
from protocols.errors import RemoteProtocolError
from protocols.hl7 import build_ack
from protocols.hl7.orders_in import InboundOrder, parse_order_message

__all__ = ["LisOrderReceiver", "order_from_hl7"]

log = structlog.get_logger("labgate.lis.orders")


def order_from_hl7(inbound: InboundOrder) -> Order:
    """The lab's order from one the LIS sent (ORM/OML, or an RSP^K11 answer)."""
    patient = inbound.patient
    return Order(
        specimen_id=inbound.specimen_id,
        patient=Patient(
            patient_id=patient.patient_id,
            family_name=patient.family_name,
            given_name=patient.given_name,
            birth_date=patient.birth_date,
            sex=patient.sex,
        ),
        tests=tuple(inbound.tests),
        priority=inbound.priority,
        collected_at=inbound.collected_at,
        action=inbound.action,
    )


class LisOrderReceiver:
    """Receives the LIS's orders on one MLLP port; `wake(instrument)` tells a session to look."""

    def __init__(
        self,
        name: str,
        settings: LisOrdersSettings,
        store: Store,
        health: Health,
        wake: Callable[[str], None],
    ) -> None:
        self.name = name
        self.settings = settings
        self.store = store
        self.health = health
        self.wake = wake

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with structlog.contextvars.bound_contextvars(connection=self.name):
            try:
                await answer_messages(reader, writer, self._handle, self._refused)
            except (ConnectionError, OSError) as exc:
                log.warning("lis_orders_connection_lost", error=str(exc))
            finally:
                writer.close()

    def _refused(self, exc: RemoteProtocolError) -> None:
        self.health.count(self.name, "errors")
        log.warning("mllp_block_refused", reason=str(exc))

    async def _handle(self, message: bytes) -> bytes:
        store = self.store
        now = datetime.now(UTC)
        control = "LGO" + uuid.uuid4().hex[:17].upper()
        message_id = uuid.uuid4().hex
        try:
            inbound = parse_order_message(message)
        except RemoteProtocolError as exc:
            try:
                await store.run(store.save_refused, self.name, message_id, message, str(exc), "hl7")
            except StoreUnavailable:
                return build_ack(message, "AR", control, now, text="not stored")
            self.health.count(self.name, "errors")
            log.warning("order_message_refused", reason=str(exc))
            return build_ack(message, "AE", control, now, text=str(exc)[:200])
        try:
            targets = await store.run(
                store.apply_order_message,
                self.name,
                message_id,
                message,
                [order_from_hl7(order) for order in inbound.orders],
                self.settings.download_to,
            )
        except StoreUnavailable as exc:
            log.error("store_unavailable", error=str(exc))
            return build_ack(message, "AR", control, now, text="not stored, send again")
        log.info("orders_received", orders=len(inbound.orders))
        for instrument in sorted(targets):
            self.wake(instrument)
        return build_ack(message, "AA", control, now)
