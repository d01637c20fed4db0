"""The LIS sender with several messages in flight (`window` > 1), over real loopback sockets, to
the simulated LIS or to a scripted one, draining a real SQLite outbox: wire order, ACKs matched
by MSA-2, retransmission after a failure, AE/AR, outcomes committed in batches; and stop-and-wait
(`window: 1`) left as it was."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from drivers.models import Patient, Result, SpecimenReport
from middleware.config import load_settings_text
from middleware.config.loader import ConfigError
from middleware.config.settings import LisSettings, RetrySettings
from middleware.health import ConnectionHealth, Health
from middleware.lis.sender import LisSender
from middleware.store import IncomingMessage, Store, Transmission
from protocols import hl7 as v2
from simulators.lis import LisSimulator

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def _incoming(number: int) -> IncomingMessage:
    results = tuple(
        Result(
            specimen_id=f"S{number:04d}",
            test_code=code,
            value="5.4",
            numeric=Decimal("5.4"),
            units="mmol/L",
            instrument="chem-1",
            sequence=sequence,
        )
        for sequence, code in enumerate(("GLU", "NA"), start=1)
    )
    report = SpecimenReport(f"S{number:04d}", Patient(f"P{number}", "DUPONT", "Marie"), results)
    return IncomingMessage(
        message_id=f"m{number:04d}",
        connection="chem-1",
        protocol="astm",
        received_at=NOW,
        raw=b"-",
        reports=(report,),
        decisions=(("held", ("no_rule",)),) * 2,
        lis="lis",
    )


@pytest.fixture(name="store")
def fixture_store(tmp_path: Path) -> Any:
    store = Store.open(f"sqlite:///{tmp_path / 'labgate.db'}")
    yield store
    store.close()


@pytest.fixture(name="any_store")
def fixture_any_store(store_url: str) -> Any:
    """A store on each backend (SQLite, PostgreSQL: see tests/conftest.py)."""
    store = Store.open(store_url)
    yield store
    store.close()


def fill(store: Store, count: int) -> list[str]:
    """`count` messages in the outbox; their control ids in outbox order."""
    for number in range(count):
        store.save_message(_incoming(number))
    with store.engine.connect() as connection:
        return list(connection.scalars(sa.text("select control_id from outbox order by id")))


def outbox(store: Store) -> list[tuple[str, str, int]]:
    """(control id, state, attempts) per outbox row, in order."""
    with store.engine.connect() as connection:
        rows = connection.execute(
            sa.text("select control_id, state, attempts from outbox order by id")
        )
        return [(c, s, a) for c, s, a in rows]


def transmissions(store: Store, control_id: str) -> list[dict[str, Any]]:
    """Every archived attempt of one message, oldest first."""
    with store.engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "select t.attempt, t.raw_out, t.raw_in, t.ack_code, t.ack_control_id, t.error "
                "from transmissions t join outbox o on o.id = t.outbox_id "
                "where o.control_id = :c order by t.id"
            ),
            {"c": control_id},
        )
        return [dict(row._mapping) for row in rows]


def settings(port: int, window: int, **kwargs: Any) -> LisSettings:
    return LisSettings(
        port=port,
        window=window,
        ack_timeout=kwargs.pop("ack_timeout", 5.0),
        connect_timeout=2.0,
        retry=RetrySettings(initial=0.05, maximum=0.2),
        **kwargs,
    )


@contextlib.asynccontextmanager
async def sending(store: Store, lis_settings: LisSettings) -> AsyncIterator[Health]:
    """The sender running against `store` until the block ends."""
    health = Health()
    health.add(ConnectionHealth("lis", "hl7", "mllp-client", ""))
    health.add(ConnectionHealth("chem-1", "astm", "tcp-server", ""))
    sender = LisSender(lis_settings, store, health)
    task = asyncio.create_task(sender.run())
    try:
        yield health
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def settled(store: Store, timeout: float = 15.0) -> None:
    """Wait until nothing is pending in the outbox."""
    async with asyncio.timeout(timeout):
        while store.outbox_depth("lis"):
            await asyncio.sleep(0.02)


async def counted(health: Health, name: str, delivered: int, timeout: float = 5.0) -> None:
    """Wait for the sender's counters: they move just after the commit `settled` sees."""
    async with asyncio.timeout(timeout):
        while health.connections[name].delivered < delivered:
            await asyncio.sleep(0.01)


