"""Delta checks (AUTOVERIFICATION.md §4): methods, published-CV RCVs (§4.2), window and units."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.validation.delta import DeltaRule, Previous, check, limits

T0 = datetime(2025, 3, 1, 8, 0)
DAY = timedelta(days=1)
EPS = Decimal("0.0001")


def prev(value: Decimal | float | int, unit: str = "mg/L", ago: timedelta = DAY) -> Previous:
    return Previous(value, unit, T0 - ago)


# absolute / percent --------------------------------------------------------------------------

ABS = DeltaRule("absolute", limit=Decimal("0.5"), window=3 * DAY)
PCT = DeltaRule("percent", limit=Decimal(20), window=3 * DAY)


@pytest.mark.parametrize("sign", [1, -1])
def test_absolute_boundary_is_strict(sign: int) -> None:
    at_limit = check(Decimal(4) + sign * Decimal("0.5"), "mg/L", T0, prev(4), ABS)
    assert at_limit.reasons == () and at_limit.delta == sign * Decimal("0.5")
    assert at_limit.limit == Decimal("0.5") and at_limit.lower_limit == Decimal("-0.5")
    past = check(Decimal(4) + sign * (Decimal("0.5") + EPS), "mg/L", T0, prev(4), ABS)
    assert past.reasons == ("delta_exceeded",) and past.previous_value == 4


@pytest.mark.parametrize("sign", [1, -1])
def test_percent_is_relative_to_the_previous_value(sign: int) -> None:
    assert check(100 + sign * 20, "mg/L", T0, prev(100), PCT).reasons == ()
    out = check(Decimal(100) + sign * (20 + EPS), "mg/L", T0, prev(100), PCT)
    assert out.reasons == ("delta_exceeded",)
    # 50 -> 60 is +20 % of the previous value (it would be 16.7 % of the current one).
    assert check(60, "mg/L", T0, prev(50), PCT).delta == Decimal(20)


def test_percent_from_zero_fails_closed() -> None:
    out = check(1, "mg/L", T0, prev(0), PCT)
    assert out.reasons == ("delta_exceeded",) and out.delta is None
    assert check(0, "mg/L", T0, prev(0), PCT).reasons == ()


def test_float_inputs() -> None:
    assert check(4.5, "mg/L", T0, prev(4.0), DeltaRule("absolute", timedelta(1), 0.5)).reasons == ()


# RCV with the published CVs of §4.2 ----------------------------------------------------------


def rcv(cva: str, cvi: str, method: str = "rcv") -> DeltaRule:
    return DeltaRule(method, window=3 * DAY, cva=Decimal(cva), cvi=Decimal(cvi))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cva", "cvi", "expected"),
    [
        ("5.2", "42.2", "117.9"),  # CRP, Macy 1997 (critical difference 118 %)
        ("1.1", "5.0", "14.2"),  # creatinine, Innsbruck meta-analysis CVi, CVa assumed
        ("1.0", "2.8", "8.2"),  # haemoglobin, Fuentes-Arderiu 1992, CVa assumed
    ],
)
def test_symmetric_rcv_matches_the_worked_examples(cva: str, cvi: str, expected: str) -> None:
    lower, upper = limits(rcv(cva, cvi))
    assert upper.quantize(Decimal("0.1")) == Decimal(expected)
    assert lower == -upper


def test_symmetric_rcv_formula_exactly() -> None:
    _, upper = limits(rcv("5.2", "42.2"))
    assert upper == Decimal(2).sqrt() * Decimal("1.96") * Decimal("1807.88").sqrt()


def test_lognormal_rcv_crp_is_asymmetric() -> None:
    lower, upper = limits(rcv("5.2", "42.2", "rcv_lognormal"))
    assert round(upper) == 210 and round(lower) == -68


def test_lognormal_rcv_formula_exactly() -> None:
    lower, upper = limits(rcv("5.2", "42.2", "rcv_lognormal"))
    k = Decimal(2).sqrt() * Decimal("1.96")
    sigma = (Decimal("1.002704").ln() + Decimal("1.178084").ln()).sqrt()
    assert upper == ((k * sigma).exp() - 1) * 100
    assert lower == ((-k * sigma).exp() - 1) * 100


@pytest.mark.parametrize("method", ["rcv", "rcv_lognormal"])
def test_rcv_boundary_is_strict(method: str) -> None:
    rule = rcv("5.2", "42.2", method)
    lower, upper = limits(rule)
    assert check(100 + upper, "mg/L", T0, prev(100), rule).reasons == ()
    assert check(100 + lower, "mg/L", T0, prev(100), rule).reasons == ()
    assert check(100 + upper + EPS, "mg/L", T0, prev(100), rule).reasons == ("delta_exceeded",)
    assert check(100 + lower - EPS, "mg/L", T0, prev(100), rule).reasons == ("delta_exceeded",)


def test_lognormal_accepts_a_rise_the_symmetric_rcv_rejects() -> None:
    # CRP 10 -> 25 mg/L: +150 %, beyond ±117.9 % but within +210 %.
    assert check(25, "mg/L", T0, prev(10), rcv("5.2", "42.2")).reasons == ("delta_exceeded",)
    assert check(25, "mg/L", T0, prev(10), rcv("5.2", "42.2", "rcv_lognormal")).reasons == ()
    # ... and the other way for a fall of 70 %.
    assert check(3, "mg/L", T0, prev(10), rcv("5.2", "42.2")).reasons == ()
    out = check(3, "mg/L", T0, prev(10), rcv("5.2", "42.2", "rcv_lognormal"))
    assert out.reasons == ("delta_exceeded",)


# window and units ----------------------------------------------------------------------------


def test_no_previous_means_no_check() -> None:
    out = check(999, "mg/L", T0, None, ABS)
    assert out.reasons == () and out.previous_value is None and out.delta is None


def test_window_is_inclusive() -> None:
    assert check(99, "mg/L", T0, prev(1, ago=3 * DAY), ABS).reasons == ("delta_exceeded",)
    out = check(99, "mg/L", T0, prev(1, ago=3 * DAY + timedelta(seconds=1)), ABS)
    assert out.reasons == () and out.previous_value is None


def test_a_previous_later_than_the_current_result_is_ignored() -> None:
    assert check(99, "mg/L", T0, prev(1, ago=-timedelta(minutes=1)), ABS).reasons == ()


def test_unit_mismatch_is_never_a_silent_pass() -> None:
    out = check(Decimal("5.5"), "mmol/L", T0, prev(99, unit="mg/dL"), ABS)
    assert out.reasons == ("unit_mismatch",) and out.previous_value == 99 and out.delta is None
    # Even when the numbers would agree.
    assert check(4, "mmol/L", T0, prev(4, unit="mg/dL"), ABS).reasons == ("unit_mismatch",)
    assert check(4, "mU/L", T0, prev(4, unit="MU/L"), ABS).reasons == ("unit_mismatch",)
    assert check(4, " mg/L", T0, prev(4, unit="mg/L "), ABS).reasons == ()


def test_unit_mismatch_outside_the_window_is_no_check() -> None:
    out = check(4, "mmol/L", T0, prev(4, unit="mg/dL", ago=10 * DAY), ABS)
    assert out.reasons == ()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "absolute", "window": DAY},
        {"method": "percent", "window": DAY, "limit": -1},
        {"method": "rcv", "window": DAY, "cva": 1},
        {"method": "rcv_lognormal", "window": DAY, "cvi": 1},
        {"method": "rcv", "window": DAY, "cva": 1, "cvi": 1, "z": 0},
        {"method": "ratio", "window": DAY, "limit": 1},
        {"method": "absolute", "window": -DAY, "limit": 1},
    ],
)
def test_bad_rules_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        DeltaRule(**kwargs)  # type: ignore[arg-type]


# Properties ----------------------------------------------------------------------------------

values = st.decimals(min_value=0, max_value=1000, places=2)
rules = st.sampled_from(
    [ABS, PCT, rcv("5.2", "42.2"), rcv("1.1", "5.0"), rcv("5.2", "42.2", "rcv_lognormal")]
)


@given(values, values, rules)
def test_deterministic_and_consistent_with_limits(
    current: Decimal, previous: Decimal, rule: DeltaRule
) -> None:
    out = check(current, "mg/L", T0, prev(previous), rule)
    assert out == check(current, "mg/L", T0, prev(previous), rule)
    assert set(out.reasons) <= {"delta_exceeded"}
    if out.delta is not None:
        assert out.limit is not None and out.lower_limit is not None
        inside = out.lower_limit <= out.delta <= out.limit
        assert (out.reasons == ()) == inside


@given(values, values, rules)
def test_no_change_never_exceeds(value: Decimal, _: Decimal, rule: DeltaRule) -> None:
    assert check(value, "mg/L", T0, prev(value), rule).reasons == ()
