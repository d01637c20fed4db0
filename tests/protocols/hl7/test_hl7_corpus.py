"""Real captures from tests/data/hl7 (see its INDEX.md): Erba ELite 580 log, GHH LAB sample.

The Erba file is a host-side log, not a byte stream: control characters are mostly text
escapes (``[VT]``, ``[CR]``, ``[FS]``), the host's ACKs are plain log lines (CRLF) with a
real 0x1C on a line of its own, and in places a chunk of one message is logged after the
next message's start.  The helpers below turn it into bytes; the tests then check what
is sensible: every intact ORU parses, every host ACK parses and acknowledges an ORU of the
log, and the whole log through the framer gives messages or RemoteProtocolError only.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from protocols import hl7 as v2
from protocols.errors import RemoteProtocolError

DATA = Path(__file__).resolve().parents[2] / "data" / "hl7"
ERBA = DATA / "hl7-erba-elite580-oru-r01.txt"
GHH = DATA / "hl7-ghh-lab-oru-r01.txt"

_ESCAPES = {b"[VT]": b"\x0b", b"[CR]": b"\r", b"[FS]": b"\x1c", b"[LF]": b"\n"}


def unescape_log(text: bytes) -> bytes:
    """Replace the log's text escapes with the control bytes they stand for."""
    for escape, byte in _ESCAPES.items():
        text = text.replace(escape, byte)
    return text


def erba_lines() -> list[bytes]:
    return ERBA.read_bytes().split(b"\r\n")


def erba_intact_orus() -> list[bytes]:
    """ORU payloads from log lines holding exactly one whole block and nothing else."""
    payloads = []
    for line in erba_lines():
        if (
            line.startswith(b"[VT]MSH|")
            and line.endswith(b"[FS][CR]")
            and line.count(b"[VT]") == 1
            and line.count(b"[FS]") == 1
        ):
            framer = v2.MllpFramer()
            framer.receive_data(unescape_log(line))
            payload = framer.next_message()
            assert payload is not None and framer.discarded == 0
            payloads.append(payload)
    return payloads


def erba_host_acks() -> list[bytes]:
    """Host ACKs: an ``MSH|...|ACK^...`` log line joined by CR to the ``MSA|`` line after it."""
    lines = erba_lines()
    return [
        line + b"\r" + following + b"\r"
        for line, following in itertools.pairwise(lines)
        if line.startswith(b"MSH|") and b"|ACK^" in line and following.startswith(b"MSA|")
    ]


def erba_oru_control_ids() -> set[str]:
    """MSH-10 of every ORU started in the log, intact or not."""
    ids = set()
    for chunk in unescape_log(ERBA.read_bytes()).split(b"\x0b")[1:]:
        if chunk.startswith(b"MSH|") and b"|ORU^R01|" in chunk[:120]:
            ids.add(v2.message_control_id(chunk))
    return ids


def test_log_helpers_find_what_the_index_announces() -> None:
    assert len(erba_oru_control_ids()) == 95
    assert len(erba_host_acks()) == 87
    assert len(erba_intact_orus()) == 53


def test_erba_host_acks_parse() -> None:
    oru_ids = erba_oru_control_ids()
    for raw in erba_host_acks():
        ack = v2.parse_ack(raw)
        assert ack.code == "AA"
        assert ack.text == "Message Accepted"
        assert ack.acknowledged_control_id in oru_ids
        assert ack.control_id == ack.acknowledged_control_id  # this host reuses the id
        assert ack.raw == raw


def test_erba_host_ack_with_real_lf_separators() -> None:
    raw = erba_host_acks()[0].replace(b"\r", b"\r\n")
    assert v2.parse_ack(raw).code == "AA"