# --- a LIS whose answers the test writes ------------------------------------------------------


@dataclass
class ScriptedLis:
    """An MLLP server on 127.0.0.1. For each connection, `answer(connection_number, received)`
    is called after every message with all the messages received on that connection so far;
    it returns the frames to send back now (several, one, none), or None to close the
    connection. Every message received is kept in `received`, with its connection number."""

    answer: Callable[[int, list[bytes]], list[bytes] | None]
    received: list[tuple[int, bytes]] = field(default_factory=list)
    connections: int = 0
    most_in_flight: int = 0  # messages received and not yet answered, at the worst moment
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def hang_up(self) -> None:
        """Close every open connection from the LIS's side, as a LIS restarting would."""
        for writer in self._writers:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        self.connections += 1
        number = self.connections
        framer = v2.MllpFramer()
        mine: list[bytes] = []
        answered = 0
        try:
            while data := await reader.read(65536):
                framer.receive_data(data)
                while (message := framer.next_message()) is not None:
                    mine.append(message)
                    self.received.append((number, message))
                    self.most_in_flight = max(self.most_in_flight, len(mine) - answered)
                    frames = self.answer(number, mine)
                    if frames is None:
                        return
                    answered += len(frames)
                    # A frame that starts with VT goes as it is (garbage already framed).
                    framed = (f if f.startswith(b"\x0b") else v2.mllp_frame(f) for f in frames)
                    writer.write(b"".join(framed))
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


def ack(message: bytes, code: str = "AA", acknowledged: str | None = None) -> bytes:
    """The ACK of `message`; `acknowledged` replaces its MSA-2 (an ACK for another message)."""
    answer = v2.build_ack(message, code, "LIS1", NOW)
    if acknowledged is not None:
        original = v2.message_control_id(message).encode()
        answer = answer.replace(
            b"MSA|" + code.encode() + b"|" + original, b"MSA|AA|" + acknowledged.encode()
        )
    return answer


# --- in order, in flight, matched by MSA-2 -----------------------------------------------------


async def test_a_window_delivers_everything_once_in_outbox_order(store: Store) -> None:
    ids = fill(store, 40)
    lis = LisSimulator(fast_ack=True)
    port = await lis.start()
    try:
        async with sending(store, settings(port, window=8)) as health:
            await settled(store)
            await counted(health, "lis", 80)
            await counted(health, "chem-1", 80)
    finally:
        await lis.close()
    assert [m.parsed.control_id for m in lis.received if m.parsed] == ids
    assert outbox(store) == [(i, "delivered", 1) for i in ids]
    assert [len(transmissions(store, i)) for i in ids] == [1] * 40
    assert health.connections["lis"].delivered == 80  # two results a message
    assert health.connections["chem-1"].delivered == 80
    with store.engine.connect() as connection:
        undelivered = connection.scalar(
            sa.text("select count(*) from results where delivered_at is null")
        )
    assert undelivered == 0


async def test_acks_out_of_order_are_matched_by_msa2(store: Store) -> None:
    """The LIS answers only once it holds four messages, last first: only a sender with four
    on the wire gets any answer, and only matching by MSA-2 files each under its message."""
    ids = fill(store, 10)

    def reversed_by_four(_connection: int, got: list[bytes]) -> list[bytes] | None:
        if len(got) % 4 and len(got) < 10:
            return []
        return [ack(m) for m in reversed(got[-(len(got) % 4 or 4) :])]

    lis = ScriptedLis(reversed_by_four)
    port = await lis.start()
    try:
        async with sending(store, settings(port, window=4)):
            await settled(store)
    finally:
        await lis.close()
    assert lis.most_in_flight == 4
    assert [v2.message_control_id(m) for _, m in lis.received] == ids
    assert outbox(store) == [(i, "delivered", 1) for i in ids]
    for control_id in ids:
        [attempt] = transmissions(store, control_id)
        assert v2.parse_ack(attempt["raw_in"]).acknowledged_control_id == control_id


