"""Orders pushed to an HL7 analyser (IHE LAW LAB-28), end to end on loopback sockets: the simulated
LIS sends OML^O33 / ORM^O01 to labgate, labgate pushes each order to the simulated analyser's order
listener (or on its results connection) and records what the analyser answered: AA -> sent, AE ->
refused with the reason, silence -> sent again later (the same message), never marked sent."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import trustme
from conftest import free_port, gateway_config
from daemon import Daemon

from middleware.config import load_settings_text
from middleware.gateway import Gateway
from protocols.hl7 import message_control_id, parse_order_message
from protocols.hl7.outbound import OrderPatient, OrderSpec
from simulators.hl7_analyser import NO_ANSWER, Hl7AnalyserSimulator
from simulators.lis import LisSimulator
from simulators.tls import server_context

PATIENT = OrderPatient("PAT7", "MARTIN", "Anne")
NEW = OrderSpec(specimen_id="LAW-0001", tests=("GLU", "CREA"), patient=PATIENT, priority="S")
CANCEL = OrderSpec(specimen_id="LAW-0001", tests=("GLU", "CREA"), patient=PATIENT, action="C")


def _instrument(orders: str, transport: str = "{type: tcp-server, port: 0}") -> str:
    return (
        "  - name: xn-hl7\n    protocol: hl7\n"
        f"    transport: {transport}\n"
        f"    orders: {{{orders}, ack_timeout: 1, retry: {{initial: 0.1, maximum: 0.3}}}}\n"
    )


def _order_port(port: int, message_type: str = "OML^O33", extra: str = "") -> str:
    return _instrument(f"host: 127.0.0.1, port: {port}, message_type: {message_type}{extra}")


@contextlib.asynccontextmanager
async def running(tmp_path: Path, instruments: str) -> AsyncIterator[tuple[Gateway, LisSimulator]]:
    """The daemon (in this event loop), the simulated LIS, orders downloaded to xn-hl7."""
    lis = LisSimulator()
    lis_port = await lis.start()
    text = (
        f"store:\n  url: sqlite:///{tmp_path / 'labgate.db'}\napi:\n  port: 0\n"
        f"lis:\n  port: {lis_port}\n  orders:\n    port: 0\n    download_to: [xn-hl7]\n"
        f"instruments:\n{instruments}"
    )
    gateway = Gateway(load_settings_text(text))
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    async with asyncio.timeout(10):
        await gateway.ready.wait()
    try:
        yield gateway, lis
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task
        await lis.close()


async def _send(gateway: Gateway, lis: LisSimulator, order: OrderSpec, kind: str = "OML") -> None:
    host, port = gateway.addresses["lis-orders"]
    [ack] = await lis.send_orders(host, port, [order], kind=kind)
    assert ack.code == "AA"


def orders(db: Path) -> list[sa.Row]:
    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as connection:
            query = "select id, action, state, error from orders where instrument = 'xn-hl7'"
            return list(connection.execute(sa.text(query + " order by id")))
    finally:
        engine.dispose()


async def _until(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


async def _states(db: Path, *expected: str) -> list[sa.Row]:
    await _until(lambda: [row.state for row in orders(db)] == list(expected))
    return orders(db)


@pytest.mark.parametrize(
    ("lis_kind", "message_type", "answer_type"),
    [("OML", "OML^O33", b"ORL^O34"), ("ORM", "ORM^O01", b"ACK^O01")],
)
async def test_order_reaches_the_order_listener_and_its_cancellation_follows(
    tmp_path: Path, lis_kind: str, message_type: str, answer_type: bytes
) -> None:
    analyser = Hl7AnalyserSimulator()
    port = await analyser.start_order_listener()
    try:
        async with running(tmp_path, _order_port(port, message_type)) as (gateway, lis):
            await _send(gateway, lis, NEW, lis_kind)
            [sent] = await _states(tmp_path / "labgate.db", "sent")
            [pushed] = analyser.received_orders()
            assert (pushed.message_type, pushed.trigger) == tuple(message_type.split("^"))
            [order] = pushed.orders
            assert (order.specimen_id, order.tests, order.order_control) == (
                "LAW-0001",
                ("GLU", "CREA"),
                "NW",
            )
            assert order.priority == "S" and order.patient.patient_id == "PAT7"
            await _send(gateway, lis, CANCEL, lis_kind)
            await _states(tmp_path / "labgate.db", "sent", "sent")
            [_, cancelled] = analyser.received_orders()
            assert [(o.specimen_id, o.order_control) for o in cancelled.orders] == [
                ("LAW-0001", "CA")
            ]
            assert gateway.health.connections["xn-hl7-orders"].state == "connected"
    finally:
        await analyser.close()
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'labgate.db'}")
    with engine.connect() as connection:
        trace = list(
            connection.execute(
                sa.text(
                    "select kind, direction, data from trace"
                    " where connection = 'xn-hl7-orders' order by id"
                )
            )
        )
    engine.dispose()
    assert [(t.kind, t.direction) for t in trace] == [
        ("order_push", "out"),
        ("order_answer", "in"),
    ] * 2
    assert all(answer_type in t.data for t in trace if t.kind == "order_answer")
    assert sent.action == "N"


async def test_an_order_the_analyser_refuses_is_kept_refused_with_its_reason(
    tmp_path: Path,
) -> None:
    analyser = Hl7AnalyserSimulator(order_acks=["AE"], order_ack_text="unknown test CREA")
    port = await analyser.start_order_listener()
    try:
        async with running(tmp_path, _order_port(port)) as (gateway, lis):
            await _send(gateway, lis, NEW)
            [refused] = await _states(tmp_path / "labgate.db", "refused")
            assert refused.error == "AE: unknown test CREA"
            # The next order goes on: a refusal does not hold the queue.
            await _send(gateway, lis, OrderSpec(specimen_id="LAW-0002", tests=("NA",)))
            await _states(tmp_path / "labgate.db", "refused", "sent")
            assert gateway.health.connections["xn-hl7-orders"].errors == 1
    finally:
        await analyser.close()
    assert analyser.order_answers == ["AE", "AA"]


async def test_an_unanswered_order_is_sent_again_and_never_marked_sent(tmp_path: Path) -> None:
    analyser = Hl7AnalyserSimulator(order_acks=[NO_ANSWER, NO_ANSWER])
    port = await analyser.start_order_listener()
    db = tmp_path / "labgate.db"
    try:
        async with running(tmp_path, _order_port(port)) as (gateway, lis):
            await _send(gateway, lis, NEW)
            await _until(lambda: len(analyser.orders_received) >= 2)
            assert [row.state for row in orders(db)] == ["pending"]  # silence is no delivery
            await _states(db, "sent")  # the third time it is answered AA
    finally:
        await analyser.close()
    first, second, third = analyser.orders_received
    assert first == second == third  # the same bytes, the same MSH-10, every time
    assert analyser.order_answers == [NO_ANSWER, NO_ANSWER, "AA"]


async def test_a_silent_analyser_never_gets_its_order_marked_sent(tmp_path: Path) -> None:
    analyser = Hl7AnalyserSimulator(order_ack=NO_ANSWER)
    port = await analyser.start_order_listener()
    try:
        async with running(tmp_path, _order_port(port)) as (gateway, lis):
            await _send(gateway, lis, NEW)
            await _until(lambda: len(analyser.orders_received) >= 3)
            assert [row.state for row in orders(tmp_path / "labgate.db")] == ["pending"]
            assert gateway.health.connections["xn-hl7-orders"].errors >= 2
    finally:
        await analyser.close()
    assert len({message_control_id(m) for m in analyser.orders_received}) == 1


async def test_orders_wait_for_an_analyser_that_is_not_listening_yet(tmp_path: Path) -> None:
    port = free_port()
    async with running(tmp_path, _order_port(port)) as (gateway, lis):
        await _send(gateway, lis, NEW)
        await asyncio.sleep(0.5)  # a few connection attempts fail meanwhile
        assert [row.state for row in orders(tmp_path / "labgate.db")] == ["pending"]
        analyser = Hl7AnalyserSimulator()
        await analyser.start_order_listener(port=port)
        try:
            await _states(tmp_path / "labgate.db", "sent")
        finally:
            await analyser.close()
        assert len(analyser.orders_received) == 1


async def test_orders_on_the_results_connection(tmp_path: Path) -> None:
    """For analysers that take orders where they send results: the ORL comes back on the
    same connection as the analyser's own results, and is never acknowledged in turn."""
    async with running(tmp_path, _instrument("connection: results")) as (gateway, lis):
        analyser = Hl7AnalyserSimulator("127.0.0.1", gateway.addresses["xn-hl7"][1])
        await analyser.connect()
        try:
            await _send(gateway, lis, NEW)
            await _states(tmp_path / "labgate.db", "sent")
            assert (await analyser.send_results("RES-1", count=2)).code == "AA"
            await _send(gateway, lis, CANCEL)
            await _states(tmp_path / "labgate.db", "sent", "sent")
            await lis.wait_for(1)
        finally:
            await analyser.close()
        controls = [o.orders[0].order_control for o in analyser.received_orders()]
        assert controls == ["NW", "CA"]
        assert "xn-hl7-orders" not in gateway.health.connections
        # What the analyser got: two orders and the ACK of its results, nothing more.
        assert len(analyser.received) == 3


