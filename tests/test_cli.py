"""The `labgate` command as a technician uses it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def labgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "middleware", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_check_config_accepts_the_demo() -> None:
    result = labgate("check-config", "config/demo.yaml")
    assert result.returncode == 0
    assert "config/demo.yaml: OK" in result.stdout


def test_check_config_refuses_a_bad_file_with_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    text = (ROOT / "config" / "demo.yaml").read_text().replace("port: 5001", "port: 5001x")
    bad.write_text(text)
    line = next(n for n, row in enumerate(text.splitlines(), 1) if "5001x" in row)
    result = labgate("check-config", str(bad))
    assert result.returncode == 2
    assert f"{bad}:{line}: instruments[0].transport.port:" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_refuses_a_bad_config_before_starting(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("lis:\n  port: 2575\n  colour: blue\n")
    result = labgate("run", "--config", str(bad))
    assert result.returncode == 2
    assert f"{bad}:3: lis.colour:" in result.stderr


def test_status_without_a_daemon_says_so() -> None:
    result = labgate("status", "--url", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert "no daemon answering" in result.stderr


def test_astm_decode_prints_json_lines_and_exit_codes() -> None:
    import json

    good = labgate("astm", "decode", "tests/data/corpus/astm-pentra-xlr-1.astm")
    assert good.returncode == 0, good.stderr
    records = [json.loads(line) for line in good.stdout.splitlines()]
    assert records[0]["type"] == "H" and records[-1]["type"] == "L"
    assert any(r.get("type") == "R" and r["raw"].startswith("R|") for r in records)
    bad = labgate("astm", "decode", "tests/data/corpus/astm-mindray-bs240-1.txt")
    assert bad.returncode == 1
    errors = [json.loads(line) for line in bad.stdout.splitlines() if '"error"' in line]
    assert len(errors) == 27 and all(isinstance(e["offset"], int) for e in errors)
    missing = labgate("astm", "decode", "tests/data/corpus/no-such-file.astm")
    assert missing.returncode == 2


def test_simulate_is_reachable_from_labgate() -> None:
    result = labgate("simulate", "analyser", "--help")
    assert result.returncode == 0
    assert "--drop-acks" in result.stdout and "--replay" in result.stdout


def test_rules_check_and_test_on_the_example(tmp_path: Path) -> None:
    checked = labgate("rules", "check", "config/rules/example.yaml")
    assert checked.returncode == 0 and "chemistry-example" in checked.stdout
    tested = labgate("rules", "test", "config/rules/example.yaml")
    assert tested.returncode == 0, tested.stdout
    assert tested.stdout.strip().endswith("14 passed, 0 failed")
    wrong = tmp_path / "wrong.yaml"
    text = (ROOT / "config" / "rules" / "example.yaml").read_text()
    wrong.write_text(
        text.replace(
            "expect: {decision: held, reasons: [delta_exceeded]}",
            "expect: {decision: autovalidated}",
        )
    )
    failing = labgate("rules", "test", str(wrong))
    assert failing.returncode == 1 and "FAIL glucose rising" in failing.stdout
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace("method: percent", "method: guess"))
    refused = labgate("rules", "check", str(broken))
    assert refused.returncode == 2 and "tests.GLU.delta.method" in refused.stderr


def test_replay_prints_a_decision_per_result_and_compares(tmp_path: Path) -> None:
    import json

    events = tmp_path / "events.jsonl"
    lines = [
        {
            "kind": "result",
            "id": "r1",
            "patient": "P1",
            "specimen": "S1",
            "test": "GLU",
            "value": "5.2",
            "unit": "mmol/L",
            "flags": ["N"],
            "at": "2026-11-20T08:00:00+00:00",
        },
        {
            "kind": "qc",
            "instrument": "chem-1",
            "test": "GLU",
            "level": "1",
            "lot": "L1",
            "value": 5.1,
            "at": "2026-11-20T07:00:00+00:00",
        },
        {
            "kind": "result",
            "id": "r2",
            "patient": "P1",
            "specimen": "S2",
            "test": "GLU",
            "value": "8.0",
            "unit": "mmol/L",
            "flags": ["H"],
            "at": "2026-11-20T20:00:00+00:00",
        },
    ]
    events.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    output = tmp_path / "decisions.jsonl"
    result = labgate(
        "replay",
        "--rules",
        "config/rules/example.yaml",
        "--input",
        str(events),
        "--output",
        str(output),
    )
    assert result.returncode == 0, result.stderr
    decided = [json.loads(line) for line in output.read_text().splitlines()]
    assert decided == [
        {"id": "r1", "decision": "autovalidated", "reasons": []},
        {"id": "r2", "decision": "held", "reasons": ["delta_exceeded"]},
    ]
    same = labgate(
        "replay",
        "--rules",
        "config/rules/example.yaml",
        "--input",
        str(events),
        "--compare",
        "config/rules/example.yaml",
    )
    assert same.returncode == 0 and json.loads(same.stdout)["changed"] == {}
    events.write_text("not json\n")
    bad = labgate("replay", "--rules", "config/rules/example.yaml", "--input", str(events))
    assert bad.returncode == 2 and "line 1" in bad.stderr


def test_replay_with_a_qc_plan_holds_again_and_says_how_many(tmp_path: Path) -> None:
    import json

    def at(hour: int) -> str:
        return f"2026-11-20T{hour:02d}:00:00+00:00"

    control = {"kind": "qc", "instrument": "cobas1", "test": "GLU", "level": 1, "lot": "CC1-2611"}
    result = {"kind": "result", "patient": "P1", "test": "GLU", "unit": "mmol/L"}
    result["instrument"] = "cobas1"
    lines = [
        {**control, "value": 5.5, "at": at(7)},
        {**result, "id": "r1", "specimen": "S1", "value": "5.2", "at": at(8)},
        {**control, "value": 6.1, "at": at(9)},  # +4 SD: 1-3s
        {**result, "id": "r2", "specimen": "S2", "value": "5.3", "at": at(10)},
    ]
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    rules, plan = "config/rules/example.yaml", "config/qc/example.yaml"
    replayed = labgate("replay", "--rules", rules, "--qc", plan, "--input", str(events))
    assert replayed.returncode == 0, replayed.stderr
    assert [json.loads(line) for line in replayed.stdout.splitlines()] == [
        {"id": "r1", "decision": "autovalidated", "reasons": []},
        {"id": "r1", "decision": "held", "reasons": ["qc_failed"], "reheld_by_qc": True},
        {"id": "r2", "decision": "held", "reasons": ["qc_failed"]},
    ]
    assert "2 QC result(s): 2 evaluated, 1 run(s) rejected, 1 result(s) held again" in (
        replayed.stderr
    )
    without = labgate("replay", "--rules", rules, "--input", str(events))
    assert "2 QC result(s): not evaluated without --qc" in without.stderr
    refused = labgate("replay", "--rules", rules, "--qc", rules, "--input", str(events))
    assert refused.returncode == 2
    assert "QC plan refused" in refused.stderr and f"{rules}:7: name:" in refused.stderr


def test_replay_from_the_store_reads_it_without_writing(tmp_path: Path) -> None:
    import hashlib
    import json
    from datetime import UTC, datetime
    from decimal import Decimal

    from drivers.models import Patient, Result, SpecimenReport
    from middleware.store import IncomingMessage, Store

    database = tmp_path / "labgate.db"
    store = Store.open(f"sqlite:///{database}")
    for number, (value, hour) in enumerate([("5.2", 8), ("8.0", 20)], 1):
        measured = datetime(2026, 11, 20, hour, tzinfo=UTC)
        result = Result(
            f"S{number}", "GLU", value, numeric=Decimal(value), units="mmol/L", measured_at=measured
        )
        store.save_message(
            IncomingMessage(
                message_id=f"m{number}",
                connection="chem-1",
                protocol="astm",
                received_at=measured,
                raw=b"raw",
                reports=(SpecimenReport(f"S{number}", Patient("P1"), (result,)),),
                decisions=(("held", ("no_rule",)),),
                lis="lis",
            )
        )
    store.close()
    digest = hashlib.sha256(database.read_bytes()).hexdigest()
    url = f"sqlite:///{database}"
    rules = "config/rules/example.yaml"
    replayed = labgate("replay", "--rules", rules, "--from-store", "--database", url)
    assert replayed.returncode == 0, replayed.stderr
    assert [json.loads(line) for line in replayed.stdout.splitlines()] == [
        {"id": 1, "decision": "autovalidated", "reasons": []},
        {"id": 2, "decision": "held", "reasons": ["delta_exceeded"]},
    ]
    since = labgate(
        "replay", "--rules", rules, "--from-store", "--database", url, "--since", "2026-11-20T12:00"
    )
    assert [json.loads(line)["id"] for line in since.stdout.splitlines()] == [2]
    assert hashlib.sha256(database.read_bytes()).hexdigest() == digest
    missing = labgate(
        "replay", "--rules", rules, "--from-store", "--database", f"sqlite:///{tmp_path}/no.db"
    )
    assert missing.returncode == 2 and "no database at" in missing.stderr
    misplaced = labgate("replay", "--rules", rules, "--input", "x.jsonl", "--since", "2026-01-01")
    assert misplaced.returncode == 2 and "go with --from-store" in misplaced.stderr
