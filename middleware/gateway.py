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
import functools
import socket
import ssl
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import structlog
import uvicorn

from middleware.alarms.center import AlarmCenter
from middleware.config.loader import read_text_file
from middleware.config.settings import (
    ApiSettings,
    Hl7InstrumentSettings,
    InstrumentSettings,
    Poct1aInstrumentSettings,
    Settings,
    TcpServerTransport,
)
from middleware.health import ConnectionHealth, Health
from middleware.io.links import describe, keep_open, serve_tcp
from middleware.io.tls import client_context, server_context
from middleware.lis.hprim_sender import HprimSender
from middleware.lis.orders import LisOrderReceiver
from middleware.lis.queries import LisQueryClient
from middleware.lis.sender import LisSender
from middleware.ops import daemon as operations
from middleware.pipeline import Pipeline
from middleware.sessions.astm import AstmSession
from middleware.sessions.deciding import LiveValidation
from middleware.sessions.hl7 import Hl7Session
from middleware.sessions.poct1a import Poct1aSession
from middleware.sessions.services import SessionServices
from middleware.store import Store
from middleware.validation.qc_plan import load_qc_plan
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


def _api_config(app: Any, api: ApiSettings) -> uvicorn.Config:
    """uvicorn's settings for the API listener: HTTPS when `api.tls` is set (GBUI II-3, VII-2
    1a), client certificates signed by `ca` required when the lab asks. uvicorn's context is
    Python's TLS server default: TLS 1.2 or newer, as the MLLP listeners (`io/tls.py`)."""
    config: dict[str, Any] = {"log_config": None, "access_log": False, "lifespan": "off"}
    tls = api.tls
    if tls is not None:
        config.update(
            ssl_certfile=tls.cert,
            ssl_keyfile=tls.key,
            ssl_ca_certs=tls.ca or None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_NONE,
        )
    return uvicorn.Config(app, **config)


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


