"""Running a rule set's embedded test cases: each case is one result in its specimen and
patient, with history, and the decision and reasons the biologist expects. A rule set whose
cases do not all pass must not be activated (GBUI XI: expected vs obtained is recorded)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

from drivers.models import Result
from middleware.pipeline import Pipeline
from middleware.validation.delta import Previous
from middleware.validation.ruleset import RuleSet, TestCase
from middleware.validation.stages import SpecimenContext

__all__ = ["CaseOutcome", "run_case", "run_cases"]

#: Cases have no clock: "now" is fixed so that history `hours_ago` is reproducible.
_NOW = datetime(2000, 1, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class CaseOutcome:
    """What a case expected and what the rule set decided."""

    name: str
    expected: tuple[str, tuple[str, ...]]
    obtained: tuple[str, tuple[str, ...]]

    @property
    def passed(self) -> bool:
        return self.expected == self.obtained


def _number(text: str) -> tuple[Decimal | None, str | None]:
    stripped = text.strip()
    comparator = stripped[0] if stripped[:1] in ("<", ">") else None
    try:
        return Decimal(stripped.lstrip("<> ")), comparator
    except InvalidOperation:
        return None, None


def run_case(ruleset: RuleSet, case: TestCase) -> CaseOutcome:
    """Decide the case's result exactly as the daemon would."""
    numeric, comparator = _number(case.result.value)
    result = Result(
        specimen_id="CASE",
        test_code=case.result.test_code,
        value=case.result.value,
        numeric=numeric,
        comparator=case.result.comparator or comparator,
        units=case.result.unit,
        flags=case.result.flags,
        measured_at=_NOW,
    )
    others = tuple(
        Result(
            "CASE",
            code,
            value,
            numeric=_number(value)[0],
            units=ruleset.tests[code].unit if code in ruleset.tests else "",
        )
        for code, value in case.specimen.items()
    )
    context = SpecimenContext(
        others=others,
        indices={str(k): v for k, v in case.indices.items()},
        age=case.age,
        sex=case.sex,
        origin=case.origin,
        ward=case.ward,
        prescriber=case.prescriber,
        diagnoses=case.diagnoses,
    )
    previous = None
    if case.history:
        latest = min(case.history, key=lambda h: h.hours_ago)
        value = _number(latest.value)[0]
        if value is not None:
            at = _NOW - timedelta(hours=float(latest.hours_ago))
            previous = Previous(value, latest.unit, at)
    decision, reasons = Pipeline(ruleset).decide_result(result, context, previous)
    return CaseOutcome(case.name, (case.expect.decision, case.expect.reasons), (decision, reasons))


def run_cases(ruleset: RuleSet) -> list[CaseOutcome]:
    """Every embedded case, in file order."""
    return [run_case(ruleset, case) for case in ruleset.cases]
