"""The lab's common models: what every driver produces, whatever the analyser's protocol.

They live here, below `middleware`, because drivers build them and drivers may not import the
daemon. They are plain frozen dataclasses; pydantic is used only at the edges (config, web API).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

__all__ = ["Order", "Patient", "PreviousResult", "Query", "Result", "SpecimenReport"]


@dataclass(frozen=True, slots=True)
class Patient:
    """The patient as the analyser (or the LIS, through the analyser's order) identified them."""

    patient_id: str = ""
    family_name: str = ""
    given_name: str = ""
    birth_date: date | None = None
    sex: str = ""


@dataclass(frozen=True, slots=True)
class PreviousResult:
    """The patient's previous result for the same test (from another specimen), as the delta
    check compared with it: value and unit as written, measurement time."""

    value: str
    unit: str
    at: datetime


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
    # The LIS's code for this test after the driver's transcoding table (GBUI XIV); "" = same as
    # test_code. `flags` stay as the analyser sent them; `normalized_flags` use one vocabulary
    # (L H LL HH < > N A) so rules and the LIS need not know every vendor's dialect.
    lis_code: str = ""
    normalized_flags: tuple[str, ...] = ()
    # QC results: the control material's level and lot as the analyser identified them.
    qc_level: str = ""
    qc_lot: str = ""
    # The lot of the reagent the test was run with (test strips, cartridge, gel card), patient
    # and QC results alike, when the analyser says it: not the control material's lot above.
    # The QC monitor asks for an accepted QC run on each new one (QcPlan `new_lot_qc`).
    reagent_lot: str = ""
    # How the analyser diluted the specimen for this result, as it wrote it ("" = not said;
    # Sysmex "1" = neat), and whether it reports a rerun of the test on the same specimen:
    # auto-validation carries both with the result (AUTOVERIFICATION.md §9.5).
    dilution: str = ""
    rerun: bool = False
    # Set by the decision pipeline, never by drivers: the previous result the delta check used,
    # which travels with this one to the reviewer and the LIS (validation issue, step 5).
    previous: PreviousResult | None = None


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


@dataclass(frozen=True, slots=True)
class Order:
    """Tests the LIS asked for on one specimen, ready to be downloaded to an analyser.

    `tests` hold LIS codes; the driver transcodes them to the analyser's codes. `action` is the
    E1394 O-12 action code: N new, A add, C cancel."""

    specimen_id: str
    patient: Patient
    tests: tuple[str, ...]
    priority: str = "R"
    collected_at: datetime | None = None
    action: str = "N"


@dataclass(frozen=True, slots=True)
class Query:
    """An analyser asking which tests to run on specimens (an E1394 Q record)."""

    specimen_ids: tuple[str, ...]
    tests: tuple[str, ...] = ()  # analyser codes asked about; () or ("ALL",) = everything
    sequence: int = 1
