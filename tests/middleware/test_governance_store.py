"""People's decisions in the store (real SQLite file): rule-set activation with change records,
rollback, switches, blocked devices, the audit trail, and the QC re-hold of results already
decided — each checked by reading back what was committed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from drivers.models import Patient, PreviousResult, Result, SpecimenReport
from middleware.activation import activate_text
from middleware.config.loader import ConfigError
from middleware.store import IncomingMessage, Store, Transmission

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = (ROOT / "config" / "rules" / "example.yaml").read_text(encoding="utf-8")
NOW = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


@pytest.fixture
def store(store_url: str):  # type: ignore[no-untyped-def]
    store = Store.open(store_url)
    yield store
    store.close()


def _incoming(
    number: int,
    at: datetime,
    decision: str = "autovalidated",
    test: str = "GLU",
    previous: PreviousResult | None = None,
) -> IncomingMessage:
    result = Result(
        specimen_id=f"S{number}",
        test_code=test,
        value="5.4",
        numeric=Decimal("5.4"),
        units="mmol/L",
        instrument="chem-1",
        sequence=1,
        measured_at=at,
        previous=previous,
    )
    report = SpecimenReport(f"S{number}", Patient(f"P{number}"), (result,))
    return IncomingMessage(
        message_id=f"m{number}",
        connection="chem-1",
        protocol="astm",
        received_at=at,
        raw=b"raw",
        reports=(report,),
        decisions=((decision, () if decision == "autovalidated" else ("critical_value",)),),
        lis="lis",
        origin="poc",
        location="Urgences",
    )


def test_activation_keeps_the_text_makes_it_active_and_records_the_cases(store: Store) -> None:
    outcome = activate_text(store, EXAMPLE, "example.yaml", "Dr Martin", "first rules", at=NOW)
    assert outcome.accepted and outcome.cases_failed == 0 and outcome.cases_passed > 0
    state = store.governance_state()
    assert state.active is not None and state.active.text == EXAMPLE
    assert state.active.version_id == outcome.version_id
    (record,) = store.change_records()
    assert record["author"] == "Dr Martin" and record["accepted"] is True
    # GBUI XI-2: expected and obtained results, case by case, are in the record.
    assert set(record["expected"]) == set(record["obtained"]) and len(record["expected"]) > 0
    assert record["expected"] == record["obtained"]
    assert store.audit_trail()[0]["action"] == "ruleset_activated"


def test_a_rule_set_whose_case_fails_is_refused_and_the_refusal_recorded(store: Store) -> None:
    activate_text(store, EXAMPLE, "example.yaml", "Dr Martin", "first", at=NOW)
    # The same rule set claiming a wrong expectation: its case cannot pass.
    broken = EXAMPLE.replace('version: "2025.1"', 'version: "2025.2"', 1)
    broken = broken.replace(
        "expect: {decision: autovalidated}", "expect: {decision: held, reasons: [no_rule]}", 1
    )
    assert broken != EXAMPLE
    outcome = activate_text(store, broken, "broken.yaml", "Dr Martin", "tighter", at=NOW)
    assert not outcome.accepted and outcome.version_id is None
    assert outcome.anomaly is not None and "failed" in outcome.anomaly
    state = store.governance_state()
    assert state.active is not None and state.active.version == "2025.1"  # nothing changed
    refused = store.change_records()[0]
    assert refused["accepted"] is False and refused["anomaly"] == outcome.anomaly
    assert store.audit_trail()[0]["action"] == "ruleset_refused"


def test_a_rule_set_without_cases_cannot_be_activated(store: Store) -> None:
    bare = EXAMPLE.split("\ncases:")[0] + "\n"
    outcome = activate_text(store, bare, "bare.yaml", "Dr Martin", "no cases", at=NOW)
    assert not outcome.accepted and "no embedded test cases" in (outcome.anomaly or "")
    assert store.governance_state().active is None


def test_an_invalid_file_is_refused_with_line_and_field(store: Store) -> None:
    with pytest.raises(ConfigError) as refused:
        activate_text(store, "name: x\nversion: [1\n", "bad.yaml", "Dr Martin", "typo", at=NOW)
    assert "bad.yaml" in str(refused.value)
    assert store.change_records() == []


def test_rollback_activates_an_earlier_version_again(store: Store) -> None:
    first = activate_text(store, EXAMPLE, "a.yaml", "Dr Martin", "v1", at=NOW)
    second_text = EXAMPLE.replace('version: "2025.1"', 'version: "2025.2"', 1)
    second = activate_text(store, second_text, "b.yaml", "Dr Martin", "v2", at=NOW)
    assert second.accepted and second.version_id != first.version_id
    assert store.governance_state().active.version == "2025.2"  # type: ignore[union-attr]
    assert first.version_id is not None
    store.rollback(first.version_id, "Dr Durand", "v2 holds too much", NOW)
    state = store.governance_state()
    assert state.active is not None and state.active.version == "2025.1"
    assert [v.active for v in store.ruleset_versions()] == [True, False]
    assert store.change_records()[0]["action"] == "rollback"
    with pytest.raises(KeyError):
        store.rollback(99, "Dr Durand", "no such", NOW)


def test_reactivating_the_same_text_reuses_its_version(store: Store) -> None:
    first = activate_text(store, EXAMPLE, "a.yaml", "Dr Martin", "v1", at=NOW)
    again = activate_text(store, EXAMPLE, "a.yaml", "Dr Martin", "again", at=NOW)
    assert again.version_id == first.version_id
    assert len(store.ruleset_versions()) == 1 and len(store.change_records()) == 2


def test_switches_and_blocks_are_state_and_audit_and_move_the_stamp(store: Store) -> None:
    start = store.governance_stamp()
    store.set_switch("global", "", False, "admin", "maintenance", NOW)
    store.set_switch("biologist", "Dr A. Martin", False, "admin", "holiday", NOW)
    store.set_device_blocked("poc-3", True, "Dr Durand", "QC drift", NOW)
    state = store.governance_state()
    assert state.stamp > start
    assert not state.autovalidation
    assert state.disabled_biologists == {"Dr A. Martin"}
    assert state.blocked_devices == {"poc-3"}
    store.set_switch("global", "", True, "admin", "done", NOW)
    store.set_device_blocked("poc-3", False, "Dr Durand", "QC fine", NOW)
    state = store.governance_state()
    assert state.autovalidation and state.blocked_devices == frozenset()
    actions = [row["action"] for row in store.audit_trail()]
    assert actions == [
        "device_unblocked",
        "autovalidation_on",
        "device_blocked",
        "autovalidation_off",
        "autovalidation_off",
    ]
    with pytest.raises(ValueError):
        store.set_switch("ward", "x", False, "admin", "?", NOW)


def test_previous_value_and_origin_are_kept_with_the_result(store: Store) -> None:
    previous = PreviousResult("4.9", "mmol/L", NOW - timedelta(days=1))
    store.save_message(_incoming(1, NOW, previous=previous))
    (item,) = store.due("lis", NOW + timedelta(seconds=1), 10)
    (report,) = item.reports
    assert report.results[0].previous == previous
    assert report.extras["origin"] == "poc" and report.extras["location"] == "Urgences"


def test_a_quarantined_message_never_reaches_the_outbox_queue(store: Store) -> None:
    incoming = _incoming(1, NOW)
    quarantined = IncomingMessage(
        **{
            **{f: getattr(incoming, f) for f in incoming.__dataclass_fields__},
            "decisions": (("quarantined", ("device_blocked",)),),
        }
    )
    store.save_message(quarantined)
    assert store.due("lis", NOW + timedelta(hours=1), 10) == []
    assert store.outbox_depth("lis") == 0


def _transmission(payload: bytes = b"MSH|...") -> Transmission:
    return Transmission(payload, NOW, NOW, ack_code="AA", ack_control_id="x")


def test_qc_rehold_holds_results_in_the_bracket_and_corrects_those_already_sent(
    store: Store,
) -> None:
    accepted_run = NOW
    store.save_message(_incoming(1, NOW - timedelta(minutes=5)))  # before the accepted run
    store.save_message(_incoming(2, NOW + timedelta(minutes=5)))  # delivered already
    store.save_message(_incoming(3, NOW + timedelta(minutes=10)))  # still waiting, unbuilt
    store.save_message(_incoming(4, NOW + timedelta(minutes=12), test="K"))  # other test
    store.save_message(_incoming(5, NOW + timedelta(minutes=30)))  # after the rejection
    due = store.due("lis", NOW + timedelta(hours=1), 10)
    store.mark_delivered(due[0].outbox_id, _transmission())
    store.mark_delivered(due[1].outbox_id, _transmission())
    rejected_at = NOW + timedelta(minutes=20)
    rehold = store.rehold_for_qc("chem-1", "GLU", accepted_run, rejected_at, "lis", "1-3s")
    assert (rehold.results, rehold.corrections) == (2, 1)
    pending = store.due("lis", NOW + timedelta(hours=1), 10)
    kinds = {item.message_id: item for item in pending}
    # m3 leaves with its new decision; m2 (delivered) goes again as a correction (OBX-11 C).
    assert set(kinds) == {"m3", "m4", "m5", "m2"}
    correction = kinds["m2"]
    assert correction.reports[0].extras.get("correction") == "1"
    assert correction.decisions == (("held", ("qc_failed",)),)
    assert kinds["m3"].decisions == (("held", ("qc_failed",)),)
    assert kinds["m5"].decisions == (("autovalidated", ()),)
    assert kinds["m4"].decisions == (("autovalidated", ()),)
    assert store.audit_trail()[0]["action"] == "qc_rehold"
    # A second look at the same window changes nothing more.
    again = store.rehold_for_qc("chem-1", "GLU", accepted_run, rejected_at, "lis", "1-3s")
    assert (again.results, again.corrections) == (0, 0)
