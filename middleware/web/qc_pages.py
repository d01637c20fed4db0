"""The QC page (`/qc`) and its JSON twin (`GET /api/qc`): Levey-Jennings charts of the stored
QC runs per instrument, test, level and lot, against the QC plan's target mean and SD lines,
each Westgard violation marked with its rule (AUTOVERIFICATION.md §3; GBUI IV-1 and IV-3:
results are validated only once the internal QC results of the run are known).

The verdicts are worked out again from the stored control values with the QC plan in force, by
the same `QcMonitor` the daemon judges each control with, so the chart shows what the daemon
decided as long as the plan's targets have not changed since. The rules read earlier controls:
history from `LOOKBACK` before the window is judged too, then left off the chart. The rules run
over every level and lot of an instrument and test together (`across_levels`), so a level or
lot filter narrows what is drawn, never what is judged.

Query string (page and API alike): `instrument`, `test`, `level`, `lot` (exact; empty = all),
`period` (days, 1 to 366, default 30) and `until` (a date or time, UTC; default now).
"""

# No `from __future__ import annotations` here: FastAPI must evaluate the endpoint
# annotations, which name dependency aliases local to the router factory (`Anyone`).

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse

from middleware.store.qc import QcHistoryPoint
from middleware.validation.qc_monitor import QcMonitor
from middleware.validation.qc_plan import QcPlan
from middleware.validation.westgard import QcPoint, to_decimal
from middleware.web.qc_chart import Chart, QcValue, Target, layout
from middleware.web.rendering import render
from middleware.web.security import ALL, Principal, require

if TYPE_CHECKING:
    from middleware.gateway import Gateway

__all__ = ["LOOKBACK", "QcQuery", "Series", "build_series", "judge", "qc_router"]

#: Controls this long before the window are judged (not drawn): the daemon, too, starts with
#: seven days of QC history (middleware/sessions/deciding.py).
LOOKBACK = timedelta(days=7)
PERIODS = (1, 7, 30, 90, 365)
#: Charts drawn on one page; the others are counted and a filter narrows them down.
MAX_CHARTS = 12


@dataclass(frozen=True, slots=True)
class QcQuery:
    """What the person asked to see."""

    until: datetime
    days: int = 30
    instrument: str = ""
    test: str = ""
    level: str = ""
    lot: str = ""

    @property
    def start(self) -> datetime:
        return self.until - timedelta(days=self.days)

    def wants(self, instrument: str, test: str, level: str, lot: str) -> bool:
        asked = (self.instrument, self.test, self.level, self.lot)
        given = (instrument, test, level, lot)
        return all(not a or a == b for a, b in zip(asked, given, strict=True))


@dataclass(frozen=True, slots=True)
class Series:
    """The QC values of one instrument, test, level and lot in the window, oldest first."""

    instrument: str
    test: str
    level: str
    lot: str
    target: Target | None
    points: tuple[QcValue, ...] = field(default=())

    @property
    def rejected(self) -> int:
        return sum(p.rejected for p in self.points)

    @property
    def warnings(self) -> int:
        return sum(p.warning and not p.rejected for p in self.points)

    def as_dict(self) -> dict[str, Any]:
        target = self.target
        return {
            "instrument": self.instrument,
            "test": self.test,
            "level": self.level,
            "lot": self.lot,
            "target": None if target is None else {"mean": str(target.mean), "sd": str(target.sd)},
            "runs": len(self.points),
            "rejected": self.rejected,
            "warnings": self.warnings,
            "points": [
                {
                    "at": p.at.isoformat(),
                    "value": str(p.value),
                    "z": None if p.z is None else f"{p.z:.3f}",
                    "violations": list(p.violations),
                    "rejected": p.rejected,
                    "warning": p.warning,
                }
                for p in self.points
            ],
        }


def judge(
    history: Iterable[QcHistoryPoint], plan: QcPlan | None
) -> list[tuple[QcHistoryPoint, QcValue]]:
    """Each stored control with its Westgard verdict, judged in time order as the daemon judges
    them (no verdict at all without a QC plan)."""
    ordered = sorted(history, key=lambda p: p.at)
    if plan is None:
        return [(p, QcValue(p.at, p.value)) for p in ordered]
    monitor = QcMonitor(plan)
    judged = []
    for point in ordered:
        outcome = monitor.add_qc(
            QcPoint(point.instrument, point.test, point.level, point.lot, point.value, point.at)
        )
        verdict = outcome.evaluation
        judged.append(
            (
                point,
                QcValue(
                    point.at,
                    point.value,
                    verdict.z,
                    verdict.violations,
                    verdict.rejected,
                    verdict.warning,
                ),
            )
        )
    return judged


