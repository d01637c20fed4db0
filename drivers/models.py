"""The lab's common models: what every driver produces, whatever the analyser's protocol.

They live here, below `middleware`, because drivers build them and drivers may not import the
daemon. They are plain frozen dataclasses; pydantic is used only at the edges (config, web API).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

__all__ = ["Patient", "Result", "SpecimenReport"]


@dataclass(frozen=True, slots=True)
class Patient:
    """The patient as the analyser (or the LIS, through the analyser's order) identified them."""

    patient_id: str = ""
    family_name: str = ""
    given_name: str = ""
    birth_date: date | None = None
    sex: str = ""


@dataclass(frozen=True, slots=True)
class Result:
    """One measured value for one test on one specimen, exactly as the analyser sent it.

    `value` keeps the analyser's text (trimmed of padding only); `numeric` and `comparator` are
    its parsed form when it is a number ("< 1.20" -> "<", 1.20), so nothing is lost when a value
    is not numeric ("-----", "NEG").
    """

    specimen_id: str
    test_code: str
    value: str
    test_name: str = ""
    numeric: Decimal | None = None
    comparator: str | None = None
    units: str = ""
    reference_range: str = ""
    flags: tuple[str, ...] = ()
    status: str = "F"
    measured_at: datetime | None = None
    instrument: str = ""
    sequence: int = 0
    comments: tuple[str, ...] = ()
    is_qc: bool = False


@dataclass(frozen=True, slots=True)
class SpecimenReport:
    """The results of one specimen (one O record and its R records) with its patient."""

    specimen_id: str
    patient: Patient
    results: tuple[Result, ...]
    ordered_tests: tuple[str, ...] = ()
    collected_at: datetime | None = None
    is_qc: bool = False
    extras: dict[str, str] = field(default_factory=dict, compare=False)
