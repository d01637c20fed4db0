"""`astm.read_capture` and `astm.split_capture_messages`: capture files as found in the wild."""

from __future__ import annotations

import itertools
import re

import pytest
from astm_helpers import CORPUS, frame_texts, log_reads, record_messages
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import astm
from protocols.errors import RemoteProtocolError

FAST = settings(max_examples=80, deadline=None)
STX, ETX, EOT, ENQ, ACK, NAK, ETB = b"\x02", b"\x03", b"\x04", b"\x05", b"\x06", b"\x15", b"\x17"

#: file -> (kind, escaped, dropped lines)
SHAPES = {
    "astm-access2-1.txt": ("framed", True, 80),
    "astm-afinion2-1.astm": ("framed", False, 0),
    "astm-beckman-dxh-1.txt": ("unframed", False, 9),
    "astm-cobas-c311-1.astm": ("framed", False, 0),
    "astm-lis2a2-spec-example-1.txt": ("unframed", False, 0),
    "astm-mindray-bs240-1.txt": ("framed", True, 314),
    "astm-ortho-vision-1.txt": ("unframed", False, 1),
    "astm-ortho-vision-escapes-1.txt": ("unframed", False, 0),
    "astm-pentra-xlr-1.astm": ("framed", False, 0),
    "astm-phadia-prime-1.txt": ("unframed", False, 2),
    "astm-sysmex-xn550-1.astm": ("framed", False, 0),
}
RAW_FRAMED = [name for name in SHAPES if name.endswith(".astm")]
UNFRAMED = ["astm-beckman-dxh-1.txt", "astm-lis2a2-spec-example-1.txt"]
UNFRAMED += ["astm-ortho-vision-1.txt", "astm-phadia-prime-1.txt"]


def capture_of(name: str) -> astm.Capture:
    return astm.read_capture((CORPUS / name).read_bytes())


def framed(number: int, text: bytes, final: bool = True) -> bytes:
    return astm.Frame(number, text, final).to_bytes()


def errors(messages: list[astm.CaptureMessage]) -> list[astm.CaptureIssue]:
    return [issue for message in messages for issue in message.errors]


def warnings(messages: list[astm.CaptureMessage]) -> list[astm.CaptureIssue]:
    return [issue for message in messages for issue in message.warnings]


# --- reading files --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHAPES)
def test_every_corpus_file_is_recognised(name: str) -> None:
    capture = capture_of(name)
    assert (capture.kind, capture.escaped, capture.dropped_lines) == SHAPES[name]


@pytest.mark.parametrize("name", RAW_FRAMED)
def test_a_raw_capture_is_its_own_byte_stream(name: str) -> None:
    assert capture_of(name).data == (CORPUS / name).read_bytes()


@pytest.mark.parametrize("name", ["astm-access2-1.txt", "astm-mindray-bs240-1.txt"])
def test_an_escaped_log_gives_the_analysers_reads_joined(name: str) -> None:
    capture = capture_of(name)
    assert capture.data == b"".join(log_reads(name))
    assert capture.line_of(0) == 2  # line 1 is the host's " - [ACK]"


def test_escape_styles_and_reply_lines() -> None:
    body = b"1H|\\^&\rL|1|N\r" + ETX
    raw_frame = STX + body + astm.checksum(body) + b"\r\n"
    log = (
        b"# capture of 2024-01-01\r\n"
        b"<ENQ>\r\n"
        b" - <ACK>\r\n"
        b"[stx]1H|\\^&<cr>L|1|N[CR]<etx>" + astm.checksum(body) + b"<CR>[lf]\r\n"
        b"- [ACK]\r\n"
        b"[EOT]\r\n"
    )
    capture = astm.read_capture(log)
    assert capture.data == ENQ + raw_frame + EOT
    assert (capture.kind, capture.escaped, capture.dropped_lines) == ("framed", True, 3)
    assert [capture.line_of(i) for i in (0, 1, len(capture.data) - 1)] == [2, 4, 6]
    (message,) = astm.split_capture_messages(capture)
    assert message.text == b"H|\\^&\rL|1|N\r" and message.offset == 1


def test_an_escaped_log_without_line_escapes_keeps_its_line_ends() -> None:
    log = b"<ENQ>H|\\^&\nP|1\nL|1<EOT>\n"
    capture = astm.read_capture(log)
    assert capture.data == ENQ + b"H|\\^&\nP|1\nL|1" + EOT + b"\n"
    assert capture.kind == "unframed"
    (message,) = astm.split_capture_messages(capture)
    assert message.text == b"H|\\^&\rP|1\rL|1\r"


