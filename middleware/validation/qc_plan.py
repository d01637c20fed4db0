"""The lab's QC plan: Westgard settings, QC intervals and control targets, from a YAML file.

The plan lives apart from the biologists' rule set because it changes on another rhythm: a new
control lot (with its assigned mean and SD) arrives every few weeks, while the rules change after
a validation. A bad file is refused the same way as a rule set or the daemon's configuration:
every problem in one `ConfigError`, each with file, line and field.

```yaml
westgard:
  rules: [1-2s, 1-3s, 2-2s, R-4s, 4-1s, 10x]   # the rules applied; default all six
  across_levels: true                         # sequences also run across control levels
  across_runs: true                           # ... and across runs (westgard.py docstring)
  run_window_minutes: 10                      # controls without a run id this close = one run
overdue_hours: 24                             # default QC interval; absent = no overdue check
overdue_results: 100                          # default: at most 100 patient results per QC
new_lot_qc: false                             # default: no QC asked of each new reagent lot
intervals:                                    # per instrument and test, overriding the defaults
  - {instrument: cobas1, test: GLU, hours: 8}
  - {instrument: glu-ward-3, test: GLU, results: 50, new_lot_qc: true}
targets:                                      # one per instrument, test, lot and level
  - {instrument: cobas1, test: GLU, lot: "L123", level: "1", mean: 5.5, sd: 0.2}
```

QC is due by time (`hours`) or by count (`results`), whichever comes first: CLSI C24 sets QC
frequency by time or by number of patient samples, and POC meters lock out on either (the
Accu-Chek Inform II "strip count", default 50 tests per passing QC; HemoCue's QC reminder by
time or test count: AUTOVERIFICATION.md §5). `results` counts the patient results of that
instrument and test stored since the last accepted QC run, whatever their decision.

`new_lot_qc` asks for an accepted QC run on each new *reagent* lot (test strips, cartridge, gel
card: `Result.reagent_lot`, as the driver reads it) before patient results on it are released
(cobas h 232 "new-lot lockout", CoaguChek XS Plus "QC on every new strip lot", §5). It is not
the control material's lot (`lot` of the targets, `Result.qc_lot`). Switch it on only for
instruments whose QC results carry the reagent lot too (POCT1-A RGT; the Ortho VISION card
lot): otherwise no lot ever has QC and every patient result with a lot is held.

A lot must be written as text (in quotes when it looks like a number): YAML reads `007` as the
number 7, and a lot that silently lost its zeros would match no control. A level may be written
as a bare number (`level: 1` is "1").
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from middleware.config.loader import read_text_file, validate_yaml
from middleware.validation.westgard import QcTarget, TargetKey, WestgardConfig

__all__ = [
    "IntervalOverride",
    "QcPlan",
    "TargetEntry",
    "WestgardSettings",
    "load_qc_plan",
    "load_qc_plan_text",
]

WestgardRule = Literal["1-2s", "1-3s", "2-2s", "R-4s", "4-1s", "10x"]


def _level_text(value: Any) -> Any:
    # `level: 1` is common and harmless (levels are small integers); bool is an int in Python
    # but `level: yes` is certainly a mistake, so it is left for pydantic to refuse.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _lot_text(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(f'write the lot in quotes ("{value}"): as a number it may lose digits')
    return value


Name = Annotated[str, Field(min_length=1)]
Level = Annotated[str, BeforeValidator(_level_text), Field(min_length=1)]
Lot = Annotated[str, BeforeValidator(_lot_text), Field(min_length=1)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WestgardSettings(_Model):
    """Which Westgard rules apply and over which sequences (see `westgard.py`)."""

    rules: tuple[WestgardRule, ...] = ("1-2s", "1-3s", "2-2s", "R-4s", "4-1s", "10x")  # ALL_RULES
    across_levels: bool = True
    across_runs: bool = True
    run_window_minutes: Decimal = Field(default=Decimal(10), ge=0)

    @field_validator("rules")
    @classmethod
    def _no_repeats(cls, rules: tuple[str, ...]) -> tuple[str, ...]:
        repeated = sorted({r for r in rules if rules.count(r) > 1})
        if repeated:
            raise ValueError(f"rules listed twice: {', '.join(repeated)}")
        return rules


class IntervalOverride(_Model):
    """QC frequency for one instrument and test: the longest time allowed between accepted QC
    runs (`hours`), the most patient results between them (`results`), whether a new reagent
    lot needs its own QC (`new_lot_qc`). What is left out follows the plan's defaults."""

    instrument: Name
    test: Name
    hours: Decimal | None = Field(default=None, gt=0)
    results: int | None = Field(default=None, ge=1)
    new_lot_qc: bool | None = None

    @model_validator(mode="after")
    def _says_something(self) -> Self:
        if self.hours is None and self.results is None and self.new_lot_qc is None:
            raise ValueError("give hours, results or new_lot_qc")
        return self


