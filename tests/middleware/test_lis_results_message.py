"""The message the LIS receives for a stored analyser message: a specimen without a patient id
comes first, without a PID, so its results cannot be read as another patient's, and the whole
message passes strict HL7 2.5.1 validation."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from drivers.models import Patient, Result, SpecimenReport
from middleware.config.settings import LisSettings
from middleware.lis.oru import build_results_message
from protocols.hl7.validation import validate_message

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


def _report(specimen: str, patient: str) -> SpecimenReport:
    result = Result(specimen, "GLU", "5.2", numeric=Decimal("5.2"), units="mmol/L",
                    measured_at=NOW, instrument="chem-1")  # fmt: skip
    return SpecimenReport(specimen, Patient(patient, "DUPONT" if patient else ""), (result,))


def test_a_specimen_without_patient_id_goes_first_without_pid() -> None:
    reports = (_report("S-KNOWN", "PAT-1"), _report("S-ANON", ""))
    decisions = (("held", ("no_rule",)), ("held", ("no_rule",)))
    message = build_results_message(LisSettings(port=2575), "LGTEST", reports, decisions, NOW)
    segments = [s.split("|")[0] for s in message.decode().split("\r") if s]
    obr_specimens = [s.split("|")[2] for s in message.decode().split("\r") if s.startswith("OBR")]
    assert obr_specimens[0].startswith("S-ANON")
    assert segments.index("PID") > segments.index("OBR")  # the anonymous one has no PID
    assert segments.count("PID") == 1
    validate_message(message)


def test_the_lis_transcoding_table_names_the_test_in_obx_3() -> None:
    lis = LisSettings(port=2575, transcoding={"GLU": "GLUC-LIS", "chem-1:K": "K-LIS"})
    reports = (_report("S-1", "PAT-1"),)
    message = build_results_message(lis, "LGTEST", reports, (("held", ("no_rule",)),), NOW)
    obx = next(s for s in message.decode().split("\r") if s.startswith("OBX"))
    assert obx.split("|")[3].startswith("GLUC-LIS^")


def test_signed_decisions_name_the_biologist_and_a_refusal_is_x() -> None:
    reports = (_report("S-1", "PAT-1"), _report("S-2", "PAT-2"))
    decisions = (("validated", ("critical_value",)), ("rejected", ("delta_exceeded",)))
    extras = {"biologist": "dr.martin", "correction": "1"}
    reports = tuple(
        SpecimenReport(r.specimen_id, r.patient, r.results, extras=extras) for r in reports
    )
    message = build_results_message(LisSettings(port=2575), "LGTEST", reports, decisions, NOW)
    lines = message.decode().split("\r")
    obx = [s.split("|") for s in lines if s.startswith("OBX")]
    notes = [s for s in lines if s.startswith("NTE")]
    assert [o[11] for o in obx] == ["C", "X"]
    assert any("validé par le biologiste dr.martin (critical_value)" in n for n in notes)
    assert any("rejeté par le biologiste dr.martin (delta_exceeded)" in n for n in notes)