def test_comment_and_directive_lines_are_dropped_and_counted() -> None:
    dump = b"# header\n@send fully 0D\nH|\\^&\nL|1\n@receive withNAK\n#\n"
    capture = astm.read_capture(dump)
    assert capture.data == b"H|\\^&\nL|1\n"
    assert capture.dropped_lines == 4
    assert capture.line_of(0) == 3 and capture.line_of(6) == 4


def test_an_empty_file() -> None:
    capture = astm.read_capture(b"")
    assert capture == astm.Capture("unframed", b"", 0, False, ())
    assert capture.line_of(0) is None
    assert astm.split_capture_messages(capture) == []


# --- framed captures ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RAW_FRAMED)
def test_framed_corpus_captures_give_one_message_each(name: str) -> None:
    capture = capture_of(name)
    (message,) = astm.split_capture_messages(capture)
    assert message.text == b"".join(frame_texts(capture.data))
    assert not message.errors and not message.warnings
    assert message.offset == capture.data.index(STX)
    assert all(capture.data[offset : offset + 1] == STX for _, offset in message.segments)
    astm.decode_message(message.text)


def test_pentra_one_record_per_frame_is_one_e1394_message_with_a_segment_per_frame() -> None:
    capture = capture_of("astm-pentra-xlr-1.astm")
    (message,) = astm.split_capture_messages(capture)
    assert len(message.segments) == 28
    frames = [m.start() for m in re.finditer(b"\x02", capture.data)]
    assert [offset for _, offset in message.segments] == frames
    records = message.text.split(b"\r")[:-1]
    starts = [m.start() for m in re.finditer(rb"(?:^|\r)(?=[A-Z]\|)", message.text)]
    assert [message.offset_of(s + (s > 0)) for s in starts] == frames[: len(records)]


def _mindray_frames() -> list[bytes]:
    stream = b"".join(log_reads("astm-mindray-bs240-1.txt"))
    return re.findall(rb"\x02[^\x02\x04\x05]*?[\x03\x17]..\r\n", stream, re.S)


def _verifies(raw: bytes) -> bool:
    try:
        astm.Frame.from_bytes(raw)
    except RemoteProtocolError:
        return False
    return True


def test_mindray_log_gives_130_messages_and_its_27_checksum_errors() -> None:
    capture = capture_of("astm-mindray-bs240-1.txt")
    messages = astm.split_capture_messages(capture)
    assert len(messages) == 157
    received = [m for m in messages if m.text]
    failed = [m for m in messages if not m.text]
    good = [f for f in _mindray_frames() if _verifies(f)]
    assert [m.text for m in received] == [astm.Frame.from_bytes(f).text for f in good]
    for message in received:
        astm.decode_message(message.text)
    assert len(failed) == 27 and len(errors(messages)) == 27
    for message in failed:
        (error,) = message.errors
        assert error.reason.startswith("bad checksum")
        assert capture.data.startswith(message.raw, error.offset)
        assert capture.data[error.offset : error.offset + 1] == STX
    kinds = {w.reason.split(" ")[0] for w in warnings(messages)}
    assert kinds == {"frame", "stray"}  # the log's order is not the wire's: warnings only


def test_access2_scrambled_log_is_read_without_raising() -> None:
    messages = astm.split_capture_messages(capture_of("astm-access2-1.txt"))
    assert any(m.text for m in messages)
    assert errors(messages)
    assert all(0 <= i.offset <= 2914 for i in errors(messages) + warnings(messages))


def test_a_refused_frame_followed_by_its_retransmission() -> None:
    good = framed(1, b"H|\\^&\rL|1|N\r")
    bad = good[:3] + b"X" + good[4:]
    data = ENQ + bad + good + EOT
    (message,) = astm.split_capture_messages(astm.read_capture(data))
    assert message.text == b"H|\\^&\rL|1|N\r"
    assert message.offset == data.index(good)
    assert [e.offset for e in message.errors] == [1]
    assert "checksum" in message.errors[0].reason


def test_a_capture_that_ends_inside_a_message() -> None:
    data = ENQ + framed(1, b"H|\\^&\rP|1\r", final=False) + framed(2, b"O|1\r", final=False)
    (message,) = astm.split_capture_messages(astm.read_capture(data))
    assert message.text == b""
    assert [e.reason for e in message.errors] == ["the capture ends in the middle of a message"]
    tail = astm.split_capture_messages(astm.read_capture(data + STX + b"3R|1"))
    assert "ends in the middle" in tail[0].errors[-1].reason
    neutral = astm.split_capture_messages(astm.read_capture(framed(1, b"H|\\^&\rL\r") + STX + b"1"))
    assert neutral[-1].errors[-1].reason.startswith("the capture ends inside a frame")