class TargetEntry(_Model):
    """The assigned mean and SD of one control lot and level on one instrument and test."""

    instrument: Name
    test: Name
    lot: Lot
    level: Level
    mean: Decimal
    sd: Decimal = Field(gt=0)

    @property
    def key(self) -> TargetKey:
        return (self.instrument, self.test, self.lot, self.level)


def _hours(value: Decimal) -> timedelta:
    return timedelta(hours=float(value))


class QcPlan(_Model):
    """The lab's QC configuration. Build it with `load_qc_plan` (file, line and field on error)
    or `QcPlan.model_validate(data)`."""

    westgard: WestgardSettings = WestgardSettings()
    overdue_hours: Decimal | None = Field(default=None, gt=0)
    overdue_results: int | None = Field(default=None, ge=1)
    new_lot_qc: bool = False
    intervals: tuple[IntervalOverride, ...] = ()
    targets: tuple[TargetEntry, ...] = ()

    @field_validator("intervals")
    @classmethod
    def _one_interval_per_test(
        cls, intervals: tuple[IntervalOverride, ...]
    ) -> tuple[IntervalOverride, ...]:
        seen: dict[tuple[str, str], int] = {}
        for index, entry in enumerate(intervals):
            key = (entry.instrument, entry.test)
            if key in seen:
                raise ValueError(
                    f"intervals[{index}] ({entry.instrument}, {entry.test}) repeats "
                    f"intervals[{seen[key]}]"
                )
            seen[key] = index
        return intervals

    @field_validator("targets")
    @classmethod
    def _one_target_per_key(cls, targets: tuple[TargetEntry, ...]) -> tuple[TargetEntry, ...]:
        seen: dict[TargetKey, int] = {}
        for index, entry in enumerate(targets):
            if entry.key in seen:
                raise ValueError(
                    f"targets[{index}] ({entry.instrument}, {entry.test}, lot {entry.lot}, "
                    f"level {entry.level}) repeats targets[{seen[entry.key]}]"
                )
            seen[entry.key] = index
        return targets

    def targets_map(self) -> Mapping[TargetKey, QcTarget]:
        """(instrument, test, lot, level) -> target, as `westgard.evaluate` takes them."""
        return MappingProxyType(
            {entry.key: QcTarget(mean=entry.mean, sd=entry.sd) for entry in self.targets}
        )

    def westgard_config(self) -> WestgardConfig:
        settings = self.westgard
        return WestgardConfig(
            enabled=frozenset(settings.rules),
            across_levels=settings.across_levels,
            across_runs=settings.across_runs,
            run_window=timedelta(minutes=float(settings.run_window_minutes)),
        )

    def default_interval(self) -> timedelta | None:
        """The QC interval of tests without an override (None: no overdue check)."""
        return None if self.overdue_hours is None else _hours(self.overdue_hours)

    def intervals_map(self) -> Mapping[tuple[str, str], timedelta]:
        """(instrument, test) -> interval, for the overrides only (as `QcGate.overdue_after`)."""
        return MappingProxyType(
            {
                (entry.instrument, entry.test): _hours(entry.hours)
                for entry in self.intervals
                if entry.hours is not None
            }
        )

    def interval_for(self, instrument: str, test: str) -> timedelta | None:
        """The longest time allowed since the last accepted run of this instrument and test
        (its override, else `overdue_hours`); None: it is never overdue."""
        return self.intervals_map().get((instrument, test), self.default_interval())

    def run_limits_map(self) -> Mapping[tuple[str, str], int]:
        """(instrument, test) -> most patient results between accepted runs, overrides only."""
        return MappingProxyType(
            {
                (entry.instrument, entry.test): entry.results
                for entry in self.intervals
                if entry.results is not None
            }
        )

    def run_limit_for(self, instrument: str, test: str) -> int | None:
        """The most patient results allowed since the last accepted run of this instrument and
        test (its override, else `overdue_results`); None: no count is kept."""
        return self.run_limits_map().get((instrument, test), self.overdue_results)

    def new_lot_map(self) -> Mapping[tuple[str, str], bool]:
        """(instrument, test) -> whether a new reagent lot needs QC, overrides only."""
        return MappingProxyType(
            {
                (entry.instrument, entry.test): entry.new_lot_qc
                for entry in self.intervals
                if entry.new_lot_qc is not None
            }
        )

    def new_lot_qc_for(self, instrument: str, test: str) -> bool:
        """Whether patient results of this instrument and test on a reagent lot without an
        accepted QC run are held (`qc_new_lot`)."""
        return self.new_lot_map().get((instrument, test), self.new_lot_qc)


def load_qc_plan_text(text: str, source: str = "<qc plan>") -> QcPlan:
    """Validate QC-plan text; raise ConfigError with every problem found (file, line, field)."""
    return validate_yaml(text, source, QcPlan)[0]


def load_qc_plan(path: str | Path) -> QcPlan:
    """Read and validate a QC-plan file."""
    return load_qc_plan_text(read_text_file(path), str(path))
