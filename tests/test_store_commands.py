"""The `labgate` commands people run beside the daemon, on a real store named by a real
configuration file: rule-set activation and rollback, switches, trace, outbox actions —
checked through their output, exit codes and what they committed."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from drivers.models import Patient, Result, SpecimenReport
from middleware.cli import main as labgate
from middleware.store import IncomingMessage, Store

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "config" / "rules" / "example.yaml"


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "labgate.yaml"
    path.write_text(
        f"store:\n  url: sqlite:///{tmp_path / 'labgate.db'}\nlis:\n  port: 1\ninstruments: []\n",
        encoding="utf-8",
    )
    return str(path)


def _db(config: str) -> Store:
    return Store.open(f"sqlite:///{Path(config).parent / 'labgate.db'}")


def test_activate_versions_history_and_rollback(
    config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    who = ["--config", config, "--author", "Dr Martin"]
    assert labgate(["rules", "activate", str(RULES), *who, "--change", "first"]) == 0
    assert "activated: chemistry-example 2025.1 as version 1" in capsys.readouterr().out
    second = tmp_path / "v2.yaml"
    second.write_text(
        RULES.read_text(encoding="utf-8").replace('version: "2025.1"', 'version: "2025.2"', 1),
        encoding="utf-8",
    )
    events = tmp_path / "events.jsonl"
    events.write_text(
        json.dumps({"kind": "result", "id": "r1", "patient": "P", "specimen": "S", "test": "GLU",
                    "value": "5.2", "unit": "mmol/L", "at": "2026-12-01T08:00:00+00:00"}) + "\n",
        encoding="utf-8",
    )  # fmt: skip
    code = labgate(
        ["rules", "activate", str(second), *who, "--change", "v2", "--replay", str(events),
         "--probation-days", "30"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "as version 2" in out and "0 of 1 decisions change" in out
    assert labgate(["rules", "versions", "--config", config]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].startswith("     1") and listed[1].startswith("*    2")
    assert labgate(["rules", "rollback", "1", *who, "--reason", "v2 wrong"]) == 0
    assert "active again: chemistry-example 2025.1" in capsys.readouterr().out
    assert labgate(["rules", "rollback", "7", *who, "--reason", "none"]) == 2
    assert labgate(["rules", "history", "--config", config, "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["action"] for r in records] == ["rollback", "activate", "activate"]
    assert records[1]["probation_days"] == 30
    assert records[1]["obtained"]["replay"]["results"] == 1


def test_a_failing_rule_set_is_refused_with_exit_1(
    config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        RULES.read_text(encoding="utf-8").replace(
            "expect: {decision: autovalidated}", "expect: {decision: held, reasons: [no_rule]}", 1
        ),
        encoding="utf-8",
    )
    code = labgate(
        ["rules", "activate", str(broken), "--config", config, "--author", "Dr Martin",
         "--change", "try"]
    )  # fmt: skip
    assert code == 1 and "refused" in capsys.readouterr().err
    store = _db(config)
    try:
        assert store.governance_state().active is None
        assert store.change_records()[0]["accepted"] is False
    finally:
        store.close()


def test_blank_author_or_reason_is_refused(config: str) -> None:
    with pytest.raises(SystemExit) as refused:
        labgate(["autovalidation", "off", "--config", config, "--author", " ", "--reason", "x"])
    assert refused.value.code == 2


def test_trace_and_outbox_actions(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    store = _db(config)
    try:
        result = Result("S1", "GLU", "5.4", numeric=Decimal("5.4"), units="mmol/L",
                        instrument="poc-1", sequence=1)  # fmt: skip
        outbox_id = store.save_message(
            IncomingMessage(
                message_id="m1",
                connection="poc-1",
                protocol="astm",
                received_at=datetime(2026, 12, 2, 9, 0, tzinfo=UTC),
                raw=b"raw",
                reports=(SpecimenReport("S1", Patient("PAT-1"), (result,)),),
                decisions=(("quarantined", ("device_blocked",)),),
                lis="lis",
            )
        )
    finally:
        store.close()
    assert labgate(["trace", "--config", config, "--patient", "PAT-1"]) == 0
    shown = capsys.readouterr().out
    assert "specimen S1  patient PAT-1" in shown and "quarantined (device_blocked)" in shown
    assert labgate(["trace", "--config", config, "--patient", "nobody"]) == 1
    assert labgate(["outbox", "list", "--config", config, "--state", "quarantined"]) == 0
    assert f"{outbox_id:>6}  quarantined" in capsys.readouterr().out
    who = ["--config", config, "--author", "Dr Durand", "--reason", "checked"]
    assert labgate(["outbox", "resend", str(outbox_id), *who]) == 2  # not rejected/delivered
    assert labgate(["outbox", "release", str(outbox_id), *who]) == 0
    assert labgate(["outbox", "list", "--config", config, "--state", "pending"]) == 0
    assert f"{outbox_id:>6}  pending" in capsys.readouterr().out
    assert labgate(["audit", "--config", config, "--json"]) == 0
    audit = json.loads(capsys.readouterr().out)
    assert audit[0]["action"] == "outbox_release" and audit[0]["actor"] == "Dr Durand"
