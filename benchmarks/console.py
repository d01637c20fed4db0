"""Console page times with a large store: every page and the main API reads, with 100,000
stored results (a third of them held for review), timed in process through the ASGI app
(server time: what the store and the templates cost, without the network). Prints JSON; the
target is under 1 s for every page.

    .venv/bin/python benchmarks/console.py [--results 100000] [--repeat 5] [--url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drivers.models import Patient, PreviousResult, Result, SpecimenReport  # noqa: E402
from middleware.config import load_settings_text  # noqa: E402
from middleware.health import ConnectionHealth, Health  # noqa: E402
from middleware.store import IncomingMessage, Store  # noqa: E402
from middleware.web.app import create_app  # noqa: E402

RESULTS_PER_MESSAGE = 10
TESTS = ["GLU", "NA", "K", "CL", "CREA", "UREA", "ALT", "AST", "CRP", "HGB"]
PASSWORD = "benchmark password"
PAGES = [
    "/",
    "/fragments/dashboard",
    "/results",
    "/results?view=all",
    "/rules",
    "/trace?patient=P00042",
    "/devices",
    "/outbox",
    "/audit",
    "/users",
    "/qc?period=90",
    "/rules/edit",
    "/account",
    "/api/qc?period=90",
    "/api/dashboard",
    "/api/results?decision=held",
]


def message(number: int, start: datetime) -> IncomingMessage:
    at = start + timedelta(seconds=number)
    specimen = f"S{number:07d}"
    results = tuple(
        Result(
            specimen_id=specimen,
            test_code=code,
            value=f"{4 + (number + index) % 7}.{index}",
            numeric=Decimal(f"{4 + (number + index) % 7}.{index}"),
            units="mmol/L",
            flags=("H",) if index == 0 else ("N",),
            instrument=f"chem-{number % 4 + 1}",
            sequence=index + 1,
            measured_at=at,
            previous=PreviousResult("5.0", "mmol/L", at - timedelta(days=2)) if index < 3 else None,
        )
        for index, code in enumerate(TESTS[:RESULTS_PER_MESSAGE])
    )
    decisions = tuple(
        ("held", ("delta_exceeded",)) if (number + index) % 3 == 0 else ("autovalidated", ())
        for index in range(len(results))
    )
    return IncomingMessage(
        message_id=f"bench-{number}",
        connection=f"chem-{number % 4 + 1}",
        protocol="astm",
        received_at=at,
        raw=b"\x021H|\\^&\r" + specimen.encode() + b"\r\x03AA\r\n",
        reports=(
            SpecimenReport(specimen, Patient(f"P{number % 5000:05d}", "DUPONT", "M"), results),
        ),
        decisions=decisions,
        lis="lis",
        ruleset="chemistry 1",
        biologist="Dr A",
    )


async def fill(store: Store, results: int) -> float:
    started = time.perf_counter()
    start = datetime.now(UTC) - timedelta(days=30)
    messages = results // RESULTS_PER_MESSAGE
    chunk = 1000
    for first in range(0, messages, chunk):
        await asyncio.gather(
            *(store.save(message(n, start)) for n in range(first, min(first + chunk, messages)))
        )
    return time.perf_counter() - started


def gateway_for(store: Store) -> Any:
    settings = load_settings_text(
        "gateway: BENCH\nlis:\n  port: 2575\ninstruments:\n"
        + "".join(
            f"  - name: chem-{n}\n    protocol: astm\n"
            "    transport: {type: tcp-server, port: 0}\n"
            for n in range(1, 5)
        )
    )
    health = Health()
    for n in range(1, 5):
        health.add(ConnectionHealth(f"chem-{n}", "astm", "tcp-server", "127.0.0.1:0"))
    return SimpleNamespace(
        store=store,
        settings=settings,
        version="bench",
        state="running",
        started_at=datetime.now(UTC),
        health=health,
        sessions={},
        validation=SimpleNamespace(qc=None),
        addresses={},
    )


async def time_pages(store: Store, repeat: int) -> dict[str, dict[str, float]]:
    store.create_user("bench-admin", "admin", PASSWORD, "bench", datetime.now(UTC))
    app = create_app(gateway_for(store))
    transport = httpx.ASGITransport(app=app)
    timings: dict[str, dict[str, float]] = {}
    async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
        page = await client.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        await client.post(
            "/login", data={"name": "bench-admin", "password": PASSWORD, "csrf": csrf.group(1)}
        )
        for path in PAGES:
            samples = []
            for _ in range(repeat):
                started = time.perf_counter()
                answer = await client.get(path)
                samples.append(time.perf_counter() - started)
                if answer.status_code != 200:
                    raise SystemExit(f"{path}: {answer.status_code} {answer.text[:300]}")
            timings[path] = {
                "median_ms": round(statistics.median(samples) * 1000, 1),
                "max_ms": round(max(samples) * 1000, 1),
                "bytes": len(answer.content),
            }
    return timings


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--url", help="a store URL (default: SQLite in a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        store = Store.open(args.url or f"sqlite:///{Path(folder) / 'labgate.db'}")
        try:
            fill_seconds = await fill(store, args.results)
            held = store.count_held()
            timings = await time_pages(store, args.repeat)
        finally:
            store.close()
    slowest = max(t["max_ms"] for t in timings.values())
    print(
        json.dumps(
            {
                "benchmark": "console",
                "results": args.results,
                "held": held,
                "fill_seconds": round(fill_seconds, 1),
                "pages": timings,
                "slowest_ms": slowest,
                "target_ms": 1000,
                "ok": slowest < 1000,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
