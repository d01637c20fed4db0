"""parse_order_message (ORM^O01, OML^O33), parse_qbp_q11 and parse_rsp_k11 (LAB-27)."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from test_hl7_inbound import fixture_messages

from protocols.errors import RemoteProtocolError
from protocols.hl7.orders_in import parse_order_message, parse_qbp_q11, parse_rsp_k11

PARIS = timezone(timedelta(hours=1))


@pytest.mark.parametrize("separator", [b"\r", b"\n"])
def test_oml_o33_orders(separator: bytes) -> None:
    [raw] = fixture_messages("hl7-synthetic-law-oml-o33.txt", separator)
    result = parse_order_message(raw)
    assert (result.message_type, result.trigger, result.control_id) == ("OML", "O33", "ORD-MSG-1")
    new, cancel = result.orders
    assert new.specimen_id == "SPEC-100"
    assert new.tests == ("2345-7", "2951-2") and new.test_names == ("Glucose", "Sodium")
    assert (new.placer_order_number, new.placer_order_numbers) == ("PLC-1", ("PLC-1", "PLC-2"))
    assert (new.action, new.order_control, new.priority) == ("N", "NW", "S")  # TQ1-9 S
    assert new.collected_at == datetime(2024, 1, 5, 7, 55, tzinfo=PARIS)  # SPM-17
    assert new.specimen_type == "SER"
    assert new.patient.patient_id == "PAT123" and new.patient.birth_date == date(1970, 1, 1)
    assert (cancel.specimen_id, cancel.action, cancel.tests) == ("SPEC-101", "C", ("1988-5",))
    assert cancel.priority == "R"


def test_orm_o01_orders() -> None:
    [raw] = fixture_messages("hl7-synthetic-orm-o01.txt", b"\r")
    result = parse_order_message(raw)
    assert (result.version, result.charset, result.codec) == ("2.3.1", "8859/1", "iso8859-1")
    new, change = result.orders
    assert new.specimen_id == "S-5000"  # OBR-3
    assert new.tests == ("CBC", "RET", "ESR")  # one OBR per test, and a repeated OBR-4
    assert new.priority == "S"  # OBR-27.6 of the first item
    assert new.collected_at == datetime(2024, 1, 5, 8, 0)  # OBR-7
    assert new.patient.patient_id == "P-777"
    assert (new.patient.family_name, new.patient.sex) == ("MARTIN", "F")
    assert (change.specimen_id, change.action, change.order_control) == ("S-5001", "A", "XO")


@pytest.mark.parametrize(
    ("control", "action"),
    [("NW", "N"), ("CA", "C"), ("DC", "C"), ("OC", "C"), ("XO", "A"), ("RP", "A"), ("SC", "")],
)
def test_order_control_codes(control: str, action: str) -> None:
    msh = "MSH|^~\\&|LIS||||20240105||ORM^O01|M1|P|2.4\r"
    raw = f"{msh}ORC|{control}|P1|S1\rOBR|1|||GLU".encode()  # specimen id from ORC-3
    [order] = parse_order_message(raw).orders
    assert (order.action, order.order_control, order.specimen_id) == (action, control, "S1")


def test_obr_without_orc_and_obr_5_priority() -> None:
    raw = b"MSH|^~\\&|LIS||||20240105||ORM^O01|M1|P|2.3\rOBR|1|P9|S9|GLU|S\rOBR|2|P9|S9|NA"
    [order] = parse_order_message(raw).orders
    assert (order.action, order.priority, order.tests) == ("N", "S", ("GLU", "NA"))
    assert order.placer_order_number == "P9"  # OBR-2 when there is no ORC


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"MSH|^~\\&|LIS||||20240105||ORU^R01|M1|P|2.4\r", "not an order message"),
        (b"MSH|^~\\&|LIS||||20240105||ORM^O01|M1|P|2.4\rPID|1||X\r", "holds no order"),
        (b"MSH|^~\\&|LIS||||20240105||ORM^O01|M1|P|2.4\rORC|NW|P1\rOBR|1|||GLU", "names no spec"),
        (b"garbage", "does not start with MSH"),
    ],
)
def test_unusable_orders_are_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=reason):
        parse_order_message(raw)


def test_qbp_q11() -> None:
    raw = fixture_messages("hl7-synthetic-law-qbp-q11.txt", b"\r")[0]
    query = parse_qbp_q11(raw)
    assert (query.message_type, query.trigger, query.control_id) == ("QBP", "Q11", "Q-0001")
    assert (query.query_name, query.query_tag) == ("WOS", "QT-0001")
    assert query.specimen_ids == ("SPEC-100",)
    assert query.response_priority == "I"


def test_qbp_q11_specimens_from_repeated_qpd_3_and_spm() -> None:
    raw = (
        b"MSH|^~\\&|AN||||20240105||QBP^Q11^QBP_Q11|Q2|P|2.5.1\r"
        b"QPD|WOS^Work Order Step^IHE_LABTF|T2|A1~A2\rSPM|1|A3\rSPM|2|A1\rRCP|I"
    )
    assert parse_qbp_q11(raw).specimen_ids == ("A1", "A2", "A3")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"MSH|^~\\&|AN||||20240105||QBP^Q11|Q|P|2.5.1\r", "without a QPD"),
        (b"MSH|^~\\&|AN||||20240105||QBP^Q11|Q|P|2.5.1\rQPD|WOS|T|\r", "names no specimen"),
        (b"MSH|^~\\&|AN||||20240105||QBP^Q13|Q|P|2.5.1\rQPD|WOS|T|A\r", "not a QBP"),
    ],
)
def test_unusable_queries_are_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=reason):
        parse_qbp_q11(raw)


def test_rsp_k11_with_orders_and_no_data_found() -> None:
    _, found, not_found = fixture_messages("hl7-synthetic-law-qbp-q11.txt", b"\r")
    answer = parse_rsp_k11(found)
    assert (answer.query_tag, answer.query_status, answer.query_name) == ("QT-0001", "OK", "WOS")
    assert (answer.ack_code, answer.acknowledged_control_id) == ("AA", "Q-0001")
    [order] = answer.orders
    assert (order.specimen_id, order.tests, order.priority) == ("SPEC-100", ("2345-7",), "S")
    assert order.patient.patient_id == "PAT123"
    empty = parse_rsp_k11(not_found)
    assert (empty.query_tag, empty.query_status, empty.orders) == ("QT-0002", "NF", ())


def test_rsp_k11_without_qak_is_refused() -> None:
    raw = b"MSH|^~\\&|LIS||||20240105||RSP^K11|R|P|2.5.1\rMSA|AA|Q\r"
    with pytest.raises(RemoteProtocolError, match="QAK"):
        parse_rsp_k11(raw)
    with pytest.raises(RemoteProtocolError, match="not an RSP"):
        parse_rsp_k11(raw.replace(b"RSP^K11", b"ACK^Q11"))


@pytest.mark.parametrize(
    ("obr_15", "expected"),
    [
        ("UR", "UR"),  # v2.3/2.4: the code alone
        ("SER^Serum", "SER"),  # component 1 of the specimen source
        ("BLD&Whole blood&HL70070^^^ARM", "BLD"),  # v2.5 SPS: its first component is a CWE
        (" ", ""),
        ("", ""),
    ],
)
def test_orm_o01_specimen_type_from_obr_15(obr_15: str, expected: str) -> None:
    msh = "MSH|^~\\&|LIS||||20240105||ORM^O01|M1|P|2.3\r"
    raw = f"{msh}ORC|NW|P1|S1\rOBR|1|P1|S1|GLU|||||||||||{obr_15}".encode()
    [order] = parse_order_message(raw).orders
    assert order.specimen_type == expected


def test_spm_4_wins_over_obr_15_and_obr_15_fills_in_per_specimen() -> None:
    msh = "MSH|^~\\&|LIS||||20240105||OML^O33|M1|P|2.5.1\r"
    obr = "OBR|1|P{n}||GLU|||||||||||UR\r"
    raw = (
        f"{msh}SPM|1|S1||SER\rORC|NW|P1\r{obr.format(n=1)}"  # SPM-4 SER, OBR-15 UR: SER
        f"SPM|2|S2\rORC|NW|P2\r{obr.format(n=2)}"  # no SPM-4: OBR-15
    ).encode()
    first, second = parse_order_message(raw).orders
    assert (first.specimen_id, first.specimen_type) == ("S1", "SER")
    assert (second.specimen_id, second.specimen_type) == ("S2", "UR")


def test_merged_orm_items_take_the_first_obr_15_given() -> None:
    msh = "MSH|^~\\&|LIS||||20240105||ORM^O01|M1|P|2.3\r"
    raw = (
        f"{msh}ORC|NW|P1|S1\rOBR|1|P1|S1|GLU\r"  # no OBR-15 on the first test
        "ORC|NW|P2|S1\rOBR|2|P2|S1|K|||||||||||PLAS\r"
    ).encode()
    [order] = parse_order_message(raw).orders
    assert (order.tests, order.specimen_type) == (("GLU", "K"), "PLAS")
