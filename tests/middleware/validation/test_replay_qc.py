"""Replay with a QC plan: controls judged by the Westgard rules, results given the QC gate's
reasons at their time, and results held again (one more line each) by a later rejection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from middleware.validation.qc_plan import QcPlan, load_qc_plan
from middleware.validation.replay import ReplayError, ReplayStats, compare, replay
from middleware.validation.ruleset import load_ruleset, load_ruleset_text

ROOT = Path(__file__).resolve().parents[3]
RULES = load_ruleset(ROOT / "config" / "rules" / "example.yaml")
PLAN = QcPlan.model_validate(
    {
        "targets": [
            {"instrument": "an1", "test": "GLU", "lot": "L1", "level": "1", "mean": 5, "sd": 0.2},
            {"instrument": "an1", "test": "K", "lot": "L1", "level": "1", "mean": 4, "sd": 0.1},
        ]
    }
)


def result(
    id_: str, hour: float, value: str = "5.2", test: str = "GLU", **extra: Any
) -> dict[str, Any]:
    minutes = round(hour * 60)
    return {
        "kind": "result",
        "id": id_,
        "patient": f"P{id_}",
        "specimen": f"S{id_}",
        "test": test,
        "value": value,
        "unit": "mmol/L",
        "flags": [],
        "at": f"2026-11-20T{minutes // 60:02d}:{minutes % 60:02d}:00+00:00",
        "instrument": "an1",
        **extra,
    }


def control(hour: float, value: float, test: str = "GLU", **extra: Any) -> dict[str, Any]:
    minutes = round(hour * 60)
    return {
        "kind": "qc",
        "instrument": "an1",
        "test": test,
        "level": 1,
        "lot": "L1",
        "value": value,
        "at": f"2026-11-20T{minutes // 60:02d}:{minutes % 60:02d}:00+00:00",
        **extra,
    }


def _lines(events: list[dict[str, Any]], plan: QcPlan | None = PLAN) -> list[dict[str, Any]]:
    return list(replay(RULES, events, plan))


def test_a_rejection_holds_again_the_results_since_the_last_accepted_run() -> None:
    events = [
        result("early", 1),
        control(2, 5.1),  # accepted
        result("a", 3),
        result("b", 4, "2.9"),  # already held (outside the auto-validation range)
        result("k", 4, "4.1", test="K"),  # another test: not concerned
        control(5, 5.8),  # 1-3s: rejected
        result("c", 6),  # decided after the rejection: held at once
        control(7, 5.0),  # accepted rerun
        result("d", 8),
    ]
    stats = ReplayStats()
    lines = list(replay(RULES, events, PLAN, stats))
    assert lines == [
        {"id": "early", "decision": "autovalidated", "reasons": []},
        {"id": "a", "decision": "autovalidated", "reasons": []},
        {"id": "b", "decision": "held", "reasons": ["outside_autoverify_range"]},
        {"id": "k", "decision": "autovalidated", "reasons": []},
        {"id": "a", "decision": "held", "reasons": ["qc_failed"], "reheld_by_qc": True},
        {
            "id": "b",
            "decision": "held",
            "reasons": ["outside_autoverify_range", "qc_failed"],
            "reheld_by_qc": True,
        },
        {"id": "c", "decision": "held", "reasons": ["qc_failed"]},
        {"id": "d", "decision": "autovalidated", "reasons": []},
    ]
    assert stats.as_dict() == {
        "results": 6,
        "autovalidated": 3,  # early, k, d
        "held": 2 + 1,  # b and c, then a held again
        "qc_points": 3,
        "qc_evaluated": 3,
        "qc_runs_rejected": 1,
        "reheld_by_qc": 2,
    }


def test_a_second_rejection_does_not_repeat_what_is_held_for_qc() -> None:
    lines = _lines([control(1, 5.0), result("a", 2), control(3, 5.9), control(4, 4.1)])
    assert [line["id"] for line in lines if line.get("reheld_by_qc")] == ["a"]


def test_without_an_accepted_run_everything_before_is_held_again() -> None:
    lines = _lines([result("a", 1), result("b", 2), control(3, 4.2)])
    assert [line["id"] for line in lines if line.get("reheld_by_qc")] == ["a", "b"]


def test_a_rejected_level_reaches_back_past_the_other_level_of_its_run() -> None:
    plan = QcPlan.model_validate(
        {
            "targets": [
                {"instrument": "an1", "test": "GLU", "lot": "L1", "level": lv, "mean": 5, "sd": 0.2}
                for lv in ("1", "2")
            ]
        }
    )
    events = [
        control(1, 5.0),  # a good run
        result("a", 2),
        control(3, 5.5, level="1"),  # +2.5 SD: a warning, accepted for now
        result("b", 3.05),
        control(3.1, 5.5, level="2"),  # +2.5 SD again: 2-2s across levels rejects the run
    ]
    lines = _lines(events, plan)
    assert [line["id"] for line in lines if line.get("reheld_by_qc")] == ["a", "b"]


def test_overdue_qc_is_a_reason_first_among_the_others() -> None:
    plan = PLAN.model_copy(update={"overdue_hours": 2})
    lines = _lines(
        [result("a", 1, "2.9"), control(2, 5.0), result("b", 3), result("c", 5)],
        plan,
    )
    assert lines[0]["reasons"] == ["qc_overdue", "outside_autoverify_range"]
    assert lines[1]["reasons"] == []
    assert lines[2]["reasons"] == ["qc_overdue"]


def test_without_a_plan_controls_are_only_counted() -> None:
    stats = ReplayStats()
    lines = list(replay(RULES, [result("a", 1), control(2, 9.9), result("b", 3)], None, stats))
    assert [line["reasons"] for line in lines] == [[], []]
    assert (stats.qc_points, stats.qc_evaluated, stats.qc_runs_rejected) == (1, 0, 0)


def test_a_bad_control_line_names_its_line() -> None:
    bad = control(1, 5.0)
    del bad["lot"]
    bad["_line"] = 7
    with pytest.raises(ReplayError, match="line 7: QC line without 'lot'"):
        _lines([bad])
    with pytest.raises(ReplayError, match="not a number"):
        _lines([control(1, "high")])  # type: ignore[arg-type]


def test_compare_counts_final_decisions_after_qc() -> None:
    stricter = load_ruleset_text(
        (ROOT / "config" / "rules" / "example.yaml")
        .read_text()
        .replace(
            "autoverify_range: {low: 3.0, high: 15.0}", "autoverify_range: {low: 3.0, high: 5.1}"
        ),
        "stricter.yaml",
    )
    events = [control(1, 5.0), result("a", 2), result("b", 2.5, "4.0"), control(3, 5.9)]
    same = compare(RULES, stricter, events, qc_plan=PLAN)
    assert same.results == 2
    assert dict(same.changed) == {"GLU": 1}  # a: held by QC under both, plus the range
    [example] = same.examples["GLU"]
    assert example["before"]["reasons"] == ["qc_failed"]
    assert example["after"]["reasons"] == ["outside_autoverify_range", "qc_failed"]


def test_the_example_plan_replays() -> None:
    plan = load_qc_plan(ROOT / "config" / "qc" / "example.yaml")
    events = [
        control(1, 5.5, instrument="cobas1", lot="CC1-2611"),
        result("a", 2, instrument="cobas1"),
    ]
    assert _lines(events, plan)[0]["reasons"] == []


def test_replay_counts_patient_results_and_checks_reagent_lots_as_the_daemon() -> None:
    frequency = {"instrument": "an1", "test": "GLU", "results": 2, "new_lot_qc": True}
    plan = QcPlan.model_validate({**PLAN.model_dump(), "intervals": [frequency]})
    lines = _lines(
        [
            control(8, 5.0, reagent_lot="R1"),
            result("1", 9, reagent_lot="R1"),
            result("2", 10, reagent_lot="R2"),  # a new lot, no QC on it
            result("3", 11, reagent_lot="R1"),  # the third since the run
            control(12, 5.1, reagent_lot="R2"),
            result("4", 13, reagent_lot="R2"),
        ],
        plan,
    )
    assert [(line["id"], line["reasons"]) for line in lines] == [
        ("1", []),
        ("2", ["qc_new_lot"]),
        ("3", ["qc_overdue"]),
        ("4", []),
    ]