def test_erba_intact_orus_parse() -> None:
    acknowledged = {v2.parse_ack(raw).acknowledged_control_id for raw in erba_host_acks()}
    for payload in erba_intact_orus():
        oru = v2.parse_oru(payload)
        assert oru.sending_application == "ELite 580"
        assert oru.sending_facility == "Erba"
        assert oru.version == "2.3.1"
        assert len(oru.control_id) == 32
        assert oru.created_at is not None and oru.created_at.tzinfo is None
        assert len(oru.observations) >= 6  # a few blocks were cut short in the log
        assert all(
            o.specimen_id and o.specimen_id == oru.observations[0].specimen_id
            for o in oru.observations
        )
        if len(oru.observations) >= 36:  # not one of the cut-short blocks
            assert all(o.status == "F" for o in oru.observations)
        assert {o.value_type for o in oru.observations} <= {"NM", "IS"}
    counts = [len(v2.parse_oru(p).observations) for p in erba_intact_orus()]
    assert sum(count >= 36 for count in counts) >= 45
    acked = [v2.parse_oru(p).control_id in acknowledged for p in erba_intact_orus()]
    assert sum(acked) >= len(acked) - 2  # the log lost a few ACK lines


def test_erba_observation_details() -> None:
    payload = next(p for p in erba_intact_orus() if b"031416ea" in p or b"ac84fae4" in p)
    oru = v2.parse_oru(payload)
    assert oru.control_id == "ac84fae48b0e475996af764673f793fb"
    by_code = {o.code: o for o in oru.observations}
    wbc = by_code["6690-2"]
    assert (wbc.text, wbc.coding_system) == ("WBC", "LN")
    assert (wbc.value, wbc.units, wbc.reference_range) == ("6.75", "10*3/uL", "4.00-10.00")
    assert wbc.abnormal_flags == ("", "N")  # OBX-8 "~N": flag repetition plus alarm marker
    assert wbc.specimen_id == "25059143"  # OBR-3, filler order number
    assert wbc.test_code == "01001"
    assert by_code["02003"].value == "CBC+DIFF"
    assert by_code["30525-0"].value == ""  # empty NM (Age)


@pytest.mark.parametrize("chunk_size", [1, 7, 4096, 1 << 20])
def test_whole_erba_log_through_the_framer(chunk_size: int) -> None:
    """Log line ends read as CR; the ACK lines have no VT, so the framer discards them."""
    stream = unescape_log(ERBA.read_bytes().replace(b"\r\n", b"\r"))
    framer = v2.MllpFramer()
    payloads = []
    for start in range(0, len(stream), chunk_size):
        framer.receive_data(stream[start : start + chunk_size])
        while (payload := framer.next_message()) is not None:
            payloads.append(payload)
    assert len(payloads) == 95
    parsed, refused = 0, 0
    for payload in payloads:
        try:
            v2.parse_oru(payload)
            parsed += 1
        except RemoteProtocolError:
            refused += 1  # spliced log lines put result text where OBX-14 belongs
    assert parsed >= 53
    assert parsed + refused == 95
    assert framer.discarded > 0


def ghh_message() -> bytes:
    """The GHH sample without its ``#`` comment lines, ``<cr>`` as CR (LF line ends kept)."""
    lines = GHH.read_bytes().splitlines(keepends=True)
    kept = b"".join(line for line in lines if not line.startswith(b"#") and line.strip())
    return kept.replace(b"<cr>", b"\r")


def test_ghh_lab_sample_parses() -> None:
    oru = v2.parse_oru(ghh_message())
    assert (oru.control_id, oru.sending_application, oru.sending_facility) == (
        "CNTRL-3456",
        "GHH LAB",
        "ELAB-3",
    )
    assert oru.version == "2.4"
    [glucose] = oru.observations
    assert glucose.patient_id == "555-44-4444"
    assert glucose.specimen_id == "845439"  # OBR-2, placer order number
    assert glucose.test_code == "15545"
    assert (glucose.code, glucose.text) == ("1554-5", "GLUCOSE")
    assert glucose.value_type == "SN"
    assert glucose.value == "^182"  # structured numeric kept in ER7 form
    assert (glucose.units, glucose.reference_range) == ("mg/dl", "70_105")
    assert glucose.abnormal_flags == ("H",)
    assert glucose.status == "F"


def test_ghh_lab_sample_can_be_acknowledged() -> None:
    from datetime import UTC, datetime

    ack = v2.parse_ack(v2.build_ack(ghh_message(), "AA", "LIS1", datetime(2002, 2, 15, tzinfo=UTC)))
    assert ack.acknowledged_control_id == "CNTRL-3456"
    assert v2.message_control_id(ghh_message()) == "CNTRL-3456"
