"""The QC gate: which patient results QC lets through, per instrument and test.

AUTOVERIFICATION.md §3 "On rejection" and §9.3.

A QC run of one instrument and test is either accepted or rejected (by the Westgard rules of
`westgard.py`, or by a person). The gate gives each patient result, from its measurement time,
the DESIGN.md reasons:

- `qc_failed` — a rejected run lies in the result's *bracket*: the interval from the last
  accepted run strictly before the result to the first accepted run at or after it. So a
  rejection holds every patient result of that instrument and test since the last accepted QC
  run and until the next accepted one (CLIA 42 CFR §493.1282(b)(2), quoted in §3). Without an
  earlier accepted run the bracket is open on the left; without a later one, on the right.
  A result measured at the very instant of an accepted run is bracketed by that run (counted
  before it); one measured at the instant of a rejected run is held. A rejected run at the same
  instant as an accepted one counts as before it (the accepted run is the recovering rerun), so
  results up to that instant are held and later ones are not.
- `qc_overdue` — an interval is configured for the instrument and test and the last accepted
  run at or before the result is older than it (strictly: exactly the interval is still in
  time), or there is no accepted run at all.

Two more QC reasons depend on the patient results already seen, which the gate does not keep;
`QcMonitor` gives them (`qc_plan.py` says how they are configured):

- `qc_overdue` also when the plan allows at most N patient results between accepted runs and N
  were already stored since the last accepted run at or before the result;
- `qc_new_lot` — the result carries a reagent lot on which no accepted QC run lies at or before
  it.

Pure and deterministic: the runs are passed in, the gate is immutable (`with_run` returns a new
gate), and times come from the caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType

__all__ = ["DecidedResult", "QcGate", "QcRun", "newly_held"]

QC_FAILED = "qc_failed"
QC_OVERDUE = "qc_overdue"
QC_NEW_LOT = "qc_new_lot"


@dataclass(frozen=True, slots=True)
class QcRun:
    """The verdict on one QC run of one instrument and test, at the run's time."""

    instrument: str
    test: str
    at: datetime
    accepted: bool


@dataclass(frozen=True, slots=True)
class DecidedResult:
    """A patient result already decided on, identified by the caller's `result_id`."""

    result_id: str
    instrument: str
    test: str
    at: datetime


def _empty_intervals() -> Mapping[tuple[str, str], timedelta]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class QcGate:
    """QC state of every instrument and test, from its runs.

    `overdue_after` maps (instrument, test) to the longest time allowed since the last accepted
    run; `default_overdue_after` applies to pairs not in it (None: no overdue check)."""

    runs: tuple[QcRun, ...] = ()
    overdue_after: Mapping[tuple[str, str], timedelta] = field(default_factory=_empty_intervals)
    default_overdue_after: timedelta | None = None

    def with_run(self, run: QcRun) -> QcGate:
        """A gate that also knows `run`."""
        return QcGate((*self.runs, run), self.overdue_after, self.default_overdue_after)

    def _runs_of(self, instrument: str, test: str) -> list[QcRun]:
        return [r for r in self.runs if r.instrument == instrument and r.test == test]

    def bracket(
        self, instrument: str, test: str, result_time: datetime
    ) -> tuple[datetime | None, datetime | None]:
        """(last accepted run strictly before `result_time`, first accepted run at or after it);
        None where there is none."""
        before: datetime | None = None
        after: datetime | None = None
        for run in self._runs_of(instrument, test):
            if not run.accepted:
                continue
            if run.at < result_time:
                before = run.at if before is None else max(before, run.at)
            elif after is None or run.at < after:
                after = run.at
        return before, after

    def failed(self, instrument: str, test: str, result_time: datetime) -> bool:
        """Whether a rejected run lies in the result's bracket (before, after] (module doc)."""
        before, after = self.bracket(instrument, test, result_time)
        return any(
            not run.accepted
            and (before is None or run.at > before)
            and (after is None or run.at <= after)
            for run in self._runs_of(instrument, test)
        )

    def overdue(self, instrument: str, test: str, result_time: datetime) -> bool:
        """Whether the last accepted run at or before `result_time` is older than the interval."""
        interval = self.overdue_after.get((instrument, test), self.default_overdue_after)
        if interval is None:
            return False
        last = max(
            (r.at for r in self._runs_of(instrument, test) if r.accepted and r.at <= result_time),
            default=None,
        )
        return last is None or result_time - last > interval

    def status_for(self, instrument: str, test: str, result_time: datetime) -> list[str]:
        """The QC reasons for a patient result measured at `result_time`, in a fixed order
        (`qc_failed`, `qc_overdue`); [] when QC lets it through."""
        reasons = []
        if self.failed(instrument, test, result_time):
            reasons.append(QC_FAILED)
        if self.overdue(instrument, test, result_time):
            reasons.append(QC_OVERDUE)
        return reasons


def newly_held(
    before: QcGate, after: QcGate, decided: Iterable[DecidedResult]
) -> tuple[DecidedResult, ...]:
    """The decided results that `after` marks `qc_failed` and `before` did not — the ones to
    hold again when a rejection arrives (`after = before.with_run(rejected_run)`), in input
    order. A late accepted run never re-holds anything."""
    return tuple(
        result
        for result in decided
        if after.failed(result.instrument, result.test, result.at)
        and not before.failed(result.instrument, result.test, result.at)
    )