async def test_a_dropped_connection_resends_the_unacknowledged_in_order_with_the_same_ids(
    store: Store,
) -> None:
    ids = fill(store, 20)
    lis = LisSimulator(fast_ack=True, drop_connection_after=5)
    port = await lis.start()
    try:
        async with sending(store, settings(port, window=8)):
            await settled(store)
    finally:
        await lis.close()
    assert lis.dropped_connections == 1
    received = [(m.parsed.control_id, m.raw, m.ack_code) for m in lis.received if m.parsed]
    # Nothing is sent under a new id, and a message sent twice is the same bytes twice.
    assert {c for c, _, _ in received} == set(ids)
    for control_id in ids:
        assert len({raw for c, raw, _ in received if c == control_id}) == 1
    # Everything went out, and came back AA, in outbox order; after the drop the sender
    # started again from the first message it held no AA for.
    first_aa = list(dict.fromkeys(c for c, _, code in received if code == "AA"))
    assert first_aa == ids
    drop = next(n for n, (_, _, code) in enumerate(received) if code is None)
    resent = [ids.index(c) for c, _, _ in received[drop + 1 :]]
    assert resent == sorted(resent) and resent[0] <= ids.index(received[drop][0])
    assert [state for _, state, _ in outbox(store)] == ["delivered"] * 20
    # The dropped message has its failed attempt archived, then its AA, same bytes both times.
    first, *_, last = transmissions(store, received[drop][0])
    assert first["error"].startswith("link to LIS failed") and first["ack_code"] is None
    assert last["ack_code"] == "AA" and last["raw_out"] == first["raw_out"]


@pytest.mark.parametrize(
    "bad_answer,reason",
    [
        (b"\x0bnot an acknowledgement\x1c\r", "unreadable acknowledgement"),
        (None, "acknowledgement for 'SOMEONE-ELSE', which no message in flight carries"),
    ],
)
async def test_garbage_or_an_ack_for_no_message_in_flight_fails_the_window(
    store: Store, bad_answer: bytes | None, reason: str
) -> None:
    ids = fill(store, 6)

    def bad_then_good(connection: int, got: list[bytes]) -> list[bytes] | None:
        if connection == 1:  # once the window is full: AA, then the bad answer, then AAs
            if len(got) < 4:
                return []
            bad = bad_answer or ack(got[1], acknowledged="SOMEONE-ELSE")
            return [ack(got[0]), bad, ack(got[2]), ack(got[3])]
        return [ack(got[-1])]

    lis = ScriptedLis(bad_then_good)
    port = await lis.start()
    try:
        async with sending(store, settings(port, window=4)) as health:
            await settled(store)
    finally:
        await lis.close()
    assert lis.connections == 2  # the sender closed the link it could not trust
    first_link = [v2.message_control_id(m) for n, m in lis.received if n == 1]
    second_link = [v2.message_control_id(m) for n, m in lis.received if n == 2]
    assert first_link == ids[:4]  # a full window was on the wire
    assert second_link == ids[1:]  # the first had its AA; the rest again, in order
    assert outbox(store) == [(ids[0], "delivered", 1)] + [(i, "delivered", 2) for i in ids[1:4]] + [
        (i, "delivered", 1) for i in ids[4:]
    ]
    failed = transmissions(store, ids[1])[0]
    assert failed["error"].startswith(reason)
    assert failed["raw_in"] is not None  # what came instead of an ACK is archived
    assert transmissions(store, ids[2])[0]["error"] == failed["error"]
    assert transmissions(store, ids[2])[0]["raw_in"] is None
    assert health.connections["lis"].errors == 1


