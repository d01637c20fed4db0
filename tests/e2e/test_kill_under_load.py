"""`kill -9` of the daemon at random points while an analyser is sending, several times over
(the delivery issue's fault test). After the last restart every result the analyser saw
acknowledged has reached the LIS, and no specimen reached it under two different message
control ids: a retransmission after a crash repeats the same message (at-least-once, same
MSH-10), and an analyser resending what it never saw acknowledged is recognised as a duplicate.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

from conftest import free_port, gateway_config
from e2e.daemon import Daemon
from e2e.test_astm_transports import FAST

from simulators.analyser import AnalyserSimulator, SimulatedResult, build_result_message
from simulators.lis import LisSimulator

ROUNDS = 4
MEASURED = datetime(2026, 12, 2, 8, 0)


def _message(number: int) -> bytes:
    """Result `number` as the analyser sends it now: the results keep their measurement time,
    but the header (H-14) is rebuilt at each sending, so a resend is other bytes."""
    text = build_result_message(
        f"K9-{number:04d}",
        f"PAT-{number % 7}",
        [SimulatedResult("NA", "140", "mmol/L", "135 to 145")],
        when=MEASURED + timedelta(seconds=number),
    ).decode("latin-1")
    header, rest = text.split("\r", 1)
    stamp = datetime.now().strftime("%Y%m%d%H%M%S%f")
    return (header.rsplit("|", 1)[0] + f"|{stamp}\r" + rest).encode("latin-1")


async def _send_until_killed(
    port: int, first: int, acknowledged: set[int], unsure: set[int]
) -> int:
    """Send new messages until the daemon dies; returns the next number to use. Messages
    whose ACK never came are kept in `unsure`, to be sent again as an analyser would."""
    analyser = AnalyserSimulator("127.0.0.1", port, timers=FAST, max_retries=1)
    number = first
    try:
        await analyser.connect()
        for again in sorted(unsure):
            if await analyser.send(_message(again)):
                acknowledged.add(again)
                unsure.discard(again)
        while True:
            unsure.add(number)
            if not await analyser.send(_message(number)):
                return number + 1
            acknowledged.add(number)
            unsure.discard(number)
            number += 1
    except (ConnectionError, OSError):
        return number + 1
    finally:
        await analyser.close()


async def test_repeated_kill_9_under_load_loses_nothing_and_never_changes_ids(
    tmp_path: Path,
) -> None:
    rng = random.Random(20261202)
    lis_port, api_port, analyser_port = free_port(), free_port(), free_port()
    config = tmp_path / "labgate.yaml"
    config.write_text(
        gateway_config(
            tmp_path / "labgate.db",
            lis_port=lis_port,
            api_port=api_port,
            instruments={"chem-1": analyser_port},
            retry_initial=0.1,
            retry_maximum=0.5,
        )
    )
    lis = LisSimulator(port=lis_port)
    await lis.start()
    daemon = Daemon(config, api_port, tmp_path / "daemon.log")
    acknowledged: set[int] = set()
    unsure: set[int] = set()
    number = 0
    try:
        for _ in range(ROUNDS):
            await asyncio.to_thread(daemon.start)
            sender = asyncio.create_task(
                _send_until_killed(analyser_port, number, acknowledged, unsure)
            )
            await asyncio.sleep(rng.uniform(0.3, 1.2))
            await asyncio.to_thread(daemon.kill)
            number = await sender
        await asyncio.to_thread(daemon.start)
        # What the analyser never saw acknowledged, it sends again after the restart.
        await _send_until_stable(analyser_port, acknowledged, unsure)
        await _until_delivered(lis, acknowledged)
    finally:
        await asyncio.to_thread(daemon.stop)
        await lis.close()
    assert len(acknowledged) >= ROUNDS  # the load really ran in every round
    ids_per_specimen: dict[str, set[str]] = defaultdict(set)
    for message in lis.delivered:
        assert message.parsed is not None
        for observation in message.parsed.observations:
            ids_per_specimen[observation.specimen_id].add(message.parsed.control_id)
    delivered = {int(s.removeprefix("K9-")) for s in ids_per_specimen}
    assert acknowledged <= delivered, daemon.log()[-3000:]
    twice = {s: ids for s, ids in ids_per_specimen.items() if len(ids) > 1}
    assert twice == {}


async def _send_until_stable(port: int, acknowledged: set[int], unsure: set[int]) -> None:
    analyser = AnalyserSimulator("127.0.0.1", port, timers=FAST)
    await analyser.connect()
    try:
        for again in sorted(unsure):
            assert await analyser.send(_message(again)) is True
            acknowledged.add(again)
        unsure.clear()
    finally:
        await analyser.close()


async def _until_delivered(lis: LisSimulator, acknowledged: set[int]) -> None:
    async with asyncio.timeout(60):
        while True:
            seen = {
                int(o.specimen_id.removeprefix("K9-"))
                for m in lis.delivered
                if m.parsed is not None
                for o in m.parsed.observations
            }
            if acknowledged <= seen:
                return
            await asyncio.sleep(0.2)
