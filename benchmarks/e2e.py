"""End-to-end benchmark: N simulated analysers x M results through the real labgate daemon to the
simulated LIS, and the same traffic through a store-less relay (the baseline) in the same run.

Two phases per system: `saturated` (every analyser sends back to back: the throughput; latency
there is mostly queueing) and `paced` (each analyser sends one message every --pace seconds, under
capacity: the latency a result sees on a normal day). Latency runs from the analyser starting to
send a message to the LIS receiving it (it acknowledges at once).

Prints one JSON object: results/s, latency p50/p99, the process's peak RSS, the same for the
baseline, and labgate/baseline ratios. This machine is shared and noisy: compare ratios, not
absolute numbers, between runs.

    python benchmarks/e2e.py [--analysers 4] [--messages 100] [--results 5] [--pace 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._support import free_ports, get_json, peak_rss_mib, wait_port  # noqa: E402
from simulators.analyser import AnalyserSimulator, build_result_message, demo_results  # noqa: E402
from simulators.lis import LisSimulator  # noqa: E402


async def _drive(
    ports: list[int], lis: LisSimulator, messages: int, results: int, pace: float, tag: str
) -> dict[str, float]:
    """Send `messages` messages from each analyser (one analyser per port) and time them."""
    started: dict[str, float] = {}
    already = len(lis.delivered)

    async def analyser(index: int, port: int) -> None:
        rng = random.Random(index)
        sim = AnalyserSimulator("127.0.0.1", port)
        await sim.connect()
        if pace:
            # Analysers on a bench are not in step: spread their first message over one
            # period, as a steady rate would (in step, each period starts with a burst).
            await asyncio.sleep(rng.uniform(0, pace))
        try:
            for number in range(messages):
                specimen = f"{tag}{index:02d}{number:06d}"
                message = build_result_message(specimen, f"P{number}", demo_results(results, rng))
                started[specimen] = time.time()
                if not await sim.send(message):
                    raise RuntimeError(f"analyser {index} could not send {specimen}")
                if pace:
                    await asyncio.sleep(pace)
        finally:
            await sim.close()

    total = len(ports) * messages
    begin = time.time()
    await asyncio.gather(*(analyser(i, port) for i, port in enumerate(ports)))
    received = (await lis.wait_for(already + total, timeout=600))[already:]
    end = max(m.received_at.timestamp() for m in received)
    latencies = sorted(
        (m.received_at.timestamp() - started[m.parsed.observations[0].specimen_id]) * 1000
        for m in received
        if m.parsed is not None
    )
    q = statistics.quantiles(latencies, n=100)
    return {
        "messages": total,
        "results": total * results,
        "results_per_s": round(total * results / (end - begin), 1),
        "latency_ms_p50": round(q[49], 2),
        "latency_ms_p99": round(q[98], 2),
    }


async def _phases(
    ports: list[int], lis: LisSimulator, messages: int, results: int, pace: float, pid: int
) -> dict[str, Any]:
    saturated = await _drive(ports, lis, messages, results, 0.0, "S")
    paced = await _drive(ports, lis, max(10, messages // 4), results, pace, "P")
    return {"saturated": saturated, "paced": paced, "peak_rss_mib": peak_rss_mib(pid)}


async def _run_labgate(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    lis = LisSimulator(fast_ack=True)
    lis_port = await lis.start()
    api_port, *ports = free_ports(args.analysers + 1)
    lines = [
        "store:",
        f"  url: sqlite:///{workdir / 'bench.db'}",
        "api:",
        f"  port: {api_port}",
        "lis:",
        f"  port: {lis_port}",
        f"  window: {args.window}",
        "instruments:",
    ]
    for i, port in enumerate(ports):
        lines += [
            f"  - name: an-{i}",
            "    protocol: astm",
            "    transport:",
            "      type: tcp-server",
            f"      port: {port}",
        ]
    config = workdir / "bench.yaml"
    config.write_text("\n".join(lines) + "\n")
    command = [sys.executable, "-m", "middleware", "run", "--config", str(config), "--json-logs"]
    daemon = subprocess.Popen(
        [*command, "--log-level", "warning"],
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_port(api_port, daemon)
        figures = await _phases(ports, lis, args.messages, args.results, args.pace, daemon.pid)
        health = await asyncio.to_thread(get_json, f"http://127.0.0.1:{api_port}/api/health")
        figures["errors"] = sum(c["errors"] for c in health["connections"])
        figures["connections"] = len(health["connections"]) - 1  # less the LIS
        return figures
    finally:
        daemon.terminate()
        daemon.wait(30)
        await lis.close()


async def _run_baseline(args: argparse.Namespace) -> dict[str, Any]:
    lis = LisSimulator(fast_ack=True)
    lis_port = await lis.start()
    [port] = free_ports(1)
    relay = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "baseline_relay.py"), str(port), str(lis_port)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
    )
    try:
        await wait_port(port, relay)
        ports = [port] * args.analysers
        return await _phases(ports, lis, args.messages, args.results, args.pace, relay.pid)
    finally:
        relay.terminate()
        relay.wait(30)
        await lis.close()


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--analysers", type=int, default=4)
    parser.add_argument("--messages", type=int, default=100, help="messages per analyser")
    parser.add_argument("--results", type=int, default=5, help="results per message")
    parser.add_argument("--pace", type=float, default=0.2, help="seconds between messages, paced")
    parser.add_argument(
        "--window", type=int, default=64, help="labgate's LIS window (1: stop-and-wait)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="labgate-bench-") as tmp:
        labgate = await _run_labgate(args, Path(tmp))
    baseline = await _run_baseline(args)
    ls, bs = labgate["saturated"], baseline["saturated"]
    lp, bp = labgate["paced"], baseline["paced"]
    report = {
        "benchmark": "e2e",
        "analysers": args.analysers,
        "messages_per_analyser": args.messages,
        "results_per_message": args.results,
        "pace_s": args.pace,
        "lis_window": args.window,
        "labgate": labgate,
        "baseline": baseline,
        "ratio": {
            "throughput": _ratio(ls["results_per_s"], bs["results_per_s"]),
            "paced_latency_p50": _ratio(lp["latency_ms_p50"], bp["latency_ms_p50"]),
            "paced_latency_p99": _ratio(lp["latency_ms_p99"], bp["latency_ms_p99"]),
            "peak_rss": _ratio(labgate["peak_rss_mib"], baseline["peak_rss_mib"]),
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
