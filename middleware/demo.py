"""The demo: simulators started inside the daemon's process when the config has a `demo` section,
so `make run` shows results flowing with one command and no hardware. Never used in production
configs (the section is simply absent there)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random

import structlog

from middleware.gateway import Gateway
from simulators.analyser import AnalyserSimulator, build_result_message, demo_results
from simulators.lis import LisSimulator

__all__ = ["run_demo", "start_lis_simulator"]

log = structlog.get_logger("labgate.demo")


async def start_lis_simulator(gateway: Gateway) -> LisSimulator | None:
    """Start the simulated LIS before the gateway, on the port the gateway will send to."""
    demo = gateway.settings.demo
    if demo is None or demo.lis is None:
        return None
    lis = LisSimulator(
        gateway.settings.lis.host, gateway.settings.lis.port, received_dir=demo.lis.received_dir
    )
    await lis.start()
    return lis


async def run_demo(gateway: Gateway) -> None:
    """Run every configured simulated analyser until cancelled."""
    demo = gateway.settings.demo
    if demo is None:
        return
    await gateway.ready.wait()
    async with asyncio.TaskGroup() as group:
        for index, simulated in enumerate(demo.analysers):
            group.create_task(
                _analyser(
                    gateway,
                    index,
                    simulated.instrument,
                    simulated.interval,
                    simulated.results_per_message,
                    simulated.count,
                )
            )


async def _analyser(
    gateway: Gateway, index: int, instrument: str, interval: float, per_message: int, count: int
) -> None:
    host, port = gateway.addresses[instrument]
    rng = random.Random(index)
    analyser = AnalyserSimulator(host, port)
    await analyser.connect()
    try:
        numbers = itertools.count(1) if count == 0 else range(1, count + 1)
        for number in numbers:
            specimen = f"{instrument[:6].upper()}{number:06d}"
            message = build_result_message(
                specimen, f"PAT{rng.randint(1, 500):05d}", demo_results(per_message, rng)
            )
            ok = await analyser.send(message)
            log.info(
                "demo_analyser_sent", instrument=instrument, specimen=specimen, acknowledged=ok
            )
            await asyncio.sleep(interval)
    finally:
        with contextlib.suppress(Exception):
            await analyser.close()
