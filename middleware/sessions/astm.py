"""An ASTM analyser connection: E1381 link core + E1394 decoding + driver + store.

The session is the thin asyncio layer around `protocols.astm.Link`. Its one rule: the frame that
completes an E1394 message (the ETX frame carrying the L record) is acknowledged only after the
message, its results and its outbox row are committed. Frames that end an E1381 message without
completing the E1394 one (analysers that send one record per ETX frame) are committed to the trace
before their ACK, so nothing acknowledged exists only in memory. When the store cannot commit,
the frame is NAKed and the analyser retransmits it, as E1381 intends (LIS1-A §6.5.1.2).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from drivers import registry
from drivers.base import DriverError
from drivers.models import SpecimenReport
from middleware.config.settings import AstmInstrumentSettings
from middleware.health import Health
from middleware.pipeline import decide
from middleware.store import IncomingMessage, Store, StoreUnavailable
from protocols import astm
from protocols.errors import RemoteProtocolError

__all__ = ["AstmSession", "completes_message"]

log = structlog.get_logger("labgate.astm")

_READ_SIZE = 65536


def completes_message(text: bytes) -> bool:
    """True when E1394 text holds its L (terminator) record."""
    if not text.startswith(b"H") or len(text) < 2:
        return True  # not E1394 at all: nothing to wait for, decode it now and refuse it
    field = text[1:2]
    for line in text.replace(b"\n", b"\r").split(b"\r"):
        if line.startswith(b"L") and (len(line) == 1 or line[1:2] == field):
            return True
    return False


class AstmSession:
    """Serves one analyser connection at a time on its configured transport."""

    def __init__(
        self,
        settings: AstmInstrumentSettings,
        store: Store,
        health: Health,
        lis: str,
        on_stored: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.store = store
        self.health = health
        self.lis = lis
        self.on_stored = on_stored
        self.driver = registry.get(settings.driver)
        self._timers = astm.Timers(
            establish=settings.timers.establish,
            reply=settings.timers.reply,
            receive=settings.timers.receive,
            busy=settings.timers.busy,
        )
        self._active = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Handle one TCP connection from the analyser until it closes."""
        name = self.settings.name
        peer = writer.get_extra_info("peername")
        connection_id = uuid.uuid4().hex[:8]
        self._active += 1
        self.health.set_state(name, "connected")
        with structlog.contextvars.bound_contextvars(instrument=name, connection=connection_id):
            log.info("analyser_connected", peer=f"{peer[0]}:{peer[1]}" if peer else None)
            try:
                await _Conversation(self, reader, writer).run()
            except (ConnectionError, OSError) as exc:
                log.warning("analyser_connection_lost", error=str(exc))
            except Exception:
                # A labgate bug (LocalProtocolError...): drop this connection loudly, keep the
                # daemon and every other analyser running; the analyser reconnects and resends
                # whatever it had not been acknowledged for.
                self.health.count(name, "errors")
                log.exception("analyser_session_failed")
            finally:
                self._active -= 1
                if self._active == 0:
                    self.health.set_state(name, "listening")
                writer.close()
                try:
                    await writer.wait_closed()
                except (ConnectionError, OSError):
                    pass
                log.info("analyser_disconnected")


class _Conversation:
    """The state of one connection: its link core and the E1394 message being assembled."""

    def __init__(
        self, session: AstmSession, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.session = session
        self.reader = reader
        self.writer = writer
        self.loop = asyncio.get_running_loop()
        self.link = astm.Link(astm.Role.HOST, timers=session._timers)
        self.text = bytearray()
        self.raw = bytearray()
        self.message_id = uuid.uuid4().hex

    async def run(self) -> None:
        while True:
            await self._flush()
            timer = self.link.get_timer()
            timeout = None if timer is None else max(0.0, timer - self.loop.time())
            try:
                data = await asyncio.wait_for(self.reader.read(_READ_SIZE), timeout)
            except TimeoutError:
                self.link.handle_timer(self.loop.time())
                await self._handle_events()
                continue
            if not data:
                await self._flush()
                await self._commit_unterminated()
                return
            self.link.receive_data(data, self.loop.time())
            await self._handle_events()

    async def _flush(self) -> None:
        out = self.link.data_to_send()
        if out:
            self.writer.write(out)
            await self.writer.drain()

    async def _handle_events(self) -> None:
        while (event := self.link.next_event()) is not None:
            if isinstance(event, astm.MessageReceived):
                await self._on_message(event)
            elif isinstance(event, astm.FrameRejected):
                self.session.health.count(self.session.settings.name, "errors")
                log.warning("frame_nak_sent", reason=event.reason, length=len(event.raw))
                await self._trace("frame_rejected", event.raw, event.reason)
            elif isinstance(event, astm.TransferAborted):
                # Only the unacknowledged frames are lost, and the analyser sends them again;
                # records already acknowledged stay assembled for the rest of the message.
                self.session.health.count(self.session.settings.name, "errors")
                log.warning("transfer_aborted", reason=event.reason, pending=len(self.text))
            elif isinstance(event, astm.TransferEnded):
                await self._commit_unterminated()
            elif isinstance(event, astm.DuplicateFrameIgnored):
                log.info("duplicate_frame_ignored", length=len(event.raw))
            await self._flush()

    async def _on_message(self, event: astm.MessageReceived) -> None:
        text_mark, raw_mark = len(self.text), len(self.raw)
        self.text += event.text
        self.raw += event.raw
        complete = completes_message(bytes(self.text))
        if complete:
            stored = await self._commit()
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

    async def _commit(self) -> bool:
        """Decode, map and commit the assembled message; False when the store could not commit.

        A message that cannot be decoded or mapped is committed as refused, with the reason, and
        still acknowledged: retransmitting the same bytes would not make them valid."""
        session = self.session
        name = session.settings.name
        raw, text, message_id = bytes(self.raw), bytes(self.text), self.message_id
        with structlog.contextvars.bound_contextvars(message_id=message_id):
            try:
                reports = self._decode(text)
            except (RemoteProtocolError, DriverError) as exc:
                if not await self._save(
                    session.store.save_refused, name, message_id, raw, str(exc)
                ):
                    return False
                session.health.count(name, "received")
                session.health.count(name, "errors")
                log.warning("message_refused", reason=str(exc))
                return True
            decisions = tuple(decide(result) for report in reports for result in report.results)
            incoming = IncomingMessage(
                message_id=message_id,
                connection=name,
                protocol="astm",
                received_at=datetime.now(UTC),
                raw=raw,
                reports=tuple(reports),
                decisions=decisions,
                lis=session.lis,
                forward=any(not report.is_qc and report.results for report in reports),
            )
            if not await self._save(session.store.save_message, incoming):
                return False
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
            return True

    async def _commit_unterminated(self) -> None:
        """The analyser ended the transfer (or the connection) without an L record: every frame
        of what it sent was acknowledged and is in the trace; keep the message, never lose it."""
        if self.text:
            log.warning("message_without_terminator", message_id=self.message_id)
            await self._commit()
            self._reset()

    def _decode(self, text: bytes) -> list[SpecimenReport]:
        message = astm.decode_message(text, self.session.settings.encoding)
        return self.session.driver.to_reports(message, self.session.settings.name)

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
