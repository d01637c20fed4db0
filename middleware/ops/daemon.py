"""What operations add to the running daemon, in two calls from `Gateway.run`:

    start(gateway)   once every listener is bound: READY=1 to systemd, and the tasks
                       loop-lag          the event loop's lag (for /metrics and the watchdog)
                       store-figures     outbox depth and age, decisions (for /metrics)
                       watchdog          WATCHDOG=1 while the loop is healthy (under systemd)
                       daily-backup      the automatic backup (with a `backup:` section)
    stopping()       a stop has begun: STOPPING=1

Each task survives its own failures (logged, restarted after a growing pause): none of them may
stop the daemon, whose job is the analysers' results.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog

from middleware.ops.daily import DailyBackups
from middleware.ops.looplag import LoopMonitor
from middleware.ops.sampler import StoreSampler
from middleware.ops.systemd import Notifier, feed_watchdog, watchdog_interval

if TYPE_CHECKING:
    from middleware.gateway import Gateway

__all__ = ["start", "status_line", "stopping"]

log = structlog.get_logger("labgate.ops")


async def _guarded(name: str, run: Callable[[], Awaitable[None]]) -> None:
    pause = 1.0
    while True:
        try:
            await run()
            return
        except Exception:
            log.exception("ops_task_crashed", task=name, restart_in=pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 60.0)


def status_line(gateway: Gateway, sampler: StoreSampler) -> str:
    """What `systemctl status labgate` shows under "Status:"."""
    connections = gateway.health.connections.values()
    up = sum(c.state == "connected" for c in connections)
    return (
        f"{up}/{len(connections)} connection(s) up, "
        f"{sampler.outbox_depth} message(s) owed to the LIS"
    )


def start(gateway: Gateway) -> list[asyncio.Task[None]]:
    """Tell systemd the daemon is ready and start the operations tasks (see the module)."""
    settings = gateway.settings
    health = gateway.health
    notifier = Notifier()
    monitor = LoopMonitor(health)
    lis_names = [settings.lis.name]
    sampler = StoreSampler(gateway.store, health, lis_names, [i.name for i in settings.instruments])
    jobs: dict[str, Callable[[], Awaitable[None]]] = {
        "loop-lag": monitor.run,
        "store-figures": sampler.run,
    }
    interval = watchdog_interval()
    if interval is not None and notifier.enabled:
        jobs["watchdog"] = lambda: feed_watchdog(
            notifier,
            monitor,
            interval,
            health=health,
            status=lambda: status_line(gateway, sampler),
        )
    if settings.backup is not None:
        daily = DailyBackups(
            settings.backup,
            gateway.store,
            settings.store.url,
            settings.gateway,
            health,
            configuration=settings.model_dump(mode="json"),
        )
        jobs["daily-backup"] = daily.run
    tasks = [asyncio.create_task(_guarded(name, job), name=name) for name, job in jobs.items()]
    notifier.ready(f"running: {status_line(gateway, sampler)}")
    log.info(
        "operations_started",
        systemd=notifier.enabled,
        watchdog_interval=interval,
        backup_at=settings.backup.at if settings.backup else None,
    )
    return tasks


def stopping() -> None:
    """Tell systemd a stop has begun."""
    Notifier().stopping()
