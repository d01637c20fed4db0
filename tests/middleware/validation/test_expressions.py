from __future__ import annotations

from decimal import Decimal

import pytest

from middleware.validation.expressions import RuleEvaluationError, RuleSyntaxError, compile_rule

CONTEXT: dict[str, object] = {
    "numeric": Decimal("5.6"),
    "value": "5.6",
    "flags": ("H",),
    "results": {"CREA": {"numeric": Decimal(150), "unit": "µmol/L"}},
    "age": Decimal(81),
    "sex": "F",
    "origin": "poc",
    "diagnoses": ("N18.4",),
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("numeric > 5.5", True),
        ("numeric >= 5.6 and numeric <= 5.6", True),
        ('results["CREA"]["numeric"] > 100 and "H" in flags', True),
        ('"K" in results', False),
        ('origin == "lab" or age < 18', False),
        ('sex == "F" and "N18.4" in diagnoses', True),
        ("$abs(numeric - 6) < 1", True),
    ],
)
def test_holds(text: str, expected: bool) -> None:
    assert compile_rule(text).holds(CONTEXT) is expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("numeric >\n 5 and and", "line 2, column 8: unexpected 'and'"),
        ("numeric > 5 and (", "line 1, column 18: the rule ends too early"),
        ("vlaue > 1", "unknown name 'vlaue' (did you mean 'value'?)"),
        ("$now > 1", "unknown name '$now'"),
        ("$random > 1", "unknown name '$random'"),
        ('numeric > "x"', "data type mismatch"),
        ("value.__class__", "unknown attribute: '__class__'"),
        ("   ", "the rule is empty"),
    ],
)
def test_refused(text: str, message: str) -> None:
    with pytest.raises(RuleSyntaxError) as info:
        compile_rule(text)
    assert message in str(info.value)


def test_evaluation_errors_are_reported() -> None:
    with pytest.raises(RuleEvaluationError):
        compile_rule('results["K"]["numeric"] > 5').holds(CONTEXT)
    with pytest.raises(RuleEvaluationError):
        compile_rule("numeric > 5").holds({**CONTEXT, "numeric": None})
