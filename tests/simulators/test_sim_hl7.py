"""The HL7 analyser simulator against the simulated LIS over real loopback sockets, in clear,
over TLS and mutual TLS (certificates made by trustme at test time); the LIS's work-order
query answers and its order push."""

from __future__ import annotations

import asyncio
import ssl
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trustme

from protocols import hl7 as v2
from protocols.hl7.outbound import (
    OrderPatient,
    OrderSpec,
    build_oml_o33,
    build_oul_r22,
    parse_orders,
)
from simulators.hl7_analyser import Hl7AnalyserSimulator
from simulators.lis import LisSimulator
from simulators.tls import client_context, server_context

ORDER = OrderSpec(specimen_id="S1", tests=("GLU", "K"), patient=OrderPatient("PAT1", "DUPONT"))


@pytest.fixture(name="ca", scope="module")
def fixture_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(name="pki", scope="module")
def fixture_pki(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """PEM files: the CA, a server certificate for 127.0.0.1, a client certificate."""
    folder = tmp_path_factory.mktemp("pki")
    files = {"ca": folder / "ca.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    for role, names in (("server", ("127.0.0.1", "localhost")), ("client", ("analyser-1",))):
        cert = ca.issue_cert(*names)
        files[f"{role}_cert"] = folder / f"{role}.pem"
        files[f"{role}_key"] = folder / f"{role}.key"
        cert.cert_chain_pems[0].write_to_path(str(files[f"{role}_cert"]))
        cert.private_key_pem.write_to_path(str(files[f"{role}_key"]))
    return files


@pytest.mark.parametrize("kind", ["OUL", "ORU"])
async def test_results_reach_the_lis_and_are_acknowledged(kind: str) -> None:
    lis = LisSimulator()
    port = await lis.start()
    sim = Hl7AnalyserSimulator(port=port, kind=kind, seed=1)
    try:
        await sim.connect()
        ack = await sim.send_results("S1", count=3)
        await sim.close()
    finally:
        await lis.close()
    assert ack.code == "AA"
    assert ack.acknowledged_control_id == v2.message_control_id(lis.received[0].raw)
    assert sim.acks == [ack]
    assert lis.received[0].raw.startswith(b"MSH|^~\\&|SIM-HL7|")
    [delivered] = lis.delivered
    assert delivered.parsed is not None
    assert [(o.patient_id, o.specimen_id, o.producer) for o in delivered.parsed.observations] == [
        ("PAT00001", "S1", "SIM-HL7")
    ] * 3


async def test_lis_delivers_an_oul_r22_like_the_same_oru_r01() -> None:
    """OUL^R22 (IHE LAW LAB-29) is acknowledged AA and read into the same observations."""
    glu = v2.ObservationOut(
        set_id=1,
        code="GLU",
        text="Glucose",
        value="7.2",
        units="mmol/L",
        reference_range="3.9-6.1",
        abnormal_flags=("H",),
        observed_at=datetime(2025, 6, 28, 17, 33, tzinfo=UTC),
        producer="SIM-CHEM",
        notes=("lipemic", "rerun"),
    )
    k = v2.ObservationOut(set_id=2, code="K", value="hemolysed", status="X")
    na = v2.ObservationOut(set_id=1, code="NA", value="140", units="mmol/L")
    orders = (
        v2.OrderOut("S1", "CHEM", "Chemistry", None, (glu, k), "SER"),
        v2.OrderOut("S2", "ELEC", "", None, (na,), "SER"),
    )
    patient = v2.PatientOut("PAT1", "DUPONT", "MARIE", None, "F", orders)
    now = datetime.now(UTC)
    oul = build_oul_r22(v2.MessageHeader("SIM-CHEM", "LAB", "LIS", "LAB", "OUL1", now), [patient])
    oru = v2.build_oru_r01(
        v2.MessageHeader("SIM-CHEM", "LAB", "LIS", "LAB", "ORU1", now), [patient]
    )
    lis = LisSimulator()
    port = await lis.start()
    sim = Hl7AnalyserSimulator(port=port)
    try:
        await sim.connect()
        acks = [await sim.send(oul), await sim.send(oru)]
        await sim.close()
    finally:
        await lis.close()
    assert [(a.code, a.acknowledged_control_id) for a in acks] == [("AA", "OUL1"), ("AA", "ORU1")]
    got_oul, got_oru = (m.parsed for m in lis.delivered)
    assert got_oul is not None and got_oru is not None
    assert (got_oul.control_id, got_oul.sending_application) == ("OUL1", "SIM-CHEM")
    fields = ("patient_id", "specimen_id", "code", "value", "units", "reference_range")
    more = ("abnormal_flags", "status", "producer", "notes", "observed_at", "test_code")
    rows = [tuple(getattr(o, f) for f in fields + more) for o in got_oul.observations]
    assert rows == [tuple(getattr(o, f) for f in fields + more) for o in got_oru.observations]
    glu_row = ("PAT1", "S1", "GLU", "7.2", "mmol/L", "3.9-6.1", ("H",), "F", "SIM-CHEM")
    assert rows == [
        (*glu_row, ("lipemic", "rerun"), glu.observed_at, "CHEM"),
        ("PAT1", "S1", "K", "hemolysed", "", "", (), "X", "", (), None, "CHEM"),
        ("PAT1", "S2", "NA", "140", "mmol/L", "", (), "F", "", (), None, "ELEC"),
    ]


async def test_quirks_lf_obx_zero_and_qc() -> None:
    sim = Hl7AnalyserSimulator(lf_separators=True, obx_from_zero=True, qc=True, seed=2)
    message = sim.results_message("QC1", count=2)
    assert b"\r" not in message
    lines = message.split(b"\n")
    assert [line[:6] for line in lines if line.startswith(b"OBX")] == [b"OBX|0|", b"OBX|1|"]
    assert not any(line.startswith(b"PID") for line in lines)
    assert any(line.startswith(b"SPM|1|QC1||SER|||||||Q") for line in lines)
    with pytest.raises(ValueError, match="QC"):
        Hl7AnalyserSimulator(kind="ORU", qc=True)


async def test_lf_separated_oru_is_read_by_the_lis() -> None:
    lis = LisSimulator()
    port = await lis.start()
    sim = Hl7AnalyserSimulator(port=port, kind="ORU", lf_separators=True, seed=3)
    try:
        await sim.connect()
        ack = await sim.send_results("S9", count=2)
        await sim.close()
    finally:
        await lis.close()
    assert ack.code == "AA"
    parsed = lis.delivered[0].parsed
    assert parsed is not None
    assert [o.specimen_id for o in parsed.observations] == ["S9", "S9"]


async def test_query_is_answered_ok_with_orders_and_nf_without() -> None:
    lis = LisSimulator(orders_for_query={"S1": [ORDER]})
    port = await lis.start()
    sim = Hl7AnalyserSimulator(port=port, seed=4)
    try:
        await sim.connect()
        found = await sim.query("S1", query_tag="T1")
        missing = await sim.query("S2")
        await sim.close()
    finally:
        await lis.close()
    assert (found.query_status, found.query_tag) == ("OK", "T1")
    assert [(o.specimen_id, o.tests, o.patient.patient_id, o.action) for o in found.orders] == [
        ("S1", ("GLU", "K"), "PAT1", "N")
    ]
    assert (missing.query_status, missing.orders) == ("NF", ())
    answers = [m.answer for m in lis.received if m.query]
    assert [a is not None and a.split(b"\rQAK|")[1].split(b"\r")[0] for a in answers] == [
        b"T1|OK|WOS^Work Order Step^IHE_LABTF|2",  # 2 hits: GLU and K
        f"{missing.query_tag}|NF|WOS^Work Order Step^IHE_LABTF|0".encode(),
    ]
    assert answers[0] is not None and parse_orders(answers[0]) == (ORDER,)
    assert [m.query.specimen_ids for m in lis.received if m.query] == [("S1",), ("S2",)]
    assert lis.delivered == []  # queries are not results


async def test_silent_lis_times_the_sender_out() -> None:
    lis = LisSimulator(silent=True)
    port = await lis.start()
    sim = Hl7AnalyserSimulator(port=port, kind="ORU", ack_timeout=0.2)
    try:
        await sim.connect()
        with pytest.raises(TimeoutError):
            await sim.send_results("S1", count=1)
        await sim.close()
    finally:
        await lis.close()


async def test_results_over_tls(pki: dict[str, Path]) -> None:
    lis = LisSimulator(ssl=server_context(pki["server_cert"], pki["server_key"]))
    port = await lis.start()
    sim = Hl7AnalyserSimulator(port=port, kind="ORU", ssl=client_context(pki["ca"]))
    try:
        await sim.connect()
        ack = await sim.send_results("S1", count=2)
        await sim.close()
    finally:
        await lis.close()
    assert ack.code == "AA"


async def test_mutual_tls_accepts_a_client_certificate_and_refuses_none(
    pki: dict[str, Path],
) -> None:
    context = server_context(
        pki["server_cert"], pki["server_key"], cafile=pki["ca"], require_client_cert=True
    )
    lis = LisSimulator(ssl=context)
    port = await lis.start()
    with_cert = client_context(pki["ca"], certfile=pki["client_cert"], keyfile=pki["client_key"])
    good = Hl7AnalyserSimulator(port=port, kind="ORU", ssl=with_cert)
    bad = Hl7AnalyserSimulator(port=port, kind="ORU", ssl=client_context(pki["ca"]), ack_timeout=5)
    try:
        await good.connect()
        assert (await good.send_results("S1", count=1)).code == "AA"
        await good.close()
        with pytest.raises(OSError):  # refused in the handshake, or the connection dropped
            await bad.connect()
            await bad.send_results("S2", count=1)
        await bad.close()
    finally:
        await lis.close()
    assert len(lis.delivered) == 1


async def test_untrusted_server_certificate_is_refused(pki: dict[str, Path]) -> None:
    lis = LisSimulator(ssl=server_context(pki["server_cert"], pki["server_key"]))
    port = await lis.start()
    stranger = trustme.CA()
    context = ssl.create_default_context()
    stranger.configure_trust(context)
    sim = Hl7AnalyserSimulator(port=port, ssl=context)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await sim.connect()
    finally:
        await sim.close()
        await lis.close()


async def test_server_mode_labgate_connects_to_the_analyser() -> None:
    sim = Hl7AnalyserSimulator(mode="server", kind="ORU")
    port = await sim.start()

    async def labgate() -> list[bytes]:
        """A minimal labgate: connect, acknowledge one message, push one order."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        framer = v2.MllpFramer()
        got: list[bytes] = []
        while len(got) < 2:
            framer.receive_data(await reader.read(65536))
            while (payload := framer.next_message()) is not None:
                got.append(payload)
                if len(got) == 1:
                    now = datetime.now(UTC)
                    writer.write(v2.mllp_frame(v2.build_ack(payload, "AA", "LG1", now)))
                    header = v2.MessageHeader("labgate", "LAB", "SIM", "LAB", "LG2", now)
                    writer.write(v2.mllp_frame(build_oml_o33(header, [ORDER])))
        writer.close()
        return got

    peer = asyncio.create_task(labgate())
    try:
        ack = await sim.send_results("S1", count=1)
        got = await asyncio.wait_for(peer, 5)
    finally:
        await sim.close()
    assert ack.code == "AA"
    assert got[1].startswith(b"MSH") and v2.parse_answer(got[1]).code == "AA"
    assert b"|ORL^O34^ORL_O34|" in got[1]  # LAB-28: an OML^O33 is answered ORL^O34
    assert parse_orders(sim.orders_received[0]) == (ORDER,)


async def test_send_orders_gets_acks_from_an_mllp_server() -> None:
    received: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = v2.MllpFramer()
        while data := await reader.read(65536):
            framer.receive_data(data)
            while (payload := framer.next_message()) is not None:
                received.append(payload)
                code = "AA" if len(received) == 1 else "AE"
                ack = v2.build_ack(payload, code, f"A{len(received)}", datetime.now(UTC))
                writer.write(v2.mllp_frame(ack))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    lis = LisSimulator()
    second = OrderSpec(specimen_id="S2", tests=("NA",), action="C")
    try:
        oml = await lis.send_orders("127.0.0.1", port, [ORDER, second])
        orm = await lis.send_orders("127.0.0.1", port, [ORDER], kind="ORM")
    finally:
        server.close()
        await server.wait_closed()
    assert [a.code for a in oml] == ["AA", "AE"]
    assert [a.code for a in orm] == ["AE"]
    assert [m.split(b"|")[8] for m in received] == [b"OML^O33^OML_O33"] * 2 + [b"ORM^O01^ORM_O01"]
    assert parse_orders(received[0]) == (ORDER,) and parse_orders(received[2]) == (ORDER,)
    assert lis.sent_orders == received
    with pytest.raises(ValueError):
        await lis.send_orders("127.0.0.1", port, [ORDER], kind="XYZ")
