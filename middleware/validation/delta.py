"""Delta checks: the current result against the patient's previous one (AUTOVERIFICATION.md §4).

Methods (§4.1), with Δ the change from the previous value p to the current value c:

- `absolute`: Δ = c − p; exceeded when |Δ| > limit (the test's unit).
- `percent`: Δ% = (c − p) / p × 100 (relative to the *previous* value, as §4.1 fixes);
  exceeded when |Δ%| > limit (in %).
- `rcv`: Δ% as above against the two-sided reference change value
  RCV% = √2 · Z · √(CVa² + CVi²), CVs in % (Fraser & Harris; Macy 1997: CRP CVa 5.2 %, CVi
  42.2 % → 117.9 %).
- `rcv_lognormal`: Δ% against asymmetric limits from the ln-transformed form (§4.1):
  σ = √(ln(1 + CVa²) + ln(1 + CVi²)) with CVs as fractions, up = exp(+√2·Z·σ) − 1,
  down = exp(−√2·Z·σ) − 1 (CRP: about +210 % / −68 %).

All limits are strict (§9.2): a change exactly at the limit passes. Arithmetic is `Decimal`.

Look-back (§4.3): the caller passes the most recent prior result (not a repeat of the same
specimen); it is used only if it is not later than the current result and at most `window`
older (inclusive). Units are compared as written, after trimming spaces, and case-sensitively
("mU/L" is not "MU/L"): a different unit gives `unit_mismatch` — never a silent pass, since
no conversion is done here. A percent change from a previous value of 0 cannot be computed and
is reported `delta_exceeded` (fail closed) with `delta` None, unless the current value is 0 too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

from middleware.validation.westgard import to_decimal

__all__ = ["DeltaMethod", "DeltaOutcome", "DeltaRule", "Previous", "check", "limits"]

DeltaMethod = Literal["absolute", "percent", "rcv", "rcv_lognormal"]
Number = Decimal | float | int

DELTA_EXCEEDED = "delta_exceeded"
UNIT_MISMATCH = "unit_mismatch"

_HUNDRED = Decimal(100)
_ONE = Decimal(1)


@dataclass(frozen=True, slots=True)
class DeltaRule:
    """One test's delta check. `limit` is for `absolute` (test unit) and `percent` (%);
    `cva` and `cvi` (in %, e.g. 5.2) and `z` are for the two RCV methods."""

    method: DeltaMethod
    window: timedelta
    limit: Number | None = None
    z: Number = Decimal("1.96")
    cva: Number | None = None
    cvi: Number | None = None

    def __post_init__(self) -> None:
        if self.method not in ("absolute", "percent", "rcv", "rcv_lognormal"):
            raise ValueError(f"unknown delta method {self.method!r}")
        if self.window < timedelta(0):
            raise ValueError("delta window must not be negative")
        if self.method in ("absolute", "percent"):
            if self.limit is None or to_decimal(self.limit) < 0:
                raise ValueError(f"{self.method} delta needs a limit >= 0")
        else:
            if self.cva is None or self.cvi is None:
                raise ValueError(f"{self.method} delta needs cva and cvi")
            if to_decimal(self.cva) < 0 or to_decimal(self.cvi) < 0 or to_decimal(self.z) <= 0:
                raise ValueError("cva and cvi must be >= 0 and z > 0")


@dataclass(frozen=True, slots=True)
class Previous:
    """The patient's previous result for the test: value, unit as written, measurement time."""

    value: Number
    unit: str
    at: datetime


@dataclass(frozen=True, slots=True)
class DeltaOutcome:
    """What the check found. `reasons` ⊂ {"delta_exceeded", "unit_mismatch"}; `delta` is
    c − p for `absolute`, the % change otherwise; `limit` / `lower_limit` are the upper and
    lower bounds Δ was compared with (lower = −limit except for `rcv_lognormal`). All None
    when no previous result was usable."""

    reasons: tuple[str, ...] = ()
    previous_value: Decimal | None = None
    delta: Decimal | None = None
    limit: Decimal | None = None
    lower_limit: Decimal | None = None


def limits(rule: DeltaRule) -> tuple[Decimal, Decimal]:
    """(lower, upper) bounds for Δ under `rule`; Δ passes when lower <= Δ <= upper."""
    if rule.method in ("absolute", "percent"):
        assert rule.limit is not None  # checked in DeltaRule
        limit = to_decimal(rule.limit)
        return -limit, limit
    assert rule.cva is not None and rule.cvi is not None  # checked in DeltaRule
    # The RCV limits cost square roots, logarithms and exponentials: computed once per set of
    # parameters. The key keeps each parameter's type and text, so the cached bounds are the
    # very Decimals a fresh computation would give (Decimal("1.0") and 1 do not share them).
    key = (rule.method, *((type(v), str(v)) for v in (rule.cva, rule.cvi, rule.z)))
    bounds = _RCV_LIMITS.get(key)
    if bounds is None:
        if len(_RCV_LIMITS) >= _RCV_CACHE_SIZE:
            _RCV_LIMITS.clear()
        bounds = _RCV_LIMITS[key] = _rcv_limits(rule.method, rule.cva, rule.cvi, rule.z)
    return bounds


_RCV_CACHE_SIZE = 1024
_RCV_LIMITS: dict[tuple[object, ...], tuple[Decimal, Decimal]] = {}


def _rcv_limits(method: str, cva_: Number, cvi_: Number, z_: Number) -> tuple[Decimal, Decimal]:
    cva, cvi, z = to_decimal(cva_), to_decimal(cvi_), to_decimal(z_)
    k = Decimal(2).sqrt() * z
    if method == "rcv":
        rcv = k * (cva * cva + cvi * cvi).sqrt()
        return -rcv, rcv
    a, i = cva / _HUNDRED, cvi / _HUNDRED
    sigma = ((_ONE + a * a).ln() + (_ONE + i * i).ln()).sqrt()
    up = ((k * sigma).exp() - _ONE) * _HUNDRED
    down = ((-k * sigma).exp() - _ONE) * _HUNDRED
    return down, up


def check(
    current: Number, unit: str, at: datetime, previous: Previous | None, rule: DeltaRule
) -> DeltaOutcome:
    """The delta check of the current result (value `current` in `unit`, measured `at`)."""
    if previous is None or previous.at > at or at - previous.at > rule.window:
        return DeltaOutcome()
    prev = to_decimal(previous.value)
    if previous.unit.strip() != unit.strip():
        return DeltaOutcome(reasons=(UNIT_MISMATCH,), previous_value=prev)
    lower, upper = limits(rule)
    cur = to_decimal(current)
    delta: Decimal | None
    if rule.method == "absolute":
        delta = cur - prev
    elif prev == 0:
        delta = Decimal(0) if cur == 0 else None
    else:
        delta = (cur - prev) * _HUNDRED / prev
    exceeded = delta is None or delta > upper or delta < lower
    return DeltaOutcome(
        reasons=(DELTA_EXCEEDED,) if exceeded else (),
        previous_value=prev,
        delta=delta,
        limit=upper,
        lower_limit=lower,
    )
