"""SIGHUP on a real daemon process (`systemctl reload labgate`): an instrument added and one
removed without a restart, the unchanged analyser keeping its very connection, and a broken
configuration refused with the old one kept."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from conftest import free_port, gateway_config
from e2e.daemon import Daemon

from simulators.analyser import AnalyserSimulator, SimulatedResult, build_result_message
from simulators.lis import LisSimulator

RESULTS = [SimulatedResult("NA", "140", "mmol/L", "135 to 145")]


async def _connections(daemon: Daemon) -> dict[str, str]:
    async with httpx.AsyncClient() as client:
        health = (await client.get(f"{daemon.api}/api/health", timeout=5)).json()
    return {c["name"]: c["state"] for c in health["connections"]}


async def _until(check, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.1)


async def test_sighup_adds_and_removes_instruments_and_refuses_a_bad_file(
    tmp_path: Path,
) -> None:
    lis_port, api_port, port_1, port_2 = free_port(), free_port(), free_port(), free_port()
    config = tmp_path / "labgate.yaml"

    def write(instruments: dict[str, int]) -> None:
        config.write_text(
            gateway_config(
                tmp_path / "labgate.db", lis_port=lis_port, api_port=api_port,
                instruments=instruments,
            )
        )  # fmt: skip

    write({"chem-1": port_1})
    lis = LisSimulator(port=lis_port)
    await lis.start()
    daemon = Daemon(config, api_port, tmp_path / "daemon.log")
    await asyncio.to_thread(daemon.start)
    first = AnalyserSimulator("127.0.0.1", port_1)
    try:
        await first.connect()
        assert await first.send(build_result_message("R-1", "P1", RESULTS)) is True

        write({"chem-1": port_1, "chem-2": port_2})
        daemon.hangup()

        async def added() -> bool:
            return "chem-2" in await _connections(daemon)

        await _until(added)
        second = AnalyserSimulator("127.0.0.1", port_2)
        await second.connect()
        try:
            assert await second.send(build_result_message("R-2", "P2", RESULTS)) is True
        finally:
            await second.close()
        # chem-1 was not touched: the same connection carries on.
        assert await first.send(build_result_message("R-3", "P3", RESULTS)) is True

        config.write_text(config.read_text().replace(f"port: {port_2}", "port: 99999"))
        daemon.hangup()
        await _until(lambda: _logged(daemon, "reload_refused"))
        assert set(await _connections(daemon)) >= {"chem-1", "chem-2"}  # the old one stands

        write({"chem-1": port_1})
        daemon.hangup()

        async def removed() -> bool:
            return "chem-2" not in await _connections(daemon)

        await _until(removed)
        assert await first.send(build_result_message("R-4", "P4", RESULTS)) is True
        refused = AnalyserSimulator("127.0.0.1", port_2)
        try:
            await refused.connect()
            connected = True
        except OSError:
            connected = False
        finally:
            await refused.close()
        assert not connected
        received = await lis.wait_for(4, timeout=20)
    finally:
        await first.close()
        await asyncio.to_thread(daemon.stop)
        await lis.close()
    specimens = sorted(o.specimen_id for m in received for o in m.parsed.observations)  # type: ignore[union-attr]
    assert specimens == ["R-1", "R-2", "R-3", "R-4"]
    assert daemon.log().count("configuration_reloaded") == 2


async def _logged(daemon: Daemon, event: str) -> bool:
    return event in daemon.log()
