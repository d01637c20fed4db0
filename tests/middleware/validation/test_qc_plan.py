"""The QC plan file: Westgard settings, intervals and targets, refused with file, line, field."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from middleware.config.loader import ConfigError
from middleware.validation.qc_plan import QcPlan, load_qc_plan, load_qc_plan_text
from middleware.validation.westgard import ALL_RULES, QcTarget, WestgardConfig

EXAMPLE = Path(__file__).parents[3] / "config" / "qc" / "example.yaml"

TARGET = '  - {instrument: an1, test: GLU, lot: "L1", level: "1", mean: 5.5, sd: 0.2}\n'


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_qc_plan_text(text, "qc.yaml")
    return [str(p) for p in info.value.problems]


def test_example_loads() -> None:
    plan = load_qc_plan(EXAMPLE)
    targets = plan.targets_map()
    assert len(targets) == len(plan.targets) == 10
    assert targets[("cobas1", "GLU", "CC1-2611", "1")] == QcTarget(Decimal("5.5"), Decimal("0.15"))
    assert plan.westgard_config() == WestgardConfig()
    assert plan.interval_for("cobas1", "GLU") == timedelta(hours=8)
    assert plan.interval_for("cobas1", "NA") == timedelta(hours=24)
    # The ward meter: by time (the default), by strip count, and on each new strip lot.
    assert plan.interval_for("glu-ward-3", "GLU") == timedelta(hours=24)
    assert plan.run_limit_for("glu-ward-3", "GLU") == 50
    assert plan.new_lot_qc_for("glu-ward-3", "GLU") is True
    assert plan.run_limit_for("cobas1", "GLU") is None
    assert plan.new_lot_qc_for("cobas1", "GLU") is False


def test_defaults_are_all_rules_and_no_overdue_check() -> None:
    plan = load_qc_plan_text("targets:\n" + TARGET)
    assert plan.westgard.rules == ALL_RULES
    assert plan.westgard_config() == WestgardConfig()
    assert plan.interval_for("an1", "GLU") is None
    assert QcPlan().targets_map() == {}


def test_rules_can_be_switched_off_and_windows_set() -> None:
    plan = load_qc_plan_text(
        "westgard:\n  rules: [1-3s, R-4s]\n  across_levels: false\n  across_runs: false\n"
        "  run_window_minutes: 2.5\n"
    )
    assert plan.westgard_config() == WestgardConfig(
        enabled=frozenset({"1-3s", "R-4s"}),
        across_levels=False,
        across_runs=False,
        run_window=timedelta(minutes=2.5),
    )


def test_interval_override_beats_the_default() -> None:
    plan = load_qc_plan_text(
        "overdue_hours: 24\nintervals:\n  - {instrument: an1, test: K, hours: 4.5}\n"
    )
    assert plan.interval_for("an1", "K") == timedelta(hours=4.5)
    assert plan.interval_for("an1", "GLU") == timedelta(hours=24)
    assert plan.interval_for("an2", "K") == timedelta(hours=24)
    assert plan.intervals_map() == {("an1", "K"): timedelta(hours=4.5)}


def test_sd_must_be_positive_with_line_and_field() -> None:
    text = "targets:\n" + TARGET + TARGET.replace('"1"', '"2"').replace("sd: 0.2", "sd: 0")
    assert _problems(text) == ["qc.yaml:3: targets[1].sd: Input should be greater than 0"]


def test_duplicate_targets_are_refused() -> None:
    [problem] = _problems("targets:\n" + TARGET + TARGET.replace("5.5", "5.6"))
    assert problem.startswith("qc.yaml:1: targets: ")
    assert "targets[1] (an1, GLU, lot L1, level 1) repeats targets[0]" in problem


def test_duplicate_intervals_are_refused() -> None:
    text = "intervals:\n" + "  - {instrument: an1, test: K, hours: 4}\n" * 2
    [problem] = _problems(text)
    assert "intervals[1] (an1, K) repeats intervals[0]" in problem


def test_unknown_rule_and_unknown_field_have_lines() -> None:
    text = "westgard:\n  rules: [1-3s, 3-1s]\n  colour: red\n"
    problems = _problems(text)
    assert problems[0].startswith("qc.yaml:2: westgard.rules[1]: Input should be '1-2s', ")
    assert problems[1] == "qc.yaml:3: westgard.colour: Extra inputs are not permitted"


def test_a_numeric_lot_must_be_quoted_but_a_numeric_level_is_fine() -> None:
    [problem] = _problems("targets:\n" + TARGET.replace('"L1"', "0123"))
    assert problem.startswith("qc.yaml:2: targets[0].lot: write the lot in quotes")
    plan = load_qc_plan_text("targets:\n" + TARGET.replace('"1"', "2"))
    assert ("an1", "GLU", "L1", "2") in plan.targets_map()


def test_missing_mean_and_negative_interval() -> None:
    text = (
        "overdue_hours: -1\ntargets:\n  - {instrument: an1, test: GLU, lot: L, level: '1', sd: 1}\n"
    )
    assert _problems(text) == [
        "qc.yaml:1: overdue_hours: Input should be greater than 0",
        "qc.yaml:3: targets[0].mean: Field required",
    ]


def test_repeated_rule_is_refused() -> None:
    [problem] = _problems("westgard:\n  rules: [1-3s, 1-3s]\n")
    assert "rules listed twice: 1-3s" in problem


def test_qc_frequency_by_count_and_new_lot_with_defaults_and_overrides() -> None:
    plan = load_qc_plan_text(
        "overdue_results: 200\nnew_lot_qc: true\nintervals:\n"
        "  - {instrument: glu-1, test: GLU, results: 50}\n"
        "  - {instrument: an1, test: K, hours: 4, new_lot_qc: false}\n"
    )
    assert plan.run_limit_for("glu-1", "GLU") == 50
    assert plan.run_limit_for("an1", "K") == 200  # its override says nothing of the count
    assert plan.interval_for("glu-1", "GLU") is None  # nor of the time
    assert plan.intervals_map() == {("an1", "K"): timedelta(hours=4)}
    assert plan.run_limits_map() == {("glu-1", "GLU"): 50}
    assert (plan.new_lot_qc_for("glu-1", "GLU"), plan.new_lot_qc_for("an1", "K")) == (True, False)
    assert QcPlan().run_limit_for("x", "y") is None and QcPlan().new_lot_qc_for("x", "y") is False


def test_an_interval_entry_must_say_something_and_counts_are_positive() -> None:
    problems = _problems(
        "overdue_results: 0\nintervals:\n  - {instrument: an1, test: K}\n"
        "  - {instrument: an1, test: NA, results: 2.5}\n"
    )
    assert problems[0] == "qc.yaml:1: overdue_results: Input should be greater than or equal to 1"
    assert problems[1] == "qc.yaml:3: intervals[0]: give hours, results or new_lot_qc"
    assert problems[2].startswith("qc.yaml:4: intervals[1].results: Input should be a valid int")
