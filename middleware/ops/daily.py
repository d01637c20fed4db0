"""The daemon's automatic backup: every day at `backup.at` (local time), with no one having to
think of it (GBUI I-4 "effectuées automatiquement"), each run logged, counted in /metrics and
archived in the audit table, success or failure.

A daemon that was not running at the appointed time (a power cut, a maintenance evening) takes
the missed backup shortly after it starts. A failed backup is tried again every hour until one
succeeds or the next appointed time comes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from middleware.config.settings import BackupSettings
from middleware.health import Health
from middleware.ops import audit
from middleware.ops.backup import (
    Abort,
    Backup,
    BackupError,
    newest_backup,
    run_in_thread,
    take_backup,
)
from middleware.store import Store, StoreUnavailable

__all__ = ["DailyBackups", "describe", "next_run"]

log = structlog.get_logger("labgate.ops")

CATCH_UP_DELAY = 10.0  # seconds after start: the listeners are up and the analysers served
RETRY_AFTER = timedelta(hours=1)
_OVERDUE = timedelta(hours=24, minutes=30)  # the newest backup is older: one was missed


def next_run(at: str, now: datetime) -> datetime:
    """The first local time of day `at` ("HH:MM") after `now`, as an aware datetime."""
    hours, minutes = (int(part) for part in at.split(":"))
    local = now.astimezone().replace(tzinfo=None)
    candidate = local.replace(hour=hours, minute=minutes, second=0, microsecond=0)
    if candidate <= local:
        candidate += timedelta(days=1)
    return candidate.astimezone()  # a naive time read as local time: right across DST changes


class DailyBackups:
    """Runs in the daemon; `once()` takes one backup and records it."""

    def __init__(
        self,
        settings: BackupSettings,
        store: Store,
        url: str,
        gateway: str,
        health: Health,
        configuration: Mapping[str, Any] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        catch_up_delay: float = CATCH_UP_DELAY,
        nap: float = 60.0,
    ) -> None:
        self.settings = settings
        self.store = store
        self.url = url
        self.gateway = gateway
        self.health = health
        self.configuration = configuration
        self.clock = clock
        self.catch_up_delay = catch_up_delay
        self.nap = nap
        self.directory = Path(settings.directory)

    async def run(self) -> None:
        newest = await asyncio.to_thread(newest_backup, self.directory, self.gateway)
        if newest is not None:
            self.health.backup_succeeded(newest.created_at)
        if newest is None or self.clock() - newest.created_at > _OVERDUE:
            log.info(
                "backup_catch_up",
                last=newest.created_at.isoformat() if newest else None,
                in_seconds=self.catch_up_delay,
            )
            await asyncio.sleep(self.catch_up_delay)
            await self._until_done(next_run(self.settings.at, self.clock()))
        while True:
            due = next_run(self.settings.at, self.clock())
            await self._sleep_until(due)
            await self._until_done(next_run(self.settings.at, self.clock()))

    async def _until_done(self, next_appointment: datetime) -> None:
        while await self.once("daily") is None:
            retry = self.clock() + RETRY_AFTER
            if retry >= next_appointment:
                return
            await self._sleep_until(retry)

    async def _sleep_until(self, moment: datetime) -> None:
        # In short naps against the wall clock: it may be set, or the machine suspended.
        while True:
            remaining = (moment - self.clock()).total_seconds()
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, self.nap))

    async def once(self, trigger: str) -> Backup | None:
        """Take a backup now; None when it failed (logged, counted, audited)."""
        abort = Abort()
        settings = self.settings
        started = time.monotonic()
        try:
            backup = await run_in_thread(
                lambda: take_backup(
                    self.url,
                    self.directory,
                    gateway=self.gateway,
                    trigger=trigger,
                    configuration=self.configuration,
                    keep=settings.keep,
                    pg_bin=settings.pg_bin,
                    abort=abort,
                ),
                abort,
            )
        except (BackupError, OSError) as exc:  # OSError: the folder full or gone mid-way
            self.health.backup_failed()
            log.error(
                "backup_failed", trigger=trigger, directory=str(self.directory), error=str(exc)
            )
            await self._audit(
                "store_backup_failed",
                str(self.directory),
                {"trigger": trigger, "error": str(exc)},
            )
            return None
        self.health.backup_succeeded(backup.created_at)
        log.info(
            "backup_done",
            trigger=trigger,
            file=str(backup.path),
            size=backup.size,
            revision=backup.revision,
            seconds=round(time.monotonic() - started, 3),
        )
        await self._audit("store_backup", backup.path.name, describe(backup, trigger))
        return backup

    async def _audit(self, action: str, subject: str, detail: Mapping[str, Any]) -> None:
        store = self.store
        try:
            await store.run(audit.record, store.engine, audit.SYSTEM_ACTOR, action, subject, detail)
        except StoreUnavailable as exc:
            log.error("backup_audit_failed", action=action, error=str(exc))


def describe(backup: Backup, trigger: str) -> dict[str, Any]:
    """The audit detail of a backup (GBUI I-4: the archive of each run)."""
    return {
        "trigger": trigger,
        "file": str(backup.path),
        "created_at": backup.created_at.isoformat(),
        "sha256": backup.sha256,
        "size": backup.size,
        "revision": backup.revision,
        "tables": backup.tables,
    }
