"""What every analyser session is given by the gateway, whatever its protocol."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import structlog

from drivers.models import Order
from middleware.health import Health
from middleware.store import Duplicate, IncomingMessage, Store

if TYPE_CHECKING:
    from middleware.sessions.deciding import LiveValidation

__all__ = ["AnalyserSession", "AskLis", "SessionServices", "store_unless_resent"]

log = structlog.get_logger("labgate.session")

#: Forwards a query for specimens labgate holds no order for to the LIS (LAB-27).
AskLis = Callable[[Sequence[str], str], Awaitable[list[tuple[int, Order]]]]


async def store_unless_resent(
    store: Store, incoming: IncomingMessage, window_hours: float, raw: bytes, sender: str
) -> int | Duplicate | None:
    """Commit `incoming` (group commit, see `Store.save`) unless it repeats a message stored
    from the same connection in the last `window_hours` (0: never looked for): the analyser
    resending after losing our acknowledgement (LIS1-A §6.5.1.2, HL7 original mode, POCT1-A
    ACK). The writer looks in the transaction that would store it; a repeat stores nothing
    but a trace line naming the original. Raises StoreUnavailable when nothing is durable."""
    if window_hours > 0:
        since = incoming.received_at - timedelta(hours=window_hours)
        incoming = dataclasses.replace(incoming, duplicate_since=since)
    stored = await store.save(incoming)
    if isinstance(stored, Duplicate):
        await store.run(
            store.save_trace,
            incoming.connection,
            "duplicate_message",
            raw,
            message_id=stored.original,
            detail=f"resent by the {sender}; already stored",
        )
        log.info("duplicate_message_ignored", original=stored.original)
    return stored


@dataclass(frozen=True, slots=True)
class SessionServices:
    """The store, the health board, the LIS's name and outbox wake-up, the live validation
    (pipeline, switches, QC), and (when configured) query forwarding to the LIS."""

    store: Store
    health: Health
    lis: str
    on_stored: Callable[[], None]
    validation: LiveValidation
    ask_lis: AskLis | None = None
    gateway_name: str = "LABGATE"


class AnalyserSession:
    """The life of one analyser connection, the same for every protocol: connected state and
    counters, bound log context, and a failure confined to that connection (a labgate bug such
    as a LocalProtocolError drops the connection loudly; the daemon and every other analyser go
    on, and the analyser resends whatever was not acknowledged). Subclasses `converse`."""

    def __init__(self, name: str, health: Health) -> None:
        self.name = name
        self.health = health
        self.idle_state = "listening"  # "disconnected" for links labgate opens itself
        self._active = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._idle = asyncio.Event()  # set while no conversation is running
        self._idle.set()

    async def converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def disconnect_all(self) -> None:
        """Close every open connection of this analyser (it was removed from the configuration
        or changed): its conversations end, and what was not acknowledged it sends again."""
        writers, self._writers = self._writers, set()
        for writer in writers:
            writer.close()
        for writer in writers:
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
        # Let each conversation finish its own clean-up (state, counters) before the caller
        # forgets this analyser.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._idle.wait()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Handle one connection with the analyser until it closes."""
        peer = writer.get_extra_info("peername")
        self._active += 1
        self._idle.clear()
        self._writers.add(writer)
        self.health.set_state(self.name, "connected")
        with structlog.contextvars.bound_contextvars(
            instrument=self.name, connection=uuid.uuid4().hex[:8]
        ):
            log.info("analyser_connected", peer=f"{peer[0]}:{peer[1]}" if peer else None)
            try:
                await self.converse(reader, writer)
            except (ConnectionError, OSError) as exc:
                log.warning("analyser_connection_lost", error=str(exc))
            except Exception:
                self.health.count(self.name, "errors")
                log.exception("analyser_session_failed")
            finally:
                self._active -= 1
                self._writers.discard(writer)
                if self._active == 0:
                    self._idle.set()
                    self.health.set_state(self.name, self.idle_state)
                writer.close()
                try:
                    await writer.wait_closed()
                except (ConnectionError, OSError):
                    pass
                log.info("analyser_disconnected")
