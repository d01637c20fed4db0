"""Replay: past results decided by a rule set, in time order, with history and specimen context."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.validation.replay import ReplayError, compare, read_events, replay
from middleware.validation.ruleset import load_ruleset, load_ruleset_text

ROOT = Path(__file__).resolve().parents[3]
RULES = load_ruleset(ROOT / "config" / "rules" / "example.yaml")


def _result(
    id_: str, patient: str, specimen: str, test: str, value: str, hour: int, **extra: object
) -> dict[str, object]:
    unit = {"CREA": "µmol/L"}.get(test, "mmol/L")
    return {
        "kind": "result",
        "id": id_,
        "patient": patient,
        "specimen": specimen,
        "test": test,
        "value": value,
        "unit": unit,
        "flags": [],
        "at": f"2026-11-20T{hour:02d}:00:00+00:00",
        **extra,
    }


def _decisions(events: list[dict[str, object]]) -> dict[object, tuple[str, tuple[str, ...]]]:
    return {d["id"]: (d["decision"], tuple(d["reasons"])) for d in replay(RULES, events)}


def test_delta_uses_the_patients_previous_specimen_only() -> None:
    events = [
        _result("a", "P1", "S1", "GLU", "5.2", 1),
        _result("b", "P1", "S1", "GLU", "8.0", 2),  # same specimen: a rerun, not a delta
        _result("c", "P1", "S2", "GLU", "12.0", 3),  # previous specimen's last value: 8.0
        _result("d", "P2", "S3", "GLU", "5.0", 4),  # another patient: no history
    ]
    decided = _decisions(events)
    assert decided["a"] == ("autovalidated", ())
    assert decided["b"] == ("autovalidated", ())
    assert decided["c"] == ("held", ("delta_exceeded",))
    assert decided["d"] == ("autovalidated", ())


def test_consistency_rules_see_the_specimens_other_results() -> None:
    alone = _decisions([_result("k", "P1", "S1", "K", "5.6", 1)])
    with_crea = _decisions(
        [_result("c", "P1", "S1", "CREA", "80", 1), _result("k", "P1", "S1", "K", "5.6", 1)]
    )
    assert alone["k"] == ("held", ("rule:k_high_without_creatinine",))
    assert with_crea["k"] == ("autovalidated", ())


def test_bad_lines_are_refused_with_their_line_number() -> None:
    with pytest.raises(ReplayError, match="line 2"):
        list(read_events(['{"kind": "qc"}', "not json"]))
    with pytest.raises(ReplayError, match="line 1"):
        list(replay(RULES, read_events([json.dumps({"kind": "result", "id": 1})])))


def test_compare_counts_changed_decisions_per_test() -> None:
    stricter = load_ruleset_text(
        (ROOT / "config" / "rules" / "example.yaml")
        .read_text()
        .replace(
            "autoverify_range: {low: 3.0, high: 15.0}", "autoverify_range: {low: 3.0, high: 7.0}"
        ),
        "stricter.yaml",
    )
    events = [
        _result(str(n), f"P{n}", f"S{n}", "GLU", value, 1)
        for n, value in enumerate(["5", "9", "14"])
    ]
    events.append(_result("k", "P9", "S9", "K", "4.2", 1, indices={"h": 1}))
    comparison = compare(RULES, stricter, events)
    assert comparison.results == 4
    assert dict(comparison.changed) == {"GLU": 2}
    assert [e["id"] for e in comparison.examples["GLU"]] == ["1", "2"]


values = st.decimals(min_value=1, max_value=30, places=1).map(str)


@given(st.lists(values, min_size=1, max_size=6), st.lists(values, max_size=6))
def test_decisions_do_not_depend_on_unrelated_patients(mine: list[str], others: list[str]) -> None:
    own = [_result(f"m{n}", "ME", f"SM{n}", "GLU", v, n) for n, v in enumerate(mine)]
    noise = [_result(f"o{n}", "OTHER", f"SO{n}", "GLU", v, n) for n, v in enumerate(others)]
    mixed = sorted(own + noise, key=lambda e: str(e["at"]))
    alone = _decisions(own)
    together = _decisions(mixed)
    assert {k: v for k, v in together.items() if str(k).startswith("m")} == alone
    assert _decisions(mixed) == together  # deterministic
