from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from middleware.config.loader import ConfigError
from middleware.validation.ruleset import load_ruleset, load_ruleset_text

EXAMPLE = Path(__file__).parents[3] / "config" / "rules" / "example.yaml"

HEAD = 'name: t\nversion: "1"\nresponsible_biologist: B\nenabled: true\n'


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_ruleset_text(text, "r.yaml")
    return [str(p) for p in info.value.problems]


def test_example_loads() -> None:
    rules = load_ruleset(EXAMPLE)
    assert set(rules.tests) == {"GLU", "K", "NA", "CREA"}
    assert rules.tests["K"].specimen_indices is not None
    assert rules.tests["K"].specimen_indices.h == Decimal(20)
    assert rules.tests["CREA"].delta is not None and rules.tests["CREA"].delta.cvi == Decimal("5.0")
    assert rules.cases


def test_unknown_field_has_line_and_field() -> None:
    text = HEAD + "tests:\n  K:\n    unit: mmol/L\n    critcal: {low: 2}\n"
    assert _problems(text) == ["r.yaml:8: tests.K.critcal: Extra inputs are not permitted"]


def test_bad_rule_expression_is_refused_with_position() -> None:
    text = (
        HEAD
        + "tests:\n  K:\n    unit: mmol/L\n    rules:\n      - {name: x, when: 'numeric > and'}\n"
    )
    [problem] = _problems(text)
    assert problem.startswith("r.yaml:9: tests.K.rules[0].when: line 1, column 11")


def test_missing_fields_and_bad_interval() -> None:
    text = "name: t\ntests:\n  K:\n    unit: mmol/L\n    autoverify_range: {low: 6, high: 3}\n"
    problems = _problems(text)
    assert "r.yaml:1: version: Field required" in problems
    assert "r.yaml:1: enabled: Field required" in problems
    assert "r.yaml:5: tests.K.autoverify_range: low (6) is above high (3)" in problems


def test_delta_parameters_are_checked() -> None:
    text = HEAD + "tests:\n  NA:\n    unit: mmol/L\n    delta: {method: rcv, window_hours: 48}\n"
    assert _problems(text) == ["r.yaml:8: tests.NA.delta: method rcv needs cva and cvi (percent)"]


def test_case_expectations_are_checked() -> None:
    text = HEAD + (
        "tests: {}\ncases:\n  - name: c\n    result: {test_code: K, value: '1'}\n"
        "    expect: {decision: held, reasons: ['rule:nope']}\n"
    )
    assert any("expects unknown rule:nope" in p for p in _problems(text))
    text = HEAD + (
        "tests: {}\ncases:\n  - name: c\n    result: {test_code: K, value: '1'}\n"
        "    expect: {decision: autovalidated, reasons: [bogus]}\n"
    )
    assert any("unknown reasons: bogus" in p for p in _problems(text))


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_ruleset(tmp_path / "absent.yaml")
    assert _problems("a: [")[0].startswith("r.yaml:")
    assert _problems("")[0] == "r.yaml:1: (file): the file is empty"
