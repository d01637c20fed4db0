"""Figures for /metrics that live in the store, read every few seconds on a reader thread.

    outbox depth and the age of its oldest message, per LIS   what the LIS is still owed
    decisions committed since the daemon started              per connection, decision, reason

(Open alarms are the alarm center's own gauge, `labgate_alarms_open`.)

Decisions are read from the committed result rows, newest id first seen onwards, rather than
counted where they are taken: a counter then says what was stored, and no session has to know
about Prometheus. One gateway's results are committed by its one writer thread, so their ids
grow in commit order and none is skipped (on a PostgreSQL store shared by several gateways,
each counts its own instruments).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
from sqlalchemy import func, select

from middleware.health import Health
from middleware.store import Store, StoreUnavailable
from middleware.store.tables import OutboxRow, ResultRow
from middleware.store.times import utc

__all__ = ["Sample", "StoreSampler"]

log = structlog.get_logger("labgate.ops")

_DECISIONS_PER_READ = 5000


@dataclass(slots=True)
class Sample:
    """One reading of the store."""

    outbox: dict[str, tuple[int, datetime | None]] = field(default_factory=dict)
    decisions: list[tuple[str, str, list[str]]] = field(default_factory=list)
    last_result_id: int = 0


class StoreSampler:
    """Reads the store's figures every `period` seconds into `health`."""

    def __init__(
        self,
        store: Store,
        health: Health,
        lis_names: Sequence[str],
        instruments: Sequence[str],
        period: float = 5.0,
    ) -> None:
        self.store = store
        self.health = health
        self.lis_names = tuple(lis_names)
        self.instruments = tuple(instruments)
        self.period = period
        self.outbox_depth = 0  # all LIS together, for the systemd status line
        self._last_result_id: int | None = None

    async def run(self) -> None:
        while True:
            try:
                await self.sample_once()
            except StoreUnavailable as exc:
                log.warning("metrics_sample_failed", error=str(exc))
            await asyncio.sleep(self.period)

    async def sample_once(self) -> Sample:
        sample = await self.store.read(self.read, self._last_result_id)
        self.publish(sample, datetime.now(UTC))
        return sample

    def read(self, after_result_id: int | None) -> Sample:
        """Everything in one go, on a reader thread."""
        sample = Sample()
        results = ResultRow.__table__
        with self.store.engine.connect() as connection:
            rows = connection.execute(
                select(OutboxRow.lis, func.count(), func.min(OutboxRow.created_at))
                .where(OutboxRow.state == "pending", OutboxRow.lis.in_(self.lis_names))
                .group_by(OutboxRow.lis)
            ).all()
            sample.outbox = {lis: (int(count), utc(oldest)) for lis, count, oldest in rows}
            mine = results.c.instrument.in_(self.instruments)
            if after_result_id is None:
                newest = connection.execute(select(func.max(results.c.id)).where(mine)).scalar()
                sample.last_result_id = int(newest or 0)
            else:
                sample.last_result_id = after_result_id
                decided = connection.execute(
                    select(
                        results.c.id,
                        results.c.instrument,
                        results.c.decision,
                        results.c.reasons,
                    )
                    .where(mine, results.c.id > after_result_id, results.c.is_qc.is_(False))
                    .order_by(results.c.id)
                    .limit(_DECISIONS_PER_READ)
                ).all()
                for row_id, instrument, decision, reasons in decided:
                    sample.decisions.append((instrument, decision, list(reasons or [])))
                    sample.last_result_id = max(sample.last_result_id, int(row_id))
        return sample

    def publish(self, sample: Sample, now: datetime) -> None:
        health = self.health
        total = 0
        for lis in self.lis_names:
            depth, oldest = sample.outbox.get(lis, (0, None))
            total += depth
            age = (now - oldest).total_seconds() if oldest is not None else 0.0
            health.set_outbox(lis, depth, age)
        self.outbox_depth = total
        for instrument, decision, reasons in sample.decisions:
            health.count_decision(instrument, decision, reasons)
        self._last_result_id = sample.last_result_id
