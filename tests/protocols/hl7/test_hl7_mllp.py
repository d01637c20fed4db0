"""MLLP framing: chunking, noise between blocks, restarts and oversize blocks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from protocols import hl7 as v2
from protocols.errors import LocalProtocolError, RemoteProtocolError

MSG_A = b"MSH|^~\\&|A|B|C|D|20250101000000||ACK^R01^ACK|1|P|2.5.1\rMSA|AA|1\r"
MSG_B = b"MSH|^~\\&|A|B|C|D|20250101000000||ACK^R01^ACK|2|P|2.5.1\rMSA|AE|2|bad\r"


def chunks(data: bytes, split: str) -> Iterator[bytes]:
    """The same stream as one read, two halves, or one byte per read."""
    if split == "whole":
        yield data
    elif split == "half":
        yield data[: len(data) // 2]
        yield data[len(data) // 2 :]
    else:
        for i in range(len(data)):
            yield data[i : i + 1]


def drain(framer: v2.MllpFramer) -> list[bytes]:
    out = []
    while (message := framer.next_message()) is not None:
        out.append(message)
    return out


def feed(data: bytes, split: str, **kwargs: int) -> tuple[v2.MllpFramer, list[bytes]]:
    framer = v2.MllpFramer(**kwargs)
    received: list[bytes] = []
    for chunk in chunks(data, split):
        framer.receive_data(chunk)
        received.extend(drain(framer))
    return framer, received


SPLITS = ["whole", "half", "bytewise"]


def test_mllp_frame_wraps_payload() -> None:
    assert v2.mllp_frame(b"MSH|x") == b"\x0bMSH|x\x1c\r"
    assert v2.START_BLOCK == b"\x0b"
    assert v2.END_BLOCK == b"\x1c\r"


@pytest.mark.parametrize("bad", [b"a\x0bb", b"a\x1cb"])
def test_mllp_frame_refuses_payload_that_would_break_framing(bad: bytes) -> None:
    with pytest.raises(LocalProtocolError):
        v2.mllp_frame(bad)


@pytest.mark.parametrize("split", SPLITS)
def test_two_blocks_any_chunking(split: str) -> None:
    framer, received = feed(v2.mllp_frame(MSG_A) + v2.mllp_frame(MSG_B), split)
    assert received == [MSG_A, MSG_B]
    assert framer.discarded == 0
    assert framer.buffered == 0


def test_nothing_until_block_complete() -> None:
    framer = v2.MllpFramer()
    framed = v2.mllp_frame(MSG_A)
    framer.receive_data(framed[:-2])
    assert framer.next_message() is None
    assert framer.buffered == len(MSG_A)
    framer.receive_data(framed[-2:])
    assert framer.next_message() == MSG_A
    assert framer.next_message() is None


@pytest.mark.parametrize("split", SPLITS)
def test_garbage_between_blocks_is_discarded_and_counted(split: str) -> None:
    noise1, noise2, noise3 = b"\r\nnoise", b"\x06\x15 junk \x1c\r", b"tail"
    stream = noise1 + v2.mllp_frame(MSG_A) + noise2 + v2.mllp_frame(MSG_B) + noise3
    framer, received = feed(stream, split)
    assert received == [MSG_A, MSG_B]
    assert framer.discarded == len(noise1) + len(noise2) + len(noise3)


@pytest.mark.parametrize("split", SPLITS)
def test_block_ended_by_fs_alone_is_delivered(split: str) -> None:
    stream = b"\x0b" + MSG_A + b"\x1c" + v2.mllp_frame(MSG_B)
    framer, received = feed(stream, split)
    assert received == [MSG_A, MSG_B]
    assert framer.discarded == 0


def test_message_delivered_on_fs_before_its_cr_arrives() -> None:
    framer = v2.MllpFramer()
    framer.receive_data(b"\x0b" + MSG_A + b"\x1c")
    assert framer.next_message() == MSG_A
    framer.receive_data(b"\r")
    assert framer.discarded == 0


@pytest.mark.parametrize("split", SPLITS)
def test_start_of_block_inside_block_restarts(split: str) -> None:
    partial = b"\x0bMSH|^~\\&|cut short"
    framer, received = feed(partial + v2.mllp_frame(MSG_A), split)
    assert received == [MSG_A]
    assert framer.discarded == len(partial)


@pytest.mark.parametrize("split", SPLITS)
def test_oversize_block_raises_once_and_resynchronises(split: str) -> None:
    big = b"x" * 300
    stream = v2.mllp_frame(MSG_A) + v2.mllp_frame(big) + v2.mllp_frame(MSG_B)
    framer = v2.MllpFramer(max_message=200)
    received: list[bytes] = []
    errors = 0
    for chunk in chunks(stream, split):
        framer.receive_data(chunk)
        assert framer.buffered <= 200
        while True:
            try:
                message = framer.next_message()
            except RemoteProtocolError as exc:
                assert "200" in str(exc)
                errors += 1
                received.append(b"<error>")
                continue
            if message is None:
                break
            received.append(message)
    assert received == [MSG_A, b"<error>", MSG_B]
    assert errors == 1
    assert framer.discarded == len(big) + 3
    assert framer.next_message() is None


def test_oversize_block_without_end_keeps_buffer_bounded() -> None:
    framer = v2.MllpFramer(max_message=1000)
    framer.receive_data(b"\x0b")
    for _ in range(100):
        framer.receive_data(b"y" * 4096)
        assert framer.buffered <= 1000
    with pytest.raises(RemoteProtocolError):
        framer.next_message()
    assert framer.next_message() is None
    framer.receive_data(v2.mllp_frame(MSG_A))
    assert framer.next_message() == MSG_A
    assert framer.discarded == 1 + 100 * 4096


def test_payload_of_exactly_max_message_is_accepted() -> None:
    framer = v2.MllpFramer(max_message=len(MSG_A))
    framer.receive_data(v2.mllp_frame(MSG_A))
    assert framer.next_message() == MSG_A
    assert framer.max_message == len(MSG_A)


def test_max_message_must_be_positive() -> None:
    with pytest.raises(LocalProtocolError):
        v2.MllpFramer(max_message=0)


def test_empty_block_is_an_empty_payload() -> None:
    framer = v2.MllpFramer()
    framer.receive_data(b"\x0b\x1c\r")
    assert framer.next_message() == b""
