"""The replay decides exactly as the live pipeline: same decision, same reasons, same order.

The replay has its own lean path (compiled per-test checks, no `Result` objects), so random
results are decided both ways: by `replay` from JSON-like events, and by
`Pipeline(ruleset).decide_result` from the `Result`, specimen context and previous result the
daemon would build for them."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.models import Result
from middleware.pipeline import Pipeline
from middleware.validation.delta import Previous
from middleware.validation.qc_monitor import QcMonitor
from middleware.validation.qc_plan import QcPlan
from middleware.validation.replay import replay
from middleware.validation.ruleset import RuleSet, load_ruleset, load_ruleset_text
from middleware.validation.stages import SpecimenContext
from middleware.validation.westgard import QcPoint

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE_TEXT = (ROOT / "config" / "rules" / "example.yaml").read_text()

# Every delta method, indices h/i/l, half-open intervals, named rules reading other results.
OTHER_TEXT = """
name: other
version: "1"
responsible_biologist: B
enabled: true
allowed_flags: [N, H]
tests:
  ALB:
    unit: g/L
    autoverify_range: {high: 50}
    critical: {low: 15}
    reportable_range: {low: 5}
    delta: {method: rcv_lognormal, cva: 2.5, cvi: 3.1, window_hours: 240}
    specimen_indices: {i: 10, l: 200}
    rules:
      - {name: alb_over_tp, when: '"TP" in results and numeric > results["TP"]["numeric"]'}
  TP:
    unit: g/L
    delta: {method: absolute, limit: 8, window_hours: 24}
    specimen_indices: {h: 30}
  CRP:
    unit: mg/L
    reportable_range: {low: 0.5, high: 300}
    delta: {method: rcv, cva: 5.2, cvi: 42.2, window_hours: 720}
    rules:
      - {name: poc_crp, when: 'origin == "poc" and "H" in flags'}
"""

RULESETS = [
    load_ruleset(ROOT / "config" / "rules" / "example.yaml"),
    load_ruleset_text(EXAMPLE_TEXT.replace("enabled: true", "enabled: false"), "off.yaml"),
    load_ruleset_text(OTHER_TEXT, "other.yaml"),
]

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _number(text: str) -> tuple[Decimal | None, str | None]:
    """How the replay's input and the rule-set cases read a value (no driver involved)."""
    stripped = text.strip()
    comparator = stripped[0] if stripped[:1] in ("<", ">") else None
    try:
        return Decimal(stripped.lstrip("<> ")), comparator
    except InvalidOperation:
        return None, None


def _limits(ruleset: RuleSet, code: str) -> list[Decimal]:
    """Every limit of a test, and values just around them: where a wrong comparison shows."""
    test = ruleset.tests.get(code)
    if test is None:
        return [Decimal(5)]
    bounds = [
        bound
        for interval in (test.autoverify_range, test.critical, test.reportable_range)
        if interval is not None
        for bound in (interval.low, interval.high)
        if bound is not None
    ]
    steps = (Decimal("-0.01"), Decimal(0), Decimal("0.01"))
    return [b + step for b in bounds for step in steps] or [Decimal(5)]


def _values(ruleset: RuleSet, code: str) -> st.SearchStrategy[str]:
    numbers = st.one_of(
        st.sampled_from(_limits(ruleset, code)),
        st.decimals(min_value=-5, max_value=3000, places=2, allow_nan=False),
    )
    return st.one_of(
        numbers.map(str),
        numbers.map(str),
        numbers.map(lambda n: f"<{n}"),
        numbers.map(lambda n: f"> {n}"),
        st.sampled_from(["-----", "NEG", "", "pos"]),
    )


flag_lists = st.lists(st.sampled_from(["N", "H", "L", "HH", "A", "CLOT", "<", ">"]), max_size=3)
units = ["mmol/L", "µmol/L", "g/L", "mg/L", "mg/dL", ""]


@st.composite
def results(draw: st.DrawFn, ruleset: RuleSet, codes: list[str]) -> dict[str, Any]:
    code = draw(st.sampled_from(codes))
    own_unit = ruleset.tests[code].unit if code in ruleset.tests else "U/L"
    return {
        "test": code,
        "value": draw(_values(ruleset, code)),
        "unit": draw(st.sampled_from([own_unit, own_unit, own_unit, *units])),
        "flags": draw(flag_lists),
        "normalized_flags": draw(st.sampled_from([[], ["<"], [">"], ["H"], ["N", "<"]])),
        "stored": draw(st.booleans()),  # carries the driver's parse, as events from the store
    }


def _event(
    spec: dict[str, Any], id_: str, specimen: str, at: datetime, **extra: Any
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "kind": "result",
        "id": id_,
        "patient": "P1",
        "specimen": specimen,
        "test": spec["test"],
        "value": spec["value"],
        "unit": spec["unit"],
        "flags": spec["flags"],
        "at": at.isoformat(),
        "instrument": "an1",
        **extra,
    }
    if spec["stored"]:
        numeric, comparator = _number(spec["value"])
        event["numeric"] = None if numeric is None else str(numeric)
        event["comparator"] = comparator or ""
        event["normalized_flags"] = spec["normalized_flags"]
    return event


def _result(spec: dict[str, Any], specimen: str, at: datetime) -> Result:
    numeric, comparator = _number(spec["value"])
    return Result(
        specimen_id=specimen,
        test_code=spec["test"],
        value=spec["value"],
        numeric=numeric,
        comparator=comparator,
        units=spec["unit"],
        flags=tuple(spec["flags"]),
        normalized_flags=tuple(spec["normalized_flags"]) if spec["stored"] else (),
        measured_at=at,
        instrument="an1",
    )


