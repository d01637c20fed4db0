"""The string-assembled ORU^R01 / OUL^R22 builders against the python-hl7 ones they replaced.

`_reference_oru_r01` and `_reference_oul_r22` below are the builders as they were before the
speed-up (python-hl7 containers, `protocols.hl7._er7.field/segment/render`), kept here as the
oracle: for every input that both accept, the new builders must produce the very same bytes,
because an outbox row already sent keeps its bytes and a rebuild after a restart must match
them. The one intended difference, the PID left out for a patient without an id, is tested
apart, with hl7apy's strict 2.5.1 validation.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import hl7 as v2
from protocols.errors import LocalProtocolError
from protocols.hl7 import _er7 as er7
from protocols.hl7._er7 import format_date, format_ts

# --- the oracle: the builders as they were, on python-hl7 containers ----------------------

_field = er7.field
_EMPTY = er7.field()


def _ts(moment: datetime | None) -> Any:
    return _field(format_ts(moment) if moment is not None else "")


def _msh(header: v2.MessageHeader, kind: str, trigger: str, structure: str) -> Any:
    return er7.msh_segment(
        _field(header.sending_application),
        _field(header.sending_facility),
        _field(header.receiving_application),
        _field(header.receiving_facility),
        _ts(header.created_at),
        _EMPTY,
        _field(kind, trigger, structure),
        _field(header.control_id),
        _field(header.processing_id),
        _field("2.5.1"),
        _EMPTY,
        _EMPTY,
        _field(header.accept_ack_type),
        _field(header.application_ack_type),
        _EMPTY,
        _field("UNICODE UTF-8"),
    )


def _pid(set_id: int, patient: v2.PatientOut) -> Any:
    birth = format_date(patient.birth_date) if patient.birth_date is not None else ""
    return er7.segment(
        "PID",
        _field(str(set_id)),
        _EMPTY,
        _field(patient.patient_id),
        _EMPTY,
        _field(patient.family_name, patient.given_name),
        _EMPTY,
        _field(birth),
        _field(patient.sex),
    )


def _obx(obs: v2.ObservationOut) -> list[Any]:
    segments = [
        er7.segment(
            "OBX",
            _field(str(obs.set_id)),
            _field(obs.effective_value_type),
            _field(obs.code, obs.text, obs.coding_system),
            _EMPTY,
            _field(obs.value),
            _field(obs.units),
            _field(obs.reference_range),
            er7.repeated(obs.abnormal_flags),
            _EMPTY,
            _EMPTY,
            _field(obs.status),
            _EMPTY,
            _EMPTY,
            _ts(obs.observed_at),
            _EMPTY,
            _EMPTY,
            _EMPTY,
            _field(obs.producer),
        )
    ]
    for number, note in enumerate(obs.notes, start=1):
        segments.append(er7.segment("NTE", _field(str(number)), _field("L"), _field(note)))
    return segments


def _reference_oru_r01(header: v2.MessageHeader, patients: Sequence[v2.PatientOut]) -> bytes:
    if not patients:
        raise LocalProtocolError("an ORU^R01 needs at least one patient result")
    segments = [_msh(header, "ORU", "R01", "ORU_R01")]
    order_number = 0
    for patient_number, patient in enumerate(patients, start=1):
        segments.append(_pid(patient_number, patient))
        for order in patient.orders:
            order_number += 1
            test = (
                (order.test_code, order.test_text, "L")
                if order.test_code
                else ("", order.test_text)
            )
            segments.append(er7.segment("ORC", _field("RE"), _field(order.specimen_id)))
            segments.append(
                er7.segment(
                    "OBR",
                    _field(str(order_number)),
                    _field(order.specimen_id),
                    _EMPTY,
                    _field(*test),
                    _EMPTY,
                    _EMPTY,
                    _ts(order.observed_at),
                )
            )
            for obs in order.results:
                segments.extend(_obx(obs))
            if order.specimen_type:
                segments.append(
                    er7.segment(
                        "SPM",
                        _field("1"),
                        _field(order.specimen_id),
                        _EMPTY,
                        _field(order.specimen_type),
                    )
                )
    return er7.render(segments).encode("utf-8")


def _reference_oul_r22(
    header: v2.MessageHeader, patients: Sequence[v2.PatientOut], specimen_role: str = ""
) -> bytes:
    if len(patients) != 1:
        raise LocalProtocolError("an OUL^R22 carries exactly one patient")
    patient = patients[0]
    segments = [_msh(header, "OUL", "R22", "OUL_R22")]
    if specimen_role in ("", "P"):
        segments.append(_pid(1, patient))
    groups: dict[str, list[v2.OrderOut]] = {}
    for order in patient.orders:
        groups.setdefault(order.specimen_id, []).append(order)
    order_number = 0
    for specimen_number, (specimen_id, orders) in enumerate(groups.items(), start=1):
        specimen_type = next((o.specimen_type for o in orders if o.specimen_type), "")
        if not specimen_type:
            raise LocalProtocolError(f"specimen {specimen_id!r}: SPM-4 is required")
        segments.append(
            er7.segment(
                "SPM",
                _field(str(specimen_number)),
                _field(specimen_id),
                _EMPTY,
                _field(specimen_type),
                *(_EMPTY,) * 6,
                _field(specimen_role),
            )
        )
        for order in orders:
            order_number += 1
            test = (order.test_code, order.test_text, "L") if order.test_code else ("",)
            segments.append(
                er7.segment(
                    "OBR",
                    _field(str(order_number)),
                    _field(specimen_id),
                    _EMPTY,
                    _field(*test),
                    _EMPTY,
                    _EMPTY,
                    _ts(order.observed_at),
                )
            )
            segments.append(er7.segment("ORC", _field("RE"), _field(specimen_id)))
            for obs in order.results:
                segments.extend(_obx(obs))
    return er7.render(segments).encode("utf-8")


# --- inputs: every delimiter, escape look-alikes, control characters, non-ASCII, empties -----

PIECES = st.sampled_from(
    ["|", "^", "~", "\\", "&", "\\F\\", "\\X0D\\", "\r", "\n", "\x0b", "\x1c", " ", "é", "µ", "語"]
)
TEXT = st.lists(st.one_of(st.characters(exclude_categories=["Cs"]), PIECES), max_size=12).map(
    "".join
)
NONEMPTY = TEXT.filter(bool)
ZONES = st.sampled_from(
    [UTC, timezone(timedelta(hours=2)), timezone(-timedelta(hours=9, minutes=30))]
)
MOMENTS = st.builds(
    lambda moment, zone: moment.replace(tzinfo=zone),
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1)),
    ZONES,
)
MAYBE_MOMENT = st.none() | MOMENTS

OBSERVATIONS = st.builds(
    lambda set_id, **kw: v2.ObservationOut(set_id=set_id, **kw),
    st.integers(min_value=1, max_value=9999),
    code=NONEMPTY,
    text=TEXT,
    coding_system=TEXT,
    value=TEXT | st.sampled_from(["5.4", "-.5", "12", ""]),
    value_type=st.sampled_from(["", "NM", "ST", "CWE"]),
    units=TEXT,
    reference_range=TEXT,
    abnormal_flags=st.lists(TEXT, max_size=3).map(tuple),
    status=NONEMPTY,
    observed_at=MAYBE_MOMENT,
    producer=TEXT,
    notes=st.lists(TEXT, max_size=3).map(tuple),
)


def orders(specimen_ids: st.SearchStrategy[str], types: st.SearchStrategy[str]) -> Any:
    return st.builds(
        v2.OrderOut,
        specimen_id=specimen_ids,
        test_code=TEXT,
        test_text=TEXT,
        observed_at=MAYBE_MOMENT,
        results=st.lists(OBSERVATIONS, max_size=4).map(tuple),
        specimen_type=types,
    )


def patients(ids: st.SearchStrategy[str], order_list: Any) -> Any:
    return st.builds(
        v2.PatientOut,
        patient_id=ids,
        family_name=TEXT,
        given_name=TEXT,
        birth_date=st.none() | st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 1, 1)),
        sex=TEXT,
        orders=order_list,
    )


HEADERS = st.builds(
    v2.MessageHeader,
    sending_application=TEXT,
    sending_facility=TEXT,
    receiving_application=TEXT,
    receiving_facility=TEXT,
    control_id=NONEMPTY,
    created_at=MOMENTS,
    processing_id=st.sampled_from(["P", "T", "D", "P^T"]),
    accept_ack_type=st.sampled_from(["", "AL", "NE"]),
    application_ack_type=st.sampled_from(["", "NE", "ER"]),
)

ORU_PATIENTS = st.lists(
    patients(NONEMPTY, st.lists(orders(NONEMPTY, TEXT), min_size=1, max_size=3).map(tuple)),
    min_size=1,
    max_size=3,
)
# A few specimen ids, so that orders share a specimen (one SPM group for several OBRs).
OUL_PATIENT = patients(
    NONEMPTY,
    st.lists(
        orders(st.sampled_from(["S1", "S|2", "Ü3"]), st.sampled_from(["SER", "", "B^L"])),
        min_size=1,
        max_size=4,
    ).map(tuple),
)


@given(HEADERS, ORU_PATIENTS)
def test_oru_r01_bytes_equal_the_python_hl7_builder(
    header: v2.MessageHeader, people: list[v2.PatientOut]
) -> None:
    assert v2.build_oru_r01(header, people) == _reference_oru_r01(header, people)


@given(HEADERS, OUL_PATIENT, st.sampled_from(["", "P", "Q", "C", "a|b"]))
def test_oul_r22_bytes_equal_the_python_hl7_builder(
    header: v2.MessageHeader, patient: v2.PatientOut, role: str
) -> None:
    try:
        expected = _reference_oul_r22(header, [patient], role)
    except LocalProtocolError:
        with pytest.raises(LocalProtocolError, match="SPM-4"):
            v2.build_oul_r22(header, [patient], specimen_role=role)
        return
    assert v2.build_oul_r22(header, [patient], specimen_role=role) == expected


def test_builders_still_refuse_what_they_refused() -> None:
    header = v2.MessageHeader("A", "B", "C", "D", "C1", datetime(2025, 1, 1, tzinfo=UTC))
    with pytest.raises(LocalProtocolError, match="at least one patient"):
        v2.build_oru_r01(header, [])
    order = v2.OrderOut("S1", "T", "", None, (), "SER")
    patient = v2.PatientOut("P1", "", "", None, "", (order,))
    with pytest.raises(LocalProtocolError, match="exactly one patient"):
        v2.build_oul_r22(header, [patient, patient])
    with pytest.raises(LocalProtocolError, match="exactly one patient"):
        v2.build_oul_r22(header, [])


# --- a patient without an id: no PID (PATIENT is optional in ORU_R01 and OUL_R22) ---------

HEADER = v2.MessageHeader("LABGATE", "LAB", "LIS", "LAB", "C1", datetime(2025, 1, 1, tzinfo=UTC))


def _order(specimen_id: str) -> v2.OrderOut:
    glucose = v2.ObservationOut(set_id=1, code="GLU", value="5.1", units="mmol/L")
    return v2.OrderOut(specimen_id, "GLU", "Glucose", None, (glucose,), "SER")


ANONYMOUS = v2.PatientOut("", "DUPONT", "Marie", date(1980, 1, 2), "F", (_order("S1"),))
KNOWN = v2.PatientOut("P1", "MARTIN", "Luc", None, "M", (_order("S2"),))


def _names(message: bytes) -> list[str]:
    return [segment[:3] for segment in message.decode().split("\r") if segment]


def test_oru_r01_without_patient_id_has_no_pid_and_is_strictly_valid() -> None:
    message = v2.build_oru_r01(HEADER, [ANONYMOUS])
    assert _names(message) == ["MSH", "ORC", "OBR", "OBX", "SPM"]
    v2.validate_message(message)  # hl7apy, strict 2.5.1: refused an empty PID-3 before
    [observation] = v2.parse_oru(message).observations
    assert (observation.patient_id, observation.specimen_id) == ("", "S1")


def test_oul_r22_without_patient_id_has_no_pid_and_is_strictly_valid() -> None:
    message = v2.build_oul_r22(HEADER, [ANONYMOUS])
    assert _names(message) == ["MSH", "SPM", "OBR", "ORC", "OBX"]
    v2.validate_message(message)
    assert b"DUPONT" not in message  # a name without an id identifies nobody: not sent


def test_patientless_results_lead_an_oru_r01_and_the_next_pid_counts_from_one() -> None:
    message = v2.build_oru_r01(HEADER, [ANONYMOUS, KNOWN])
    assert _names(message) == ["MSH", "ORC", "OBR", "OBX", "SPM", "PID", "ORC", "OBR", "OBX", "SPM"]
    assert b"\rPID|1||P1||MARTIN^Luc|||M\r" in message
    v2.validate_message(message)
    observations = v2.parse_oru(message).observations
    assert [(o.patient_id, o.specimen_id) for o in observations] == [("", "S1"), ("P1", "S2")]


def test_a_later_patient_without_id_keeps_its_pid_so_its_results_are_not_filed_under_another() -> (
    None
):
    # Without a PID here the receiver would read S1 as P1's; an empty PID-3 is refused by a
    # strict LIS (AE, kept for a person) rather than misfiled.
    message = v2.build_oru_r01(HEADER, [KNOWN, ANONYMOUS])
    assert _names(message).count("PID") == 2
    assert b"\rPID|2||||DUPONT^Marie||19800102|F\r" in message
    observations = v2.parse_oru(message).observations
    assert [(o.patient_id, o.specimen_id) for o in observations] == [("P1", "S2"), ("", "S1")]
