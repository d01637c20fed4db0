"""The store on a real SQLite file: WAL and full sync, the Alembic schema equals the models,
one transaction per message, outbox ordering and retry bookkeeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from drivers.models import Patient, Result, SpecimenReport
from middleware.store import IncomingMessage, Store, Transmission, migrate
from middleware.store.tables import Base

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def _incoming(number: int, *, qc: bool = False, lis: str = "lis") -> IncomingMessage:
    result = Result(
        specimen_id=f"S{number}",
        test_code="GLU",
        value="5.4",
        numeric=Decimal("5.4"),
        units="mmol/L",
        flags=("N",),
        instrument="chem-1",
        sequence=1,
        is_qc=qc,
        measured_at=NOW,
    )
    report = SpecimenReport(f"S{number}", Patient("P1", "DUPONT", "Marie"), (result,), is_qc=qc)
    return IncomingMessage(
        message_id=f"m{number}",
        connection="chem-1",
        protocol="astm",
        received_at=NOW,
        raw=b"\x021H|\\^&\r\x03AA\r\n",
        reports=(report,),
        decisions=(("", ()) if qc else ("held", ("no_rule",)),),
        lis=lis,
        forward=not qc,
    )


@pytest.fixture
def store(store_url: str):  # type: ignore[no-untyped-def]
    store = Store.open(store_url)
    yield store
    store.close()


def test_sqlite_runs_in_wal_with_full_sync(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'wal.db'}")
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    store.close()


def test_migrations_produce_exactly_the_models(store: Store) -> None:
    assert migrate.current_revision(store.engine) == migrate.head_revision()
    with store.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


def test_message_results_and_outbox_commit_together(store: Store) -> None:
    outbox_id = store.save_message(_incoming(1))
    assert outbox_id is not None
    [item] = store.due("lis", NOW)
    assert item.outbox_id == outbox_id and item.payload is None
    [report] = item.reports
    assert report.patient.family_name == "DUPONT"
    assert report.results[0].numeric == Decimal("5.4")
    assert report.results[0].measured_at == NOW
    assert item.decisions == (("held", ("no_rule",)),)


def test_a_failed_transaction_leaves_nothing_behind(store: Store) -> None:
    store.save_message(_incoming(1))
    with pytest.raises(sa.exc.IntegrityError):
        store.save_message(_incoming(1))  # same message id: the whole second message is refused
    with store.engine.connect() as connection:
        assert connection.execute(sa.text("select count(*) from results")).scalar() == 1
        assert connection.execute(sa.text("select count(*) from outbox")).scalar() == 1


def test_a_group_commit_is_one_transaction_with_one_savepoint_per_message(
    store: Store,
) -> None:
    """A bad message in a batch rolls back to its own savepoint only; the batch commits once."""
    statements: list[str] = []
    if store.engine.dialect.name == "sqlite":

        @sa.event.listens_for(store.engine, "connect")
        def _trace(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            dbapi_connection.set_trace_callback(statements.append)

        store.engine.dispose()  # the next connection is traced
    outcomes = store._save_batch([_incoming(1), _incoming(1), _incoming(2)])
    assert isinstance(outcomes[0], int) and isinstance(outcomes[2], int)
    assert isinstance(outcomes[1], Exception)  # the same message id again: refused alone
    with store.engine.connect() as connection:
        assert connection.execute(sa.text("select count(*) from results")).scalar() == 2
    if statements:
        commits = [s for s in statements if s.split()[0].upper() in {"COMMIT", "END"}]
        assert len(commits) == 1, statements
        assert statements[0].upper().startswith("BEGIN")


def test_a_group_commit_gives_each_message_its_own_outbox_row_and_specimens(
    store: Store,
) -> None:
    """The batch goes in one statement per table: ids must still land on the right rows."""
    from dataclasses import replace

    two = _incoming(2)
    second = replace(
        two.reports[0],
        specimen_id="S2b",
        results=(replace(two.reports[0].results[0], specimen_id="S2b", value="9.9"),),
    )
    two = replace(two, reports=(two.reports[0], second), decisions=two.decisions * 2)
    batch = [_incoming(1, qc=True), two, _incoming(3)]
    outcomes = store._save_batch(batch)
    assert outcomes[0] is None
    assert isinstance(outcomes[1], int) and isinstance(outcomes[2], int)
    [item_two, item_three] = store.due("lis", NOW, limit=10)
    assert (item_two.outbox_id, item_two.message_id) == (outcomes[1], "m2")
    assert (item_three.outbox_id, item_three.message_id) == (outcomes[2], "m3")
    assert [(r.specimen_id, [x.value for x in r.results]) for r in item_two.reports] == [
        ("S2", ["5.4"]),
        ("S2b", ["9.9"]),
    ]
    with store.engine.connect() as connection:
        pairs = connection.execute(
            sa.text(
                "select s.specimen_id, r.specimen_id from results r "
                "join specimens s on s.id = r.specimen_row_id"
            )
        ).all()
    assert pairs and all(a == b for a, b in pairs)


def test_a_group_commit_that_fails_leaves_none_of_its_messages(store: Store) -> None:
    """Not a database refusal but a failure of the batch as such: nothing of it is kept, not
    even the messages before it (each caller is told, none is acknowledged)."""
    broken = _incoming(2)
    object.__setattr__(broken, "decisions", ())  # fewer decisions than results: a bug
    with pytest.raises(Exception):  # noqa: B017 - whatever the bug raises
        store._save_batch([_incoming(1), broken])
    with store.engine.connect() as connection:
        assert connection.execute(sa.text("select count(*) from messages")).scalar() == 0
        assert connection.execute(sa.text("select count(*) from outbox")).scalar() == 0


def test_qc_results_are_stored_but_owe_nothing_to_the_lis(store: Store) -> None:
    assert store.save_message(_incoming(1, qc=True)) is None
    assert store.due("lis", NOW) == []
    assert store.result_counts() == {"chem-1": {"stored": 1, "delivered": 0}}


def _sent(payload: bytes, code: str | None = None, error: str | None = None) -> Transmission:
    return Transmission(
        payload,
        NOW,
        NOW,
        raw_in=b"MSH|ack" if code else None,
        ack_code=code,
        ack_control_id="A1" if code else None,
        error=error,
    )


def test_outbox_is_strictly_ordered_and_a_waiting_head_blocks_the_rest(store: Store) -> None:
    first = store.save_message(_incoming(1))
    second = store.save_message(_incoming(2))
    assert first is not None and second is not None
    store.mark_retry(first, _sent(b"MSH|one", error="no ack"), delay=30)
    assert store.due("lis", NOW, limit=10) == []  # the second does not overtake the first
    assert store.next_attempt_time("lis") == NOW + timedelta(seconds=30)
    item, following = store.due("lis", NOW + timedelta(seconds=31), limit=10)
    assert (item.outbox_id, following.outbox_id) == (first, second)
    assert item.payload == b"MSH|one" and item.attempts == 1  # same bytes on retransmission
    assert item.created_at == NOW  # what a deterministic rebuild would use for MSH-7
    store.mark_retry(first, _sent(b"ignored: the first bytes are kept", error="again"), delay=0)
    [again] = store.due("lis", NOW + timedelta(seconds=31))
    assert again.payload == b"MSH|one" and again.attempts == 2


def test_delivery_marks_results_archives_the_answer_and_frees_the_queue(store: Store) -> None:
    first = store.save_message(_incoming(1))
    assert first is not None
    assert store.mark_delivered(first, _sent(b"MSH|one", "AA")) == 1
    assert store.outbox_depth() == 0
    assert store.result_counts() == {"chem-1": {"stored": 1, "delivered": 1}}
    with store.engine.connect() as connection:
        archived = connection.execute(
            sa.text("select attempt, raw_out, ack_code, raw_in, acked_at from transmissions")
        ).one()
    assert (archived.attempt, archived.raw_out, archived.ack_code) == (1, b"MSH|one", "AA")
    assert archived.raw_in == b"MSH|ack" and archived.acked_at is not None


def test_rejected_message_leaves_the_queue_but_stays_undelivered(store: Store) -> None:
    first = store.save_message(_incoming(1))
    second = store.save_message(_incoming(2))
    assert first is not None
    store.mark_rejected(first, "LIS answered AR", _sent(b"MSH|one", "AR"))
    [item] = store.due("lis", NOW, limit=10)
    assert item.outbox_id == second
    assert store.result_counts()["chem-1"]["delivered"] == 0


def test_each_lis_has_its_own_queue(store: Store) -> None:
    store.save_message(_incoming(1, lis="lis-a"))
    assert store.due("lis-b", NOW) == []
    assert store.outbox_depth("lis-a") == 1 and store.outbox_depth("lis-b") == 0


async def test_database_errors_surface_as_store_unavailable(store: Store) -> None:
    from middleware.store import StoreUnavailable

    await store.run(store.save_message, _incoming(1))
    with pytest.raises(StoreUnavailable):
        await store.run(store.save_message, _incoming(1))


def test_a_resent_message_is_found_by_its_content_within_the_window(store: Store) -> None:
    from dataclasses import replace

    store.save_message(replace(_incoming(1), content_hash="abc"))
    assert store.find_duplicate("chem-1", "abc", NOW - timedelta(hours=1)) == "m1"
    assert store.find_duplicate("chem-1", "abc", NOW + timedelta(seconds=1)) is None  # too old
    assert store.find_duplicate("chem-2", "abc", NOW - timedelta(hours=1)) is None
    assert store.find_duplicate("chem-1", "other", NOW - timedelta(hours=1)) is None


def test_a_rebuilt_resend_is_found_by_its_results(store: Store) -> None:
    """An analyser resending with a new header (other bytes) but the same results."""
    from dataclasses import replace

    first = replace(_incoming(1), content_hash="abc")
    store.save_message(first)
    since = NOW - timedelta(hours=1)
    assert store.find_duplicate("chem-1", "new-bytes", since, first.reports) == "m1"
    (report,) = first.reports
    (result,) = report.results
    for changed in (
        replace(result, value="5.5"),  # another value: a new result
        replace(result, status="C"),  # a correction
        replace(result, measured_at=NOW + timedelta(minutes=1)),  # a rerun
        replace(result, measured_at=None),  # no time: cannot be told from a rerun
    ):
        other = (replace(report, results=(changed,)),)
        assert store.find_duplicate("chem-1", "new-bytes", since, other) is None
    more = (replace(report, results=(result, replace(result, test_code="K"))),)
    assert store.find_duplicate("chem-1", "new-bytes", since, more) is None  # one is new
    assert store.find_duplicate("chem-2", "new-bytes", since, first.reports) is None


def test_the_writer_finds_a_resend_in_the_transaction_that_would_store_it(
    store: Store,
) -> None:
    """With `duplicate_since` the group commit looks for the message a resend repeats (same
    bytes, or the same results under a rebuilt header) and stores nothing of it, while the
    other messages of the batch are stored."""
    from dataclasses import replace

    from middleware.store import Duplicate

    since = NOW - timedelta(hours=1)
    first = replace(_incoming(1), content_hash="abc", duplicate_since=since)
    assert isinstance(store.save_message(first), int)
    same_bytes = replace(first, message_id="m2")
    rebuilt = replace(first, message_id="m3", content_hash="rebuilt-header")
    other_analyser = replace(first, message_id="m4", connection="chem-2")
    unchecked = replace(first, message_id="m5", duplicate_since=None)
    outcomes = store._save_batch([same_bytes, rebuilt, other_analyser, unchecked])
    assert outcomes[:2] == [Duplicate("m1"), Duplicate("m1")]
    assert isinstance(outcomes[2], int) and isinstance(outcomes[3], int)
    with store.engine.connect() as connection:
        stored = connection.execute(sa.text("select message_id from messages order by 1"))
        assert [m for (m,) in stored] == ["m1", "m4", "m5"]
        assert connection.execute(sa.text("select count(*) from outbox")).scalar() == 3


def test_orders_are_found_for_their_analyser_and_sent_once(store: Store) -> None:
    from drivers.models import Order

    anyone = store.add_order(Order("S1", Patient("P1", "DUPONT"), ("GLU", "CREA")))
    chem = store.add_order(Order("S2", Patient("P2"), ("K",)), "chem-1")
    other = store.add_order(Order("S1", Patient("P1"), ("NA",)), "chem-2")
    found = store.orders_for(["S1", "S2"], "chem-1")
    assert [order_id for order_id, _ in found] == [anyone, chem]
    assert found[0][1].tests == ("GLU", "CREA") and found[0][1].patient.family_name == "DUPONT"
    assert [order_id for order_id, _ in store.pending_downloads("chem-1")] == [chem]
    store.mark_orders_sent([chem], NOW)
    assert store.pending_downloads("chem-1") == []
    assert [o["state"] for o in store.list_orders("S2")] == ["sent"]
    assert other not in [order_id for order_id, _ in store.orders_for(["S1"], "chem-1")]


def test_upgrading_a_database_with_results_keeps_them(tmp_path: Path) -> None:
    """A gateway that ran the first schema keeps every row through later migrations."""
    from alembic import command

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    config = migrate.alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.execute(
            sa.text(
                "insert into messages (message_id, connection, protocol, received_at, raw, status)"
                " values ('m1', 'chem-1', 'astm', '2026-01-01', x'02', 'stored')"
            )
        )
        connection.execute(
            sa.text(
                "insert into specimens (message_id, instrument, specimen_id, patient_id,"
                " family_name, given_name, birth_date, sex, is_qc)"
                " values ('m1', 'chem-1', 'S1', 'P1', '', '', '', '', 0)"
            )
        )
        connection.execute(
            sa.text(
                "insert into results (specimen_row_id, message_id, instrument, specimen_id,"
                " sequence, test_code, test_name, value, units, reference_range, flags, status,"
                " comments, is_qc, decision, reasons) values (1, 'm1', 'chem-1', 'S1', 1, 'GLU',"
                " '', '5.1', '', '', '[]', 'F', '[]', 0, 'held', '[\"no_rule\"]')"
            )
        )
    engine.dispose()
    store = Store.open(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        assert migrate.current_revision(store.engine) == migrate.head_revision()
        with store.engine.connect() as connection:
            row = connection.execute(
                sa.text("select value, lis_code, normalized_flags, rerun from results")
            ).one()
        assert (row.value, row.lis_code, row.normalized_flags, row.rerun) == ("5.1", "", "[]", 0)
    finally:
        store.close()


def test_an_order_message_is_applied_whole_and_cancellations_reach_who_had_the_order(
    store: Store,
) -> None:
    from drivers.models import Order

    new = [
        Order("S1", Patient("P1"), ("GLU", "K")),
        Order("S2", Patient("P2"), ("NA",)),
    ]
    assert store.apply_order_message("lis-orders", "o1", b"MSH|1", new, ["chem-1"]) == {"chem-1"}
    assert [o.specimen_id for _, o in store.pending_downloads("chem-1")] == ["S1", "S2"]
    assert len(store.orders_for(["S1"], "other-analyser")) == 1  # the copy kept for queries
    [(s1_id, _), _] = store.pending_downloads("chem-1")
    store.mark_orders_sent([s1_id], NOW)
    cancel = [
        Order("S1", Patient("P1"), ("GLU", "K"), action="C"),
        Order("S2", Patient(), (), action="C"),
    ]
    assert store.apply_order_message("lis-orders", "o2", b"MSH|2", cancel, ["chem-1"]) == {"chem-1"}
    states = {(o["specimen_id"], o["instrument"], o["state"]) for o in store.list_orders()}
    assert ("S2", "chem-1", "cancelled") in states and ("S2", "", "cancelled") in states
    # S1 had been downloaded: a cancel order goes to that analyser; the query copy is withdrawn.
    [(_, cancel_order)] = store.pending_downloads("chem-1")
    assert (cancel_order.specimen_id, cancel_order.action) == ("S1", "C")
    assert ("S1", "", "cancelled") in states