async def test_no_ack_in_time_resends_the_whole_window(store: Store) -> None:
    ids = fill(store, 5)

    def silent_at_first(connection: int, got: list[bytes]) -> list[bytes] | None:
        return [] if connection == 1 else [ack(got[-1])]

    lis = ScriptedLis(silent_at_first)
    port = await lis.start()
    try:
        async with sending(store, settings(port, window=3, ack_timeout=0.3)):
            await settled(store)
    finally:
        await lis.close()
    assert [v2.message_control_id(m) for n, m in lis.received if n == 1] == ids[:3]
    assert [v2.message_control_id(m) for n, m in lis.received if n == 2] == ids
    for control_id in ids[:3]:
        failed, delivered = transmissions(store, control_id)
        assert failed["error"] == "no acknowledgement within 0.3 s"
        assert delivered["ack_code"] == "AA" and delivered["raw_out"] == failed["raw_out"]


async def test_a_link_the_lis_closed_while_idle_is_reopened_before_the_next_window(
    store: Store,
) -> None:
    ids = fill(store, 3)
    lis = ScriptedLis(lambda _connection, got: [ack(got[-1])])
    port = await lis.start()
    health = Health()
    health.add(ConnectionHealth("lis", "hl7", "mllp-client", ""))
    sender = LisSender(settings(port, window=4), store, health)
    task = asyncio.create_task(sender.run())
    try:
        await settled(store)
        lis.hang_up()
        await asyncio.sleep(0.1)  # the sender, idle, only sees it when it sends again
        for number in range(3, 6):
            store.save_message(_incoming(number))
        sender.wake()
        await settled(store)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await lis.close()
    assert lis.connections == 2
    assert [state_attempts for _, *state_attempts in outbox(store)] == [["delivered", 1]] * 6
    assert health.connections["lis"].errors == 0
    assert [v2.message_control_id(m) for _, m in lis.received][:3] == ids


# --- AE / AR ------------------------------------------------------------------------------


async def test_an_ae_inside_the_window_stops_that_message_only(store: Store) -> None:
    ids = fill(store, 8)
    lis = LisSimulator(fast_ack=True, ack_codes=["AA", "AA", "AE"])
    port = await lis.start()
    try:
        async with sending(store, settings(port, window=4)) as health:
            await settled(store)
            await counted(health, "lis", 14)
    finally:
        await lis.close()
    assert [m.parsed.control_id for m in lis.received if m.parsed] == ids  # each sent once
    states = outbox(store)
    assert states[2] == (ids[2], "rejected", 1)
    assert [s for n, (_, s, _) in enumerate(states) if n != 2] == ["delivered"] * 7
    [rejected] = transmissions(store, ids[2])
    assert rejected["ack_code"] == "AE"
    with store.engine.connect() as connection:
        error = connection.scalar(
            sa.text("select last_error from outbox where control_id = :c"), {"c": ids[2]}
        )
    assert error.startswith("LIS answered AE")
    assert health.connections["lis"].errors == 1
    assert health.connections["lis"].delivered == 14


async def test_an_ae_with_on_reject_retry_is_sent_again_and_the_window_drains(
    store: Store,
) -> None:
    ids = fill(store, 6)

    def ae_for_the_second(connection: int, got: list[bytes]) -> list[bytes] | None:
        if connection == 1 and len(got) <= 3:  # the first window answered at once
            return [] if len(got) < 3 else [ack(got[0]), ack(got[1], "AE"), ack(got[2])]
        return [ack(got[-1])]

    lis = ScriptedLis(ae_for_the_second)
    port = await lis.start()
    try:
        async with sending(store, settings(port, window=3, on_reject="retry")):
            await settled(store)
    finally:
        await lis.close()
    sent = [v2.message_control_id(m) for _, m in lis.received]
    # Those on the wire with it still get their answer; nothing newer leaves before it.
    assert sent == [*ids[:3], ids[1], *ids[3:]]
    assert lis.connections == 1  # an AE is an answer: the link stays up
    assert [state for _, state, _ in outbox(store)] == ["delivered"] * 6
    assert [t["ack_code"] for t in transmissions(store, ids[1])] == ["AE", "AA"]
    assert [len(transmissions(store, i)) for i in ids] == [1, 2, 1, 1, 1, 1]


# --- stop-and-wait, settings, the store's batch --------------------------------------------


