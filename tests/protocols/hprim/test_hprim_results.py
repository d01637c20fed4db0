"""The results builder (H, P, OBR, OBX, C, L) and the sample files of tests/data/hprim."""

from __future__ import annotations

import base64
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from protocols import hprim
from protocols.errors import LocalProtocolError

DATA = Path(__file__).resolve().parents[2] / "data" / "hprim"
SAMPLE_22 = DATA / "hprim-2.2-results.hpr"
SAMPLE_24 = DATA / "hprim-2.4-embedded-file.hpr"


def at(day: int, hour: int, minute: int) -> datetime:
    return datetime(2024, 5, day, hour, minute)


def header(**changes: object) -> hprim.Header:
    values: dict[str, object] = {
        "sender_id": "LABGATE",
        "sender_name": "LABGATE MIDDLEWARE",
        "receiver_id": "SIL01",
        "receiver_name": "SIL DU LABORATOIRE",
        "created_at": at(1, 10, 30),
        "file_name": "R0001.HPR",
    }
    values.update(changes)
    return hprim.Header(**values)  # type: ignore[arg-type]


def sample_patients() -> list[hprim.Patient]:
    """What tests/data/hprim/hprim-2.2-results.hpr says, as the LIS link will give it."""
    glucose = hprim.Observation(
        code="GLU",
        label="Glucose",
        value="5.4",
        units="mmol/L",
        reference_range="3.9-5.8",
        abnormal_flags=("N",),
        observed_at=at(1, 9, 30),
        producer="cobas-c311",
        validation=hprim.ElectronicValidation("Dr Claire MARTIN", "BM01", "chimie 2024.3"),
    )
    potassium = hprim.Observation(
        code="K",
        label="Potassium",
        value="6.3",
        units="mmol/L",
        reference_range="3.5-5.1",
        abnormal_flags=("H",),
        observed_at=at(1, 9, 31),
        producer="cobas-c311",
        notes=(
            "hémolyse légère & lipémie: indices H 45 | L 12 | I 3 (seuils 50\\100\\20) - "
            "potassium possiblement surestimé, à contrôler sur un nouveau prélèvement; résultat "
            "retenu pour revue par le biologiste (labgate: held, critical_value, specimen_index)",
        ),
    )
    hba1c = hprim.Observation(
        code="HBA1C",
        label="Hémoglobine glyquée",
        value="6.9",
        units="%",
        reference_range="4.0-6.0",
        abnormal_flags=("H",),
        observed_at=at(1, 8, 20),
        point_of_care=hprim.PointOfCare("afinion-2", "service de cardiologie"),
        correction=True,
    )
    hcg = hprim.Observation(
        code="HCG",
        label="HCG urinaire",
        value=hprim.Coded("NEG", "Négatif", "L"),
        observed_at=at(1, 8, 50),
        producer="bandelette-1",
    )
    aspect = hprim.Observation(
        code="ASPECT",
        label="Aspect",
        value="trouble",
        abnormal_flags=("A",),
        observed_at=at(1, 8, 50),
        producer="bandelette-1",
    )
    return [
        hprim.Patient(
            patient_id="PAT-000123",
            family_name="DUPONT",
            given_name="Marie",
            birth_date=date(1970, 1, 1),
            sex="F",
            orders=(
                hprim.Order(
                    specimen_id="S2405010001",
                    priority="R",
                    collected_at=at(1, 8, 0),
                    received_at=at(1, 8, 30),
                    observations=(glucose, potassium),
                ),
            ),
        ),
        hprim.Patient(
            patient_id="PAT-000456",
            family_name="MARTIN",
            given_name="Jean",
            birth_date=date(1985, 12, 24),
            sex="M",
            notes=("patient transféré en cardiologie",),
            orders=(
                hprim.Order(
                    specimen_id="S2405010002",
                    priority="R",
                    collected_at=at(1, 8, 15),
                    observations=(hba1c,),
                ),
                hprim.Order(
                    specimen_id="S2405010003",
                    priority="S",
                    collected_at=at(1, 8, 40),
                    observations=(hcg, aspect),
                ),
            ),
        ),
    ]


# --- the samples ------------------------------------------------------------------------------


