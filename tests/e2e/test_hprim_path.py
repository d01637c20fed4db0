"""HPRIM end to end: a real daemon in this process with `lis.kind: hprim`, a simulated ASTM
analyser sending results, and a simulated HPRIM LIS taking them from a spool directory or over
TCP (bare and E1381): what the LIS received, and what the store recorded."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from middleware.config import load_settings_text
from middleware.gateway import Gateway
from simulators.analyser import AnalyserSimulator, SimulatedResult, build_result_message
from simulators.hprim_lis import HprimSpoolLis, HprimTcpLis

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "rules" / "example.yaml"
RESULTS = [
    SimulatedResult("GLU", "5.4", "mmol/L", "3.9 to 6.1"),
    SimulatedResult("CREA", "88", "umol/L", "45 to 104"),
]
INSTRUMENT = (
    "  - name: chem-1\n    protocol: astm\n    driver: generic-astm\n"
    "    transport:\n      type: tcp-server\n      port: 0\n"
)


@contextlib.asynccontextmanager
async def hprim_daemon(tmp_path: Path, hprim_yaml: str, extra: str = "") -> AsyncIterator[Gateway]:
    """A daemon in this process whose LIS link is HPRIM (`hprim_yaml`: the `lis.hprim` keys)."""
    text = (
        f"gateway: LABGATE\nstore:\n  url: sqlite:///{tmp_path / 'labgate.db'}\n"
        "api:\n  port: 0\n"
        "lis:\n  kind: hprim\n  retry:\n    initial: 0.2\n    maximum: 1\n"
        "  transcoding:\n    GLU: GLY\n"
        f"  hprim:\n{hprim_yaml}"
        f"validation:\n  rules: {RULES}\n"
        f"instruments:\n{INSTRUMENT}{extra}"
    )
    gateway = Gateway(load_settings_text(text))
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    async with asyncio.timeout(10):
        await gateway.ready.wait()
    try:
        yield gateway
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task


async def _send_two(gateway: Gateway) -> None:
    analyser = AnalyserSimulator("127.0.0.1", gateway.addresses["chem-1"][1])
    await analyser.connect()
    try:
        for number in range(2):
            assert await analyser.send(build_result_message(f"HP{number}", "P1", RESULTS))
    finally:
        await analyser.close()


def _outbox(tmp_path: Path) -> list[tuple[str, str]]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'labgate.db'}")
    try:
        with engine.connect() as connection:
            query = sa.text(
                "select o.state, t.ack_code from outbox o join transmissions t "
                "on t.outbox_id = o.id order by o.id"
            )
            return [(row[0], row[1]) for row in connection.execute(query)]
    finally:
        engine.dispose()


async def _settled(tmp_path: Path, count: int) -> list[tuple[str, str]]:
    async with asyncio.timeout(10):
        while len(rows := _outbox(tmp_path)) < count or any(s != "delivered" for s, _ in rows):
            await asyncio.sleep(0.05)
    return rows


async def test_analyser_to_an_hprim_lis_reading_a_spool_directory(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    lis = HprimSpoolLis(spool, ok_file=True)
    await lis.start()
    hprim_yaml = (
        f"    transport: spool\n    directory: {spool}\n    ok_file: true\n    poll_seconds: 0.05\n"
    )
    try:
        async with hprim_daemon(tmp_path, hprim_yaml) as gateway:
            await _send_two(gateway)
            received = await lis.wait_for(2)
            assert await _settled(tmp_path, 2) == [("delivered", "AA")] * 2
            health = gateway.health.connections["lis"]
            assert (health.protocol, health.transport) == ("hprim", "spool")
    finally:
        await lis.close()
    specimens = [
        r.records[i].field(3)
        for m in received
        if (r := m.message) is not None
        for i in range(len(r.records))
        if r.records[i].type == "OBR"
    ]
    assert specimens == ["HP0", "HP1"]
    codes = [obx.component(4, 1) for obx in received[0].observations()]
    assert codes[0] == "GLY"  # the LIS's transcoding table
    assert all(c.startswith(("validé", "labgate:")) for c in received[0].comments()[:1])


@pytest.mark.parametrize("framing", ["none", "e1381"])
async def test_analyser_to_an_hprim_lis_over_tcp(tmp_path: Path, framing: str) -> None:
    lis = HprimTcpLis(framing=framing)  # type: ignore[arg-type]
    port = await lis.start()
    hprim_yaml = f"    transport: tcp\n    port: {port}\n    framing: {framing}\n"
    try:
        async with hprim_daemon(tmp_path, hprim_yaml) as gateway:
            await _send_two(gateway)
            received = await lis.wait_for(2)
            assert await _settled(tmp_path, 2) == [("delivered", "AA")] * 2
    finally:
        await lis.close()
    assert all(m.message is not None and m.message.records[-1].type == "L" for m in received)
    assert [m.observations()[0].field(6) for m in received] == ["5.4", "5.4"]


async def test_a_file_the_lis_never_takes_raises_an_alarm(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()  # nobody reads it
    hprim_yaml = (
        f"    transport: spool\n    directory: {spool}\n    poll_seconds: 0.05\n"
        "    unconsumed_alarm_minutes: 0.005\n"
    )
    alarms = "alarms:\n  check_seconds: 0.1\n"
    async with hprim_daemon(tmp_path, hprim_yaml, alarms) as gateway:
        await _send_two(gateway)
        async with asyncio.timeout(10):
            while not any(
                a["kind"] == "lis_unconsumed"
                for a in await gateway.store.read(gateway.store.alarms, True)
            ):
                await asyncio.sleep(0.05)
        assert [path.suffix for path in spool.iterdir()] == [".HPR"]  # one at a time