@dataclass(slots=True)
class _Instrument:
    """What runs for one configured analyser."""

    settings: InstrumentSettings
    session: AstmSession | Hl7Session | Poct1aSession
    server: asyncio.Server | None
    tasks: list[asyncio.Task[None]]


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
        self.sessions: dict[str, AstmSession | Hl7Session | Poct1aSession] = {}
        self.store: Store
        self.validation: LiveValidation
        self.alarms: AlarmCenter
        self._services: SessionServices
        self._instruments: dict[str, _Instrument] = {}

    async def _start_instrument(self, instrument: InstrumentSettings) -> _Instrument:
        """Start serving one analyser: its session, and its listener or the link labgate keeps
        open to it, plus its own tasks (order push)."""
        session: AstmSession | Hl7Session | Poct1aSession
        services = self._services
        tasks: list[asyncio.Task[None]] = []
        tls = getattr(instrument, "tls", None)
        if isinstance(instrument, Hl7InstrumentSettings):
            session = Hl7Session(instrument, services)
            if (pusher := session.order_pusher) is not None:  # LAB-28 order push
                task_name = f"orders-{instrument.name}"
                tasks.append(asyncio.create_task(_supervise(task_name, pusher.run), name=task_name))
        elif isinstance(instrument, Poct1aInstrumentSettings):
            session = Poct1aSession(instrument, services)  # POC device, connects in
        else:
            session = AstmSession(instrument, services)
        self.sessions[instrument.name] = session
        transport = instrument.transport
        kind = transport.type + ("+tls" if tls else "")
        health = ConnectionHealth(instrument.name, instrument.protocol, kind, describe(transport))
        self.health.add(health)
        server = None
        if isinstance(transport, TcpServerTransport):
            context = server_context(tls) if tls else None
            server = await serve_tcp(transport, session.serve, context)
            bound = server.sockets[0].getsockname()
            self.addresses[instrument.name] = (bound[0], bound[1])
            health.address = f"{bound[0]}:{bound[1]}"
            self.health.set_state(instrument.name, "listening")
            log.info("instrument_listening", instrument=instrument.name, address=health.address)
        else:
            # labgate opens this link itself and keeps it open.
            session.idle_state = "disconnected"
            name = instrument.name
            opener = keep_open(
                name,
                transport,
                session.serve,
                functools.partial(self.health.set_state, name),
                client_context(tls) if tls else None,
                tls.server_hostname if tls else None,
            )
            tasks.append(asyncio.create_task(opener, name=f"link-{name}"))
            log.info("instrument_opening", instrument=name, address=health.address)
        return _Instrument(instrument, session, server, tasks)

    async def _stop_instrument(self, name: str) -> None:
        """Stop serving one analyser: no new connection, its open ones closed (what it had not
        seen acknowledged it sends again), its tasks cancelled."""
        running = self._instruments.pop(name)
        if running.server is not None:
            running.server.close()
        for task in running.tasks:
            task.cancel()
        await running.session.disconnect_all()
        await asyncio.gather(*running.tasks, return_exceptions=True)
        if running.server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await running.server.wait_closed()
        self.sessions.pop(name, None)
        self.addresses.pop(name, None)
        self.health.remove(name)

    async def reload(self, new: Settings) -> list[str]:
        """Apply a new configuration without a restart (SIGHUP): instruments added, changed or
        removed — the unchanged ones keep their connections — and the alarm thresholds. What
        cannot change while running (store, API, LIS link, validation files) is kept and
        reported; returns those notes."""
        kept = [
            section
            for section in ("gateway", "store", "api", "lis", "validation", "backup")
            if getattr(new, section, None) != getattr(self.settings, section, None)
        ]
        old = {i.name: i for i in self.settings.instruments}
        wanted = {i.name: i for i in new.instruments}
        for name in old.keys() - wanted.keys():
            await self._stop_instrument(name)
            log.info("instrument_removed", instrument=name)
        for name, instrument in wanted.items():
            if name in old and old[name] == instrument:
                continue
            if name in old:
                await self._stop_instrument(name)
            self._instruments[name] = await self._start_instrument(instrument)
            log.info("instrument_changed" if name in old else "instrument_added", instrument=name)
        self.alarms.reconfigure(new.alarms)
        updates = {"instruments": new.instruments, "alarms": new.alarms}
        self.settings = self.settings.model_copy(update=updates)
        for section in kept:
            log.warning("reload_needs_restart", section=section)
        return kept

    async def _validation(self, wake_sender: Callable[[], None]) -> LiveValidation:
        """The live validation: QC plan from the configuration, rule set and switches from the
        store (the configured rule-set file seeds an empty store)."""
        settings = self.settings.validation
        qc_plan = load_qc_plan(settings.qc) if settings and settings.qc else None
        validation = LiveValidation(self.store, Pipeline(), qc_plan, wake_sender)
        seed = (settings.rules, read_text_file(settings.rules)) if settings else None
        await validation.start(seed)
        pipeline = validation.pipeline
        if pipeline.ruleset is not None:
            log.info("rule_set_loaded", rule_set=pipeline.version, biologist=pipeline.biologist)
        return validation

    async def _watch_validation(self) -> None:
        settings = self.settings.validation
        await self.validation.watch(settings.reload_seconds if settings else 1.0)

    def _wake_session(self, instrument: str) -> None:
        session = self.sessions.get(instrument)
        if session is not None:
            session.orders_waiting()

    @staticmethod
    async def _until_stopped(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
        """Wait for `stop`; a task that ends normally (a demo analyser that sent its count) is
        fine, one that fails stops the daemon with its error."""
        stopper = asyncio.create_task(stop.wait())
        running = {stopper, *tasks}
        try:
            while not stopper.done():
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is not stopper and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
        finally:
            stopper.cancel()

    async def run(
        self,
        stop: asyncio.Event,
        extra: Callable[[Gateway], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        """Run until `stop` is set; `extra` (the demo's simulators) runs beside the daemon."""
        settings = self.settings
        self.store = await asyncio.to_thread(Store.open, settings.store.url)
        # Several gateways may share one PostgreSQL store: this one's name in the outbox claims,
        # held longer than any one exchange with the LIS can take.
        self.store.claimant = f"{settings.gateway}-{uuid.uuid4().hex[:8]}"
        self.store.claim_lease = timedelta(
            seconds=max(120.0, 4 * settings.lis.ack_timeout + settings.lis.retry.maximum)
        )
        servers: list[asyncio.Server] = []
        tasks: list[asyncio.Task[None]] = []
        api: _ApiServer | None = None
        api_socket: socket.socket | None = None
        try:
            lis = settings.lis
            self.health.add(
                ConnectionHealth(
                    lis.name,
                    "hl7",
                    "mllp-client+tls" if lis.tls else "mllp-client",
                    f"{lis.host}:{lis.port}",
                )
            )
            sender = (HprimSender if lis.kind == "hprim" else LisSender)(
                lis, self.store, self.health
            )
            ask_lis = LisQueryClient(lis, self.store).ask if lis.query_forwarding else None
            self.validation = await self._validation(sender.wake)
            tasks.append(
                asyncio.create_task(
                    _supervise("validation-reload", self._watch_validation), name="validation"
                )
            )
            self.alarms = AlarmCenter(
                settings.alarms, self.store, self.health, self.validation, settings.gateway, sender
            )
            tasks.append(asyncio.create_task(_supervise("alarms", self.alarms.run), name="alarms"))
            services = SessionServices(
                self.store,
                self.health,
                lis.name,
                sender.wake,
                validation=self.validation,
                ask_lis=ask_lis,
                gateway_name=settings.gateway,
            )
            self._services = services
            for instrument in settings.instruments:
                self._instruments[instrument.name] = await self._start_instrument(instrument)
            if lis.orders is not None:
                receiver = LisOrderReceiver(
                    f"{lis.name}-orders", lis.orders, self.store, self.health, self._wake_session
                )
                self.health.add(
                    ConnectionHealth(receiver.name, "hl7", "tcp-server", "", state="listening")
                )
                server = await asyncio.start_server(
                    receiver.serve,
                    lis.orders.host,
                    lis.orders.port,
                    ssl=server_context(lis.orders.tls) if lis.orders.tls else None,
                )
                servers.append(server)
                bound = server.sockets[0].getsockname()
                self.addresses[receiver.name] = (bound[0], bound[1])
                self.health.connections[receiver.name].address = f"{bound[0]}:{bound[1]}"
                log.info("lis_orders_listening", address=f"{bound[0]}:{bound[1]}")
            api_socket = socket.create_server((settings.api.host, settings.api.port))
            self.addresses["api"] = api_socket.getsockname()[:2]
            api = _ApiServer(_api_config(create_app(self), settings.api))
            tasks.append(
                asyncio.create_task(_supervise("lis-sender", sender.run), name="lis-sender")
            )
            tasks.append(asyncio.create_task(api.serve(sockets=[api_socket]), name="api"))
            if extra is not None:
                tasks.append(asyncio.create_task(extra(self), name="demo"))
            self.state = "running"
            self.ready.set()
            tasks += operations.start(self)  # READY=1, watchdog, metrics, backups
            log.info(
                "gateway_started",
                version=self.version,
                api="{}://{}:{}".format(settings.api.scheme, *self.addresses["api"]),
            )
            await self._until_stopped(stop, tasks)
        finally:
            self.state = "stopping"
            operations.stopping()  # STOPPING=1
            log.info("gateway_stopping")
            for server in servers:
                server.close()
            if api is not None:
                # uvicorn's own shutdown closes its listener; a cancelled serve() left it
                # answering (with the store closed under it) until the process ended.
                api.should_exit = True
            for name in list(self._instruments):
                await self._stop_instrument(name)
            for task in tasks:
                if task.get_name() != "api":
                    task.cancel()
            api_task = next((t for t in tasks if t.get_name() == "api"), None)
            if api_task is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5):
                        await asyncio.wait([api_task])
                api_task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if api_socket is not None:
                api_socket.close()
            for server in servers:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        await server.wait_closed()
            await asyncio.to_thread(self.store.close)
            self.state = "stopped"
            log.info("gateway_stopped")
