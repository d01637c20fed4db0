"""The stored history as replay events, from a real SQLite store filled as the daemon fills it;
reading it never writes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from drivers.models import Patient, Result, SpecimenReport
from middleware.store import IncomingMessage, Store
from middleware.store.history import HistoryError, open_read_only, read_history
from middleware.validation.qc_plan import QcPlan
from middleware.validation.replay import replay
from middleware.validation.ruleset import load_ruleset

ROOT = Path(__file__).resolve().parents[3]
T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


def _result(specimen: str, code: str, value: str, minutes: int, **extra: object) -> Result:
    number = value.lstrip("<>")
    return Result(
        specimen_id=specimen,
        test_code=code,
        value=value,
        numeric=Decimal(number) if number.replace(".", "").isdigit() else None,
        comparator=value[0] if value[:1] in "<>" else None,
        units="mmol/L",
        flags=("N",),
        instrument="chem-1",
        measured_at=T0 + timedelta(minutes=minutes),
        **extra,  # type: ignore[arg-type]
    )


def _save(store: Store, number: int, report: SpecimenReport, received_minutes: int = 0) -> None:
    decisions = tuple(("", ()) if r.is_qc else ("held", ("no_rule",)) for r in report.results)
    store.save_message(
        IncomingMessage(
            message_id=f"m{number}",
            connection="chem-1",
            protocol="astm",
            received_at=T0 + timedelta(minutes=received_minutes),
            raw=f"message {number}".encode(),
            reports=(report,),
            decisions=decisions,
            lis="lis",
            forward=not report.is_qc,
        )
    )


@pytest.fixture(name="database")
def _database(store_url: str) -> Iterator[str]:
    """A store on each backend (SQLite file, PostgreSQL server) holding a small history."""
    url = store_url
    store = Store.open(url)
    try:
        qc = tuple(
            _result("QC1", "GLU", value, minutes, is_qc=True, qc_level="1", qc_lot="L1")
            for value, minutes in (("5.0", 0), ("5.9", 50))
        )
        _save(store, 1, SpecimenReport("QC1", Patient(), qc[:1], is_qc=True))
        _save(store, 2, SpecimenReport("S1", Patient("P1"), (_result("S1", "GLU", "5.2", 10),)))
        _save(
            store,
            3,
            SpecimenReport(
                "S2",
                Patient("P1"),
                (_result("S2", "GLU", "8.0", 30), _result("S2", "K", "<1.0", 30)),
            ),
        )
        _save(store, 4, SpecimenReport("QC1", Patient(), qc[1:], is_qc=True))
        # No measurement time: the message's reception stands in for it.
        late = Result("S3", "GLU", "5.1", numeric=Decimal("5.1"), units="mmol/L")
        _save(store, 5, SpecimenReport("S3", Patient("P2"), (late,)), received_minutes=70)
    finally:
        store.close()
    yield url


def _digest(url: str) -> str:
    """The SQLite file's bytes, or for PostgreSQL every table's rows: what a write would change."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        return hashlib.sha256(path.read_bytes()).hexdigest()
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            rows = [
                repr(connection.exec_driver_sql(f"select * from {table} order by 1").all())
                for table in ("messages", "specimens", "results", "outbox", "trace")
            ]
    finally:
        engine.dispose()
    return hashlib.sha256("".join(rows).encode()).hexdigest()


def test_events_come_in_time_order_as_replay_lines(database: str) -> None:
    events = list(read_history(open_read_only(database)))
    assert [(e["kind"], e.get("id"), e["at"][11:16]) for e in events] == [
        ("qc", None, "08:00"),
        ("result", 2, "08:10"),  # ids are the results' row ids (the controls have 1 and 5)
        ("result", 3, "08:30"),
        ("result", 4, "08:30"),
        ("qc", None, "08:50"),
        ("result", 6, "09:10"),
    ]
    assert events[0] == {
        "kind": "qc",
        "instrument": "chem-1",
        "test": "GLU",
        "level": "1",
        "lot": "L1",
        "value": "5.0",
        "at": "2026-11-20T08:00:00+00:00",
    }
    assert events[3] == {
        "kind": "result",
        "id": 4,
        "patient": "P1",
        "specimen": "S2",
        "test": "K",
        "value": "<1.0",
        "numeric": "1.0",
        "comparator": "<",
        "unit": "mmol/L",
        "flags": ["N"],
        "normalized_flags": [],
        "at": "2026-11-20T08:30:00+00:00",
        "instrument": "chem-1",
        "origin": "lab",
        "indices": {},
    }


