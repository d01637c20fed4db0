"""Simulator in the loop, through the real daemon, over TCP and over a real pseudo-terminal
cable, with each line fault: every result reaches the LIS exactly once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from e2e.test_astm_transports import Daemon, daemon
from web.console_support import signed_in

from protocols import astm
from simulators.analyser import AnalyserSimulator, SimulatedResult, build_result_message
from simulators.faults import Faults
from simulators.nullmodem import NullModem

RESULTS = [
    SimulatedResult("NA", "140", "mmol/L", "136 to 145"),
    SimulatedResult("K", "4.1", "mmol/L", "3.5 to 5.1"),
]
FAST = astm.Timers(establish=0.5, reply=0.5, receive=3.0, busy=0.1, contention_instrument=0.1)
#: The daemon's own timers, short so that a frame cut by a disconnect is given up in a second.
DAEMON_TIMERS = (
    "    timers:\n      establish: 2\n      reply: 2\n      receive: 1\n      busy: 0.2\n"
)
FAULTS = {
    "bit_flips": lambda: Faults(bit_flips=0.5, seed=3),
    "drop_acks": lambda: Faults(drop_acks=0.25, seed=2),
    "slow_line": lambda: Faults(line_rate=960),
    "contention": lambda: Faults(contention=True, contention_hold=2.0),
    "disconnect": lambda: Faults(disconnect_after=150),
}


@contextlib.asynccontextmanager
async def connected(
    tmp_path: Path, transport: str, faults: Faults
) -> AsyncIterator[tuple[Daemon, AnalyserSimulator]]:
    cable = NullModem() if transport == "serial" else None
    if cable is not None:
        labgate_end, analyser_end = await cable.start()
        line = f"      type: serial\n      port: {labgate_end}\n"
    else:
        line = "      type: tcp-server\n      port: 0\n"
    instrument = f"  - name: chem-1\n    protocol: astm\n{DAEMON_TIMERS}    transport:\n{line}"
    try:
        async with daemon(tmp_path, instrument) as running:
            if cable is not None:
                analyser = AnalyserSimulator.over_serial(
                    analyser_end, faults=faults, timers=FAST, reconnect=True
                )
            else:
                port = running.gateway.addresses["chem-1"][1]
                analyser = AnalyserSimulator(
                    "127.0.0.1", port, faults=faults, timers=FAST, reconnect=True
                )
            await analyser.connect()
            try:
                yield running, analyser
            finally:
                await analyser.close()
    finally:
        if cable is not None:
            await cable.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("transport", ["tcp", "serial"])
async def test_every_result_is_delivered_exactly_once_despite(
    tmp_path: Path, transport: str, fault: str
) -> None:
    faults = FAULTS[fault]()
    specimens = [f"{fault[:4].upper()}-{transport[:3]}-{n}" for n in range(3)]
    async with connected(tmp_path, transport, faults) as (running, analyser):
        to_send = specimens
        if fault == "contention":
            # The host must want the line too: an order download starts as results are sent
            # (the analyser holds its first message until the host's ENQ comes).
            async with signed_in(running.gateway) as client:
                first = asyncio.create_task(
                    analyser.send(build_result_message(specimens[0], "P1", RESULTS))
                )
                await asyncio.sleep(0.1)
                response = await client.post(
                    f"{running.api}/api/orders",
                    json={"specimen_id": "ORD-1", "tests": ["NA"], "instrument": "chem-1"},
                )
                assert response.status_code == 201
                assert await first is True
            to_send = specimens[1:]
        for specimen in to_send:
            assert await analyser.send(build_result_message(specimen, "P1", RESULTS)) is True
        await running.lis.wait_for(len(specimens), timeout=30)
        await asyncio.sleep(0.5)  # time for a duplicate to show up if one were to
        delivered = [
            o.specimen_id for m in running.lis.received if m.parsed for o in m.parsed.observations
        ]
        assert sorted(delivered) == sorted(s for s in specimens for _ in RESULTS)
        stored = running.rows("select count(*) from results")[0][0]
        assert stored == len(specimens) * len(RESULTS)
        if fault == "contention":
            orders = running.rows("select state from orders")
            assert [row[0] for row in orders] == ["sent"]
    injected = {
        "bit_flips": faults.counts.bit_flips,
        "drop_acks": faults.counts.acks_dropped,
        "contention": faults.counts.contentions,
        "disconnect": faults.counts.disconnects,
        "slow_line": 1,
    }[fault]
    assert injected > 0, f"the {fault} fault was never injected: the test proved nothing"
