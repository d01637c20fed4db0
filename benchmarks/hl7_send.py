"""HL7 sending benchmark: how fast labgate's LIS sender drains its outbox to the simulated LIS,
against a bare MLLP echo over the same loopback in the same run.

labgate: N stored messages (5 results each) in a real SQLite outbox (WAL, synchronous=FULL); the
sender builds each ORU^R01, sends it over MLLP and commits the outcomes, first stop-and-wait
(`window: 1`, one commit per message), then with `--window` messages in flight (ACKs matched by
MSA-2, a batch's outcomes in one commit). The simulated LIS answers in its `fast_ack` mode (ACK
built from the MSH line; results read only if asked), so that the figure is the sender's.
baseline: the same ORU bytes sent to an MLLP echo server, no store, no build, no ACK parsing;
stop-and-wait and with the same window.
Prints one JSON object with messages/s for each and the ratios labgate / echo. The issue's
target is 3,000 messages/s with the window.

    python benchmarks/hl7_send.py [--messages 2000] [--window 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402

from benchmarks._support import mllp_pipelined  # noqa: E402
from drivers.models import Patient, Result, SpecimenReport  # noqa: E402
from middleware.config.settings import LisSettings  # noqa: E402
from middleware.health import ConnectionHealth, Health  # noqa: E402
from middleware.lis.oru import build_results_message  # noqa: E402
from middleware.lis.sender import LisSender  # noqa: E402
from middleware.store import IncomingMessage, Store  # noqa: E402
from simulators.lis import LisSimulator  # noqa: E402

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def _incoming(number: int) -> IncomingMessage:
    results = tuple(
        Result(
            specimen_id=f"S{number:06d}",
            test_code=f"T{i}",
            value=f"{i}.5",
            numeric=Decimal(f"{i}.5"),
            units="mmol/L",
            reference_range="1 to 9",
            flags=("N",),
            instrument="bench",
            sequence=i,
        )
        for i in range(1, 6)
    )
    report = SpecimenReport(f"S{number:06d}", Patient(f"P{number}", "DUPONT", "Marie"), results)
    return IncomingMessage(
        message_id=f"m{number}",
        connection="bench",
        protocol="astm",
        received_at=NOW,
        raw=b"-",
        reports=(report,),
        decisions=(("held", ("no_rule",)),) * 5,
        lis="lis",
    )


async def _labgate(count: int, window: int, workdir: Path) -> float:
    """Messages/s for the sender draining `count` stored messages to the simulated LIS."""
    store = Store.open(f"sqlite:///{workdir / f'hl7-{window}.db'}")
    for number in range(count):
        store.save_message(_incoming(number))
    lis = LisSimulator(fast_ack=True)
    port = await lis.start()
    health = Health()
    health.add(ConnectionHealth("lis", "hl7", "mllp-client", ""))
    sender = LisSender(LisSettings(port=port, window=window), store, health)
    begin = time.perf_counter()
    task = asyncio.create_task(sender.run())
    await lis.wait_for(count, timeout=600)
    # Counted once every outcome is durable, not at the last ACK (bounded: 10 minutes).
    for _ in range(120_000):
        if not await store.read(store.outbox_depth, "lis"):
            break
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - begin
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await lis.close()
    received = len(lis.received)
    store.close()
    if received != count:
        raise SystemExit(f"the LIS received {received} messages for {count} sent: not a clean run")
    return count / elapsed


async def _echo(count: int, window: int) -> float:
    """Messages/s of the same bytes through a bare MLLP echo, `window` frames in flight."""
    lis = LisSettings(port=1)
    payloads = [
        build_results_message(
            lis, f"C{n:08d}", (_incoming(n).reports[0],), (("held", ()),) * 5, NOW
        )
        for n in range(count)
    ]

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await mllp_pipelined(port, payloads, window)
    finally:
        server.close()
        await server.wait_closed()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--window", type=int, default=64)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    count, window = args.messages, args.window
    with tempfile.TemporaryDirectory(prefix="labgate-hl7-") as tmp:
        # Stop-and-wait commits once per message: fewer messages keep the run short.
        stop_and_wait = await _labgate(max(1, count // 4), 1, Path(tmp))
        pipelined = await _labgate(count, window, Path(tmp))
    echo_1 = await _echo(count, 1)
    echo_w = await _echo(count, window)
    print(
        json.dumps(
            {
                "benchmark": "hl7_send",
                "messages": count,
                "results_per_message": 5,
                "window": window,
                "labgate_window_1_messages_per_s": round(stop_and_wait, 1),
                "labgate_window_messages_per_s": round(pipelined, 1),
                "baseline_mllp_echo_window_1_messages_per_s": round(echo_1, 1),
                "baseline_mllp_echo_window_messages_per_s": round(echo_w, 1),
                "ratio_window_1": round(stop_and_wait / echo_1, 4),
                "ratio_window": round(pipelined / echo_w, 4),
                "target_messages_per_s": 3000,
                "target_met": pipelined >= 3000,
                "note": (
                    "window 1 measured on a quarter of the messages; the LIS simulator in "
                    "fast_ack mode; echo = same bytes, no store, no build, no ACK parsing"
                ),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
