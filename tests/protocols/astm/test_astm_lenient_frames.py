"""`Link(..., lenient_frames=True)`: frames without frame number and/or checksum (Maglumi style,
PROTOCOLS.md §1.5) are accepted only when asked for; by default they are refused with NAK."""

from __future__ import annotations

import pytest
from astm_helpers import drive, message_texts, of_type

from protocols import astm
from protocols.errors import RemoteProtocolError

STX, ETX, EOT, ENQ, ACK, NAK, ETB = b"\x02", b"\x03", b"\x04", b"\x05", b"\x06", b"\x15", b"\x17"
MESSAGE = (
    b"H|\\^&|||Maglumi 2000|||||||P|E1394-97|20240101\rP|1\rO|1|S1||^^^TSH\rR|1|^^^TSH|1.2\rL|1|N\r"
)


def frame(text: bytes, *, number: int | None, checksum: bool, final: bool = True) -> bytes:
    body = (b"" if number is None else b"%d" % number) + text + (ETX if final else ETB)
    return STX + body + (astm.checksum(body) if checksum else b"") + b"\r\n"


KINDS = {
    "no frame number": {"number": None, "checksum": True},
    "no checksum": {"number": 1, "checksum": False},
    "neither (Maglumi)": {"number": None, "checksum": False},
}


@pytest.mark.parametrize("kind", KINDS)
def test_strict_link_refuses_such_frames_with_nak(kind: str) -> None:
    link = astm.Link(astm.Role.HOST)
    events = drive(link, [ENQ, frame(MESSAGE, **KINDS[kind])])  # type: ignore[arg-type]
    assert not message_texts(events)
    (rejected,) = of_type(events, astm.FrameRejected)
    assert ("frame number" if kind == "no frame number" else "checksum") in rejected.reason
    assert link.data_to_send() == ACK + NAK


@pytest.mark.parametrize("kind", KINDS)
def test_lenient_link_accepts_them(kind: str) -> None:
    link = astm.Link(astm.Role.HOST, lenient_frames=True)
    events = drive(link, [ENQ, frame(MESSAGE, **KINDS[kind]), EOT])  # type: ignore[arg-type]
    assert message_texts(events) == [MESSAGE]
    assert not of_type(events, astm.FrameRejected)
    assert link.data_to_send() == ACK + ACK
    assert events[-1] == astm.TransferEnded()


def test_lenient_link_still_refuses_a_wrong_checksum_and_a_wrong_frame_number() -> None:
    good = frame(MESSAGE, number=1, checksum=True)
    bad_checksum = good[:-4] + (b"00" if good[-4:-2] != b"00" else b"01") + b"\r\n"
    link = astm.Link(astm.Role.HOST, lenient_frames=True)
    events = drive(link, [ENQ, bad_checksum, frame(MESSAGE, number=3, checksum=False)])
    reasons = [r.reason for r in of_type(events, astm.FrameRejected)]
    assert len(reasons) == 2
    assert "checksum" in reasons[0] and "frame number 3, expected 1" in reasons[1]
    assert link.data_to_send() == ACK + NAK + NAK


def test_maglumi_session_with_intermediate_frames_and_a_stray_eot() -> None:
    records = MESSAGE.split(b"\r")
    parts = [b"\r".join(records[:2]) + b"\r", records[2] + b"\r", b"\r".join(records[3:])]
    wire = [
        EOT,  # stray EOT before ENQ (heldout Maglumi log)
        ENQ,
        frame(parts[0], number=None, checksum=False, final=False),
        frame(parts[1], number=None, checksum=False, final=False),
        frame(parts[2], number=None, checksum=False),
        EOT,
        ENQ,
        frame(b"H|\\^&\rL|1|N\r", number=None, checksum=False),
        EOT,
    ]
    link = astm.Link(astm.Role.HOST, lenient_frames=True)
    events = drive(link, wire)
    assert message_texts(events) == [MESSAGE, b"H|\\^&\rL|1|N\r"]
    assert of_type(events, astm.GarbageDiscarded) == [astm.GarbageDiscarded(EOT)]
    assert not of_type(events, astm.FrameRejected)


def test_without_frame_numbers_a_resent_frame_is_delivered_again() -> None:
    # Documented cost of the option: nothing tells a retransmission from a new frame.
    no_fn = frame(MESSAGE, number=None, checksum=False)
    events = drive(astm.Link(astm.Role.HOST, lenient_frames=True), [ENQ, no_fn, no_fn, EOT])
    assert message_texts(events) == [MESSAGE, MESSAGE]


def test_lenient_link_still_checks_numbered_frames_for_duplicates() -> None:
    numbered = frame(MESSAGE, number=1, checksum=False)
    events = drive(astm.Link(astm.Role.HOST, lenient_frames=True), [ENQ, numbered, numbered])
    assert message_texts(events) == [MESSAGE]
    assert len(of_type(events, astm.DuplicateFrameIgnored)) == 1


def test_frame_from_bytes_checksum_optional() -> None:
    raw = frame(b"H|\\^&\r", number=2, checksum=False)
    with pytest.raises(RemoteProtocolError, match="checksum"):
        astm.Frame.from_bytes(raw)
    assert astm.Frame.from_bytes(raw, checksum_required=False) == astm.Frame(2, b"H|\\^&\r", True)
    with pytest.raises(RemoteProtocolError, match="after"):
        astm.Frame.from_bytes(raw[:-2] + b"X\r\n", checksum_required=False)
    corrupted = frame(b"H|\\^&\r", number=2, checksum=True).replace(b"H", b"I")
    with pytest.raises(RemoteProtocolError, match="bad checksum"):
        astm.Frame.from_bytes(corrupted, checksum_required=False)


def test_link_pair_with_lenient_receivers_still_works_with_strict_frames() -> None:
    from astm_helpers import LinkPair

    pair = LinkPair()
    pair.host = astm.Link(astm.Role.HOST, lenient_frames=True)
    pair.instrument.send_message(MESSAGE, pair.now)
    pair.run()
    assert message_texts(pair.host_events) == [MESSAGE]