async def test_orders_to_an_order_listener_over_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(str(files["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    cert.private_key_pem.write_to_path(str(files["key"]))
    analyser = Hl7AnalyserSimulator()
    port = await analyser.start_order_listener(ssl=server_context(files["cert"], files["key"]))
    instrument = _order_port(port, extra=f", tls: {{ca: {files['ca']}}}")
    try:
        async with running(tmp_path, instrument) as (gateway, lis):
            await _send(gateway, lis, NEW)
            await _states(tmp_path / "labgate.db", "sent")
            assert gateway.health.connections["xn-hl7-orders"].transport == "mllp-client+tls"
    finally:
        await analyser.close()


async def test_the_labgate_daemon_pushes_orders_it_got_before_a_restart(tmp_path: Path) -> None:
    """`labgate run` in its own process: the order arrives while the analyser's order listener
    is down and the daemon is stopped; the daemon started again sends it."""
    lis = LisSimulator()
    lis_port = await lis.start()
    analyser_port, orders_port, api_port = free_port(), free_port(), free_port()
    text = gateway_config(tmp_path / "labgate.db", lis_port=lis_port, api_port=api_port)
    text = text.replace(
        "instruments:\n",
        f"  orders:\n    port: {orders_port}\n    download_to: [xn-hl7]\ninstruments:\n"
        + _order_port(analyser_port),
    )
    config = tmp_path / "labgate.yaml"
    config.write_text(text)
    daemon = Daemon(config, api_port, tmp_path / "daemon.log")
    analyser = Hl7AnalyserSimulator()
    try:
        await asyncio.to_thread(daemon.start)
        [ack] = await lis.send_orders("127.0.0.1", orders_port, [NEW])
        assert ack.code == "AA"
        assert await asyncio.to_thread(daemon.interrupt) == 0
        assert [row.state for row in orders(tmp_path / "labgate.db")] == ["pending"]
        await analyser.start_order_listener(port=analyser_port)
        await asyncio.to_thread(daemon.start)
        await _states(tmp_path / "labgate.db", "sent")
        [pushed] = [parse_order_message(m) for m in analyser.orders_received]
        assert pushed.orders[0].specimen_id == "LAW-0001"
        health = await asyncio.to_thread(daemon.health)
        assert any(c["name"] == "xn-hl7-orders" for c in health["connections"])
    finally:
        await asyncio.to_thread(daemon.stop)
        await analyser.close()
        await lis.close()
