"""Property tests (hypothesis) for the ASTM frames, link and records."""

from __future__ import annotations

import itertools
from decimal import Decimal

from astm_helpers import LinkPair, drive, message_texts, of_type
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from protocols import astm
from protocols.errors import RemoteProtocolError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

STX, ETX, EOT, ENQ, ACK, NAK, ETB = b"\x02", b"\x03", b"\x04", b"\x05", b"\x06", b"\x15", b"\x17"

# --- records --------------------------------------------------------------------------------------

_DELIMITER_CHARS = "|\\^&!~@#$%*+/;:?<>=`'\"{}[]"


@st.composite
def delimiters(draw: st.DrawFn) -> astm.Delimiters:
    chars = draw(st.permutations(_DELIMITER_CHARS).map(lambda p: p[:4]))
    return astm.Delimiters(*chars)


# data: any latin-1 character but CR and LF (the record separators)
_DATA = st.text(
    st.characters(min_codepoint=0, max_codepoint=255, blacklist_characters="\r\n"), max_size=12
)
_FIELD = st.lists(st.lists(_DATA, min_size=1, max_size=3).map(tuple), min_size=1, max_size=3).map(
    tuple
)


@st.composite
def messages(draw: st.DrawFn) -> astm.Message:
    d = draw(delimiters())
    header_fields = draw(st.lists(_FIELD, max_size=12))
    header = astm.Record("H", ((("H",),), ((d.definition,),), *header_fields))
    others = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from("PORCQMSL"))
        fields = draw(st.lists(_FIELD, max_size=10))
        others.append(astm.Record(kind, (((kind,),), *fields)))
    return astm.Message((header, *others), d)


@FAST
@given(messages())
def test_decode_of_encode_gives_the_message_back(message: astm.Message) -> None:
    assert astm.decode_message(astm.encode_message(message)) == message


@FAST
@given(messages(), st.integers(1, 14), st.integers(1, 5))
def test_reading_one_component_gives_what_splitting_every_field_gives(
    message: astm.Message, n: int, c: int
) -> None:
    text = astm.encode_message(message)
    lazy, whole = astm.decode_message(text), astm.decode_message(text)
    for one, every in zip(lazy.records, whole.records, strict=True):
        fields = every.fields
        first = fields[n - 1][0] if n <= len(fields) else ()
        assert one.component(n, c) == (first[c - 1] if c <= len(first) else "")
        assert one.repeats(n) == (fields[n - 1] if n <= len(fields) else ())
        assert one == every


@FAST
@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_to_a_message_or_a_remote_error(data: bytes) -> None:
    for text in (data, b"H|\\^&\r" + data):
        try:
            message = astm.decode_message(text)
        except RemoteProtocolError:
            continue
        assert message.records[0].type == "H"


@FAST
@given(st.text(alphabet="HPRL|\\^&~!\r\n x1", max_size=200))
def test_delimiter_soup_decodes_to_a_message_or_a_remote_error(text: str) -> None:
    try:
        astm.decode_message(text.encode(), "utf-8")
    except RemoteProtocolError:
        pass


@FAST
@given(st.text(max_size=40))
def test_parse_value_never_raises_and_keeps_the_raw_text(raw: str) -> None:
    parsed = astm.parse_value(raw)
    assert parsed.raw == raw
    assert (parsed.number is None) <= (parsed.comparator is None)


@FAST
@given(
    st.sampled_from(["", "<", ">", "<=", ">="]),
    st.decimals(allow_nan=False, allow_infinity=False, places=3),
    st.text(" ", max_size=3),
)
def test_parse_value_reads_numbers_with_comparators(
    comparator: str, number: Decimal, padding: str
) -> None:
    parsed = astm.parse_value(f"{padding}{comparator}{padding}{number}{padding}")
    assert parsed.number == number
    assert parsed.comparator == (comparator or None)


# --- link -----------------------------------------------------------------------------------------

_RESTRICTED = b"\x01\x02\x03\x04\x05\x06\x10\x11\x12\x13\x14\x15\x16\x17\n"
_TEXT = st.binary(min_size=1, max_size=700).map(
    lambda b: bytes(c for c in b if c not in _RESTRICTED) or b"x"
)


def framed_stream(texts: list[bytes], max_text: int) -> bytes:
    """What an instrument puts on the wire for `texts` when every frame is accepted."""
    out = bytearray(ENQ)
    number = 1
    for text in texts:
        parts = astm.split_text(text, max_text)
        for i, part in enumerate(parts):
            out += astm.Frame(number, part, i == len(parts) - 1).to_bytes()
            number = (number + 1) % 8
    return bytes(out + EOT)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@FAST
@given(
    st.lists(_TEXT, min_size=1, max_size=4),
    st.integers(1, 300),
    st.lists(st.integers(0, 10_000), max_size=40),
    st.lists(st.tuples(st.integers(0, 10_000), st.binary(min_size=1, max_size=3)), max_size=3),
    st.booleans(),
)
def test_any_chunking_of_a_stream_gives_the_same_events(
    texts: list[bytes],
    max_text: int,
    points: list[int],
    noise: list[tuple[int, bytes]],
    lenient: bool,
) -> None:
    stream = bytearray(framed_stream(texts, max_text))
    for position, junk in noise:  # noise and damage: the events must still not depend on cuts
        stream[position % len(stream) : position % len(stream)] = junk
    whole = drive(astm.Link(astm.Role.HOST, lenient_frames=lenient), [bytes(stream)])
    pieces = cut(bytes(stream), points)
    assert drive(astm.Link(astm.Role.HOST, lenient_frames=lenient), pieces) == whole
    if not noise:
        assert message_texts(whole) == texts


