"""IHE LAW builders: OUL^R22, OML^O33, ORM^O01, QBP^Q11, RSP^K11 — validated, and read back
with the one reader set (protocols.hl7.orders_in, through outbound.parse_orders for orders)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from protocols import hl7 as v2
from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.hl7._er7 import parse_message
from protocols.hl7.orders_in import parse_qbp_q11, parse_rsp_k11
from protocols.hl7.outbound import (
    OrderPatient,
    OrderSpec,
    build_oml_o33,
    build_orm_o01,
    build_oul_r22,
    build_qbp_q11,
    build_rsp_k11,
    parse_orders,
    read_answer,
)

NOW = datetime(2025, 6, 28, 17, 33, 33, tzinfo=timezone(timedelta(hours=2)))
HEADER = v2.MessageHeader("SIM-CHEM", "LAB", "labgate", "LAB", "C0001", NOW)
PATIENT = OrderPatient("PAT1", "MÜLLER", "ANNE|MARIE", date(1980, 1, 2), "F")


def _patient(*orders: v2.OrderOut) -> v2.PatientOut:
    return v2.PatientOut("PAT1", "DUPONT", "MARIE", date(1980, 1, 2), "F", orders)


def _results() -> v2.PatientOut:
    glu = v2.ObservationOut(
        set_id=1,
        code="GLU",
        text="Glucose",
        value="7.2",
        units="mmol/L",
        reference_range="3.9-6.1",
        abnormal_flags=("H",),
        observed_at=NOW,
        producer="SIM-CHEM",
        notes=("lipemic^sample", "rerun"),
    )
    k = v2.ObservationOut(set_id=2, code="K", value="hemolysed", status="X")
    na = v2.ObservationOut(set_id=3, code="NA", value="140", units="mmol/L")
    return _patient(
        v2.OrderOut("S1", "CHEM", "Chemistry", NOW, (glu, k), "SER"),
        v2.OrderOut("S2", "ELEC", "", None, (na,), "SER"),
    )


def _segments(message: bytes) -> list[str]:
    return [line.split("|", 1)[0] for line in message.decode().split("\r") if line]


# --- OUL^R22 -----------------------------------------------------------------------------


def test_oul_r22_is_strictly_valid_and_has_the_law_outline() -> None:
    message = build_oul_r22(HEADER, [_results()])
    v2.validate_message(message)
    assert b"|OUL^R22^OUL_R22|C0001|P|2.5.1|" in message
    assert _segments(message) == [
        "MSH", "PID",
        "SPM", "OBR", "ORC", "OBX", "NTE", "NTE", "OBX",
        "SPM", "OBR", "ORC", "OBX",
    ]  # fmt: skip


def test_oul_r22_carries_the_same_observations_as_oru_r01() -> None:
    patient = _results()
    oul = build_oul_r22(HEADER, [patient])
    oru = v2.build_oru_r01(HEADER, [patient])
    # parse_oru reads only ORU^R01; with MSH-9 renamed it reads the OUL's groups.  It takes
    # an SPM *after* an OBR as that order's specimen, so the specimen ids are compared apart.
    as_oru = oul.replace(b"OUL^R22^OUL_R22", b"ORU^R01^ORU_R01")
    got = v2.parse_oru(as_oru).observations
    want = v2.parse_oru(oru).observations
    assert [replace(o, specimen_id="") for o in got] == [replace(o, specimen_id="") for o in want]
    msg = parse_message(oul)
    assert [msg.get(s, 2) for s in msg.segments if msg.name(s) in ("SPM", "OBR")] == [
        "S1", "S1", "S2", "S2",
    ]  # fmt: skip


def test_oul_r22_qc_specimen_has_role_q_and_no_patient() -> None:
    message = build_oul_r22(HEADER, [_results()], specimen_role="Q")
    v2.validate_message(message)
    assert "PID" not in _segments(message)
    msg = parse_message(message)
    spm = [s for s in msg.segments if msg.name(s) == "SPM"]
    assert [msg.get(s, 11) for s in spm] == ["Q", "Q"]


def test_oul_r22_refuses_what_it_cannot_encode() -> None:
    with pytest.raises(LocalProtocolError, match="exactly one patient"):
        build_oul_r22(HEADER, [_results(), _results()])
    obs = v2.ObservationOut(set_id=1, code="GLU", value="5")
    untyped = _patient(v2.OrderOut("S1", "CHEM", "", None, (obs,)))
    with pytest.raises(LocalProtocolError, match="SPM-4"):
        build_oul_r22(HEADER, [untyped])


# --- OML^O33 / ORM^O01 --------------------------------------------------------------------


def _orders() -> list[OrderSpec]:
    return [
        OrderSpec(specimen_id="S1", tests=("GLU", "K"), patient=PATIENT, collected_at=NOW),
        OrderSpec(
            specimen_id="S2",
            tests=("NA",),
            placer_number="P-9",
            patient=PATIENT,
            priority="S",
            action="C",
            specimen_type="BLD",
        ),
    ]


def test_oml_o33_reads_back_equal() -> None:
    message = build_oml_o33(HEADER, _orders())
    assert b"|OML^O33^OML_O33|" in message
    assert parse_orders(message) == tuple(_orders())


def test_oml_o33_order_control_and_priority() -> None:
    msg = parse_message(build_oml_o33(HEADER, _orders()))
    orc = [msg.get(s, 1) for s in msg.segments if msg.name(s) == "ORC"]
    tq1 = [msg.get(s, 9) for s in msg.segments if msg.name(s) == "TQ1"]
    assert orc == ["NW", "NW", "CA"]
    assert tq1 == ["R", "R", "S"]


def test_oml_o33_one_test_per_specimen_is_strictly_valid() -> None:
    # hl7apy files a second ORC/OBR of one specimen under OML_O33_PRIOR_RESULT (its group
    # finder is greedy), so strict validation is done on one test per specimen.
    single = [
        OrderSpec(specimen_id="S1", tests=("GLU",), patient=PATIENT, collected_at=NOW),
        OrderSpec(specimen_id="S2", tests=("NA",), patient=PATIENT, action="C"),
    ]
    v2.validate_message(build_oml_o33(HEADER, single))


def test_orm_o01_reads_back_equal_with_specimen_in_filler_number() -> None:
    message = build_orm_o01(HEADER, _orders())
    assert b"|ORM^O01^ORM_O01|" in message
    # An ORM has no SPM: the specimen type rides in OBR-15 (specimen source), and
    # orders_in reads it back from there, so the whole order reads back equal.
    assert parse_orders(message) == tuple(_orders())
    msg = parse_message(message)
    obr = [s for s in msg.segments if msg.name(s) == "OBR"]
    assert [msg.get(s, 3) for s in obr] == ["S1", "S1", "S2"]
    assert [msg.get(s, 5) for s in obr] == ["R", "R", "S"]
    assert [msg.get(s, 15) for s in obr] == ["SER", "SER", "BLD"]


def test_orders_escape_delimiters_and_keep_utf8() -> None:
    message = build_oml_o33(HEADER, _orders())
    assert "MÜLLER^ANNE\\F\\MARIE".encode() in message
    assert parse_orders(message)[0].patient == PATIENT


@pytest.mark.parametrize("build", [build_oml_o33, build_orm_o01])
def test_order_messages_refuse_mixed_patients_and_nothing(build) -> None:  # type: ignore[no-untyped-def]
    other = OrderSpec(specimen_id="S3", tests=("GLU",), patient=OrderPatient("PAT2"))
    with pytest.raises(LocalProtocolError, match="one patient"):
        build(HEADER, [*_orders(), other])
    with pytest.raises(LocalProtocolError, match="at least one order"):
        build(HEADER, [])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tests": ()},
        {"tests": ["GLU"]},
        {"priority": "X"},
        {"action": "D"},
        {"specimen_type": ""},
        {"collected_at": datetime(2025, 1, 1)},
    ],
)
def test_order_spec_checks_its_fields(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {"specimen_id": "S1", "tests": ("GLU",), **kwargs}
    with pytest.raises(LocalProtocolError):
        OrderSpec(**fields)  # type: ignore[arg-type]


def test_parse_orders_refuses_results() -> None:
    with pytest.raises(RemoteProtocolError, match="not an order message"):
        parse_orders(build_oul_r22(HEADER, [_results()]))


def test_parse_orders_refuses_what_an_order_spec_cannot_hold_and_skips_status_items() -> None:
    oml = build_oml_o33(HEADER, _orders()[:1])
    with pytest.raises(RemoteProtocolError, match="not NW or CA"):
        parse_orders(oml.replace(b"ORC|NW|", b"ORC|XO|"))  # a change: orders_in action "A"
    assert parse_orders(oml.replace(b"ORC|NW|", b"ORC|SC|")) == ()  # status: no work order


# --- QBP^Q11 / RSP^K11 --------------------------------------------------------------------


def test_qbp_q11_is_valid_and_reads_back() -> None:
    message = build_qbp_q11(HEADER, "Q-1", "S1")
    v2.validate_message(message)
    query = parse_qbp_q11(message)
    assert (query.control_id, query.query_tag, query.specimen_ids) == ("C0001", "Q-1", ("S1",))
    assert query.query_name == "WOS"
    assert query.response_priority == "I"
    assert query.sending_application == "SIM-CHEM"


@pytest.mark.parametrize("status", ["OK", "NF"])
def test_rsp_k11_without_orders_is_valid(status: str) -> None:
    query = build_qbp_q11(HEADER, "Q-1", "S1")
    answer = build_rsp_k11(query, (), "R0001", NOW.astimezone(UTC), status=status)
    v2.validate_message(answer)
    assert b"MSH|^~\\&|labgate|LAB|SIM-CHEM|LAB|" in answer  # sender and receiver swapped
    read = parse_rsp_k11(answer)
    assert (read.ack_code, read.acknowledged_control_id, read.control_id) == (
        "AA",
        "C0001",
        "R0001",
    )
    assert (read.query_tag, read.query_status, read.orders) == ("Q-1", status, ())
    assert f"\rQAK|Q-1|{status}|WOS^Work Order Step^IHE_LABTF|0\r".encode() in answer  # 0 hits
    assert b"\rQPD|WOS^Work Order Step^IHE_LABTF|Q-1|S1" in answer


def test_rsp_k11_with_orders_carries_them() -> None:
    query = build_qbp_q11(HEADER, "Q-1", "S1")
    orders = _orders()[:1]
    answer = build_rsp_k11(query, orders, "R0001", NOW)
    v2.validate_message(answer)
    read = parse_rsp_k11(answer)
    assert read.query_status == "OK"
    assert b"\rQAK|Q-1|OK|WOS^Work Order Step^IHE_LABTF|2\r" in answer  # 2 hits: GLU, K
    assert parse_orders(answer) == tuple(orders)


def test_rsp_k11_refusals() -> None:
    query = build_qbp_q11(HEADER, "Q-1", "S1")
    with pytest.raises(LocalProtocolError, match="carries no orders"):
        build_rsp_k11(query, _orders(), "R1", NOW, status="NF")
    with pytest.raises(LocalProtocolError, match="status"):
        build_rsp_k11(query, (), "R1", NOW, status="XX")
    with pytest.raises(LocalProtocolError):
        build_rsp_k11(query, (), "R1", datetime(2025, 1, 1))
    with pytest.raises(RemoteProtocolError, match="not a QBP"):
        build_rsp_k11(build_oml_o33(HEADER, _orders()), (), "R1", NOW)
    with pytest.raises(RemoteProtocolError, match="not an RSP"):
        parse_rsp_k11(query)


def test_rsp_k11_answers_lf_separated_and_tagless_queries() -> None:
    lf = build_qbp_q11(HEADER, "Q-1", "S1").replace(b"\r", b"\n")
    assert parse_qbp_q11(lf).specimen_ids == ("S1",)
    assert parse_rsp_k11(build_rsp_k11(lf, (), "R1", NOW, status="NF")).query_tag == "Q-1"
    # orders_in reads a query without a tag (QPD-2); the answer echoes the empty tag, and
    # the analyser matches it on MSA-2.
    no_tag = b"MSH|^~\\&|A|B|C|D|20250101||QBP^Q11^QBP_Q11|X|P|2.5.1\rQPD|WOS||S1\rRCP|I"
    assert parse_qbp_q11(no_tag).query_tag == ""
    answer = parse_rsp_k11(build_rsp_k11(no_tag, (), "R1", NOW, status="NF"))
    assert (answer.query_tag, answer.acknowledged_control_id) == ("", "X")
    no_specimen = no_tag.replace(b"QPD|WOS||S1", b"QPD|WOS|Q-1|")
    with pytest.raises(RemoteProtocolError, match="no specimen"):
        build_rsp_k11(no_specimen, (), "R1", NOW, status="NF")


def test_rsp_k11_echoes_every_specimen_of_the_query() -> None:
    query = build_qbp_q11(HEADER, "Q-1", "S1").replace(b"|Q-1|S1", b"|Q-1|S1~S2")
    answer = build_rsp_k11(query, (), "R1", NOW, status="NF")
    assert b"\rQPD|WOS^Work Order Step^IHE_LABTF|Q-1|S1~S2" in answer


def test_read_answer_takes_the_msa_of_any_answer() -> None:
    query = build_qbp_q11(HEADER, "Q-1", "S1")
    rsp = read_answer(build_rsp_k11(query, (), "R1", NOW, status="NF"))
    assert (rsp.code, rsp.acknowledged_control_id, rsp.control_id) == ("AA", "C0001", "R1")
    ack = read_answer(v2.build_ack(query, "AE", "A1", NOW, text="busy"))
    assert (ack.code, ack.text) == ("AE", "busy")
    with pytest.raises(RemoteProtocolError, match="QBP\\^Q11 without an MSA"):
        read_answer(query)
    with pytest.raises(RemoteProtocolError, match="not an acknowledgement code"):
        read_answer(build_rsp_k11(query, (), "R1", NOW).replace(b"MSA|AA|", b"MSA|XX|"))
