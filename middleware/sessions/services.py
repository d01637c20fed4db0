"""What every analyser session is given by the gateway, whatever its protocol."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import structlog

from drivers.models import Order
from middleware.health import Health
from middleware.pipeline import Pipeline
from middleware.store import Store

__all__ = ["AnalyserSession", "AskLis", "SessionServices"]

log = structlog.get_logger("labgate.session")

#: Forwards a query for specimens labgate holds no order for to the LIS (LAB-27).
AskLis = Callable[[Sequence[str], str], Awaitable[list[tuple[int, Order]]]]


@dataclass(frozen=True, slots=True)
class SessionServices:
    """The store, the health board, the LIS's name and outbox wake-up, the decision pipeline,
    and (when configured) query forwarding to the LIS."""

    store: Store
    health: Health
    lis: str
    on_stored: Callable[[], None]
    pipeline: Pipeline = field(default_factory=Pipeline)
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

    async def converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Handle one connection with the analyser until it closes."""
        peer = writer.get_extra_info("peername")
        self._active += 1
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
                if self._active == 0:
                    self.health.set_state(self.name, self.idle_state)
                writer.close()
                try:
                    await writer.wait_closed()
                except (ConnectionError, OSError):
                    pass
                log.info("analyser_disconnected")
