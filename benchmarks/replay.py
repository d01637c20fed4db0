"""Replay benchmark: N results (default 1,000,000) decided by a 50-test rule set, against a loop
that only parses the same JSON lines (the floor), in the same run. Target (validation issue):
1M results in <= 20 s on this machine. Prints one JSON object.

    python benchmarks/replay.py [--results 1000000]
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

from middleware.validation.replay import read_events, replay  # noqa: E402
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


def _events(count: int, path: Path) -> None:
    rng = random.Random(20)
    with path.open("w") as out:
        for n in range(count):
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
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