def test_a_frame_without_enq_is_read_with_a_warning_unless_the_capture_starts_with_it() -> None:
    first = framed(1, b"H|\\^&\rL|1\r")
    second = framed(1, b"H|\\^&\rL|2\r")
    messages = astm.split_capture_messages(astm.read_capture(first + EOT + ENQ + EOT + second))
    assert [m.text for m in messages] == [b"H|\\^&\rL|1\r", b"H|\\^&\rL|2\r"]
    assert not messages[0].warnings
    (warning,) = messages[1].warnings
    assert "outside a transfer" in warning.reason and warning.offset == messages[1].offset


def test_a_repeated_frame_number_with_another_text_starts_a_new_transfer() -> None:
    first, second = framed(1, b"H|\\^&\rL|1\r"), framed(1, b"H|\\^&\rL|2\r")
    messages = astm.split_capture_messages(astm.read_capture(ENQ + first + second + EOT))
    assert [m.text for m in messages] == [b"H|\\^&\rL|1\r", b"H|\\^&\rL|2\r"]
    assert "lost the EOT and ENQ" in messages[1].warnings[0].reason
    assert messages[1].offset == 1 + len(first)
    again = astm.split_capture_messages(astm.read_capture(ENQ + first + first + EOT))
    assert [m.text for m in again] == [b"H|\\^&\rL|1\r"]
    assert "received again" in again[0].warnings[0].reason


def test_a_repeated_frame_number_inside_a_message_is_ignored_as_the_link_does() -> None:
    head, tail = framed(1, b"H|\\^&\r", final=False), framed(2, b"L|1\r")
    other = framed(1, b"P|1\r", final=False)
    (message,) = astm.split_capture_messages(astm.read_capture(ENQ + head + other + tail + EOT))
    assert message.text == b"H|\\^&\rL|1\r"
    assert [e.offset for e in message.errors] == [1 + len(head)]
    assert "ignored as its retransmission" in message.errors[0].reason
    assert [offset for _, offset in message.segments] == [1, 1 + len(head) + len(other)]


def test_a_message_without_l_ends_with_its_transfer() -> None:
    data = ENQ + framed(1, b"H|\\^&\rP|1\r") + EOT + ENQ + framed(1, b"H|\\^&\rL|1\r") + EOT
    messages = astm.split_capture_messages(astm.read_capture(data))
    assert [m.text for m in messages] == [b"H|\\^&\rP|1\r", b"H|\\^&\rL|1\r"]
    assert messages[0].warnings[0].reason == "message ends without an L record"


def test_garbage_between_frames_is_an_error_at_its_offset() -> None:
    data = ENQ + b"noise" + framed(1, b"H|\\^&\rL|1\r") + EOT
    (message,) = astm.split_capture_messages(astm.read_capture(data))
    assert [(e.offset, e.reason[:25]) for e in message.errors] == [(1, "5 bytes outside any frame")]


def test_lenient_frames_option_reaches_the_link() -> None:
    body = b"1H|\\^&\rL|1\r"
    data = ENQ + STX + body + ETX + b"\r\n" + EOT
    strict = astm.split_capture_messages(astm.read_capture(data))
    assert "checksum" in strict[0].errors[0].reason
    (lenient,) = astm.split_capture_messages(astm.read_capture(data), lenient_frames=True)
    assert lenient.text == b"H|\\^&\rL|1\r" and not lenient.errors


def test_frames_without_numbers_are_read_as_unframed_records() -> None:
    data = ENQ + STX + b"H|\\^&\rP|1\rL|1|N\r" + ETX + b"\r\n" + EOT
    capture = astm.read_capture(data)
    assert capture.kind == "unframed"
    (message,) = astm.split_capture_messages(capture)
    assert message.text == b"H|\\^&\rP|1\rL|1|N\r" and not message.errors


# --- unframed captures ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", UNFRAMED)
def test_unframed_corpus_captures(name: str) -> None:
    capture = capture_of(name)
    messages = astm.split_capture_messages(capture)
    assert [m.text for m in messages] == record_messages(name)
    for message in messages:
        assert not message.errors and not message.warnings
        assert capture.data.startswith(b"H", message.offset)
        for index, offset in message.segments:
            record = message.text[index : message.text.index(b"\r", index)]
            assert capture.data.startswith(record, offset)


