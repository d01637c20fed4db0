"""`labgate astm decode FILE` (middleware/tools/astm_decode.py), called in-process.

The expected output of every corpus file but the big Mindray log is kept in
tests/data/corpus/golden/. After a deliberate change of the output, regenerate with::

    for f in tests/data/corpus/astm-*; do case $f in *mindray*) continue;; esac
      .venv/bin/python -m middleware.tools.astm_decode "$f" \\
        > "tests/data/corpus/golden/$(basename "${f%.*}").jsonl"; done

and read the diff before committing it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from middleware.tools import astm_decode
from protocols import astm

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"
GOLDEN = CORPUS / "golden"
FILES = sorted(path.name for path in CORPUS.glob("astm-*"))
CLEAN = [
    "astm-afinion2-1.astm",
    "astm-beckman-dxh-1.txt",
    "astm-cobas-c311-1.astm",
    "astm-lis2a2-spec-example-1.txt",
    "astm-ortho-vision-1.txt",
    "astm-pentra-xlr-1.astm",
    "astm-phadia-prime-1.txt",
    "astm-sysmex-xn550-1.astm",
]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict[str, Any]], str]:
    status = astm_decode.main(list(argv))
    captured = capsys.readouterr()
    return status, [json.loads(line) for line in captured.out.splitlines()], captured.err


def test_the_corpus_is_all_here() -> None:
    assert len(FILES) == 11


@pytest.mark.parametrize("name", [name for name in FILES if "mindray" not in name])
def test_output_matches_the_golden_file(capsys: pytest.CaptureFixture[str], name: str) -> None:
    status, lines, _ = run(capsys, str(CORPUS / name))
    golden = (GOLDEN / name).with_suffix(".jsonl").read_text()
    assert lines == [json.loads(line) for line in golden.splitlines()]
    assert status == (0 if name in CLEAN else 1)


@pytest.mark.parametrize("name", CLEAN)
def test_clean_captures_decode_every_record(capsys: pytest.CaptureFixture[str], name: str) -> None:
    status, lines, err = run(capsys, str(CORPUS / name))
    assert status == 0
    assert all("type" in line for line in lines)
    assert lines[0]["type"] == "H" and lines[0]["seq"] is None and lines[-1]["type"] == "L"
    capture = astm.read_capture((CORPUS / name).read_bytes())
    for line in lines:
        assert line["fields"][0] == [[line["type"]]]
        assert line["raw"].startswith(line["type"])
        assert line["seq"] is None or line["seq"] == line["fields"][1][0][0]
        # the offset points at the record (unframed) or at the frame that holds it
        expected = b"\x02" if capture.kind == "framed" else line["raw"][:1].encode()
        assert capture.data[line["offset"] : line["offset"] + 1] == expected
    assert f"{name}: " in err and " 0 error(s)" in err


def test_mindray_reports_its_27_checksum_errors(capsys: pytest.CaptureFixture[str]) -> None:
    status, lines, err = run(capsys, str(CORPUS / "astm-mindray-bs240-1.txt"))
    assert status == 1
    errors = [line for line in lines if "error" in line]
    assert len(errors) == 27
    assert all(e["error"].startswith("bad checksum") for e in errors)
    capture = astm.read_capture((CORPUS / "astm-mindray-bs240-1.txt").read_bytes())
    for error in errors:
        assert capture.data[error["offset"] : error["offset"] + 1] == b"\x02"
        assert error["line"] == capture.line_of(error["offset"])
    decoded = {line["message"] for line in lines if "type" in line}
    assert len(decoded) == 130
    assert decoded.isdisjoint(e["message"] for e in errors)
    assert "130 of 157 message(s) decoded" in err and "27 error(s)" in err


def test_the_scrambled_access2_log_gives_errors_with_offsets_and_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, lines, _ = run(capsys, str(CORPUS / "astm-access2-1.txt"))
    assert status == 1
    errors = [line for line in lines if "error" in line]
    assert errors and all(isinstance(e["offset"], int) and e["line"] > 1 for e in errors)
    assert any(line.get("type") == "R" for line in lines)


def test_records_without_a_header(capsys: pytest.CaptureFixture[str]) -> None:
    status, lines, _ = run(capsys, str(CORPUS / "astm-ortho-vision-escapes-1.txt"))
    assert status == 1
    assert lines[-1] == {"error": "no message decoded", "offset": 0, "message": None, "line": 1}


def test_encoding_option(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "micro.txt"
    path.write_bytes(b"H|\\^&\nR|1|^^^GLU|5|\xb5mol/L\nL|1|N\n")
    status, lines, _ = run(capsys, str(path))
    assert status == 0 and lines[1]["fields"][4] == [["µmol/L"]]
    status, lines, _ = run(capsys, str(path), "--encoding", "utf-8")
    assert status == 1
    assert lines[0]["message"] == 1 and "not valid utf-8" in lines[0]["error"]


def test_lenient_frames_option(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "maglumi.astm"
    path.write_bytes(b"\x05\x021H|\\^&\rL|1|N\r\x03\r\n\x04")  # FN but no checksum
    status, lines, _ = run(capsys, str(path))
    assert status == 1 and "checksum" in lines[0]["error"]
    status, lines, _ = run(capsys, str(path), "--lenient-frames")
    assert status == 0 and [line["type"] for line in lines] == ["H", "L"]


def test_an_empty_file_is_an_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    status, lines, _ = run(capsys, str(path))
    assert status == 1 and lines == [{"error": "no message decoded", "offset": 0, "message": None}]


@pytest.mark.parametrize(
    "argv",
    [
        ["/nonexistent/capture.astm"],
        ["."],
        [str(CORPUS / "astm-afinion2-1.astm"), "--encoding", "no-such-codec"],
        [],
        ["a", "b"],
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert astm_decode.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert astm_decode.main(["--help"]) == 0
    assert "--encoding" in capsys.readouterr().out
