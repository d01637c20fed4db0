"""Deciding a message's results: the pure pipeline, fed with the patient's history from the
store (the one thing the pipeline cannot know by itself)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal

from drivers.models import SpecimenReport
from middleware.pipeline import Decision, Pipeline
from middleware.store import Store
from middleware.validation.delta import Previous

__all__ = ["decide_reports"]


async def decide_reports(
    store: Store, pipeline: Pipeline, reports: Sequence[SpecimenReport]
) -> tuple[Decision, ...]:
    """One (decision, reasons) per result, in report order."""
    windows = pipeline.delta_windows()
    decisions: list[Decision] = []
    for report in reports:
        previous: dict[str, Previous] = {}
        codes = sorted(
            {
                code
                for result in report.results
                if (code := result.lis_code or result.test_code) in windows and not result.is_qc
            }
        )
        if codes and report.patient.patient_id:
            times = [r.measured_at for r in report.results if r.measured_at is not None]
            before = min(times) if times else datetime.now(UTC)
            found = await store.read(
                store.previous_results, report.patient.patient_id, codes, before, report.specimen_id
            )
            previous = {
                code: Previous(Decimal(value), unit, at)
                for code, (value, unit, at, _) in found.items()
            }
        decisions += pipeline.decide_report(report, previous)
    return tuple(decisions)
