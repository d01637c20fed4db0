"""Westgard multirules (AUTOVERIFICATION.md §3): every rule at and just past its boundary."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.validation.westgard import (
    ALL_RULES,
    QcPoint,
    QcTarget,
    WestgardConfig,
    evaluate,
    same_run,
    z_score,
)

T0 = datetime(2025, 3, 1, 8, 0)
TARGETS = {
    ("an1", "GLU", "L1", "1"): QcTarget(mean=Decimal(100), sd=Decimal(10)),
    ("an1", "GLU", "L1", "2"): QcTarget(mean=Decimal(300), sd=Decimal(20)),
    ("an2", "GLU", "L1", "1"): QcTarget(mean=Decimal(100), sd=Decimal(10)),
}
EPS = Decimal("0.001")


def point(
    z: Decimal | str | int,
    run: int = 0,
    level: str = "1",
    instrument: str = "an1",
    minute: int = 0,
) -> QcPoint:
    """A control of `level` whose z-score is exactly `z`, in run number `run` (one a day)."""
    target = TARGETS[(instrument, "GLU", "L1", level)]
    value = Decimal(target.mean) + Decimal(z) * Decimal(target.sd)
    at = T0 + timedelta(days=run, minutes=minute)
    return QcPoint(instrument, "GLU", level, "L1", value, at, run_id=f"r{run}")


def series(*zs: Decimal | str | int, level: str = "1") -> list[QcPoint]:
    """One control of `level` per run, runs 0..n-1."""
    return [point(z, run=i, level=level) for i, z in enumerate(zs)]


def check(points: list[QcPoint], config: WestgardConfig | None = None) -> tuple[str, ...]:
    *history, new = points
    return evaluate(history, new, TARGETS, config or WestgardConfig()).violations


# 1-2s / 1-3s ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sign", [1, -1])
def test_1_2s_is_a_warning_strictly_beyond_2(sign: int) -> None:
    at_limit = evaluate([], point(2 * sign), TARGETS)
    assert at_limit.violations == () and not at_limit.warning
    beyond = evaluate([], point(sign * (2 + EPS)), TARGETS)
    assert beyond.violations == ("1-2s",)
    assert beyond.warning and not beyond.rejected


@pytest.mark.parametrize("sign", [1, -1])
def test_1_3s_rejects_strictly_beyond_3(sign: int) -> None:
    at_limit = evaluate([], point(3 * sign), TARGETS)
    assert at_limit.violations == ("1-2s",) and not at_limit.rejected
    beyond = evaluate([], point(sign * (3 + EPS)), TARGETS)
    assert beyond.violations == ("1-2s", "1-3s")
    assert beyond.rejected and beyond.warning


def test_z_is_exact_and_reported() -> None:
    assert evaluate([], point("2.5"), TARGETS).z == Decimal("2.5")
    assert z_score(106.0, QcTarget(100.0, 2.0)) == Decimal(3)


def test_float_targets_and_values_are_accepted() -> None:
    targets = {("a", "K", "lot", "1"): QcTarget(4.0, 0.1)}
    new = QcPoint("a", "K", "1", "lot", 4.3, T0)
    assert evaluate([], new, targets).violations == ("1-2s",)  # z = 3 exactly: not 1-3s


def test_target_sd_must_be_positive() -> None:
    with pytest.raises(ValueError):
        QcTarget(100, 0)


def test_missing_target_fails_closed() -> None:
    new = QcPoint("an1", "GLU", "1", "other-lot", Decimal(100), T0)
    result = evaluate([], new, TARGETS)
    assert result.rejected and result.violations == ("no_target",) and result.z is None


# 2-2s ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sign", [1, -1])
def test_2_2s_same_level_across_runs(sign: int) -> None:
    assert "2-2s" not in check(series(sign * 2, sign * (2 + EPS)))
    assert "2-2s" not in check(series(sign * (2 + EPS), sign * 2))
    assert check(series(sign * (2 + EPS), sign * (2 + EPS))) == ("1-2s", "2-2s")


def test_2_2s_needs_the_same_side() -> None:
    assert "2-2s" not in check(series(Decimal("2.5"), Decimal("-2.5")))


def test_2_2s_needs_consecutive_controls() -> None:
    assert "2-2s" not in check(series(Decimal("2.5"), 0, Decimal("2.5")))


def test_2_2s_across_levels_within_a_run() -> None:
    points = [point("2.1", level="1"), point("2.1", level="2", minute=1)]
    assert "2-2s" in check(points)
    assert "2-2s" not in check(points, WestgardConfig(across_levels=False))


def test_2_2s_across_runs_can_be_switched_off() -> None:
    points = series("2.1", "2.1")
    assert "2-2s" not in check(points, WestgardConfig(across_runs=False))


# R-4s ----------------------------------------------------------------------------------------


def test_r_4s_within_a_run_across_levels() -> None:
    low = point(-2 - EPS, level="1")
    assert check([low, point(2 + EPS, level="2", minute=1)]) == ("1-2s", "R-4s")
    assert "R-4s" not in check([low, point(2, level="2", minute=1)])
    assert "R-4s" not in check([point(-2, level="1"), point(3, level="2", minute=1)])


def test_r_4s_mirror() -> None:
    assert "R-4s" in check([point("2.5", level="1"), point("-2.5", level="2", minute=1)])


def test_r_4s_is_never_applied_across_runs() -> None:
    assert "R-4s" not in check(series("2.5", "-2.5"))


def test_r_4s_across_levels_switch() -> None:
    points = [point("2.5", level="1"), point("-2.5", level="2", minute=1)]
    assert "R-4s" not in check(points, WestgardConfig(across_levels=False))
    # Replicates of one level in one run still count.
    replicates = [point("2.5"), point("-2.5", minute=1)]
    assert "R-4s" in check(replicates, WestgardConfig(across_levels=False))


# 4-1s ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sign", [1, -1])
def test_4_1s_boundaries(sign: int) -> None:
    beyond = sign * (1 + EPS)
    assert check(series(beyond, beyond, beyond, beyond)) == ("4-1s",)
    assert "4-1s" not in check(series(sign, beyond, beyond, beyond))
    assert "4-1s" not in check(series(beyond, beyond, beyond))


def test_4_1s_across_levels_and_runs() -> None:
    points = [
        point("1.5", run=0, level="1"),
        point("1.5", run=0, level="2", minute=1),
        point("1.5", run=1, level="1"),
        point("1.5", run=1, level="2", minute=1),
    ]
    assert "4-1s" in check(points)
    assert "4-1s" not in check(points, WestgardConfig(across_levels=False))


# 10x -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sign", [1, -1])
def test_10x_boundaries(sign: int) -> None:
    tiny = sign * EPS
    assert check(series(*[tiny] * 10)) == ("10x",)
    assert "10x" not in check(series(*[tiny] * 9))
    assert "10x" not in check(series(0, *[tiny] * 9))  # exactly on the mean breaks the run
    assert "10x" not in check(series(-tiny, *[tiny] * 9))


def test_10x_across_levels_interleaved() -> None:
    points = [
        point("0.5", run=run, level=level, minute=i)
        for run in range(5)
        for i, level in enumerate(("1", "2"))
    ]
    assert check(points) == ("10x",)
    assert check(points, WestgardConfig(across_levels=False)) == ()


# Configuration, runs, history hygiene --------------------------------------------------------


def test_rules_can_be_disabled() -> None:
    only_13 = WestgardConfig(enabled=frozenset({"1-3s"}))
    result = evaluate([], point(4), TARGETS, only_13)
    assert result.violations == ("1-3s",) and result.rejected and not result.warning
    no_12 = WestgardConfig(enabled=frozenset(set(ALL_RULES) - {"1-2s"}))
    result = evaluate([], point("2.5"), TARGETS, no_12)
    assert result.violations == () and not result.warning


def test_unknown_rule_is_refused() -> None:
    with pytest.raises(ValueError):
        WestgardConfig(enabled=frozenset({"2of3-2s"}))


def test_same_run_by_id_or_by_time_window() -> None:
    a = QcPoint("an1", "GLU", "1", "L1", 1, T0, run_id="x")
    assert same_run(
        a, QcPoint("an1", "GLU", "2", "L1", 1, T0 + timedelta(hours=5), "x"), timedelta()
    )
    assert not same_run(a, QcPoint("an1", "GLU", "2", "L1", 1, T0, "y"), timedelta(hours=1))
    no_id = QcPoint("an1", "GLU", "2", "L1", 1, T0 + timedelta(minutes=10))
    assert same_run(a, no_id, timedelta(minutes=10))
    assert not same_run(a, no_id, timedelta(minutes=9, seconds=59))


def test_later_history_and_other_tests_are_ignored() -> None:
    new = point("2.5", run=1)
    later = point("2.5", run=2)
    other_instrument = point("2.5", run=0, instrument="an2")
    other_test = QcPoint("an1", "NA", "1", "L1", Decimal(1000), T0, "r0")
    assert evaluate([later, other_instrument, other_test, new], new, TARGETS).violations == (
        "1-2s",
    )


# Properties ----------------------------------------------------------------------------------

zs = st.decimals(min_value=-5, max_value=5, places=2)


@st.composite
def histories(draw: st.DrawFn) -> list[QcPoint]:
    out = []
    for i, z in enumerate(draw(st.lists(zs, max_size=14))):
        inst = draw(st.sampled_from(["an1", "an2"]))
        level = "1" if inst == "an2" else draw(st.sampled_from(["1", "2"]))
        out.append(point(z, run=i // 2, level=level, instrument=inst, minute=i % 2))
    return out


@given(histories(), zs, st.booleans(), st.booleans())
def test_deterministic_and_order_independent(
    history: list[QcPoint], z: Decimal, levels: bool, runs: bool
) -> None:
    config = WestgardConfig(across_levels=levels, across_runs=runs)
    new = point(z, run=8)
    first = evaluate(history, new, TARGETS, config)
    assert evaluate(list(history), new, TARGETS, config) == first
    # Points of distinct times: any order of the history gives the same answer.
    assert evaluate(sorted(history, key=lambda p: p.at, reverse=True), new, TARGETS, config) == (
        first
    )


@given(histories(), zs)
def test_other_instruments_never_matter(history: list[QcPoint], z: Decimal) -> None:
    new = point(z, run=8, instrument="an1")
    own = [p for p in history if p.instrument == "an1"]
    assert evaluate(history, new, TARGETS) == evaluate(own, new, TARGETS)


@given(histories(), zs)
def test_rejected_iff_a_rejection_rule_and_warning_iff_1_2s(
    history: list[QcPoint], z: Decimal
) -> None:
    result = evaluate(history, point(z, run=8), TARGETS)
    assert result.warning == (abs(z) > 2)
    assert result.rejected == bool(set(result.violations) - {"1-2s"})
    if abs(z) > 3:
        assert result.rejected
