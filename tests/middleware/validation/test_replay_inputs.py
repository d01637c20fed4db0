"""Replay inputs at the edges: times without offset, values that are not finite numbers, results
without a patient, reruns on one specimen, the driver's parse carried by stored events, and the
patients' history swept on long replays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from middleware.validation.delta import DeltaRule, limits
from middleware.validation.replay import _PatientHistory, replay
from middleware.validation.ruleset import load_ruleset

ROOT = Path(__file__).resolve().parents[3]
RULES = load_ruleset(ROOT / "config" / "rules" / "example.yaml")


def result(
    id_: str, specimen: str, value: str, at: str, patient: str = "P1", **extra: Any
) -> dict[str, Any]:
    return {
        "kind": "result",
        "id": id_,
        "patient": patient,
        "specimen": specimen,
        "test": "GLU",
        "value": value,
        "unit": "mmol/L",
        "at": at,
        **extra,
    }


def _reasons(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    return {line["id"]: line["reasons"] for line in replay(RULES, events)}


def test_a_time_without_offset_is_utc() -> None:
    decided = _reasons(
        [
            result("a", "S1", "5.0", "2026-11-20T08:00:00"),
            result("b", "S2", "8.0", "2026-11-20T09:00:00+00:00"),
        ]
    )
    assert decided["b"] == ["delta_exceeded"]


def test_values_that_are_not_finite_numbers_are_not_numeric() -> None:
    decided = _reasons(
        [result(v, f"S{v}", v, "2026-11-20T08:00:00Z", patient=v) for v in ("NaN", "-Infinity")]
    )
    assert decided == {"NaN": ["non_numeric"], "-Infinity": ["non_numeric"]}


def test_results_without_a_patient_have_no_history() -> None:
    decided = _reasons(
        [
            result("a", "S1", "5.0", "2026-11-20T08:00:00Z", patient=""),
            result("b", "S2", "8.0", "2026-11-20T09:00:00Z", patient=""),
        ]
    )
    assert decided["b"] == []


def test_a_rerun_is_compared_with_the_previous_specimen_not_with_its_own() -> None:
    decided = _reasons(
        [
            result("a", "S0", "5.0", "2026-11-20T08:00:00Z"),
            result("b", "S1", "5.1", "2026-11-20T09:00:00Z"),
            result("c", "S1", "8.0", "2026-11-20T09:30:00Z"),  # rerun of S1
        ]
    )
    assert decided == {"a": [], "b": [], "c": ["delta_exceeded"]}  # 8.0 against 5.0


def test_stored_events_are_decided_on_the_drivers_parse() -> None:
    stored = result("a", "S1", "5,5", "2026-11-20T08:00:00Z", numeric="5.5", comparator="")
    censored = result("b", "S2", "<0.5", "2026-11-20T08:00:00Z", numeric="0.5", comparator="<")
    unparsed = result("c", "S3", "5.5", "2026-11-20T08:00:00Z", numeric=None)
    decided = _reasons([stored, censored, unparsed])
    assert decided["a"] == []
    assert decided["b"][0] == "outside_reportable_range"
    assert decided["c"] == ["non_numeric"]


def test_the_history_sweep_keeps_what_a_window_reaches() -> None:
    history = _PatientHistory(timedelta(hours=10))
    history.sweep_above = 4
    t0 = datetime(2026, 11, 20, tzinfo=UTC)
    value = Decimal(5)
    history.previous("old\x00GLU", "S0", value, "mmol/L", t0)
    history.previous("kept\x00GLU", "S1", value, "mmol/L", t0 + timedelta(hours=15))
    for n in range(5):
        history.previous(f"p{n}\x00GLU", f"X{n}", value, "mmol/L", t0 + timedelta(hours=20))
    assert "old\x00GLU" not in history.seen and "kept\x00GLU" in history.seen
    earlier = history.previous("kept\x00GLU", "S2", value, "mmol/L", t0 + timedelta(hours=21))
    assert earlier is not None and earlier.at == t0 + timedelta(hours=15)


def test_cached_rcv_limits_are_the_computed_ones() -> None:
    window = timedelta(hours=1)
    first = limits(DeltaRule("rcv", window, cva=Decimal("5.2"), cvi=Decimal("42.2")))
    again = limits(DeltaRule("rcv", window, cva=Decimal("5.2"), cvi=Decimal("42.2")))
    assert first == again and round(first[1], 1) == Decimal("117.9")
    lognormal = limits(DeltaRule("rcv_lognormal", window, cva=5.2, cvi=42.2))
    assert lognormal != first and round(lognormal[0]) == -68
    # Equal parameters written differently keep their own Decimals (no shared cache entry).
    one = limits(DeltaRule("rcv", window, cva=Decimal("1"), cvi=Decimal("1")))
    one_point_zero = limits(DeltaRule("rcv", window, cva=Decimal("1.0"), cvi=Decimal("1.0")))
    assert one == one_point_zero
    assert str(one_point_zero[1]) == str(
        Decimal(2).sqrt() * Decimal("1.96") * (Decimal("1.0") ** 2 + Decimal("1.0") ** 2).sqrt()
    )
