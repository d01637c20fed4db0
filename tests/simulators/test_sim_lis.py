"""The simulated LIS's faults: a sequence of answer codes, a connection dropped unanswered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sim_helpers import oru

from protocols import hl7 as v2
from simulators.lis import LisSimulator


class Client:
    """A bare MLLP client: one message out, one answer (or the end of the connection) back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.framer = v2.MllpFramer()

    async def exchange(self, message: bytes) -> v2.Ack | None:
        self.writer.write(v2.mllp_frame(message))
        await self.writer.drain()
        while (answer := self.framer.next_message()) is None:
            data = await asyncio.wait_for(self.reader.read(65536), 5)
            if not data:
                return None  # closed without an answer
            self.framer.receive_data(data)
        return v2.parse_ack(answer)


@asynccontextmanager
async def client(port: int) -> AsyncIterator[Client]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield Client(reader, writer)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass


async def test_ack_sequence_answers_in_order_then_falls_back_to_ack_code() -> None:
    lis = LisSimulator(ack_codes=["AE", "AR"])
    port = await lis.start()
    try:
        async with client(port) as c:
            codes = []
            for n in range(4):
                ack = await c.exchange(oru(f"C{n}"))
                assert ack is not None
                codes.append(ack.code)
    finally:
        await lis.close()
    assert codes == ["AE", "AR", "AA", "AA"]
    assert [m.ack_code for m in lis.received] == codes
    assert [m.parsed.control_id for m in lis.delivered if m.parsed] == ["C2", "C3"]


async def test_dropped_connection_leaves_the_message_unanswered_once(tmp_path: Path) -> None:
    lis = LisSimulator(received_dir=tmp_path / "in", drop_connection_after=1)
    port = await lis.start()
    try:
        async with client(port) as c:
            first = await c.exchange(oru("C1"))
            assert first is not None and first.code == "AA"
            assert await c.exchange(oru("C2")) is None  # connection closed, no ACK
        async with client(port) as c:  # the sender reconnects and sends it again
            again = await c.exchange(oru("C2"))
            assert again is not None and again.code == "AA"
        await lis.wait_for(2, timeout=5)
    finally:
        await lis.close()
    assert [(m.parsed.control_id, m.ack_code) for m in lis.received if m.parsed] == [
        ("C1", "AA"),
        ("C2", None),
        ("C2", "AA"),
    ]
    assert lis.dropped_connections == 1 and lis.drop_connection_after is None
    assert file_count(tmp_path / "in") == 3  # kept, answered or not


def file_count(folder: Path) -> int:
    return len(list(folder.iterdir()))


async def test_lis_starts_on_the_port_it_is_given() -> None:
    probe = LisSimulator()
    port = await probe.start()
    await probe.close()
    lis = LisSimulator(port=port)
    try:
        assert await lis.start() == port
    finally:
        await lis.close()
