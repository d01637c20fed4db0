"""Pure auto-validation stages: each returns every reason it finds; `decide` gives the outcome.

No I/O, no clock. The order (AUTOVERIFICATION.md §2), all run, none stopping the others (§9.1):

0. `check_switch` — global switch off → `autovalidation_disabled`
   `check_rule_exists` — no entry for the test in the rule set → `no_rule` (the numeric checks
   below then have nothing to compare with and report nothing)
1. `check_instrument_flags` — any raw flag not in the rule set's `allowed_flags`
   → `instrument_flag` (fail closed: an unknown vendor flag holds until the lab allows it)
   [2. QC gate: another stage; its reasons come in through `decide(..., extra)`]
3. `check_specimen_indices` — an index strictly above its threshold → `specimen_index`
4. `check_numeric` — no parsed number → `non_numeric`; `check_unit` — the result's unit differs
   from the configured one (an empty unit differs too) → `unit_mismatch`;
   `check_reportable_range` — outside the closed interval, or a censored value ("<0.1", ">50",
   or a "<"/">" normalised flag: beyond the measuring range by definition)
   → `outside_reportable_range`
5. `check_critical` — `value <= critical.low` or `value >= critical.high` → `critical_value`
6. `check_autoverify_range` — outside the closed interval → `outside_autoverify_range`
   [7. delta: another stage; via `extra`]
8. `check_named_rules` — each rule that holds → `rule:<name>`; a rule that cannot be evaluated
   on this result (missing result, null compared with a number) also gives `rule:<name>`
   (fail closed)

Limits are compared only when the value is numeric and in the configured unit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from drivers.models import Result
from middleware.validation.expressions import RuleEvaluationError
from middleware.validation.ruleset import RuleSet, TestRules

__all__ = [
    "Decision",
    "SpecimenContext",
    "check_autoverify_range",
    "check_critical",
    "check_instrument_flags",
    "check_named_rules",
    "check_numeric",
    "check_reportable_range",
    "check_rule_exists",
    "check_specimen_indices",
    "check_switch",
    "check_unit",
    "decide",
    "evaluate",
    "rule_context",
]

Decision = Literal["autovalidated", "held"]


@dataclass(frozen=True, slots=True)
class SpecimenContext:
    """What the rules may know about a result beyond the result itself."""

    others: Sequence[Result] = ()  # the other results of the same specimen
    indices: Mapping[str, Decimal] = field(default_factory=dict)  # "h", "i", "l"
    age: Decimal | None = None
    sex: str = ""
    origin: Literal["lab", "poc"] = "lab"
    ward: str = ""
    prescriber: str = ""
    diagnoses: tuple[str, ...] = ()


def _code(result: Result) -> str:
    return result.lis_code or result.test_code


def _result_view(result: Result) -> dict[str, object]:
    return {
        "test_code": _code(result),
        "value": result.value,
        "numeric": result.numeric,
        "comparator": result.comparator or "",
        "unit": result.units,
        "flags": tuple(dict.fromkeys((*result.flags, *result.normalized_flags))),
    }


def rule_context(result: Result, specimen: SpecimenContext) -> dict[str, object]:
    """The names a rule can use (see `middleware.validation.expressions`)."""
    context = _result_view(result)
    context["results"] = {
        _code(other): _result_view(other) for other in specimen.others if other is not result
    }
    context.update(
        age=specimen.age,
        sex=specimen.sex,
        origin=specimen.origin,
        ward=specimen.ward,
        prescriber=specimen.prescriber,
        diagnoses=specimen.diagnoses,
    )
    return context


def check_switch(ruleset: RuleSet) -> list[str]:
    return [] if ruleset.enabled else ["autovalidation_disabled"]


def check_rule_exists(test: TestRules | None) -> list[str]:
    return ["no_rule"] if test is None else []


def check_instrument_flags(result: Result, allowed: Iterable[str]) -> list[str]:
    allowed_set = set(allowed)
    return ["instrument_flag"] if any(f not in allowed_set for f in result.flags) else []


def check_specimen_indices(test: TestRules, indices: Mapping[str, Decimal]) -> list[str]:
    limits = test.specimen_indices
    if limits is None:
        return []
    for name, limit in (("h", limits.h), ("i", limits.i), ("l", limits.l)):
        index = indices.get(name)
        if limit is not None and index is not None and index > limit:
            return ["specimen_index"]
    return []


def check_numeric(result: Result) -> list[str]:
    return ["non_numeric"] if result.numeric is None else []


def check_unit(result: Result, test: TestRules) -> list[str]:
    return ["unit_mismatch"] if result.units != test.unit else []


def _comparable(result: Result, test: TestRules) -> Decimal | None:
    if result.numeric is None or result.units != test.unit:
        return None
    return result.numeric


def _censored(result: Result) -> bool:
    return bool(result.comparator) or any(f in ("<", ">") for f in result.normalized_flags)


def check_reportable_range(result: Result, test: TestRules) -> list[str]:
    value = _comparable(result, test)
    if value is None:
        return []
    if _censored(result):
        return ["outside_reportable_range"]
    limits = test.reportable_range
    return ["outside_reportable_range"] if limits and not limits.contains(value) else []


def check_critical(result: Result, test: TestRules) -> list[str]:
    value, limits = _comparable(result, test), test.critical
    if value is None or limits is None:
        return []
    low = limits.low is not None and value <= limits.low
    high = limits.high is not None and value >= limits.high
    return ["critical_value"] if low or high else []


def check_autoverify_range(result: Result, test: TestRules) -> list[str]:
    value, limits = _comparable(result, test), test.autoverify_range
    if value is None or limits is None:
        return []
    return [] if limits.contains(value) else ["outside_autoverify_range"]


def check_named_rules(test: TestRules, context: Mapping[str, object]) -> list[str]:
    reasons = []
    for rule in test.rules:
        try:
            holds = rule.compiled.holds(context)
        except RuleEvaluationError:
            holds = True  # fail closed
        if holds:
            reasons.append(rule.reason)
    return reasons


def evaluate(ruleset: RuleSet, result: Result, specimen: SpecimenContext) -> list[str]:
    """Every reason this module's stages find for one result, in the documented order."""
    reasons = check_switch(ruleset)
    test = ruleset.rules_for(_code(result))
    reasons += check_rule_exists(test)
    reasons += check_instrument_flags(result, ruleset.allowed_flags)
    if test is None:
        return reasons
    reasons += check_specimen_indices(test, specimen.indices)
    reasons += check_numeric(result)
    reasons += check_unit(result, test)
    reasons += check_reportable_range(result, test)
    reasons += check_critical(result, test)
    reasons += check_autoverify_range(result, test)
    if test.rules:  # the context (every result of the specimen) is built only when needed
        reasons += check_named_rules(test, rule_context(result, specimen))
    return reasons


def decide(reasons: Iterable[str], extra: Iterable[str] = ()) -> tuple[Decision, tuple[str, ...]]:
    """Autovalidated exactly when no stage found a reason; `extra` takes the reasons of stages
    outside this module (QC gate, delta). Duplicates are dropped, first order kept."""
    found = tuple(dict.fromkeys((*reasons, *extra)))
    return ("held" if found else "autovalidated"), found
