"""Telling systemd how the daemon is (sd_notify), with nothing but the standard library.

systemd hands a `Type=notify` service the address of a datagram socket in `$NOTIFY_SOCKET`: a
path, or a name in Linux's abstract namespace written with a leading `@`. Each datagram is
newline-separated `KEY=value` assignments:

    READY=1         every listener is bound: `systemctl start` returns, dependants start
    STATUS=...      one line shown by `systemctl status labgate`
    STOPPING=1      a stop has begun (SIGTERM received)
    WATCHDOG=1      still alive; with `WatchdogSec=` set, systemd kills and restarts a service
                    that stays silent longer than that (`$WATCHDOG_USEC` carries the period)

The watchdog is the point of the exercise: a ping proves only that *something* in the process
still runs, so it is sent from the event loop and only while the loop is responsive — a loop
that stays late beyond `max_lag` is a daemon that can no longer answer analysers within their
E1381 timers, and letting systemd restart it is better than a gateway that looks alive.

Outside systemd (no `$NOTIFY_SOCKET`) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping

import structlog

from middleware.health import Health
from middleware.ops.looplag import LoopMonitor

__all__ = ["DEFAULT_MAX_LAG", "Notifier", "feed_watchdog", "watchdog_interval"]

log = structlog.get_logger("labgate.ops")

# A loop later than this when the watchdog looks is not healthy. Far above what a working daemon
# shows (milliseconds; the store runs on its own threads), far below the 15 s E1381 reply timer.
DEFAULT_MAX_LAG = 5.0


def _socket_address(value: str) -> str | None:
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace: no file, the name starts with a NUL byte
    if value.startswith("/"):
        return value
    return None  # vsock:... and other forms systemd may grow are not ours to speak


class Notifier:
    """Sends sd_notify datagrams to the socket named by `$NOTIFY_SOCKET` (read once)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        raw = environ.get("NOTIFY_SOCKET", "")
        self.address = _socket_address(raw) if raw else None
        if raw and self.address is None:
            log.warning("notify_socket_unsupported", notify_socket=raw)
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send `KEY=value` assignments in one datagram; False when not under systemd or the
        socket refused it (logged once: a failing notify must never stop the daemon)."""
        if self.address is None or not assignments:
            return False
        payload = "\n".join(a.replace("\n", " ") for a in assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(payload)
        except OSError as exc:
            if not self._failed:
                log.warning("notify_failed", error=str(exc))
                self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def stopping(self, status: str = "stopping") -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings: half the period systemd set (its own advice), or None
    when no watchdog is asked of this process."""
    environ = os.environ if environ is None else environ
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (we were started by the service's main one)
    return int(usec) / 1_000_000 / 2


async def feed_watchdog(
    notifier: Notifier,
    monitor: LoopMonitor,
    interval: float,
    *,
    health: Health | None = None,
    max_lag: float = DEFAULT_MAX_LAG,
    status: Callable[[], str] | None = None,
) -> None:
    """Ping every `interval` seconds while `monitor` finds the loop responsive; the status
    line goes along whenever it changed. An unhealthy loop is looked at again every monitor
    period, so a single hiccup delays one ping by less than a second and does not restart
    the daemon, while a loop that stays late lets the watchdog expire."""
    last_status = ""
    recheck = min(interval, monitor.period)
    while True:
        await asyncio.sleep(interval)
        while not monitor.responsive(max_lag):
            if health is not None:
                health.watchdog_skipped()
            log.warning("watchdog_ping_skipped", loop_lag=round(monitor.lag, 3), max_lag=max_lag)
            await asyncio.sleep(recheck)
        assignments = ["WATCHDOG=1"]
        if status is not None:
            line = status()
            if line != last_status:
                assignments.append(f"STATUS={line}")
                last_status = line
        notifier.send(*assignments)
