"""The alarm center: looks at the daemon every few seconds, raises an alarm once per episode,
clears it when its condition ends, exports the open ones to Prometheus and tells a webhook.

The conditions are pure (`conditions.py`); this module gathers the snapshot (connection health,
outbox, blocked devices, QC state), keeps the bits of history a snapshot needs (when a link went
down, errors over the window), and writes episodes to the store. People acknowledge alarms with
`labgate alarms ack` or the API; that is audited in the store.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import httpx
import structlog
from prometheus_client import Gauge

from middleware.alarms.conditions import AlarmThresholds, LinkView, Snapshot, conditions
from middleware.health import Health
from middleware.store import Store, StoreUnavailable

if TYPE_CHECKING:
    from middleware.config.settings import AlarmSettings
    from middleware.sessions.deciding import LiveValidation

__all__ = ["AlarmCenter", "thresholds_from"]

log = structlog.get_logger("labgate.alarms")


def thresholds_from(settings: AlarmSettings) -> AlarmThresholds:
    return AlarmThresholds(
        link_lost_after=timedelta(seconds=settings.link_lost_after_seconds),
        silence={name: timedelta(minutes=m) for name, m in settings.silence_minutes.items()},
        error_rate=settings.error_rate,
        error_window=timedelta(minutes=settings.error_window_minutes),
        backlog_messages=settings.backlog_messages,
        backlog_age=timedelta(minutes=settings.backlog_age_minutes),
    )


class AlarmCenter:
    """One per daemon; `run()` is its monitoring task."""

    def __init__(
        self,
        settings: AlarmSettings,
        store: Store,
        health: Health,
        validation: LiveValidation | None,
        gateway: str,
        sender: object | None = None,
    ) -> None:
        self.settings = settings
        self.limits = thresholds_from(settings)
        self.store = store
        self.health = health
        self.validation = validation
        self.gateway = gateway
        # The LIS sender: an HPRIM spool link lists the files its LIS has not taken in time.
        self.sender = sender
        self.started_at = datetime.now(UTC)
        self._down_since: dict[str, datetime | None] = {}
        self._errors: dict[str, deque[tuple[datetime, int]]] = {}
        self._gauge = Gauge(
            "labgate_alarms_open",
            "Alarm episodes not yet cleared, per kind",
            ["kind"],
            registry=health.registry,
        )

    def reconfigure(self, settings: AlarmSettings) -> None:
        """New thresholds from a reloaded configuration; open episodes stay as they are."""
        self.settings = settings
        self.limits = thresholds_from(settings)

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except StoreUnavailable as exc:
                # The store cannot take the alarm either: say it loudly where it can be seen.
                log.error("alarm_store_unavailable", error=str(exc))
            await asyncio.sleep(self.settings.check_seconds)

    async def check(self, now: datetime | None = None) -> dict[tuple[str, str], str]:
        """One look: raise what started, clear what ended; returns the conditions found."""
        now = now or datetime.now(UTC)
        snapshot = await self._snapshot(now)
        found = conditions(snapshot, self.limits)
        open_keys = await self.store.read(self.store.open_alarm_keys)
        for (kind, subject), detail in found.items():
            raised = await self.store.run(self.store.raise_alarm, kind, subject, detail, now)
            if raised.new:
                log.warning("alarm_raised", kind=kind, subject=subject, detail=detail)
                await self._notify("alarm_raised", kind, subject, detail, now)
                await self._auto_block(kind, subject, detail, now)
        for kind, subject in open_keys - found.keys():
            if await self.store.run(self.store.clear_alarm, kind, subject, now):
                log.info("alarm_cleared", kind=kind, subject=subject)
                await self._notify("alarm_cleared", kind, subject, "", now)
        counts: dict[str, int] = {}
        for kind, _ in found:
            counts[kind] = counts.get(kind, 0) + 1
        for kind in {k for k, _ in open_keys} | set(counts):
            self._gauge.labels(kind).set(counts.get(kind, 0))
        return found

    async def _snapshot(self, now: datetime) -> Snapshot:
        links = []
        outbox = await self.store.read(self.store.outbox_states)
        # The sender opens the LIS link when it has something to send: an idle, closed link
        # with nothing owed is not lost.
        idle_lis = {lis for lis, _ in outbox if not outbox.get((lis, "pending"))}
        outgoing = self._outgoing() - idle_lis
        window_start = now - self.limits.error_window
        for name, connection in self.health.connections.items():
            connected = connection.state == "connected"
            if connected:
                self._down_since[name] = None
            elif self._down_since.get(name) is None:
                self._down_since[name] = now
            history = self._errors.setdefault(name, deque())
            history.append((now, connection.errors))
            while len(history) > 1 and history[1][0] <= window_start:
                history.popleft()
            base = history[0][1] if history[0][0] <= window_start else 0
            started = self.started_at
            links.append(
                LinkView(
                    name=name,
                    state=connection.state,
                    outgoing=name in outgoing,
                    down_since=None if connected else self._down_since[name],
                    last_message_at=connection.last_message_at,
                    started_at=started,
                    errors_in_window=connection.errors - base,
                )
            )
        lis_names = {lis for lis, _ in outbox}
        oldest = {lis: await self.store.read(self.store.outbox_oldest_pending, lis)
                  for lis in sorted(lis_names)}  # fmt: skip
        blocked: frozenset[str] = frozenset()
        rejected: set[tuple[str, str]] = set()
        overdue: set[tuple[str, str]] = set()
        new_lots: set[tuple[str, str, str]] = set()
        if self.validation is not None:
            blocked = self.validation.pipeline.blocked_devices
            monitor = self.validation.qc
            if monitor is not None:
                pairs = monitor.watched() | {(run.instrument, run.test) for run in monitor.runs()}
                for instrument, test in pairs:
                    reasons = monitor.reasons_for(instrument, test, now)
                    if "qc_failed" in reasons:
                        rejected.add((instrument, test))
                    if "qc_overdue" in reasons:
                        overdue.add((instrument, test))
                new_lots = {(n.instrument, n.test, n.reagent_lot) for n in monitor.new_lots()}
        unconsumed: Mapping[str, datetime] = getattr(self.sender, "unconsumed", {})
        lis_name = getattr(getattr(self.sender, "settings", None), "name", "lis")
        return Snapshot(
            now=now,
            unconsumed={lis_name: min(unconsumed.values())} if unconsumed else {},
            links=links,
            outbox=outbox,
            oldest_pending=oldest,
            blocked_devices=blocked,
            qc_rejected=frozenset(rejected),
            qc_overdue=frozenset(overdue),
            qc_new_lot=frozenset(new_lots),
        )

    async def _auto_block(self, kind: str, subject: str, detail: str, now: datetime) -> None:
        """Block the device if the lab asked for it on this kind of alarm (`auto_block`)."""
        device = subject.split(":", 1)[0]
        if kind not in self.settings.auto_block.get(device, ()):
            return
        blocked = self.validation.pipeline.blocked_devices if self.validation else frozenset()
        if device in blocked:
            return
        reason = f"automatic: {kind} ({detail})"
        await self.store.run(self.store.set_device_blocked, device, True, "labgate", reason, now)
        log.warning("device_blocked_automatically", device=device, alarm=kind)
        if self.validation is not None:
            await self.validation.reload()  # quarantine from the next result on, not in 1 s

    def _outgoing(self) -> set[str]:
        """Connections labgate opens itself, even while they are up (so a drop counts)."""
        return {
            name
            for name, connection in self.health.connections.items()
            if "client" in connection.transport or connection.transport.startswith("serial")
        }

    async def _notify(self, event: str, kind: str, subject: str, detail: str, at: datetime) -> None:
        url = self.settings.webhook
        if not url:
            return
        body = {
            "event": event,
            "gateway": self.gateway,
            "kind": kind,
            "subject": subject,
            "detail": detail,
            "at": at.isoformat(),
        }
        try:
            async with httpx.AsyncClient(timeout=self.settings.webhook_timeout) as client:
                answer = await client.post(url, json=body)
                answer.raise_for_status()
        except httpx.HTTPError as exc:
            # The alarm stays in the store and on /metrics; the webhook is a courtesy.
            log.error("alarm_webhook_failed", url=url, error=str(exc), kind=kind)
