"""Serum indices reach the live decisions: the rule set's `specimen_indices` limits hold a
result whose specimen's index (reported as a result of its own, `validation/indices.py`) is
above the limit, and an index nobody can compare holds it too (fail closed)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.models import Patient, Result, SpecimenReport
from middleware.pipeline import Pipeline, specimen_indices
from middleware.validation.ruleset import load_ruleset

ROOT = Path(__file__).resolve().parents[2]
RULES = load_ruleset(ROOT / "config" / "rules" / "example.yaml")  # K: {h: 20}


def _result(
    code: str, value: str, numeric: Decimal | None, comparator: str | None = None
) -> Result:
    return Result(
        "S1", code, value, numeric=numeric, comparator=comparator, units="mmol/L", flags=("N",)
    )


def _potassium_with_haemolysis(
    value: str, numeric: Decimal | None, comparator: str | None = None
) -> SpecimenReport:
    results = (
        _result("K", "4.2", Decimal("4.2")),
        _result("CREA", "80", Decimal("80")),
        _result("HIL-H", value, numeric, comparator),
    )
    return SpecimenReport("S1", Patient("P1"), results)


@pytest.mark.parametrize(
    ("value", "numeric", "comparator", "held_for_index"),
    [
        ("35", Decimal("35"), None, True),  # above K's limit of 20
        ("20", Decimal("20"), None, False),  # at the limit: strictly above holds
        ("8", Decimal("8"), None, False),
        ("<5", Decimal("5"), "<", False),
        (">50", Decimal("50"), ">", True),  # how far above, nobody knows
        ("++", None, None, True),  # a semi-quantitative index cannot be compared
    ],
)
def test_an_index_above_the_tests_limit_holds_it(
    value: str, numeric: Decimal | None, comparator: str | None, held_for_index: bool
) -> None:
    [potassium, *_] = Pipeline(RULES).decide_report(
        _potassium_with_haemolysis(value, numeric, comparator), {}
    )
    decision, reasons = potassium
    assert ("specimen_index" in reasons) is held_for_index
    if held_for_index:
        assert decision == "held"


def test_index_results_are_found_by_their_lis_or_analyser_code() -> None:
    transcoded = Result("S1", "SI_H", "40", numeric=Decimal("40"), lis_code="HIL-H")
    lipaemia = Result("S1", "hil-l", "3", numeric=Decimal("3"))
    assert specimen_indices([transcoded, lipaemia, _result("K", "4", Decimal("4"))]) == {
        "h": Decimal("40"),
        "l": Decimal("3"),
    }


@given(st.decimals(min_value=0, max_value=100, places=1, allow_nan=False))
def test_the_index_limit_is_strictly_above(index: Decimal) -> None:
    [potassium, *_] = Pipeline(RULES).decide_report(
        _potassium_with_haemolysis(str(index), index), {}
    )
    assert ("specimen_index" in potassium[1]) is (index > 20)
