"""A result acknowledged to the analyser survives `kill -9` of the daemon and reaches the LIS
after restart, once, with the control id it was given before the crash (GBUI I-4, VII-2)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import sqlalchemy as sa
from conftest import free_port, gateway_config
from e2e.daemon import Daemon

from simulators.analyser import AnalyserSimulator, SimulatedResult, build_result_message
from simulators.lis import LisSimulator


async def test_acknowledged_result_survives_kill_9_and_is_delivered_after_restart(
    tmp_path: Path,
) -> None:
    lis_port, api_port, analyser_port = free_port(), free_port(), free_port()
    config = tmp_path / "labgate.yaml"
    db = tmp_path / "labgate.db"
    config.write_text(
        gateway_config(
            db,
            lis_port=lis_port,
            api_port=api_port,
            instruments={"chem-1": analyser_port},
            retry_initial=0.2,
            retry_maximum=0.5,
        )
    )
    daemon = Daemon(config, api_port, tmp_path / "daemon.log")
    await asyncio.to_thread(daemon.start)
    try:
        # The LIS is down: the result can only be in the store when the analyser gets its ACK.
        analyser = AnalyserSimulator("127.0.0.1", analyser_port)
        await analyser.connect()
        message = build_result_message(
            "SPEC-K9", "PAT-K9", [SimulatedResult("HB", "13.2", "g/dL", "12 to 16")]
        )
        assert await analyser.send(message) is True
        await analyser.close()
        await asyncio.to_thread(daemon.kill)

        engine = sa.create_engine(f"sqlite:///{db}")
        with engine.connect() as connection:
            [(control_id, state)] = connection.execute(
                sa.text("select control_id, state from outbox")
            ).all()
        assert state == "pending"

        lis = LisSimulator(port=lis_port)
        await lis.start()
        try:
            await asyncio.to_thread(daemon.start)
            [received] = await lis.wait_for(1, timeout=20)
            assert received.parsed is not None
            assert received.parsed.control_id == control_id
            assert [(o.specimen_id, o.code, o.value) for o in received.parsed.observations] == [
                ("SPEC-K9", "HB", "13.2")
            ]
            await asyncio.sleep(0.5)
            assert len(lis.received) == 1
        finally:
            await asyncio.to_thread(daemon.stop)
            await lis.close()
        with engine.connect() as connection:
            assert (
                connection.execute(sa.text("select state from outbox")).scalar_one() == "delivered"
            )
            codes = [
                row[0]
                for row in connection.execute(
                    sa.text("select ack_code from transmissions order by id")
                )
            ]
        engine.dispose()
        assert codes[-1] == "AA" and all(code is None for code in codes[:-1])
    finally:
        await asyncio.to_thread(daemon.stop)
