"""`astm.UnframedLink`: LIS2-A2 records over TCP without E1381 frames."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable

import pytest
from astm_helpers import chunked, message_texts, of_type, record_messages, record_text
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import astm
from protocols.errors import LocalProtocolError

FAST = settings(max_examples=80, deadline=None)
STX, ETX, EOT, ENQ, ACK, NAK, ETB = b"\x02", b"\x03", b"\x04", b"\x05", b"\x06", b"\x15", b"\x17"

MESSAGE = b"H|\\^&|||Analyser\rP|1||PID7\rO|1|S1||^^^GLU\rR|1|^^^GLU|5.5|mmol/L\rL|1|N\r"
OTHER = b"H|\\!~|||DxH\rQ|1|!000004287888||ALL||||||||O\rL|1|N\r"
UNFRAMED_CORPUS = [
    "astm-ortho-vision-1.txt",
    "astm-phadia-prime-1.txt",
    "astm-lis2a2-spec-example-1.txt",
    "astm-beckman-dxh-1.txt",
]


def feed(
    link: astm.UnframedLink, chunks: Iterable[bytes], now: float = 0.0, answer: bool = True
) -> list[astm.Event]:
    """Feed chunks, acknowledging every message at once; all the events."""
    events: list[astm.Event] = []
    for chunk in chunks:
        link.receive_data(chunk, now)
        while (event := link.next_event()) is not None:
            events.append(event)
            if answer and isinstance(event, astm.MessageReceived):
                link.acknowledge(now)
    return events


def read(data: bytes, **options: object) -> list[astm.Event]:
    return feed(astm.UnframedLink(**options), [data])  # type: ignore[arg-type]


def drain(link: astm.UnframedLink) -> list[astm.Event]:
    events = []
    while (event := link.next_event()) is not None:
        events.append(event)
    return events


# --- messages -------------------------------------------------------------------------------------


@pytest.mark.parametrize("separator", [b"\r", b"\n", b"\r\n"])
def test_records_end_with_cr_lf_or_crlf_and_text_always_uses_cr(separator: bytes) -> None:
    wire = MESSAGE.replace(b"\r", separator)
    (received,) = read(wire)
    raw = wire[:-1] if separator == b"\r\n" else wire  # the LF after the last CR is not its
    assert received == astm.MessageReceived(MESSAGE, raw)


def test_raw_keeps_the_exact_bytes_and_a_final_lf_is_read_between_messages() -> None:
    wire = b"H|\\^&\r\n\r\nP|1\n\x02R|1\x03\rL|1\r\n" + OTHER
    events = read(wire)
    assert events == [
        astm.MessageReceived(b"H|\\^&\rP|1\rR|1\rL|1\r", b"H|\\^&\r\n\r\nP|1\n\x02R|1\x03\rL|1\r"),
        astm.MessageReceived(OTHER, OTHER),
    ]


def test_several_messages_in_one_read_are_delivered_in_order() -> None:
    events = read(MESSAGE + OTHER + MESSAGE)
    assert message_texts(events) == [MESSAGE, OTHER, MESSAGE]
    assert astm.decode_message(message_texts(events)[1]).delimiters.component == "!"


def test_l_record_is_recognised_with_the_declared_field_delimiter() -> None:
    text = b"H@\\^&\rLX@1\rL@1@N\r"
    assert message_texts(read(text)) == [text]
    assert message_texts(read(b"H|\\^&\rL\r")) == [b"H|\\^&\rL\r"]


def test_l_record_ended_by_a_control_byte_completes_the_message() -> None:
    events = read(ENQ + STX + MESSAGE.removesuffix(b"\r") + ETX + EOT)
    assert events == [
        astm.MessageReceived(MESSAGE, MESSAGE.removesuffix(b"\r")),
        astm.TransferEnded(),
    ]


# --- control bytes around records -----------------------------------------------------------------


def test_enq_stx_etx_eot_around_records_are_stripped_silently() -> None:
    wrapped = ENQ + b"".join(STX + line + b"\r" + ETX for line in MESSAGE.split(b"\r")[:-1]) + EOT
    events = read(wrapped + ENQ + OTHER + EOT)
    assert message_texts(events) == [MESSAGE, OTHER]
    assert of_type(events, astm.TransferEnded) == [astm.TransferEnded()] * 2
    assert not of_type(events, astm.GarbageDiscarded)
    assert events[0].raw.startswith(b"H|") and events[0].raw.endswith(b"L|1|N\r")  # type: ignore[attr-defined]


def test_control_bytes_wrapping_nothing_are_garbage() -> None:
    events = read(ENQ + b"\r\n" + EOT + STX + ETX + MESSAGE)
    assert events[:2] == [
        astm.GarbageDiscarded(ENQ + b"\r\n" + EOT),
        astm.GarbageDiscarded(STX + ETX),
    ]
    assert message_texts(events) == [MESSAGE]


def test_eot_between_messages_without_a_message_is_not_a_transfer_end() -> None:
    assert read(EOT + EOT + ACK + b"\r\n  \r\n") == []


def test_bytes_before_an_h_record_are_garbage_in_bounded_pieces() -> None:
    junk = b"x" * 600
    events = read(b"hello\r\n" + ENQ + b"noise" + NAK + junk + b"\r" + MESSAGE)
    garbage = [e.data for e in of_type(events, astm.GarbageDiscarded)]
    assert garbage == [b"hello", ENQ + b"noise", NAK, junk[:256], junk[256:512], junk[512:]]
    assert message_texts(events) == [MESSAGE]


@pytest.mark.parametrize(
    "line",
    [b"Hello|there", b"HH|\\^&", b"H|\\^", b"H|||||", b"  H|\\^&", b"1H|\\^&|||Framed"],
)
def test_a_line_is_an_h_record_only_with_four_distinct_delimiters_at_its_start(
    line: bytes,
) -> None:
    events = read(line + b"\rL|1\r")
    assert not of_type(events, astm.MessageReceived)
    assert of_type(events, astm.GarbageDiscarded)


def test_a_frame_of_e1381_is_not_taken_for_records() -> None:
    frame = astm.Frame(1, MESSAGE, True).to_bytes()
    events = read(ENQ + frame + EOT)
    assert not of_type(events, astm.MessageReceived)


# --- messages without their L record --------------------------------------------------------------


def test_message_without_l_is_delivered_after_idle_flush_seconds_of_silence() -> None:
    link = astm.UnframedLink(idle_flush=5.0)
    head = b"H|\\^&\rP|1\rR|1|^^^GLU|5"
    link.receive_data(head[:9], 10.0)
    assert link.get_timer() == 15.0 and link.state is astm.UnframedState.RECEIVING
    link.receive_data(head[9:], 12.0)
    assert link.get_timer() == 17.0  # silence counts from the last bytes
    link.handle_timer(16.9)
    assert drain(link) == []
    link.handle_timer(17.0)
    assert drain(link) == [
        astm.MessageReceived(b"H|\\^&\rP|1\rR|1|^^^GLU|5\r", head),
        astm.TransferEnded(),
    ]
    assert link.get_timer() is None and link.state is astm.UnframedState.IDLE
    assert link.busy  # the message awaits its answer
    link.acknowledge(17.0)
    assert not link.busy


def test_an_unterminated_l_line_at_the_deadline_completes_the_message() -> None:
    link = astm.UnframedLink(idle_flush=1.0)
    link.receive_data(b"H|\\^&\rL|1|N", 0.0)
    link.handle_timer(1.0)
    assert drain(link) == [astm.MessageReceived(b"H|\\^&\rL|1|N\r", b"H|\\^&\rL|1|N")]


def test_without_idle_flush_there_is_no_timer() -> None:
    link = astm.UnframedLink(idle_flush=None)
    link.receive_data(b"H|\\^&\rP|1\r", 0.0)
    assert link.get_timer() is None
    link.handle_timer(1e9)
    assert drain(link) == []
    link.flush(1e9)
    assert drain(link) == [
        astm.MessageReceived(b"H|\\^&\rP|1\r", b"H|\\^&\rP|1\r"),
        astm.TransferEnded(),
    ]


@pytest.mark.parametrize("end", [EOT, ENQ])
def test_eot_or_enq_delivers_a_message_without_l(end: bytes) -> None:
    events = read(b"H|\\^&\rP|1\r" + end + OTHER)
    assert events[:2] == [
        astm.MessageReceived(b"H|\\^&\rP|1\r", b"H|\\^&\rP|1\r"),
        astm.TransferEnded(),
    ]
    assert message_texts(events)[1] == OTHER
    assert not of_type(events, astm.GarbageDiscarded)


def test_a_new_h_record_delivers_the_message_before_it() -> None:
    events = read(b"H|\\^&\rP|1\r" + OTHER)
    assert events == [
        astm.MessageReceived(b"H|\\^&\rP|1\r", b"H|\\^&\rP|1\r"),
        astm.TransferEnded(),
        astm.MessageReceived(OTHER, OTHER),
    ]


def test_flush_reports_leftover_bytes_between_messages_as_garbage() -> None:
    link = astm.UnframedLink()
    feed(link, [MESSAGE + ENQ + b"part"])
    link.flush(0.0)
    assert drain(link) == [astm.GarbageDiscarded(ENQ + b"part")]
    link.flush(0.0)
    assert drain(link) == []


# --- max_message ----------------------------------------------------------------------------------


def test_a_message_over_max_message_is_refused_and_reading_resumes_at_the_next_h() -> None:
    big = b"H|\\^&\r" + b"R|1|" + b"9" * 400 + b"\rR|2|x\rL|1\r"
    events = read(big + MESSAGE, max_message=300)
    (rejected,) = of_type(events, astm.FrameRejected)
    assert rejected.raw == big[:300] and "300 bytes" in rejected.reason
    assert message_texts(events) == [MESSAGE]
    assert not of_type(events, astm.GarbageDiscarded)


def test_discarding_ends_at_eot() -> None:
    link = astm.UnframedLink(max_message=256)
    events = feed(link, [b"H|\\^&\r" + b"x" * 300, b"\rmore\r", EOT, b"junk\r"])
    assert [type(e) for e in events] == [
        astm.FrameRejected,
        astm.TransferEnded,
        astm.GarbageDiscarded,
    ]
    assert link.state is astm.UnframedState.IDLE


def test_the_buffer_stays_bounded_while_a_line_never_ends() -> None:
    link = astm.UnframedLink(max_message=1000)
    link.receive_data(b"H|\\^&|", 0.0)
    for _ in range(50):
        link.receive_data(b"y" * 100, 0.0)
    assert link.state is astm.UnframedState.DISCARDING
    assert len(link._buf) < 1000  # type: ignore[attr-defined]


# --- answers and sending --------------------------------------------------------------------------


@pytest.mark.parametrize(("ack_messages", "ack", "nak"), [(True, ACK, NAK), (False, b"", b"")])
def test_answers_are_bare_ack_and_nak_only_with_ack_messages(
    ack_messages: bool, ack: bytes, nak: bytes
) -> None:
    link = astm.UnframedLink(ack_messages=ack_messages)
    link.receive_data(MESSAGE + OTHER, 0.0)
    assert message_texts(drain(link)) == [MESSAGE, OTHER]
    assert link.data_to_send() == b""  # nothing before the application answers
    link.acknowledge(0.0)
    link.refuse(0.0)
    assert link.data_to_send() == ack + nak
    with pytest.raises(LocalProtocolError):
        link.acknowledge(0.0)


def test_acknowledge_without_a_message_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        astm.UnframedLink().refuse(0.0)


def test_send_message_writes_the_records_and_reports_them_sent() -> None:
    link = astm.UnframedLink()
    link.send_message(MESSAGE, 0.0)
    link.send_message(b"H|\\^&\nL|1", 0.0)
    assert link.data_to_send() == MESSAGE + b"H|\\^&\nL|1\r"
    assert drain(link) == [astm.MessageSent(), astm.MessageSent()]
    assert not link.busy


@pytest.mark.parametrize("text", [b"", b"H|\\^&\x02\r", b"H|\\^&\rL|1\x04"])
def test_send_message_refuses_empty_text_and_control_characters(text: bytes) -> None:
    with pytest.raises(LocalProtocolError):
        astm.UnframedLink().send_message(text, 0.0)


@pytest.mark.parametrize(
    "options", [{"idle_flush": 0.0}, {"idle_flush": -1.0}, {"max_message": 10}]
)
def test_impossible_settings_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(LocalProtocolError):
        astm.UnframedLink(**options)  # type: ignore[arg-type]


def test_an_ack_from_the_peer_after_our_message_is_ignored() -> None:
    link = astm.UnframedLink()
    link.send_message(MESSAGE, 0.0)
    assert feed(link, [ACK, OTHER]) == [astm.MessageSent(), astm.MessageReceived(OTHER, OTHER)]


# --- corpus ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [None, 7, 1])
@pytest.mark.parametrize("name", UNFRAMED_CORPUS)
def test_unframed_corpus_files_are_read_whole_and_in_pieces(name: str, size: int | None) -> None:
    data = record_text(name)
    events = feed(astm.UnframedLink(), chunked(data, size or len(data)))
    assert message_texts(events) == record_messages(name)
    assert not of_type(events, astm.GarbageDiscarded)
    for text in message_texts(events):
        astm.decode_message(text)


def test_beckman_dxh_scenario_with_enq_eot_wrappers_and_crlf() -> None:
    data = record_text("astm-beckman-dxh-1.txt").replace(b"\n", b"\r\n")
    wrapped = re.sub(rb"(?m)^H\|", ENQ + b"H|", data)
    wrapped = re.sub(rb"(?m)^(L\|.*\r\n)", rb"\1" + EOT, wrapped)
    events = read(wrapped)
    assert message_texts(events) == record_messages("astm-beckman-dxh-1.txt")
    assert len(of_type(events, astm.TransferEnded)) == len(message_texts(events))


# --- properties -----------------------------------------------------------------------------------

_RECORD = st.binary(max_size=30).map(
    lambda b: b"R|" + bytes(c for c in b if c not in b"\r\n\x02\x03\x04\x05\x06\x15\x17")
)
_SEP = st.sampled_from([b"\r", b"\n", b"\r\n", b"\r\x03\x02", b"\r\n\n"])


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """A stream of messages with mixed separators and wrappers, and their normalised texts."""
    out = bytearray()
    texts = []
    for _ in range(draw(st.integers(1, 4))):
        records = [b"H|\\^&|||X", *draw(st.lists(_RECORD, max_size=5)), b"L|1|N"]
        wrap = draw(st.sampled_from([(b"", b""), (ENQ, EOT), (ENQ + STX, ETX + EOT)]))
        out += wrap[0] + b"".join(r + draw(_SEP) for r in records[:-1])
        out += records[-1] + draw(st.sampled_from([b"\r", b"\n", b"\r\n"])) + wrap[1]
        texts.append(b"".join(r + b"\r" for r in records))
    return bytes(out), texts


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@FAST
@given(streams(), st.lists(st.integers(0, 10_000), max_size=30))
def test_any_chunking_gives_the_same_messages(
    stream: tuple[bytes, list[bytes]], points: list[int]
) -> None:
    data, texts = stream
    whole = read(data)
    assert message_texts(whole) == texts
    assert not of_type(whole, astm.GarbageDiscarded)
    assert feed(astm.UnframedLink(), cut(data, points)) == whole
    assert all(e.raw in data for e in of_type(whole, astm.MessageReceived))


@FAST
@given(
    st.lists(
        st.one_of(
            st.sampled_from([STX, ETX, EOT, ENQ, ACK, NAK, ETB, b"\r", b"\n", b"H|\\^&", b"L|1"]),
            st.binary(max_size=40),
        ),
        max_size=40,
    ),
    st.lists(st.integers(0, 10_000), max_size=20),
)
def test_arbitrary_bytes_give_the_same_events_however_cut(
    pieces: list[bytes], points: list[int]
) -> None:
    data = b"".join(pieces)
    whole = read(data, max_message=300)
    assert feed(astm.UnframedLink(max_message=300), cut(data, points)) == whole
    for event in whole:  # what events report are bytes of the stream, as they came
        if isinstance(event, astm.MessageReceived | astm.FrameRejected):
            assert event.raw in data
        elif isinstance(event, astm.GarbageDiscarded):
            assert event.data in data


@FAST
@given(
    st.lists(
        st.tuples(
            st.one_of(st.binary(max_size=30), st.sampled_from([MESSAGE, EOT, ENQ, b"H|\\^&\r"])),
            st.floats(0, 10),
            st.sampled_from("arsf"),
        ),
        max_size=30,
    ),
    st.booleans(),
)
def test_arbitrary_bytes_and_calls_only_ever_produce_events(
    steps: list[tuple[bytes, float, str]], ack_messages: bool
) -> None:
    link = astm.UnframedLink(ack_messages=ack_messages, idle_flush=3.0, max_message=256)
    now = 0.0
    unanswered = 0
    for data, pause, action in steps:
        now += pause
        link.handle_timer(now)
        link.receive_data(data, now)
        if action == "s":
            link.send_message(b"H|\\^&\rL|1\r", now)
        elif action == "f":
            link.flush(now)
        for event in drain(link):
            assert isinstance(event, astm.Event)
            unanswered += isinstance(event, astm.MessageReceived)
        while unanswered and action in "ar":
            (link.acknowledge if action == "a" else link.refuse)(now)
            unanswered -= 1
        link.data_to_send()
        timer = link.get_timer()
        assert timer is None or timer >= now
        assert link.state in astm.UnframedState
