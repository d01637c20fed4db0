"""The QC monitor's patient-side checks: QC overdue by the number of patient results since the
last accepted run, and a new reagent lot without an accepted QC run on it (`qc_new_lot`)."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.validation.qc_monitor import NewLot, QcMonitor
from middleware.validation.qc_plan import QcPlan
from middleware.validation.westgard import QcPoint

T0 = datetime(2026, 12, 1, 8, 0)


def m(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def _plan(**extra: object) -> QcPlan:
    targets = [
        {"instrument": "glu-1", "test": "GLU", "lot": "C1", "level": level, "mean": 100, "sd": 10}
        for level in ("1", "2")
    ]
    return QcPlan.model_validate({"targets": targets, **extra})


def qc(
    minutes: float, z: float = 0.0, level: str = "1", reagent: str = "", run: str = ""
) -> QcPoint:
    """A control `z` SDs from its target (control lot C1) measured on reagent lot `reagent`."""
    value = Decimal(100) + Decimal(str(z)) * 10
    return QcPoint("glu-1", "GLU", level, "C1", value, m(minutes), run, reagent_lot=reagent)


COUNTED = {"intervals": [{"instrument": "glu-1", "test": "GLU", "results": 3}]}
NEW_LOT = {"intervals": [{"instrument": "glu-1", "test": "GLU", "new_lot_qc": True}]}


# --- overdue by count -----------------------------------------------------------------------


def test_the_result_after_n_since_the_accepted_run_is_overdue() -> None:
    monitor = QcMonitor(_plan(**COUNTED))
    assert monitor.reasons_for("glu-1", "GLU", m(0)) == ["qc_overdue"]  # no accepted run yet
    monitor.add_qc(qc(0))
    for minute in (1, 2, 3):
        assert monitor.reasons_for("glu-1", "GLU", m(minute)) == []
        monitor.add_patient("glu-1", "GLU", m(minute))
    assert monitor.reasons_for("glu-1", "GLU", m(4)) == ["qc_overdue"]  # the fourth
    assert monitor.reasons_for("glu-1", "GLU", m(2.5)) == []  # only two before it
    assert monitor.reasons_for("glu-1", "K", m(4)) == []  # another test is not counted
    monitor.add_qc(qc(5))  # a new accepted run starts the count again
    assert monitor.reasons_for("glu-1", "GLU", m(6)) == []
    assert monitor.reasons_for("glu-1", "GLU", m(4)) == ["qc_overdue"]  # measured before it


def test_a_rejected_run_does_not_restart_the_count() -> None:
    monitor = QcMonitor(_plan(**COUNTED))
    monitor.add_qc(qc(0))
    for minute in (1, 2, 3):
        monitor.add_patient("glu-1", "GLU", m(minute))
    monitor.add_qc(qc(4, z=3.5))  # 1-3s
    assert monitor.reasons_for("glu-1", "GLU", m(5)) == ["qc_failed", "qc_overdue"]
    monitor.add_qc(qc(6, z=0.1))  # the accepted rerun
    assert monitor.reasons_for("glu-1", "GLU", m(7)) == []


def test_time_and_count_both_apply_whichever_comes_first() -> None:
    plan = _plan(overdue_hours=1, intervals=[{"instrument": "glu-1", "test": "GLU", "results": 2}])
    monitor = QcMonitor(plan)
    monitor.add_qc(qc(0))
    monitor.add_patient("glu-1", "GLU", m(1))
    assert monitor.reasons_for("glu-1", "GLU", m(61)) == ["qc_overdue"]  # by time
    monitor.add_patient("glu-1", "GLU", m(2))
    assert monitor.reasons_for("glu-1", "GLU", m(3)) == ["qc_overdue"]  # by count
    assert monitor.interval_for("glu-1", "GLU") == timedelta(hours=1)


def test_results_of_one_message_count_for_one_another() -> None:
    monitor = QcMonitor(_plan(**COUNTED))
    monitor.add_qc(qc(0))
    monitor.add_patient("glu-1", "GLU", m(1))
    batch = monitor.batch()  # one message with three glucose results, none stored yet
    assert [batch.reasons_for("glu-1", "GLU", m(t)) for t in (2, 3, 4)] == [
        [],
        [],
        ["qc_overdue"],
    ]
    assert batch.reasons_for("glu-1", "K", m(4)) == []
    # Nothing was counted by asking: the next message sees only what was stored.
    assert monitor.reasons_for("glu-1", "GLU", m(4)) == []


def test_without_a_limit_nothing_is_counted_or_kept() -> None:
    monitor = QcMonitor(_plan())
    monitor.add_qc(qc(0))
    for minute in range(1, 100):
        assert monitor.add_patient("glu-1", "GLU", m(minute), "R1") is False
    assert monitor.reasons_for("glu-1", "GLU", m(100), "R9") == []
    assert monitor._pairs[("glu-1", "GLU")].patients == []  # internal: nothing kept


def test_the_count_kept_stays_bounded() -> None:
    monitor = QcMonitor(_plan(**COUNTED))
    for run in range(50):
        monitor.add_qc(qc(run * 100))
        for minute in range(1, 80):
            monitor.add_patient("glu-1", "GLU", m(run * 100 + minute))
    pair = monitor._pairs[("glu-1", "GLU")]  # the bound is internal: look at it directly
    # Since the two settled runs before the newest (which a control may still turn down): the
    # first and last three after each.
    assert len(pair.patients) <= 3 * (2 * 3)
    assert monitor.reasons_for("glu-1", "GLU", m(4950)) == ["qc_overdue"]
    assert monitor.reasons_for("glu-1", "GLU", m(4902)) == []
    assert monitor.counts_since() == [("glu-1", "GLU", m(4900), 3)]


def test_a_late_accepted_run_counts_from_itself() -> None:
    monitor = QcMonitor(_plan(intervals=[{"instrument": "glu-1", "test": "GLU", "results": 1}]))
    monitor.add_qc(qc(0))
    for minute in (1, 2, 3, 4, 5):
        monitor.add_patient("glu-1", "GLU", m(minute))
    monitor.add_qc(qc(3.5))  # measured before the last two results, arriving after them
    assert monitor.reasons_for("glu-1", "GLU", m(4.5)) == []  # one since the run: 4
    assert monitor.reasons_for("glu-1", "GLU", m(6)) == ["qc_overdue"]  # 4 and 5


def test_a_rejection_turning_down_two_accepted_controls_brings_the_count_back() -> None:
    monitor = QcMonitor(_plan(intervals=[{"instrument": "glu-1", "test": "GLU", "results": 3}]))
    monitor.add_qc(qc(0))
    monitor.add_patient("glu-1", "GLU", m(1))
    monitor.add_patient("glu-1", "GLU", m(2))
    monitor.add_qc(qc(30))  # a new run, level 1...
    monitor.add_patient("glu-1", "GLU", m(31))
    monitor.add_qc(qc(32, level="2"))  # ... level 2 ...
    assert monitor.reasons_for("glu-1", "GLU", m(33)) == []
    monitor.add_qc(qc(34, z=3.6))  # ... and a rejected level 1 turns the whole run down
    # Back to the run at 0 h: three results since, and the rejected run in the bracket.
    assert monitor.reasons_for("glu-1", "GLU", m(35)) == ["qc_failed", "qc_overdue"]


# --- new reagent lot ------------------------------------------------------------------------


def test_a_new_reagent_lot_is_held_until_a_run_on_it_is_accepted() -> None:
    monitor = QcMonitor(_plan(**NEW_LOT))
    monitor.add_qc(qc(0, reagent="R1"))
    assert monitor.reasons_for("glu-1", "GLU", m(1), "R1") == []
    assert monitor.reasons_for("glu-1", "GLU", m(1), "R2") == ["qc_new_lot"]
    assert monitor.reasons_for("glu-1", "GLU", m(1)) == []  # no lot said: nothing to check
    assert monitor.add_patient("glu-1", "GLU", m(1), "R1") is False
    assert monitor.add_patient("glu-1", "GLU", m(2), "R2") is True
    assert monitor.add_patient("glu-1", "GLU", m(3), "R2") is True
    assert monitor.new_lots() == [NewLot("glu-1", "GLU", "R2", m(2))]
    monitor.add_qc(qc(10, reagent="R2"))
    assert monitor.new_lots() == []
    assert monitor.reasons_for("glu-1", "GLU", m(11), "R2") == []
    assert monitor.reasons_for("glu-1", "GLU", m(9), "R2") == ["qc_new_lot"]  # before the run


def test_the_control_lot_is_not_the_reagent_lot() -> None:
    monitor = QcMonitor(_plan(**NEW_LOT))
    monitor.add_qc(qc(0))  # control lot C1, reagent lot not said
    assert monitor.reasons_for("glu-1", "GLU", m(1), "C1") == ["qc_new_lot"]


def test_a_rejected_run_qualifies_no_lot_and_turns_down_its_other_level() -> None:
    monitor = QcMonitor(_plan(**NEW_LOT))
    monitor.add_qc(qc(0, reagent="R2"))  # level 1 accepted...
    assert monitor.reasons_for("glu-1", "GLU", m(1), "R2") == []
    monitor.add_qc(qc(0.5, z=-3.4, level="2", reagent="R2"))  # ...level 2 rejects the run
    assert monitor.reasons_for("glu-1", "GLU", m(1), "R2") == ["qc_failed", "qc_new_lot"]
    monitor.add_patient("glu-1", "GLU", m(1), "R2")
    assert [lot.reagent_lot for lot in monitor.new_lots()] == ["R2"]


def test_an_unknown_instrument_with_new_lot_qc_by_default() -> None:
    monitor = QcMonitor(_plan(new_lot_qc=True))
    assert monitor.reasons_for("other", "NA", m(0), "X1") == ["qc_new_lot"]
    assert monitor.reasons_for("other", "NA", m(0)) == []
    assert ("glu-1", "GLU") in monitor.watched()


# --- against a reference that keeps everything ----------------------------------------------

events = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=3),  # minutes after the previous event
        st.sampled_from(["qc", "qc", "patient", "patient", "patient"]),
        st.sampled_from([0.0, 0.0, 0.5, -1.0, 3.5]),  # a control's z (3.5 rejects, 1-3s)
        st.sampled_from(["1", "2"]),
        st.sampled_from(["R1", "R2", ""]),
    ),
    max_size=60,
)


def _reference(
    runs: list[tuple[datetime, bool, str]],
    patients: list[datetime],
    at: datetime,
    lot: str,
    limit: int,
) -> list[str]:
    """What the plan says, from every run verdict and every patient result ever seen."""
    accepted = [when for when, ok, _ in runs if ok and when <= at]
    reasons = []
    if any(not ok for _, ok, _ in runs):
        # qc_failed: a rejected run in (last accepted before `at`, first accepted at or after]
        before = max((w for w, ok, _ in runs if ok and w < at), default=None)
        after = min((w for w, ok, _ in runs if ok and w >= at), default=None)
        if any(
            not ok and (before is None or w > before) and (after is None or w <= after)
            for w, ok, _ in runs
        ):
            reasons.append("qc_failed")
    last = max(accepted, default=None)
    if last is None or sum(1 for p in patients if last < p <= at) >= limit:
        reasons.append("qc_overdue")
    if lot and not any(ok and reagent == lot and w <= at for w, ok, reagent in runs):
        reasons.append("qc_new_lot")
    return reasons


@settings(max_examples=300)
@given(events, st.sampled_from([1, 2, 4]))
def test_live_reasons_agree_with_a_reference_keeping_everything(
    stream: list[tuple[int, str, float, str, str]], limit: int
) -> None:
    """Events in time order as a device sends them; each patient result is decided before it
    is counted, as the daemon does, and every reason agrees with the full history's."""
    plan = _plan(
        westgard={"rules": ["1-3s"], "across_runs": False},
        intervals=[{"instrument": "glu-1", "test": "GLU", "results": limit, "new_lot_qc": True}],
    )
    monitor = QcMonitor(plan)
    points: dict[datetime, str] = {}  # control time -> reagent lot (one control per minute)
    patients: list[datetime] = []
    noted: set[str] = set()  # lots of patient results stored without QC on them
    at = T0
    for gap, kind, z, level, lot in stream:
        at += timedelta(minutes=gap)
        if kind == "qc":
            if at in points:
                continue
            points[at] = lot
            monitor.add_qc(QcPoint("glu-1", "GLU", level, "C1", Decimal(100 + z * 10), at,
                                   reagent_lot=lot))  # fmt: skip
            continue
        runs = [(run.at, run.accepted, points[run.at]) for run in monitor.runs()]
        expected = _reference(runs, patients, at, lot, limit)
        assert monitor.reasons_for("glu-1", "GLU", at, lot) == expected
        if monitor.add_patient("glu-1", "GLU", at, lot):
            assert "qc_new_lot" in expected
            noted.add(lot)
        patients.append(at)
    runs = [(run.at, run.accepted, points[run.at]) for run in monitor.runs()]
    covered = {lot for _, ok, lot in runs if ok}
    assert {n.reagent_lot for n in monitor.new_lots()} == noted - covered
