"""Real analyser traffic (tests/data/corpus, see INDEX.md there for sources and licences)."""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal

import pytest
from astm_helpers import (
    CORPUS,
    astm_stream,
    chunked,
    drive,
    frame_texts,
    log_reads,
    message_texts,
    of_type,
    record_messages,
)

from protocols import astm
from protocols.errors import RemoteProtocolError

FRAMED = [
    "astm-afinion2-1.astm",
    "astm-cobas-c311-1.astm",
    "astm-pentra-xlr-1.astm",
    "astm-sysmex-xn550-1.astm",
]
RECORD_DUMPS = [
    "astm-beckman-dxh-1.txt",
    "astm-lis2a2-spec-example-1.txt",
    "astm-ortho-vision-1.txt",
    "astm-phadia-prime-1.txt",
]
SPLITS: dict[str, Callable[[int], int]] = {
    "whole": lambda n: n,
    "half": lambda n: n // 2 + 1,
    "single": lambda n: 1,
}


def record_types(text: bytes) -> list[str]:
    return [line[:1].decode() for line in re.split(rb"\r\n|\r|\n", text) if line.strip()]


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("name", FRAMED)
def test_framed_capture_is_received_whole_half_and_bytewise(name: str, split: str) -> None:
    stream = astm_stream(name)
    events = drive(astm.Link(astm.Role.HOST), chunked(stream, SPLITS[split](len(stream))))
    texts = message_texts(events)
    assert b"".join(texts) == b"".join(frame_texts(stream))
    assert events[0] == astm.TransferStarted() and events[-1] == astm.TransferEnded()
    assert not of_type(events, astm.FrameRejected)
    assert not of_type(events, astm.GarbageDiscarded)
    reference = drive(astm.Link(astm.Role.HOST), [stream])
    assert events == reference


@pytest.mark.parametrize("name", FRAMED)
def test_framed_capture_decodes_to_the_records_it_holds(name: str) -> None:
    stream = astm_stream(name)
    text = b"".join(message_texts(drive(astm.Link(astm.Role.HOST), [stream])))
    message = astm.decode_message(text)
    assert [r.type for r in message.records] == record_types(text)
    assert message.records[0].type == "H" and message.records[-1].type == "L"


def test_afinion_whole_message_in_one_frame_without_lf() -> None:
    events = drive(astm.Link(astm.Role.HOST), [astm_stream("astm-afinion2-1.astm")])
    (received,) = of_type(events, astm.MessageReceived)
    assert received.raw.endswith(b"\x03F2\r")
    message = astm.decode_message(received.text)
    result = next(r for r in message.records if r.type == "R")
    assert result.component(3, 4) == "HbA1c"
    assert astm.parse_value(result.field(4)).number == Decimal("5.9")
    assert message.records[0].field(13) == "1"


def test_cobas_c311_single_618_char_frame_with_padded_specimen() -> None:
    events = drive(astm.Link(astm.Role.HOST), [astm_stream("astm-cobas-c311-1.astm")])
    (received,) = of_type(events, astm.MessageReceived)
    assert len(received.raw) > 618  # one frame, far over 240 characters
    message = astm.decode_message(received.text)
    order = next(r for r in message.records if r.type == "O")
    assert order.component(3, 2) == "CL-PL-24-0370         "  # padding kept
    assert [rep[3] for rep in order.repeats(5)][:2] == ["685/", "687/"]


def test_pentra_one_record_per_frame_with_fn_rollover() -> None:
    stream = astm_stream("astm-pentra-xlr-1.astm")
    events = drive(astm.Link(astm.Role.HOST), chunked(stream, 1))
    received = of_type(events, astm.MessageReceived)
    assert len(received) == 28
    assert [m.raw[1:2] for m in received[6:10]] == [b"7", b"0", b"1", b"2"]
    message = astm.decode_message(b"".join(m.text for m in received))
    basophils = next(r for r in message.records if r.type == "R" and r.component(3, 4) == "BAS#")
    assert basophils.field(4) == "-----" and basophils.field(7) == "HH"
    assert astm.parse_value(basophils.field(4)).number is None


def test_sysmex_escaped_repeat_inside_a_value() -> None:
    events = drive(astm.Link(astm.Role.HOST), [astm_stream("astm-sysmex-xn550-1.astm")])
    message = astm.decode_message(message_texts(events)[0])
    scattergram = next(r for r in message.records if "PNG" in r.raw_field(4))
    assert scattergram.raw_field(4).startswith("PNG&R&2024")
    assert scattergram.field(4).startswith("PNG\\20240628\\")
    assert len(scattergram.repeats(4)) == 1
    assert message.records[0].field(5) == "    XN-550"


def _mindray_frames() -> list[bytes]:
    stream = b"".join(log_reads("astm-mindray-bs240-1.txt"))
    return re.findall(rb"\x02[^\x02\x04\x05]*?[\x03\x17]..\r\n", stream, re.S)


def _verifies(raw: bytes) -> bool:
    try:
        astm.Frame.from_bytes(raw)
    except RemoteProtocolError:
        return False
    return True


