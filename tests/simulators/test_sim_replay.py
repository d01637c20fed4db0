"""Replay: every corpus capture yields messages a host link receives exactly as read."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from sim_helpers import analyser_and_host

from protocols import astm
from simulators.replay import messages_from_capture, messages_from_file, specimen_of

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"
FRAMED = sorted(CORPUS.glob("*.astm"))
DUMPS = [
    CORPUS / name
    for name in (
        "astm-beckman-dxh-1.txt",
        "astm-lis2a2-spec-example-1.txt",
        "astm-ortho-vision-1.txt",
        "astm-ortho-vision-escapes-1.txt",
        "astm-phadia-prime-1.txt",
    )
]
LOGS = [CORPUS / "astm-mindray-bs240-1.txt", CORPUS / "astm-access2-1.txt"]


def test_the_corpus_is_all_covered() -> None:
    covered = {path.name for path in FRAMED + DUMPS + LOGS}
    assert covered == {p.name for p in CORPUS.iterdir() if p.name.startswith("astm-")}
    assert len(FRAMED) == 4


@pytest.mark.parametrize("path", FRAMED + DUMPS + LOGS, ids=lambda path: path.name)
async def test_replayed_messages_reach_the_host_as_read(path: Path) -> None:
    texts = messages_from_file(path)
    assert texts
    async with analyser_and_host("tcp") as (sim, host):
        assert await asyncio.gather(*(sim.send(text) for text in texts)) == [True] * len(texts)
    assert host.received == texts


@pytest.mark.parametrize("path", FRAMED, ids=lambda path: path.name)
def test_framed_capture_keeps_every_frame_text_in_order(path: Path) -> None:
    raw = path.read_bytes()
    frame_texts = re.findall(rb"\x02[0-7]([^\x02\x03\x17]*)[\x03\x17]", raw)
    assert b"".join(messages_from_file(path)) == b"".join(frame_texts)


def test_one_record_per_frame_capture_replays_frame_by_frame_with_the_local_reader() -> None:
    texts = messages_from_file(CORPUS / "astm-pentra-xlr-1.astm", shared=False)
    assert len(texts) == 28  # as the Pentra sent them: each record its own ETX frame
    assert texts[0].startswith(b"H|") and texts[-1] == b"L|1|N\r"


@pytest.mark.skipif(not hasattr(astm, "read_capture"), reason="no shared capture reader yet")
@pytest.mark.parametrize("path", FRAMED + DUMPS + LOGS, ids=lambda path: path.name)
def test_shared_and_local_readers_give_the_same_records(path: Path) -> None:
    shared, local = messages_from_file(path), messages_from_file(path, shared=False)
    assert b"".join(shared) == b"".join(local)
    if path.name != "astm-pentra-xlr-1.astm":  # the shared reader joins records up to L
        assert shared == local


@pytest.mark.parametrize("path", DUMPS, ids=lambda path: path.name)
def test_record_dump_drops_comments_and_directives_and_splits_at_h(path: Path) -> None:
    lines = [
        line
        for line in path.read_bytes().splitlines()
        if line.strip() and not line.startswith((b"#", b"@"))
    ]
    texts = messages_from_file(path)
    assert b"".join(texts) == b"".join(line + b"\r" for line in lines)
    assert all(text.startswith(b"H") for text in texts) or len(texts) == 1
    assert sum(line.startswith(b"H") for line in lines) in (len(texts), 0)


def test_record_dump_specimens() -> None:
    texts = messages_from_file(CORPUS / "astm-phadia-prime-1.txt")
    assert [specimen_of(text) for text in texts] == ["B7650020"]
    sysmex = messages_from_file(CORPUS / "astm-sysmex-xn550-1.astm")
    assert [specimen_of(text) for text in sysmex] == ["27"]  # O-3 empty, O-4 `^^      27^M`
    assert specimen_of(b"H|\\^&\rL|1|N\r") is None


def test_text_escaped_log_is_read_without_checksums() -> None:
    texts = messages_from_file(CORPUS / "astm-mindray-bs240-1.txt")
    raw = (CORPUS / "astm-mindray-bs240-1.txt").read_bytes()
    assert len(texts) == raw.count(b"[ETX]") == 157  # 27 of them have broken checksums
    assert all(text.startswith(b"H|") and text.endswith(b"\r") for text in texts)


def test_framed_capture_with_a_bad_frame_is_refused() -> None:
    good = b"\x021H|\\^&\rL|1|N\r\x03"
    with pytest.raises(ValueError, match="checksum"):
        messages_from_capture(good + b"00\r\n")


def test_empty_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"# nothing here\n\n")
    with pytest.raises(ValueError, match="no ASTM message"):
        messages_from_file(empty)
