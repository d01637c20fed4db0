"""Westgard multirules on internal QC results (AUTOVERIFICATION.md §3).

Pure: the history, the new control point, the targets and the configuration are passed in; the
answer depends on nothing else (no clock, no I/O).

z = (value − target mean) / target SD, computed in `Decimal` so that rule boundaries are exact.
Every limit is strict, as in §3 and §9.2: "beyond 2s" means |z| > 2, so a control at exactly
+2.000 SD violates nothing.

| rule | kind | violated when (always including the new point)                                  |
|------|------|---------------------------------------------------------------------------------|
| 1-2s | warn | the new control has |z| > 2                                                     |
| 1-3s | rej. | the new control has |z| > 3                                                     |
| 2-2s | rej. | the new control and the one before it in a sequence are both > +2 or both < −2  |
| R-4s | rej. | in the new control's run, it is > +2 and another is < −2 (or the mirror)        |
| 4-1s | rej. | the last four controls of a sequence are all > +1 or all < −1                   |
| 10x  | rej. | the last ten controls of a sequence are all > 0 or all < 0 (z = 0 breaks it)    |

1-2s is a warning only, never a gate for the other rules: every rejection rule is evaluated on
every point, as Westgard recommends for automated analysers (§3).

**Runs.** Two control points belong to the same run when both carry the same non-empty `run_id`;
when either has none, when their times differ by at most `WestgardConfig.run_window` (inclusive).

**Sequences.** A rule that counts consecutive controls (2-2s, 4-1s, 10x) is checked on each of
these sequences of points of the same instrument and test, ordered by time, ending with the new
point:

- the new point's level — across runs when `across_runs`, else within its run only;
- all levels together (interleaved by time) — only when `across_levels`; across runs when
  `across_runs`, else within the new point's run only.

R-4s is applied within one run only (Westgard, "Power function graphs of multirules", §3):
across levels of that run when `across_levels`, otherwise only among replicates of the new
point's level in the run. History points later than the new point are ignored, as are history
points whose lot and level have no target (their z cannot be known).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

__all__ = [
    "ALL_RULES",
    "REJECTION_RULES",
    "WARNING_RULES",
    "QcEvaluation",
    "QcPoint",
    "QcTarget",
    "TargetKey",
    "WestgardConfig",
    "evaluate",
    "same_run",
    "to_decimal",
    "z_score",
]

WARNING_RULES: tuple[str, ...] = ("1-2s",)
REJECTION_RULES: tuple[str, ...] = ("1-3s", "2-2s", "R-4s", "4-1s", "10x")
ALL_RULES: tuple[str, ...] = WARNING_RULES + REJECTION_RULES

# Reason given when the new control has no target for its lot and level: fail closed (reject).
NO_TARGET = "no_target"

TargetKey = tuple[str, str, str, str]
"""(instrument, test, lot, level) — the key of a target in the `targets` mapping."""

_TWO = Decimal(2)
_THREE = Decimal(3)
_ONE = Decimal(1)
_ZERO = Decimal(0)


def to_decimal(value: Decimal | float | int) -> Decimal:
    """`value` as a Decimal; a float goes through its shortest repr (0.1 -> Decimal("0.1"))."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(value)


@dataclass(frozen=True, slots=True)
class QcTarget:
    """The assigned mean and SD of one control lot and level for one instrument and test."""

    mean: Decimal | float
    sd: Decimal | float

    def __post_init__(self) -> None:
        if not to_decimal(self.sd) > 0:
            raise ValueError(f"QC target SD must be > 0, got {self.sd!r}")


@dataclass(frozen=True, slots=True)
class QcPoint:
    """One control measurement. `run_id` "" = unknown: runs are then grouped by time.

    `lot` is the control material's lot (its targets are per lot); `reagent_lot` the lot of the
    reagent the control was measured with (test strips, cartridge), "" when the analyser does
    not say. The rules here never read `reagent_lot`: the QC monitor does, to know which
    reagent lots have had an accepted QC run (`QcPlan.new_lot_qc`)."""

    instrument: str
    test: str
    level: str
    lot: str
    value: Decimal | float
    at: datetime
    run_id: str = ""
    reagent_lot: str = ""


