"""The baseline for benchmarks/e2e.py: the same protocol work with no store and no pipeline.

An ASTM host that decodes each message, maps it with the same driver, builds the same ORU^R01 and
relays it to the LIS over MLLP, acknowledging the analyser at once. Whatever labgate costs on top
of this (durable commits before every ACK, outbox bookkeeping, the trace) is the ratio the
benchmark reports. Run: python benchmarks/baseline_relay.py LISTEN_PORT LIS_PORT ANALYSERS
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from datetime import UTC, datetime

from drivers.generic_astm import GenericAstmDriver
from middleware.config.settings import LisSettings
from middleware.lis.oru import build_results_message
from protocols import astm
from protocols.hl7 import MllpFramer, mllp_frame

_ids = itertools.count(1)


async def _relay_to_lis(queue: asyncio.Queue[bytes], lis_port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", lis_port)
    framer = MllpFramer()
    while True:
        payload = await queue.get()
        writer.write(mllp_frame(payload))
        await writer.drain()
        while framer.next_message() is None:
            framer.receive_data(await reader.read(65536))


async def main(port: int, lis_port: int) -> None:
    driver = GenericAstmDriver()
    lis = LisSettings(port=lis_port)
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        link = astm.Link(astm.Role.HOST)
        while True:
            timer = link.get_timer()
            try:
                data = await asyncio.wait_for(
                    reader.read(65536), None if timer is None else max(0, timer - loop.time())
                )
            except TimeoutError:
                link.handle_timer(loop.time())
                data = b""
            else:
                if not data:
                    return
                link.receive_data(data, loop.time())
            while (event := link.next_event()) is not None:
                if isinstance(event, astm.MessageReceived):
                    reports = driver.to_reports(astm.decode_message(event.text), "bench")
                    decisions = tuple(("held", ("no_rule",)) for r in reports for _ in r.results)
                    control = f"BASE{next(_ids):010d}"
                    queue.put_nowait(
                        build_results_message(
                            lis, control, tuple(reports), decisions, datetime.now(UTC)
                        )
                    )
                    link.acknowledge(loop.time())
            out = link.data_to_send()
            if out:
                writer.write(out)
                await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", port)
    relay = asyncio.create_task(_relay_to_lis(queue, lis_port))
    print("ready", flush=True)
    async with server:
        await asyncio.gather(server.serve_forever(), relay)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
