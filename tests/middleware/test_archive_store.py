"""The transmission archive and a person's actions on the outbox, on both storage backends:
what `labgate trace` finds, resend and release with their audit rows, and the purge that drops
old bytes but keeps who received what and when (GBUI VII-2-3)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from drivers.models import Patient, Result, SpecimenReport
from middleware.store import IncomingMessage, Store, Transmission
from middleware.store.archive import TraceQuery
from middleware.store.outbox_admin import OutboxActionRefused

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def store(store_url: str):  # type: ignore[no-untyped-def]
    store = Store.open(store_url)
    yield store
    store.close()


def _save(store: Store, number: int, patient: str, decision: str = "held") -> int:
    result = Result(
        f"S{number}", "GLU", "5.4", numeric=Decimal("5.4"), units="mmol/L",
        instrument="chem-1", sequence=1, measured_at=NOW,
    )  # fmt: skip
    outbox_id = store.save_message(
        IncomingMessage(
            message_id=f"m{number}",
            connection="chem-1",
            protocol="astm",
            received_at=NOW + timedelta(minutes=number),
            raw=f"raw-{number}".encode(),
            reports=(SpecimenReport(f"S{number}", Patient(patient), (result,)),),
            decisions=((decision, ("device_blocked",) if decision == "quarantined" else ()),),
            lis="lis",
        )
    )
    assert outbox_id is not None
    return outbox_id


def _answered(code: str, error: str | None = None) -> Transmission:
    return Transmission(b"MSH|out", NOW, NOW + timedelta(seconds=1), b"MSH|ack", code, "LGX", error)


def test_trace_by_patient_specimen_and_control_id_tells_the_whole_story(store: Store) -> None:
    delivered = _save(store, 1, "PAT-1")
    _save(store, 2, "PAT-2")
    store.mark_retry(delivered, Transmission(b"MSH|out", NOW, NOW, error="no answer"), 0.0)
    store.mark_delivered(delivered, _answered("AA"))
    (story,) = store.trace(TraceQuery(patient_id="PAT-1"))
    assert story["message_id"] == "m1" and story["specimens"][0]["specimen_id"] == "S1"
    (sending,) = story["to_lis"]
    assert sending["state"] == "delivered"
    assert [(a["attempt"], a["ack_code"], a["error"]) for a in sending["attempts"]] == [
        (1, None, "no answer"),
        (2, "AA", None),
    ]
    assert "raw" not in story and "raw_out" not in sending["attempts"][0]
    by_control = store.trace(TraceQuery(control_id=sending["control_id"], raw=True))
    assert [s["message_id"] for s in by_control] == ["m1"]
    assert by_control[0]["raw"] == "raw-1"
    assert by_control[0]["to_lis"][0]["attempts"][1]["raw_in"] == "MSH|ack"
    assert [s["message_id"] for s in store.trace(TraceQuery(specimen_id="S2"))] == ["m2"]
    window = TraceQuery(since=NOW + timedelta(minutes=2), until=NOW + timedelta(minutes=3))
    assert [s["message_id"] for s in store.trace(window)] == ["m2"]
    assert store.trace(TraceQuery(patient_id="nobody")) == []


def test_resend_a_rejected_message_keeps_its_control_id(store: Store) -> None:
    rejected = _save(store, 1, "PAT-1")
    store.mark_rejected(rejected, "LIS answered AE", _answered("AE"))
    assert store.due("lis", NOW + timedelta(hours=1), 10) == []
    going = store.resend(rejected, "Mme Tech", "LIS mapping fixed", NOW)
    assert going == rejected
    (item,) = store.due("lis", NOW + timedelta(hours=1), 10)
    assert item.outbox_id == rejected and item.payload == b"MSH|out"  # same bytes again
    assert store.audit_trail()[0]["action"] == "outbox_resend"
    with pytest.raises(OutboxActionRefused):
        store.resend(rejected, "Mme Tech", "twice", NOW)  # pending now


def test_resend_a_delivered_message_queues_a_new_sending(store: Store) -> None:
    delivered = _save(store, 1, "PAT-1")
    store.mark_delivered(delivered, _answered("AA"))
    going = store.resend(delivered, "Mme Tech", "LIS lost it", NOW)
    assert going != delivered
    (item,) = store.due("lis", NOW + timedelta(hours=1), 10)
    assert item.outbox_id == going and item.payload is None and item.message_id == "m1"


def test_release_sends_a_quarantined_message_held(store: Store) -> None:
    quarantined = _save(store, 1, "PAT-1", decision="quarantined")
    assert store.outbox_list("quarantined")[0]["outbox_id"] == quarantined
    assert store.due("lis", NOW + timedelta(hours=1), 10) == []
    store.release(quarantined, "Dr Durand", "device checked", NOW)
    (item,) = store.due("lis", NOW + timedelta(hours=1), 10)
    assert item.decisions == (("held", ("device_blocked",)),)  # never auto-validated
    assert store.audit_trail()[0]["action"] == "outbox_release"
    with pytest.raises(OutboxActionRefused):
        store.release(quarantined, "Dr Durand", "again", NOW)
    with pytest.raises(OutboxActionRefused):
        store.release(999, "Dr Durand", "none", NOW)


def test_purge_drops_old_settled_bytes_and_keeps_the_summary(store: Store) -> None:
    settled = _save(store, 1, "PAT-1")
    store.mark_delivered(settled, _answered("AA"))
    _save(store, 2, "PAT-2")  # still owed to the LIS: its bytes must stay
    assert store.purge_raw_bytes(NOW + timedelta(days=1), "admin") == 1
    (old,) = store.trace(TraceQuery(patient_id="PAT-1", raw=True))
    assert old["raw"] == ""
    attempt = old["to_lis"][0]["attempts"][0]
    assert attempt["raw_out"] == "" and attempt["raw_in"] is None
    assert (attempt["ack_code"], attempt["ack_control_id"]) == ("AA", "LGX")  # who, when, what
    assert attempt["acked_at"] is not None
    (kept,) = store.trace(TraceQuery(patient_id="PAT-2", raw=True))
    assert kept["raw"] == "raw-2"
    assert store.audit_trail()[0]["action"] == "archive_bytes_purged"
    assert store.purge_raw_bytes(NOW + timedelta(days=1), "admin") == 0
