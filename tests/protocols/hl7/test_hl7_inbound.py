"""parse_results_message: analyser results (OUL^R22, ORU^R01), real and synthetic."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from test_hl7_corpus import DATA, erba_intact_orus, ghh_message

from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.hl7.inbound import InboundResults, parse_results_message

PARIS = timezone(timedelta(hours=1))


def fixture_messages(name: str, separator: bytes = b"\n") -> list[bytes]:
    """The messages of a synthetic fixture (``#`` comments dropped, blank-line separated)."""
    lines = [line for line in (DATA / name).read_bytes().split(b"\n") if not line.startswith(b"#")]
    text = b"\n".join(lines)
    return [separator.join(m.strip().split(b"\n")) for m in text.split(b"\n\n") if m.strip()]


def oul(separator: bytes = b"\r") -> bytes:
    return fixture_messages("hl7-synthetic-law-oul-r22.txt", separator)[0]


@pytest.mark.parametrize("separator", [b"\r", b"\n", b"\r\n"])
def test_oul_r22_header_and_specimens(separator: bytes) -> None:
    result = parse_results_message(oul(separator))
    assert (result.message_type, result.trigger) == ("OUL", "R22")
    assert result.control_id == "MSG-0001"
    assert (result.sending_application, result.sending_facility) == ("ANALYSER", "CHEMLAB")
    assert (result.version, result.charset, result.codec) == ("2.5.1", "UNICODE UTF-8", "utf-8")
    assert result.processing_id == "P"
    assert result.created_at == datetime(2024, 1, 5, 10, 30, tzinfo=PARIS)
    first, second = result.specimens
    assert first.specimen_id == "SPEC-001"  # SPM-2 placer id, not the namespace
    assert second.specimen_id == "SPEC-002"
    assert not first.is_qc and first.specimen_role == "P"
    assert first.specimen_type == "SER"
    assert first.collected_at == datetime(2024, 1, 5, 9, 15, tzinfo=PARIS)
    assert second.collected_at == datetime(2024, 1, 5, 9, 20, tzinfo=PARIS)
    assert first.tests == ("2345-7", "1988-5")
    assert first.notes == ("Lipemic specimen",)  # NTE after an OBR
    assert first.patient.patient_id == "PAT123"  # first PID-3 repetition
    assert (first.patient.family_name, first.patient.given_name) == ("DUPONT", "JEAN")
    assert (first.patient.birth_date, first.patient.sex) == (date(1970, 1, 1), "M")
    assert second.patient == first.patient
    assert len(result.observations) == 5


def test_oul_r22_observations() -> None:
    first, second = parse_results_message(oul()).specimens
    glucose, sodium, potassium, crp = first.observations
    assert [o.sequence for o in first.observations] == [1, 2, 3, 4]
    assert [o.set_id for o in first.observations] == ["0", "1", "2", "1"]  # OBX-1 from 0
    assert (glucose.code, glucose.text, glucose.coding_system) == ("2345-7", "Glucose", "LN")
    assert (glucose.value, glucose.value_type, glucose.units) == ("5.4", "NM", "mmol/L")
    assert glucose.reference_range == "3.9-6.1"
    assert glucose.abnormal_flags == ("N",)
    assert glucose.status == "F"
    assert glucose.observed_at == datetime(2024, 1, 5, 10, 29, tzinfo=PARIS)
    assert glucose.equipment == "CHEM-01"
    assert glucose.test_code == "2345-7"
    assert sodium.abnormal_flags == ("H", "A")
    assert sodium.notes == ("Result confirmed\nby rerun",)
    assert (potassium.value, potassium.status, potassium.abnormal_flags) == ("", "X", ())
    assert crp.value == "<^0.6"
    assert crp.structured_numeric() == ("<", "0.6", "", "")
    assert glucose.structured_numeric() is None
    [urine] = second.observations
    assert (urine.value_type, urine.value) == ("CWE", "NEG^Negative^L")


def test_oul_r22_qc_specimen_from_spm_11() -> None:
    [raw] = fixture_messages("hl7-synthetic-law-oul-r22-qc.txt", b"\r")
    result = parse_results_message(raw)
    [qc] = result.specimens
    assert qc.is_qc and qc.specimen_role == "Q"
    assert qc.specimen_id == "QC-LOT-4711-L1"
    assert qc.patient.patient_id == ""  # no PID at all
    assert qc.collected_at == datetime(2024, 1, 5, 5, 59)
    assert result.charset == ""
    assert [o.value for o in qc.observations] == ["5.1"]


def test_erba_elite_580_orus() -> None:
    payloads = erba_intact_orus()
    assert len(payloads) == 53
    for payload in payloads:
        result = parse_results_message(payload)
        assert (result.message_type, result.trigger, result.version) == ("ORU", "R01", "2.3.1")
        assert (result.charset, result.codec) == ("UNICODE", "utf-8")
        [specimen] = result.specimens
        assert specimen.specimen_id  # OBR-3 (one is "invalid9" in the log)
        assert not specimen.is_qc
        assert specimen.tests == ("01001",)
        assert specimen.collected_at is not None  # OBR-7
        assert [o.sequence for o in specimen.observations] == list(
            range(1, len(specimen.observations) + 1)
        )


def test_erba_observation_quirks() -> None:
    payload = next(p for p in erba_intact_orus() if b"ac84fae4" in p)
    [specimen] = parse_results_message(payload).specimens
    assert specimen.specimen_id == "25059143"
    assert specimen.collected_at == datetime(2025, 6, 28, 17, 33, 10)
    by_code = {o.code: o for o in specimen.observations}
    assert by_code["6690-2"].abnormal_flags == ("", "N")
    assert by_code["786-4"].abnormal_flags == ("L", "A")
    assert (by_code["02003"].value_type, by_code["02003"].value) == ("IS", "CBC+DIFF")
    assert (by_code["30525-0"].value_type, by_code["30525-0"].value) == ("NM", "")


def test_ghh_lab_oru() -> None:
    result = parse_results_message(ghh_message())
    assert (result.control_id, result.version, result.charset) == ("CNTRL-3456", "2.4", "")
    [specimen] = result.specimens
    assert specimen.specimen_id == "1045813"  # OBR-3 before OBR-2
    assert specimen.patient.patient_id == "555-44-4444"
    assert specimen.patient.birth_date == date(1962, 3, 20)
    [glucose] = specimen.observations
    assert glucose.structured_numeric() == ("", "182", "", "")
    assert glucose.reference_range == "70_105"


MSH = "MSH|^~\\&|AN|LAB|||20240105||ORU^R01|C1|P|2.5.1||||||{charset}\r"
BODY = "PID|1||P1||MÜLLER^ZOË\rOBR|1||S1|GLU\rOBX|1|ST|NOTE||µg/l résumé\r"


@pytest.mark.parametrize(
    ("charset", "encoding", "codec"),
    [
        ("UNICODE UTF-8", "utf-8", "utf-8"),
        ("UNICODE", "utf-8", "utf-8"),
        ("8859/1", "latin-1", "iso8859-1"),
        ("", "utf-8", "utf-8"),
        ("", "latin-1", "latin-1"),  # undeclared and not UTF-8: Latin-1
        ("ASCII", "latin-1", "latin-1"),
    ],
)
def test_character_sets(charset: str, encoding: str, codec: str) -> None:
    raw = (MSH.format(charset=charset) + BODY).encode(encoding)
    result = parse_results_message(raw)
    assert result.codec == codec
    assert result.specimens[0].patient.family_name == "MÜLLER"
    assert result.specimens[0].patient.given_name == "ZOË"
    assert result.observations[0].value == "µg/l résumé"


def test_declared_utf8_that_is_not_utf8_is_refused() -> None:
    raw = (MSH.format(charset="UNICODE UTF-8") + BODY).encode("latin-1")
    with pytest.raises(RemoteProtocolError, match="not valid utf-8"):
        parse_results_message(raw)


def test_oru_with_orc_before_obr_and_spm_after() -> None:
    raw = (
        b"MSH|^~\\&|AN|LAB|||20240105120000+0000||ORU^R01^ORU_R01|C2|P|2.5.1\r"
        b"PID|1||P1\r"
        b"ORC|RE|PLC-1|FIL-1\r"
        b"OBR|1|||K^Potassium\r"
        b"OBX||NM|K||4.1|mmol/L\r"
        b"SPM|1|BAR-1||SER|||||||P||||||20240105110000+0000\r"
        b"OBR|2|||NA^Sodium\r"
        b"OBX||NM|NA||140|mmol/L\r"
        b"SPM|1|BAR-1||SER\r"
        b"PID|2||P2\r"
        b"ORC|RE|PLC-2|FIL-2\r"
        b"OBR|1|||NA^Sodium\r"
        b"OBX|1|NM|NA||139|mmol/L\r"
    )
    result = parse_results_message(raw)
    first, second = result.specimens
    assert first.specimen_id == "BAR-1" and first.tests == ("K", "NA")  # merged by SPM-2
    assert first.collected_at == datetime(2024, 1, 5, 11, tzinfo=UTC)
    assert [o.set_id for o in first.observations] == ["", ""]  # OBX-1 missing
    assert second.specimen_id == "FIL-2"  # ORC-3: no SPM, OBR-2/3 empty
    assert second.patient.patient_id == "P2"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "does not start with MSH"),
        (b"PID|1||P1\r", "does not start with MSH"),
        (b"MSH|^~\\&|A|B|||20240105||ADT^A01|C|P|2.5\r", "not a results message"),
        (b"MSH|^~\\&|A|B|||20240105||ORU^R01||P|2.5\r", "control id is empty"),
        (b"MSH|^~\\&|A|B|||20240105||ORU^R01|C|P|2.5\rOBX|1|NM|X||1\r", "OBX before any OBR"),
        (b"MSH|^~\\&|A|B|||2024-01-05||ORU^R01|C|P|2.5\r", "MSH-7 is not an HL7 timestamp"),
    ],
)
def test_unusable_messages_are_refused_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=reason):
        parse_results_message(raw)


