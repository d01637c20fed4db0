from __future__ import annotations

from decimal import Decimal, InvalidOperation
from pathlib import Path

import pytest

from drivers.models import Result
from middleware.validation.cases import run_case
from middleware.validation.ruleset import RuleSet, TestCase, load_ruleset, load_ruleset_text
from middleware.validation.stages import (
    SpecimenContext,
    check_autoverify_range,
    check_critical,
    check_instrument_flags,
    check_named_rules,
    check_reportable_range,
    check_specimen_indices,
    decide,
    evaluate,
    rule_context,
)

EXAMPLE = Path(__file__).parents[3] / "config" / "rules" / "example.yaml"

RULES = load_ruleset_text(
    """
name: t
version: "1"
responsible_biologist: B
enabled: true
tests:
  K:
    unit: mmol/L
    autoverify_range: {low: 3.0, high: 5.8}
    critical: {low: 2.8, high: 6.2}
    reportable_range: {low: 1.0, high: 10.0}
    specimen_indices: {h: 20, i: 5, l: 100}
    rules:
      - {name: needs_crea, when: 'results["CREA"]["numeric"] > 100'}
      - {name: icu, when: 'ward == "ICU"'}
"""
)
K = RULES.tests["K"]


def _number(text: str) -> tuple[Decimal | None, str | None]:
    comparator = text[0] if text[:1] in ("<", ">") else None
    try:
        return Decimal(text.lstrip("<>")), comparator
    except InvalidOperation:
        return None, None


def _result(code: str, value: str, unit: str = "mmol/L", flags: tuple[str, ...] = ()) -> Result:
    numeric, comparator = _number(value)
    return Result(
        "S1", code, value, numeric=numeric, comparator=comparator, units=unit, flags=flags
    )


@pytest.mark.parametrize(
    ("value", "reasons"),
    [
        ("1.0", ["critical_value", "outside_autoverify_range"]),  # reportable low bound: inside
        ("0.99", ["outside_reportable_range", "critical_value", "outside_autoverify_range"]),
        ("2.8", ["critical_value", "outside_autoverify_range"]),  # equal to critical: critical
        ("2.81", ["outside_autoverify_range"]),
        ("3.0", []),  # autoverify bounds are inside
        ("5.8", []),
        ("5.81", ["outside_autoverify_range"]),
        ("6.2", ["critical_value", "outside_autoverify_range"]),
        ("10.0", ["critical_value", "outside_autoverify_range"]),
        ("10.01", ["outside_reportable_range", "critical_value", "outside_autoverify_range"]),
    ],
)
def test_range_boundaries(value: str, reasons: list[str]) -> None:
    result = _result("K", value)
    found = (
        check_reportable_range(result, K)
        + check_critical(result, K)
        + check_autoverify_range(result, K)
    )
    assert found == reasons


def test_censored_value_is_outside_reportable_range() -> None:
    assert check_reportable_range(_result("K", "<5.0"), K) == ["outside_reportable_range"]
    flagged = Result("S1", "K", "5.0", numeric=Decimal(5), units="mmol/L", normalized_flags=(">",))
    assert check_reportable_range(flagged, K) == ["outside_reportable_range"]


def test_limits_not_compared_in_another_unit() -> None:
    result = _result("K", "99", unit="mg/dL")
    assert evaluate(RULES, result, SpecimenContext(ward="X")) == [
        "unit_mismatch",
        "rule:needs_crea",
    ]


@pytest.mark.parametrize(
    ("indices", "reasons"),
    [
        ({"h": Decimal(20), "i": Decimal(5), "l": Decimal(100)}, []),  # equal: accepted
        ({"h": Decimal("20.1")}, ["specimen_index"]),
        ({"i": Decimal(6)}, ["specimen_index"]),
        ({"l": Decimal(101), "h": Decimal(50)}, ["specimen_index"]),
        ({}, []),
    ],
)
def test_specimen_index_is_strictly_above(indices: dict[str, Decimal], reasons: list[str]) -> None:
    assert check_specimen_indices(K, indices) == reasons


def test_instrument_flags_fail_closed() -> None:
    allowed = RULES.allowed_flags
    assert check_instrument_flags(_result("K", "4", flags=("H", "LL")), allowed) == []
    assert check_instrument_flags(_result("K", "4", flags=("CLOT",)), allowed) == [
        "instrument_flag"
    ]


def test_all_reasons_are_collected() -> None:
    disabled = RULES.model_copy(update={"enabled": False})
    result = _result("K", "12", flags=("BUBBLE",))
    others = (_result("CREA", "150", unit="µmol/L"),)
    specimen = SpecimenContext(others=others, indices={"h": Decimal(90)}, ward="ICU")
    assert evaluate(disabled, result, specimen) == [
        "autovalidation_disabled",
        "instrument_flag",
        "specimen_index",
        "outside_reportable_range",
        "critical_value",
        "outside_autoverify_range",
        "rule:needs_crea",
        "rule:icu",
    ]


def test_no_rule_and_non_numeric() -> None:
    assert evaluate(RULES, _result("ALT", "30", unit="U/L"), SpecimenContext()) == ["no_rule"]
    others = (_result("CREA", "80", unit="µmol/L"),)
    assert evaluate(RULES, _result("K", "NEG"), SpecimenContext(others=others)) == ["non_numeric"]


def test_rule_that_cannot_be_evaluated_holds() -> None:
    context = rule_context(_result("K", "4.0"), SpecimenContext())  # no CREA in the specimen
    assert check_named_rules(K, context) == ["rule:needs_crea"]


def test_rule_context_names() -> None:
    crea = _result("CREA", "80", unit="µmol/L")
    context = rule_context(
        _result("K", "4.0", flags=("H",)),
        SpecimenContext(others=(crea,), age=Decimal(70), sex="F", origin="poc", diagnoses=("N18",)),
    )
    assert context["numeric"] == Decimal("4.0")
    assert context["results"] == {
        "CREA": {
            "test_code": "CREA",
            "value": "80",
            "numeric": Decimal(80),
            "comparator": "",
            "unit": "µmol/L",
            "flags": (),
        }
    }
    assert (context["origin"], context["age"], context["diagnoses"]) == ("poc", 70, ("N18",))


def test_decide_accepts_reasons_from_other_stages() -> None:
    assert decide([]) == ("autovalidated", ())
    assert decide([], extra=["delta_exceeded"]) == ("held", ("delta_exceeded",))
    assert decide(["critical_value"], ["qc_failed", "critical_value"]) == (
        "held",
        ("critical_value", "qc_failed"),
    )


RULE_SET: RuleSet = load_ruleset(EXAMPLE)


@pytest.mark.parametrize("case", RULE_SET.cases, ids=lambda c: c.name)
def test_example_embedded_cases(case: TestCase) -> None:
    outcome = run_case(RULE_SET, case)
    assert outcome.obtained == outcome.expected, outcome.name
