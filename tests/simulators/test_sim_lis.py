"""The simulated LIS's faults: a sequence of answer codes, a connection dropped unanswered; its
fast_ack mode (answers from the MSH line, several messages per read, results read lazily)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

from sim_helpers import oru

from protocols import hl7 as v2
from protocols.hl7._er7 import format_ts
from simulators.lis import LisSimulator, _ack_fields, _quick_ack


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


# --- fast_ack: answered from the MSH line, read lazily ---------------------------------------


async def read_acks(reader: asyncio.StreamReader, count: int) -> list[v2.Ack]:
    framer = v2.MllpFramer()
    acks: list[v2.Ack] = []
    async with asyncio.timeout(5):
        while len(acks) < count:
            data = await reader.read(65536)
            assert data, "the LIS closed the connection"
            framer.receive_data(data)
            while (answer := framer.next_message()) is not None:
                acks.append(v2.parse_ack(answer))
    return acks


async def test_fast_ack_answers_every_message_of_one_tcp_read_by_its_control_id() -> None:
    lis = LisSimulator(fast_ack=True)
    port = await lis.start()
    ids = [f"C{n}" for n in range(20)]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # One write: the LIS finds many messages (and the start of none) in one read.
        writer.write(b"".join(v2.mllp_frame(oru(i)) for i in ids))
        await writer.drain()
        acks = await read_acks(reader, len(ids))
        await lis.wait_for(len(ids), timeout=5)
        writer.close()
        await writer.wait_closed()
    finally:
        await lis.close()
    assert [(a.code, a.acknowledged_control_id) for a in acks] == [("AA", i) for i in ids]
    assert len({a.control_id for a in acks}) == len(ids)  # each ACK has its own MSH-10
    # Recorded as received, and read (lazily) into the same results as the full path reads.
    assert [m.parsed.control_id for m in lis.delivered if m.parsed] == ids
    assert lis.received[0].error is None
    assert [(o.patient_id, o.specimen_id, o.code) for o in lis.received[3].parsed.observations] == [
        ("PAT1", "SPEC1", "GLU")
    ]  # type: ignore[union-attr]


def test_fast_ack_is_the_ack_build_ack_would_send() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    latin = (
        "MSH|^~\\&|Lab\\F\\App|Hôpital|LIS|LAB|20260101||ORU^R01^ORU_R01|X\\S\\1|T|2.5|||||"
        "|8859/1\rPID|1||P1\r"
    ).encode("latin-1")
    for message in (oru("C1"), latin, b"MSH|^~\\&|A||||||ORU^R01|C9|P|2.3\r"):
        fields = _ack_fields(message)
        assert fields is not None
        assert _quick_ack(fields, "AE", "L1", format_ts(now)) == v2.build_ack(
            message, "AE", "L1", now
        )
    assert _ack_fields(b"MSH#^~\\&#A####ORU^R01#C1#P#2.5\r") is None  # other delimiters
    assert _ack_fields(b"MSH|^~\\&|A||||||ORU^R01||P|2.5\r") is None  # no MSH-10
    assert _ack_fields(b"not hl7") is None


async def test_fast_ack_keeps_the_faults_and_skips_what_has_no_msh() -> None:
    lis = LisSimulator(fast_ack=True, ack_codes=["AE"], drop_connection_after=3)
    port = await lis.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            v2.mllp_frame(oru("C1"))
            + v2.mllp_frame(b"garbage without an MSH")
            + v2.mllp_frame(oru("C2"))
            + v2.mllp_frame(oru("C3"))
        )
        await writer.drain()
        acks = await read_acks(reader, 2)
        async with asyncio.timeout(5):  # C3 got no answer: its connection was dropped
            try:
                assert await reader.read(65536) == b""
            except ConnectionResetError:
                pass
        writer.close()
        async with client(port) as c:  # the sender reconnects and sends C3 again
            again = await c.exchange(oru("C3"))
    finally:
        await lis.close()
    assert [(a.code, a.acknowledged_control_id) for a in acks] == [("AE", "C1"), ("AA", "C2")]
    assert again is not None and (again.code, again.acknowledged_control_id) == ("AA", "C3")
    assert [m.ack_code for m in lis.received] == ["AE", None, "AA", None, "AA"]
    assert lis.received[1].parsed is None and lis.received[1].error  # read when asked for
    assert lis.dropped_connections == 1
