from __future__ import annotations

import pytest

from protocols import astm
from protocols.astm.frames import (
    GARBAGE_RUN,
    ControlToken,
    FrameReader,
    FrameToken,
    GarbageToken,
    ReadMode,
    Token,
)
from protocols.errors import LocalProtocolError, RemoteProtocolError

STX, ETX, EOT, ENQ, ETB = b"\x02", b"\x03", b"\x04", b"\x05", b"\x17"


def test_checksum_is_low_byte_of_sum_in_upper_case_hex() -> None:
    assert astm.checksum(bytes([122])) == b"7A"  # the example in LIS1-A §6.3.3
    assert astm.checksum(b"\xff\xff") == b"FE"
    assert astm.checksum(b"") == b"00"


def test_checksum_matches_a_real_pentra_frame() -> None:
    body = b"1H|\\^&|||ABX|||||||P|E1394-97|20220727121551\r\x03"
    assert astm.checksum(body) == b"58"


def test_end_frame_layout() -> None:
    raw = astm.Frame(1, b"L|1|N\r", final=True).to_bytes()
    assert raw == STX + b"1L|1|N\r" + ETX + astm.checksum(b"1L|1|N\r" + ETX) + b"\r\n"


def test_intermediate_frame_ends_with_etb() -> None:
    raw = astm.Frame(7, b"abc", final=False).to_bytes()
    assert raw[:2] == STX + b"7"
    assert raw[-5:-4] == ETB


def test_from_bytes_round_trips() -> None:
    for frame in (astm.Frame(0, b"H|\\^&\r", True), astm.Frame(5, b"x" * 240, False)):
        assert astm.Frame.from_bytes(frame.to_bytes()) == frame


def test_from_bytes_accepts_lower_case_hex_and_missing_lf() -> None:
    raw = astm.Frame(2, b"R|1|^^^GLU|5.5\r", True).to_bytes()
    lower = raw[:-4] + raw[-4:-2].lower() + b"\r"
    assert astm.Frame.from_bytes(lower) == astm.Frame(2, b"R|1|^^^GLU|5.5\r", True)
    assert astm.Frame.from_bytes(raw[:-2]).number == 2  # neither CR nor LF


def test_bad_checksum_is_rejected_and_says_so() -> None:
    raw = bytearray(astm.Frame(1, b"L|1\r", True).to_bytes())
    raw[2] ^= 0x01
    with pytest.raises(RemoteProtocolError, match="checksum"):
        astm.Frame.from_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"1L|1\r\x03AA\r\n", "STX"),
        (b"\x021L|1\r", "ETX or ETB"),
        (b"\x021L|1\r\x03\r\n", "checksum"),
        (b"\x021L|1\r\x03ZZ\r\n", "checksum"),
        (b"\x021L|1\r\x03" + astm.checksum(b"1L|1\r\x03") + b"\r\nxx", "after the checksum"),
    ],
)
def test_malformed_frames_are_rejected(raw: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=reason):
        astm.Frame.from_bytes(raw)


def test_frame_without_number_decodes_with_none() -> None:
    body = b"H|\\^&\r" + ETX
    frame = astm.Frame.from_bytes(STX + body + astm.checksum(body) + b"\r\n")
    assert frame == astm.Frame(None, b"H|\\^&\r", True)


def test_frame_refuses_restricted_text_and_bad_numbers() -> None:
    with pytest.raises(LocalProtocolError):
        astm.Frame(1, b"a\x03b", True).to_bytes()
    with pytest.raises(LocalProtocolError):
        astm.Frame(1, b"a\nb", True).to_bytes()
    with pytest.raises(LocalProtocolError):
        astm.Frame(8, b"", True)


def test_split_text_cuts_at_max_text() -> None:
    assert astm.split_text(b"a" * 480) == [b"a" * 240, b"a" * 240]
    assert [len(p) for p in astm.split_text(b"a" * 481)] == [240, 240, 1]
    assert astm.split_text(b"abcde", 2) == [b"ab", b"cd", b"e"]
    assert astm.split_text(b"") == [b""]
    with pytest.raises(LocalProtocolError):
        astm.split_text(b"abc", 0)


