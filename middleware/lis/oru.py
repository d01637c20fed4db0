"""Turn stored specimen reports into the HL7 ORU^R01 the LIS receives.

The decision travels with every result as an NTE under its OBX (the "validé électroniquement"
marking, GBUI V-3/VI): a held result must never look validated to the LIS. Further NTEs give
the previous result the delta check compared with (shown to the reviewer), and the origin of a
point-of-care result (device and location, GBUI XIII). A correction goes out with OBX-11 "C".
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from drivers.models import Result, SpecimenReport
from middleware.config.settings import LisSettings
from middleware.lis.transcoding import lis_test_code
from protocols.hl7 import MessageHeader, ObservationOut, OrderOut, PatientOut, build_oru_r01
from protocols.hl7.outbound import build_oul_r22

__all__ = ["build_results_message", "decision_note"]

# ASTM R-9 result status -> HL7 OBX-11. W ("warning, to be verified", Pentra XLR) must not
# reach the LIS as final; unknown codes are reported final, the decision note says held anyway.
_OBX_STATUS = {"F": "F", "P": "P", "C": "C", "X": "X", "W": "P", "I": "I", "R": "F", "V": "F"}


def build_results_message(
    lis: LisSettings,
    control_id: str,
    reports: tuple[SpecimenReport, ...],
    decisions: tuple[tuple[str, tuple[str, ...]], ...],
    created_at: datetime | None = None,
) -> bytes:
    """One ORU^R01 for the patient reports of one analyser message (QC reports stay home)."""
    header = MessageHeader(
        sending_application=lis.sending_application,
        sending_facility=lis.sending_facility,
        receiving_application=lis.receiving_application,
        receiving_facility=lis.receiving_facility,
        control_id=control_id,
        created_at=created_at or datetime.now(UTC),
        accept_ack_type="AL" if lis.ack_mode == "enhanced" else "",
        application_ack_type="NE" if lis.ack_mode == "enhanced" else "",
    )
    orders: dict[str, list[OrderOut]] = {}
    patient_of: dict[str, SpecimenReport] = {}
    decision_iter = iter(decisions)
    for report in reports:
        report_decisions = [next(decision_iter) for _ in report.results]
        if report.is_qc or not report.results:
            continue
        observations = tuple(
            _observation(index, result, decision, reasons, report.extras, lis.transcoding)
            for index, (result, (decision, reasons)) in enumerate(
                zip(report.results, report_decisions, strict=True), 1
            )
        )
        key = report.patient.patient_id
        patient_of.setdefault(key, report)
        orders.setdefault(key, []).append(
            OrderOut(
                specimen_id=report.specimen_id,
                test_code=report.ordered_tests[0] if report.ordered_tests else "",
                test_text="",
                observed_at=report.collected_at,
                results=observations,
                # OUL^R22 requires SPM-4. Analysers rarely say; "UNK" is our marker for "not
                # stated" (unverified against the LIS's table 0487: map it there if needed).
                specimen_type=report.extras.get("specimen_type", "")
                or ("UNK" if lis.message_type == "OUL^R22" else ""),
            )
        )
    people = [
        PatientOut(
            patient_id=report.patient.patient_id,
            family_name=report.patient.family_name,
            given_name=report.patient.given_name,
            birth_date=report.patient.birth_date,
            sex=report.patient.sex,
            orders=tuple(orders[key]),
        )
        # A specimen without a patient id goes first: HL7 2.5.1 lets its PATIENT group be left
        # out there, whereas further down its results would read as the previous patient's.
        for key, report in sorted(patient_of.items(), key=lambda entry: entry[0] != "")
    ]
    build = build_oul_r22 if lis.message_type == "OUL^R22" else build_oru_r01
    return build(header, people)


def decision_note(decision: str, reasons: tuple[str, ...], decided_by: Mapping[str, str]) -> str:
    """The decision as the LIS reads it in an NTE under the result. An auto-validated result
    names the responsible biologist and the rule set (GBUI V-3: "validé électroniquement");
    a held one lists every reason, for the biologist who will validate it."""
    if decision == "autovalidated":
        biologist = decided_by.get("biologist") or "?"
        ruleset = decided_by.get("ruleset") or "?"
        return f"validé électroniquement — biologiste responsable {biologist} — règles {ruleset}"
    listed = f" ({', '.join(reasons)})" if reasons else ""
    if decision == "validated":  # signed by a biologist in the console (GBUI V-3)
        return f"validé par le biologiste {decided_by.get('biologist') or '?'}{listed}"
    if decision == "rejected":
        return f"rejeté par le biologiste {decided_by.get('biologist') or '?'}{listed}"
    return f"labgate: {decision}{listed}"


def _observation(
    index: int,
    result: Result,
    decision: str,
    reasons: tuple[str, ...],
    decided_by: Mapping[str, str],
    transcoding: Mapping[str, str],
) -> ObservationOut:
    notes = [*result.comments, decision_note(decision, reasons, decided_by)]
    if result.previous is not None:
        # What the delta check compared with, for the biologist who reviews the result.
        previous = result.previous
        notes.append(
            f"valeur antérieure: {previous.value} {previous.unit}".rstrip()
            + f" ({previous.at.astimezone(UTC):%Y-%m-%d %H:%M} UTC)"
        )
    if decided_by.get("origin") == "poc":
        where = decided_by.get("location") or "?"
        notes.append(f"origine: biologie délocalisée — {result.instrument} ({where})")
    # A correction ("annule et remplace", GBUI VI): labgate changed the decision after the
    # result left, e.g. a late QC rejection; the LIS replaces what it had.
    status = "C" if decided_by.get("correction") else _OBX_STATUS.get(result.status, "F")
    if decision == "rejected":
        status = "X"  # OBX-11 X: no result can be given (the biologist refused it)
    return ObservationOut(
        set_id=index,
        # The LIS's own code after the driver's transcoding table (GBUI XIV), if it has one.
        code=lis_test_code(result, transcoding),
        text=result.test_name or result.test_code,
        coding_system="L",
        value=result.value,
        value_type="NM" if result.numeric is not None and result.comparator is None else "ST",
        units=result.units,
        reference_range=result.reference_range,
        abnormal_flags=result.normalized_flags or result.flags,
        status=status,
        observed_at=result.measured_at,
        producer=result.instrument,
        notes=tuple(notes),
    )
