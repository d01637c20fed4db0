"""The sender: drains one LIS's outbox over MLLP, strictly in order, retransmitting until AA.

    outbox (pending, oldest first) -> ORU^R01 (built once, bytes kept) -> MLLP -> wait for ACK
      AA / CA           -> delivered (results marked, counters)
      AE / AR           -> rejected: kept, alarmed, not retried blindly
      nothing / garbage -> same bytes again after an exponential backoff with jitter

GBUI VII-2: automatic and complete retransmission after a failure, and an archive of every
transmission with the receiver's acknowledgement and its time (the `transmissions` table).

With `window: 1` (the default) each message waits for its ACK and its outcome is committed
before the next one leaves: stop-and-wait, which every LIS accepts. With `window: N` up to N
messages are on the wire at once, for a LIS that takes several in flight and acknowledges
each by MSA-2:

    batch (outbox order) -> fill the window -> ACKs matched by MSA-2, in any order -> refill
      AA / CA                      -> delivered (recorded only once that ACK is in hand)
      AE / AR, on_reject: stop     -> that message rejected; the others go on
      AE / AR, on_reject: retry    -> that message retried; nothing more sent, the ACKs of
                                      those in flight still collected
      timeout, link lost, garbage, -> connection closed; every unacknowledged message retried,
      ACK for no message in flight    in its original order, after one backoff
    messages waiting run low -> (in the background, the window still full) commit every outcome
      decided so far in one transaction, then read the next batch after the last message held

Outcomes are thus committed in batches, never later than the next read (what is left when a
run ends is committed then); a message is marked delivered only once its AA is in hand, and a
crash before the commit costs only a resend of the same bytes.

The wire order is the outbox order, and a message goes out again only as the same bytes with
the same control id, so a LIS that saw it before recognises it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime

import structlog

from middleware.config.settings import LisSettings
from middleware.health import Health
from middleware.io.tls import client_context
from middleware.lis.oru import build_results_message
from middleware.store import OutboxItem, Store, StoreUnavailable, Transmission
from protocols.errors import RemoteProtocolError
from protocols.hl7 import Ack, MllpFramer, mllp_frame, parse_ack

__all__ = ["LisSender", "NoAck", "backoff_delay"]

log = structlog.get_logger("labgate.lis")


def backoff_delay(
    attempt: int, initial: float, maximum: float, rng: random.Random | None = None
) -> float:
    """Delay before retry number `attempt` (1-based): exponential, capped, with "equal jitter"
    so many gateways recovering together do not hammer the LIS in step."""
    ceiling = min(maximum, initial * (2 ** max(0, attempt - 1)))
    jitter: float = (rng or random).uniform(0, ceiling / 2)
    return ceiling / 2 + jitter


# Outbox rows read at once. Stop-and-wait still sends, acknowledges and commits them one after
# the other; a window reads several windows' worth, so the pause between batches (commit the
# outcomes, read the next rows) comes rarely.
_BATCH = 32
_WINDOWS_PER_BATCH = 4


class NoAck(Exception):
    """No usable acknowledgement came back; `reason` says what happened instead."""

    def __init__(self, reason: str, raw: bytes | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


@dataclasses.dataclass(slots=True)
class _Sent:
    """A message on the wire, waiting for its ACK."""

    item: OutboxItem
    payload: bytes
    sent_at: datetime
    deadline: float  # event-loop time by which its ACK must be back


class _Window:
    """One pipelined run: messages waiting to be sent, on the wire, decided but not committed,
    and the read-ahead of the next batch."""

    __slots__ = (
        "draining",
        "in_flight",
        "items",
        "last_id",
        "more",
        "outcomes",
        "read_ahead",
        "waiting",
    )

    def __init__(self, batch: Sequence[OutboxItem]) -> None:
        self.waiting: deque[OutboxItem] = deque()  # not sent yet, in outbox order
        self.in_flight: dict[str, _Sent] = {}  # by control id; a dict keeps the wire order
        self.outcomes: list[Store.Outcome] = []  # decided, not committed yet
        self.items: dict[int, OutboxItem] = {}  # by outbox id, for the counters and logs
        self.last_id = 0  # the newest outbox row in hand
        self.more = True  # the outbox may hold more due messages after last_id
        self.read_ahead: asyncio.Task[list[OutboxItem]] | None = None
        # An AE/AR to retry: send nothing more, collect the ACKs still due.
        self.draining = False
        self.take(batch)

    def hand_over(self, outcomes: Sequence[Store.Outcome]) -> dict[int, OutboxItem]:
        """The messages of `outcomes`, no longer kept here (each has one outcome a run)."""
        return {
            o.outbox_id: self.items.pop(o.outbox_id) for o in outcomes if o.outbox_id in self.items
        }

    def take(self, items: Sequence[OutboxItem]) -> None:
        self.more = bool(items)
        self.waiting.extend(items)
        for item in items:
            self.items[item.outbox_id] = item
        if items:
            self.last_id = items[-1].outbox_id


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
        window = settings.window
        self._batch_size = _BATCH if window == 1 else max(_BATCH, window * _WINDOWS_PER_BATCH)

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Deliver forever; cancelled when the daemon stops (a message in flight stays pending)."""
        name = self.settings.name
        store = self.store
        window = self.settings.window
        size = self._batch_size
        with structlog.contextvars.bound_contextvars(connection=name):
            try:
                while True:
                    try:
                        batch = await store.read(store.due, name, datetime.now(UTC), size)
                    except StoreUnavailable as exc:
                        log.error("store_unavailable", error=str(exc))
                        await asyncio.sleep(1.0)
                        continue
                    if not batch:
                        await self._update_depth()
                        await self._idle()
                        continue
                    if window > 1:
                        await self._deliver_window(batch)
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
            not_built: list[Store.Outcome] = []
            payload = self._build(item, not_built)
            if payload is None:
                await self._commit(not_built, {item.outbox_id: item})
                return True
            attempt = item.attempts + 1
            sent_at = datetime.now(UTC)
            try:
                ack = await self._exchange(payload, item.control_id, attempt)
            except NoAck as exc:
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

    async def _exchange(self, payload: bytes, control_id: str, attempt: int = 1) -> Ack:
        """Send one message and wait for its acknowledgement; any failure closes the connection
        so a late ACK can never be taken for the next message's."""
        settings = self.settings
        loop = asyncio.get_running_loop()
        try:
            reader, writer = await self._connect()
            writer.write(mllp_frame(payload))
            await writer.drain()
            self.health.message_sent(settings.name, attempt=attempt)
            written = loop.time()
            async with asyncio.timeout(settings.ack_timeout):
                raw = await self._read_message(reader)
        except TimeoutError:
            await self._close()
            raise NoAck(f"no acknowledgement within {settings.ack_timeout:g} s") from None
        except (OSError, ConnectionError, RemoteProtocolError) as exc:
            await self._close()
            raise NoAck(f"link to LIS failed: {exc}") from None
        try:
            ack = parse_ack(raw)
        except RemoteProtocolError as exc:
            await self._close()
            raise NoAck(f"unreadable acknowledgement: {exc}", raw) from None
        if ack.acknowledged_control_id != control_id:
            await self._close()
            raise NoAck(
                f"acknowledgement for {ack.acknowledged_control_id!r}, expected {control_id!r}", raw
            )
        self.health.ack_received(settings.name, loop.time() - written)
        return ack

    # --- a window of messages in flight -----------------------------------------------------

    async def _deliver_window(self, batch: Sequence[OutboxItem]) -> None:
        """Send `batch`, and what is due after it, with up to `window` messages awaiting
        their ACK, until nothing more is due or something fails. Outcomes are committed in
        batches: each read-ahead commits every outcome decided so far before it reads, and
        the rest is committed at the end. After a failure, what was not acknowledged waits
        for its retry, and nothing behind it is sent."""
        state = _Window(batch)
        try:
            await self._exchange_window(state)
        finally:
            if state.read_ahead is not None:
                # Its commit went to the store's one writer thread first: let it end, so the
                # outcomes are recorded in the order they were decided.
                await asyncio.wait([state.read_ahead])
                if not state.read_ahead.cancelled() and state.read_ahead.exception():
                    log.error("lis_commit_failed", error=str(state.read_ahead.exception()))
            # Also when cancelled (the daemon stops): an AA in hand is worth recording, or
            # the LIS would get that message a second time after the restart.
            if state.outcomes:
                await self._commit(state.outcomes, state.items)

    async def _exchange_window(self, state: _Window) -> None:
        """Fill the window, match ACKs by MSA-2 as they come, refill; decide every outcome."""
        settings = self.settings
        loop = asyncio.get_running_loop()
        waiting, in_flight, outcomes = state.waiting, state.in_flight, state.outcomes
        while True:
            self._read_ahead(state)
            frames: list[bytes] = []
            sent_at, deadline = datetime.now(UTC), loop.time() + settings.ack_timeout
            while not state.draining and waiting and len(in_flight) < settings.window:
                item = waiting[0]
                if item.control_id in in_flight:
                    break  # the same control id twice: one ACK must not settle both
                waiting.popleft()
                payload = self._build(item, outcomes)
                if payload is None:
                    continue
                if not in_flight and self._reader is not None and self._reader.at_eof():
                    # The LIS closed the link while it was idle: reconnect rather than cost
                    # every message of the window a failed attempt.
                    await self._close()
                if not in_flight and (self._writer is None or self._writer.is_closing()):
                    try:
                        await self._connect()
                    except (OSError, TimeoutError) as exc:
                        # Nothing is on the wire: this message alone has had an attempt.
                        failed = _Sent(item, payload, sent_at, deadline)
                        self._retry([failed], f"link to LIS failed: {exc}", outcomes)
                        return
                    # The ACK timeout runs from the sending, not from before connecting.
                    sent_at, deadline = datetime.now(UTC), loop.time() + settings.ack_timeout
                in_flight[item.control_id] = _Sent(item, payload, sent_at, deadline)
                frames.append(mllp_frame(payload))
            if not in_flight:
                if state.read_ahead is None or state.draining:
                    return
                await asyncio.wait([state.read_ahead])  # the window ran dry: wait for more
                continue
            reader, writer = self._reader, self._writer
            assert reader is not None and writer is not None  # connected before anything sent
            # ACK deadlines follow the wire order: the oldest message's comes first. A LIS
            # that stops reading (drain blocks) is no better than one that stops answering.
            oldest = next(iter(in_flight.values()))
            try:
                async with asyncio.timeout_at(oldest.deadline):
                    if frames:
                        writer.write(b"".join(frames))
                        await writer.drain()
                        for sent in list(in_flight.values())[-len(frames) :]:
                            self.health.message_sent(settings.name, attempt=sent.item.attempts + 1)
                        frames = []
                    answers = await self._read_available(reader)
            except TimeoutError:
                reason = f"no acknowledgement within {settings.ack_timeout:g} s"
                return await self._fail(state, reason, None)
            except (OSError, ConnectionError, RemoteProtocolError) as exc:
                return await self._fail(state, f"link to LIS failed: {exc}", None)
            answered_at = datetime.now(UTC)
            for raw in answers:
                try:
                    ack = parse_ack(raw)
                except RemoteProtocolError as exc:
                    return await self._fail(state, f"unreadable acknowledgement: {exc}", raw)
                acked = in_flight.pop(ack.acknowledged_control_id, None)
                if acked is None:
                    # A LIS that does not echo MSH-10, or answers twice: no ACK on this link
                    # can be trusted to name its message any more.
                    reason = (
                        f"acknowledgement for {ack.acknowledged_control_id!r}, "
                        "which no message in flight carries"
                    )
                    return await self._fail(state, reason, raw)
                answered = Transmission(
                    acked.payload,
                    acked.sent_at,
                    answered_at,
                    raw_in=ack.raw,
                    ack_code=ack.code,
                    ack_control_id=ack.control_id,
                )
                latency = (answered_at - acked.sent_at).total_seconds()
                self.health.ack_received(settings.name, latency)
                if ack.code in {"AA", "CA"}:
                    outcomes.append(Store.Outcome(acked.item.outbox_id, "delivered", answered))
                    continue
                error = f"LIS answered {ack.code}: {ack.text}".strip()
                if settings.on_reject == "retry":
                    # Like a missing ACK, but the link is sound: collect the other ACKs due.
                    rejected = dataclasses.replace(answered, error=error)
                    self._retry([acked], error, outcomes, rejected, event="lis_rejected_will_retry")
                    state.draining = True
                else:
                    self.health.count(settings.name, "errors")
                    outcomes.append(
                        Store.Outcome(acked.item.outbox_id, "rejected", answered, error=error)
                    )

    def _read_ahead(self, state: _Window) -> None:
        """Take what the running read-ahead found; start the next one when the messages
        waiting to be sent run low, so that the window need not drain between batches."""
        task = state.read_ahead
        if task is not None and task.done():
            state.read_ahead = None
            state.take(task.result())  # a failed commit raises here, as it would in line
        if (
            state.read_ahead is None
            and state.more
            and not state.draining
            and len(state.waiting) <= self._batch_size // 2
        ):
            # The rule: every outcome decided so far is committed before the next read, which
            # starts after the last message in hand (those in flight are still pending).
            # (The same list object: the exchange loop holds on to it.)
            decided = state.outcomes.copy()
            state.outcomes.clear()
            state.read_ahead = asyncio.create_task(
                self._commit_and_read(decided, state.hand_over(decided), state.last_id)
            )

    async def _commit_and_read(
        self, outcomes: list[Store.Outcome], items: dict[int, OutboxItem], after: int
    ) -> list[OutboxItem]:
        if outcomes:
            await self._commit(outcomes, items)
        store = self.store
        try:
            return await store.read(
                store.due, self.settings.name, datetime.now(UTC), self._batch_size, after=after
            )
        except StoreUnavailable as exc:
            log.error("store_unavailable", error=str(exc))
            return []  # what is left is read again from the start once this run ends

    async def _fail(self, state: _Window, reason: str, raw: bytes | None) -> None:
        """The link can no longer be trusted: close it (so no late ACK is ever matched to a
        later message) and retry everything not acknowledged, in wire order. The bytes that
        came instead of an ACK are archived with the oldest."""
        await self._close()
        failed = list(state.in_flight.values())
        state.in_flight.clear()
        now = datetime.now(UTC)
        self._retry(
            failed,
            reason,
            state.outcomes,
            *(
                Transmission(
                    sent.payload,
                    sent.sent_at,
                    now,
                    raw_in=raw if position == 0 else None,
                    error=reason,
                )
                for position, sent in enumerate(failed)
            ),
        )

    def _retry(
        self,
        failed: list[_Sent],
        reason: str,
        outcomes: list[Store.Outcome],
        *transmissions: Transmission,
        event: str = "lis_no_ack",
    ) -> None:
        """Retry outcomes for `failed` (with `transmissions`, one each, when given), all with
        one backoff so that they are due together and leave again in their order."""
        settings = self.settings
        attempt = failed[0].item.attempts + 1
        delay = backoff_delay(attempt, settings.retry.initial, settings.retry.maximum)
        now = datetime.now(UTC)
        for position, sent in enumerate(failed):
            transmission = (
                transmissions[position]
                if transmissions
                else Transmission(sent.payload, sent.sent_at, now, error=reason)
            )
            outcomes.append(Store.Outcome(sent.item.outbox_id, "retry", transmission, delay))
        self.health.count(settings.name, "errors")
        log.warning(
            event,
            control_id=failed[0].item.control_id,
            unacknowledged=len(failed),
            attempt=attempt,
            error=reason,
            retry_in=round(delay, 2),
        )

    async def _commit(self, outcomes: list[Store.Outcome], items: dict[int, OutboxItem]) -> None:
        """One transaction for all `outcomes` (`items`: their messages, by outbox id); counters
        and logs once it is durable."""
        store = self.store
        delivered = await store.run(store.record_outcomes, outcomes)
        per_connection: dict[str, int] = {}
        for outcome, count in zip(outcomes, delivered, strict=True):
            transmission = outcome.transmission
            item = items.get(outcome.outbox_id)
            control_id = item.control_id if item is not None else None
            if outcome.state == "delivered" and transmission is not None:
                per_connection[self.settings.name] = (
                    per_connection.get(self.settings.name, 0) + count
                )
                if item is not None and item.instrument in self.health.connections:
                    per_connection[item.instrument] = per_connection.get(item.instrument, 0) + count
                log.info(
                    "lis_ack_received",
                    control_id=control_id,
                    ack_code=transmission.ack_code,
                    attempt=item.attempts + 1 if item is not None else None,
                    results=count,
                )
            elif outcome.state == "rejected" and transmission is not None:
                log.error(
                    "lis_rejected_message",
                    control_id=control_id,
                    ack_code=transmission.ack_code,
                    text=outcome.error,
                )
        for connection, count in per_connection.items():  # once a batch, not once a message
            self.health.count(connection, "delivered", count)

    async def _read_available(self, reader: asyncio.StreamReader) -> list[bytes]:
        """Every complete message received so far, waiting for the first if there is none."""
        messages: list[bytes] = []
        while True:
            while (message := self._framer.next_message()) is not None:
                messages.append(message)
            if messages:
                return messages
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("the LIS closed the connection")
            self._framer.receive_data(data)

    def _build(self, item: OutboxItem, outcomes: list[Store.Outcome]) -> bytes | None:
        """The bytes of `item`: kept from its first sending, else built (deterministically).
        A message that cannot be built is rejected (kept, alarmed) rather than looped on."""
        if item.payload is not None:
            return item.payload
        settings = self.settings
        try:
            return build_results_message(
                settings, item.control_id, item.reports, item.decisions, item.created_at
            )
        except Exception as exc:  # a labgate bug or data the builder refuses
            error = f"not built: {exc}"
            outcomes.append(Store.Outcome(item.outbox_id, "rejected", None, error=error))
            self.health.count(settings.name, "errors")
            log.exception("lis_message_not_built", control_id=item.control_id)
            return None

    # --- the connection ----------------------------------------------------------------------

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
