"""The decision taken on each patient result before it goes to the LIS.

Without a rule set every patient result is `held` with the reason `no_rule` (DESIGN.md
vocabulary): nothing is auto-validated by default. With one (`validation.rules` in the
configuration) each result goes through the pure stages of `middleware.validation` in the order
of AUTOVERIFICATION.md §2 — switch, rule present, flags, indices, numeric, unit, reportable
range, critical limits, auto-validation range, the biologists' named rules — plus the delta
check against the patient's previous result, and every reason found is kept (GBUI V-3).

Before those stages, in the order of the validation issue, come what the lab decides outside
the rule set: a blocked device (`device_blocked`: the result is `quarantined`, never forwarded
until a person releases it), auto-validation switched off globally (`autovalidation_disabled`)
or for the rule set's responsible biologist (`biologist_disabled`), and the QC gate
(`qc_failed`, `qc_overdue`, `qc_new_lot`) for the result's instrument, test and reagent lot.
Each is given to the pipeline, which stays pure: it never reads the clock, the store or the
network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal, Protocol

from drivers.models import Result, SpecimenReport
from middleware.validation import delta as delta_check
from middleware.validation.indices import index_reading
from middleware.validation.ruleset import RuleSet
from middleware.validation.stages import SpecimenContext, decide, evaluate

__all__ = [
    "Decision",
    "Pipeline",
    "QcStatus",
    "Switches",
    "decide_without_rules",
    "specimen_indices",
]

Decision = tuple[str, tuple[str, ...]]


class QcStatus(Protocol):
    """What the QC gate says about a patient result (`QcMonitor` in the daemon and replay)."""

    def reasons_for(
        self, instrument: str, test: str, at: datetime, reagent_lot: str = ""
    ) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class Switches:
    """Auto-validation as people switched it (GBUI V-3): on unless switched off, globally or
    for one responsible biologist. The daemon reads it from the store (audited changes)."""

    autovalidation: bool = True
    disabled_biologists: frozenset[str] = frozenset()

    def reasons(self, biologist: str) -> list[str]:
        reasons = [] if self.autovalidation else ["autovalidation_disabled"]
        if biologist and biologist in self.disabled_biologists:
            reasons.append("biologist_disabled")
        return reasons


def specimen_indices(results: Sequence[Result]) -> dict[str, Decimal]:
    """The specimen's serum indices ("h", "i", "l") for the rule set's `specimen_indices`
    limits, from its index results (`validation/indices.py`: which results they are, and how
    one that cannot be compared counts)."""
    readings = (
        index_reading(r.lis_code, r.test_code, r.value, r.numeric, r.comparator) for r in results
    )
    return dict(reading for reading in readings if reading is not None)


def decide_without_rules(result: Result) -> Decision:
    """(decision, reasons) when no rule set is configured; QC results get none."""
    if result.is_qc:
        return ("", ())
    return ("held", ("no_rule",))


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Decides patient results with one rule set (or none)."""

    ruleset: RuleSet | None = None
    switches: Switches = field(default_factory=Switches)
    blocked_devices: frozenset[str] = frozenset()
    qc: QcStatus | None = None

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
        self,
        report: SpecimenReport,
        previous: Mapping[str, delta_check.Previous],
        received_at: datetime | None = None,
    ) -> list[Decision]:
        """Decisions for every result of one specimen; `previous` maps a test code to the
        patient's previous result for it (from another specimen); `received_at` stands in for
        a measurement time the analyser did not give (for the QC gate)."""
        decisions: list[Decision] = []
        origin: Literal["lab", "poc"] = "poc" if report.extras.get("origin") == "poc" else "lab"
        indices = specimen_indices(report.results)
        for result in report.results:
            others = tuple(r for r in report.results if r is not result)
            code = result.lis_code or result.test_code
            context = SpecimenContext(others=others, indices=indices, origin=origin)
            decisions.append(self.decide_result(result, context, previous.get(code), received_at))
        return decisions

    def decide_result(
        self,
        result: Result,
        context: SpecimenContext,
        previous: delta_check.Previous | None,
        received_at: datetime | None = None,
    ) -> Decision:
        """One result in its specimen, with the patient's previous result for the same test."""
        if result.is_qc:
            return decide_without_rules(result)
        front = self.lab_reasons(result, received_at)
        if self.ruleset is None:
            front.append("no_rule")
            reasons: list[str] = []
            delta: list[str] = []
        else:
            reasons = evaluate(self.ruleset, result, context)
            delta = self._delta(result, previous)
        decision, found = decide(front + reasons, delta)
        if "device_blocked" in found:
            return ("quarantined", found)
        return (decision, found)

    def lab_reasons(self, result: Result, received_at: datetime | None = None) -> list[str]:
        """The reasons decided outside the rule set, first in the issue's order: device
        blocked, switches, then the QC gate of the result's instrument and test."""
        reasons = ["device_blocked"] if result.instrument in self.blocked_devices else []
        reasons += self.switches.reasons(self.biologist)
        if self.qc is not None:
            at = result.measured_at or received_at
            if at is not None:
                reasons += self.qc.reasons_for(
                    result.instrument, result.lis_code or result.test_code, at, result.reagent_lot
                )
        return reasons

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
