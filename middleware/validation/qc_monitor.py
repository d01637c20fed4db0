"""The QC state of a running lab: Westgard verdicts on each control and the QC gate's reasons.

One object serves the daemon and the replay. It is stateful but pure in the h11 sense: no
clock, no I/O; control points and result times come in, verdicts and reasons come out.

**Controls.** `add_qc(point)` evaluates the control with `westgard.evaluate` against the
controls it keeps of the same instrument and test, records the verdict as a `QcRun` (one per
control point: a rerun of a control after a rejection is a new run, and an accepted rerun
recovers) and says what the daemon must do about results already decided (`QcOutcome`).

**A rejected control rejects its run.** Controls of one run are judged together: when a control
is rejected, the controls of the same run (`westgard.same_run`) recorded before it as accepted
are turned into rejections too. So "the last accepted run before the rejection" is the last
*good run*, not the other level of the failing one, and every patient result since it is held
(CLIA §493.1282(b)(2), AUTOVERIFICATION.md §3). A control recorded after a rejection keeps its
own verdict: accepted, it is the rerun that ends the hold.

**Reasons.** `reasons_for(instrument, test, at)` gives exactly what `QcGate.status_for` gives
for the same runs (`qc_failed`, `qc_overdue`; a hypothesis test checks it), but from sorted
per-(instrument, test) lists searched with `bisect`, so a result costs O(log runs) however long
the daemon has run.

**What is kept.** For the Westgard rules: per instrument, test and level, the last
`KEEP_PER_LEVEL` controls with a target, plus every control that may still share a run with a
later one (within `run_window` of the newest control, or with the latest run id seen). That is
all the rules read (10x needs nine earlier controls) when controls arrive in time order and a
run id, once another has followed it, is not used again; a control older than those kept is
judged on what is kept. For the gate: the time and
verdict of every run, until `prune` drops those that can no longer matter.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from middleware.validation.qc_gate import QC_FAILED, QC_OVERDUE, QcRun
from middleware.validation.qc_plan import QcPlan
from middleware.validation.westgard import QcEvaluation, QcPoint, evaluate, same_run

__all__ = ["KEEP_PER_LEVEL", "QcMonitor", "QcOutcome"]

#: Controls kept per instrument, test and level for the rules that count (10x is the longest).
KEEP_PER_LEVEL = 12


@dataclass(frozen=True, slots=True)
class QcOutcome:
    """What one control point did.

    `run` is its verdict (accepted = not rejected by the Westgard rules). When `rehold` is
    True the run is rejected and the daemon must hold again the patient results of the same
    instrument and test measured in the window (`rehold_since`, `rehold_until`]: after the last
    accepted run before the rejection (None: no accepted run is known, everything before is
    concerned) and up to the first accepted run at or after it (None: none yet, so up to now).
    Results already held for `qc_failed` need nothing more.
    """

    evaluation: QcEvaluation
    run: QcRun
    rehold_since: datetime | None
    rehold: bool
    rehold_until: datetime | None = None


@dataclass(slots=True)
class _Control:
    point: QcPoint
    accepted: bool
    arrival: int  # controls at the same instant are read in the order they came


@dataclass(slots=True)
class _Pair:
    """Everything known about one instrument and test."""

    interval: timedelta | None
    accepted: list[datetime] = field(default_factory=list)  # sorted run times
    rejected: list[datetime] = field(default_factory=list)  # sorted run times
    levels: dict[str, list[_Control]] = field(default_factory=dict)  # Westgard history
    newest: QcPoint | None = None
    run_id: str = ""  # the run id of the latest control that had one


class QcMonitor:
    """Westgard verdicts and QC-gate reasons for every instrument and test of a `QcPlan`."""

    def __init__(self, plan: QcPlan) -> None:
        self.plan = plan
        self._targets = plan.targets_map()
        self._config = plan.westgard_config()
        self._default_interval = plan.default_interval()
        self._intervals = plan.intervals_map()
        self._pairs: dict[tuple[str, str], _Pair] = {}
        self._arrivals = 0

    def _pair(self, instrument: str, test: str) -> _Pair:
        key = (instrument, test)
        pair = self._pairs.get(key)
        if pair is None:
            interval = self._intervals.get(key, self._default_interval)
            pair = self._pairs[key] = _Pair(interval)
        return pair

    # --- controls -------------------------------------------------------------------------

    def add_qc(self, point: QcPoint) -> QcOutcome:
        """Judge a new control point, record its run and say what to hold again."""
        pair = self._pair(point.instrument, point.test)
        kept = [c for controls in pair.levels.values() for c in controls]
        kept.sort(key=lambda c: c.arrival)
        history = [c.point for c in kept]
        evaluation = evaluate(history, point, self._targets, self._config)
        accepted = not evaluation.rejected
        run = QcRun(point.instrument, point.test, point.at, accepted)
        if not accepted:
            self._reject_run_of(pair, point)
        self._record(pair, point.at, accepted)
        if (point.instrument, point.test, point.lot, point.level) in self._targets:
            self._arrivals += 1
            self._remember(pair, _Control(point, accepted, self._arrivals))
        if accepted:
            return QcOutcome(evaluation, run, None, False)
        since_index = bisect_left(pair.accepted, point.at)
        since = pair.accepted[since_index - 1] if since_index else None
        until = pair.accepted[since_index] if since_index < len(pair.accepted) else None
        return QcOutcome(evaluation, run, since, True, until)

    def record_run(self, run: QcRun) -> None:
        """Record a verdict reached elsewhere (a person's decision on a run, a restored state).
        It counts for the gate only: the Westgard rules read control points, not verdicts."""
        self._record(self._pair(run.instrument, run.test), run.at, run.accepted)

    def load(self, points: Iterable[QcPoint]) -> int:
        """Rebuild the state from stored control points (at start-up); they are replayed in
        time order. Returns how many were read."""
        count = 0
        for point in sorted(points, key=lambda p: p.at):
            self.add_qc(point)
            count += 1
        return count

    def runs(self) -> tuple[QcRun, ...]:
        """Every run verdict held, per instrument and test, by time (rejected first at a tie)."""
        runs: list[QcRun] = []
        for (instrument, test), pair in self._pairs.items():
            verdicts = [(at, False) for at in pair.rejected] + [(at, True) for at in pair.accepted]
            verdicts.sort()
            runs += (QcRun(instrument, test, at, accepted) for at, accepted in verdicts)
        return tuple(runs)

    def prune(self, before: datetime) -> None:
        """Forget runs that cannot change the reasons of a result measured at or after `before`:
        those before the last accepted run strictly before it (and rejections at or before it)."""
        for pair in self._pairs.values():
            index = bisect_left(pair.accepted, before) - 1
            if index < 0:
                continue
            last_good = pair.accepted[index]
            del pair.accepted[:index]
            del pair.rejected[: bisect_right(pair.rejected, last_good)]

    @staticmethod
    def _record(pair: _Pair, at: datetime, accepted: bool) -> None:
        times = pair.accepted if accepted else pair.rejected
        if not times or times[-1] <= at:
            times.append(at)  # the usual case: controls arrive in time order
        else:
            insort(times, at)

    def _reject_run_of(self, pair: _Pair, point: QcPoint) -> None:
        """Turn the accepted controls of `point`'s run, up to it, into rejections."""
        window = self._config.run_window
        for controls in pair.levels.values():
            for control in controls:
                earlier = control.point
                if control.accepted and earlier.at <= point.at and same_run(earlier, point, window):
                    control.accepted = False
                    index = bisect_left(pair.accepted, earlier.at)
                    if index < len(pair.accepted) and pair.accepted[index] == earlier.at:
                        del pair.accepted[index]
                    insort(pair.rejected, earlier.at)

    def _remember(self, pair: _Pair, control: _Control) -> None:
        point = control.point
        if pair.newest is None or point.at >= pair.newest.at:
            pair.newest = point
        if point.run_id:
            pair.run_id = point.run_id
        controls = pair.levels.setdefault(point.level, [])
        controls.append(control)
        if len(controls) <= KEEP_PER_LEVEL:
            return
        controls.sort(key=lambda c: c.point.at)
        horizon = pair.newest.at - self._config.run_window
        while len(controls) > KEEP_PER_LEVEL:
            first = controls[0].point
            if first.at >= horizon or (first.run_id and first.run_id == pair.run_id):
                break  # may share a run with the newest control (or a later one)
            del controls[0]

    # --- patient results ------------------------------------------------------------------

    def reasons_for(self, instrument: str, test: str, at: datetime) -> list[str]:
        """The QC reasons of a patient result measured `at` (`qc_failed`, `qc_overdue`, in that
        order; [] when QC lets it through), exactly as `QcGate.status_for` on `runs()`."""
        pair = self._pairs.get((instrument, test))
        if pair is None:
            interval = self._intervals.get((instrument, test), self._default_interval)
            return [] if interval is None else [QC_OVERDUE]
        accepted = pair.accepted
        reasons: list[str] = []
        # Bracket: last accepted run strictly before `at`, first accepted run at or after it.
        after_index = bisect_left(accepted, at)
        rejected = pair.rejected
        if rejected:
            first = bisect_right(rejected, accepted[after_index - 1]) if after_index else 0
            if first < len(rejected) and (
                after_index == len(accepted) or rejected[first] <= accepted[after_index]
            ):
                reasons.append(QC_FAILED)
        interval = pair.interval
        if interval is not None:
            last_index = bisect_right(accepted, at, lo=after_index) - 1
            if last_index < 0 or at - accepted[last_index] > interval:
                reasons.append(QC_OVERDUE)
        return reasons

    def last_accepted_before(self, instrument: str, test: str, at: datetime) -> datetime | None:
        """The time of the last accepted run of this instrument and test strictly before `at`."""
        pair = self._pairs.get((instrument, test))
        if pair is None:
            return None
        index = bisect_left(pair.accepted, at)
        return pair.accepted[index - 1] if index else None

    def interval_for(self, instrument: str, test: str) -> timedelta | None:
        """The plan's QC interval for this instrument and test (None: never overdue)."""
        return self._intervals.get((instrument, test), self._default_interval)
