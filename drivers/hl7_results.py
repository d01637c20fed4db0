"""The lab's models from an HL7 analyser's results message (IHE LAW LAB-29 OUL^R22, ORU^R01).

HL7 already says where everything is, so one mapping serves every HL7 analyser; per-vendor
conventions (QC by test code, local codes) will come as profiles like the ASTM ones when a real
analyser needs them. QC is what the specimen role (SPM-11) says (protocols.hl7.inbound).
"""

from __future__ import annotations

from drivers.models import Patient, Result, SpecimenReport
from protocols import astm
from protocols.hl7.inbound import InboundResults, InboundSpecimen

__all__ = ["reports_from_hl7"]

#: HL7 table 0078 abnormal flags that are already the lab's normalised vocabulary.
_NORMALISED = frozenset({"L", "H", "LL", "HH", "<", ">", "N", "A"})


def reports_from_hl7(message: InboundResults, instrument: str) -> list[SpecimenReport]:
    """One report per specimen, results in message order."""
    return [_report(specimen, instrument) for specimen in message.specimens]


def _report(specimen: InboundSpecimen, instrument: str) -> SpecimenReport:
    patient = specimen.patient
    results = []
    for observation in specimen.observations:
        parsed = astm.parse_value(observation.value)  # the same numeric reading as for ASTM
        flags = tuple(flag for flag in observation.abnormal_flags if flag)
        results.append(
            Result(
                specimen_id=specimen.specimen_id,
                test_code=observation.code,
                value=observation.value.strip(),
                test_name=observation.text,
                numeric=parsed.number,
                comparator=parsed.comparator,
                units=observation.units,
                reference_range=observation.reference_range,
                flags=flags,
                status=observation.status or "F",
                measured_at=observation.observed_at,
                instrument=instrument,
                sequence=observation.sequence,
                comments=tuple(observation.notes),
                is_qc=specimen.is_qc,
                normalized_flags=tuple(flag for flag in flags if flag in _NORMALISED),
                reagent_lot=observation.reagent_lot,
            )
        )
    return SpecimenReport(
        specimen_id=specimen.specimen_id,
        patient=Patient(
            patient_id=patient.patient_id,
            family_name=patient.family_name,
            given_name=patient.given_name,
            birth_date=patient.birth_date,
            sex=patient.sex,
        )
        if patient is not None
        else Patient(),
        results=tuple(results),
        ordered_tests=tuple(specimen.tests),
        collected_at=specimen.collected_at,
        is_qc=specimen.is_qc,
    )
