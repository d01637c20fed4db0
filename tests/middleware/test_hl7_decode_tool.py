"""`labgate hl7 decode FILE` (middleware/tools/hl7_decode.py), called in-process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from middleware.tools import hl7_decode
from protocols import hl7 as v2

DATA = Path(__file__).resolve().parents[1] / "data" / "hl7"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict[str, Any]], str]:
    status = hl7_decode.main(list(argv))
    captured = capsys.readouterr()
    return status, [json.loads(line) for line in captured.out.splitlines()], captured.err


def test_erba_log_with_text_escapes(capsys: pytest.CaptureFixture[str]) -> None:
    status, lines, err = run(capsys, str(DATA / "hl7-erba-elite580-oru-r01.txt"), "--no-validate")
    assert status == 0
    messages = [line for line in lines if "type" in line]
    assert [m["type"] for m in messages].count("ORU^R01") == 95
    assert [m["type"] for m in messages].count("ACK^R01") == 87
    assert [m["message"] for m in messages] == list(range(1, 183))
    first = messages[0]
    assert first["offset"] == 6  # a blank line, the "[VT]" escape, then MSH
    assert first["control_id"] == "031416ea601f4d8fa02c823f6fa42b8e"
    assert (first["version"], first["charset"], first["findings"]) == ("2.3.1", "UNICODE", [])
    msh, pid = first["segments"][:2]
    assert msh["id"] == "MSH" and msh["fields"][:3] == ["|", "^~\\&", "ELite 580"]
    assert msh["fields"][8] == "ORU^R01"  # fields[n - 1] is MSH-n
    assert pid == {"id": "PID", "fields": ["1"]}
    data = (DATA / "hl7-erba-elite580-oru-r01.txt").read_bytes()
    assert all(data[m["offset"] : m["offset"] + 3] == b"MSH" for m in messages)
    # the log's spliced fragments are reported, not parsed as messages
    assert any("outside any message" in line.get("warning", "") for line in lines)
    assert "182 of 182 message(s)" in err


def test_ghh_sample_with_comments_and_validation(capsys: pytest.CaptureFixture[str]) -> None:
    status, lines, _ = run(capsys, str(DATA / "hl7-ghh-lab-oru-r01.txt"))
    assert status == 0  # findings alone do not fail the run
    [message] = lines
    assert (message["type"], message["control_id"], message["version"]) == (
        "ORU^R01",
        "CNTRL-3456",
        "2.4",
    )
    assert [s["id"] for s in message["segments"]] == ["MSH", "PID", "OBR", "OBX"]
    assert message["findings"] and "strict HL7 validation" in message["findings"][0]


def test_synthetic_fixtures(capsys: pytest.CaptureFixture[str]) -> None:
    status, lines, _ = run(capsys, str(DATA / "hl7-synthetic-law-qbp-q11.txt"), "--no-validate")
    assert status == 0
    assert [line["type"] for line in lines] == ["QBP^Q11", "RSP^K11", "RSP^K11"]
    assert [line["control_id"] for line in lines] == ["Q-0001", "R-0001", "R-0002"]


def test_mllp_framed_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = (DATA / "hl7-synthetic-law-oul-r22-qc.txt").read_bytes()
    payload = b"\r".join(line for line in raw.split(b"\n") if line and not line.startswith(b"#"))
    capture = tmp_path / "capture.bin"
    capture.write_bytes(b"noise" + v2.mllp_frame(payload) + v2.mllp_frame(payload) + b"\r")
    status, lines, _ = run(capsys, str(capture))
    assert status == 0
    assert [line.get("offset") for line in lines] == [0, 6, 6 + len(payload) + 3]
    assert "warning" in lines[0]
    assert [line["type"] for line in lines[1:]] == ["OUL^R22", "OUL^R22"]
    assert all(line["findings"] == [] for line in lines[1:])


def test_unparsable_message_fails_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capture = tmp_path / "bad.hl7"
    capture.write_bytes(
        b"MSH|^~\\&|A||||20240105||ORU^R01|C1|P|2.5\n\n"
        b"MSH|^~\\&|A|||||ORU^R01|C2|P|2.5|||||||UNICODE UTF-8\nPID|1||\xff\n"
    )
    status, lines, _ = run(capsys, str(capture), "--no-validate")
    assert status == 1
    assert lines[0]["control_id"] == "C1"
    assert lines[1]["message"] == 2 and "not valid utf-8" in lines[1]["error"]


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert hl7_decode.main([str(tmp_path / "missing")]) == 2
    assert hl7_decode.main([]) == 2
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"# nothing here\n")
    status, lines, _ = run(capsys, str(empty))
    assert status == 1 and "no HL7 message" in lines[0]["error"]
