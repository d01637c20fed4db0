"""QC gate (AUTOVERIFICATION.md §3 "On rejection"): the hold window around a failed QC run."""

from __future__ import annotations

from datetime import datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from middleware.validation.qc_gate import DecidedResult, QcGate, QcRun, newly_held

T0 = datetime(2025, 3, 1, 8, 0)


def h(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def run(hours: float, accepted: bool, instrument: str = "an1", test: str = "GLU") -> QcRun:
    return QcRun(instrument, test, h(hours), accepted)


# accepted at 0, rejected at 4, accepted at 8
GATE = QcGate((run(0, True), run(4, False), run(8, True)))


def test_results_before_the_last_accepted_run_are_free() -> None:
    assert GATE.status_for("an1", "GLU", h(-1)) == []
    assert GATE.status_for("an1", "GLU", h(0)) == []  # bracketed by the accepted run at 0


def test_results_since_the_last_accepted_run_before_the_failure_are_held() -> None:
    for hours in (0.001, 2, 3.999, 4):
        assert GATE.status_for("an1", "GLU", h(hours)) == ["qc_failed"], hours


def test_results_after_the_failure_until_the_next_accepted_run_are_held() -> None:
    for hours in (4.001, 6, 8):
        assert GATE.status_for("an1", "GLU", h(hours)) == ["qc_failed"], hours


def test_results_after_the_next_accepted_run_are_free() -> None:
    assert GATE.status_for("an1", "GLU", h(8.001)) == []
    assert GATE.status_for("an1", "GLU", h(100)) == []


def test_no_accepted_run_yet_after_a_failure_holds_everything_after_last_accepted() -> None:
    gate = QcGate((run(0, True), run(4, False)))
    assert gate.status_for("an1", "GLU", h(1)) == ["qc_failed"]
    assert gate.status_for("an1", "GLU", h(50)) == ["qc_failed"]
    assert gate.status_for("an1", "GLU", h(0)) == []


def test_failure_without_any_accepted_run_holds_everything() -> None:
    gate = QcGate((run(4, False),))
    assert gate.status_for("an1", "GLU", h(-10)) == ["qc_failed"]
    assert gate.status_for("an1", "GLU", h(10)) == ["qc_failed"]


def test_two_rejections_in_a_row() -> None:
    gate = QcGate((run(0, True), run(2, False), run(3, False), run(5, True)))
    assert gate.status_for("an1", "GLU", h(2.5)) == ["qc_failed"]
    assert gate.status_for("an1", "GLU", h(4)) == ["qc_failed"]
    assert gate.status_for("an1", "GLU", h(5.5)) == []


def test_other_instruments_and_tests_are_unaffected() -> None:
    assert GATE.status_for("an2", "GLU", h(5)) == []
    assert GATE.status_for("an1", "NA", h(5)) == []


def test_run_order_in_the_gate_does_not_matter() -> None:
    reverse = QcGate(tuple(reversed(GATE.runs)))
    for hours in (-1, 0, 2, 4, 6, 8, 9):
        assert reverse.status_for("an1", "GLU", h(hours)) == GATE.status_for("an1", "GLU", h(hours))


# qc_overdue ----------------------------------------------------------------------------------


def test_overdue_strictly_after_the_interval() -> None:
    gate = QcGate((run(0, True),), overdue_after={("an1", "GLU"): timedelta(hours=24)})
    assert gate.status_for("an1", "GLU", h(24)) == []
    assert gate.status_for("an1", "GLU", h(24) + timedelta(seconds=1)) == ["qc_overdue"]


def test_overdue_without_any_accepted_run() -> None:
    gate = QcGate((run(0, False),), default_overdue_after=timedelta(hours=8))
    assert gate.status_for("an1", "GLU", h(1)) == ["qc_failed", "qc_overdue"]
    assert QcGate(default_overdue_after=timedelta(hours=8)).status_for("x", "y", h(0)) == [
        "qc_overdue"
    ]


def test_overdue_counts_only_runs_at_or_before_the_result() -> None:
    gate = QcGate((run(0, True), run(30, True)), default_overdue_after=timedelta(hours=24))
    assert gate.status_for("an1", "GLU", h(25)) == ["qc_overdue"]
    assert gate.status_for("an1", "GLU", h(30)) == []


def test_per_pair_interval_overrides_default_and_none_means_unchecked() -> None:
    gate = QcGate(
        (run(0, True),),
        overdue_after={("an1", "GLU"): timedelta(hours=48)},
        default_overdue_after=timedelta(hours=1),
    )
    assert gate.status_for("an1", "GLU", h(30)) == []
    assert gate.status_for("an1", "NA", h(30)) == ["qc_overdue"]
    assert QcGate((run(0, True),)).status_for("an1", "GLU", h(10_000)) == []


# Re-holding decided results ------------------------------------------------------------------


def test_a_rejection_re_holds_results_since_the_last_accepted_run() -> None:
    before = QcGate((run(0, True),))
    after = before.with_run(run(4, False))
    decided = [
        DecidedResult("old", "an1", "GLU", h(-1)),
        DecidedResult("at-accepted", "an1", "GLU", h(0)),
        DecidedResult("r1", "an1", "GLU", h(1)),
        DecidedResult("r2", "an1", "GLU", h(3.5)),
        DecidedResult("other-instrument", "an2", "GLU", h(2)),
        DecidedResult("other-test", "an1", "NA", h(2)),
    ]
    assert [r.result_id for r in newly_held(before, after, decided)] == ["r1", "r2"]


def test_results_already_failed_are_not_re_held_twice() -> None:
    before = QcGate((run(0, True), run(4, False)))
    after = before.with_run(run(5, False))
    assert newly_held(before, after, [DecidedResult("r", "an1", "GLU", h(2))]) == ()


def test_with_run_leaves_the_original_gate_alone() -> None:
    before = QcGate((run(0, True),))
    before.with_run(run(1, False))
    assert before.runs == (run(0, True),)


# Properties ----------------------------------------------------------------------------------

runs_st = st.lists(
    st.builds(
        run,
        st.integers(min_value=0, max_value=48),
        st.booleans(),
        st.sampled_from(["an1", "an2"]),
        st.sampled_from(["GLU", "NA"]),
    ),
    max_size=12,
)
hours_st = st.integers(min_value=-5, max_value=60)


@given(runs_st, hours_st, st.permutations(range(12)))
def test_status_is_deterministic_and_independent_of_run_order(
    runs: list[QcRun], hours: int, order: list[int]
) -> None:
    gate = QcGate(tuple(runs), default_overdue_after=timedelta(hours=12))
    shuffled = [runs[i] for i in order if i < len(runs)]
    other = QcGate(tuple(shuffled), default_overdue_after=timedelta(hours=12))
    for inst in ("an1", "an2"):
        for test in ("GLU", "NA"):
            assert gate.status_for(inst, test, h(hours)) == other.status_for(inst, test, h(hours))


@given(runs_st, hours_st)
def test_runs_of_one_pair_never_affect_another(runs: list[QcRun], hours: int) -> None:
    gate = QcGate(tuple(runs), default_overdue_after=timedelta(hours=12))
    own = QcGate(
        tuple(r for r in runs if (r.instrument, r.test) == ("an1", "GLU")),
        default_overdue_after=timedelta(hours=12),
    )
    assert gate.status_for("an1", "GLU", h(hours)) == own.status_for("an1", "GLU", h(hours))


@given(runs_st, st.integers(min_value=0, max_value=48), hours_st)
def test_an_accepted_run_never_re_holds_and_a_rejected_one_holds_its_own_time(
    runs: list[QcRun], at: int, hours: int
) -> None:
    gate = QcGate(tuple(runs))
    decided = [DecidedResult("x", "an1", "GLU", h(hours))]
    assert newly_held(gate, gate.with_run(run(at, True)), decided) == ()
    assert gate.with_run(run(at, False)).status_for("an1", "GLU", h(at)) == ["qc_failed"]


def test_rejection_and_acceptance_at_the_same_instant() -> None:
    gate = QcGate((run(0, True), run(4, False), run(4, True)))
    assert gate.status_for("an1", "GLU", h(2)) == ["qc_failed"]
    assert gate.status_for("an1", "GLU", h(4)) == ["qc_failed"]
    assert gate.status_for("an1", "GLU", h(4.001)) == []
