"""The pipeline's first stages, decided by the lab outside the rule set: a blocked device
quarantines, switches hold, the QC gate holds — each reason collected with the others, in the
validation issue's order, and nothing stops at the first reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from drivers.models import Patient, Result, SpecimenReport
from middleware.pipeline import Pipeline, Switches
from middleware.validation.qc_monitor import QcMonitor
from middleware.validation.qc_plan import load_qc_plan_text
from middleware.validation.ruleset import load_ruleset
from middleware.validation.stages import SpecimenContext
from middleware.validation.westgard import QcPoint

ROOT = Path(__file__).resolve().parents[2]
RULES = load_ruleset(ROOT / "config" / "rules" / "example.yaml")
BIOLOGIST = RULES.responsible_biologist
T0 = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)

PLAN = load_qc_plan_text(
    """
westgard: {rules: [1-2s, 1-3s, 2-2s, R-4s, 4-1s, 10x]}
overdue_hours: 8
targets:
  - {instrument: chem-1, test: GLU, lot: L1, level: "1", mean: 5.5, sd: 0.2}
""",
    "plan.yaml",
)


def _glucose(value: str, at: datetime, instrument: str = "chem-1") -> Result:
    return Result(
        "S1", "GLU", value, numeric=Decimal(value), units="mmol/L", measured_at=at,
        instrument=instrument,
    )  # fmt: skip


def _decide(pipeline: Pipeline, result: Result) -> tuple[str, tuple[str, ...]]:
    return pipeline.decide_result(result, SpecimenContext(), None)


def test_normal_result_autovalidates_without_lab_reasons() -> None:
    assert _decide(Pipeline(RULES), _glucose("5.2", T0)) == ("autovalidated", ())


def test_global_switch_off_holds_with_autovalidation_disabled() -> None:
    pipeline = Pipeline(RULES, switches=Switches(autovalidation=False))
    assert _decide(pipeline, _glucose("5.2", T0)) == ("held", ("autovalidation_disabled",))


def test_biologist_switch_holds_only_that_biologists_rule_set() -> None:
    off = Pipeline(RULES, switches=Switches(disabled_biologists=frozenset({BIOLOGIST})))
    assert _decide(off, _glucose("5.2", T0)) == ("held", ("biologist_disabled",))
    other = Pipeline(RULES, switches=Switches(disabled_biologists=frozenset({"Dr Other"})))
    assert _decide(other, _glucose("5.2", T0)) == ("autovalidated", ())


def test_blocked_device_quarantines_and_keeps_every_other_reason() -> None:
    pipeline = Pipeline(
        RULES,
        switches=Switches(autovalidation=False),
        blocked_devices=frozenset({"chem-1"}),
    )
    decision, reasons = _decide(pipeline, _glucose("2.0", T0))
    assert decision == "quarantined"
    assert reasons[:2] == ("device_blocked", "autovalidation_disabled")
    assert "critical_value" in reasons  # collected, not stopped at the first reason
    # Another analyser is not concerned.
    assert _decide(pipeline, _glucose("5.2", T0, "chem-2"))[0] == "held"


def test_without_a_rule_set_results_are_held_no_rule_and_still_quarantined() -> None:
    assert _decide(Pipeline(), _glucose("5.2", T0)) == ("held", ("no_rule",))
    blocked = Pipeline(blocked_devices=frozenset({"chem-1"}))
    assert _decide(blocked, _glucose("5.2", T0)) == ("quarantined", ("device_blocked", "no_rule"))


def _monitor_with(*points: tuple[str, datetime]) -> QcMonitor:
    monitor = QcMonitor(PLAN)
    for value, at in points:
        monitor.add_qc(QcPoint("chem-1", "GLU", "1", "L1", Decimal(value), at))
    return monitor


def test_qc_gate_reasons_join_the_decision() -> None:
    # Accepted at T0-2h and T0, rejected (1-3s) at T0+1h: results after T0 are held qc_failed.
    monitor = _monitor_with(
        ("5.5", T0 - timedelta(hours=2)), ("5.5", T0), ("6.3", T0 + timedelta(hours=1))
    )
    pipeline = Pipeline(RULES, qc=monitor)
    before = _decide(pipeline, _glucose("5.2", T0 - timedelta(minutes=1)))
    assert before == ("autovalidated", ())
    after = _decide(pipeline, _glucose("5.2", T0 + timedelta(minutes=30)))
    assert after == ("held", ("qc_failed",))
    # Overdue: 8 h after the last accepted run, with the rejection still open.
    late = _decide(pipeline, _glucose("5.2", T0 + timedelta(hours=9)))
    assert late == ("held", ("qc_failed", "qc_overdue"))


def test_qc_uses_the_reception_time_when_the_analyser_gave_none() -> None:
    monitor = _monitor_with(("5.5", T0), ("6.3", T0 + timedelta(hours=1)))
    pipeline = Pipeline(RULES, qc=monitor)
    result = Result("S1", "GLU", "5.2", numeric=Decimal("5.2"), units="mmol/L",
                    instrument="chem-1")  # fmt: skip
    decided = pipeline.decide_result(result, SpecimenContext(), None, T0 + timedelta(hours=2))
    assert decided == ("held", ("qc_failed",))


def test_qc_results_themselves_get_no_decision() -> None:
    qc = Result("QC1", "GLU", "5.5", numeric=Decimal("5.5"), is_qc=True, instrument="chem-1")
    blocked = Pipeline(RULES, blocked_devices=frozenset({"chem-1"}))
    assert blocked.decide_result(qc, SpecimenContext(), None) == ("", ())


def test_poc_origin_reaches_the_rules_through_the_report() -> None:
    report = SpecimenReport("S1", Patient("P1"), (_glucose("5.2", T0),), extras={"origin": "poc"})
    seen: list[str] = []

    class Spy(Pipeline):
        def decide_result(self, result, context, previous, received_at=None):  # type: ignore[no-untyped-def,override]
            seen.append(context.origin)
            return super().decide_result(result, context, previous, received_at)

    Spy(RULES).decide_report(report, {})
    assert seen == ["poc"]


@given(
    blocked=st.booleans(),
    global_on=st.booleans(),
    biologist_on=st.booleans(),
    value=st.decimals(min_value=0, max_value=40, places=1),
)
def test_lab_reasons_come_first_in_a_fixed_order(
    blocked: bool, global_on: bool, biologist_on: bool, value: Decimal
) -> None:
    pipeline = Pipeline(
        RULES,
        switches=Switches(
            autovalidation=global_on,
            disabled_biologists=frozenset() if biologist_on else frozenset({BIOLOGIST}),
        ),
        blocked_devices=frozenset({"chem-1"} if blocked else ()),
    )
    decision, reasons = _decide(pipeline, _glucose(str(value), T0))
    expected_front = [
        reason
        for reason, present in (
            ("device_blocked", blocked),
            ("autovalidation_disabled", not global_on),
            ("biologist_disabled", not biologist_on),
        )
        if present
    ]
    assert list(reasons[: len(expected_front)]) == expected_front
    plain = _decide(Pipeline(RULES), _glucose(str(value), T0))
    # The rule set's own reasons are the same whatever the lab switched.
    assert [r for r in reasons if r not in expected_front] == list(plain[1])
    if blocked:
        assert decision == "quarantined"
    elif expected_front or plain[1]:
        assert decision == "held"
    else:
        assert decision == "autovalidated"
