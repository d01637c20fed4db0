"""Alarms: the pure conditions at their thresholds, and episodes in the store (both backends) —
raised once per episode, cleared when the condition ends, acknowledged with an audit row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.alarms.conditions import AlarmThresholds, LinkView, Snapshot, conditions
from middleware.store import Store

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
LIMITS = AlarmThresholds(
    link_lost_after=timedelta(seconds=60),
    silence={"chem-1": timedelta(minutes=30)},
    error_rate=5,
    backlog_messages=100,
    backlog_age=timedelta(minutes=15),
)


def _link(**overrides: object) -> LinkView:
    values: dict[str, object] = {
        "name": "lis",
        "state": "connected",
        "outgoing": True,
        "down_since": None,
        "last_message_at": NOW,
        "started_at": NOW - timedelta(hours=1),
    }
    values.update(overrides)
    return LinkView(**values)  # type: ignore[arg-type]


def test_an_outgoing_link_down_longer_than_the_limit_is_lost() -> None:
    at_limit = _link(state="disconnected", down_since=NOW - timedelta(seconds=60))
    assert conditions(Snapshot(NOW, [at_limit]), LIMITS) == {}  # strictly longer
    beyond = _link(state="disconnected", down_since=NOW - timedelta(seconds=61))
    assert set(conditions(Snapshot(NOW, [beyond]), LIMITS)) == {("link_lost", "lis")}
    # An analyser that connects to labgate comes and goes: no link_lost for it.
    incoming = _link(
        name="chem-9", state="listening", outgoing=False, down_since=NOW - timedelta(hours=2)
    )
    assert conditions(Snapshot(NOW, [incoming]), LIMITS) == {}


def test_silence_only_for_instruments_with_an_expected_interval() -> None:
    quiet = _link(name="chem-1", outgoing=False, last_message_at=NOW - timedelta(minutes=31))
    other = _link(name="chem-2", outgoing=False, last_message_at=NOW - timedelta(days=2))
    found = conditions(Snapshot(NOW, [quiet, other]), LIMITS)
    assert set(found) == {("silence", "chem-1")}


def test_error_rate_backlog_rejections_quarantine_blocks_and_qc() -> None:
    snapshot = Snapshot(
        NOW,
        [_link(errors_in_window=5), _link(name="chem-2", outgoing=False, errors_in_window=4)],
        outbox={("lis", "pending"): 3, ("lis", "rejected"): 2, ("lis", "quarantined"): 1},
        oldest_pending={"lis": NOW - timedelta(minutes=16)},
        blocked_devices=frozenset({"poc-1"}),
        qc_rejected=frozenset({("chem-1", "GLU")}),
        qc_overdue=frozenset({("chem-1", "K")}),
    )
    assert set(conditions(snapshot, LIMITS)) == {
        ("error_rate", "lis"),
        ("backlog", "lis"),
        ("lis_rejected", "lis"),
        ("quarantined", "lis"),
        ("device_blocked", "poc-1"),
        ("qc_failed", "chem-1:GLU"),
        ("qc_overdue", "chem-1:K"),
    }
    small = Snapshot(NOW, outbox={("lis", "pending"): 99}, oldest_pending={"lis": NOW})
    assert conditions(small, LIMITS) == {}
    deep = Snapshot(NOW, outbox={("lis", "pending"): 100}, oldest_pending={"lis": NOW})
    assert set(conditions(deep, LIMITS)) == {("backlog", "lis")}


def test_a_reagent_lot_without_qc_is_an_alarm_per_lot_whose_subject_names_the_device() -> None:
    snapshot = Snapshot(
        NOW, qc_new_lot=frozenset({("glu-1", "GLU", "STRIP-B"), ("glu-1", "GLU", "STRIP-C")})
    )
    found = conditions(snapshot, LIMITS)
    detail = "reagent lot {} in use without an accepted QC run"
    assert found == {
        ("qc_new_lot", "glu-1:GLU:STRIP-B"): detail.format("STRIP-B"),
        ("qc_new_lot", "glu-1:GLU:STRIP-C"): detail.format("STRIP-C"),
    }
    # `auto_block` reads the device before the first colon.
    assert {subject.split(":", 1)[0] for _, subject in found} == {"glu-1"}


def test_auto_block_takes_the_new_qc_alarm_kinds_and_refuses_others() -> None:
    from pydantic import ValidationError

    from middleware.config.settings import AlarmSettings

    settings = AlarmSettings(auto_block={"glu-1": ("qc_overdue", "qc_new_lot")})
    assert settings.auto_block["glu-1"] == ("qc_overdue", "qc_new_lot")
    with pytest.raises(ValidationError, match="qc_new_lot"):
        AlarmSettings(auto_block={"glu-1": ("qc_newlot",)})  # type: ignore[arg-type]


@given(
    down=st.integers(min_value=0, max_value=200),
    errors=st.integers(min_value=0, max_value=20),
    depth=st.integers(min_value=0, max_value=300),
)
def test_no_alarm_below_every_threshold(down: int, errors: int, depth: int) -> None:
    snapshot = Snapshot(
        NOW,
        [
            _link(
                state="disconnected",
                down_since=NOW - timedelta(seconds=down),
                errors_in_window=errors,
            )
        ],
        outbox={("lis", "pending"): depth},
        oldest_pending={"lis": NOW},
    )
    kinds = {kind for kind, _ in conditions(snapshot, LIMITS)}
    assert ("link_lost" in kinds) == (down > 60)
    assert ("error_rate" in kinds) == (errors >= 5)
    assert ("backlog" in kinds) == (depth >= 100)


@pytest.fixture
def store(store_url: str):  # type: ignore[no-untyped-def]
    store = Store.open(store_url)
    yield store
    store.close()


def test_one_episode_per_condition_until_it_clears(store: Store) -> None:
    first = store.raise_alarm("link_lost", "lis", "down", NOW)
    again = store.raise_alarm("link_lost", "lis", "still down", NOW + timedelta(seconds=5))
    assert first.new and not again.new and again.alarm_id == first.alarm_id
    (episode,) = store.alarms(open_only=True)
    assert episode["occurrences"] == 2 and episode["detail"] == "still down"
    assert store.open_alarm_keys() == {("link_lost", "lis")}
    assert store.clear_alarm("link_lost", "lis", NOW + timedelta(minutes=1))
    assert not store.clear_alarm("link_lost", "lis", NOW + timedelta(minutes=1))
    assert store.alarms(open_only=True) == []
    later = store.raise_alarm("link_lost", "lis", "down again", NOW + timedelta(minutes=5))
    assert later.new and later.alarm_id != first.alarm_id
    assert len(store.alarms()) == 2


def test_acknowledging_is_audited(store: Store) -> None:
    raised = store.raise_alarm("qc_failed", "chem-1:GLU", "rejected", NOW)
    store.acknowledge_alarm(raised.alarm_id, "Mme Tech", "rerun started", NOW)
    (episode,) = store.alarms()
    assert (episode["acknowledged_by"], episode["comment"]) == ("Mme Tech", "rerun started")
    assert episode["cleared_at"] is None  # seen is not over: the condition decides that
    audit = store.audit_trail()[0]
    assert audit["action"] == "alarm_acknowledged" and audit["actor"] == "Mme Tech"
    with pytest.raises(KeyError):
        store.acknowledge_alarm(999, "Mme Tech", "?", NOW)


def test_a_file_the_hprim_lis_did_not_take_is_an_alarm() -> None:
    snapshot = Snapshot(NOW, unconsumed={"lis": NOW - timedelta(minutes=20)})
    assert set(conditions(snapshot, LIMITS)) == {("lis_unconsumed", "lis")}
    assert conditions(Snapshot(NOW), LIMITS) == {}
