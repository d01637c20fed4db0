"""The lab's models from a POCT1-A device's observations (OBS.R01 patients, OBS.R02 QC), and
the operator check the lab asks of point-of-care testing.

POCT1-A says where everything is, so one mapping serves every device (vendor quirks would come
as options when a real device needs them):

- one test event (SVC) is one `SpecimenReport`; its OBS elements are its results;
- the specimen id is the SPC specimen id, else the event's uid, else the device's sequence
  number, else its time: POC devices rarely scan a tube;
- a non-patient event (root OBS.R02, or an SVC role LQC/EQC/CVR/CAL/PRF) is QC, with the
  control material's level and lot (CTC); Sofia sends QC with role OBS, hence the root counts;
- the reagent (strip, cartridge) lot of the event (RGT.lot_number, patient and QC alike) is
  each result's `reagent_lot`: on a QC event it is the lot the control checked, not the
  control's own lot (CTC.lot_number, `qc_lot`);
- timestamps without an offset (the DCA's) are the gateway's local time, as for ASTM;
- the operator who ran the test travels with each result ("opérateur: OP7", GBUI XIII-3:
  "l'identification de l'opérateur autorisé"); an override (SVC status OVR) is said too.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime

from drivers.models import Patient, Result, SpecimenReport
from protocols import astm, poct1a

__all__ = ["operator_refusal", "reports_from_poct1a"]

#: Interpretation codes already in the lab's normalised flag vocabulary (L H LL HH < > N A).
_NORMALISED = frozenset({"L", "H", "LL", "HH", "<", ">", "N", "A"})
#: OBS.status_cd D (discarded) and X (rejected): the device did not produce a usable value.
_NOT_DONE = frozenset({"D", "X"})


def reports_from_poct1a(
    message: poct1a.Observations,
    instrument: str,
    *,
    test_codes: Mapping[str, str] | None = None,
    device_id: str = "",
) -> list[SpecimenReport]:
    """One report per test event, results in message order. `test_codes` maps the device's
    observation ids (LOINC or local) to the LIS's codes (GBUI XIV transcoding)."""
    codes = test_codes or {}
    return [_report(message, service, instrument, codes, device_id) for service in message.services]


def operator_refusal(
    message: poct1a.Observations, certified: Mapping[str, date | None], today: date
) -> str | None:
    """Why `message` must be refused under the operator list `certified` (operator id → last
    day of certification, None = no end), or None when every test event's operator may test.
    A test event's own date counts when it has one, else `today`."""
    for service in message.services:
        operator = service.operator_id
        if not operator:
            return "a test without an operator id (OPR.operator_id), and an operator list is kept"
        if operator not in certified:
            return f"operator {operator} is not on the operator list"
        until = certified[operator]
        when = _aware(service.observed_at).date() if service.observed_at is not None else today
        if until is not None and when > until:
            return f"operator {operator}'s certification ended on {until.isoformat()}"
    return None


def _aware(moment: datetime) -> datetime:
    """A naive device time is the gateway's local time."""
    return moment.astimezone() if moment.tzinfo is None else moment


def _specimen_id(
    message: poct1a.Observations, service: poct1a.Service, instrument: str, device_id: str
) -> str:
    if service.specimen_id:
        return service.specimen_id
    if service.uid:
        return service.uid
    if service.sequence:
        return f"{device_id or instrument}-{service.sequence}"
    if service.observed_at is not None:
        return f"{instrument}-{_aware(service.observed_at):%Y%m%d%H%M%S}"
    return f"{instrument}-{message.header.control_id}"


def _reference_range(text: str) -> str:
    """``[3.9;6.1]`` as the LIS reads a range (``3.9-6.1``, ``>3.9``, ``<6.1``); any other
    text is kept as written."""
    low, high = poct1a.parse_interval(text)
    if low and high:
        return f"{low}-{high}"
    if low:
        return f">{low}"
    if high:
        return f"<{high}"
    return text.strip()


def _birth_date(text: str) -> date | None:
    try:
        return date.fromisoformat(text.strip()[:10]) if text.strip() else None
    except ValueError:
        return None  # a birth date the device wrote oddly is not worth refusing results for


def _report(
    message: poct1a.Observations,
    service: poct1a.Service,
    instrument: str,
    codes: Mapping[str, str],
    device_id: str,
) -> SpecimenReport:
    specimen_id = _specimen_id(message, service, instrument, device_id)
    is_qc = message.non_patient or service.role in poct1a.NON_PATIENT_ROLES
    measured_at = _aware(service.observed_at) if service.observed_at is not None else None
    control = service.control or poct1a.ControlMaterial()
    shared_notes: list[str] = list(service.notes)
    if service.operator_id:
        shared_notes.append(f"opérateur: {service.operator_id}")
    if service.status == "OVR":
        shared_notes.append("résultat forcé par l'opérateur (OVR)")
    results = []
    for sequence, observation in enumerate(service.observations, 1):
        value = observation.value or observation.qualitative_value
        parsed = astm.parse_value(value)
        flag = observation.interpretation
        normalised = "A" if flag == "AA" else flag
        if observation.status in _NOT_DONE:
            status = "X"
        elif service.reason == "EDT":
            status = "C"  # edited on the device after an earlier sending
        else:
            status = "F"
        results.append(
            Result(
                specimen_id=specimen_id,
                test_code=observation.code,
                value=value.strip(),
                test_name=observation.name,
                numeric=parsed.number,
                comparator=parsed.comparator,
                units=observation.unit,
                reference_range=_reference_range(observation.normal_range),
                flags=(flag,) if flag else (),
                status=status,
                measured_at=measured_at,
                instrument=instrument,
                sequence=sequence,
                comments=(*observation.notes, *shared_notes),
                is_qc=is_qc,
                lis_code=codes.get(observation.code, ""),
                normalized_flags=(normalised,) if normalised in _NORMALISED else (),
                qc_level=control.level if is_qc else "",
                qc_lot=control.lot_number if is_qc else "",
                reagent_lot=service.reagent_lot,
            )
        )
    patient = service.patient or poct1a.PatientInfo()
    extras = {
        key: value
        for key, value in (
            ("operator", service.operator_id),
            ("device", device_id),
            ("specimen_type", service.specimen_type),
        )
        if value
    }
    return SpecimenReport(
        specimen_id=specimen_id,
        patient=Patient(
            patient_id=patient.patient_id,
            family_name=patient.family_name,
            given_name=patient.given_name,
            birth_date=_birth_date(patient.birth_date),
            sex=patient.gender,
        ),
        results=tuple(results),
        ordered_tests=(),
        collected_at=measured_at,
        is_qc=is_qc,
        extras=extras,
    )
