"""The driver for analysers that follow LIS2-A2 closely: test code in the universal test ID,
value, units, range, flags and status where the standard puts them.

Record layout it relies on (field numbers as in the standard, 1 = record type):
P-3 practice patient id (P-4 laboratory id as fallback), P-6 name last^first, P-8 birth date,
P-9 sex; O-3 specimen id (first component; O-4 instrument specimen id as fallback), O-5 tests,
O-12 action code (Q = quality control); R-3 universal test id, R-4 value, R-5 units, R-6 range,
R-7 abnormal flags, R-9 status, R-13 completion (R-12 start) time; C records attach to the
record before them.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime

from drivers.base import DriverError
from drivers.models import Patient, Result, SpecimenReport
from protocols import astm

__all__ = ["GenericAstmDriver", "parse_astm_date", "parse_astm_datetime", "universal_test_code"]


def parse_astm_datetime(text: str) -> datetime | None:
    """YYYYMMDD[HH[MM[SS]]] as the analyser's local time (made aware with the gateway's zone);
    None when empty or not a date (dummy dates such as 18991230 are kept as dates)."""
    digits = text.strip()
    formats = {14: "%Y%m%d%H%M%S", 12: "%Y%m%d%H%M", 10: "%Y%m%d%H", 8: "%Y%m%d"}
    fmt = formats.get(len(digits))
    if fmt is None or not digits.isdigit():
        return None
    try:
        return datetime.strptime(digits, fmt).astimezone()
    except (ValueError, OverflowError, OSError):
        return None


def parse_astm_date(text: str) -> date | None:
    """The date part of an ASTM date/time field."""
    moment = parse_astm_datetime(text[:8])
    return moment.date() if moment is not None else None


def universal_test_code(record: astm.Record, field: int) -> str:
    """The local test code of a universal test ID: nominally the 4th component (`^^^GLU`), but
    vendors shift it (`^^^^WBC^1` Sysmex) — take the first non-empty component from the 4th on,
    then anything non-empty at all."""
    repeats = record.repeats(field)
    if not repeats:
        return ""
    components = [c.strip() for c in repeats[0]]
    for component in components[3:]:
        if component:
            return component
    for component in components:
        if component:
            return component
    return ""


def _flags(record: astm.Record, field: int) -> tuple[str, ...]:
    """Abnormal flags: one per repeat (`L\\A`-style repeats exist), padding trimmed."""
    return tuple(rep[0].strip() for rep in record.repeats(field) if rep and rep[0].strip())


class GenericAstmDriver:
    """LIS2-A2 as written; the fallback for analysers without a dedicated driver."""

    name = "generic-astm"

    def to_reports(self, message: astm.Message, instrument: str) -> list[SpecimenReport]:
        reports: list[SpecimenReport] = []
        patient = Patient()
        order: astm.Record | None = None
        results: list[Result] = []
        last_result_comments: list[str] | None = None
        header_qc = bool(message.records) and message.records[0].field(12).strip() == "Q"

        def close_order() -> None:
            nonlocal results, order
            if order is None:
                return
            if last_result_comments and results:
                results[-1] = _with_comments(results[-1], last_result_comments)
            specimen = _specimen_id(order)
            is_qc = header_qc or order.field(12).strip() == "Q"
            reports.append(
                SpecimenReport(
                    specimen_id=specimen,
                    patient=patient,
                    results=tuple(_with_specimen(r, specimen, is_qc) for r in results),
                    ordered_tests=tuple(
                        code for code in (_component_code(rep) for rep in order.repeats(5)) if code
                    ),
                    collected_at=parse_astm_datetime(order.field(8)),
                    is_qc=is_qc,
                )
            )
            order, results = None, []

        for record in message.records:
            kind = record.type
            if kind == "P":
                close_order()
                last_result_comments = None
                patient = Patient(
                    patient_id=(record.field(3) or record.field(4)).strip(),
                    family_name=record.component(6, 1).strip(),
                    given_name=record.component(6, 2).strip(),
                    birth_date=parse_astm_date(record.field(8)),
                    sex=record.field(9).strip(),
                )
            elif kind == "O":
                close_order()
                last_result_comments = None
                order = record
            elif kind == "R":
                if order is None:
                    raise DriverError(f"R record {record.field(2)!r} comes before any O record")
                if last_result_comments and results:
                    results[-1] = _with_comments(results[-1], last_result_comments)
                last_result_comments = []
                results.append(_result(record, instrument))
            elif kind == "C" and last_result_comments is not None:
                text = " ".join(part for rep in record.repeats(4) for part in rep if part.strip())
                if text.strip():
                    last_result_comments.append(text.strip())
        close_order()
        return reports


def _component_code(components: tuple[str, ...]) -> str:
    for component in components[3:]:
        if component.strip():
            return component.strip()
    return ""


def _specimen_id(order: astm.Record) -> str:
    # O-3 (specimen id) is the standard place; Afinion leaves it empty and uses O-4, and Sysmex
    # right-aligns the number in a later component of O-4 (`^^                    27^M`).
    for field in (3, 4):
        components = [c.strip() for rep in order.repeats(field) for c in rep]
        specimen = next((c for c in components if c), "")
        if specimen:
            return specimen
    raise DriverError(f"O record {order.field(2)!r} carries no specimen id in O-3 or O-4")


def _result(record: astm.Record, instrument: str) -> Result:
    code = universal_test_code(record, 3)
    if not code:
        raise DriverError(f"R record {record.field(2)!r} has no test code in R-3")
    # Some analysers put the value in a later component (`^24.7`) or pad trailing ones
    # (`2.837141^^^^`): the value is the first non-empty component.
    components = record.repeats(4)[0] if record.repeats(4) else ()
    raw_value = next((c.strip() for c in components if c.strip()), "")
    parsed = astm.parse_value(raw_value)
    try:
        sequence = int(record.field(2).strip() or 0)
    except ValueError:
        sequence = 0
    return Result(
        specimen_id="",
        test_code=code,
        value=raw_value,
        numeric=parsed.number,
        comparator=parsed.comparator,
        units=record.field(5).strip(),
        reference_range=record.field(6).strip(),
        flags=_flags(record, 7),
        status=record.field(9).strip() or "F",
        # R-13 completed, else R-12 started (the LIS2-A2 example gives only the start).
        measured_at=parse_astm_datetime(record.field(13)) or parse_astm_datetime(record.field(12)),
        instrument=instrument,
        sequence=sequence,
    )


def _with_comments(result: Result, comments: list[str]) -> Result:
    return replace(result, comments=(*result.comments, *comments))


def _with_specimen(result: Result, specimen_id: str, is_qc: bool) -> Result:
    return replace(result, specimen_id=specimen_id, is_qc=is_qc)
