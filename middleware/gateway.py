"""The gateway: everything the daemon runs, started together and stopped together.

    Gateway.run(stop)
      ├── store (migrated at start)
      ├── one listening server per analyser (AstmSession per connection)
      ├── one LisSender per LIS
      └── the HTTP API (uvicorn, in this event loop)

Stopping closes the listeners first (nothing new comes in), lets in-flight commits finish, then
cancels the sender; a message being transmitted stays `pending` and is sent again after restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import structlog
import uvicorn

from middleware.config.settings import Settings
from middleware.health import ConnectionHealth, Health
from middleware.lis.sender import LisSender
from middleware.sessions.astm import AstmSession
from middleware.store import Store
from middleware.web.app import create_app

__all__ = ["Gateway"]

log = structlog.get_logger("labgate.gateway")


def _version() -> str:
    try:
        return version("labgate")
    except PackageNotFoundError:
        return "0+unknown"


class _ApiServer(uvicorn.Server):
    """uvicorn without its own signal handling: the gateway owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


async def _supervise(name: str, run: Callable[[], Awaitable[None]]) -> None:
    """Keep a long-running task alive: a crash is logged loudly and the task restarted after a
    growing pause, so one bug cannot silently stop deliveries nor take the whole daemon down."""
    pause = 1.0
    while True:
        try:
            await run()
            return
        except Exception:
            log.exception("task_crashed_restarting", task=name, restart_in=pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 60.0)


class Gateway:
    """One labgate daemon. `ready` is set once every listener is bound."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.version = _version()
        self.health = Health()
        self.state = "starting"
        self.started_at = datetime.now(UTC)
        self.ready = asyncio.Event()
        self.addresses: dict[str, tuple[str, int]] = {}
        self.store: Store

    async def run(
        self,
        stop: asyncio.Event,
        extra: Callable[[Gateway], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        """Run until `stop` is set; `extra` (the demo's simulators) runs beside the daemon."""
        settings = self.settings
        self.store = await asyncio.to_thread(Store.open, settings.store.url)
        servers: list[asyncio.Server] = []
        tasks: list[asyncio.Task[None]] = []
        try:
            lis = settings.lis
            self.health.add(
                ConnectionHealth(lis.name, "hl7", "mllp-client", f"{lis.host}:{lis.port}")
            )
            sender = LisSender(lis, self.store, self.health)
            for instrument in settings.instruments:
                transport = instrument.transport
                session = AstmSession(instrument, self.store, self.health, lis.name, sender.wake)
                server = await asyncio.start_server(session.serve, transport.host, transport.port)
                servers.append(server)
                bound = server.sockets[0].getsockname()
                self.addresses[instrument.name] = (bound[0], bound[1])
                self.health.add(
                    ConnectionHealth(
                        instrument.name,
                        instrument.protocol,
                        transport.type,
                        f"{bound[0]}:{bound[1]}",
                        state="listening",
                    )
                )
                log.info(
                    "instrument_listening",
                    instrument=instrument.name,
                    address=f"{bound[0]}:{bound[1]}",
                )
            api_socket = socket.create_server((settings.api.host, settings.api.port))
            self.addresses["api"] = api_socket.getsockname()[:2]
            api = _ApiServer(
                uvicorn.Config(create_app(self), log_config=None, access_log=False, lifespan="off")
            )
            tasks.append(
                asyncio.create_task(_supervise("lis-sender", sender.run), name="lis-sender")
            )
            tasks.append(asyncio.create_task(api.serve(sockets=[api_socket]), name="api"))
            if extra is not None:
                tasks.append(asyncio.create_task(extra(self), name="demo"))
            self.state = "running"
            self.ready.set()
            log.info(
                "gateway_started",
                version=self.version,
                api="http://{}:{}".format(*self.addresses["api"]),
            )
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({stopper, *tasks}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            for task in done:
                if task is not stopper and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            self.state = "stopping"
            log.info("gateway_stopping")
            for server in servers:
                server.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for server in servers:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), 5)
            await asyncio.to_thread(self.store.close)
            self.state = "stopped"
            log.info("gateway_stopped")
