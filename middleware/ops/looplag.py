"""How late the event loop runs: the daemon's pulse.

Every timer an analyser session, the sender or the API arms fires on the one event loop; if
something blocks it (a synchronous call that should have gone to a thread, a CPU-bound loop),
every one of them fires late and analysers time out. The monitor sleeps `period` seconds over
and over and measures by how much each sleep overran. A loop that is completely stuck runs no
monitor at all, so the watchdog also checks that the last measurement is recent.
"""

from __future__ import annotations

import asyncio

from middleware.health import Health

__all__ = ["LoopMonitor"]


class LoopMonitor:
    """Measures the loop's lag every `period` seconds; `lag` is the latest measurement."""

    def __init__(self, health: Health | None = None, period: float = 0.5) -> None:
        self.health = health
        self.period = period
        self.lag = 0.0
        self._last_tick: float | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._last_tick = loop.time()
        while True:
            due = loop.time() + self.period
            await asyncio.sleep(self.period)
            now = loop.time()
            self.lag = max(0.0, now - due)
            self._last_tick = now
            if self.health is not None:
                self.health.loop_lag(self.lag)

    def responsive(self, max_lag: float, now: float | None = None) -> bool:
        """True when the latest measurement is within `max_lag` and recent: the monitor itself
        ran on time (a stall still in progress, or a dead monitor, shows as a stale tick)."""
        if self._last_tick is None:
            return False
        now = asyncio.get_running_loop().time() if now is None else now
        stale = now - self._last_tick > self.period + max_lag
        return not stale and self.lag <= max_lag
