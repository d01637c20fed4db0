"""Finding POCT1-A messages in a TCP stream: bare XML or MLLP, split or joined writes, garbage,
oversized messages and declarations, with properties over arbitrary chunkings."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import poct1a
from protocols.errors import LocalProtocolError, RemoteProtocolError

Item = bytes | tuple[bool, bytes] | str  # a bare message, (mllp, message), or "error"


def _drain(reader: poct1a.MessageReader) -> list[Item]:
    items: list[Item] = []
    while True:
        try:
            raw = reader.next_message()
        except RemoteProtocolError:
            items.append("error")
            continue
        if raw is None:
            return items
        items.append((True, raw.data) if raw.mllp else raw.data)


def _read(chunks: list[bytes], max_message: int = 4096) -> list[Item]:
    reader = poct1a.MessageReader(max_message)
    items: list[Item] = []
    for chunk in chunks:
        reader.receive_data(chunk)
        items += _drain(reader)
    return items


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


HELLO = poct1a.encode(poct1a.Hello(poct1a.Header("1"), device_id="D^1"))
STATUS = poct1a.encode(poct1a.DeviceStatus(poct1a.Header("2"), new_observations=3))
TRICKY = (
    b'<?xml version="1.0"?>\n<!-- a comment with </OBS.R01> and > inside -->'
    b'<OBS.R01 a="x>y" b=\'</z>\'><HDR><HDR.control_id V="3"/></HDR>'
    b"<SVC><![CDATA[ <not> </markup> ]]><?pi </SVC> ?></SVC></OBS.R01>"
)


def test_bare_messages_one_per_write() -> None:
    assert _read([HELLO, STATUS]) == [HELLO, STATUS]


def test_joined_and_split_writes_give_the_same_messages() -> None:
    stream = HELLO + STATUS + HELLO
    assert _read([stream]) == [HELLO, STATUS, HELLO]
    assert _read([bytes([b]) for b in stream]) == [HELLO, STATUS, HELLO]


def test_mllp_blocks_are_unwrapped_and_remembered() -> None:
    stream = poct1a.mllp_wrap(HELLO) + b"\r\n" + poct1a.mllp_wrap(STATUS) + STATUS
    assert _read([stream]) == [(True, HELLO), (True, STATUS), STATUS]


def test_markup_in_comments_attributes_cdata_and_pis_does_not_end_a_message() -> None:
    assert _read([TRICKY + HELLO]) == [TRICKY, HELLO]


def test_empty_root_and_byte_order_mark() -> None:
    assert _read([b"\xef\xbb\xbf<KPA.R01/>\n", b"\xef", b"\xbb\xbf", HELLO]) == [
        b"<KPA.R01/>",
        HELLO,
    ]


def test_garbage_between_messages_is_one_error_and_reading_goes_on() -> None:
    assert _read([b"hello?", HELLO, b"\x00\x01junk", STATUS]) == [
        "error",
        HELLO,
        "error",
        STATUS,
    ]
    reader = poct1a.MessageReader()
    reader.receive_data(b"noise" + HELLO)
    with pytest.raises(RemoteProtocolError, match="5 byte"):
        reader.next_message()
    assert reader.discarded == 5


def test_an_oversize_message_is_refused_and_skipped_without_holding_it() -> None:
    big = b'<OBS.R01><HDR><HDR.control_id V="9"/></HDR>' + b"<N>x</N>" * 200 + b"</OBS.R01>"
    reader = poct1a.MessageReader(max_message=256)
    for start in range(0, len(big), 100):
        reader.receive_data(big[start : start + 100])
        assert reader.buffered <= 256 + 100
    reader.receive_data(HELLO[:10])
    with pytest.raises(RemoteProtocolError, match="longer than 256"):
        reader.next_message()
    reader.receive_data(HELLO[10:])
    assert reader.next_message() == poct1a.RawMessage(HELLO)
    assert _read([big, HELLO], max_message=256) == ["error", HELLO]


def test_a_long_run_of_garbage_is_reported_every_max_message_bytes() -> None:
    assert _read([b"x" * 200], max_message=64) == ["error", "error", "error"]  # 3 x 64 bytes


@pytest.mark.parametrize(
    "doctype",
    [
        b'<!DOCTYPE x [<!ENTITY e "bomb">]>',
        b'<!DOCTYPE x SYSTEM "file:///etc/passwd">',
        b'<!ENTITY e "x">',
    ],
)
def test_declarations_are_refused_before_any_parser_sees_them(doctype: bytes) -> None:
    message = b'<?xml version="1.0"?>' + doctype + b'<DST.R01 a="&e;"><HDR/></DST.R01>'
    assert _read([message + HELLO]) == ["error", HELLO]


def test_mllp_bytes_inside_a_message_cut_it_short() -> None:
    cut_by_fs = b"\x0b" + HELLO[:40] + b"\x1c\r"
    cut_by_vt = b"\x0b" + STATUS[:30]
    assert _read([cut_by_fs, cut_by_vt, poct1a.mllp_wrap(HELLO)]) == [
        "error",
        "error",
        (True, HELLO),
    ]


def test_mllp_wrap_refuses_framing_bytes() -> None:
    with pytest.raises(LocalProtocolError):
        poct1a.mllp_wrap(b"<a>\x1c</a>")


# --- properties -----------------------------------------------------------------------------

_payloads = st.sampled_from([HELLO, STATUS, TRICKY, b"<KPA.R01/>"])
_separators = st.sampled_from([b"", b"\r\n", b" ", b"\n\n"])
_garbage = st.binary(min_size=1, max_size=30).filter(
    lambda data: data[0] not in b"<\x0b\x1c \t\r\n\xef" and b"<" not in data and b"\x0b" not in data
)


@st.composite
def _streams(draw: st.DrawFn) -> tuple[bytes, list[Item]]:
    """A stream of messages (bare or MLLP) with separators and garbage runs, and what a reader
    must find in it."""
    stream = b""
    expected: list[Item] = []
    for _ in range(draw(st.integers(1, 5))):
        if draw(st.booleans()):
            stream += draw(_garbage)
            expected.append("error")
        payload = draw(_payloads)
        if draw(st.booleans()):
            stream += poct1a.mllp_wrap(payload)
            expected.append((True, payload))
        else:
            stream += payload
            expected.append(payload)
        stream += draw(_separators)
    return stream, expected


@given(_streams(), st.lists(st.integers(0, 10_000), max_size=12))
def test_any_chunking_finds_the_same_messages_and_errors(
    case: tuple[bytes, list[Item]], cuts: list[int]
) -> None:
    stream, expected = case
    assert _read(_split(stream, cuts)) == expected


@given(st.binary(max_size=600), st.lists(st.integers(0, 1000), max_size=8))
def test_arbitrary_bytes_give_messages_or_errors_and_stay_bounded(
    data: bytes, cuts: list[int]
) -> None:
    reader = poct1a.MessageReader(max_message=128)
    whole = _read([data], max_message=128)
    items: list[Item] = []
    for chunk in _split(data, cuts):
        reader.receive_data(chunk)
        assert reader.buffered <= 128 + len(chunk) + 8
        items += _drain(reader)
    assert items == whole  # chunking never changes the outcome
    for item in items:
        raw = item[1] if isinstance(item, tuple) else item
        if isinstance(raw, bytes):
            assert len(raw) <= 128 and raw.startswith(b"<")


@given(
    st.lists(st.integers(0, 100_000), max_size=6),
    st.integers(64, 400),
)
def test_oversize_streams_under_any_chunking(cuts: list[int], limit: int) -> None:
    big = b'<OBS.R01><HDR><HDR.control_id V="9"/></HDR>' + b'<N a="&gt;">x</N>' * 60 + b"</OBS.R01>"
    stream = HELLO + big + STATUS
    expected: list[Item] = [HELLO if len(HELLO) <= limit else "error", "error"]
    expected.append(STATUS if len(STATUS) <= limit else "error")
    assert _read(_split(stream, cuts), max_message=limit) == expected


_tokens = st.sampled_from(
    [b"<", b">", b"/", b'"', b"'", b"<!--", b"-->", b"<?", b"?>", b"<![CDATA[", b"]]>", b"<!D",
     b"a", b"B.R01", b" ", b"\x0b", b"\x1c\r", b"\xef\xbb\xbf", b"</", b"/>", b"=", b"x" * 40]
)  # fmt: skip


@given(st.lists(_tokens, max_size=60), st.lists(st.integers(0, 3000), max_size=8))
def test_markup_soup_is_read_the_same_under_any_chunking(
    tokens: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(tokens)
    reader = poct1a.MessageReader(max_message=96)
    items: list[Item] = []
    for chunk in _split(data, cuts):
        reader.receive_data(chunk)
        assert reader.buffered <= 96 + len(chunk) + 8
        items += _drain(reader)
    assert items == _read([data], max_message=96)