def build_series(
    history: Sequence[QcHistoryPoint], plan: QcPlan | None, query: QcQuery
) -> list[Series]:
    """The series the query asks for, each with its target; a series of the QC plan without
    any run in the window is listed too (empty): a missing QC shows."""
    concerned = [
        p
        for p in history
        if p.at <= query.until
        and (not query.instrument or p.instrument == query.instrument)
        and (not query.test or p.test == query.test)
    ]
    targets = plan.targets_map() if plan is not None else {}
    found: dict[tuple[str, str, str, str], list[QcValue]] = {}
    for point, value in judge(concerned, plan):
        key = (point.instrument, point.test, point.level, point.lot)
        if point.at >= query.start and query.wants(*key):
            found.setdefault(key, []).append(value)
    for instrument, test, lot, level in targets:
        if query.wants(instrument, test, level, lot):
            found.setdefault((instrument, test, level, lot), [])
    series = []
    for key in sorted(found):
        instrument, test, level, lot = key
        planned = targets.get((instrument, test, lot, level))
        target = None
        if planned is not None:
            target = Target(to_decimal(planned.mean), to_decimal(planned.sd))
        series.append(Series(instrument, test, level, lot, target, tuple(found[key])))
    return series


def _options(history: Sequence[QcHistoryPoint], plan: QcPlan | None) -> dict[str, list[str]]:
    keys = {(p.instrument, p.test, p.level, p.lot) for p in history}
    if plan is not None:
        keys |= {(t.instrument, t.test, t.level, t.lot) for t in plan.targets}
    return {
        name: sorted({key[index] for key in keys})
        for index, name in enumerate(("instrument", "test", "level", "lot"))
    }


def _until(text: str) -> datetime:
    """`until` from the query string: a date means the end of that day (UTC)."""
    if not text:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise HTTPException(status_code=422, detail="until: a date or time (ISO 8601)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if len(text) == 10:  # YYYY-MM-DD
        moment += timedelta(days=1)
    return moment


def qc_router(gateway: "Gateway") -> APIRouter:
    """`/qc` and `/api/qc`: every signed-in role (technicians run the QC)."""
    router = APIRouter()
    Anyone = Annotated[Principal, Depends(require(gateway, *ALL))]

    def plan() -> QcPlan | None:
        monitor = gateway.validation.qc
        return None if monitor is None else monitor.plan

    async def look(query: QcQuery) -> tuple[list[Series], list[QcHistoryPoint], QcPlan | None]:
        store = gateway.store
        history = await store.read(store.qc_history, query.start - LOOKBACK)
        current = plan()
        return build_series(history, current, query), history, current

    def asked(instrument: str, test: str, level: str, lot: str, period: int, until: str) -> QcQuery:
        return QcQuery(_until(until), period, instrument, test, level, lot)

    Period = Annotated[int, Query(ge=1, le=366)]

    @router.get("/qc", response_class=HTMLResponse)
    async def qc_page(
        request: Request,
        who: Anyone,
        instrument: str = "",
        test: str = "",
        level: str = "",
        lot: str = "",
        period: Period = 30,
        until: str = "",
    ) -> HTMLResponse:
        query = asked(instrument, test, level, lot, period, until)
        series, history, current = await look(query)
        window = [p for p in history if query.start <= p.at <= query.until]
        charts: list[tuple[Series, Chart]] = [
            (s, layout(s.points, s.target, query.start, query.until)) for s in series[:MAX_CHARTS]
        ]
        return render(
            gateway,
            request,
            "qc.html",
            who,
            charts=charts,
            hidden=len(series) - len(charts),
            options=_options(window, current),
            periods=sorted({*PERIODS, period}),  # a period typed in the URL stays chosen
            q={
                "instrument": instrument,
                "test": test,
                "level": level,
                "lot": lot,
                "period": period,
                "until": until,
            },
            start=query.start,
            end=query.until,
            has_plan=current is not None,
            rules=list(current.westgard.rules) if current is not None else [],
        )

    @router.get("/api/qc")
    async def qc_api(
        _: Anyone,
        instrument: str = "",
        test: str = "",
        level: str = "",
        lot: str = "",
        period: Period = 30,
        until: str = "",
    ) -> dict[str, Any]:
        """The QC values of each series in the window, with targets and Westgard verdicts."""
        query = asked(instrument, test, level, lot, period, until)
        series, _history, current = await look(query)
        return {
            "from": query.start.isoformat(),
            "until": query.until.isoformat(),
            "days": query.days,
            "qc_plan": current is not None,
            "rules": list(current.westgard.rules) if current is not None else [],
            "series": [s.as_dict() for s in series],
        }

    return router
