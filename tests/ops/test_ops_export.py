"""`labgate export` on both backends: the records of a period, as CSV and JSON lines, and the
export itself audited."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import free_port
from ops_store_data import DAY, config, populate

from middleware.cli import main
from middleware.store import Store


@pytest.fixture
def lab(store_url: str, tmp_path: Path) -> Path:
    store = Store.open(store_url)
    populate(store)
    store.close()
    return config(tmp_path / "lab.yaml", store_url, api_port=free_port(), lis_port=free_port())


def _export(lab: Path, *args: str) -> int:
    return main(["export", *args, "--config", str(lab), "--author", "inspector"])


def test_results_of_a_period_as_csv(lab: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    since, until = DAY.isoformat(), (DAY + timedelta(days=1)).isoformat()
    assert _export(lab, "results", "--since", since, "--until", until, "--output", str(out)) == 0
    with out.open(newline="", encoding="utf-8") as data:
        rows = list(csv.DictReader(data))
    # Message 3 came the next day: outside [since, until).
    assert [(r["message_id"], r["patient_id"], r["value"]) for r in rows] == [
        ("m1", "P1", "5.1"),
        ("m2", "P2", "5.2"),
    ]
    first, second = rows
    assert (first["decision"], json.loads(first["reasons"])) == ("held", ["no_rule"])
    assert (second["decision"], json.loads(second["reasons"])) == ("autovalidated", [])
    assert datetime.fromisoformat(first["received_at"]) == DAY + timedelta(hours=8)
    assert first["delivered_at"] and not second["delivered_at"]
    assert json.loads(first["flags"]) == ["N"] and first["is_qc"] == "False"
    assert "DUPONT" not in out.read_text()  # patient ids, never names


def test_trace_merges_messages_events_and_transmissions_in_time_order(
    lab: Path, tmp_path: Path
) -> None:
    out = tmp_path / "trace.jsonl"
    until = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    args = ["trace", "--since", DAY.isoformat(), "--until", until, "--format", "jsonl"]
    assert _export(lab, *args, "--raw", "--output", str(out)) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["direction"], r["kind"], r["message_id"]) for r in records] == [
        ("in", "message", "m1"),
        ("out", "transmission:results", "m1"),
        ("in", "message", "m2"),
        ("in", "message", "m3"),
        ("in", "frame_rejected", None),
    ]
    sent = records[1]
    assert (sent["connection"], sent["attempt"], sent["ack_code"]) == ("lis", 1, "AA")
    assert sent["raw"].startswith("MSH|") and "MSA|AA|C1" in sent["raw_in"]
    assert records[0]["raw"].startswith("\x021H|") and records[0]["size"] == len(
        records[0]["raw"].encode("latin-1")
    )
    assert records[4]["detail"] == "checksum"
    times = [datetime.fromisoformat(r["at"]) for r in records]
    assert times == sorted(times)


def test_audit_export_and_the_audit_of_exports(
    lab: Path, tmp_path: Path, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    until = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert _export(lab, "results", "--since", DAY.isoformat(), "--until", until) == 0
    printed = capsys.readouterr()
    assert printed.out.startswith("received_at,message_id,")  # the data, on standard output
    assert "3 results row(s) exported" in printed.err
    out = tmp_path / "audit.jsonl"
    args = ["audit", "--since", DAY.isoformat(), "--until", until, "--format", "jsonl"]
    assert _export(lab, *args, "--output", str(out)) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["actor"], r["action"]) for r in records] == [
        ("Dr Martin", "device_blocked"),
        ("inspector", "data_exported"),
    ]
    assert records[1]["detail"]["rows"] == 3 and records[1]["subject"] == "results"
    engine = sa.create_engine(store_url)
    with engine.connect() as connection:
        actions = connection.execute(sa.text("select action from audit order by id")).scalars()
        assert list(actions)[-1] == "data_exported"  # the audit export is audited too
    engine.dispose()


def test_a_period_backwards_is_refused(lab: Path) -> None:
    args = ["results", "--since", "2025-03-11", "--until", "2025-03-10"]
    assert _export(lab, *args) == 2
