"""Asking the LIS for a specimen's work order (IHE LAB-27: QBP^Q11 out, RSP^K11 back).

Used when an analyser queries a specimen labgate holds no order for. The answer must reach the
analyser within its own timeout, so the LIS gets `query_timeout` seconds (keep it below the
analyser's); past that, or on any failure, the analyser is told "no information" rather than
being left to time out. Orders the LIS returns are stored like any other (traceable, and
marked sent once given to the analyser).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import structlog

from drivers.models import Order
from middleware.config.settings import LisSettings
from middleware.io.tls import client_context
from middleware.lis.orders import order_from_hl7
from middleware.store import Store, StoreUnavailable
from protocols.errors import RemoteProtocolError
from protocols.hl7 import MessageHeader, MllpFramer, build_qbp_q11, mllp_frame, parse_rsp_k11

__all__ = ["LisQueryClient"]

log = structlog.get_logger("labgate.lis.queries")


class LisQueryClient:
    """One short MLLP exchange per query (queries are rare; no connection is kept)."""

    def __init__(self, settings: LisSettings, store: Store) -> None:
        self.settings = settings
        self.store = store

    async def ask(self, specimen_ids: Sequence[str], instrument: str) -> list[tuple[int, Order]]:
        """The LIS's orders for these specimens, stored and ready for `instrument`; [] when the
        LIS has none, does not answer in time, or cannot be reached."""
        found: list[tuple[int, Order]] = []
        for specimen_id in specimen_ids:
            try:
                async with asyncio.timeout(self.settings.query_timeout):
                    answer = await self._exchange(specimen_id)
                orders = [order_from_hl7(o) for o in parse_rsp_k11(answer).orders]
                orders = [order for order in orders if order.action != "C"]
                message_id = uuid.uuid4().hex
                await self.store.run(
                    self.store.apply_order_message,
                    f"{self.settings.name}-queries",
                    message_id,
                    answer,
                    orders,
                    (instrument,),
                )
                found += [
                    (order_id, order)
                    for order_id, order in await self.store.read(
                        self.store.pending_downloads, instrument
                    )
                    if order.specimen_id == specimen_id
                ]
                log.info("lis_query_answered", orders=len(orders))
            except (TimeoutError, OSError, RemoteProtocolError, StoreUnavailable) as exc:
                log.warning("lis_query_failed", error=str(exc) or type(exc).__name__)
        return found

    async def _exchange(self, specimen_id: str) -> bytes:
        settings = self.settings
        tls = client_context(settings.tls) if settings.tls else None
        reader, writer = await asyncio.open_connection(
            settings.host,
            settings.port,
            ssl=tls,
            server_hostname=(settings.tls.server_hostname or settings.host)
            if settings.tls
            else None,
        )
        try:
            control = "LGQ" + uuid.uuid4().hex[:17].upper()
            header = MessageHeader(
                sending_application=settings.sending_application,
                sending_facility=settings.sending_facility,
                receiving_application=settings.receiving_application,
                receiving_facility=settings.receiving_facility,
                control_id=control,
                created_at=datetime.now(UTC),
            )
            writer.write(mllp_frame(build_qbp_q11(header, control, specimen_id)))
            await writer.drain()
            framer = MllpFramer()
            while (message := framer.next_message()) is None:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("the LIS closed the connection before answering")
                framer.receive_data(data)
            return message
        finally:
            writer.close()
