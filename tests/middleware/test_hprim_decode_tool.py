"""`labgate hprim decode FILE` (middleware/tools/hprim_decode.py), called in-process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from middleware import cli
from middleware.tools import hprim_decode

DATA = Path(__file__).resolve().parents[1] / "data" / "hprim"
SAMPLES = sorted(DATA.glob("*.hpr"))
HEAD = b"H|~^\\&|F||S||ORU|||R||P|H2.2~C|202405011000"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict[str, Any]], str]:
    status = hprim_decode.main(list(argv))
    captured = capsys.readouterr()
    return status, [json.loads(line) for line in captured.out.splitlines()], captured.err


def write(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "file.hpr"
    path.write_bytes(data)
    return str(path)


def test_the_samples_are_here() -> None:
    assert [p.name for p in SAMPLES] == ["hprim-2.2-results.hpr", "hprim-2.4-embedded-file.hpr"]


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_a_sample_decodes_record_by_record(capsys: pytest.CaptureFixture[str], path: Path) -> None:
    status, lines, err = run(capsys, str(path))
    assert status == 0
    assert all("type" in line for line in lines)
    assert lines[0]["type"] == "H" and lines[0]["seq"] is None and lines[-1]["type"] == "L"
    assert lines[0]["delimiters"] == "|~^\\&" and lines[0]["message_type"] == "ORU"
    data = path.read_bytes()
    for line in lines:
        assert line["message"] == 1
        assert line["fields"][0] == [[line["type"]]]
        assert line["seq"] is None or line["seq"] == line["fields"][1][0][0]
        assert line["raw"].startswith(line["type"])
        # the offset points at the record's first byte; `line` is the file's line there
        assert data[line["offset"] :].startswith(line["raw"][:20].encode("latin-1"))
        assert data[: line["offset"]].count(b"\r") + 1 == line["line"]
    assert f"{path}: 1 of 1 message(s) decoded" in err and "0 error(s), 0 warning(s)" in err


def test_continued_records_and_values(capsys: pytest.CaptureFixture[str]) -> None:
    _, lines, _ = run(capsys, str(DATA / "hprim-2.2-results.hpr"))
    comment = next(line for line in lines if line["continued"])
    assert comment["line"] == 7 and comment["continued"] == 1 and comment["type"] == "C"
    ((text,),) = comment["fields"][3]  # one value: escaped delimiters split nothing
    assert "H 45 | L 12 | I 3 (seuils 50\\100\\20)" in text and text.endswith("specimen_index)")
    assert lines[7]["type"] == "P" and lines[7]["line"] == 9  # after the A| line
    obx = [line for line in lines if line["type"] == "OBX"]
    assert [(o["value_type"], o.get("number")) for o in obx] == [
        ("NM", "5.4"),
        ("NM", "6.3"),
        ("NM", "6.9"),
        ("CE", None),
        ("ST", None),
    ]
    assert obx[3]["fields"][5] == [["NEG", "Négatif", "L"]]


def test_an_embedded_file_is_shown_as_its_text(capsys: pytest.CaptureFixture[str]) -> None:
    _, lines, _ = run(capsys, str(DATA / "hprim-2.4-embedded-file.hpr"))
    fic = next(line for line in lines if line.get("value_type") == "FIC")
    assert fic["continued"] == 2 and fic["file_chars"] == 588 and "number" not in fic
    assert len(fic["fields"][5][0][0]) == 588


def test_sub_components_are_lists(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, lines, _ = run(capsys, write(tmp_path, HEAD + b"\rP|1|ID&SITE~2\rL|1\r"))
    assert lines[1]["fields"][2] == [[["ID", "SITE"], "2"]]
    assert status == 0


def test_several_messages_errors_and_warnings_in_file_order(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = b"junk\r\n" + HEAD + b"\r\nP|1\r\nOBR|1\r\n" + b"H|~^\\&\r\n?|x\r\n"
    status, lines, err = run(capsys, write(tmp_path, data))
    assert status == 1
    assert lines[0] == {
        "error": "line 1: the message must start with an H record: 'junk'",
        "message": 1,
        "offset": 0,
        "line": 1,
    }
    assert [(line.get("type"), line["message"], line["line"]) for line in lines[1:5]] == [
        ("H", 2, 2),
        ("P", 2, 3),
        (None, 2, 4),
        (None, 2, 4),
    ]
    assert [line["warning"] for line in lines[3:5]] == [
        "the OBR record of line 4 has no OBX",
        "no L record at the end: the file may be truncated",
    ]
    assert lines[5]["type"] == "OBR" and lines[5]["offset"] == data.index(b"OBR")
    assert lines[6]["message"] == 3 and lines[6]["line"] == 6
    assert lines[6]["error"].startswith("line 6: not a record: '?|x'")
    assert lines[6]["offset"] == data.index(b"?|x")
    assert "1 of 3 message(s) decoded, 3 record(s), 2 error(s), 2 warning(s)" in err


def test_warnings_alone_exit_0_unless_strict(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path, HEAD + b"\rP|1\rOBR|1\rOBX|1|NM|X||1\r")  # no L
    status, lines, _ = run(capsys, path)
    assert status == 0 and lines[-2]["warning"].startswith("no L record")
    status, _, _ = run(capsys, path, "--strict")
    assert status == 1


def test_encoding_option(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + b"\rP|1|X|||LEFEVRE~H\xe9l\xe8ne\rL|1\r")
    status, lines, _ = run(capsys, path)
    assert status == 0 and lines[1]["fields"][5] == [["LEFEVRE", "Hélène"]]
    status, lines, _ = run(capsys, path, "--encoding", "utf-8")
    assert status == 1 and lines[0]["line"] == 2 and "not valid utf-8" in lines[0]["error"]


def test_lf_line_ends_and_a_byte_order_mark(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = b"\xef\xbb\xbf" + HEAD + b"\nP|1\n\nOBR|1\nOBX|1|NM|X||1\nL|1\n"
    status, lines, _ = run(capsys, write(tmp_path, data))
    assert status == 0
    assert [(line["type"], line["line"], line["offset"]) for line in lines] == [
        ("H", 1, 3),
        ("P", 2, data.index(b"P|1")),
        ("OBR", 4, data.index(b"OBR")),
        ("OBX", 5, data.index(b"OBX")),
        ("L", 6, data.index(b"L|1")),
    ]


@pytest.mark.parametrize("data", [b"", b"\r\n  \r\n"])
def test_a_file_without_messages_is_an_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, data: bytes
) -> None:
    status, lines, _ = run(capsys, write(tmp_path, data))
    assert status == 1
    assert lines == [{"error": "no HPRIM message (H record) found", "offset": 0, "message": None}]


@pytest.mark.parametrize(
    "argv",
    [
        ["/nonexistent/file.hpr"],
        ["."],
        [str(DATA / "hprim-2.2-results.hpr"), "--encoding", "no-such-codec"],
        [],
        ["a", "b"],
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert hprim_decode.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert hprim_decode.main(["--help"]) == 0
    assert "--strict" in capsys.readouterr().out


def test_the_labgate_command_runs_the_tool(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert cli.main(["hprim", "decode", str(DATA / "hprim-2.2-results.hpr")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 17
    path = write(tmp_path, HEAD + b"\rP|1\rL|1\r")
    assert cli.main(["hprim", "decode", path]) == 0
    assert cli.main(["hprim", "decode", path, "--strict"]) == 1
    assert cli.main(["hprim", "decode", path, "--encoding", "utf-8"]) == 0
    assert cli.main(["hprim", "decode", "/nonexistent/file.hpr"]) == 2