async def test_window_1_is_still_stop_and_wait(store: Store) -> None:
    ids = fill(store, 5)
    lis = ScriptedLis(lambda _connection, got: [ack(got[-1])])
    port = await lis.start()
    try:
        async with sending(store, settings(port, window=1)):
            await settled(store)
    finally:
        await lis.close()
    assert lis.most_in_flight == 1
    assert [v2.message_control_id(m) for _, m in lis.received] == ids
    assert outbox(store) == [(i, "delivered", 1) for i in ids]


def test_window_is_validated_and_defaults_to_stop_and_wait() -> None:
    assert LisSettings(port=1).window == 1
    assert LisSettings(port=1, window=1000).window == 1000
    for bad in (0, 1001, -1):
        with pytest.raises(ValidationError, match="window"):
            LisSettings(port=1, window=bad)
    text = "store:\n  url: sqlite:///x.db\nlis:\n  port: 2575\n  window: {}\ninstruments: []\n"
    assert load_settings_text(text.format(64)).lis.window == 64
    with pytest.raises(ConfigError, match=r"lab.yaml:5: lis.window"):
        load_settings_text(text.format(0), "lab.yaml")


def test_outcomes_of_a_batch_are_recorded_together_as_one_by_one(any_store: Store) -> None:
    store = any_store
    ids = fill(store, 4)
    items = store.due("lis", NOW, limit=10)
    assert [i.control_id for i in items] == ids

    def sent(payload: bytes, code: str | None = None, error: str | None = None) -> Transmission:
        return Transmission(
            payload, NOW, NOW, raw_in=b"MSH|ack" if code else None, ack_code=code, error=error
        )

    counts = store.record_outcomes(
        [
            Store.Outcome(items[0].outbox_id, "delivered", sent(b"MSH|0", "AA")),
            Store.Outcome(items[1].outbox_id, "retry", sent(b"MSH|1", error="no ack"), delay=30),
            Store.Outcome(items[2].outbox_id, "rejected", sent(b"MSH|2", "AE"), error="AE: no"),
            Store.Outcome(items[3].outbox_id, "rejected", None, error="not built: bug"),
        ]
    )
    assert counts == [2, 0, 0, 0]
    assert outbox(store) == [
        (ids[0], "delivered", 1),
        (ids[1], "pending", 1),
        (ids[2], "rejected", 1),
        (ids[3], "rejected", 0),  # never sent: no attempt archived
    ]
    assert store.due("lis", NOW, limit=10) == []  # the retry is not due yet and blocks the rest
    [retry] = store.due("lis", datetime(2027, 1, 1, tzinfo=UTC), limit=10)
    assert retry.payload == b"MSH|1" and retry.attempts == 1  # the bytes sent are kept
    # Later items of the queue after the one waiting: `after` reads past what the sender holds.
    assert store.due("lis", datetime(2027, 1, 1, tzinfo=UTC), limit=10, after=retry.outbox_id) == []
    # Two outcomes for one message in one batch apply in order: the second state stays.
    again = [
        Store.Outcome(retry.outbox_id, "retry", sent(b"ignored", error="late"), delay=0),
        Store.Outcome(retry.outbox_id, "delivered", sent(b"ignored", "AA")),
    ]
    assert store.record_outcomes(again) == [0, 2]
    assert outbox(store)[1] == (ids[1], "delivered", 3)
    attempts = transmissions(store, ids[1])
    assert [(t["attempt"], t["ack_code"]) for t in attempts] == [(1, None), (2, None), (3, "AA")]
    [kept] = {bytes(t) for (t,) in _payloads(store, ids[1])}
    assert kept == b"MSH|1"  # the bytes first sent stay the message's bytes
    assert store.record_outcomes([]) == []
    with pytest.raises(ValueError, match="unknown outcome"):
        store.record_outcomes([Store.Outcome(items[1].outbox_id, "lost", None)])
    with pytest.raises(ValueError, match="needs its transmission"):
        store.record_outcomes([Store.Outcome(items[1].outbox_id, "delivered", None)])


def _payloads(store: Store, control_id: str) -> list[tuple[bytes]]:
    with store.engine.connect() as connection:
        rows = connection.execute(
            sa.text("select payload from outbox where control_id = :c"), {"c": control_id}
        )
        return [(row[0],) for row in rows]
