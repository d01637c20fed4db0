"""POCT1-A observations to the lab's models, and the operator check."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

from drivers.poct1a import operator_refusal, reports_from_poct1a
from protocols import poct1a

PARIS = timezone(timedelta(hours=2))


def _message(*services: poct1a.Service, non_patient: bool = False) -> poct1a.Observations:
    return poct1a.Observations(poct1a.Header("17"), services, non_patient)


def _glucose(value: str = "6.4", **fields: object) -> poct1a.Service:
    observation = poct1a.Observation(
        "14743-9",
        "LN",
        "Glucose",
        value,
        "mmol/L",
        interpretation="H",
        normal_range="[3.9;6.1]",
        notes=("fasting",),
    )
    defaults: dict[str, object] = {
        "observed_at": datetime(2024, 5, 1, 9, 59, 40, tzinfo=PARIS),
        "patient": poct1a.PatientInfo("P123", "DUPONT", "MARIE", "1960-02-29", "F", "ICU"),
        "operator_id": "OP7",
        "specimen_id": "S-1",
    }
    return poct1a.Service((observation,), **{**defaults, **fields})  # type: ignore[arg-type]


def test_a_patient_test_event_is_one_report() -> None:
    (report,) = reports_from_poct1a(
        _message(_glucose()), "glu-1", test_codes={"14743-9": "GLU"}, device_id="SIM^1"
    )
    assert report.specimen_id == "S-1" and not report.is_qc
    assert report.patient.patient_id == "P123"
    assert report.patient.birth_date == date(1960, 2, 29) and report.patient.sex == "F"
    assert report.extras == {"operator": "OP7", "device": "SIM^1"}
    (result,) = report.results
    assert (result.test_code, result.lis_code, result.test_name) == ("14743-9", "GLU", "Glucose")
    assert (result.value, result.numeric, result.units) == ("6.4", Decimal("6.4"), "mmol/L")
    assert (result.flags, result.normalized_flags) == (("H",), ("H",))
    assert result.reference_range == "3.9-6.1"
    assert result.measured_at == datetime(2024, 5, 1, 7, 59, 40, tzinfo=UTC)
    assert result.instrument == "glu-1" and result.status == "F"
    assert result.comments == ("fasting", "opérateur: OP7")


def test_qc_from_the_root_or_the_role() -> None:
    control = poct1a.ControlMaterial("Control", "QC9", "2025-01-31", "2")
    by_root = _glucose("5.5", patient=None, control=control)
    (report,) = reports_from_poct1a(_message(by_root, non_patient=True), "glu-1")
    (result,) = report.results
    assert report.is_qc and result.is_qc
    assert (result.qc_level, result.qc_lot) == ("2", "QC9")
    by_role = _glucose("5.5", patient=None, control=control, role="LQC")
    assert reports_from_poct1a(_message(by_role), "glu-1")[0].is_qc


def test_specimen_ids_when_the_device_scans_no_tube() -> None:
    naive = datetime(2024, 5, 1, 10, 0, 0)
    cases = [
        (_glucose(specimen_id="", uid="UID-9"), "UID-9"),
        (_glucose(specimen_id="", sequence="412"), "SIM^1-412"),
        (
            _glucose(specimen_id="", observed_at=naive),
            f"glu-1-{naive.astimezone():%Y%m%d%H%M%S}",
        ),
        (_glucose(specimen_id="", observed_at=None), "glu-1-17"),
    ]
    for service, expected in cases:
        (report,) = reports_from_poct1a(_message(service), "glu-1", device_id="SIM^1")
        assert report.specimen_id == expected


def test_status_override_and_odd_values() -> None:
    rejected = _glucose(">33.3", status="OVR", reason="EDT")
    (report,) = reports_from_poct1a(_message(rejected), "glu-1")
    (result,) = report.results
    assert (result.comparator, result.numeric) == (">", Decimal("33.3"))
    assert result.status == "C"  # edited on the device
    assert "résultat forcé par l'opérateur (OVR)" in result.comments
    discarded = poct1a.Service(
        (poct1a.Observation("GLU", qualitative_value="ERR", status="X", interpretation="AA"),),
        patient=poct1a.PatientInfo(birth_date="29/02/1960"),
    )
    (report,) = reports_from_poct1a(_message(discarded), "glu-1")
    (result,) = report.results
    assert (result.value, result.numeric, result.status) == ("ERR", None, "X")
    assert result.normalized_flags == ("A",)
    assert report.patient.birth_date is None  # unreadable: not worth refusing results


def test_operator_refusal() -> None:
    certified = {"OP7": None, "OP8": date(2024, 4, 30)}
    today = date(2024, 5, 1)
    assert operator_refusal(_message(_glucose()), certified, today) is None
    assert operator_refusal(_message(_glucose(operator_id="OP9")), certified, today) == (
        "operator OP9 is not on the operator list"
    )
    assert operator_refusal(_message(_glucose(operator_id="OP8")), certified, today) == (
        "operator OP8's certification ended on 2024-04-30"
    )
    early = _glucose(operator_id="OP8", observed_at=datetime(2024, 4, 30, 23, 0, tzinfo=UTC))
    assert operator_refusal(_message(early), certified, today) is None  # tested in time
    reason = operator_refusal(_message(_glucose(operator_id="")), certified, today)
    assert reason is not None and "without an operator id" in reason
    mixed = _message(_glucose(), _glucose(operator_id="OP9"))
    assert operator_refusal(mixed, certified, today) == "operator OP9 is not on the operator list"


# A glucose meter's QC on a new box of strips, then a patient test on the same strips: the
# control material's lot (CTC) and the strips' lot (RGT) are two different things.
STRIP_QC = (
    b'<?xml version="1.0" encoding="utf-8"?>\n<OBS.R02><HDR><HDR.message_type V="OBS.R02"/>'
    b'<HDR.control_id V="10021"/><HDR.version_id V="POCT1"/>'
    b'<HDR.creation_dttm V="2024-05-01T07:31:02+02:00"/></HDR>\n'
    b' <SVC><SVC.role_cd V="LQC"/><SVC.observation_dttm V="2024-05-01T07:30:40+02:00"/>'
    b'<SVC.status_cd V="NRM"/><SVC.reason_cd V="NEW"/><SVC.sequence_nbr V="412"/>\n'
    b'  <CTC><CTC.name V="GLU CONTROL LOW"/><CTC.lot_number V="GC-L-0412"/>'
    b'<CTC.expiration_date V="2024-11-30"/><CTC.level_cd V="1"/>\n'
    b'   <OBS><OBS.observation_id V="14743-9" SN="LN"/><OBS.value V="2.9" U="mmol/L"/>'
    b'<OBS.method_cd V="M"/><OBS.status_cd V="A"/></OBS></CTC>\n'
    b'  <OPR><OPR.operator_id V="OP7"/></OPR>\n'
    b'  <RGT><RGT.name V="GLU STRIPS"/><RGT.lot_number V="STRIP-2419"/>'
    b'<RGT.expiration_date V="2025-03-31"/></RGT>\n'
    b" </SVC>\n</OBS.R02>"
)
STRIP_PATIENT = (
    b'<?xml version="1.0" encoding="utf-8"?>\n<OBS.R01><HDR><HDR.control_id V="10022"/>'
    b'<HDR.version_id V="POCT1"/></HDR>\n'
    b' <SVC><SVC.role_cd V="OBS"/><SVC.observation_dttm V="2024-05-01T07:42:10+02:00"/>'
    b'<SVC.reason_cd V="NEW"/><SVC.sequence_nbr V="413"/>\n'
    b'  <PT><PT.patient_id V="P123"/>\n'
    b'   <OBS><OBS.observation_id V="14743-9" SN="LN"/><OBS.value V="6.4" U="mmol/L"/>'
    b'<OBS.interpretation_cd V="H"/></OBS></PT>\n'
    b'  <OPR><OPR.operator_id V="OP7"/></OPR>\n'
    b'  <RGT><RGT.lot_number V="STRIP-2419"/><RGT.expiration_date V="2025-03-31"/></RGT>\n'
    b" </SVC>\n</OBS.R01>"
)


def test_the_strip_lot_is_the_reagent_lot_and_the_control_lot_stays_apart() -> None:
    qc_message = poct1a.decode(STRIP_QC)
    patient_message = poct1a.decode(STRIP_PATIENT)
    assert isinstance(qc_message, poct1a.Observations)
    assert isinstance(patient_message, poct1a.Observations)
    codes = {"14743-9": "GLU"}
    ((qc,),) = (r.results for r in reports_from_poct1a(qc_message, "glu-1", test_codes=codes))
    assert qc.is_qc and (qc.qc_level, qc.qc_lot, qc.reagent_lot) == ("1", "GC-L-0412", "STRIP-2419")
    (report,) = reports_from_poct1a(patient_message, "glu-1", test_codes=codes)
    (patient,) = report.results
    assert not patient.is_qc
    assert (patient.qc_lot, patient.reagent_lot) == ("", "STRIP-2419")


def test_no_rgt_no_reagent_lot() -> None:
    (report,) = reports_from_poct1a(_message(_glucose()), "glu-1")
    assert report.results[0].reagent_lot == ""
