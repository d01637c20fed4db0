"""A POCT1-A point-of-care device connection: the host conversation core + driver + store.

The device connects to labgate (a TCP server per device). The session is the thin asyncio
layer around `protocols.poct1a.HostConversation`; its rules:

- Results and QC (OBS) are decided (origin "poc", at the configured `location`, GBUI XIII) and
  committed before the device gets its ACK AA. When the store cannot commit, labgate ends the
  conversation (END ABN) without acknowledging: the device keeps the results and sends them
  again when it reconnects.
- With an operator list configured, the device gets it (OPL.R01, only operators whose
  certification runs today), and a test event by anyone else is kept as refused with the
  reason — never dropped silently — and answered ACK AE with that reason.
- A device the lab blocks (`labgate device block NAME`) is locked (DTV LOCK) as soon as it
  connects and whenever it becomes blocked, and unlocked (DTV UNLOCK) when unblocked (GBUI
  XIII-2 4: "l'automate doit pouvoir être bloqué depuis le laboratoire"). Results that still
  arrive from it are quarantined by the pipeline (`device_blocked`).
- A device found locked when it connects is unlocked only if labgate locked it (since the
  daemon started): a lock the device set itself (a QC lockout, say) is not labgate's to lift.
- Where the lock stands (asked, acknowledged), the device's last status and the operator list
  it was given are on its connection's health (`DeviceState`): `/api/health` and the
  dashboard show a block taking hold on the device at once.
- Every device message that is not results (HEL, DST, events) and every message labgate sends
  on its own (directives, operator lists, requests, END) is kept in the trace, with the
  device's answers; a refused message is kept with why.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime

import structlog

from drivers.poct1a import operator_refusal, reports_from_poct1a
from middleware.config.settings import Poct1aInstrumentSettings
from middleware.health import DeviceState
from middleware.sessions.services import AnalyserSession, SessionServices, store_unless_resent
from middleware.store import Duplicate, StoreUnavailable
from protocols import poct1a

__all__ = ["Poct1aSession"]

log = structlog.get_logger("labgate.poct1a")

_READ_SIZE = 65536
#: How often a connection looks at the device's blocked state (an in-memory set the live
#: validation reloads every `validation.reload_seconds`).
_BLOCK_POLL = 0.2
#: Pause before asking again after the device refused LOCK or UNLOCK (busy: ESC CNC).
_DIRECTIVE_RETRY = 5.0
#: ACK.error_detail_cd for an operator not on the list: "103 value not found" [model].
_NOT_ON_LIST = "103"


def _local_now() -> datetime:
    """The gateway's clock for message headers, with its offset (fact sheet §3)."""
    return datetime.now().astimezone().replace(microsecond=0)