def test_records_without_a_header_are_errors() -> None:
    capture = capture_of("astm-ortho-vision-escapes-1.txt")
    (message,) = astm.split_capture_messages(capture)
    assert message.text == b"" and len(message.errors) == 4
    assert [capture.line_of(e.offset) for e in message.errors] == [1, 2, 3, 4]


def test_unframed_control_bytes_around_nothing_are_warnings() -> None:
    data = ENQ + EOT + b"H|\\^&\rL|1\r"
    (message,) = astm.split_capture_messages(astm.read_capture(data))
    assert message.text == b"H|\\^&\rL|1\r" and not message.errors
    assert [w.offset for w in message.warnings] == [0]


# --- properties -----------------------------------------------------------------------------------

_NAMES = {STX: "STX", ETX: "ETX", ETB: "ETB", ENQ: "ENQ", EOT: "EOT", ACK: "ACK", NAK: "NAK"}
_NAMES |= {b"\r": "CR", b"\n": "LF"}
_PLAIN = st.sampled_from([bytes([c]) for c in b"HPORLC|\\^&01234567 ABCxyz.:"])


@FAST
@given(
    st.lists(st.one_of(_PLAIN, st.sampled_from(list(_NAMES))), max_size=200),
    st.lists(st.integers(0, 10_000), max_size=20),
    st.lists(st.sampled_from(["[{}]", "<{}>", "<{}>"]), min_size=1),
    st.booleans(),
)
def test_writing_a_stream_as_an_escaped_log_and_reading_it_back(
    pieces: list[bytes], cuts: list[int], styles: list[str], replies: bool
) -> None:
    data = b"".join(pieces) + b"\r"
    escaped = []
    for i, piece in enumerate([*pieces, b"\r"]):
        if piece in _NAMES:
            name = _NAMES[piece] if i % 2 else _NAMES[piece].lower()
            escaped.append(styles[i % len(styles)].format(name).encode())
        else:
            escaped.append(piece)
    lines = []
    edges = sorted({0, len(escaped), *(c % (len(escaped) + 1) for c in cuts)})
    for a, b in itertools.pairwise(edges):
        lines.append(b"".join(escaped[a:b]))
        if replies:
            lines.append(b" - [ACK]")
    capture = astm.read_capture(b"\r\n".join(lines) + b"\r\n")
    assert capture.data == data
    assert capture.escaped


@FAST
@given(st.binary(max_size=400), st.booleans())
def test_arbitrary_files_never_raise(data: bytes, lenient: bool) -> None:
    for content in (data, ENQ + STX + b"1" + data, data.replace(b"\n", b"[CR]\n")):
        capture = astm.read_capture(content)
        messages = astm.split_capture_messages(capture, lenient_frames=lenient)
        for message in messages:
            for issue in message.errors + message.warnings:
                assert 0 <= issue.offset <= len(capture.data)
            assert 0 <= message.offset <= len(capture.data)


_BODY = st.lists(
    st.binary(max_size=60).map(
        lambda b: (
            b"R|"
            + bytes(
                c
                for c in b
                if c not in b"\r\n\x01\x02\x03\x04\x05\x06\x10\x11\x12\x13\x14\x15\x16\x17"
            )
        )
    ),
    max_size=6,
)


@FAST
@given(st.lists(_BODY, min_size=1, max_size=4), st.integers(5, 80), st.data())
def test_a_recorded_conversation_gives_its_messages_and_each_refused_frame_at_its_offset(
    bodies: list[list[bytes]], max_text: int, data: st.DataObject
) -> None:
    stream = bytearray(ENQ)
    texts, damaged = [], []
    number = 1
    for body in bodies:
        text = b"".join(line + b"\r" for line in [b"H|\\^&", *body, b"L|1|N"])
        texts.append(text)
        parts = astm.split_text(text, max_text)
        for i, part in enumerate(parts):
            good = framed(number, part, i == len(parts) - 1)
            if data.draw(st.booleans()):  # the receiver NAKed a damaged copy first
                damaged.append(len(stream))
                stream += good[:1] + bytes([good[1] ^ 0x40]) + good[2:]
            stream += good
            number = (number + 1) % 8
    stream += EOT
    capture = astm.read_capture(bytes(stream))
    messages = astm.split_capture_messages(capture)
    assert [m.text for m in messages] == texts
    assert [e.offset for e in errors(messages)] == damaged
    assert not warnings(messages)
    for message in messages:
        assert all(capture.data[o : o + 1] == STX for _, o in message.segments)