def test_mindray_link_naks_exactly_the_27_frames_whose_checksums_were_lost() -> None:
    # The log's line order is not faithful (the host logged its ENQ/EOT lines late in places),
    # so each logged frame is replayed as its own ENQ ... EOT session.
    frames = _mindray_frames()
    assert len(frames) == 157
    broken = [f for f in frames if not _verifies(f)]
    assert len(broken) == 27
    chunks = [piece for f in frames for piece in (b"\x05", f, b"\x04")]
    events = drive(astm.Link(astm.Role.HOST), chunks)
    rejected = of_type(events, astm.FrameRejected)
    assert [r.raw + b"\n" for r in rejected] == broken
    assert all("checksum" in r.reason for r in rejected)
    received = of_type(events, astm.MessageReceived)
    assert [m.raw + b"\n" for m in received] == [f for f in frames if _verifies(f)]
    assert len(received) == 130


def test_mindray_log_replayed_as_logged_never_breaks_the_link() -> None:
    events = drive(astm.Link(astm.Role.HOST), [b"\x05", *log_reads("astm-mindray-bs240-1.txt")])
    assert len(of_type(events, astm.MessageReceived)) > 100
    for message in of_type(events, astm.MessageReceived):
        assert _verifies(message.raw)


def test_access2_reads_split_anywhere_never_break_the_link() -> None:
    # Reads split mid-field and mid-checksum, partly logged out of order: robustness input.
    reads = [b"\x05", *log_reads("astm-access2-1.txt")]
    events = drive(astm.Link(astm.Role.HOST), reads)
    received = of_type(events, astm.MessageReceived)
    assert received, "intact frames are accepted"
    assert of_type(events, astm.FrameRejected), "scrambled frames are refused"
    for message in received:
        assert astm.Frame.from_bytes(message.raw).text == message.text
    assert events == drive(astm.Link(astm.Role.HOST), [b"".join(reads)])


# --- E1394 decoding of every record in the corpus -----------------------------------------------


@pytest.mark.parametrize("name", RECORD_DUMPS)
def test_record_dump_decodes_every_record(name: str) -> None:
    messages = record_messages(name)
    assert messages
    for text in messages:
        message = astm.decode_message(text)
        assert [r.type for r in message.records] == record_types(text)


def test_beckman_dxh_nonstandard_delimiters() -> None:
    texts = record_messages("astm-beckman-dxh-1.txt")
    message = astm.decode_message(next(t for t in texts if b"146!" in t))
    assert message.delimiters == astm.Delimiters("|", "\\", "!", "~")
    assert message.records[0].field(2) == "\\!~"
    result = next(r for r in message.records if r.type == "R")
    assert result.field(5) == "10^9/L"  # a literal ^: not the component delimiter here
    flagged = next(r for r in message.records if r.type == "R" and r.component(4, 2).strip())
    assert (flagged.field(4), flagged.component(4, 2)) == ("146", "  H ")  # padding kept
    query = astm.decode_message(texts[0]).records[1]
    assert query.type == "Q" and query.component(3, 2) == "000004287888"
    assert query.field(5) == "ALL" and query.field(13) == "O"


def test_ortho_vision_escape_sequences() -> None:
    text = b"H|\\^&\r" + (CORPUS / "astm-ortho-vision-escapes-1.txt").read_bytes()
    orders = astm.decode_message(text).records[1:]
    assert [o.field(5) for o in orders] == [
        "Type | Screen",
        "Type \\ Screen",
        "Type ^ Screen",
        "Type & Screen",
    ]
    assert orders[0].raw_field(5) == "Type &F& Screen"


def test_phadia_non_numeric_value_and_ip_receiver() -> None:
    message = astm.decode_message(record_messages("astm-phadia-prime-1.txt")[0])
    assert message.records[0].component(10, 2) == "127.0.0.1"
    values = [r.field(4) for r in message.records if r.type == "R"]
    assert values == ["9.34", "Examine", "199"]
    assert [astm.parse_value(v).number for v in values] == [Decimal("9.34"), None, Decimal(199)]


def test_mindray_frames_decode_every_record() -> None:
    for raw in _mindray_frames():
        (text,) = frame_texts(raw)
        message = astm.decode_message(text)
        assert [r.type for r in message.records] == record_types(text)
        assert message.records[-1].type == "L"


def test_access2_intact_records_decode() -> None:
    stream = b"".join(log_reads("astm-access2-1.txt"))
    frames = re.findall(rb"\x02[^\x02\x04\x05]*?[\x03\x17]..\r\n", stream)
    # A sum checksum survives reordering, so some "verified" frames are scrambled records:
    # keep those that read as one record of a known type.
    texts = [astm.Frame.from_bytes(f).text for f in frames if _verifies(f)]
    records = [t for t in texts if re.fullmatch(rb"(H\|\\\^&|[PORCL]\|)[^\r]*\r", t)]
    assert len(records) > 20
    for text in records:
        header = b"" if text.startswith(b"H") else b"H|\\^&\r"
        message = astm.decode_message(header + text)
        assert message.records[-1].type == text[:1].decode()