def raw_frame(number: int, text: bytes, final: bool) -> bytes:
    """A frame with a right checksum, whatever its text holds."""
    body = b"%d" % number + text + (ETX if final else ETB)
    return STX + body + astm.checksum(body) + b"\r\n"


_WIRE_PIECES = st.one_of(
    st.sampled_from([STX, ETX, EOT, ENQ, ACK, NAK, ETB, b"\r", b"\n", b"1", b"A"]),
    st.binary(max_size=12),
    st.builds(
        raw_frame,
        st.integers(0, 7),
        st.binary(max_size=20).map(lambda b: b.replace(b"\x03", b"").replace(b"\x17", b"")),
        st.booleans(),
    ),
)


@FAST
@given(
    st.sampled_from(list(astm.Role)),
    st.lists(st.tuples(_WIRE_PIECES, st.floats(0, 40), st.sampled_from("aro")), max_size=40),
    st.booleans(),
    st.booleans(),
)
def test_arbitrary_bytes_only_ever_produce_events(
    role: astm.Role, steps: list[tuple[bytes, float, str]], queued: bool, lenient: bool
) -> None:
    link = astm.Link(role, max_frame=64, lenient_frames=lenient)
    now = 0.0
    if queued:
        link.send_message(b"H|\\^&\rL|1\r", now)
    for data, pause, answer in steps:
        now += pause
        link.handle_timer(now)
        link.receive_data(data, now)
        while (event := link.next_event()) is not None:
            assert isinstance(event, astm.Event)
            if isinstance(event, astm.MessageReceived):
                if answer == "a":
                    link.acknowledge(now)
                elif answer == "r":
                    link.refuse(now)
        if answer == "o" and queued:
            link.send_message(b"H|\\^&\rL|2\r", now)
        link.data_to_send()
        timer = link.get_timer()
        assert timer is None or timer >= now
        assert link.state in astm.LinkState


@FAST
@given(
    st.lists(_TEXT, min_size=1, max_size=3),
    st.integers(20, 240),
    st.sets(st.integers(0, 40), max_size=5),
    st.sets(st.integers(0, 40), max_size=5),
)
def test_damaged_frames_and_acks_still_deliver_each_message_once_in_order(
    texts: list[bytes], max_text: int, bad_frames: set[int], bad_acks: set[int]
) -> None:
    assume(len(bad_frames) + len(bad_acks) < 6)  # six failures on one frame abort the message
    counts = {"frames": -1, "acks": -1}

    def tamper(direction: str, data: bytes) -> bytes:
        if direction == "i>h" and data.startswith(STX):
            counts["frames"] += 1
            if counts["frames"] in bad_frames:
                return data[:1] + bytes([data[1] ^ 0x40]) + data[2:]
        if direction == "h>i" and data == ACK:
            counts["acks"] += 1
            if counts["acks"] in bad_acks:
                return b"\xff"
        return data

    pair = LinkPair(tamper=tamper, max_text=max_text)
    for text in texts:
        pair.instrument.send_message(text, pair.now)
    pair.run()
    assert message_texts(pair.host_events) == texts
    assert len(of_type(pair.instrument_events, astm.MessageSent)) == len(texts)
    # a damaged ACK to ENQ costs a failed establishment, never the message
    assert not any(f.dropped for f in of_type(pair.instrument_events, astm.MessageFailed))


def without_repeats(texts: list[bytes]) -> list[bytes]:
    return [t for i, t in enumerate(texts) if i == 0 or texts[i - 1] != t]


@FAST
@given(
    st.lists(st.tuples(st.booleans(), _TEXT, st.floats(0, 50)), min_size=1, max_size=6),
    st.integers(20, 240),
    st.sets(st.integers(0, 60), max_size=4),
)
def test_both_sides_sending_at_once_deliver_everything_in_order(
    plan: list[tuple[bool, bytes, float]], max_text: int, damaged: set[int]
) -> None:
    count = [-1]

    def tamper(direction: str, data: bytes) -> bytes:
        count[0] += 1
        if count[0] in damaged:
            return bytes([data[0] ^ 0x40]) + data[1:]
        return data

    pair = LinkPair(tamper=tamper, max_text=max_text)
    sent: dict[bool, list[bytes]] = {True: [], False: []}
    for i, (from_host, text, pause) in enumerate(plan):
        pair.advance(pause)
        unique = b"%d|" % i + text
        (pair.host if from_host else pair.instrument).send_message(unique, pair.now)
        sent[from_host].append(unique)
        pair.pump()
    pair.run()
    received = {True: message_texts(pair.instrument_events), False: message_texts(pair.host_events)}
    for side in (True, False):
        if not damaged:
            assert received[side] == sent[side]
        else:
            # E1381 is at-least-once: when an ACK and then the retransmission are both lost,
            # the sender's reply timer expires and the whole message is sent again.
            assert without_repeats(received[side]) == sent[side]