indices = st.one_of(
    st.sampled_from([9, 10, 11, 19, 20, 21, 29, 30, 31, 199, 200, 201, 1000, 1001]),
    st.integers(min_value=0, max_value=300),
)


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    number = draw(st.sampled_from(range(len(RULESETS))))
    ruleset = RULESETS[number]
    codes = [*ruleset.tests, "ALT"]
    current = draw(results(ruleset, codes))
    previous = draw(st.none() | results(ruleset, [current["test"]]))
    return {
        "ruleset": number,  # an index: a failing example prints short
        "current": current,
        "previous": previous,
        "previous_hours": draw(st.sampled_from([0.5, 20, 24, 47.9, 48, 72, 73, 200, 800])),
        "others": draw(st.lists(results(ruleset, codes), max_size=3)),
        "indices": draw(st.dictionaries(st.sampled_from("hil"), indices)),
        "origin": draw(st.sampled_from(["lab", "poc"])),
    }


def _both_ways(
    ruleset: RuleSet, case: dict[str, Any], pipeline: Pipeline, qc_events: list[dict[str, Any]]
) -> tuple[dict[str, Any], tuple[str, tuple[str, ...]]]:
    current, earlier = case["current"], case["previous"]
    events = list(qc_events)
    previous = None
    if earlier is not None:
        at = T0 - timedelta(hours=case["previous_hours"])
        events.append(_event(earlier, "prev", "S0", at))
        numeric = _number(earlier["value"])[0]
        if numeric is not None:
            previous = Previous(numeric, earlier["unit"], at)
    others = []
    for n, other in enumerate(case["others"]):
        events.append(_event(other, f"o{n}", "S1", T0, origin=case["origin"]))
        others.append(_result(other, "S1", T0))
    events.append(_event(current, "me", "S1", T0, origin=case["origin"], indices=case["indices"]))
    [mine] = [d for d in replay(ruleset, events, **_qc_plan(qc_events)) if d["id"] == "me"]
    context = SpecimenContext(
        others=tuple(others),
        indices={k: Decimal(v) for k, v in case["indices"].items()},
        origin=case["origin"],
    )
    expected = pipeline.decide_result(_result(current, "S1", T0), context, previous)
    return mine, expected


QC_PLAN = QcPlan.model_validate(
    {
        "overdue_hours": 6,
        "targets": [
            {"instrument": "an1", "test": t, "lot": "L1", "level": "1", "mean": 10, "sd": 1}
            for t in ("GLU", "K", "NA", "CREA", "ALB", "TP", "CRP")
        ],
    }
)


def _qc_plan(qc_events: list[dict[str, Any]]) -> dict[str, Any]:
    return {"qc_plan": QC_PLAN} if qc_events else {}


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_replay_decides_as_the_pipeline(case: dict[str, Any]) -> None:
    ruleset = RULESETS[case["ruleset"]]
    mine, expected = _both_ways(ruleset, case, Pipeline(ruleset), [])
    assert (mine["decision"], tuple(mine["reasons"])) == expected


qc_streams = st.lists(
    st.tuples(
        st.sampled_from(["GLU", "K", "ALB", "CRP"]),
        st.integers(min_value=-600, max_value=0),  # minutes before the result
        st.sampled_from(["10", "10.5", "13.5", "7.9"]),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(scenarios(), qc_streams)
def test_replay_with_qc_decides_as_the_pipeline_with_the_monitor(
    case: dict[str, Any], stream: list[tuple[str, int, str]]
) -> None:
    ruleset = RULESETS[case["ruleset"]]
    points = sorted(
        (
            QcPoint("an1", test, "1", "L1", Decimal(value), T0 + timedelta(minutes=minute))
            for test, minute, value in stream
        ),
        key=lambda p: p.at,
    )
    monitor = QcMonitor(QC_PLAN)
    monitor.load(points)
    qc_events = [
        {"kind": "qc", "instrument": p.instrument, "test": p.test, "level": p.level,
         "lot": p.lot, "value": str(p.value), "at": p.at.isoformat()}
        for p in points
    ]  # fmt: skip
    pipeline = dataclasses.replace(Pipeline(ruleset), qc=monitor)
    mine, expected = _both_ways(ruleset, case, pipeline, qc_events)
    assert (mine["decision"], tuple(mine["reasons"])) == expected


def test_every_limit_is_compared_as_the_pipeline_does() -> None:
    """Exhaustive at the boundaries, where `<` for `<=` would hide from random values."""
    for ruleset in RULESETS:
        pipeline = Pipeline(ruleset)
        for code, test in ruleset.tests.items():
            index_limits = [
                limit
                for limit in (
                    (test.specimen_indices.h, test.specimen_indices.i, test.specimen_indices.l)
                    if test.specimen_indices
                    else ()
                )
                if limit is not None
            ]
            cases = [
                {
                    "ruleset": RULESETS.index(ruleset),
                    "current": {
                        "test": code,
                        "value": f"{comparator}{value}",
                        "unit": unit,
                        "flags": [],
                        "normalized_flags": normalized,
                        "stored": stored,
                    },
                    "previous": None,
                    "previous_hours": 1,
                    "others": [],
                    "indices": {
                        name: int(limit) + step for name in "hil" for limit in index_limits
                    },
                    "origin": "lab",
                }
                for value in _limits(ruleset, code)
                for comparator in ("", "<")
                for unit in (test.unit, "mg/dL")
                for normalized, stored in (([], False), ([">"], True))
                for step in (-1, 0, 1)
            ]
            for case in cases:
                mine, expected = _both_ways(ruleset, case, pipeline, [])
                assert (mine["decision"], tuple(mine["reasons"])) == expected, case