def test_a_specimens_serum_indices_travel_with_its_replayed_results(store_url: str) -> None:
    """Index results (`validation/indices.py`) come out as the specimen's indices, read as the
    live pipeline reads them: a limit holds the replayed result as it held the live one."""
    store = Store.open(store_url)
    try:
        report = SpecimenReport(
            "S9",
            Patient("P9"),
            (
                _result("S9", "K", "4.2", 5),
                _result("S9", "CREA", "80", 5),
                _result("S9", "HIL-H", "35", 5),
                _result("S9", "hil-l", "++", 5),  # semi-quantitative: cannot be compared
            ),
        )
        _save(store, 9, report)
    finally:
        store.close()
    events = [e for e in read_history(open_read_only(store_url)) if e["kind"] == "result"]
    assert {e["indices"]["h"] for e in events} == {"35"}
    assert {e["indices"]["l"] for e in events} == {"Infinity"}
    rules = load_ruleset(ROOT / "config" / "rules" / "example.yaml")  # K: {h: 20}
    potassium = next(e["id"] for e in events if e["test"] == "K")
    [line] = [line for line in replay(rules, events) if line["id"] == potassium]
    assert line["decision"] == "held" and "specimen_index" in line["reasons"]


def test_since_and_until_select_a_half_open_period(database: str) -> None:
    engine = open_read_only(database)
    events = read_history(engine, T0 + timedelta(minutes=10), T0 + timedelta(minutes=50))
    assert [e.get("id") for e in events] == [2, 3, 4]


def test_the_replay_of_the_store_decides_with_delta_and_qc(database: str) -> None:
    rules = load_ruleset(ROOT / "config" / "rules" / "example.yaml")
    plan = QcPlan.model_validate(
        {
            "targets": [
                {"instrument": "chem-1", "test": "GLU", "lot": "L1", "level": "1"}
                | {"mean": 5, "sd": 0.2}
            ]
        }
    )
    before = _digest(database)
    lines = list(replay(rules, read_history(open_read_only(database)), plan))
    assert lines == [
        {"id": 2, "decision": "autovalidated", "reasons": []},
        {"id": 3, "decision": "held", "reasons": ["delta_exceeded"]},
        {
            "id": 4,
            "decision": "held",
            "reasons": ["outside_reportable_range", "critical_value", "outside_autoverify_range"],
        },
        {"id": 2, "decision": "held", "reasons": ["qc_failed"], "reheld_by_qc": True},
        {
            "id": 3,
            "decision": "held",
            "reasons": ["delta_exceeded", "qc_failed"],
            "reheld_by_qc": True,
        },
        {"id": 6, "decision": "held", "reasons": ["qc_failed"]},
    ]
    assert _digest(database) == before  # nothing written


def test_the_store_cannot_be_written_through_the_history_engine(database: str) -> None:
    engine = open_read_only(database)
    with pytest.raises(Exception, match=r"(?i)read.?only"), engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM results")
    assert len(list(read_history(engine))) == 6


def test_a_missing_or_foreign_database_is_refused(tmp_path: Path) -> None:
    with pytest.raises(HistoryError, match="no database"):
        open_read_only(f"sqlite:///{tmp_path / 'none.db'}")
    with pytest.raises(HistoryError, match="unsupported"):
        open_read_only("mysql://x/y")
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    with pytest.raises(HistoryError, match="cannot read the stored results"):
        list(read_history(open_read_only(f"sqlite:///{empty}")))
