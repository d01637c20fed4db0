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
