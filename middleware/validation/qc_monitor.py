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

**Patient results count too** (`QcPlan`: `results`, `new_lot_qc`). The daemon tells the monitor
of every patient result it stored (`add_patient`, after the commit: a result that was never
stored must not use up the allowance). Then:

- `qc_overdue` also holds when the plan allows at most N patient results between accepted runs
  and N are already counted after the last accepted run at or before the result (its time, as
  for the interval). The alarm center asks at "now": QC is then due, and with `auto_block` the
  device is blocked before it measures the N+1th, as a meter's strip-count lockout does.
- `qc_new_lot` holds when the result names a reagent lot (`reagent_lot`) on which no accepted
  QC run lies at or before the result. A run is "on" the reagent lot its control point names
  (`QcPoint.reagent_lot`, not the control material's `lot`); a rejected run, or an accepted one
  the rejection of its run turns down, qualifies nothing. `new_lots()` lists the reagent lots
  of stored patient results that still have no accepted run at all: the `qc_new_lot` alarms.

Results of one message are decided before any is stored: `batch()` gives a view for that
message in which each result asked about counts for the next ones.

**What is kept.** For the Westgard rules: per instrument, test and level, the last
`KEEP_PER_LEVEL` controls with a target, plus every control that may still share a run with a
later one (within `run_window` of the newest control, or with the latest run id seen). That is
all the rules read (10x needs nine earlier controls) when controls arrive in time order and a
run id, once another has followed it, is not used again; a control older than those kept is
judged on what is kept. For the gate: the time and
verdict of every run, until `prune` drops those that can no longer matter. For the count: the
times of patient results after the last two accepted runs that no later control can turn down,
and of those after the newest accepted run the first N and the last N. A result after the Nth
is overdue whatever lies between, so the middle can go; the last N still count from an accepted
run that arrives late, measured among them. (Wrong only if such a late run falls inside the
dropped middle and a result measured between it and the last N also arrives late.) For reagent
lots: per lot, the first accepted run on it and the latest `KEEP_PER_LOT`.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from middleware.validation.qc_gate import QC_FAILED, QC_NEW_LOT, QC_OVERDUE, QcRun
from middleware.validation.qc_plan import QcPlan
from middleware.validation.westgard import QcEvaluation, QcPoint, evaluate, same_run

__all__ = ["KEEP_PER_LEVEL", "KEEP_PER_LOT", "NewLot", "QcBatch", "QcMonitor", "QcOutcome"]

#: Controls kept per instrument, test and level for the rules that count (10x is the longest).
KEEP_PER_LEVEL = 12
#: Accepted run times kept per reagent lot besides its first one (a late rejection can only turn
#: down the newest runs, those of its own run).
KEEP_PER_LOT = 16


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


@dataclass(frozen=True, slots=True)
class NewLot:
    """A reagent lot patient results were measured on before any accepted QC run on it."""

    instrument: str
    test: str
    reagent_lot: str
    since: datetime  # the first such patient result


@dataclass(slots=True)
class _Control:
    point: QcPoint
    accepted: bool
    arrival: int  # controls at the same instant are read in the order they came


@dataclass(slots=True)
class _Pair:
    """Everything known about one instrument and test."""

    interval: timedelta | None
    run_limit: int | None = None  # most patient results between accepted runs
    new_lot_qc: bool = False  # a reagent lot needs its own accepted run
    accepted: list[datetime] = field(default_factory=list)  # sorted run times
    rejected: list[datetime] = field(default_factory=list)  # sorted run times
    levels: dict[str, list[_Control]] = field(default_factory=dict)  # Westgard history
    newest: QcPoint | None = None
    run_id: str = ""  # the run id of the latest control that had one
    patients: list[datetime] = field(default_factory=list)  # sorted patient result times
    lots: dict[str, list[datetime]] = field(default_factory=dict)  # reagent lot -> accepted runs
    unqualified: dict[str, datetime] = field(default_factory=dict)  # lot -> first result on it


class QcMonitor:
    """Westgard verdicts and QC-gate reasons for every instrument and test of a `QcPlan`."""

    def __init__(self, plan: QcPlan) -> None:
        self.plan = plan
        self._targets = plan.targets_map()
        self._config = plan.westgard_config()
        self._default_interval = plan.default_interval()
        self._intervals = plan.intervals_map()
        self._limits = plan.run_limits_map()
        self._new_lots = plan.new_lot_map()
        self._pairs: dict[tuple[str, str], _Pair] = {}
        self._arrivals = 0

    def _pair(self, instrument: str, test: str) -> _Pair:
        key = (instrument, test)
        pair = self._pairs.get(key)
        if pair is None:
            interval = self._intervals.get(key, self._default_interval)
            limit = self._limits.get(key, self.plan.overdue_results)
            new_lot = self._new_lots.get(key, self.plan.new_lot_qc)
            pair = self._pairs[key] = _Pair(interval, limit, new_lot)
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
        if accepted and point.reagent_lot:
            self._record_lot(pair, point.reagent_lot, point.at)
        if (point.instrument, point.test, point.lot, point.level) in self._targets:
            self._arrivals += 1
            self._remember(pair, _Control(point, accepted, self._arrivals))
        if accepted:
            self._trim_patients(pair)
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
        those before the last accepted run strictly before it (and rejections at or before it),
        with the patient results counted before that run."""
        for pair in self._pairs.values():
            index = bisect_left(pair.accepted, before) - 1
            if index < 0:
                continue
            last_good = pair.accepted[index]
            del pair.accepted[:index]
            del pair.rejected[: bisect_right(pair.rejected, last_good)]
            del pair.patients[: bisect_right(pair.patients, last_good)]

    @staticmethod
    def _record(pair: _Pair, at: datetime, accepted: bool) -> None:
        times = pair.accepted if accepted else pair.rejected
        if not times or times[-1] <= at:
            times.append(at)  # the usual case: controls arrive in time order
        else:
            insort(times, at)

    def _reject_run_of(self, pair: _Pair, point: QcPoint) -> None:
        """Turn the accepted controls of `point`'s run, up to it, into rejections (and so the
        reagent lot they were measured on loses that run)."""
        window = self._config.run_window
        for controls in pair.levels.values():
            for control in controls:
                earlier = control.point
                if control.accepted and earlier.at <= point.at and same_run(earlier, point, window):
                    control.accepted = False
                    _remove(pair.accepted, earlier.at)
                    insort(pair.rejected, earlier.at)
                    if earlier.reagent_lot in pair.lots:
                        _remove(pair.lots[earlier.reagent_lot], earlier.at)

    @staticmethod
    def _record_lot(pair: _Pair, lot: str, at: datetime) -> None:
        times = pair.lots.setdefault(lot, [])
        insort(times, at)
        if len(times) > KEEP_PER_LOT + 1:
            del times[1 : len(times) - KEEP_PER_LOT]  # the first run on the lot, the latest ones

    def _trim_patients(self, pair: _Pair) -> None:
        """Forget the patient results before the last two *settled* accepted runs: only a
        result measured before those, arriving late, would count them. A run is settled when
        no later control can reject it any more (`_reject_run_of`: not within the run window
        of the newest control, not of the latest run id); turning an unsettled one down would
        bring the results before it back into the count."""
        if not pair.patients or len(pair.accepted) < 2:
            return
        unsettled = set()
        newest = pair.newest
        if newest is not None:
            horizon = newest.at - self._config.run_window
            for controls in pair.levels.values():
                for control in controls:
                    point = control.point
                    if control.accepted and (
                        point.at >= horizon or (point.run_id and point.run_id == pair.run_id)
                    ):
                        unsettled.add(point.at)
        settled = (at for at in reversed(pair.accepted) if at not in unsettled)
        next(settled, None)
        second = next(settled, None)
        if second is not None:
            del pair.patients[: bisect_right(pair.patients, second)]

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

    def reasons_for(
        self, instrument: str, test: str, at: datetime, reagent_lot: str = ""
    ) -> list[str]:
        """The QC reasons of a patient result measured `at` (`qc_failed`, `qc_overdue`,
        `qc_new_lot`, in that order; [] when QC lets it through). Without patient counts or
        reagent lots in the plan, exactly `QcGate.status_for` on `runs()`."""
        return self._reasons(instrument, test, at, reagent_lot, ())

    def _reasons(
        self,
        instrument: str,
        test: str,
        at: datetime,
        reagent_lot: str,
        pending: Sequence[datetime],
    ) -> list[str]:
        """`reasons_for`, counting also `pending`: patient results of the same instrument and
        test decided but not yet stored (`QcBatch`)."""
        pair = self._pairs.get((instrument, test))
        if pair is None:
            key = (instrument, test)
            reasons = []
            interval = self._intervals.get(key, self._default_interval)
            limit = self._limits.get(key, self.plan.overdue_results)
            if interval is not None or limit is not None:
                reasons.append(QC_OVERDUE)  # no accepted run at all
            if reagent_lot and self._new_lots.get(key, self.plan.new_lot_qc):
                reasons.append(QC_NEW_LOT)
            return reasons
        accepted = pair.accepted
        reasons = []
        # Bracket: last accepted run strictly before `at`, first accepted run at or after it.
        after_index = bisect_left(accepted, at)
        rejected = pair.rejected
        if rejected:
            first = bisect_right(rejected, accepted[after_index - 1]) if after_index else 0
            if first < len(rejected) and (
                after_index == len(accepted) or rejected[first] <= accepted[after_index]
            ):
                reasons.append(QC_FAILED)
        last_index = bisect_right(accepted, at, lo=after_index) - 1
        last = accepted[last_index] if last_index >= 0 else None
        overdue = False
        if pair.interval is not None:
            overdue = last is None or at - last > pair.interval
        if not overdue and pair.run_limit is not None:
            overdue = last is None or self._counted(pair, last, at, pending) >= pair.run_limit
        if overdue:
            reasons.append(QC_OVERDUE)
        if pair.new_lot_qc and reagent_lot and not self._qualified(pair, reagent_lot, at):
            reasons.append(QC_NEW_LOT)
        return reasons

    @staticmethod
    def _counted(pair: _Pair, since: datetime, at: datetime, pending: Sequence[datetime]) -> int:
        """Patient results counted in (`since`, `at`]."""
        patients = pair.patients
        stored = bisect_right(patients, at) - bisect_right(patients, since)
        return stored + sum(1 for moment in pending if since < moment <= at)

    @staticmethod
    def _qualified(pair: _Pair, reagent_lot: str, at: datetime) -> bool:
        """Whether an accepted run on `reagent_lot` lies at or before `at`."""
        times = pair.lots.get(reagent_lot)
        return times is not None and len(times) > 0 and times[0] <= at

    def add_patient(self, instrument: str, test: str, at: datetime, reagent_lot: str = "") -> bool:
        """A patient result was stored: count it, note its reagent lot. True when that lot had
        no accepted QC run at `at` (the caller keeps it, so a restart knows it too)."""
        self.count_patient(instrument, test, at)
        return self.note_lot(instrument, test, reagent_lot, at)

    def count_patient(self, instrument: str, test: str, at: datetime) -> None:
        """Count one stored patient result (also how the count is rebuilt at start-up)."""
        if self._limits.get((instrument, test), self.plan.overdue_results) is None:
            return
        pair = self._pair(instrument, test)
        assert pair.run_limit is not None
        patients = pair.patients
        if not patients or patients[-1] <= at:
            patients.append(at)
        else:
            insort(patients, at)
        # After the newest accepted run, the first N and the last N are enough (module
        # docstring): drop the middle.
        limit = pair.run_limit
        start = bisect_right(patients, pair.accepted[-1]) if pair.accepted else 0
        if len(patients) - start > 2 * limit:
            del patients[start + limit : len(patients) - limit]

    def note_lot(self, instrument: str, test: str, reagent_lot: str, at: datetime) -> bool:
        """A stored patient result was measured on `reagent_lot`: True (and listed by
        `new_lots` until a run on the lot is accepted) when no accepted run on it lies at or
        before `at` and the plan asks for one."""
        key = (instrument, test)
        if not reagent_lot or not self._new_lots.get(key, self.plan.new_lot_qc):
            return False
        pair = self._pair(instrument, test)
        if self._qualified(pair, reagent_lot, at):
            return False
        first = pair.unqualified.get(reagent_lot)
        if first is None or at < first:
            pair.unqualified[reagent_lot] = at
        return True

    def new_lots(self) -> list[NewLot]:
        """Reagent lots patient results were measured on that have no accepted run at all."""
        return [
            NewLot(instrument, test, lot, since)
            for (instrument, test), pair in sorted(self._pairs.items())
            for lot, since in sorted(pair.unqualified.items())
            if not pair.lots.get(lot)
        ]

    def counts_since(self) -> list[tuple[str, str, datetime, int]]:
        """(instrument, test, newest accepted run, N) for each instrument and test whose patient
        results are counted: what a start-up reads back from the store (`count_patient`)."""
        return [
            (instrument, test, pair.accepted[-1], pair.run_limit)
            for (instrument, test), pair in sorted(self._pairs.items())
            if pair.run_limit is not None and pair.accepted
        ]

    def watched(self) -> set[tuple[str, str]]:
        """Every instrument and test the monitor knows a QC state of: its targets, runs, the
        plan's own entries, and the patient results it counted (what the alarms look at)."""
        pairs = {(i, t) for i, t, _, _ in self._targets}
        pairs |= set(self._intervals) | set(self._limits) | set(self._new_lots)
        return pairs | set(self._pairs)

    def batch(self) -> QcBatch:
        """A view for deciding one message (module docstring)."""
        return QcBatch(self)

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


class QcBatch:
    """The monitor as the decisions of one message see it: each patient result asked about
    (`reasons_for`, once per result, as the pipeline asks) counts for the next ones, since none
    is counted by the monitor before the message is stored. Throw it away after the message."""

    def __init__(self, monitor: QcMonitor) -> None:
        self._monitor = monitor
        self._asked: dict[tuple[str, str], list[datetime]] = {}

    def reasons_for(
        self, instrument: str, test: str, at: datetime, reagent_lot: str = ""
    ) -> list[str]:
        earlier = self._asked.setdefault((instrument, test), [])
        reasons = self._monitor._reasons(instrument, test, at, reagent_lot, earlier)
        earlier.append(at)
        return reasons


def _remove(times: list[datetime], at: datetime) -> None:
    """Remove one occurrence of `at` from the sorted `times`, if there is one."""
    index = bisect_left(times, at)
    if index < len(times) and times[index] == at:
        del times[index]
