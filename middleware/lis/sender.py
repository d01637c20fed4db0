"""The sender: drains one LIS's outbox over MLLP, strictly in order, retransmitting until AA.

    outbox (pending, oldest first) -> ORU^R01 (built once, bytes kept) -> MLLP -> wait for ACK
      AA / CA           -> delivered (results marked, counters)
      AE / AR           -> rejected: kept, alarmed, not retried blindly
      nothing / garbage -> same bytes again after an exponential backoff with jitter

GBUI VII-2: automatic and complete retransmission after a failure, and an archive of every
transmission with the receiver's acknowledgement and its time (the `transmissions` table).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from datetime import UTC, datetime

import structlog

from middleware.config.settings import LisSettings
from middleware.health import Health
from middleware.io.tls import client_context
from middleware.lis.oru import build_results_message
from middleware.store import OutboxItem, Store, StoreUnavailable, Transmission
from protocols.errors import RemoteProtocolError
from protocols.hl7 import Ack, MllpFramer, mllp_frame, parse_ack

__all__ = ["LisSender", "backoff_delay"]

log = structlog.get_logger("labgate.lis")


def backoff_delay(
    attempt: int, initial: float, maximum: float, rng: random.Random | None = None
) -> float:
    """Delay before retry number `attempt` (1-based): exponential, capped, with "equal jitter"
    so many gateways recovering together do not hammer the LIS in step."""
    ceiling = min(maximum, initial * (2 ** max(0, attempt - 1)))
    jitter: float = (rng or random).uniform(0, ceiling / 2)
    return ceiling / 2 + jitter


# Outbox rows read at once; each is still sent, acknowledged and committed one after the other.
_BATCH = 32


class _NoAck(Exception):
    """No usable acknowledgement came back; `reason` says what happened instead."""

    def __init__(self, reason: str, raw: bytes | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


class LisSender:
    """Delivers the outbox of one LIS; `wake()` after each commit that added to it."""

    def __init__(self, settings: LisSettings, store: Store, health: Health) -> None:
        self.settings = settings
        self.store = store
        self.health = health
        self._wake = asyncio.Event()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._framer = MllpFramer()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Deliver forever; cancelled when the daemon stops (a message in flight stays pending)."""
        name = self.settings.name
        store = self.store
        with structlog.contextvars.bound_contextvars(connection=name):
            try:
                while True:
                    try:
                        batch = await store.read(store.due, name, datetime.now(UTC), _BATCH)
                    except StoreUnavailable as exc:
                        log.error("store_unavailable", error=str(exc))
                        await asyncio.sleep(1.0)
                        continue
                    if not batch:
                        await self._update_depth()
                        await self._idle()
                        continue
                    for item in batch:
                        if not await self._deliver(item):
                            break  # it waits for its retry; nothing behind it may overtake it
            finally:
                await self._close()

    async def _idle(self) -> None:
        due = await self.store.read(self.store.next_attempt_time, self.settings.name)
        timeout = None if due is None else max(0.0, (due - datetime.now(UTC)).total_seconds())
        self._wake.clear()
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # lands as the event is set, and the daemon would then never stop.
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _update_depth(self) -> None:
        depth = await self.store.read(self.store.outbox_depth, self.settings.name)
        self.health.outbox_depth.labels(self.settings.name).set(depth)

    async def _deliver(self, item: OutboxItem) -> bool:
        """Send one message; False when it must wait for a retry (the queue stops behind it)."""
        settings = self.settings
        store = self.store
        with structlog.contextvars.bound_contextvars(
            message_id=item.message_id, control_id=item.control_id
        ):
            payload = item.payload
            if payload is None:
                try:
                    payload = build_results_message(
                        settings, item.control_id, item.reports, item.decisions, item.created_at
                    )
                except Exception as exc:  # a labgate bug or data the builder refuses
                    # Stop this message (kept, alarmed) rather than crash or loop on it.
                    await store.run(store.mark_rejected, item.outbox_id, f"not built: {exc}")
                    self.health.count(settings.name, "errors")
                    log.exception("lis_message_not_built")
                    return True
            attempt = item.attempts + 1
            sent_at = datetime.now(UTC)
            try:
                ack = await self._exchange(payload, item.control_id)
            except _NoAck as exc:
                delay = backoff_delay(attempt, settings.retry.initial, settings.retry.maximum)
                failed = Transmission(
                    payload, sent_at, datetime.now(UTC), raw_in=exc.raw, error=exc.reason
                )
                await store.run(store.mark_retry, item.outbox_id, failed, delay)
                self.health.count(settings.name, "errors")
                log.warning(
                    "lis_no_ack", attempt=attempt, error=exc.reason, retry_in=round(delay, 2)
                )
                return False
            answered = Transmission(
                payload,
                sent_at,
                datetime.now(UTC),
                raw_in=ack.raw,
                ack_code=ack.code,
                ack_control_id=ack.control_id,
            )
            if ack.code in {"AA", "CA"}:
                delivered = await store.run(store.mark_delivered, item.outbox_id, answered)
                self.health.count(settings.name, "delivered", delivered)
                if item.instrument in self.health.connections:
                    self.health.count(item.instrument, "delivered", delivered)
                log.info("lis_ack_received", ack_code=ack.code, attempt=attempt, results=delivered)
            else:
                error = f"LIS answered {ack.code}: {ack.text}".strip()
                self.health.count(settings.name, "errors")
                if settings.on_reject == "retry":
                    delay = backoff_delay(attempt, settings.retry.initial, settings.retry.maximum)
                    rejected = dataclasses.replace(answered, error=error)
                    await store.run(store.mark_retry, item.outbox_id, rejected, delay)
                    log.warning("lis_rejected_will_retry", ack_code=ack.code, attempt=attempt)
                    return False
                await store.run(store.mark_rejected, item.outbox_id, error, answered)
                log.error("lis_rejected_message", ack_code=ack.code, text=ack.text, attempt=attempt)
            return True

    async def _exchange(self, payload: bytes, control_id: str) -> Ack:
        """Send one message and wait for its acknowledgement; any failure closes the connection
        so a late ACK can never be taken for the next message's."""
        settings = self.settings
        try:
            reader, writer = await self._connect()
            writer.write(mllp_frame(payload))
            await writer.drain()
            async with asyncio.timeout(settings.ack_timeout):
                raw = await self._read_message(reader)
        except TimeoutError:
            await self._close()
            raise _NoAck(f"no acknowledgement within {settings.ack_timeout:g} s") from None
        except (OSError, ConnectionError, RemoteProtocolError) as exc:
            await self._close()
            raise _NoAck(f"link to LIS failed: {exc}") from None
        try:
            ack = parse_ack(raw)
        except RemoteProtocolError as exc:
            await self._close()
            raise _NoAck(f"unreadable acknowledgement: {exc}", raw) from None
        if ack.acknowledged_control_id != control_id:
            await self._close()
            raise _NoAck(
                f"acknowledgement for {ack.acknowledged_control_id!r}, expected {control_id!r}", raw
            )
        return ack

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._writer is not None and self._reader is not None and not self._writer.is_closing():
            return self._reader, self._writer
        settings = self.settings
        tls = client_context(settings.tls) if settings.tls is not None else None
        hostname = (settings.tls.server_hostname or settings.host) if settings.tls else None
        async with asyncio.timeout(settings.connect_timeout):
            reader, writer = await asyncio.open_connection(
                settings.host, settings.port, ssl=tls, server_hostname=hostname
            )
        self._reader, self._writer, self._framer = reader, writer, MllpFramer()
        self.health.set_state(settings.name, "connected")
        log.info("lis_connected", address=f"{settings.host}:{settings.port}")
        return reader, writer

    async def _read_message(self, reader: asyncio.StreamReader) -> bytes:
        while (message := self._framer.next_message()) is None:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("the LIS closed the connection")
            self._framer.receive_data(data)
        return message

    async def _close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is None:
            return
        self.health.set_state(self.settings.name, "disconnected")
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ConnectionError):
            pass
