"""The decision taken on each patient result before it goes to the LIS.

Without a rule set every patient result is `held` with the reason `no_rule` (DESIGN.md
vocabulary): nothing is auto-validated by default. With one (`validation.rules` in the
configuration) each result goes through the pure stages of `middleware.validation` in the order
of AUTOVERIFICATION.md §2 — switch, rule present, flags, indices, numeric, unit, reportable
range, critical limits, auto-validation range, the biologists' named rules — plus the delta
check against the patient's previous result, and every reason found is kept (GBUI V-3).
Not wired yet: the QC gate (Westgard targets per lot have no home in the configuration yet),
device blocking and per-biologist switches.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from drivers.models import Result, SpecimenReport
from middleware.validation import delta as delta_check
from middleware.validation.ruleset import RuleSet
from middleware.validation.stages import SpecimenContext, decide, evaluate

__all__ = ["Decision", "Pipeline", "decide_without_rules"]

Decision = tuple[str, tuple[str, ...]]


def decide_without_rules(result: Result) -> Decision:
    """(decision, reasons) when no rule set is configured; QC results get none."""
    if result.is_qc:
        return ("", ())
    return ("held", ("no_rule",))


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Decides patient results with one rule set (or none)."""

    ruleset: RuleSet | None = None

    @property
    def version(self) -> str:
        """`name version` of the rule set, recorded with every decision it takes."""
        return f"{self.ruleset.name} {self.ruleset.version}" if self.ruleset else ""

    @property
    def biologist(self) -> str:
        return self.ruleset.responsible_biologist if self.ruleset else ""

    def delta_windows(self) -> dict[str, timedelta]:
        """Per test code, how far back a previous result counts (for the store's look-up)."""
        if self.ruleset is None:
            return {}
        return {
            code: timedelta(hours=float(rules.delta.window_hours))
            for code, rules in self.ruleset.tests.items()
            if rules.delta is not None
        }

    def decide_report(
        self, report: SpecimenReport, previous: Mapping[str, delta_check.Previous]
    ) -> list[Decision]:
        """Decisions for every result of one specimen; `previous` maps a test code to the
        patient's previous result for it (from another specimen)."""
        decisions: list[Decision] = []
        for result in report.results:
            others = tuple(r for r in report.results if r is not result)
            code = result.lis_code or result.test_code
            decisions.append(
                self.decide_result(result, SpecimenContext(others=others), previous.get(code))
            )
        return decisions

    def decide_result(
        self, result: Result, context: SpecimenContext, previous: delta_check.Previous | None
    ) -> Decision:
        """One result in its specimen, with the patient's previous result for the same test."""
        if self.ruleset is None or result.is_qc:
            return decide_without_rules(result)
        reasons = evaluate(self.ruleset, result, context)
        return decide(reasons, self._delta(result, previous))

    def _delta(self, result: Result, previous: delta_check.Previous | None) -> list[str]:
        code = result.lis_code or result.test_code
        rules = self.ruleset.rules_for(code) if self.ruleset else None
        if rules is None or rules.delta is None or result.numeric is None:
            return []
        if result.measured_at is None:
            return []
        settings = rules.delta
        rule = delta_check.DeltaRule(
            method=settings.method,
            window=timedelta(hours=float(settings.window_hours)),
            limit=settings.limit,
            z=settings.z,
            cva=settings.cva,
            cvi=settings.cvi,
        )
        outcome = delta_check.check(
            result.numeric, result.units, result.measured_at, previous, rule
        )
        return list(outcome.reasons)
