"""A biologist's rule set: per-test limits and named rules, loaded from YAML and validated.

A bad file is refused with file, line and field, the same way as the daemon's configuration
(`middleware.config.loader`): every problem is listed in one `ConfigError`.

Boundaries (AUTOVERIFICATION.md §9.2), applied by `middleware.validation.stages`:

- `reportable_range` and `autoverify_range` are closed intervals: a value equal to `low` or
  `high` is inside. Either bound may be omitted (open on that side).
- `critical`: a value equal to a critical limit is critical (`value <= low` or `value >= high`).
- `specimen_indices`: a hold-above threshold: an index strictly greater than it holds the result.
- `delta`: exceeded when the change is strictly greater than the limit (another stage).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from middleware.config.loader import read_text_file, validate_yaml
from middleware.validation.expressions import CompiledRule, compile_rule

__all__ = [
    "DEFAULT_ALLOWED_FLAGS",
    "REASONS",
    "Delta",
    "Interval",
    "NamedRule",
    "RuleSet",
    "SpecimenIndices",
    "TestCase",
    "TestRules",
    "load_ruleset",
    "load_ruleset_text",
]

#: Flags that are not instrument errors: the normalised abnormal/normal flags (drivers/models.py).
DEFAULT_ALLOWED_FLAGS = ("N", "L", "H", "LL", "HH", "A")

#: The reason vocabulary of DESIGN.md ("Decisions and reasons"); `rule:<name>` is added per rule.
REASONS = frozenset(
    {
        "instrument_flag", "qc_failed", "qc_overdue", "qc_new_lot", "critical_value",
        "outside_autoverify_range", "outside_reportable_range", "delta_exceeded",
        "non_numeric", "specimen_index", "unit_mismatch", "no_rule",
        "autovalidation_disabled", "biologist_disabled", "device_blocked",
    }
)  # fmt: skip


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Interval(_Model):
    """Closed interval [low, high]; a missing bound is open on that side."""

    low: Decimal | None = None
    high: Decimal | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.low is None and self.high is None:
            raise ValueError("give low, high or both")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        return self

    def contains(self, value: Decimal) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


class Delta(_Model):
    """Delta-check parameters (AUTOVERIFICATION.md §4); applied by the delta stage."""

    method: Literal["absolute", "percent", "rcv", "rcv_lognormal"]
    limit: Decimal | None = Field(default=None, gt=0)
    window_hours: Decimal = Field(gt=0)
    z: Decimal = Field(default=Decimal("1.96"), gt=0)
    cva: Decimal | None = Field(default=None, ge=0)  # percent
    cvi: Decimal | None = Field(default=None, ge=0)  # percent

    @model_validator(mode="after")
    def _parameters(self) -> Self:
        if self.method in ("absolute", "percent") and self.limit is None:
            raise ValueError(f"method {self.method} needs a limit")
        if self.method.startswith("rcv") and (self.cva is None or self.cvi is None):
            raise ValueError(f"method {self.method} needs cva and cvi (percent)")
        return self


class SpecimenIndices(_Model):
    """Hold-above thresholds for hemolysis, icterus, lipemia indices (in the analyser's units)."""

    h: Decimal | None = Field(default=None, ge=0)
    i: Decimal | None = Field(default=None, ge=0)
    l: Decimal | None = Field(default=None, ge=0)  # noqa: E741 - the index is called L


def _compiled(text: str) -> str:
    compile_rule(text)  # RuleSyntaxError is a ValueError: pydantic reports it with its field
    return text


class NamedRule(_Model):
    """A biologist's rule: when `when` holds, the result is held with reason `rule:<name>`."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    when: Annotated[str, AfterValidator(_compiled)]
    description: str = ""

    @property
    def reason(self) -> str:
        return f"rule:{self.name}"

    @property
    def compiled(self) -> CompiledRule:
        return _compiled_cache(self.when)


_CACHE: dict[str, CompiledRule] = {}


def _compiled_cache(text: str) -> CompiledRule:
    rule = _CACHE.get(text)
    if rule is None:
        rule = _CACHE[text] = compile_rule(text)
    return rule


class TestRules(_Model):
    """Everything configured for one test code."""

    __test__ = False  # not a pytest class

    unit: str
    reference_interval: Interval | None = None
    autoverify_range: Interval | None = None
    critical: Interval | None = None
    reportable_range: Interval | None = None
    delta: Delta | None = None
    specimen_indices: SpecimenIndices | None = None
    rules: tuple[NamedRule, ...] = ()

    @field_validator("rules")
    @classmethod
    def _unique(cls, rules: tuple[NamedRule, ...]) -> tuple[NamedRule, ...]:
        names = [r.name for r in rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique: {', '.join(duplicates)}")
        return rules


class CaseResult(_Model):
    test_code: str
    value: str
    unit: str = ""
    flags: tuple[str, ...] = ()
    comparator: str = ""


class CaseHistory(_Model):
    value: str
    unit: str = ""
    hours_ago: Decimal = Field(gt=0)


class CaseExpect(_Model):
    decision: Literal["autovalidated", "held"]
    reasons: tuple[str, ...] = ()

    @field_validator("reasons")
    @classmethod
    def _known(cls, reasons: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [r for r in reasons if r not in REASONS and not r.startswith("rule:")]
        if unknown:
            raise ValueError(f"unknown reasons: {', '.join(unknown)}")
        return reasons

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.decision == "autovalidated") != (not self.reasons):
            raise ValueError("autovalidated exactly when there are no reasons")
        return self


class TestCase(_Model):
    """An embedded test case: one result in its specimen and patient, and the expected outcome."""

    __test__ = False

    name: str
    result: CaseResult
    specimen: dict[str, str] = Field(default_factory=dict)  # other results: test code -> value
    history: tuple[CaseHistory, ...] = ()
    indices: dict[Literal["h", "i", "l"], Decimal] = Field(default_factory=dict)
    age: Decimal | None = None
    sex: str = ""
    origin: Literal["lab", "poc"] = "lab"
    ward: str = ""
    prescriber: str = ""
    diagnoses: tuple[str, ...] = ()
    expect: CaseExpect


class RuleSet(_Model):
    """A versioned rule set under one responsible biologist."""

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    responsible_biologist: str = Field(min_length=1)
    enabled: bool
    allowed_flags: tuple[str, ...] = DEFAULT_ALLOWED_FLAGS
    tests: dict[str, TestRules]
    cases: tuple[TestCase, ...] = ()

    def rules_for(self, test_code: str) -> TestRules | None:
        return self.tests.get(test_code)

    @model_validator(mode="after")
    def _rule_references(self) -> Self:
        rule_names = {r.reason for t in self.tests.values() for r in t.rules}
        for case in self.cases:
            for reason in case.expect.reasons:
                if reason.startswith("rule:") and reason not in rule_names:
                    raise ValueError(f"case {case.name!r} expects unknown {reason}")
        return self


def load_ruleset_text(text: str, file: str = "<rules>") -> RuleSet:
    """Validate rule-set text; raise ConfigError with every problem found (file, line, field)."""
    return validate_yaml(text, file, RuleSet)[0]


def load_ruleset(path: str | Path) -> RuleSet:
    """Read and validate a rule-set file (the only I/O of the validation package)."""
    return load_ruleset_text(read_text_file(path), str(path))
