"""Two gateways on one PostgreSQL store, one LIS (the delivery issue): every result reaches the
LIS once, no message is sent by both, and when the gateway holding the queue stops, the other
takes it over once the claim lapses."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

from e2e.test_astm_transports import FAST

from middleware.config import load_settings_text
from middleware.gateway import Gateway
from simulators.analyser import AnalyserSimulator, SimulatedResult, build_result_message
from simulators.lis import LisSimulator

RESULTS = [SimulatedResult("NA", "140", "mmol/L", "135 to 145")]


@contextlib.asynccontextmanager
async def _gateway(name: str, url: str, lis_port: int) -> AsyncIterator[Gateway]:
    text = (
        f"gateway: {name}\nstore:\n  url: {url}\napi:\n  port: 0\n"
        f"lis:\n  port: {lis_port}\n  connect_timeout: 0.5\n  window: 8\n"
        "  retry:\n    initial: 0.1\n    maximum: 0.3\n"
        "instruments:\n"
        f"  - name: chem-{name}\n    protocol: astm\n    transport: {{type: tcp-server, port: 0}}\n"
    )
    gateway = Gateway(load_settings_text(text))
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    await asyncio.wait_for(gateway.ready.wait(), 10)
    try:
        yield gateway
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def _send(gateway: Gateway, prefix: str, count: int) -> None:
    port = gateway.addresses[f"chem-{gateway.settings.gateway}"][1]
    analyser = AnalyserSimulator("127.0.0.1", port, timers=FAST)
    await analyser.connect()
    try:
        for number in range(count):
            message = build_result_message(f"{prefix}-{number:03d}", f"P{number}", RESULTS)
            assert await analyser.send(message) is True
    finally:
        await analyser.close()


def _specimens(lis: LisSimulator) -> Counter[str]:
    return Counter(
        o.specimen_id for m in lis.delivered if m.parsed is not None for o in m.parsed.observations
    )


async def _until_delivered(lis: LisSimulator, expected: set[str], timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while set(_specimens(lis)) < expected:
            await asyncio.sleep(0.05)


async def test_two_gateways_never_send_the_same_message(tmp_path: Path, postgres_url: str) -> None:
    lis = LisSimulator()
    lis_port = await lis.start()
    await lis.close()  # down first: both gateways queue, then race for the queue
    async with (
        _gateway("a", postgres_url, lis_port) as first,
        _gateway("b", postgres_url, lis_port) as second,
    ):
        await asyncio.gather(_send(first, "A", 20), _send(second, "B", 20))
        lis = LisSimulator(port=lis_port)
        await lis.start()
        try:
            expected = {f"{p}-{n:03d}" for p in "AB" for n in range(20)}
            await _until_delivered(lis, expected)
            await asyncio.sleep(0.5)  # a second sending would show by now
        finally:
            await lis.close()
    counts = _specimens(lis)
    assert set(counts) == expected
    assert max(counts.values()) == 1  # nothing sent twice
    control_ids = Counter(m.parsed.control_id for m in lis.delivered if m.parsed is not None)
    assert max(control_ids.values()) == 1


async def test_the_other_gateway_takes_over_when_the_holder_stops(
    tmp_path: Path, postgres_url: str
) -> None:
    lis = LisSimulator()
    lis_port = await lis.start()
    await lis.close()
    holder_context = _gateway("a", postgres_url, lis_port)
    holder = await holder_context.__aenter__()
    try:
        holder.store.claim_lease = timedelta(seconds=3)  # renewed every retry
        await _send(holder, "A", 5)
        # The holder claims its queue while the LIS is down...
        async with asyncio.timeout(10):
            while await holder.store.read(_claimants, holder) != {holder.store.claimant}:
                await asyncio.sleep(0.05)
        async with _gateway("b", postgres_url, lis_port) as survivor:
            # ...the other gateway leaves it alone while the claim holds...
            assert await survivor.store.read(survivor.store.due, "lis", _now(), 10) == []
            # ...and the holder stops without a word, as in a crash: its claim only lapses.
            await holder_context.__aexit__(None, None, None)
            holder_context = None
            lis = LisSimulator(port=lis_port)
            await lis.start()
            try:
                await _until_delivered(lis, {f"A-{n:03d}" for n in range(5)})
            finally:
                await lis.close()
            async with asyncio.timeout(10):  # the AAs are recorded just after the LIS has them
                while await survivor.store.read(_claimants, survivor) != set():
                    await asyncio.sleep(0.05)
    finally:
        if holder_context is not None:
            await holder_context.__aexit__(None, None, None)
    assert max(_specimens(lis).values()) == 1


def _now():  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.now(UTC)


def _claimants(gateway: Gateway) -> set[str | None]:
    """Who holds the pending messages (None: nobody)."""
    import sqlalchemy as sa

    with gateway.store.engine.connect() as connection:
        rows = connection.execute(
            sa.text("select distinct claimed_by from outbox where state = 'pending'")
        ).all()
    return {row[0] for row in rows}
