"""HL7 on both sides, end to end through the real daemon on loopback sockets: HL7 analysers
(OUL^R22 / ORU^R01, with and without mutual TLS), orders from the LIS (OML^O33 / ORM^O01) down
to an ASTM analyser, OUL^R22 and TLS towards the LIS, AE handling."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from web.console_support import signed_in

from middleware.config import load_settings_text
from middleware.gateway import Gateway
from protocols import astm
from protocols.hl7.outbound import OrderPatient, OrderSpec
from simulators.analyser import AnalyserSimulator
from simulators.hl7_analyser import Hl7AnalyserSimulator
from simulators.lis import LisSimulator
from simulators.tls import client_context, server_context


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, instruments: str, lis_extra: str = "", lis: LisSimulator | None = None
) -> AsyncIterator[tuple[Gateway, LisSimulator, Path]]:
    lis = lis or LisSimulator()
    lis_port = await lis.start()
    db = tmp_path / "labgate.db"
    text = (
        f"store:\n  url: sqlite:///{db}\napi:\n  port: 0\nlis:\n  port: {lis_port}\n"
        f"  ack_timeout: 5\n  retry:\n    initial: 0.1\n    maximum: 0.3\n{lis_extra}"
        f"instruments:\n{instruments}"
    )
    gateway = Gateway(load_settings_text(text))
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    await asyncio.wait_for(gateway.ready.wait(), 10)
    try:
        yield gateway, lis, db
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await lis.close()


def rows(db: Path, query: str) -> list[sa.Row]:
    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as connection:
            return list(connection.execute(sa.text(query)))
    finally:
        engine.dispose()


HL7_ANALYSER = "  - name: xn-hl7\n    protocol: hl7\n    transport: {type: tcp-server, port: 0}\n"


@pytest.mark.parametrize("kind", ["OUL", "ORU"])
async def test_hl7_analyser_results_are_acknowledged_after_commit_and_reach_the_lis(
    tmp_path: Path, kind: str
) -> None:
    async with running(tmp_path, HL7_ANALYSER) as (gateway, lis, db):
        analyser = Hl7AnalyserSimulator(
            "127.0.0.1",
            gateway.addresses["xn-hl7"][1],
            kind=kind,
            lf_separators=True,
            obx_from_zero=True,
        )
        await analyser.connect()
        try:
            ack = await analyser.send_results("HL7-0001", "PAT42", count=4)
        finally:
            await analyser.close()
        assert ack.code == "AA"
        assert rows(db, "select count(*) from results")[0][0] == 4  # stored before the AA
        [received] = await lis.wait_for(1)
        assert received.parsed is not None
        assert {o.specimen_id for o in received.parsed.observations} == {"HL7-0001"}
        assert len(received.parsed.observations) == 4
        assert rows(db, "select protocol from messages")[0][0] == "hl7"


async def test_an_hl7_message_resent_after_a_lost_ack_is_acknowledged_and_stored_once(
    tmp_path: Path,
) -> None:
    """The analyser sends the same message again (our AA lost): AA again, nothing stored
    twice, the LIS gets it once, and the trace says it was a resend of the first."""
    async with running(tmp_path, HL7_ANALYSER) as (gateway, lis, db):
        analyser = Hl7AnalyserSimulator("127.0.0.1", gateway.addresses["xn-hl7"][1])
        await analyser.connect()
        try:
            message = analyser.results_message("HL7-DUP", "PAT7", count=3)
            first = await analyser.send(message)
            again = await analyser.send(message)
        finally:
            await analyser.close()
        assert (first.code, again.code) == ("AA", "AA")
        await lis.wait_for(1)
        await asyncio.sleep(0.3)  # time for a second sending, were there one
        assert len(lis.delivered) == 1
        assert rows(db, "select count(*) from messages")[0][0] == 1
        assert rows(db, "select count(*) from results")[0][0] == 3
        [(original,)] = rows(db, "select message_id from trace where kind = 'duplicate_message'")
        assert original == rows(db, "select message_id from messages")[0][0]


async def test_hl7_qc_specimen_is_stored_and_not_sent_to_the_lis(tmp_path: Path) -> None:
    async with running(tmp_path, HL7_ANALYSER) as (gateway, lis, db):
        analyser = Hl7AnalyserSimulator("127.0.0.1", gateway.addresses["xn-hl7"][1], qc=True)
        await analyser.connect()
        try:
            assert (await analyser.send_results("QC-LOT7", count=2)).code == "AA"
        finally:
            await analyser.close()
        assert rows(db, "select count(*) from results where is_qc")[0][0] == 2
        assert rows(db, "select count(*) from outbox")[0][0] == 0
        assert lis.received == []


async def test_unreadable_hl7_is_answered_ae_and_kept_with_its_reason(tmp_path: Path) -> None:
    async with running(tmp_path, HL7_ANALYSER) as (gateway, _lis, db):
        analyser = Hl7AnalyserSimulator("127.0.0.1", gateway.addresses["xn-hl7"][1])
        await analyser.connect()
        try:
            ack = await analyser.send(
                b"MSH|^~\\&|XN|LAB|LABGATE|LAB|20260101||OUL^R22|BAD1|P|2.5.1\rOBX|1|NM|GLU||5\r"
            )
        finally:
            await analyser.close()
        assert ack.code == "AE"
        [refused] = rows(db, "select status, error, raw from messages")
        assert refused.status == "refused" and refused.error
        assert b"BAD1" in refused.raw


async def test_hl7_analyser_over_mutual_tls(tmp_path: Path, pki: dict[str, str]) -> None:
    instrument = (
        "  - name: xn-hl7\n    protocol: hl7\n    transport: {type: tcp-server, port: 0}\n"
        f"    tls: {{cert: {pki['server.pem']}, key: {pki['server.key']}, ca: {pki['ca.pem']},"
        " require_client_cert: true}\n"
    )
    async with running(tmp_path, instrument) as (gateway, lis, db):
        port = gateway.addresses["xn-hl7"][1]
        trusted = client_context(
            pki["ca.pem"], certfile=pki["client.pem"], keyfile=pki["client.key"]
        )
        analyser = Hl7AnalyserSimulator("127.0.0.1", port, ssl=trusted, server_hostname="127.0.0.1")
        await analyser.connect()
        try:
            assert (await analyser.send_results("TLS-1", count=2)).code == "AA"
        finally:
            await analyser.close()
        await lis.wait_for(1)
        anonymous = Hl7AnalyserSimulator(
            "127.0.0.1",
            port,
            ssl=client_context(pki["ca.pem"]),
            server_hostname="127.0.0.1",
            ack_timeout=3,
        )
        with pytest.raises((OSError, TimeoutError)):
            await anonymous.connect()
            await anonymous.send_results("TLS-2", count=1)
        await anonymous.close()
        assert rows(db, "select count(*) from results")[0][0] == 2


async def test_results_go_to_a_tls_lis_as_oul_r22(tmp_path: Path, pki: dict[str, str]) -> None:
    lis = LisSimulator(ssl=server_context(pki["server.pem"], pki["server.key"]))
    lis_extra = f"  message_type: OUL^R22\n  tls: {{ca: {pki['ca.pem']}}}\n"
    async with running(tmp_path, HL7_ANALYSER, lis_extra, lis) as (gateway, lis, _db):
        analyser = Hl7AnalyserSimulator("127.0.0.1", gateway.addresses["xn-hl7"][1])
        await analyser.connect()
        try:
            assert (await analyser.send_results("OUL-1", count=3)).code == "AA"
        finally:
            await analyser.close()
        [received] = await lis.wait_for(1)
        assert b"OUL^R22" in received.raw
        assert received.parsed is not None and len(received.parsed.observations) == 3
        assert gateway.health.connections["lis"].transport == "mllp-client+tls"


async def test_lis_error_answer_is_retried_when_configured(tmp_path: Path) -> None:
    lis = LisSimulator(ack_codes=["AE"])
    async with running(tmp_path, HL7_ANALYSER, "  on_reject: retry\n", lis) as (gateway, lis, db):
        analyser = Hl7AnalyserSimulator("127.0.0.1", gateway.addresses["xn-hl7"][1])
        await analyser.connect()
        try:
            assert (await analyser.send_results("AE-1", count=1)).code == "AA"
        finally:
            await analyser.close()
        await lis.wait_for(1)
        async with asyncio.timeout(10):  # the LIS answered; labgate commits right after
            while rows(db, "select state from outbox")[0][0] != "delivered":
                await asyncio.sleep(0.05)
        codes = [r[0] for r in rows(db, "select ack_code from transmissions order by id")]
        assert codes == ["AE", "AA"]


@pytest.mark.parametrize("kind", ["OML", "ORM"])
async def test_lis_orders_are_stored_acknowledged_and_downloaded_then_cancelled(
    tmp_path: Path, kind: str
) -> None:
    astm_analyser = (
        "  - name: chem-1\n    protocol: astm\n    transport: {type: tcp-server, port: 0}\n"
    )
    lis_extra = "  orders:\n    port: 0\n    download_to: [chem-1]\n"
    async with running(tmp_path, astm_analyser, lis_extra) as (gateway, lis, db):
        analyser = AnalyserSimulator("127.0.0.1", gateway.addresses["chem-1"][1])
        await analyser.connect()
        try:
            host, port = gateway.addresses["lis-orders"]
            order = OrderSpec(
                specimen_id="LIS-0001",
                tests=("GLU", "CREA"),
                patient=OrderPatient("PAT7", "MARTIN", "Anne"),
                priority="S",
            )
            [ack] = await lis.send_orders(host, port, [order], kind=kind)
            assert ack.code == "AA"
            downloaded = await _orders_received(analyser, 1)
            [o_record] = [r for r in downloaded[0].records if r.type == "O"]
            assert o_record.field(3) == "LIS-0001"
            codes = {c for rep in o_record.repeats(5) for c in rep if c}
            assert {"GLU", "CREA"} <= codes
            cancel = OrderSpec(
                specimen_id="LIS-0001",
                tests=("GLU", "CREA"),
                action="C",
                patient=OrderPatient("PAT7", "MARTIN", "Anne"),
            )
            [ack] = await lis.send_orders(host, port, [cancel], kind=kind)
            assert ack.code == "AA"
            second = await _orders_received(analyser, 2)
            [cancelled] = [r for r in second[1].records if r.type == "O"]
            assert cancelled.field(3) == "LIS-0001" and cancelled.field(12) == "C"
        finally:
            await analyser.close()
        assert rows(db, "select count(*) from trace where kind = 'order_message'")[0][0] == 2


async def _orders_received(analyser: AnalyserSimulator, count: int) -> list[astm.Message]:
    async with asyncio.timeout(10):
        while len(analyser.received) < count:
            await asyncio.sleep(0.02)
    return [astm.decode_message(text) for text in analyser.received]


async def test_hl7_analyser_query_is_answered_from_held_orders(tmp_path: Path) -> None:

    async with running(tmp_path, HL7_ANALYSER) as (gateway, _lis, db):
        api = "http://{}:{}".format(*gateway.addresses["api"])
        async with signed_in(gateway) as client:
            response = await client.post(
                f"{api}/api/orders",
                json={"specimen_id": "WOS-1", "tests": ["HGB", "WBC"], "priority": "S"},
            )
            assert response.status_code == 201
        analyser = Hl7AnalyserSimulator("127.0.0.1", gateway.addresses["xn-hl7"][1])
        await analyser.connect()
        try:
            found = await analyser.query("WOS-1")
            nothing = await analyser.query("WOS-404")
        finally:
            await analyser.close()
        assert found.query_status == "OK"
        [order] = found.orders
        assert (order.specimen_id, tuple(order.tests), order.priority) == (
            "WOS-1",
            ("HGB", "WBC"),
            "S",
        )
        assert nothing.query_status == "NF" and nothing.orders == ()
        assert rows(db, "select state from orders")[0][0] == "sent"


async def test_labgate_connects_out_to_an_hl7_analyser_that_listens(tmp_path: Path) -> None:
    analyser = Hl7AnalyserSimulator("127.0.0.1", 0, mode="server")
    port = await analyser.start()
    instrument = (
        "  - name: xn-hl7\n    protocol: hl7\n"
        f"    transport: {{type: tcp-client, host: 127.0.0.1, port: {port},"
        " reconnect: {initial: 0.1, maximum: 0.2}}\n"
    )
    try:
        async with running(tmp_path, instrument) as (gateway, lis, _db):
            async with asyncio.timeout(10):
                while gateway.health.connections["xn-hl7"].state != "connected":
                    await asyncio.sleep(0.05)
            assert (await analyser.send_results("OUT-1", count=2)).code == "AA"
            [received] = await lis.wait_for(1)
            assert received.parsed is not None and len(received.parsed.observations) == 2
    finally:
        await analyser.close()


async def test_enhanced_mode_asks_for_a_commit_ack_and_takes_ca_as_delivery(tmp_path: Path) -> None:
    lis = LisSimulator(ack_code="CA")
    async with running(tmp_path, HL7_ANALYSER, "  ack_mode: enhanced\n", lis) as (gateway, lis, db):
        analyser = Hl7AnalyserSimulator("127.0.0.1", gateway.addresses["xn-hl7"][1])
        await analyser.connect()
        try:
            assert (await analyser.send_results("ENH-1", count=1)).code == "AA"
        finally:
            await analyser.close()
        async with asyncio.timeout(10):
            while rows(db, "select state from outbox")[0][0] != "delivered":
                await asyncio.sleep(0.05)
        [received] = lis.received
        msh = received.raw.split(b"\r", 1)[0].split(b"|")
        assert (msh[14], msh[15]) == (b"AL", b"NE")  # MSH-15, MSH-16
        assert rows(db, "select ack_code from transmissions")[0][0] == "CA"


async def test_queries_for_unknown_specimens_are_forwarded_to_the_lis(tmp_path: Path) -> None:
    """LAB-27 relay: labgate holds no order for the specimen, the LIS does; the ASTM analyser
    and the HL7 analyser both get the LIS's order as their answer, in time."""
    lis = LisSimulator()
    lis.orders_for_query = {
        "REMOTE-1": [OrderSpec(specimen_id="REMOTE-1", tests=("GLU",), patient=OrderPatient("P9"))],
        "REMOTE-2": [OrderSpec(specimen_id="REMOTE-2", tests=("HGB",))],
    }
    instruments = HL7_ANALYSER + (
        "  - name: chem-1\n    protocol: astm\n    transport: {type: tcp-server, port: 0}\n"
    )
    lis_extra = "  query_forwarding: true\n  query_timeout: 3\n"
    async with running(tmp_path, instruments, lis_extra, lis) as (gateway, lis, db):
        astm_analyser = AnalyserSimulator("127.0.0.1", gateway.addresses["chem-1"][1])
        await astm_analyser.connect()
        try:
            query = b"H|\\^&|||SIM\rQ|1|^REMOTE-1||ALL||||||||O\rL|1|N\r"
            assert await astm_analyser.send(query) is True
            [answer] = await _orders_received(astm_analyser, 1)
        finally:
            await astm_analyser.close()
        [o_record] = [r for r in answer.records if r.type == "O"]
        assert o_record.field(3) == "REMOTE-1"
        hl7_analyser = Hl7AnalyserSimulator("127.0.0.1", gateway.addresses["xn-hl7"][1])
        await hl7_analyser.connect()
        try:
            relayed = await hl7_analyser.query("REMOTE-2")
            unknown = await hl7_analyser.query("NOWHERE")
        finally:
            await hl7_analyser.close()
        assert relayed.query_status == "OK" and [o.specimen_id for o in relayed.orders] == [
            "REMOTE-2"
        ]
        assert unknown.query_status == "NF"
        queries = [m for m in lis.received if m.query is not None]
        assert len(queries) == 3
        states = {
            r[0]: r[1]
            for r in rows(db, "select specimen_id, state from orders where instrument != ''")
        }
        assert states == {"REMOTE-1": "sent", "REMOTE-2": "sent"}
