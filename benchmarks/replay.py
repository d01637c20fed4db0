"""Replay benchmark: N results (default 1,000,000) decided by a 50-test rule set, against a loop
that only parses the same JSON lines (the floor), in the same run. Target (validation issue):
1M results in <= 20 s on this machine. Prints one JSON object.

A second pass replays the same results with a QC plan (`--qc`): two control levels per test
every morning before the results, judged by the Westgard rules, and every result given the QC
gate's reasons (some controls are rejected, so results are held again too).

    python benchmarks/replay.py [--results 1000000] [--no-qc]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from middleware.validation.qc_plan import QcPlan  # noqa: E402
from middleware.validation.replay import ReplayStats, read_events, replay  # noqa: E402
from middleware.validation.ruleset import load_ruleset_text  # noqa: E402

TESTS = [f"T{n:02d}" for n in range(50)]


def _ruleset() -> str:
    lines = [
        "name: bench",
        'version: "1"',
        "responsible_biologist: Bench",
        "enabled: true",
        "tests:",
    ]
    for n, code in enumerate(TESTS):
        lines += [
            f"  {code}:",
            "    unit: mmol/L",
            "    reference_interval: {low: 3, high: 7}",
            "    autoverify_range: {low: 2, high: 9}",
            "    critical: {low: 1, high: 12}",
            "    reportable_range: {low: 0.1, high: 50}",
            "    delta: {method: percent, limit: 25, window_hours: 72}"
            if n % 2
            else "    delta: {method: rcv, cva: 2, cvi: 5, window_hours: 72}",
            "    specimen_indices: {h: 50}",
        ]
        if n % 10 == 0:
            lines += [
                "    rules:",
                f"      - {{name: r{n}, when: 'numeric != null and numeric > 8.5'}}",
            ]
    return "\n".join(lines) + "\n"


def _qc_plan() -> QcPlan:
    targets = [
        {"instrument": "chem-1", "test": code, "lot": "L1", "level": level, "mean": 5, "sd": 0.2}
        for code in TESTS
        for level in ("1", "2")
    ]
    return QcPlan.model_validate({"overdue_hours": 24, "targets": targets})


def _controls(day: int, rng: random.Random) -> list[dict[str, object]]:
    return [
        {
            "kind": "qc",
            "instrument": "chem-1",
            "test": code,
            "level": level,
            "lot": "L1",
            "value": round(rng.gauss(5, 0.22), 2),
            "at": f"2026-11-{day:02d}T07:00:00+00:00",
        }
        for code in TESTS
        for level in ("1", "2")
    ]


def _events(count: int, path: Path, qc: bool = False) -> None:
    rng = random.Random(20)
    qc_rng = random.Random(21)
    day = 0
    with path.open("w") as out:
        for n in range(count):
            if qc and 1 + n * 28 // count != day:
                day = 1 + n * 28 // count
                out.writelines(json.dumps(c) + "\n" for c in _controls(day, qc_rng))
            patient = rng.randrange(count // 20 or 1)
            specimen = n // 10
            event = {
                "kind": "result",
                "id": n,
                "patient": f"P{patient}",
                "specimen": f"S{specimen}",
                "test": TESTS[n % 50],
                "value": f"{rng.gauss(5, 1.5):.1f}",
                "unit": "mmol/L",
                "flags": ["N"],
                "at": f"2026-11-{1 + n * 28 // count:02d}T08:00:00+00:00",
                "instrument": "chem-1",
                "origin": "lab",
                "indices": {"h": rng.randrange(60)},
            }
            out.write(json.dumps(event) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", type=int, default=1_000_000)
    parser.add_argument("--no-qc", action="store_true", help="skip the pass with a QC plan")
    args = parser.parse_args()
    ruleset = load_ruleset_text(_ruleset(), "bench.yaml")
    with tempfile.TemporaryDirectory(prefix="labgate-replay-") as tmp:
        path = Path(tmp) / "events.jsonl"
        _events(args.results, path)
        begin = time.perf_counter()
        with path.open() as lines:
            parsed = sum(1 for line in lines if json.loads(line))
        floor = time.perf_counter() - begin
        begin = time.perf_counter()
        with path.open() as lines:
            held = sum(d["decision"] == "held" for d in replay(ruleset, read_events(lines)))
        elapsed = time.perf_counter() - begin
        with_qc: dict[str, object] = {}
        if not args.no_qc:
            path.unlink()
            _events(args.results, path, qc=True)
            stats = ReplayStats()
            begin = time.perf_counter()
            with path.open() as lines:
                for _line in replay(ruleset, read_events(lines), _qc_plan(), stats):
                    pass
            qc_elapsed = time.perf_counter() - begin
            with_qc = {
                "with_qc": {
                    "seconds": round(qc_elapsed, 2),
                    "results_per_s": round(stats.results / qc_elapsed),
                    "qc_points": stats.qc_evaluated,
                    "qc_runs_rejected": stats.qc_runs_rejected,
                    "reheld_by_qc": stats.reheld_by_qc,
                    "held_share": round(stats.held / stats.results, 3),
                }
            }
    print(
        json.dumps(
            {
                "benchmark": "replay",
                "results": parsed,
                "tests_in_rule_set": len(TESTS),
                "seconds": round(elapsed, 2),
                "results_per_s": round(parsed / elapsed),
                "held_share": round(held / parsed, 3),
                "parse_only_seconds": round(floor, 2),
                "parse_only_results_per_s": round(parsed / floor),
                "ratio_to_parse_only": round(floor / elapsed, 3),
                "target_seconds_for_1m": 20,
                "projected_seconds_for_1m": round(elapsed / parsed * 1_000_000, 1),
                **with_qc,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