def test_the_builder_writes_the_22_sample_byte_for_byte() -> None:
    built = hprim.encode_message(hprim.build_results(header(), sample_patients()))
    assert built == SAMPLE_22.read_bytes()


def test_the_22_sample_reads_as_the_fact_sheet_describes() -> None:
    data = SAMPLE_22.read_bytes()
    message = hprim.decode_message(data)
    assert hprim.check_structure(message) == ()
    assert message.version == "H2.2" and message.message_type == "ORU"
    assert message.delimiters == hprim.Delimiters()
    kinds = [r.type for r in message.records]
    assert kinds == "H P OBR OBX C OBX C P C OBR OBX C C OBR OBX OBX L".split()
    by_line = {r.lines: r for r in message.records}
    assert [r.lines for r in message.records if r.lines[0] != r.lines[1]] == [(7, 8)]
    held = by_line[(7, 8)]
    assert held.field(4).startswith("hémolyse légère & lipémie: indices H 45 | L 12 | I 3")
    assert "(seuils 50\\100\\20)" in held.field(4) and held.field(4).endswith("specimen_index)")
    glucose = message.records[3]
    assert hprim.observation_value(glucose).number is not None
    assert glucose.field(15) == "20240501093000" and glucose.component(17, 2) == "Dr Claire MARTIN"
    assert message.records[4].field(4).startswith("validé électroniquement")
    hcg = hprim.observation_value(message.records[14])
    assert hcg.coded == (hprim.Coded("NEG", "Négatif", "L"),)
    trailer = message.records[-1]
    assert trailer.field(4) == "2" and trailer.field(5) == "16"
    assert hprim.encode_message(message) == data
    assert max(len(line) for line in data.split(b"\r")) == hprim.MAX_LINE


def test_the_24_sample_keeps_its_embedded_file_opaque() -> None:
    data = SAMPLE_24.read_bytes()
    message = hprim.decode_message(data)
    assert hprim.check_structure(message) == ()
    assert message.version == "H2.4"
    obx = message.records[4]
    value = hprim.observation_value(obx)
    assert value.value_type == "FIC" and value.file is not None and obx.lines == (5, 7)
    assert base64.b64decode(value.file.text).startswith(b"labgate - fichier d'exemple")
    assert hprim.encode_message(message) == data
    rebuilt = hprim.build_results(
        header(file_name="R0002.HPR", version="H2.4", created_at=at(1, 11, 0)),
        [
            hprim.Patient(
                patient_id="PAT-000789",
                family_name="LEROY",
                given_name="Anne",
                birth_date=date(1992, 3, 15),
                sex="F",
                orders=(
                    hprim.Order(
                        specimen_id="S2405010010",
                        tests=(
                            hprim.Coded("TSH", "TSH", "L"),
                            hprim.Coded("CR", "Compte rendu", "L"),
                        ),
                        priority="R",
                        collected_at=at(1, 9, 0),
                        observations=(
                            hprim.Observation(
                                code="TSH",
                                label="TSH",
                                value="2.1",
                                units="mUI/L",
                                reference_range="0.4-4.0",
                                abnormal_flags=("N",),
                                observed_at=at(1, 10, 0),
                                producer="immuno-1",
                            ),
                            hprim.Observation(
                                code="CR",
                                label="Compte rendu",
                                value=value.file,
                                observed_at=at(1, 10, 5),
                            ),
                        ),
                    ),
                ),
            )
        ],
    )
    assert hprim.encode_message(rebuilt) == data


# --- the marks the LIS link needs ----------------------------------------------------------------


def one(observation: hprim.Observation, **order: object) -> hprim.Message:
    values: dict[str, object] = {"specimen_id": "S1", "observations": (observation,)}
    values.update(order)
    patient = hprim.Patient(patient_id="P1", orders=(hprim.Order(**values),))  # type: ignore[arg-type]
    message = hprim.build_results(header(), [patient])
    assert hprim.decode_message(hprim.encode_message(message)) == message
    assert hprim.check_structure(message) == ()
    return message


def records(message: hprim.Message, kind: str) -> list[hprim.Record]:
    return [r for r in message.records if r.type == kind]


