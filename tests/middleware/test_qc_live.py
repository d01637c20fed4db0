"""The live QC monitor over a real store (both backends): patient results counted only once
stored, the results of one message counting for one another, and a restart that finds the count
and the reagent lots again (what QC covered, what is still new)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from drivers.models import Patient, Result, SpecimenReport
from middleware.pipeline import Pipeline
from middleware.sessions.deciding import LiveValidation
from middleware.store import Store
from middleware.validation.qc_monitor import NewLot
from middleware.validation.qc_plan import QcPlan

TARGET = {"instrument": "glu-1", "test": "GLU", "lot": "C1", "level": "1", "mean": 5.5, "sd": 0.2}
FREQUENCY = {"instrument": "glu-1", "test": "GLU", "results": 3, "new_lot_qc": True}
PLAN = QcPlan.model_validate({"targets": [TARGET], "intervals": [FREQUENCY]})
# Recent enough for the start-up's look back (a week).
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def glucose(specimen: str, minutes: float, reagent: str, *, qc: bool = False) -> SpecimenReport:
    result = Result(
        specimen_id=specimen,
        test_code="GLU",
        value="5.5",
        numeric=Decimal("5.5"),
        units="mmol/L",
        instrument="glu-1",
        sequence=1,
        measured_at=at(minutes),
        is_qc=qc,
        qc_level="1" if qc else "",
        qc_lot="C1" if qc else "",
        reagent_lot=reagent,
    )
    patient = Patient() if qc else Patient(f"P-{specimen}")
    return SpecimenReport(specimen, patient, (result,), is_qc=qc)


async def stored(validation: LiveValidation, *reports: SpecimenReport) -> list[tuple[str, ...]]:
    """One message through the daemon's path: decided, committed, then shown to the monitor.
    Returns each result's reasons."""
    message_id = uuid.uuid4().hex
    received = datetime.now(UTC)
    incoming = await validation.message(
        message_id=message_id,
        connection="glu-1",
        protocol="poct1a",
        received_at=received,
        raw=b"<OBS.R01/>",
        reports=reports,
        lis="lis",
        content_hash=message_id,
        origin="poc",
    )
    await validation.store.run(validation.store.save_message, incoming)
    await validation.qc_stored(incoming.reports, received, "lis", message_id)
    return [reasons for _, reasons in incoming.decisions]


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    store = Store.open(store_url)
    yield store
    store.close()


async def test_a_restart_finds_the_count_and_the_reagent_lots_again(store: Store) -> None:
    live = LiveValidation(store, Pipeline(), PLAN)
    await live.start()
    assert await stored(live, glucose("QC-1", 0, "STRIP-A", qc=True)) == [()]
    decided = await stored(live, glucose("S-1", 1, "STRIP-A"), glucose("S-2", 2, "STRIP-A"))
    assert decided == [("no_rule",), ("no_rule",)]  # QC lets them through; no rule set here
    # A new box of strips: held, and remembered as a lot in use without QC.
    assert await stored(live, glucose("S-3", 3, "STRIP-B")) == [("qc_new_lot", "no_rule")]
    # Three since the run: the fourth is overdue (on the old strips, only that).
    assert await stored(live, glucose("S-4", 4, "STRIP-A")) == [("qc_overdue", "no_rule")]
    assert live.qc is not None

    again = LiveValidation(store, Pipeline(), PLAN)
    await again.start()
    assert again.qc is not None
    for minutes, lot in [(5, "STRIP-A"), (5, "STRIP-B"), (5, ""), (3.5, "STRIP-A")]:
        expected = live.qc.reasons_for("glu-1", "GLU", at(minutes), lot)
        assert again.qc.reasons_for("glu-1", "GLU", at(minutes), lot) == expected
    assert again.qc.reasons_for("glu-1", "GLU", at(5), "STRIP-A") == ["qc_overdue"]
    assert again.qc.reasons_for("glu-1", "GLU", at(2.5), "STRIP-A") == []
    assert again.qc.new_lots() == live.qc.new_lots() == [NewLot("glu-1", "GLU", "STRIP-B", at(3))]

    # QC on the new strips, accepted: the lot is covered and the count starts again.
    assert await stored(again, glucose("QC-2", 6, "STRIP-B", qc=True)) == [()]
    assert await stored(again, glucose("S-5", 7, "STRIP-B")) == [("no_rule",)]
    third = LiveValidation(store, Pipeline(), PLAN)
    await third.start()
    assert third.qc is not None and third.qc.new_lots() == []
    assert third.qc.reasons_for("glu-1", "GLU", at(8), "STRIP-B") == []
    assert third.qc.reasons_for("glu-1", "GLU", at(8), "STRIP-C") == ["qc_new_lot"]


async def test_results_of_one_message_count_for_one_another(store: Store) -> None:
    live = LiveValidation(store, Pipeline(), PLAN)
    await live.start()
    await stored(live, glucose("QC-1", 0, "", qc=True))
    reports = [glucose(f"S-{n}", n, "") for n in range(1, 6)]  # five specimens, one message
    assert await stored(live, *reports) == [("no_rule",)] * 3 + [("qc_overdue", "no_rule")] * 2


async def test_a_message_that_was_not_stored_is_not_counted(store: Store) -> None:
    live = LiveValidation(store, Pipeline(), PLAN)
    await live.start()
    await stored(live, glucose("QC-1", 0, "", qc=True))
    for _ in range(5):  # decided, never committed (the store refused, say): the analyser resends
        await live.message(
            message_id=uuid.uuid4().hex,
            connection="glu-1",
            protocol="poct1a",
            received_at=datetime.now(UTC),
            raw=b"<OBS.R01/>",
            reports=[glucose("S-1", 1, "")],
            lis="lis",
            content_hash=None,
        )
    assert await stored(live, glucose("S-1", 1, "")) == [("no_rule",)]
