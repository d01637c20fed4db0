"""Live pipeline benchmark: how long `Pipeline.decide_report` takes per patient result.

Specimens of a chemistry panel (GLU, K, NA, CREA and a test without rules) are decided with the
example rule set (`config/rules/example.yaml`), most tests with the patient's previous result
for the delta check, then again with the QC gate on (a `QcMonitor` holding a month of
controls). The baseline is the same loop with `Pipeline(None)` (no rule set: every result held
`no_rule`), in the same run. Latency per result = one `decide_report` call / results in it.
Target (validation issue): <= 1 ms added at p99 per result. Prints one JSON object.

    python benchmarks/pipeline.py [--specimens 20000]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drivers.models import Patient, Result, SpecimenReport  # noqa: E402
from middleware.pipeline import Pipeline  # noqa: E402
from middleware.validation.delta import Previous  # noqa: E402
from middleware.validation.qc_monitor import QcMonitor  # noqa: E402
from middleware.validation.qc_plan import QcPlan  # noqa: E402
from middleware.validation.ruleset import load_ruleset  # noqa: E402
from middleware.validation.westgard import QcPoint  # noqa: E402

# test code -> (unit, mean, SD) of patient values: mostly inside the auto-validation ranges.
PANEL = {
    "GLU": ("mmol/L", 5.5, 1.5),
    "K": ("mmol/L", 4.3, 0.5),
    "NA": ("mmol/L", 140.0, 3.0),
    "CREA": ("µmol/L", 85.0, 25.0),
    "ALT": ("U/L", 30.0, 10.0),  # no rule: held no_rule
}
T0 = datetime(2026, 11, 1, tzinfo=UTC)
WARM_UP = 500


def _specimens(count: int) -> list[tuple[SpecimenReport, dict[str, Previous]]]:
    rng = random.Random(7)
    out = []
    for n in range(count):
        at = T0 + timedelta(days=28, minutes=n % 600)
        results = []
        previous = {}
        for sequence, (code, (unit, mean, sd)) in enumerate(PANEL.items(), 1):
            value = Decimal(f"{rng.gauss(mean, sd):.1f}")
            flags = ("H",) if value > Decimal(str(mean + 2 * sd)) else ("N",)
            results.append(
                Result(
                    specimen_id=f"S{n}",
                    test_code=code,
                    value=str(value),
                    numeric=value,
                    units=unit,
                    flags=flags,
                    normalized_flags=flags,
                    measured_at=at,
                    instrument="chem-1",
                    sequence=sequence,
                )
            )
            if rng.random() < 0.7:
                earlier = Decimal(f"{float(value) * rng.uniform(0.8, 1.2):.1f}")
                previous[code] = Previous(earlier, unit, at - timedelta(hours=rng.uniform(2, 60)))
        patient = Patient(f"P{n}", "DOE", "Jane")
        out.append((SpecimenReport(f"S{n}", patient, tuple(results)), previous))
    return out


def _monitor() -> QcMonitor:
    targets = [
        {"instrument": "chem-1", "test": code, "lot": "L1", "level": level, "mean": 10, "sd": 1}
        for code in PANEL
        for level in ("1", "2")
    ]
    monitor = QcMonitor(QcPlan.model_validate({"overdue_hours": 24, "targets": targets}))
    rng = random.Random(8)
    points = [
        QcPoint("chem-1", code, level, "L1", Decimal(f"{rng.gauss(10, 1):.2f}"), T0 + at)
        for day in range(29)
        for hour in (7, 15)
        for code in PANEL
        for level in ("1", "2")
        if (at := timedelta(days=day, hours=hour))
    ]
    monitor.load(points)
    return monitor


def _measure(
    pipeline: Pipeline, specimens: list[tuple[SpecimenReport, dict[str, Previous]]]
) -> dict[str, Any]:
    per_result: list[float] = []
    decisions = 0
    held = 0
    clock = time.perf_counter_ns
    for index, (report, previous) in enumerate(specimens):
        begin = clock()
        decided = pipeline.decide_report(report, previous)
        elapsed = clock() - begin
        if index >= WARM_UP:
            per_result.append(elapsed / 1000 / len(report.results))
        decisions += len(decided)
        held += sum(decision != "autovalidated" for decision, _ in decided)
    per_result.sort()
    return {
        "p50_us": round(statistics.median(per_result), 1),
        "p99_us": round(per_result[int(len(per_result) * 0.99)], 1),
        "max_us": round(per_result[-1], 1),
        "mean_us": round(statistics.fmean(per_result), 1),
        "held_share": round(held / decisions, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--specimens", type=int, default=20_000)
    args = parser.parse_args()
    ruleset = load_ruleset(ROOT / "config" / "rules" / "example.yaml")
    specimens = _specimens(args.specimens + WARM_UP)
    with_rules = Pipeline(ruleset)
    with_qc = dataclasses.replace(with_rules, qc=_monitor())
    gc.collect()
    baseline = _measure(Pipeline(None), specimens)
    rules = _measure(with_rules, specimens)
    qc = _measure(with_qc, specimens)
    print(
        json.dumps(
            {
                "benchmark": "pipeline",
                "specimens": args.specimens,
                "results_per_specimen": len(PANEL),
                "with_previous_share": 0.7,
                "baseline_no_rule_set": baseline,
                "example_rule_set": rules,
                "example_rule_set_and_qc_gate": qc,
                # max is one call among 20,000: a garbage collection or a scheduler pause, noise
                "added_p50_us_per_result": round(qc["p50_us"] - baseline["p50_us"], 1),
                "added_p99_us_per_result": round(qc["p99_us"] - baseline["p99_us"], 1),
                "target_added_p99_us": 1000,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