def test_electronic_validation_names_the_biologist_in_obx_17_and_a_comment() -> None:
    message = one(
        hprim.Observation(
            code="NA",
            value="140",
            validation=hprim.ElectronicValidation("Dr Paul DURAND", "BIO7", "ionogramme v12"),
        )
    )
    (obx,) = records(message, "OBX")
    assert obx.repeats(17) == ((("BIO7",), ("Dr Paul DURAND",)),)
    (comment,) = records(message, "C")
    assert comment.field(3) == "L"
    assert comment.field(4) == (
        "validé électroniquement - biologiste responsable Dr Paul DURAND - règles ionogramme v12"
    )
    assert message.records.index(comment) == message.records.index(obx) + 1


def test_an_explicit_responsible_observer_wins_over_the_validation() -> None:
    message = one(
        hprim.Observation(
            code="NA",
            value="140",
            responsible=hprim.Coded("X1", "Dr X"),
            validation=hprim.ElectronicValidation("Dr Paul DURAND"),
        )
    )
    (obx,) = records(message, "OBX")
    assert obx.component(17, 1) == "X1"
    assert records(message, "C")[0].field(4).endswith("biologiste responsable Dr Paul DURAND")


def test_a_point_of_care_result_carries_its_device_and_origin() -> None:
    message = one(
        hprim.Observation(code="GLU", value="7.1", point_of_care=hprim.PointOfCare("glucometre-3"))
    )
    (obx,) = records(message, "OBX")
    assert obx.field(16) == "glucometre-3"
    assert records(message, "C")[0].field(4) == "origine: biologie délocalisée - glucometre-3"


def test_a_correction_is_status_c_on_obx_and_obr_with_a_comment() -> None:
    message = one(hprim.Observation(code="K", value="4.1", correction=True))
    (obr,), (obx,) = records(message, "OBR"), records(message, "OBX")
    assert obx.field(12) == "C" and obr.field(26) == "C"
    assert records(message, "C")[0].field(4) == hprim.CORRECTION_NOTE


@pytest.mark.parametrize(
    ("statuses", "expected"), [(("F", "F"), "F"), (("F", "P"), "P"), (("I",), "P")]
)
def test_obr_26_follows_the_observations(statuses: tuple[str, ...], expected: str) -> None:
    observations = tuple(
        hprim.Observation(code=f"T{n}", value="1", status=s) for n, s in enumerate(statuses)
    )
    patient = hprim.Patient(
        patient_id="P", orders=(hprim.Order(specimen_id="S", observations=observations),)
    )
    (obr,) = records(hprim.build_results(header(), [patient]), "OBR")
    assert obr.field(26) == expected
    order = hprim.Order(specimen_id="S", observations=observations, result_status="I")
    assert order.effective_result_status == "I"


def test_marks_come_after_the_free_notes() -> None:
    message = one(
        hprim.Observation(
            code="K",
            value="4.1",
            notes=("contrôle fait",),
            validation=hprim.ElectronicValidation("Dr A"),
            point_of_care=hprim.PointOfCare("poc-1", "urgences"),
            correction=True,
        )
    )
    texts = [(c.field(2), c.field(4)) for c in records(message, "C")]
    assert texts == [
        ("1", "contrôle fait"),
        ("2", "validé électroniquement - biologiste responsable Dr A"),
        ("3", "origine: biologie délocalisée - poc-1 (urgences)"),
        ("4", hprim.CORRECTION_NOTE),
    ]


# --- fields -----------------------------------------------------------------------------------


def test_value_types_follow_the_value() -> None:
    message = one(
        hprim.Observation(code="A", value="12.5"),
        observations=(
            hprim.Observation(code="A", value="12.5"),
            hprim.Observation(code="B", value="< 0.5"),
            hprim.Observation(code="C", value=hprim.Coded("POS")),
            hprim.Observation(code="D", value="texte libre", value_type="TX"),
        ),
    )
    assert [r.field(3) for r in records(message, "OBX")] == ["NM", "ST", "CE", "TX"]
    (obr,) = records(message, "OBR")
    assert [r[0][0] for r in obr.repeats(5)] == ["A", "B", "C", "D"]  # from the observations


