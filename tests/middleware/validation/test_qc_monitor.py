"""The QC monitor: Westgard verdicts per control, the runs they record, what a rejection holds
again, and the gate's reasons (the same as `QcGate` on the same runs, found faster)."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.validation.qc_gate import QcGate, QcRun
from middleware.validation.qc_monitor import KEEP_PER_LEVEL, QcMonitor
from middleware.validation.qc_plan import QcPlan
from middleware.validation.westgard import QcPoint, evaluate

T0 = datetime(2026, 11, 20, 8, 0)


def h(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def _plan(**extra: object) -> QcPlan:
    targets = [
        {"instrument": "an1", "test": test, "lot": "L1", "level": level, "mean": 100, "sd": 10}
        for test in ("GLU", "K")
        for level in ("1", "2")
    ]
    return QcPlan.model_validate({"targets": targets, **extra})


def qc(hours: float, z: float, level: str = "1", test: str = "GLU", run_id: str = "") -> QcPoint:
    """A control `z` SDs from its target mean (100, SD 10)."""
    value = Decimal(100) + Decimal(str(z)) * 10
    return QcPoint("an1", test, level, "L1", value, h(hours), run_id)


def test_an_accepted_control_holds_nothing_again() -> None:
    monitor = QcMonitor(_plan())
    outcome = monitor.add_qc(qc(0, 0.5))
    assert outcome.run == QcRun("an1", "GLU", h(0), True)
    assert not outcome.rehold and outcome.rehold_since is None
    assert outcome.evaluation.violations == ()
    assert monitor.reasons_for("an1", "GLU", h(1)) == []


def test_a_rejection_holds_again_since_the_last_accepted_run() -> None:
    monitor = QcMonitor(_plan())
    monitor.add_qc(qc(0, 0.5))
    outcome = monitor.add_qc(qc(4, 3.5))  # 1-3s
    assert outcome.rehold and outcome.run == QcRun("an1", "GLU", h(4), False)
    assert outcome.evaluation.violations == ("1-2s", "1-3s")
    assert (outcome.rehold_since, outcome.rehold_until) == (h(0), None)
    assert monitor.reasons_for("an1", "GLU", h(0)) == []  # bracketed by the accepted run
    assert monitor.reasons_for("an1", "GLU", h(2)) == ["qc_failed"]
    assert monitor.reasons_for("an1", "GLU", h(4)) == ["qc_failed"]
    assert monitor.reasons_for("an1", "GLU", h(5)) == ["qc_failed"]  # no recovery yet
    assert monitor.reasons_for("an1", "K", h(2)) == []  # another test is not concerned
    assert monitor.reasons_for("an2", "GLU", h(2)) == []  # nor another instrument


def test_an_accepted_rerun_ends_the_hold() -> None:
    monitor = QcMonitor(_plan())
    monitor.add_qc(qc(0, 0.5))
    monitor.add_qc(qc(4, 3.5))
    rerun = monitor.add_qc(qc(4.5, 0.2))
    assert not rerun.rehold
    assert monitor.reasons_for("an1", "GLU", h(4.5)) == ["qc_failed"]  # up to the rerun
    assert monitor.reasons_for("an1", "GLU", h(4.6)) == []
    # A second failure later holds only what follows the rerun.
    again = monitor.add_qc(qc(9, -3.2))
    assert (again.rehold_since, again.rehold_until) == (h(4.5), None)
    assert monitor.reasons_for("an1", "GLU", h(4.6)) == ["qc_failed"]
    assert monitor.reasons_for("an1", "GLU", h(4.4)) == ["qc_failed"]


def test_without_any_accepted_run_everything_before_is_concerned() -> None:
    monitor = QcMonitor(_plan())
    outcome = monitor.add_qc(qc(4, 3.5))
    assert outcome.rehold and outcome.rehold_since is None
    assert monitor.reasons_for("an1", "GLU", h(-100)) == ["qc_failed"]


def test_a_rejected_level_rejects_the_other_level_of_its_run() -> None:
    monitor = QcMonitor(_plan())
    monitor.add_qc(qc(-24, 0.1, "1"))  # yesterday's good run
    monitor.add_qc(qc(-24, 0.3, "2"))
    first = monitor.add_qc(qc(0, 2.5, "1"))  # warning only: accepted for now
    assert not first.rehold and first.evaluation.violations == ("1-2s",)
    second = monitor.add_qc(qc(0.05, 2.4, "2"))  # 2-2s across the levels of one run
    assert second.evaluation.violations == ("1-2s", "2-2s")
    assert second.rehold_since == h(-24)  # the last good run, not level 1 of this one
    assert QcRun("an1", "GLU", h(0), False) in monitor.runs()
    assert monitor.reasons_for("an1", "GLU", h(-1)) == ["qc_failed"]


def test_a_late_rejection_reaches_up_to_the_next_accepted_run() -> None:
    monitor = QcMonitor(_plan())
    monitor.add_qc(qc(0, 0.1))
    monitor.add_qc(qc(8, 0.2))
    late = monitor.add_qc(qc(4, 3.6))  # measured between them, arriving last
    assert (late.rehold_since, late.rehold_until) == (h(0), h(8))


def test_a_control_without_target_is_rejected() -> None:
    monitor = QcMonitor(_plan())
    outcome = monitor.add_qc(QcPoint("an1", "GLU", "3", "L9", Decimal(1), h(0)))
    assert outcome.rehold and outcome.evaluation.violations == ("no_target",)


def test_overdue_uses_the_interval_of_the_instrument_and_test() -> None:
    plan = _plan(overdue_hours=24, intervals=[{"instrument": "an1", "test": "GLU", "hours": 8}])
    monitor = QcMonitor(plan)
    assert monitor.reasons_for("an1", "GLU", h(0)) == ["qc_overdue"]  # no accepted run yet
    assert monitor.reasons_for("an9", "ALT", h(0)) == ["qc_overdue"]  # default interval
    monitor.add_qc(qc(0, 0.1))
    monitor.add_qc(qc(0, 0.1, test="K"))
    assert monitor.reasons_for("an1", "GLU", h(8)) == []  # exactly the interval: in time
    assert monitor.reasons_for("an1", "GLU", h(8.01)) == ["qc_overdue"]
    assert monitor.reasons_for("an1", "K", h(23)) == []
    assert monitor.reasons_for("an1", "K", h(25)) == ["qc_overdue"]
    monitor.add_qc(qc(9, 3.5))
    assert monitor.reasons_for("an1", "GLU", h(9)) == ["qc_failed", "qc_overdue"]


def test_no_interval_means_never_overdue() -> None:
    assert QcMonitor(_plan()).reasons_for("an1", "GLU", h(1000)) == []


def test_load_rebuilds_the_same_state_whatever_the_order() -> None:
    points = [qc(n * 2, z) for n, z in enumerate([0.1, 2.5, 2.6, -0.5, 3.5, 0.0])]
    one_by_one = QcMonitor(_plan())
    for point in points:
        one_by_one.add_qc(point)
    loaded = QcMonitor(_plan())
    assert loaded.load(reversed(points)) == len(points)
    assert loaded.runs() == one_by_one.runs()


def test_the_westgard_history_stays_bounded() -> None:
    monitor = QcMonitor(_plan())
    for n in range(500):
        monitor.add_qc(qc(n, 0.5 if n % 3 else -0.5, level=str(1 + n % 2)))
    pair = monitor._pairs[("an1", "GLU")]  # the bound is internal: look at it directly
    assert all(len(controls) <= KEEP_PER_LEVEL for controls in pair.levels.values())
    assert len(monitor.runs()) == 500


def test_prune_keeps_the_reasons_of_later_results() -> None:
    monitor = QcMonitor(_plan(overdue_hours=6))
    for n, z in enumerate([0.1, 3.5, 0.2, 0.1, -3.4, 0.3, 0.0]):
        monitor.add_qc(qc(n * 4, z))
    later = [h(x / 2) for x in range(26, 60)]
    before = [monitor.reasons_for("an1", "GLU", at) for at in later]
    monitor.prune(h(13))  # the last accepted run before it is at 12 h
    assert [monitor.reasons_for("an1", "GLU", at) for at in later] == before
    assert [run.at for run in monitor.runs()] == [h(12), h(16), h(20), h(24)]


# --- agreement with QcGate and with westgard.evaluate ---------------------------------------

minutes = st.integers(min_value=0, max_value=40)
runs_strategy = st.lists(
    st.tuples(st.sampled_from(["GLU", "K"]), minutes, st.booleans()), max_size=25
)


def _gate(monitor: QcMonitor, plan: QcPlan) -> QcGate:
    return QcGate(monitor.runs(), plan.intervals_map(), plan.default_interval())


@settings(max_examples=300)
@given(
    runs_strategy,
    st.lists(st.tuples(st.sampled_from(["GLU", "K", "NA"]), minutes), max_size=20),
    st.sampled_from([None, 1, 5]),
    st.sampled_from([None, 2]),
)
def test_reasons_agree_with_the_qc_gate(
    runs: list[tuple[str, int, bool]],
    results: list[tuple[str, int]],
    default_hours: int | None,
    glu_hours: int | None,
) -> None:
    extra: dict[str, object] = {"overdue_hours": default_hours}
    if glu_hours is not None:
        extra["intervals"] = [{"instrument": "an1", "test": "GLU", "hours": glu_hours}]
    plan = _plan(**extra)
    monitor = QcMonitor(plan)
    for test, minute, accepted in runs:
        monitor.record_run(QcRun("an1", test, h(minute / 10), accepted))
    gate = QcGate(
        tuple(QcRun("an1", t, h(m / 10), a) for t, m, a in runs),
        plan.intervals_map(),
        plan.default_interval(),
    )
    assert len(monitor.runs()) == len(runs)
    for test, minute in results:
        at = h(minute / 10)
        assert monitor.reasons_for("an1", test, at) == gate.status_for("an1", test, at)


controls = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=20),  # minutes after the previous control
        st.sampled_from(["1", "2"]),
        st.integers(min_value=-8, max_value=8),  # z in half SDs: boundaries included
        st.sampled_from(["", "", "same", "next"]),  # no run id, this run's id, a new run's
    ),
    max_size=40,
)


def _points(stream: list[tuple[int, str, int, str]]) -> list[QcPoint]:
    """Controls in time order; run ids as an analyser gives them (a run id is not reused once
    the next run has started)."""
    points = []
    at, run = T0, 0
    for gap, level, half_sds, run_id in stream:
        at += timedelta(minutes=gap)
        run += run_id == "next"
        value = Decimal(100) + half_sds * 5
        points.append(QcPoint("an1", "GLU", level, "L1", value, at, f"r{run}" if run_id else ""))
    return points


@settings(max_examples=200)
@given(controls, st.booleans(), st.booleans())
def test_bounded_history_judges_as_the_whole_history(
    stream: list[tuple[int, str, int, str]], across_levels: bool, across_runs: bool
) -> None:
    plan = _plan(westgard={"across_levels": across_levels, "across_runs": across_runs})
    monitor = QcMonitor(plan)
    seen: list[QcPoint] = []
    for point in _points(stream):
        expected = evaluate(seen, point, plan.targets_map(), plan.westgard_config())
        assert monitor.add_qc(point).evaluation == expected
        seen.append(point)


@settings(max_examples=200)
@given(controls, st.lists(minutes, max_size=15))
def test_reasons_after_controls_agree_with_the_qc_gate(
    stream: list[tuple[int, str, int, str]], results: list[int]
) -> None:
    plan = _plan(overdue_hours=1)
    monitor = QcMonitor(plan)
    monitor.load(_points(stream))
    gate = _gate(monitor, plan)
    for minute in results:
        moment = T0 + timedelta(minutes=minute * 10)
        assert monitor.reasons_for("an1", "GLU", moment) == gate.status_for("an1", "GLU", moment)