# --- FrameReader --------------------------------------------------------------------------


def read_all(reader: FrameReader, mode: ReadMode = ReadMode.FRAMES) -> list[Token]:
    tokens = []
    while (token := reader.next_token(mode)) is not None:
        tokens.append(token)
    return tokens


def tokens_for(data: bytes, size: int, max_frame: int = 64_000) -> list[Token]:
    reader = FrameReader(max_frame)
    tokens: list[Token] = []
    for i in range(0, len(data), size):
        reader.feed(data[i : i + size])
        tokens += read_all(reader)
    return tokens


def test_reader_finds_frames_controls_and_garbage_whatever_the_chunking() -> None:
    frame = astm.Frame(1, b"H|\\^&\r", True).to_bytes()
    data = b"noise" + ENQ + frame + b"\x06" + EOT
    expected = [
        GarbageToken(b"noise"),
        ControlToken(ENQ),
        FrameToken(frame[:-1], astm.Frame(1, b"H|\\^&\r", True), None),
        GarbageToken(b"\x06"),
    ]
    for size in (1, 2, 3, 7, len(data)):
        assert tokens_for(data, size)[:4] == expected
        assert tokens_for(data, size)[4:] == [ControlToken(EOT)]


def test_reader_swallows_the_lf_after_a_frame_but_not_other_bytes() -> None:
    frame = astm.Frame(1, b"x", True).to_bytes()
    no_lf = frame[:-1]
    tokens = tokens_for(no_lf + b"\n" + no_lf + b"y" + EOT, 1)
    assert [type(t) for t in tokens] == [FrameToken, FrameToken, GarbageToken, ControlToken]
    assert tokens[2] == GarbageToken(b"y")


def test_reader_ends_a_frame_cut_short_by_enq_eot_or_stx() -> None:
    frame = astm.Frame(2, b"P|1\r", True).to_bytes()
    tokens = tokens_for(STX + b"1H|partial" + EOT + ENQ + STX + b"junk" + frame, 1)
    assert tokens[0] == GarbageToken(STX + b"1H|partial")
    assert tokens[1:3] == [ControlToken(EOT), ControlToken(ENQ)]
    assert tokens[3] == GarbageToken(STX + b"junk")
    assert isinstance(tokens[4], FrameToken) and tokens[4].frame is not None


def test_reader_reports_long_garbage_in_pieces() -> None:
    tokens = tokens_for(b"z" * (GARBAGE_RUN * 2 + 5) + ENQ, 1)
    assert [len(t.data) for t in tokens if isinstance(t, GarbageToken)] == [
        GARBAGE_RUN,
        GARBAGE_RUN,
        5,
    ]


def test_reader_refuses_oversized_frames_without_buffering_them() -> None:
    reader = FrameReader(max_frame=100)
    reader.feed(STX + b"1")
    assert read_all(reader) == []
    for _ in range(1000):
        reader.feed(b"x" * 50)
        assert read_all(reader) == []
        assert reader.buffered <= 150
    reader.feed(ETX + b"00\r\n" + ENQ)
    tokens = read_all(reader)
    assert isinstance(tokens[0], FrameToken)
    assert tokens[0].frame is None and "exceeds 100" in (tokens[0].error or "")
    assert len(tokens[0].raw) == 100
    assert tokens[1:] == [ControlToken(ENQ)]


def test_reader_in_reply_mode_returns_every_byte() -> None:
    reader = FrameReader()
    reader.feed(b"\x06\x15x\x04")
    assert read_all(reader, ReadMode.REPLY) == [
        ControlToken(b"\x06"),
        ControlToken(b"\x15"),
        ControlToken(b"x"),
        ControlToken(EOT),
    ]


def test_reader_while_establishing_only_cares_for_ack_nak_enq() -> None:
    reader = FrameReader()
    reader.feed(b"ab" + EOT + b"\x06" + STX + b"\x15")
    assert read_all(reader, ReadMode.ESTABLISHING) == [
        GarbageToken(b"ab" + EOT),
        ControlToken(b"\x06"),
        GarbageToken(STX),
        ControlToken(b"\x15"),
    ]
