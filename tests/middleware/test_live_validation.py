"""The daemon's live validation follows the store's active rule-set version."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from drivers.models import Patient, Result, SpecimenReport
from middleware.activation import activate_text
from middleware.pipeline import Pipeline
from middleware.sessions.deciding import LiveValidation
from middleware.store import Store

NOW = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)

RULES = """\
name: glucose-only
version: "1"
responsible_biologist: Dr T
enabled: true
tests:
  GLU:
    unit: mmol/L
    autoverify_range: {low: 3.0, high: HIGH}
cases:
  - name: a normal glucose
    result: {test_code: GLU, value: "4.2", unit: mmol/L}
    expect: {decision: autovalidated}
"""


def _glucose(value: str) -> SpecimenReport:
    result = Result(
        specimen_id="S1",
        test_code="GLU",
        value=value,
        numeric=Decimal(value),
        units="mmol/L",
        flags=("N",),
        instrument="chem-1",
        measured_at=NOW,
    )
    return SpecimenReport("S1", Patient("P1", "DUPONT", "Marie"), (result,))


async def test_a_text_activated_again_under_the_same_label_decides_from_then_on(
    store_url: str,
) -> None:
    """A rule set activated with the name and version of the active one but another text is
    another rule set: the daemon must decide with it, not with the text it loaded first."""
    store = Store.open(store_url)
    try:
        loose = RULES.replace("HIGH", "15.0")
        assert activate_text(store, loose, "a.yaml", "Dr T", "first", at=NOW).accepted
        live = LiveValidation(store, Pipeline())
        await live.start()
        first = await live.decide([_glucose("5.2")], NOW)
        assert [decision for decision, _ in first.decisions] == ["autovalidated"]

        strict = RULES.replace("HIGH", "5.0")
        assert activate_text(store, strict, "b.yaml", "Dr T", "stricter", at=NOW).accepted
        assert await live.reload()
        second = await live.decide([_glucose("5.2")], NOW)
        assert [decision for decision, _ in second.decisions] == ["held"]
    finally:
        store.close()
