"""The HPRIM sender: drains one LIS's outbox as HPRIM Santé files or TCP messages (`lis.kind:
hprim`), with the HL7 sender's public face (`wake()`, `run()`), order, backoff and archive.

    outbox (pending, oldest first) -> HPRIM message (built once, bytes kept) -> spool or TCP
      spool: NAME.tmp, fsync, rename to NAME.HPR (+ NAME.OK the same way), fsync the folder
             consumed (deleted / moved / answered)  -> delivered, ack_code "AA"
             not consumed after the alarm time     -> still pending, listed in `unconsumed`
             write failed                          -> same bytes again after the backoff
      tcp:   bare (ACK/NAK byte, or none) or E1381 frames (the last frame's ACK)
             ACK                                   -> delivered, ack_code "AA"
             NAK                                   -> rejected (or retried, `on_reject`)
             nothing, link lost, garbage           -> same bytes again after the backoff

Spool names come from the outbox control id (`CONTROL_ID.HPR`), so a message written before a
crash, and not yet recorded, is written again under the same name after the restart (or left
as it is when the same bytes are already there): the LIS never sees two files for one sending.
A file only ever appears under its final name whole and synced; a crash in the middle of a
write leaves at most a temporary file, which the LIS ignores and the retry overwrites.

Up to `lis.window` files wait in the directory at once (1, the default: one at a time); they
are written in outbox order, and a failed write stops everything behind it until its retry.

`unconsumed` maps the control id of each file still in the directory after
`unconsumed_alarm_minutes` to the time it was written: the alarm center reads it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

from middleware.config.settings import HprimLinkSettings, LisSettings
from middleware.health import ConnectionHealth, Health
from middleware.lis.hprim_message import build_hprim_message
from middleware.lis.sender import NoAck, backoff_delay
from middleware.store import OutboxItem, Store, StoreUnavailable, Transmission
from protocols import astm

__all__ = ["HprimSender", "atomic_write"]

log = structlog.get_logger("labgate.lis")

_BATCH = 32
_CHUNK = 65536  # bytes per write(2): a crash can land between two of them
_ACK, _NAK = b"\x06", b"\x15"


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(final: Path, temporary: Path, data: bytes) -> None:
    """Write `data` to `temporary`, sync it, rename it to `final` and sync the folder: `final`
    exists whole or not at all, whatever happens meanwhile."""
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view[:_CHUNK])
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, final)
    _fsync_directory(final.parent)


@dataclasses.dataclass(slots=True)
class _Written:
    """A file in the spool directory, waiting for the LIS to take it."""

    item: OutboxItem
    payload: bytes
    sent_at: datetime
    path: Path


class HprimSender:
    """Delivers the outbox of one HPRIM LIS; `wake()` after each commit that added to it."""

    def __init__(self, settings: LisSettings, store: Store, health: Health) -> None:
        if settings.hprim is None:
            raise ValueError("an HPRIM sender needs the lis.hprim section")
        self.settings = settings
        self.link: HprimLinkSettings = settings.hprim
        self.store = store
        self.health = health
        #: Control id -> when its file was written, for each file the LIS has left in the
        #: directory longer than `unconsumed_alarm_minutes` (spool only).
        self.unconsumed: dict[str, datetime] = {}
        self._written: dict[str, _Written] = {}  # by control id, in writing order
        self._wake = asyncio.Event()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._e1381: astm.Link | None = None
        link = self.link
        if link.transport == "spool":
            transport, address = "spool", link.directory
        else:
            transport = "tcp+e1381" if link.framing == "e1381" else "tcp"
            address = f"{link.host}:{link.port}"
        connection = health.connections.get(settings.name)
        if connection is None:
            health.add(ConnectionHealth(settings.name, "hprim", transport, address))
        else:  # the gateway registered it as an MLLP client
            connection.protocol, connection.transport = "hprim", transport
            connection.address = address

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Deliver forever; cancelled when the daemon stops (what is in flight stays pending)."""
        with structlog.contextvars.bound_contextvars(connection=self.settings.name):
            try:
                while True:
                    try:
                        if self.link.transport == "spool":
                            await self._spool_round()
                        else:
                            await self._tcp_round()
                    except StoreUnavailable as exc:
                        log.error("store_unavailable", error=str(exc))
                        await asyncio.sleep(1.0)
            finally:
                await self._close()

    # --- common --------------------------------------------------------------------------

    async def _idle(self, poll: float | None = None) -> None:
        """Wait for `wake()`, then `poll` seconds (files in the spool: the head of the queue is
        one of them, due but waiting) or else the head's retry time."""
        timeout = poll
        if poll is None:
            due = await self.store.read(self.store.next_attempt_time, self.settings.name)
            if due is not None:
                timeout = max(0.0, (due - datetime.now(UTC)).total_seconds())
        self._wake.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _update_depth(self) -> None:
        depth = await self.store.read(self.store.outbox_depth, self.settings.name)
        self.health.outbox_depth.labels(self.settings.name).set(depth)

    def _build(self, item: OutboxItem, outcomes: list[Store.Outcome]) -> bytes | None:
        """The bytes of `item`: kept from its first sending, else built (deterministically);
        a message that cannot be built is rejected (kept for a person) rather than looped on."""
        if item.payload is not None:
            return item.payload
        try:
            return build_hprim_message(
                self.settings, item.control_id, item.reports, item.decisions, item.created_at
            )
        except Exception as exc:  # a labgate bug or data HPRIM cannot carry
            outcomes.append(
                Store.Outcome(item.outbox_id, "rejected", None, error=f"not built: {exc}")
            )
            self.health.count(self.settings.name, "errors")
            log.exception("lis_message_not_built", control_id=item.control_id)
            return None

    async def _retry(self, item: OutboxItem, transmission: Transmission, event: str) -> None:
        settings = self.settings
        attempt = item.attempts + 1
        delay = backoff_delay(attempt, settings.retry.initial, settings.retry.maximum)
        await self.store.run(self.store.mark_retry, item.outbox_id, transmission, delay)
        self.health.count(settings.name, "errors")
        log.warning(
            event,
            control_id=item.control_id,
            attempt=attempt,
            error=transmission.error,
            retry_in=round(delay, 2),
        )

    async def _delivered(self, item: OutboxItem, transmission: Transmission) -> None:
        settings = self.settings
        count = await self.store.run(self.store.mark_delivered, item.outbox_id, transmission)
        self.health.count(settings.name, "delivered", count)
        if item.instrument in self.health.connections:
            self.health.count(item.instrument, "delivered", count)
        log.info(
            "lis_ack_received",
            control_id=item.control_id,
            ack_code=transmission.ack_code,
            attempt=item.attempts + 1,
            results=count,
        )

    # --- spool ---------------------------------------------------------------------------

    def _paths(self, control_id: str) -> tuple[Path, Path, Path, Path]:
        """Final, temporary, .OK and answer paths of one message's file."""
        link = self.link
        folder = Path(link.directory)
        return (
            folder / f"{control_id}{link.data_suffix}",
            folder / f"{control_id}{link.temporary_suffix}",
            folder / f"{control_id}{link.ok_suffix}",
            folder / f"{control_id}{link.answer_suffix}",
        )

    def _write_file(self, control_id: str, payload: bytes) -> datetime:
        """Put one message in the spool directory (see `atomic_write`); returns when it was
        written (its file's time when the same bytes were already there, from before a
        restart)."""
        final, temporary, ok, _answer = self._paths(control_id)
        try:
            if final.read_bytes() == payload:
                if self.link.ok_file and not ok.exists():
                    atomic_write(ok, ok.with_name(ok.name + self.link.temporary_suffix), b"")
                return datetime.fromtimestamp(final.stat().st_mtime, UTC)
        except FileNotFoundError:
            pass
        atomic_write(final, temporary, payload)
        if self.link.ok_file:
            atomic_write(ok, ok.with_name(ok.name + self.link.temporary_suffix), b"")
        return datetime.now(UTC)

    def _consumed(self, written: _Written) -> tuple[bool, bytes | None]:
        """Whether the LIS took the file, and its answer's bytes (consumption `answered`)."""
        link = self.link
        final, _temporary, ok, answer = self._paths(written.item.control_id)
        if link.consumption == "answered":
            try:
                raw = answer.read_bytes()
            except FileNotFoundError:
                return False, None
            answer.unlink(missing_ok=True)  # archived with the transmission
            return True, raw
        if final.exists():
            return False, None
        if link.consumption == "moved" and not (Path(link.moved_to) / final.name).exists():
            log.warning("hprim_file_gone_not_moved", control_id=written.item.control_id)
        if link.ok_file:
            ok.unlink(missing_ok=True)  # the LIS took the data; its semaphore has no use left
        return True, None

    async def _spool_round(self) -> None:
        """Write what is due (up to the window), then record what the LIS has taken."""
        settings, store = self.settings, self.store
        room = settings.window - len(self._written)
        batch: list[OutboxItem] = []
        if room > 0:
            after = max((w.item.outbox_id for w in self._written.values()), default=None)
            batch = await store.read(
                store.due, settings.name, datetime.now(UTC), min(room, _BATCH), after=after
            )
        for item in batch:
            if item.control_id in self._written:
                break  # the same control id twice: one file name must not settle both
            not_built: list[Store.Outcome] = []
            payload = self._build(item, not_built)
            if payload is None:
                await store.run(store.record_outcomes, not_built)
                continue
            attempt = item.attempts + 1
            started = datetime.now(UTC)
            try:
                sent_at = await asyncio.to_thread(self._write_file, item.control_id, payload)
            except OSError as exc:
                self.health.set_state(settings.name, "disconnected")
                failed = Transmission(
                    payload, started, datetime.now(UTC), error=f"spool write failed: {exc}"
                )
                await self._retry(item, failed, "hprim_write_failed")
                break  # nothing behind it may overtake it
            self.health.set_state(settings.name, "connected")
            self.health.message_sent(settings.name, attempt=attempt)
            path = self._paths(item.control_id)[0]
            self._written[item.control_id] = _Written(item, payload, sent_at, path)
            log.info("hprim_file_written", control_id=item.control_id, attempt=attempt)
        await self._collect()
        if self._written:
            if len(batch) < room or room <= 0:  # nothing more to write now: wait a poll
                await self._idle(self.link.poll_seconds)
            return
        if not batch:
            await self._update_depth()
            await self._idle()

    async def _collect(self) -> None:
        """Record each file the LIS has taken; list those it left too long."""
        now = datetime.now(UTC)
        limit = timedelta(minutes=self.link.unconsumed_alarm_minutes)
        for control_id, written in list(self._written.items()):
            taken, raw = await asyncio.to_thread(self._consumed, written)
            if not taken:
                if now - written.sent_at >= limit and control_id not in self.unconsumed:
                    self.unconsumed[control_id] = written.sent_at
                    log.warning(
                        "hprim_file_not_consumed",
                        control_id=control_id,
                        written_at=written.sent_at.isoformat(),
                    )
                continue
            answered_at = datetime.now(UTC)
            self.health.ack_received(
                self.settings.name, (answered_at - written.sent_at).total_seconds()
            )
            transmission = Transmission(
                written.payload, written.sent_at, answered_at, raw_in=raw, ack_code="AA"
            )
            await self._delivered(written.item, transmission)
            del self._written[control_id]
            self.unconsumed.pop(control_id, None)

    # --- TCP -----------------------------------------------------------------------------

    async def _tcp_round(self) -> None:
        store = self.store
        batch = await store.read(store.due, self.settings.name, datetime.now(UTC), _BATCH)
        if not batch:
            await self._update_depth()
            await self._idle()
            return
        for item in batch:
            if not await self._deliver_tcp(item):
                break  # it waits for its retry; nothing behind it may overtake it

    async def _deliver_tcp(self, item: OutboxItem) -> bool:
        """Send one message; False when it must wait for a retry (the queue stops behind it)."""
        settings, store = self.settings, self.store
        not_built: list[Store.Outcome] = []
        payload = self._build(item, not_built)
        if payload is None:
            await store.run(store.record_outcomes, not_built)
            return True
        sent_at = datetime.now(UTC)
        try:
            code, raw = await self._exchange(payload, item.attempts + 1)
        except NoAck as exc:
            failed = Transmission(
                payload, sent_at, datetime.now(UTC), raw_in=exc.raw, error=exc.reason
            )
            await self._retry(item, failed, "lis_no_ack")
            return False
        answered = Transmission(payload, sent_at, datetime.now(UTC), raw_in=raw, ack_code=code)
        if code == "AA":
            await self._delivered(item, answered)
            return True
        error = "LIS answered NAK"
        if settings.on_reject == "retry":
            await self._retry(
                item, dataclasses.replace(answered, error=error), "lis_rejected_will_retry"
            )
            return False
        self.health.count(settings.name, "errors")
        await store.run(store.mark_rejected, item.outbox_id, error, answered)
        log.error("lis_rejected_message", control_id=item.control_id, ack_code=code)
        return True

    async def _exchange(self, payload: bytes, attempt: int) -> tuple[str, bytes | None]:
        """Send one message and wait for its answer: ("AA" or "AR", the bytes that said so).
        Any failure closes the connection, so nothing late is read as the next one's answer."""
        link = self.link
        loop = asyncio.get_running_loop()
        try:
            reader, writer = await self._connect()
            started = loop.time()
            async with asyncio.timeout(link.ack_timeout):
                if link.framing == "e1381":
                    answer = await self._send_framed(reader, writer, payload)
                else:
                    writer.write(payload)
                    await writer.drain()
                    answer = await self._raw_answer(reader)
        except TimeoutError:
            await self._close()
            raise NoAck(f"no acknowledgement within {link.ack_timeout:g} s") from None
        except (OSError, ConnectionError) as exc:
            await self._close()
            raise NoAck(f"link to LIS failed: {exc}") from None
        except NoAck:
            await self._close()
            raise
        self.health.message_sent(self.settings.name, attempt=attempt)
        self.health.ack_received(self.settings.name, loop.time() - started)
        return answer

    async def _raw_answer(self, reader: asyncio.StreamReader) -> tuple[str, bytes | None]:
        if self.link.raw_ack == "none":
            return "AA", None  # assumed delivered once written: the LIS says nothing
        data = await reader.read(1)
        if not data:
            raise ConnectionError("the LIS closed the connection")
        if data == _ACK:
            return "AA", data
        if data == _NAK:
            return "AR", data
        raise NoAck(f"unexpected answer {data!r}", data)

    async def _send_framed(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes
    ) -> tuple[str, bytes | None]:
        """E1381 in the sending role: ENQ, frames, each ACKed; the last frame's ACK is the
        acknowledgement (then EOT). The link's own timers run meanwhile."""
        assert self._e1381 is not None
        link = self._e1381
        loop = asyncio.get_running_loop()
        link.send_message(payload, loop.time())
        while True:
            outcome: tuple[str, bytes | None] | None = None
            while (event := link.next_event()) is not None:
                if isinstance(event, astm.MessageSent):
                    outcome = ("AA", _ACK)
                elif isinstance(event, astm.MessageFailed):
                    writer.write(link.data_to_send())
                    raise NoAck(f"E1381 transfer failed: {event.reason}")
                elif isinstance(event, astm.MessageReceived):
                    # A LIS sending us records over this link: nothing labgate reads here.
                    link.acknowledge(loop.time())
                    log.warning("hprim_lis_message_ignored", size=len(event.raw))
            out = link.data_to_send()
            if out:
                writer.write(out)
                await writer.drain()
            if outcome is not None:
                return outcome
            deadline = link.get_timer()
            try:
                async with asyncio.timeout_at(deadline):
                    data = await reader.read(65536)
            except TimeoutError:
                link.handle_timer(loop.time())
                continue
            if not data:
                raise ConnectionError("the LIS closed the connection")
            link.receive_data(data, loop.time())

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._writer is not None and self._reader is not None and not self._writer.is_closing():
            if not self._reader.at_eof():
                return self._reader, self._writer
            await self._close()  # the LIS closed the link while idle
        link = self.link
        async with asyncio.timeout(link.connect_timeout):
            reader, writer = await asyncio.open_connection(link.host, link.port)
        self._reader, self._writer = reader, writer
        self._e1381 = astm.Link(astm.Role.HOST) if link.framing == "e1381" else None
        self.health.set_state(self.settings.name, "connected")
        log.info("lis_connected", address=f"{link.host}:{link.port}")
        return reader, writer

    async def _close(self) -> None:
        writer, self._reader, self._writer, self._e1381 = self._writer, None, None, None
        if writer is None:
            return
        self.health.set_state(self.settings.name, "disconnected")
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ConnectionError):
            pass
