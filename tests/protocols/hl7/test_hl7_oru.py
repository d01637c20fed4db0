"""ORU^R01: building for the LIS, strict 2.5.1 validation, and parsing back."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message as hl7apy_parse

from protocols import hl7 as v2
from protocols.errors import LocalProtocolError, RemoteProtocolError

PARIS = timezone(timedelta(hours=2))
NOW = datetime(2025, 6, 28, 17, 33, 33, tzinfo=PARIS)
TRICKY = "a|b^c~d\\e&f \\F\\ \\X0D\\ end"


def header(control_id: str = "LG000001") -> v2.MessageHeader:
    return v2.MessageHeader(
        sending_application="labgate",
        sending_facility="LAB^1",
        receiving_application="LIS",
        receiving_facility="HOSP",
        control_id=control_id,
        created_at=NOW,
    )


def obs(set_id: int, code: str, value: str, **kwargs: object) -> v2.ObservationOut:
    return v2.ObservationOut(set_id=set_id, code=code, value=value, **kwargs)  # type: ignore[arg-type]


def sample_patients() -> list[v2.PatientOut]:
    cbc = v2.OrderOut(
        specimen_id="25059651",
        test_code="CBC",
        test_text="Numération",
        observed_at=NOW - timedelta(minutes=2),
        results=(
            obs(
                1,
                "6690-2",
                "7.13",
                text="WBC",
                coding_system="LN",
                units="10*3/uL",
                reference_range="4.00-10.00",
                status="F",
                observed_at=NOW,
                producer="ELite 580",
            ),
            obs(
                2,
                "770-8",
                "43.2",
                text="NEU%",
                units="%",
                reference_range="50.0-70.0",
                abnormal_flags=("L", "A"),
                producer="ELite 580",
                notes=("Contrôlé au frottis", "2nd note ^ with | delimiters"),
            ),
            obs(3, "CREA", "88", text="Créatinine", units="µmol/L"),
            obs(
                4,
                "COMMENT",
                TRICKY,
                text=TRICKY,
                units="a^b",
                reference_range=TRICKY,
                abnormal_flags=("~|", "N"),
                producer=TRICKY,
                notes=(TRICKY,),
            ),
            obs(5, "AGE", "", value_type="NM"),
        ),
        specimen_type="BLD",
    )
    chem = v2.OrderOut("S-2", "CHEM", "", None, (obs(1, "GLU", "5.5", units="mmol/L"),))
    empty = v2.OrderOut("S-3", "HOLD", "Sample on hold", None, ())
    return [
        v2.PatientOut("P001", "Müller", "Zoë", date(1962, 3, 20), "F", (cbc, chem)),
        v2.PatientOut("P|002", "O'Brien^Smith", "Seán", None, "", (empty,)),
    ]


@pytest.fixture(name="built")
def fixture_built() -> bytes:
    return v2.build_oru_r01(header(), sample_patients())


def segments(message: bytes) -> list[str]:
    return message.decode("utf-8").split("\r")


def test_segments_outline(built: bytes) -> None:
    assert built.endswith(b"\r")
    assert b"\n" not in built
    names = [s[:3] for s in segments(built)[:-1]]
    assert names == [
        "MSH",
        "PID",
        "ORC",
        "OBR",
        "OBX",
        "OBX",
        "NTE",
        "NTE",
        "OBX",
        "OBX",
        "NTE",
        "OBX",
        "SPM",
        "ORC",
        "OBR",
        "OBX",
        "PID",
        "ORC",
        "OBR",
    ]


def test_msh_fields(built: bytes) -> None:
    msh = segments(built)[0].split("|")
    assert msh[1] == "^~\\&"
    assert msh[2:6] == ["labgate", "LAB\\S\\1", "LIS", "HOSP"]
    assert msh[6] == "20250628173333+0200"
    assert msh[8] == "ORU^R01^ORU_R01"
    assert msh[9:12] == ["LG000001", "P", "2.5.1"]
    assert msh[14] == msh[15] == ""  # MSH-15/16: original acknowledgement mode
    assert msh[17] == "UNICODE UTF-8"


def test_text_is_utf8_and_escaped(built: bytes) -> None:
    text = built.decode("utf-8")
    assert "PID|1||P001||Müller^Zoë||19620320|F" in text
    assert "PID|2||P\\F\\002||O'Brien\\S\\Smith^Seán" in text
    assert "|88|µmol/L|" in text
    assert "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f \\E\\F\\E\\ \\E\\X0D\\E\\ end" in text
    assert "OBX|2|NM|770-8^NEU%^L||43.2|%|50.0-70.0|L~A|||F||||||||ELite 580" not in text
    assert "OBX|2|NM|770-8^NEU%^L||43.2|%|50.0-70.0|L~A|||F|||||||ELite 580" in text


def test_control_characters_are_hex_escaped() -> None:
    patient = v2.PatientOut(
        "P1",
        "A",
        "B",
        None,
        "U",
        (
            v2.OrderOut(
                "S1", "T", "", None, (obs(1, "X", "line1\r\nline2\x0b\x1c", notes=("tab\there",)),)
            ),
        ),
    )
    built = v2.build_oru_r01(header(), [patient])
    assert b"\x0b" not in built and b"\x1c" not in built
    assert b"line1\\X0D\\\\X0A\\line2\\X0B\\\\X1C\\" in built
    observation = v2.parse_oru(built).observations[0]
    assert observation.value == "line1\r\nline2\x0b\x1c"
    assert observation.notes == ("tab\there",)


def test_timestamps_carry_the_utc_offset() -> None:
    west = timezone(-timedelta(hours=4, minutes=30))
    patient = v2.PatientOut(
        "P1",
        "A",
        "B",
        None,
        "U",
        (
            v2.OrderOut(
                "S1",
                "T",
                "",
                datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
                (obs(1, "X", "1", observed_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=west)),),
            ),
        ),
    )
    text = v2.build_oru_r01(header(), [patient]).decode()
    assert "|20250102030405+0000\r" in text  # OBR-7
    assert "|20250102030405-0430\r" in text  # OBX-14


def test_spm_only_when_specimen_type_given(built: bytes) -> None:
    spm = [s for s in segments(built) if s.startswith("SPM")]
    assert spm == ["SPM|1|25059651||BLD"]


def test_orc_and_obr_carry_the_specimen_id(built: bytes) -> None:
    text = segments(built)
    assert text[2] == "ORC|RE|25059651"
    assert text[3] == "OBR|1|25059651||CBC^Numération^L|||20250628173133+0200"
    assert "OBR|3|S-3||HOLD^Sample on hold^L" in text


def test_value_type_defaults_from_the_value() -> None:
    assert obs(1, "X", "7.1").effective_value_type == "NM"
    assert obs(1, "X", "-.5").effective_value_type == "NM"
    assert obs(1, "X", ">10").effective_value_type == "ST"
    assert obs(1, "X", "").effective_value_type == "ST"
    assert obs(1, "X", "POS", value_type="CWE").effective_value_type == "CWE"


def hl7apy_strict(message: bytes) -> object:
    text = message.decode("utf-8").rstrip("\r")
    parsed = hl7apy_parse(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert parsed.validate() is True
    return parsed


def test_strict_hl7apy_validation_as_251_oru_r01() -> None:
    message = hl7apy_strict(v2.build_oru_r01(header(), sample_patients()[:1]))
    assert message.name == "ORU_R01"  # type: ignore[attr-defined]
    assert message.version == "2.5.1"  # type: ignore[attr-defined]
    groups = [child.name for child in message.children]  # type: ignore[attr-defined]
    assert groups == ["MSH", "ORU_R01_PATIENT_RESULT"]
    result = message.children[1]  # type: ignore[attr-defined]
    orders = [c for c in result.children if c.name == "ORU_R01_ORDER_OBSERVATION"]
    assert len(orders) == 2
    assert [c.name for c in orders[0].children][:2] == ["ORC", "OBR"]
    observations = [c for c in orders[0].children if c.name == "ORU_R01_OBSERVATION"]
    assert [len(o.children) for o in observations] == [1, 3, 1, 2, 1]  # OBX + its NTEs
    assert [c.name for c in orders[0].children][-1] == "ORU_R01_SPECIMEN"


def test_strict_hl7apy_validation_of_each_patient_result(built: bytes) -> None:
    text = built.decode("utf-8")
    msh, first, second = text[: text.index("\rPID|1")], text.index("PID|1"), text.index("PID|2")
    hl7apy_strict(f"{msh}\r{text[first:second]}".encode())
    hl7apy_strict(f"{msh}\r{text[second:]}".encode())
    v2.validate_message(built)  # does the same split


def test_hl7apy_still_cannot_parse_two_patient_results(built: bytes) -> None:
    """If this starts failing, hl7apy was fixed: drop the per-patient split in validation.py."""
    with pytest.raises(Exception, match="max limit"):
        hl7apy_strict(built)


def test_validate_message_accepts_built_and_rejects_broken(built: bytes) -> None:
    v2.validate_message(built)
    broken = built.replace(b"\rPID|1|", b"\rOBX|1|")  # an OBX where the PID should be
    with pytest.raises(RemoteProtocolError, match="strict HL7 validation"):
        v2.validate_message(broken)


def test_round_trip(built: bytes) -> None:
    parsed = v2.parse_oru(built)
    assert parsed.control_id == "LG000001"
    assert parsed.sending_application == "labgate"
    assert parsed.sending_facility == "LAB^1"
    assert (parsed.receiving_application, parsed.receiving_facility) == ("LIS", "HOSP")
    assert parsed.created_at == NOW
    assert parsed.version == "2.5.1"

    sent = [(p, o, r) for p in sample_patients() for o in p.orders for r in o.results]
    assert len(parsed.observations) == len(sent) == 6
    for got, (patient, order, result) in zip(parsed.observations, sent, strict=True):
        assert got.patient_id == patient.patient_id
        assert got.specimen_id == order.specimen_id
        assert got.test_code == order.test_code
        assert got.set_id == str(result.set_id)
        assert got.code == result.code
        assert got.text == result.text
        assert got.coding_system == result.coding_system
        assert got.value == result.value
        assert got.value_type == result.effective_value_type
        assert got.units == result.units
        assert got.reference_range == result.reference_range
        assert got.abnormal_flags == result.abnormal_flags
        assert got.status == result.status
        assert got.observed_at == result.observed_at
        assert got.producer == result.producer
        assert got.notes == result.notes


@pytest.mark.parametrize("separator", [b"\n", b"\r\n"])
def test_parse_tolerates_lf_and_crlf(built: bytes, separator: bytes) -> None:
    assert v2.parse_oru(built.replace(b"\r", separator)) == v2.parse_oru(built)


def test_parse_keeps_composite_values_in_er7() -> None:
    message = (
        b"MSH|^~\\&|X||||20250101||ORU^R01|1|P|2.4\r"
        b"OBR|1||S9\rOBX|1|SN|1554-5^GLUCOSE||^182|mg/dl|70_105|H|||F\r"
        b"OBX|2|ST|X||a\\S\\b|\r"
    )
    observations = v2.parse_oru(message).observations
    assert observations[0].value == "^182"
    assert observations[0].specimen_id == "S9"
    assert observations[1].value == "a^b"


def test_parse_reads_fractional_seconds_and_zone() -> None:
    message = (
        b"MSH|^~\\&|X||||20190331102500.0000-0400||ORU^R01|1|P|2.5.1\r"
        b"OBR|1|A\rOBX|1|NM|X||1||||||F|||20190404124745.12-0400\r"
    )
    parsed = v2.parse_oru(message)
    zone = timezone(-timedelta(hours=4))
    assert parsed.created_at == datetime(2019, 3, 31, 10, 25, tzinfo=zone)
    assert parsed.observations[0].observed_at == datetime(
        2019, 4, 4, 12, 47, 45, 120000, tzinfo=zone
    )


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"", "MSH"),
        (b"hello world", "MSH"),
        (b"MSH|^~\\&|X||||20250101||ACK^R01|1|P|2.5.1\rMSA|AA|1\r", "not an ORU"),
        (b"MSH|^~\\&|X||||20250101||ORU^R30|1|P|2.5.1\r", "not an ORU"),
        (b"MSH|^~\\&|X||||20250101||ORU^R01||P|2.5.1\r", "control id"),
        (b"MSH|^~\\&|X||||20250101||ORU^R01|1|P|2.5.1\rOBX|1|NM|X||1\r", "OBX outside"),
        (b"MSH|^~\\&|X||||2025-01-01||ORU^R01|1|P|2.5.1\r", "MSH-7"),
        (b"MSH|^~\\&|X||||20250101||ORU^R01|1|P|2.5.1||||||UNICODE UTF-8\r\xff\xfe", "utf-8"),
    ],
)
def test_parse_refuses_with_a_reason(message: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=reason):
        v2.parse_oru(message)


def test_parse_decodes_latin1_when_msh18_says_so() -> None:
    message = (
        "MSH|^~\\&|X||||20250101||ORU^R01|1|P|2.3.1||||||8859/1\r"
        "PID|1||P1||Müller\rOBR|1|S\rOBX|1|ST|X||Pâle||||||F\r"
    ).encode("latin-1")
    assert v2.parse_oru(message).observations[0].value == "Pâle"


@pytest.mark.parametrize(
    "make",
    [
        lambda: obs(0, "X", "1"),
        lambda: obs(1, "", "1"),
        lambda: obs(1, "X", "1", status=""),
        lambda: obs(1, "X", "1", observed_at=datetime(2025, 1, 1)),
        lambda: obs(1, "X", "1", abnormal_flags=["H"]),
        lambda: v2.OrderOut("S", "T", "", datetime(2025, 1, 1), ()),
        lambda: v2.PatientOut("P", "", "", None, "", ()),
        lambda: v2.MessageHeader("a", "b", "c", "d", "", NOW),
        lambda: v2.MessageHeader("a", "b", "c", "d", "1", datetime(2025, 1, 1)),
        lambda: v2.build_oru_r01(header(), []),
    ],
)
def test_bad_input_is_a_local_error(make: object) -> None:
    with pytest.raises(LocalProtocolError):
        make()  # type: ignore[operator]


def test_dataclasses_are_frozen() -> None:
    observation = obs(1, "X", "1")
    with pytest.raises(AttributeError):
        observation.value = "2"  # type: ignore[misc]
