"""The generic LIS2-A2 driver on real captures (tests/data/corpus, see INDEX.md there)."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.base import DriverError
from drivers.generic_astm import GenericAstmDriver, parse_astm_datetime
from drivers.models import SpecimenReport
from protocols import astm

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"
driver = GenericAstmDriver()


def _records_text(name: str) -> bytes:
    """A record-dump corpus file as E1394 text: comment/directive lines dropped, CR separators."""
    lines = (CORPUS / name).read_bytes().splitlines()
    kept = [line for line in lines if line and not line.startswith((b"#", b"@"))]
    return b"\r".join(kept) + b"\r"


def _framed_text(name: str) -> bytes:
    """A framed capture (real bytes) through the host link core, as the daemon receives it."""
    link = astm.Link(astm.Role.HOST)
    link.receive_data(b"\x05" + (CORPUS / name).read_bytes() + b"\x04", 0.0)
    text = b""
    while (event := link.next_event()) is not None:
        if isinstance(event, astm.MessageReceived):
            text += event.text
            link.acknowledge(0.0)
    return text


def _reports(text: bytes) -> list[SpecimenReport]:
    return driver.to_reports(astm.decode_message(text), "analyser-1")


def test_spec_example_two_patients_two_specimens() -> None:
    reports = _reports(_records_text("astm-lis2a2-spec-example-1.txt"))
    assert [r.specimen_id for r in reports] == ["927529", "927533"]
    assert [[(x.test_code, x.value) for x in r.results] for r in reports] == [
        [("A1", "0.295"), ("A1", "0.312")],
        [("A3", "1.121"), ("A4", "1.097")],
    ]
    assert reports[0].ordered_tests == ("A1", "A2")
    assert reports[1].results[0].numeric == Decimal("1.121")
    assert reports[0].results[0].instrument == "analyser-1"
    assert reports[0].results[0].measured_at == parse_astm_datetime("19890327132247")


def test_afinion_single_frame_specimen_in_o4() -> None:
    [report] = _reports(_framed_text("astm-afinion2-1.astm"))
    assert report.specimen_id == "5"
    [result] = report.results
    assert (result.test_code, result.value, result.units, result.status) == (
        "HbA1c",
        "5.9",
        "%",
        "F",
    )
    assert report.patient.patient_id == "3643"


def test_cobas_oversized_frame_with_comment_after_each_result() -> None:
    [report] = _reports(_framed_text("astm-cobas-c311-1.astm"))
    assert [r.test_code for r in report.results] == [
        "685/",
        "687/",
        "712/",
        "158/",
        "735/",
        "717/",
        "690/",
    ]
    first = report.results[0]
    assert (first.value, first.units, first.flags) == ("22.4", "U/l", ("A",))
    assert first.comments == ("43",)  # the Roche data-alarm code from the C record after it


def test_pentra_non_numeric_values_are_kept_verbatim() -> None:
    reports = _reports(_framed_text("astm-pentra-xlr-1.astm"))
    results = [r for report in reports for r in report.results]
    dashes = [r for r in results if r.value == "-----"]
    assert dashes and all(r.numeric is None for r in dashes)
    assert any(r.test_code == "WBC" for r in results)


def test_sysmex_right_aligned_specimen_and_shifted_test_code() -> None:
    [report] = _reports(_framed_text("astm-sysmex-xn550-1.astm"))
    assert report.specimen_id == "27"
    codes = [r.test_code for r in report.results]
    assert "WBC" in codes
    flag_only = [r for r in report.results if r.value == "" and r.flags]
    assert flag_only, "flag-only results (empty value) are kept"


def test_phadia_examine_value_and_comments() -> None:
    reports = _reports(_records_text("astm-phadia-prime-1.txt"))
    assert [r.results[0].test_code for r in reports] == ["t2", "t3", "a-IgE"]
    assert [r.results[0].value for r in reports] == ["9.34", "Examine", "199"]
    assert reports[1].results[0].numeric is None
    assert reports[0].results[0].comments == ("Response value in RU 2140",)
    assert reports[0].patient.birth_date == date(1899, 12, 30)


def test_result_before_any_order_is_refused_with_a_reason() -> None:
    with pytest.raises(DriverError, match="before any O record"):
        _reports(b"H|\\^&\rR|1|^^^GLU|5\rL|1\r")


def test_qc_messages_are_recognised_from_the_header_and_the_order() -> None:
    header_qc = _reports(b"H|\\^&||||||||||Q\rP|1\rO|1|QC1||^^^GLU\rR|1|^^^GLU|5.1\rL|1\r")
    order_qc = _reports(b"H|\\^&\rP|1\rO|1|QC1||^^^GLU|||||||Q\rR|1|^^^GLU|5.1\rL|1\r")
    patient = _reports(b"H|\\^&\rP|1\rO|1|S1||^^^GLU|||||||N\rR|1|^^^GLU|5.1\rL|1\r")
    assert header_qc[0].is_qc and header_qc[0].results[0].is_qc
    assert order_qc[0].is_qc
    assert not patient[0].is_qc


@pytest.mark.parametrize(
    "text,expected",
    [("20240203132011", (2024, 2, 3, 13, 20, 11)), ("202402031320", (2024, 2, 3, 13, 20, 0))],
)
def test_astm_timestamps(text: str, expected: tuple[int, ...]) -> None:
    moment = parse_astm_datetime(text)
    assert moment is not None and moment.tzinfo is not None
    assert (
        moment.year,
        moment.month,
        moment.day,
        moment.hour,
        moment.minute,
        moment.second,
    ) == expected


@pytest.mark.parametrize("text", ["", "2024", "2024020X", "20241399"])
def test_bad_timestamps_are_none(text: str) -> None:
    assert parse_astm_datetime(text) is None


@given(st.text(alphabet="0123456789 x", max_size=16))
def test_timestamps_read_as_strptime_reads_them(text: str) -> None:
    """The hand-sliced parser (fast, cached) agrees with strptime on every input."""
    digits = text.strip()
    formats = {14: "%Y%m%d%H%M%S", 12: "%Y%m%d%H%M", 10: "%Y%m%d%H", 8: "%Y%m%d"}
    expected: datetime | None = None
    if len(digits) in formats and digits.isdigit():
        try:
            expected = datetime.strptime(digits, formats[len(digits)]).astimezone()
        except (ValueError, OverflowError, OSError):
            expected = None
    assert parse_astm_datetime(text) == expected
