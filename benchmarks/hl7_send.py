"""HL7 sending benchmark: how fast labgate's LIS sender drains its outbox to the simulated LIS,
against a bare MLLP echo over the same loopback in the same run.

labgate: N stored messages (5 results each) in a real SQLite outbox; the sender builds each
ORU^R01, sends it over MLLP, waits for the LIS's ACK and commits the outcome, one at a time.
baseline: the same ORU bytes sent to an MLLP echo server, stop-and-wait, no store, no build.
Prints one JSON object with messages/s for both and the ratio. The issue's target (3,000/s with
pipelining) is not met yet: see the note printed with the figures.

    python benchmarks/hl7_send.py [--messages 400]
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

from drivers.models import Patient, Result, SpecimenReport  # noqa: E402
from middleware.config.settings import LisSettings  # noqa: E402
from middleware.health import ConnectionHealth, Health  # noqa: E402
from middleware.lis.oru import build_results_message  # noqa: E402
from middleware.lis.sender import LisSender  # noqa: E402
from middleware.store import IncomingMessage, Store  # noqa: E402
from protocols.hl7 import MllpFramer, mllp_frame  # noqa: E402
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


async def _labgate(count: int, workdir: Path) -> float:
    store = Store.open(f"sqlite:///{workdir / 'hl7.db'}")
    for number in range(count):
        store.save_message(_incoming(number))
    lis = LisSimulator()
    port = await lis.start()
    health = Health()
    health.add(ConnectionHealth("lis", "hl7", "mllp-client", ""))
    sender = LisSender(LisSettings(port=port), store, health)
    begin = time.perf_counter()
    task = asyncio.create_task(sender.run())
    await lis.wait_for(count, timeout=600)
    elapsed = time.perf_counter() - begin
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await lis.close()
    store.close()
    return count / elapsed


async def _echo_baseline(count: int) -> float:
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
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    framer = MllpFramer()
    begin = time.perf_counter()
    for payload in payloads:
        writer.write(mllp_frame(payload))
        while framer.next_message() is None:
            framer.receive_data(await reader.read(65536))
    elapsed = time.perf_counter() - begin
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return count / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=400)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory(prefix="labgate-hl7-") as tmp:
        labgate = await _labgate(args.messages, Path(tmp))
    baseline = await _echo_baseline(args.messages)
    print(
        json.dumps(
            {
                "benchmark": "hl7_send",
                "messages": args.messages,
                "labgate_messages_per_s": round(labgate, 1),
                "baseline_mllp_echo_messages_per_s": round(baseline, 1),
                "ratio": round(labgate / baseline, 3),
                "target_messages_per_s": 3000,
                "note": "stop-and-wait, a commit per message; no pipelining yet",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