def test_framing_leftovers_are_tolerated() -> None:
    raw = b"\x0b" + oul(b"\r\n") + b"\r\n\x1c\r"
    assert isinstance(parse_results_message(raw), InboundResults)
    assert parse_results_message(b"\xef\xbb\xbf" + oul()).control_id == "MSG-0001"


def test_default_encoding_for_undeclared_non_utf8() -> None:
    raw = (MSH.format(charset="") + BODY).encode("cp1252")
    result = parse_results_message(raw, default_encoding="cp1252")
    assert result.codec == "cp1252"
    assert result.observations[0].value == "µg/l résumé"
    utf8 = (MSH.format(charset="") + BODY).encode("utf-8")
    assert parse_results_message(utf8, default_encoding="cp1252").codec == "utf-8"
    with pytest.raises(LocalProtocolError):
        parse_results_message(raw, default_encoding="no-such-codec")
    with pytest.raises(RemoteProtocolError, match="neither UTF-8 nor ascii"):
        parse_results_message(raw, default_encoding="ascii")


def test_law_sid_after_an_obx_gives_its_reagent_lot() -> None:
    """IHE LAW: OBX [TCD] {SID} {NTE}: SID-2 is the lot of the reagent the test ran on; the
    NTE after a SID still belongs to the OBX, and an OBX without SID has no lot."""
    message = (
        b"MSH|^~\\&|ANALYSER|CHEMLAB|LIS|LAB|20240105103000+0100||OUL^R22^OUL_R22|M1|P|2.5.1\r"
        b"PID|1||PAT123||DUPONT^JEAN\r"
        b"SPM|1|SPEC-001||SER|||||||P\r"
        b"OBR|1|SPEC-001||2345-7^Glucose^LN\r"
        b"OBX|1|NM|2345-7^Glucose^LN||5.4|mmol/L|3.9-6.1|N|||F|||20240105102900+0100\r"
        b"TCD|2345-7^Glucose^LN|1\r"
        b"SID|GLU3^Glucose HK^99ROC|R-48213||Roche\r"
        b"SID|DIL^Diluent^99ROC|D-777\r"
        b"NTE|1||after the SID\r"
        b"OBX|2|NM|2951-2^Sodium^LN||140|mmol/L|136-145|N|||F\r"
    )
    [specimen] = parse_results_message(message).specimens
    glucose, sodium = specimen.observations
    assert glucose.reagent_lot == "R-48213"  # the first SID: the test's own reagent
    assert glucose.notes == ("after the SID",)
    assert sodium.reagent_lot == ""

    from drivers.hl7_results import reports_from_hl7

    [report] = reports_from_hl7(parse_results_message(message), "chem-hl7")
    assert [r.reagent_lot for r in report.results] == ["R-48213", ""]