@dataclass(frozen=True, slots=True)
class WestgardConfig:
    """Which rules apply and over which sequences (see the module docstring)."""

    enabled: frozenset[str] = frozenset(ALL_RULES)
    across_levels: bool = True
    across_runs: bool = True
    run_window: timedelta = timedelta(minutes=10)

    def __post_init__(self) -> None:
        unknown = self.enabled - set(ALL_RULES)
        if unknown:
            raise ValueError(f"unknown Westgard rules: {sorted(unknown)}")
        if self.run_window < timedelta(0):
            raise ValueError("run_window must not be negative")


@dataclass(frozen=True, slots=True)
class QcEvaluation:
    """The rules a new control point violates. `violations` follow `ALL_RULES` order;
    `z` is None only when the point has no target (violation "no_target", rejected)."""

    z: Decimal | None
    violations: tuple[str, ...]
    warning: bool
    rejected: bool


def z_score(value: Decimal | float, target: QcTarget) -> Decimal:
    """(value − mean) / SD."""
    return (to_decimal(value) - to_decimal(target.mean)) / to_decimal(target.sd)


def same_run(a: QcPoint, b: QcPoint, run_window: timedelta) -> bool:
    """Whether two control points belong to one run (module docstring, "Runs")."""
    if a.run_id and b.run_id:
        return a.run_id == b.run_id
    return abs(a.at - b.at) <= run_window


def _all_beyond(zs: Sequence[Decimal], count: int, limit: Decimal) -> bool:
    """The last `count` z-scores are all > +limit or all < −limit."""
    if len(zs) < count:
        return False
    tail = zs[-count:]
    return all(z > limit for z in tail) or all(z < -limit for z in tail)


def evaluate(
    history: Iterable[QcPoint],
    new_point: QcPoint,
    targets: Mapping[TargetKey, QcTarget],
    config: WestgardConfig = WestgardConfig(),  # frozen: safe to share
) -> QcEvaluation:
    """Evaluate `new_point` against the Westgard rules of `config` (AUTOVERIFICATION.md §3).

    `history` may hold points of any instrument and test, in any order; only those of the new
    point's instrument and test, not later than it and with a known target, are used. The new
    point itself is skipped if it appears in `history`.
    """
    target = targets.get((new_point.instrument, new_point.test, new_point.lot, new_point.level))
    if target is None:
        return QcEvaluation(z=None, violations=(NO_TARGET,), warning=False, rejected=True)
    z_new = z_score(new_point.value, target)

    prior: list[tuple[QcPoint, Decimal]] = []
    for point in history:
        if point == new_point:
            continue
        if (point.instrument, point.test) != (new_point.instrument, new_point.test):
            continue
        if point.at > new_point.at:
            continue
        t = targets.get((point.instrument, point.test, point.lot, point.level))
        if t is None:
            continue
        prior.append((point, z_score(point.value, t)))
    # Stable sort by time only: ties keep the caller's order, and the new point comes last.
    prior.sort(key=lambda pz: pz[0].at)

    def in_run(point: QcPoint) -> bool:
        return same_run(point, new_point, config.run_window)

    level_seq = [
        z for p, z in prior if p.level == new_point.level and (config.across_runs or in_run(p))
    ] + [z_new]
    sequences = [level_seq]
    if config.across_levels:
        sequences.append([z for p, z in prior if config.across_runs or in_run(p)] + [z_new])
    run_others = [
        z for p, z in prior if in_run(p) and (config.across_levels or p.level == new_point.level)
    ]

    found: set[str] = set()
    if abs(z_new) > _TWO:
        found.add("1-2s")
    if abs(z_new) > _THREE:
        found.add("1-3s")
    if any(_all_beyond(seq, 2, _TWO) for seq in sequences):
        found.add("2-2s")
    if (z_new > _TWO and any(z < -_TWO for z in run_others)) or (
        z_new < -_TWO and any(z > _TWO for z in run_others)
    ):
        found.add("R-4s")
    if any(_all_beyond(seq, 4, _ONE) for seq in sequences):
        found.add("4-1s")
    if any(_all_beyond(seq, 10, _ZERO) for seq in sequences):
        found.add("10x")

    violations = tuple(rule for rule in ALL_RULES if rule in found and rule in config.enabled)
    return QcEvaluation(
        z=z_new,
        violations=violations,
        warning=any(rule in WARNING_RULES for rule in violations),
        rejected=any(rule in REJECTION_RULES for rule in violations),
    )