class Poct1aSession(AnalyserSession):
    """One POCT1-A device: serves each connection it makes to labgate."""

    def __init__(self, settings: Poct1aInstrumentSettings, services: SessionServices) -> None:
        super().__init__(settings.name, services.health)
        self.settings = settings
        self.store = services.store
        self.lis = services.lis
        self.on_stored = services.on_stored
        self.validation = services.validation
        self.timers = poct1a.HostTimers(
            hello=settings.timeouts.hello, reply=settings.timeouts.reply
        )
        #: Operator id -> last day of certification (None: no end). Empty: no check.
        self.certified: dict[str, date | None] = {
            operator.id: operator.valid_until for operator in settings.operators
        }
        #: What the lab sees of the device (on its connection's health). `device.locked`:
        #: labgate locked the device (its LOCK was acknowledged) and has not unlocked it since,
        #: kept across reconnections, not across restarts of the daemon.
        self.device = DeviceState(blocked=lambda: self.blocked)
        services.health.attach_device(settings.name, self.device)

    @property
    def locked_by_labgate(self) -> bool:
        return self.device.locked

    @property
    def blocked(self) -> bool:
        """The lab blocks this device (`labgate device block`), as the daemon last read it."""
        return self.name in self.validation.pipeline.blocked_devices

    def orders_waiting(self) -> None:
        """POCT1-A devices take no orders from labgate: nothing to do."""

    def operator_list(self, today: date) -> list[poct1a.Operator]:
        """The operators to send: those whose certification runs `today`."""
        return [
            poct1a.Operator(
                operator.id,
                operator.name,
                method="ALL",
                expiration_date=operator.valid_until.isoformat() if operator.valid_until else "",
            )
            for operator in self.settings.operators
            if operator.valid_until is None or operator.valid_until >= today
        ]

    async def converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: its conversation, until either side ends it."""
        await _Conversation(self, reader, writer).run()


class _Conversation:
    """The state of one connection: the conversation core and where the lock stands."""

    def __init__(
        self, session: Poct1aSession, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.session = session
        self.reader = reader
        self.writer = writer
        self.loop = asyncio.get_running_loop()
        settings = session.settings
        self.core = poct1a.HostConversation(
            self.loop.time(),
            timers=session.timers,
            max_message=settings.max_message,
            continuous=settings.continuous,
            clock=_local_now,
        )
        self.device_id = ""
        # What labgate last asked of the device on this connection: True LOCK, False UNLOCK
        # (or nothing to undo), None not yet known (before the first DST, after a refusal).
        self.lock_asked: bool | None = None
        self.status_seen = False
        self.lock_retry_at = 0.0

    async def run(self) -> None:
        core = self.core
        while True:
            await self._flush()
            if core.state is poct1a.ConversationState.CLOSED:
                return
            self._follow_block()
            await self._flush()
            timer = core.get_timer()
            now = self.loop.time()
            wait = _BLOCK_POLL if timer is None else min(_BLOCK_POLL, max(0.0, timer - now))
            try:
                async with asyncio.timeout(wait):
                    data = await self.reader.read(_READ_SIZE)
            except TimeoutError:
                core.handle_timer(self.loop.time())  # does nothing before its deadline
            else:
                if not data:
                    log.info("device_hung_up", state=core.state.name)
                    return
                core.receive_data(data, self.loop.time())
            await self._handle_events()

    async def _flush(self) -> None:
        out = self.core.data_to_send()
        if out:
            self.writer.write(out)
            await self.writer.drain()

    # --- the lock -----------------------------------------------------------------------

    def _follow_block(self) -> None:
        """Lock or unlock the device when the lab's block changed (or a refusal is due again)."""
        if not self.status_seen or self.loop.time() < self.lock_retry_at:
            return
        blocked = self.session.blocked
        if blocked == self.lock_asked:
            return
        self._ask_lock(blocked)

    def _ask_lock(self, lock: bool) -> None:
        now = self.loop.time()
        if lock:
            self.core.lock(now)
        else:
            self.core.unlock(now)
        self.lock_asked = lock
        log.info("device_lock_requested" if lock else "device_unlock_requested")

    # --- events -------------------------------------------------------------------------

    async def _handle_events(self) -> None:
        while (event := self.core.next_event()) is not None:
            if isinstance(event, poct1a.ObservationsReceived):
                await self._on_observations(event)
            elif isinstance(event, poct1a.ObservationsUnreadable):
                await self._on_unreadable(event)
            elif isinstance(event, poct1a.HelloReceived):
                await self._on_hello(event)
            elif isinstance(event, poct1a.StatusReceived):
                await self._on_status(event)
            elif isinstance(event, poct1a.HostMessageSent):
                await self._on_sent(event)
            elif isinstance(event, poct1a.HostMessageAccepted | poct1a.HostMessageRefused):
                await self._on_answer(event)
            elif isinstance(event, poct1a.EventsReported):
                descriptions = "; ".join(e.description for e in event.message.events)
                await self._trace("poct1a_events", event.raw, descriptions[:500] or None)
            elif isinstance(event, poct1a.TopicEnded):
                log.info("device_topic_ended", topic=event.message.topic)
            elif isinstance(event, poct1a.MessageRejected):
                self._error()
                log.warning("device_message_refused", reason=event.reason, answered=event.answered)
                await self._save(
                    self.session.store.save_refused,
                    self.session.name,
                    uuid.uuid4().hex,
                    event.raw,
                    event.reason,
                    "poct1a",
                )
            elif isinstance(event, poct1a.BytesDiscarded):
                self._error()
                log.warning("device_bytes_discarded", reason=event.reason)
                await self._trace("poct1a_discarded", b"", event.reason)
            elif isinstance(event, poct1a.ConversationEnded):
                log.info("conversation_ended", reason=event.reason, by_device=event.by_device)
            await self._flush()

    async def _on_hello(self, event: poct1a.HelloReceived) -> None:
        hello = event.hello
        session = self.session
        first = not self.device_id
        self.device_id = hello.device_id or hello.serial_id or session.name
        log.info(
            "device_hello",
            device=self.device_id,
            model=hello.model_id or None,
            software=hello.sw_version or None,
        )
        await self._trace("poct1a_hello", event.raw, self.device_id)
        session.device.device_id = self.device_id
        if not first:
            return
        now = self.loop.time()
        if session.blocked:
            # Locked first, before anything else is said (it goes out after the first DST).
            self.core.lock(now)
            self.lock_asked = True
            log.info("device_lock_requested")
        if session.certified:
            operators = session.operator_list(datetime.now().astimezone().date())
            if not operators:
                log.warning("operator_list_empty", hint="no operator is certified today")
            self.core.send_operator_list(operators, now)
            device = session.device
            device.operators = len(operators)
            device.operators_version = _list_version(operators)
            device.operators_state = "queued"
            device.operators_at = datetime.now(UTC)

    async def _on_status(self, event: poct1a.StatusReceived) -> None:
        status = event.status
        log.info(
            "device_status",
            condition=status.condition or None,
            locked=status.locked,
            new_observations=status.new_observations,
        )
        await self._trace(
            "poct1a_status",
            event.raw,
            f"condition={status.condition or '?'} new_observations={status.new_observations}",
        )
        device = self.session.device
        device.condition = status.condition
        device.device_locked = status.locked
        device.status_at = datetime.now(UTC)
        if self.status_seen:
            return
        self.status_seen = True
        if self.lock_asked is not None:
            return  # already asked to lock
        if status.locked and not self.session.blocked:
            if self.session.locked_by_labgate:
                self._ask_lock(False)
                return
            log.warning(
                "device_locked_locally",
                hint="the device is locked and labgate did not lock it: left as it is",
            )
        self.lock_asked = False

    async def _on_sent(self, event: poct1a.HostMessageSent) -> None:
        message = event.message
        kind, detail = "poct1a_out", poct1a.message_name(message)
        if isinstance(message, poct1a.Directive):
            kind, detail = "poct1a_directive", message.command
        elif isinstance(message, poct1a.OperatorList):
            kind, detail = "poct1a_operators", f"{len(message.operators)} operator(s)"
            self._operators("sent")
        elif isinstance(message, poct1a.Request):
            kind, detail = "poct1a_request", message.request
        elif isinstance(message, poct1a.End):
            kind, detail = "poct1a_end", f"{message.reason} {message.note}".strip()
        await self._trace(kind, event.raw, detail, direction="out")

    async def _on_answer(
        self, event: poct1a.HostMessageAccepted | poct1a.HostMessageRefused
    ) -> None:
        message = event.message
        name = poct1a.message_name(message)
        what = message.command if isinstance(message, poct1a.Directive) else name
        lock = isinstance(message, poct1a.Directive) and message.command in (
            poct1a.LOCK,
            poct1a.UNLOCK,
        )
        # The device installs a complete list at the EOT that closes it (OPL topic).
        operators = isinstance(message, poct1a.OperatorList) or (
            isinstance(message, poct1a.EndOfTopic) and message.topic == "OPL"
        )
        if isinstance(event, poct1a.HostMessageAccepted):
            await self._trace("poct1a_answer", event.raw, f"{what} accepted")
            if lock:
                device = self.session.device
                device.locked = what == poct1a.LOCK
                device.lock_changed_at = datetime.now(UTC)
                log.info("device_locked" if device.locked else "device_unlocked")
            elif isinstance(message, poct1a.EndOfTopic) and operators:
                self._operators("accepted")
            return
        await self._trace("poct1a_answer", event.raw, f"{what} refused: {event.reason}")
        self._error()
        log.warning("device_refused_message", message=what, reason=event.reason)
        if operators:
            self._operators("refused")
        if lock:
            self.lock_asked = None  # ask again, after a pause
            self.lock_retry_at = self.loop.time() + _DIRECTIVE_RETRY

    def _operators(self, state: str) -> None:
        """Where the operator list stands on the device (a refusal stays until the next list)."""
        device = self.session.device
        if device.operators_state != "refused" or state == "queued":
            device.operators_state = state
            device.operators_at = datetime.now(UTC)

    # --- results ------------------------------------------------------------------------

    async def _on_observations(self, event: poct1a.ObservationsReceived) -> None:
        session = self.session
        settings = session.settings
        name = session.name
        store = session.store
        message = event.message
        message_id = uuid.uuid4().hex
        received_at = datetime.now(UTC)
        with structlog.contextvars.bound_contextvars(message_id=message_id):
            refusal = None
            if session.certified:
                today = received_at.astimezone().date()
                refusal = operator_refusal(message, session.certified, today)
            if refusal is not None:
                # Kept with why (never dropped silently), then the device is told.
                if not await self._save(
                    store.save_refused, name, message_id, event.raw, refusal, "poct1a"
                ):
                    self._not_stored()
                    return
                self.core.reject(event.control_id, refusal, self.loop.time(), _NOT_ON_LIST)
                session.health.count(name, "received")
                self._error()
                log.warning("observations_refused", reason=refusal)
                return
            reports = reports_from_poct1a(
                message, name, test_codes=settings.test_codes, device_id=self.device_id
            )
            digest = _content_digest(message)
            try:
                incoming = await session.validation.message(
                    message_id=message_id,
                    connection=name,
                    protocol="poct1a",
                    received_at=received_at,
                    raw=event.raw,
                    reports=reports,
                    lis=session.lis,
                    content_hash=digest,
                    origin="poc",
                    location=settings.location,
                )
                stored = await store_unless_resent(
                    store, incoming, settings.duplicate_window_hours, event.raw, "device"
                )
                if isinstance(stored, Duplicate):
                    self.core.acknowledge(event.control_id, self.loop.time())
                    return
            except StoreUnavailable as exc:
                self._error()
                log.error("store_unavailable", error=str(exc))
                self._not_stored()
                return
            self.core.acknowledge(event.control_id, self.loop.time())
            await session.validation.qc_stored(
                incoming.reports, received_at, session.lis, message_id
            )
            results = sum(len(report.results) for report in reports)
            session.health.count(name, "received")
            session.health.count(name, "stored", results)
            log.info(
                "message_stored",
                specimens=len(reports),
                results=results,
                qc=all(report.is_qc for report in reports),
                forwarded=incoming.forward,
            )
            if incoming.forward:
                session.on_stored()

    async def _on_unreadable(self, event: poct1a.ObservationsUnreadable) -> None:
        session = self.session
        if not await self._save(
            session.store.save_refused,
            session.name,
            uuid.uuid4().hex,
            event.raw,
            event.reason,
            "poct1a",
        ):
            self._not_stored()
            return
        self.core.reject(event.control_id, event.reason, self.loop.time(), "101")
        session.health.count(session.name, "received")
        self._error()
        log.warning("message_refused", reason=event.reason)

    def _not_stored(self) -> None:
        """Nothing could be committed: end without acknowledging; the device sends it again."""
        self.core.end(self.loop.time(), "ABN", "not stored, send again later")

    # --- store --------------------------------------------------------------------------

    def _error(self) -> None:
        self.session.health.count(self.session.name, "errors")

    async def _save(self, fn: Callable[..., object], *args: object) -> bool:
        try:
            await self.session.store.run(fn, *args)
        except StoreUnavailable as exc:
            self._error()
            log.error("store_unavailable", error=str(exc))
            return False
        return True

    async def _trace(
        self, kind: str, data: bytes, detail: str | None, direction: str = "in"
    ) -> None:
        try:
            await self.session.store.run(
                self.session.store.save_trace,
                self.session.name,
                kind,
                data,
                direction=direction,
                detail=detail,
            )
        except StoreUnavailable as exc:
            log.error("store_unavailable", error=str(exc))


def _list_version(operators: list[poct1a.Operator]) -> str:
    """A short digest of an operator list: it changes exactly when what the device holds would
    (who, and until when), so two gateways or two days can be compared at a glance."""
    text = "\n".join(
        f"{o.operator_id}\t{o.name}\t{o.expiration_date}"
        for o in sorted(operators, key=lambda o: o.operator_id)
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _content_digest(message: poct1a.Observations) -> str:
    """What makes a resent message the same: its test events, without the header (new control
    id and time on each sending) or the resend reason code (RES)."""
    services = tuple(dataclasses.replace(service, reason="") for service in message.services)
    canonical = dataclasses.replace(message, header=poct1a.Header("0"), services=services)
    return hashlib.sha256(poct1a.encode(canonical)).hexdigest()
