"""What labgate writes to analysers (order downloads, query answers) and how it reads their
host queries."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from driver_corpus import record_dump

from drivers import registry
from drivers.base import DriverError
from drivers.engine import ProfileDriver
from drivers.models import Order, Patient, Query
from drivers.profile import profile_from_mapping
from protocols import astm

NOW = datetime(2024, 3, 5, 14, 30, 15)
PATIENT = Patient("P123", "Dupont", "Anne", date(1980, 2, 29), "F")


def driver(name: str) -> ProfileDriver:
    found = registry.get(name)
    assert isinstance(found, ProfileDriver)
    return found


def records(text: bytes, encoding: str = "latin-1") -> dict[str, list[astm.Record]]:
    message = astm.decode_message(text, encoding)
    by_type: dict[str, list[astm.Record]] = {}
    for record in message.records:
        by_type.setdefault(record.type, []).append(record)
    return by_type


def test_order_message_round_trip_through_the_decoder() -> None:
    orders = [
        Order("S1", PATIENT, ("GLU", "NA"), priority="S", collected_at=datetime(2024, 3, 5, 8, 0)),
        Order("S2", Patient("P9"), ("K",), action="A"),
    ]
    text = driver("generic-astm").build_order_message(
        orders, sender="LABGATE", receiver="AU-1", now=NOW
    )
    assert text.startswith(b"H|\\^&|||LABGATE|||||AU-1||P|LIS2-A2|20240305143015\r")
    assert text.endswith(b"\rL|1|N\r")
    got = records(text)
    assert [p.field(2) for p in got["P"]] == ["1", "2"]
    p = got["P"][0]
    assert (p.field(3), p.component(6, 1), p.component(6, 2), p.field(8), p.field(9)) == (
        "P123",
        "Dupont",
        "Anne",
        "19800229",
        "F",
    )
    first, second = got["O"]
    assert first.field(3) == "S1"
    assert first.repeats(5) == (("", "", "", "GLU"), ("", "", "", "NA"))
    assert (first.field(6), first.field(8), first.field(12), first.field(26)) == (
        "S",
        "20240305080000",
        "N",
        "O",
    )
    assert (second.field(3), second.field(12), second.field(6)) == ("S2", "A", "R")


def test_an_order_message_reads_back_through_the_same_driver() -> None:
    for name in registry.names():
        d = driver(name)
        order = Order("SPEC-7", PATIENT, ("T1", "T2"))
        text = d.build_order_message([order], sender="LG", receiver="AN", now=NOW)
        [report] = d.to_reports(astm.decode_message(text, d.encoding), "an")
        assert report.specimen_id == "SPEC-7", name
        assert report.ordered_tests == ("T1", "T2"), name
        assert report.patient.patient_id == "P123", name
        assert report.patient.birth_date == date(1980, 2, 29), name


def test_query_answer_says_so_in_o26() -> None:
    text = driver("generic-astm").build_order_message(
        [Order("S1", PATIENT, ("GLU",))], sender="LG", receiver="AN", now=NOW, query_answer=True
    )
    assert records(text)["O"][0].field(26) == "Q"


def test_cancel_action() -> None:
    text = driver("generic-astm").build_order_message(
        [Order("S1", PATIENT, ("GLU",), action="C")], sender="LG", receiver="AN", now=NOW
    )
    assert records(text)["O"][0].field(12) == "C"


def test_lis_codes_are_transcoded_to_analyser_codes_unknown_ones_pass_and_are_reported() -> None:
    d = ProfileDriver(
        profile_from_mapping(
            {"name": "t", "transcoding": {"tests": {"WBC": "GB", "HGB": "HB"}}},
        )
    )
    orders = [Order("S1", PATIENT, ("GB", "HB", "PLQ"))]
    text = d.build_order_message(orders, sender="LG", receiver="AN", now=NOW)
    tests = [rep[3] for rep in records(text)["O"][0].repeats(5)]
    assert tests == ["WBC", "HGB", "PLQ"]
    assert d.untranscoded(orders) == ["PLQ"]
    assert driver("generic-astm").untranscoded(orders) == []  # no table: nothing to report


def test_profile_layout_of_test_ids_and_specimen() -> None:
    sysmex = driver("sysmex-xn").build_order_message(
        [Order("27", PATIENT, ("WBC",))], sender="LG", receiver="XN", now=NOW
    )
    assert b"|^^27||^^^^WBC|" in sysmex
    cobas = driver("cobas-c311").build_order_message(
        [Order("S9", PATIENT, ("685",))], sender="LG", receiver="c311", now=NOW
    )
    assert b"|^S9||^^^685/|" in cobas
    mindray = driver("mindray-bs240").build_order_message(
        [Order("S9", PATIENT, ("CA", "P"))], sender="LG", receiver="BS", now=NOW
    )
    assert b"|CA^^^\\P^^^|" in mindray


def test_dxh_order_matches_the_captured_host_download() -> None:
    """The LIS side of the DxH scenario: our download carries the same P and O content."""
    captured = [
        text for label, text in record_dump("astm-beckman-dxh-1.txt") if "@receive" in label
    ]
    want = records(captured[0])
    order = Order("000004287888", Patient("401791", birth_date=date(1977, 6, 24), sex="F"), ("CD",))
    text = driver("beckman-dxh").build_order_message([order], sender="LIS", receiver="DxH", now=NOW)
    assert text.startswith(b"H|\\!~|||LIS|||||DxH||P|LIS2-A|20240305143015\r")
    got = records(text)
    for kind, fields in (("P", (2, 3, 4, 9)), ("O", (2, 3, 4, 5, 6, 12, 16))):
        for n in fields:
            assert got[kind][0].repeats(n) == want[kind][0].repeats(n), f"{kind}-{n}"
    assert got["P"][0].field(8) == want["P"][0].field(8) == "19770624"
    assert got["O"][0].field(26) == "O"  # the scenario's host leaves O-26 empty


def test_aware_times_are_written_in_local_time() -> None:
    moment = datetime(2024, 3, 5, 13, 30, 15, tzinfo=UTC)
    text = driver("generic-astm").build_order_message(
        [Order("S1", PATIENT, ("GLU",))], sender="LG", receiver="AN", now=moment
    )
    local = moment.astimezone().strftime("%Y%m%d%H%M%S").encode()
    assert b"|" + local + b"\r" in text


def test_free_text_is_made_writable_and_identifiers_are_refused() -> None:
    d = driver("generic-astm")
    odd = Patient("P1", "Łukasz\rX", "Zoë")
    text = d.build_order_message([Order("S1", odd, ("GLU",))], sender="LG", receiver="A", now=NOW)
    p = records(text)["P"][0]
    assert (p.component(6, 1), p.component(6, 2)) == ("?ukasz X", "Zoë")
    with pytest.raises(DriverError, match="specimen id"):
        d.build_order_message([Order("S\r1", odd, ("GLU",))], sender="L", receiver="A", now=NOW)
    with pytest.raises(DriverError, match="test code"):
        d.build_order_message([Order("S1", odd, ("GŁU",))], sender="L", receiver="A", now=NOW)


def test_delimiters_in_data_are_escaped() -> None:
    text = driver("generic-astm").build_order_message(
        [Order("S1", Patient("P|1", "A^B"), ("GLU",))], sender="LG", receiver="AN", now=NOW
    )
    p = records(text)["P"][0]
    assert (p.field(3), p.component(6, 1)) == ("P|1", "A^B")


# --- host queries --------------------------------------------------------------------------------


def test_dxh_query_from_the_capture() -> None:
    [(_, text), *_] = record_dump("astm-beckman-dxh-1.txt")
    message = astm.decode_message(text)
    d = driver("beckman-dxh")
    assert d.parse_queries(message) == [Query(("000004287888",), (), 1)]
    assert d.to_reports(message, "dxh") == []


def test_query_with_several_specimens_and_tests() -> None:
    text = b"H|\\^&\rQ|2|^S1\\^S2\\^S1||^^^GLU\\^^^NA||||||||O\rQ|3|ALL||ALL\rL|1|N\r"
    queries = driver("generic-astm").parse_queries(astm.decode_message(text))
    assert queries == [Query(("S1", "S2"), ("GLU", "NA"), 2), Query((), (), 3)]


def test_query_specimen_in_another_component_falls_back_to_any() -> None:
    text = b"H|\\^&\rQ|1|S7\rL|1|N\r"
    assert driver("generic-astm").parse_queries(astm.decode_message(text)) == [Query(("S7",))]


def test_messages_without_q_records_have_no_queries() -> None:
    text = b"H|\\^&\rP|1\rO|1|S1\rL|1|N\r"
    assert driver("generic-astm").parse_queries(astm.decode_message(text)) == []


def test_no_order_answer_says_no_information() -> None:
    query = Query(("000004287888",))
    text = driver("beckman-dxh").build_no_order_message(
        query, sender="LIS", receiver="DxH", now=NOW
    )
    assert text == b"H|\\!~|||LIS|||||DxH||P|LIS2-A|20240305143015\rL|1|I\r"
    message = astm.decode_message(text)
    assert [r.type for r in message.records] == ["H", "L"]
    assert message.records[-1].field(3) == "I"


def test_no_order_termination_code_is_a_profile_setting() -> None:
    d = ProfileDriver(
        profile_from_mapping({"name": "t", "orders": {"no_order_termination_code": "Q"}})
    )
    text = d.build_no_order_message(Query(("S1",)), sender="LG", receiver="AN", now=NOW)
    assert text.endswith(b"\rL|1|Q\r")