def test_date_times_are_written_in_the_header_time_zone() -> None:
    utc = datetime(2024, 1, 15, 7, 45, 10, tzinfo=UTC)
    paris = header(timezone=ZoneInfo("Europe/Paris"), created_at=utc)
    patient = hprim.Patient(
        patient_id="P",
        orders=(
            hprim.Order(
                specimen_id="S",
                collected_at=utc - timedelta(hours=1),
                observations=(hprim.Observation(code="X", value="1", observed_at=utc),),
            ),
        ),
    )
    message = hprim.build_results(paris, [patient])
    assert message.records[0].field(14) == "20240115084510"
    assert records(message, "OBR")[0].field(8) == "20240115074510"
    assert records(message, "OBX")[0].field(15) == "20240115084510"
    as_is = hprim.build_results(
        header(created_at=utc.astimezone(timezone(timedelta(hours=5)))), [patient]
    )
    assert as_is.records[0].field(14) == "20240115124510"


def test_the_trailer_counts_patients_and_records() -> None:
    patients = sample_patients()
    message = hprim.build_results(header(), patients * 2)
    trailer = message.records[-1]
    assert trailer.field(2) == "1" and trailer.field(3) == ""
    assert trailer.field(4) == "4" and trailer.field(5) == str(len(message.records) - 1)
    assert [r.field(2) for r in records(message, "P")] == ["1", "2", "3", "4"]


def test_an_embedded_file_needs_version_24() -> None:
    patient = hprim.Patient(
        patient_id="P",
        orders=(
            hprim.Order(
                specimen_id="S",
                observations=(hprim.Observation(code="CR", value=hprim.EmbeddedFile("QUJD")),),
            ),
        ),
    )
    with pytest.raises(LocalProtocolError, match=r"needs version H2\.4"):
        hprim.build_results(header(), [patient])
    message = hprim.build_results(header(version="H2.4"), [patient])
    assert records(message, "OBX")[0].repeats(6) == ((("QUJD",),),)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: hprim.Observation(code="", value="1"), "needs a code"),
        (lambda: hprim.Observation(code="X", value="1", status="Z"), "OBX-12 status"),
        (lambda: hprim.Observation(code="X", value="1", abnormal_flags=("HIGH",)), "OBX-9"),
        (lambda: hprim.Observation(code="X", value="1", value_type="QQ"), "not known"),
        (lambda: hprim.Observation(code="X", value="1", value_type="FIC"), "EmbeddedFile"),
        (lambda: hprim.Observation(code="X", value=hprim.Coded("A"), value_type="ST"), "CE"),
        (lambda: hprim.Order(specimen_id="S", observations=()), "non-empty"),
        (
            lambda: hprim.Order(
                specimen_id="S",
                observations=(hprim.Observation(code="X", value="1"),),
                result_status="Q",
            ),
            "OBR-26",
        ),
        (lambda: hprim.Patient(patient_id="P", orders=()), "non-empty"),
        (
            lambda: hprim.Patient(
                patient_id="P",
                sex="H",
                orders=(
                    hprim.Order(
                        specimen_id="S", observations=(hprim.Observation(code="X", value="1"),)
                    ),
                ),
            ),
            "sex",
        ),
        (lambda: header(sender_id=""), "required"),
        (lambda: header(version="H2.5"), r"H2\.2 or H2\.4"),
        (lambda: header(version_type="X"), "C, L or R"),
        (lambda: hprim.build_results(header(), []), "at least one patient"),
        (
            lambda: hprim.build_results(header(file_name="TOO-LONG-NAME.HPR"), sample_patients()),
            "H-3",
        ),
    ],
)
def test_what_hprim_cannot_carry_is_refused_when_built(make: object, reason: str) -> None:
    with pytest.raises(LocalProtocolError, match=reason):
        make()  # type: ignore[operator]


def test_identifiers_longer_than_libhprim_allows_are_refused() -> None:
    observation = hprim.Observation(code="X", value="1")
    long_specimen = hprim.Patient(
        patient_id="P", orders=(hprim.Order(specimen_id="S" * 24, observations=(observation,)),)
    )
    with pytest.raises(LocalProtocolError, match="OBR-3 is longer than 23"):
        hprim.build_results(header(), [long_specimen])
    long_patient = hprim.Patient(
        patient_id="P" * 37, orders=(hprim.Order(specimen_id="S", observations=(observation,)),)
    )
    with pytest.raises(LocalProtocolError, match="P-3 is longer than 36"):
        hprim.build_results(header(), [long_patient])
