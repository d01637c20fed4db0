"""End-to-end benchmark: N simulated analysers x M results through the real labgate daemon to the
simulated LIS, and the same traffic through a store-less relay (the baseline) in the same run.

Two phases per system: `saturated` (every analyser sends back to back: the throughput; latency
there is mostly queueing) and `paced` (each analyser sends one message every --pace seconds, under
capacity: the latency a result sees on a normal day). Latency runs from the analyser starting to
send a message to the LIS receiving it (it acknowledges at once).

Two optional phases answer the issue's other questions:

- `--sustain SECONDS`: every analyser sends back to back for that long (the issue asks for 5
  minutes at 3,000 results/s with 50 analysers); results/s over the whole run and for each
  minute (the slowest minute shows whether the rate holds as the store grows).
- `--backlog RESULTS`: a store holding that many results not yet delivered (an LIS outage of
  a busy day; the issue asks for 1,000,000 drained at 3,000 results/s), a daemon started on
  it, and the time until the LIS has every message. The baseline there is the same ORU
  bytes sent to the same simulated LIS with the same window, with no store and no building.

Prints one JSON object: results/s, latency p50/p99, the process's peak RSS, the same for the
baseline, and labgate/baseline ratios. This machine is shared and noisy: compare ratios, not
absolute numbers, between runs.

    python benchmarks/e2e.py [--analysers 4] [--messages 100] [--results 5] [--pace 0.2]
    python benchmarks/e2e.py --analysers 50 --sustain 300 --backlog 1000000   # the issue's
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
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._support import (  # noqa: E402
    free_ports,
    get_json,
    mllp_pipelined,
    peak_rss_mib,
    start_daemon,
    wait_port,
)
from drivers.models import Patient, Result, SpecimenReport  # noqa: E402
from middleware.config.settings import LisSettings  # noqa: E402
from middleware.lis.oru import build_results_message  # noqa: E402
from middleware.store import IncomingMessage, Store  # noqa: E402
from simulators.analyser import AnalyserSimulator, build_result_message, demo_results  # noqa: E402
from simulators.lis import LisSimulator  # noqa: E402


async def _drive(
    ports: list[int],
    lis: LisSimulator,
    messages: int,
    results: int,
    pace: float,
    tag: str,
    for_seconds: float = 0.0,
) -> dict[str, Any]:
    """Send `messages` messages from each analyser (one analyser per port) and time them; with
    `for_seconds`, as many as each analyser can send in that time instead."""
    started: dict[str, float] = {}
    already = len(lis.delivered)
    sent = [0] * len(ports)
    until = time.time() + for_seconds

    async def analyser(index: int, port: int) -> None:
        rng = random.Random(index)
        sim = AnalyserSimulator("127.0.0.1", port)
        await sim.connect()
        if pace:
            # Analysers on a bench are not in step: spread their first message over one
            # period, as a steady rate would (in step, each period starts with a burst).
            await asyncio.sleep(rng.uniform(0, pace))
        try:
            for number in range(10**7 if for_seconds else messages):
                if for_seconds and time.time() >= until:
                    break
                sent[index] += 1
                specimen = f"{tag}{index:02d}{number:06d}"
                message = build_result_message(specimen, f"P{number}", demo_results(results, rng))
                started[specimen] = time.time()
                if not await sim.send(message):
                    raise RuntimeError(f"analyser {index} could not send {specimen}")
                if pace:
                    await asyncio.sleep(pace)
        finally:
            await sim.close()

    begin = time.time()
    await asyncio.gather(*(analyser(i, port) for i, port in enumerate(ports)))
    total = sum(sent)
    received = (await lis.wait_for(already + total, timeout=600))[already:]
    end = max(m.received_at.timestamp() for m in received)
    minutes: list[float] = []
    if for_seconds >= 60:
        # Results the LIS received in each whole minute of the run.
        counts = [0] * int((end - begin) // 60)
        for m in received:
            slot = int((m.received_at.timestamp() - begin) // 60)
            if slot < len(counts):
                counts[slot] += results
        minutes = [round(c / 60, 1) for c in counts]
    latencies = sorted(
        (m.received_at.timestamp() - started[m.parsed.observations[0].specimen_id]) * 1000
        for m in received
        if m.parsed is not None
    )
    q = statistics.quantiles(latencies, n=100)
    figures: dict[str, Any] = {
        "messages": total,
        "results": total * results,
        "seconds": round(end - begin, 1),
        "results_per_s": round(total * results / (end - begin), 1),
        "latency_ms_p50": round(q[49], 2),
        "latency_ms_p99": round(q[98], 2),
    }
    if minutes:
        figures["results_per_s_each_minute"] = minutes
        figures["results_per_s_slowest_minute"] = min(minutes)
    return figures


async def _phases(
    ports: list[int], lis: LisSimulator, args: argparse.Namespace, pid: int, sustain: float
) -> dict[str, Any]:
    messages, results, pace = args.messages, args.results, args.pace
    saturated = await _drive(ports, lis, messages, results, 0.0, "S")
    paced = await _drive(ports, lis, max(10, messages // 4), results, pace, "P")
    figures: dict[str, Any] = {"saturated": saturated, "paced": paced}
    if sustain:
        figures["sustained"] = await _drive(ports, lis, 0, results, 0.0, "L", sustain)
    figures["peak_rss_mib"] = peak_rss_mib(pid)
    return figures


def _daemon_config(
    url: str, api_port: int, lis_port: int, args: argparse.Namespace, ports: list[int]
) -> list[str]:
    """The daemon's configuration: the store, the simulated LIS with the window, and one ASTM
    analyser `an-N` listening on each of `ports`."""
    lines = [
        "store:",
        f"  url: {url}",
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
    return lines


async def _run_labgate(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    lis = LisSimulator(fast_ack=True)
    lis_port = await lis.start()
    api_port, *ports = free_ports(args.analysers + 1)
    lines = _daemon_config(f"sqlite:///{workdir / 'bench.db'}", api_port, lis_port, args, ports)
    daemon = start_daemon(workdir, lines)
    try:
        await wait_port(api_port, daemon)
        figures = await _phases(ports, lis, args, daemon.pid, args.sustain)
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
        # Not the sustained phase: its ratio is the saturated phase's.
        return await _phases(ports, lis, args, relay.pid, 0.0)
    finally:
        relay.terminate()
        relay.wait(30)
        await lis.close()


def _backlog_message(number: int, results: int, received_at: datetime) -> IncomingMessage:
    """A message as the daemon stores it from an analyser: one specimen, `results` results,
    owed to the LIS (held: no rule set; the sender does not look)."""
    drawn = demo_results(results, random.Random(number))
    specimen = f"B{number:08d}"
    report = SpecimenReport(
        specimen,
        Patient(f"P{number % 5000}", "DUPONT", "Marie"),
        tuple(
            Result(
                specimen_id=specimen,
                test_code=r.code,
                value=r.value,
                numeric=Decimal(r.value),
                units=r.units,
                reference_range=r.reference_range,
                flags=(r.flag,),
                status="F",
                measured_at=received_at,
                instrument="an-0",
                sequence=sequence,
            )
            for sequence, r in enumerate(drawn, start=1)
        ),
    )
    return IncomingMessage(
        message_id=f"backlog-{number:08d}",
        connection="an-0",
        protocol="astm",
        received_at=received_at,
        raw=build_result_message(specimen, report.patient.patient_id, drawn),
        reports=(report,),
        decisions=(("held", ("no_rule",)),) * results,
        lis="lis",
    )


def _fill_backlog(url: str, messages: int, results: int) -> float:
    """Store `messages` undelivered messages (in transactions of 500); seconds taken."""
    begin = time.perf_counter()
    store = Store.open(url)
    received_at = datetime.now(UTC)
    try:
        for start in range(0, messages, 500):
            batch = [
                _backlog_message(n, results, received_at)
                for n in range(start, min(messages, start + 500))
            ]
            refused = [o for o in store.save_messages(batch) if isinstance(o, Exception)]
            if refused:
                raise SystemExit(f"the backlog could not be stored: {refused[0]}")
    finally:
        store.close()
    return time.perf_counter() - begin


async def _backlog_baseline(messages: int, results: int, window: int) -> float:
    """Messages/s of the same kind of ORU bytes, built beforehand, sent to the same simulated
    LIS with the same window: the drain with no store, no reading and no building."""
    lis = LisSimulator(fast_ack=True)
    port = await lis.start()
    settings = LisSettings(port=port)
    now = datetime.now(UTC)
    payloads = [
        build_results_message(settings, f"C{n:08d}", m.reports, m.decisions, now)
        for n in range(messages)
        for m in (_backlog_message(n, results, now),)
    ]
    try:
        return await mllp_pipelined(port, payloads, window)
    finally:
        await lis.close()


async def _run_backlog(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Fill a store with `--backlog` results owed to the LIS, start the daemon on it with the
    LIS up, and time the drain."""
    messages = -(-args.backlog // args.results)
    url = f"sqlite:///{workdir / 'backlog.db'}"
    fill_seconds = await asyncio.to_thread(_fill_backlog, url, messages, args.results)
    lis = LisSimulator(fast_ack=True)
    lis_port = await lis.start()
    api_port, port = free_ports(2)
    started = time.time()
    daemon = start_daemon(workdir, _daemon_config(url, api_port, lis_port, args, [port]))
    try:
        received = await lis.wait_for(messages, timeout=3600)
        first = min(m.received_at.timestamp() for m in received)
        last = max(m.received_at.timestamp() for m in received)
        rss = peak_rss_mib(daemon.pid)
    finally:
        daemon.terminate()
        daemon.wait(30)
        await lis.close()
    baseline_messages = min(messages, 20_000)
    baseline = await _backlog_baseline(baseline_messages, args.results, args.window)
    drain = messages / (last - first)
    return {
        "results": messages * args.results,
        "messages": messages,
        "fill_seconds": round(fill_seconds, 1),
        "seconds_from_daemon_start": round(last - started, 1),
        "seconds_first_to_last": round(last - first, 1),
        "results_per_s": round(drain * args.results, 1),
        "peak_rss_mib": rss,
        "baseline_results_per_s": round(baseline * args.results, 1),
        "baseline_messages": baseline_messages,
        "ratio": _ratio(drain, baseline),
    }


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
    parser.add_argument(
        "--sustain", type=float, default=0.0, help="seconds of back-to-back sending (0: none)"
    )
    parser.add_argument(
        "--backlog", type=int, default=0, help="results waiting for the LIS to drain (0: none)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="labgate-bench-") as tmp:
        labgate = await _run_labgate(args, Path(tmp))
    backlog = None
    if args.backlog:
        with tempfile.TemporaryDirectory(prefix="labgate-backlog-") as tmp:
            backlog = await _run_backlog(args, Path(tmp))
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
    if "sustained" in labgate:
        report["ratio"]["sustained_throughput"] = _ratio(
            labgate["sustained"]["results_per_s"], bs["results_per_s"]
        )
    if backlog is not None:
        report["backlog"] = backlog
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
