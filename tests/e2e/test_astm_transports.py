"""The ASTM interface end to end on every transport, with host query, order download and the
duplicate a lost final ACK causes: real daemon (in process), real SQLite, real sockets and real
pseudo-terminals joined as a null-modem cable."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from web.console_support import signed_in

from middleware.config import load_settings_text
from middleware.gateway import Gateway
from protocols import astm
from simulators.analyser import AnalyserSimulator, SimulatedResult, build_result_message
from simulators.faults import Faults
from simulators.lis import LisSimulator
from simulators.nullmodem import NullModem

RESULTS = [
    SimulatedResult("GLU", "5.4", "mmol/L", "3.9 to 6.1"),
    SimulatedResult("CREA", "88", "umol/L", "45 to 104"),
]
#: The analyser gives up on a lost ACK within a fraction of a second, not the standard's 15 s.
FAST = astm.Timers(establish=0.3, reply=0.3, receive=3.0, busy=0.05, contention_instrument=0.05)


@dataclass
class Daemon:
    gateway: Gateway
    lis: LisSimulator
    db: Path
    url: str = ""

    @property
    def api(self) -> str:
        return "http://{}:{}".format(*self.gateway.addresses["api"])

    def rows(self, query: str) -> list[sa.Row]:
        engine = sa.create_engine(self.url or f"sqlite:///{self.db}")
        try:
            with engine.connect() as connection:
                return list(connection.execute(sa.text(query)))
        finally:
            engine.dispose()


@contextlib.asynccontextmanager
async def daemon(
    tmp_path: Path, instrument_yaml: str, store_url: str | None = None
) -> AsyncIterator[Daemon]:
    """A daemon in this process with a simulated LIS; SQLite in `tmp_path` unless `store_url`
    names another store (the PostgreSQL tests)."""
    lis = LisSimulator()
    lis_port = await lis.start()
    db = tmp_path / "labgate.db"
    url = store_url or f"sqlite:///{db}"
    text = (
        f"gateway: LABGATE\nstore:\n  url: {url}\napi:\n  port: 0\n"
        f"lis:\n  port: {lis_port}\n  retry:\n    initial: 0.2\n    maximum: 1\n"
        f"instruments:\n{instrument_yaml}"
    )
    gateway = Gateway(load_settings_text(text))
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    await asyncio.wait_for(gateway.ready.wait(), 10)
    try:
        yield Daemon(gateway, lis, db, url)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await lis.close()


def tcp_server_instrument(driver: str = "generic-astm", extra: str = "") -> str:
    return (
        f"  - name: chem-1\n    protocol: astm\n    driver: {driver}\n{extra}"
        "    transport:\n      type: tcp-server\n      port: 0\n"
    )


async def test_serial_analyser_over_a_null_modem_cable(tmp_path: Path) -> None:
    cable = NullModem()
    labgate_end, analyser_end = await cable.start()
    instrument = (
        "  - name: xn-550\n    protocol: astm\n    transport:\n      type: serial\n"
        f"      port: {labgate_end}\n      baudrate: 9600\n"
    )
    try:
        async with daemon(tmp_path, instrument) as running:
            analyser = AnalyserSimulator.over_serial(analyser_end, baudrate=9600)
            await analyser.connect()
            try:
                for number in range(2):
                    message = build_result_message(f"SER{number}", "P1", RESULTS)
                    assert await analyser.send(message) is True
            finally:
                await analyser.close()
            received = await running.lis.wait_for(2)
            assert [m.parsed.observations[0].specimen_id for m in received if m.parsed] == [
                "SER0",
                "SER1",
            ]
            health = running.gateway.health.connections["xn-550"]
            assert (health.transport, health.state) == ("serial", "connected")
            assert health.address.startswith(labgate_end)
    finally:
        await cable.close()


async def test_tcp_client_mode_connects_out_and_comes_back_after_the_analyser_drops(
    tmp_path: Path,
) -> None:
    """Some analysers listen and wait for the host to connect; labgate connects out, and when
    the link drops it connects again by itself."""
    relay = _TcpCable()
    analyser_port, labgate_port = await relay.start()
    instrument = (
        "  - name: dxh\n    protocol: astm\n    transport:\n      type: tcp-client\n"
        f"      host: 127.0.0.1\n      port: {labgate_port}\n"
        "      reconnect:\n        initial: 0.1\n        maximum: 0.2\n"
    )
    try:
        async with daemon(tmp_path, instrument) as running:
            for number in range(2):
                analyser = AnalyserSimulator("127.0.0.1", analyser_port)
                await analyser.connect()
                try:
                    message = build_result_message(f"CLI{number}", "P1", RESULTS)
                    assert await analyser.send(message) is True
                finally:
                    await analyser.close()  # the cable drops: labgate must reconnect
                await running.lis.wait_for(number + 1)
            assert relay.accepted_from_labgate >= 2
    finally:
        await relay.close()


async def test_unframed_analyser_is_acknowledged_after_commit(tmp_path: Path) -> None:
    extra = "    framing: unframed\n    unframed_ack: true\n"
    async with daemon(tmp_path, tcp_server_instrument(extra=extra)) as running:
        port = running.gateway.addresses["chem-1"][1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        message = build_result_message("UNF1", "P1", RESULTS).replace(b"\r", b"\r\n")
        writer.write(message)
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(1), 10) == b"\x06"
        assert running.rows("select count(*) from results")[0][0] == 2  # stored before the ACK
        writer.close()
        [received] = await running.lis.wait_for(1)
        assert received.parsed is not None
        assert [o.code for o in received.parsed.observations] == ["GLU", "CREA"]


async def test_analyser_query_is_answered_with_its_orders_or_with_no_information(
    tmp_path: Path,
) -> None:
    async with daemon(tmp_path, tcp_server_instrument()) as running:
        async with signed_in(running.gateway) as client:
            created = await client.post(
                f"{running.api}/api/orders",
                json={
                    "specimen_id": "Q-0001",
                    "tests": ["GLU", "K"],
                    "patient": {"patient_id": "PAT9", "family_name": "MARTIN", "sex": "F"},
                    "priority": "S",
                },
            )
            assert created.status_code == 201, created.text
        analyser = AnalyserSimulator("127.0.0.1", running.gateway.addresses["chem-1"][1])
        await analyser.connect()
        try:
            assert await analyser.send(_query("Q-0001")) is True
            answer = await _next_received(analyser, 0)
            assert await analyser.send(_query("NOPE-404")) is True
            nothing = await _next_received(analyser, 1)
        finally:
            await analyser.close()
        orders = [r for r in answer.records if r.type == "O"]
        assert [o.field(3) for o in orders] == ["Q-0001"]
        tests = [rep for o in orders for rep in o.repeats(5)]
        assert {c for rep in tests for c in rep if c} >= {"GLU", "K"}
        assert [r.field(3) for r in answer.records if r.type == "P"] == ["PAT9"]
        assert not [r for r in nothing.records if r.type == "O"]
        assert nothing.records[-1].type == "L" and nothing.records[-1].field(3) == "I"
        assert running.rows("select state from orders")[0][0] == "sent"


async def test_orders_for_a_connected_analyser_are_downloaded_at_once(tmp_path: Path) -> None:
    async with daemon(tmp_path, tcp_server_instrument()) as running:
        analyser = AnalyserSimulator("127.0.0.1", running.gateway.addresses["chem-1"][1])
        await analyser.connect()
        try:
            async with signed_in(running.gateway) as client:
                for specimen in ("DL-1", "DL-2"):
                    response = await client.post(
                        f"{running.api}/api/orders",
                        json={"specimen_id": specimen, "tests": ["NA"], "instrument": "chem-1"},
                    )
                    assert response.status_code == 201
                refused = await client.post(
                    f"{running.api}/api/orders",
                    json={"specimen_id": "X", "tests": ["NA"], "instrument": "nope"},
                )
                assert refused.status_code == 422
            downloaded: set[str] = set()
            async with asyncio.timeout(10):
                while downloaded != {"DL-1", "DL-2"}:
                    for text in analyser.received:
                        message = astm.decode_message(text)
                        downloaded |= {r.field(3) for r in message.records if r.type == "O"}
                    await asyncio.sleep(0.05)
        finally:
            await analyser.close()
        await _until(
            lambda: [r[0] for r in running.rows("select state from orders")] == ["sent"] * 2
        )


async def test_message_resent_after_a_lost_final_ack_is_stored_and_delivered_once(
    tmp_path: Path,
) -> None:
    # Seeded so that the ACK of one message's final frame is lost: the analyser times out and
    # sends that whole message again; labgate had already committed it.
    faults = Faults(drop_acks=0.25, seed=2)
    async with daemon(tmp_path, tcp_server_instrument()) as running:
        analyser = AnalyserSimulator(
            "127.0.0.1", running.gateway.addresses["chem-1"][1], faults=faults, timers=FAST
        )
        await analyser.connect()
        try:
            for number in range(3):
                message = build_result_message(f"DUP{number}", "P1", RESULTS, when=None)
                assert await analyser.send(message) is True
        finally:
            await analyser.close()
        received = await running.lis.wait_for(3)
        await asyncio.sleep(0.5)
        assert len(running.lis.received) == 3
        assert sorted(m.parsed.observations[0].specimen_id for m in received if m.parsed) == [
            "DUP0",
            "DUP1",
            "DUP2",
        ]
        assert running.rows("select count(*) from results")[0][0] == 6
        duplicates = running.rows("select count(*) from trace where kind = 'duplicate_message'")
        assert faults.counts.acks_dropped > 0
        assert duplicates[0][0] >= 1


def _query(specimen: str) -> bytes:
    return f"H|\\^&|||SIM-CHEM^1.0\rQ|1|^{specimen}||ALL||||||||O\rL|1|N\r".encode()


async def _next_received(analyser: AnalyserSimulator, index: int) -> astm.Message:
    async with asyncio.timeout(10):
        while len(analyser.received) <= index:
            await asyncio.sleep(0.02)
    return astm.decode_message(analyser.received[index])


async def _until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


class _TcpCable:
    """Two listening ports joined like a cable: the simulated analyser connects to one, labgate
    (in tcp-client mode) to the other; bytes flow between the two once both are connected."""

    def __init__(self) -> None:
        self.accepted_from_labgate = 0
        self._sides: dict[str, asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {
            "analyser": asyncio.Queue(),
            "labgate": asyncio.Queue(),
        }
        self._servers: list[asyncio.Server] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> tuple[int, int]:
        ports = []
        for side in ("analyser", "labgate"):

            async def accept(reader, writer, side=side):  # type: ignore[no-untyped-def]
                if side == "labgate":
                    self.accepted_from_labgate += 1
                await self._sides[side].put((reader, writer))

            server = await asyncio.start_server(accept, "127.0.0.1", 0)
            self._servers.append(server)
            ports.append(server.sockets[0].getsockname()[1])
        self._task = asyncio.create_task(self._join())
        return ports[0], ports[1]

    async def _join(self) -> None:
        while True:
            analyser = await self._sides["analyser"].get()
            labgate = await self._sides["labgate"].get()
            await asyncio.gather(self._pipe(analyser, labgate), self._pipe(labgate, analyser))

    @staticmethod
    async def _pipe(source, target) -> None:  # type: ignore[no-untyped-def]
        try:
            while data := await source[0].read(65536):
                target[1].write(data)
        except ConnectionError:
            pass
        finally:
            target[1].close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for server in self._servers:
            server.close()


async def test_unframed_message_cut_off_by_a_disconnect_is_kept(tmp_path: Path) -> None:
    async with daemon(tmp_path, tcp_server_instrument(extra="    framing: unframed\n")) as running:
        port = running.gateway.addresses["chem-1"][1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        records = build_result_message("UNF-CUT", "P1", RESULTS).split(b"\r")[:-2]  # no L
        writer.write(b"\n".join(records) + b"\n")
        await writer.drain()
        writer.close()
        [received] = await running.lis.wait_for(1)
        assert received.parsed is not None
        assert {o.specimen_id for o in received.parsed.observations} == {"UNF-CUT"}


async def test_cp1252_analyser_text_reaches_the_lis_as_unicode(tmp_path: Path) -> None:
    extra = "    encoding: cp1252\n"
    async with daemon(tmp_path, tcp_server_instrument(extra=extra)) as running:
        analyser = AnalyserSimulator("127.0.0.1", running.gateway.addresses["chem-1"][1])
        await analyser.connect()
        try:
            message = build_result_message(
                "ENC-1", "P1", [SimulatedResult("CREA", "88", "umol/L", "45 to 104")]
            ).replace(b"umol/L", "µmol/L".encode("cp1252"))
            assert await analyser.send(message) is True
        finally:
            await analyser.close()
        [received] = await running.lis.wait_for(1)
        assert received.parsed is not None
        assert [o.units for o in received.parsed.observations] == ["µmol/L"]
        assert "µmol/L".encode() in received.raw
