from __future__ import annotations

import re

import pytest
from astm_helpers import LinkPair, drive, message_texts, of_type

from protocols import astm
from protocols.errors import LocalProtocolError

STX, ETX, EOT, ENQ, ACK, NAK, ETB = b"\x02", b"\x03", b"\x04", b"\x05", b"\x06", b"\x15", b"\x17"

MESSAGE = b"H|\\^&|||XN-550\rP|1\rO|1|S1||^^^GLU\rR|1|^^^GLU|5.5|mmol/L\rL|1|N\r"


def frame(number: int, text: bytes, final: bool = True) -> bytes:
    return astm.Frame(number, text, final).to_bytes()


def frames_in(data: bytes) -> list[astm.Frame]:
    """The frames in what one side sent."""
    return [
        astm.Frame.from_bytes(m) for m in re.findall(rb"\x02[^\x03\x17]*[\x03\x17]..\r\n", data)
    ]


def corrupt(raw: bytes) -> bytes:
    """Flip one bit of the frame's text so that its checksum fails."""
    return raw[:2] + bytes([raw[2] ^ 0x20]) + raw[3:]


def events(link: astm.Link) -> list[astm.Event]:
    out = []
    while (event := link.next_event()) is not None:
        out.append(event)
    return out


def state(link: astm.Link) -> astm.LinkState:
    """The link's state, read afresh (keeps mypy from narrowing across calls)."""
    return link.state


def receiving_host(now: float = 0.0) -> astm.Link:
    host = astm.Link(astm.Role.HOST)
    host.receive_data(ENQ, now)
    assert host.data_to_send() == ACK
    assert events(host) == [astm.TransferStarted()]
    return host


def sending_instrument(*texts: bytes) -> astm.Link:
    link = astm.Link(astm.Role.INSTRUMENT)
    for text in texts:
        link.send_message(text, 0.0)
    assert link.data_to_send() == ENQ
    link.receive_data(ACK, 0.0)
    return link


# --- round trips ----------------------------------------------------------------------------


def test_instrument_message_reaches_host_unchanged() -> None:
    pair = LinkPair()
    pair.instrument.send_message(MESSAGE, pair.now)
    pair.pump()
    assert message_texts(pair.host_events) == [MESSAGE]
    assert pair.host_events[0] == astm.TransferStarted()
    assert pair.host_events[-1] == astm.TransferEnded()
    assert of_type(pair.instrument_events, astm.MessageSent) == [astm.MessageSent()]
    assert pair.host.state is pair.instrument.state is astm.LinkState.NEUTRAL
    assert not pair.host.busy and not pair.instrument.busy


def test_host_message_reaches_instrument_unchanged() -> None:
    pair = LinkPair()
    pair.host.send_message(MESSAGE, pair.now)
    pair.pump()
    assert message_texts(pair.instrument_events) == [MESSAGE]
    assert of_type(pair.host_events, astm.MessageSent) == [astm.MessageSent()]


def test_raw_holds_the_received_frames() -> None:
    pair = LinkPair()
    pair.instrument.send_message(MESSAGE, pair.now)
    pair.pump()
    (received,) = of_type(pair.host_events, astm.MessageReceived)
    assert received.raw == frame(1, MESSAGE)[:-1]  # STX .. CR; the LF is the frame's trailer
    assert astm.Frame.from_bytes(received.raw).text == MESSAGE


def test_several_queued_messages_share_one_transfer() -> None:
    pair = LinkPair()
    for i in range(3):
        pair.instrument.send_message(b"H|\\^&\rL|%d\r" % i, pair.now)
    pair.pump()
    sent = pair.sent("i>h")
    assert sent.count(ENQ) == 1 and sent.count(EOT) == 1
    assert message_texts(pair.host_events) == [b"H|\\^&\rL|%d\r" % i for i in range(3)]
    assert [f.number for f in frames_in(sent)] == [1, 2, 3]
    assert len(of_type(pair.instrument_events, astm.MessageSent)) == 3


def test_long_message_is_split_at_240_with_etb_frames() -> None:
    text = bytes(range(0x30, 0x7B)) * 10 + b"\r"  # 751 bytes
    pair = LinkPair()
    pair.instrument.send_message(text, pair.now)
    pair.pump()
    frames = frames_in(pair.sent("i>h"))
    assert [len(f.text) for f in frames] == [240, 240, 240, 31]
    assert [f.final for f in frames] == [False, False, False, True]
    (received,) = of_type(pair.host_events, astm.MessageReceived)
    assert received.text == text
    assert received.raw.count(STX) == 4


def test_frame_numbers_roll_over_from_7_to_0() -> None:
    pair = LinkPair(max_text=10)
    text = b"R|" + b"9" * 97 + b"\r"  # 100 bytes: 10 frames
    pair.instrument.send_message(text, pair.now)
    pair.pump()
    numbers = [f.number for f in frames_in(pair.sent("i>h"))]
    assert numbers == [1, 2, 3, 4, 5, 6, 7, 0, 1, 2]
    assert message_texts(pair.host_events) == [text]


def test_max_text_is_configurable_up_to_one_big_frame() -> None:
    text = b"H|\\^&\r" + b"R|1|x\r" * 2000
    pair = LinkPair(max_text=64_000)
    pair.instrument.send_message(text, pair.now)
    pair.pump()
    assert pair.sent("i>h").count(STX) == 1
    assert message_texts(pair.host_events) == [text]


# --- errors on the receiving side -------------------------------------------------------------


def test_bad_checksum_is_naked_and_the_retransmission_accepted() -> None:
    damaged: list[bytes] = []

    def tamper(direction: str, data: bytes) -> bytes:
        if direction == "i>h" and data.startswith(STX) and not damaged:
            damaged.append(data)
            return corrupt(data)
        return data

    pair = LinkPair(tamper=tamper)
    pair.instrument.send_message(MESSAGE, pair.now)
    pair.pump()
    (rejected,) = of_type(pair.host_events, astm.FrameRejected)
    assert "checksum" in rejected.reason
    assert pair.sent("h>i") == ACK + NAK + ACK
    assert message_texts(pair.host_events) == [MESSAGE]
    assert of_type(pair.instrument_events, astm.MessageSent) == [astm.MessageSent()]


def test_wrong_frame_number_is_naked() -> None:
    host = receiving_host()
    host.receive_data(frame(3, b"H|\\^&\r"), 1.0)
    assert host.data_to_send() == NAK
    (rejected,) = events(host)
    assert isinstance(rejected, astm.FrameRejected)
    assert "frame number 3, expected 1" in rejected.reason


def test_frame_without_number_is_naked() -> None:
    host = receiving_host()
    body = b"H|\\^&\r" + ETX
    host.receive_data(STX + body + astm.checksum(body) + b"\r\n", 1.0)
    assert host.data_to_send() == NAK
    assert of_type(events(host), astm.FrameRejected)[0].reason == "frame has no frame number"


def test_six_failed_attempts_end_the_transfer_and_fail_the_message() -> None:
    pair = LinkPair(tamper=lambda d, data: corrupt(data) if data.startswith(STX) else data)
    pair.instrument.send_message(MESSAGE, pair.now)
    pair.pump()
    assert pair.sent("i>h").count(STX) == 6
    assert pair.sent("i>h").endswith(EOT)
    assert len(of_type(pair.host_events, astm.FrameRejected)) == 6
    assert pair.host_events[-1] == astm.TransferEnded()
    (failed,) = of_type(pair.instrument_events, astm.MessageFailed)
    assert "refused 6 times" in failed.reason and not failed.dropped
    # kept for a full resend at the next establishment, after the busy delay
    assert pair.instrument.state is astm.LinkState.BACKOFF
    assert pair.instrument.busy
    assert pair.instrument.get_timer() == pair.now + 10.0


def test_failed_message_is_resent_in_full_then_dropped_after_max_retries_transfers() -> None:
    pair = LinkPair(tamper=lambda d, data: corrupt(data) if data.startswith(STX) else data)
    pair.instrument.send_message(MESSAGE, pair.now)
    pair.run()
    failures = of_type(pair.instrument_events, astm.MessageFailed)
    assert [f.dropped for f in failures] == [False] * 5 + [True]
    assert "giving up" in failures[-1].reason
    assert pair.sent("i>h").count(ENQ) == 6
    assert pair.sent("i>h").count(STX) == 36
    assert not pair.instrument.busy


def test_lost_ack_makes_a_duplicate_that_is_acked_not_delivered_twice() -> None:
    seen = {"acks": 0}

    def tamper(direction: str, data: bytes) -> bytes:
        if direction == "h>i" and data == ACK:
            seen["acks"] += 1
            if seen["acks"] == 2:  # the ACK of frame 1 arrives as noise
                return b"\x86"
        return data

    text = b"H|\\^&\r" + b"R|1|xxxxxxxxx\r" * 30
    pair = LinkPair(tamper=tamper)
    pair.instrument.send_message(text, pair.now)
    pair.pump()
    duplicates = of_type(pair.host_events, astm.DuplicateFrameIgnored)
    assert len(duplicates) == 1
    assert duplicates[0].raw.startswith(STX + b"1")
    assert message_texts(pair.host_events) == [text]


def test_lost_ack_of_the_end_frame_does_not_deliver_the_message_twice() -> None:
    seen = {"acks": 0}

    def tamper(direction: str, data: bytes) -> bytes:
        if direction == "h>i" and data == ACK:
            seen["acks"] += 1
            if seen["acks"] == 2:
                return NAK  # the ACK is garbled into a NAK
        return data

    pair = LinkPair(tamper=tamper)
    pair.instrument.send_message(MESSAGE, pair.now)
    pair.pump()
    assert len(of_type(pair.host_events, astm.DuplicateFrameIgnored)) == 1
    assert message_texts(pair.host_events) == [MESSAGE]
    assert of_type(pair.instrument_events, astm.MessageSent) == [astm.MessageSent()]


# --- the withheld ACK -----------------------------------------------------------------------------


def test_end_frame_is_not_acked_until_the_application_acknowledges() -> None:
    host = receiving_host()
    host.receive_data(frame(1, MESSAGE), 1.0)
    assert host.data_to_send() == b""
    assert events(host) == [astm.MessageReceived(MESSAGE, frame(1, MESSAGE)[:-1])]
    assert state(host) is astm.LinkState.ACK_WITHHELD
    host.receive_data(b"", 5.0)
    assert host.data_to_send() == b""
    host.acknowledge(6.0)
    assert host.data_to_send() == ACK
    assert state(host) is astm.LinkState.RECEIVING
    host.receive_data(EOT, 7.0)
    assert events(host) == [astm.TransferEnded()]


def test_intermediate_frames_are_acked_at_once() -> None:
    host = receiving_host()
    host.receive_data(frame(1, b"H|\\^&\r", final=False), 1.0)
    assert host.data_to_send() == ACK
    assert events(host) == []


def test_refused_message_is_naked_and_delivered_again_on_retransmission() -> None:
    pair = LinkPair(auto_ack=False, max_text=10)
    text = b"H|\\^&\rL|1|N\r"  # two frames: ETB then ETX
    pair.instrument.send_message(text, pair.now)
    pair.pump()
    first = of_type(pair.host_events, astm.MessageReceived)
    assert [m.text for m in first] == [text]
    pair.host.refuse(pair.now)
    pair.pump()
    second = of_type(pair.host_events, astm.MessageReceived)
    assert [m.text for m in second] == [text, text]
    assert second[1].raw == second[0].raw
    pair.host.acknowledge(pair.now)
    pair.pump()
    assert pair.sent("h>i") == ACK + ACK + NAK + ACK
    assert of_type(pair.instrument_events, astm.MessageSent) == [astm.MessageSent()]
    assert pair.host_events[-1] == astm.TransferEnded()


def test_acknowledge_without_a_delivered_message_is_a_local_error() -> None:
    host = astm.Link(astm.Role.HOST)
    with pytest.raises(LocalProtocolError):
        host.acknowledge(0.0)
    with pytest.raises(LocalProtocolError):
        receiving_host().refuse(0.0)


def test_retransmission_while_the_ack_is_withheld_is_ignored() -> None:
    host = receiving_host()
    raw = frame(1, MESSAGE)
    host.receive_data(raw, 1.0)
    host.receive_data(raw, 16.0)
    found = events(host)
    assert of_type(found, astm.DuplicateFrameIgnored) == [astm.DuplicateFrameIgnored(raw[:-1])]
    assert len(of_type(found, astm.MessageReceived)) == 1
    assert host.data_to_send() == b""
    host.acknowledge(17.0)
    assert host.data_to_send() == ACK


def test_eot_while_the_ack_is_withheld_ends_the_transfer_and_the_answer_is_dropped() -> None:
    host = receiving_host()
    host.receive_data(frame(1, MESSAGE), 1.0)
    host.receive_data(EOT, 16.0)  # the sender's reply timer expired
    assert of_type(events(host), astm.TransferEnded) == [astm.TransferEnded()]
    assert host.state is astm.LinkState.NEUTRAL
    host.acknowledge(17.0)  # the application's late answer: nothing to send any more
    assert host.data_to_send() == b""
    with pytest.raises(LocalProtocolError):
        host.acknowledge(18.0)


def test_late_answer_does_not_ack_the_next_message() -> None:
    host = receiving_host()
    host.receive_data(frame(1, b"H|\\^&\rL|1\r"), 1.0)
    host.receive_data(EOT + ENQ + frame(1, MESSAGE), 16.0)
    found = events(host)
    assert [type(e) for e in found] == [
        astm.MessageReceived,
        astm.TransferEnded,
        astm.TransferStarted,
        astm.MessageReceived,
    ]
    assert host.data_to_send() == ACK  # the ACK of the new ENQ only
    host.acknowledge(17.0)  # answers the first delivery: no-op
    assert host.data_to_send() == b""
    host.acknowledge(18.0)
    assert host.data_to_send() == ACK


def test_frames_arriving_while_the_ack_is_withheld_wait_their_turn() -> None:
    host = astm.Link(astm.Role.HOST)
    stream = ENQ + frame(1, b"H|\\^&\r") + frame(2, b"P|1\r") + frame(3, b"L|1\r") + EOT
    host.receive_data(stream, 0.0)
    assert host.data_to_send() == ACK
    assert message_texts(events(host)) == [b"H|\\^&\r"]
    host.acknowledge(1.0)
    assert host.data_to_send() == ACK
    assert message_texts(events(host)) == [b"P|1\r"]
    host.acknowledge(2.0)
    # the EOT read after the last frame means the sender stopped waiting for our reply
    found = events(host)
    assert message_texts(found) == [b"L|1\r"] and found[-1] == astm.TransferEnded()
    assert host.data_to_send() == ACK
    host.acknowledge(3.0)
    assert host.data_to_send() == b""


def test_bytes_held_while_the_ack_is_withheld_are_bounded() -> None:
    host = astm.Link(astm.Role.HOST, max_frame=100)
    host.receive_data(ENQ + frame(1, b"H|\\^&\r") + frame(2, b"P|1\r"), 0.0)
    events(host)
    host.receive_data(b"x" * 10_000, 1.0)
    garbage = of_type(events(host), astm.GarbageDiscarded)
    assert sum(len(g.data) for g in garbage) >= 10_000 - 116


def test_withheld_ack_times_out_with_the_receive_timer() -> None:
    host = receiving_host()
    host.receive_data(frame(1, MESSAGE), 1.0)
    events(host)
    assert host.get_timer() == 31.0
    host.handle_timer(31.0)
    (aborted,) = events(host)
    assert isinstance(aborted, astm.TransferAborted)
    assert "not acknowledged" in aborted.reason
    assert host.state is astm.LinkState.NEUTRAL
    host.acknowledge(32.0)  # stale: no-op
    assert host.data_to_send() == b""


# --- receiver robustness --------------------------------------------------------------------------


def test_receive_timeout_discards_the_partial_message() -> None:
    host = receiving_host(now=0.0)
    assert host.get_timer() == 30.0
    host.receive_data(frame(1, b"H|\\^&\r", final=False), 10.0)
    assert host.get_timer() == 40.0
    host.handle_timer(39.9)
    assert events(host) == []
    host.handle_timer(40.0)
    (aborted,) = events(host)
    assert isinstance(aborted, astm.TransferAborted)
    assert host.state is astm.LinkState.NEUTRAL
    assert host.get_timer() is None


def test_eot_in_the_middle_of_a_message_aborts_it() -> None:
    host = receiving_host()
    host.receive_data(frame(1, b"H|\\^&\r", final=False) + EOT, 1.0)
    (aborted,) = events(host)
    assert isinstance(aborted, astm.TransferAborted)
    assert "partial message discarded" in aborted.reason


def test_enq_during_a_transfer_restarts_it() -> None:
    host = receiving_host()
    host.receive_data(frame(1, b"H|\\^&\r", final=False) + ENQ + frame(1, MESSAGE), 1.0)
    found = events(host)
    assert [type(e) for e in found] == [
        astm.TransferAborted,
        astm.TransferStarted,
        astm.MessageReceived,
    ]
    assert message_texts(found) == [MESSAGE]


def test_garbage_before_enq_and_before_stx_is_discarded() -> None:
    host = astm.Link(astm.Role.HOST)
    found = drive(host, [b"\x00\xff line noise" + ENQ + b"\r\n\x06junk" + frame(1, MESSAGE) + EOT])
    assert found[0] == astm.GarbageDiscarded(b"\x00\xff line noise")
    assert found[1] == astm.TransferStarted()
    assert found[2] == astm.GarbageDiscarded(b"\r\n\x06junk")
    assert message_texts(found) == [MESSAGE]
    assert found[-1] == astm.TransferEnded()


def test_frames_outside_a_transfer_are_garbage() -> None:
    host = astm.Link(astm.Role.HOST)
    raw = frame(1, MESSAGE)
    found = drive(host, [raw + EOT])
    assert found == [astm.GarbageDiscarded(raw[:-1]), astm.GarbageDiscarded(EOT)]
    assert host.data_to_send() == b""


def test_oversized_frame_is_naked_and_not_buffered() -> None:
    host = astm.Link(astm.Role.HOST, max_frame=200)
    host.receive_data(ENQ, 0.0)
    host.data_to_send()
    host.receive_data(STX + b"1", 0.0)
    for _ in range(100):
        host.receive_data(b"R|1|" + b"9" * 96, 0.0)
    host.receive_data(ETX + b"00\r\n", 0.0)
    assert host.data_to_send() == NAK
    (rejected,) = of_type(events(host), astm.FrameRejected)
    assert "exceeds 200" in rejected.reason and len(rejected.raw) == 200
    host.receive_data(frame(1, MESSAGE[:150]), 1.0)  # a frame within the limit is fine
    assert message_texts(events(host)) == [MESSAGE[:150]]


def test_default_max_frame_accepts_a_64000_byte_frame() -> None:
    host = receiving_host()
    text = (b"R|" + b"7" * 97 + b"\r") * 639
    raw = frame(1, text)
    assert len(raw) <= 64_000
    host.receive_data(raw, 1.0)
    assert message_texts(events(host)) == [text]


# --- sender side: establishment, busy, contention, interrupt, timers ------------------------------


def test_nak_to_enq_waits_the_busy_delay_then_retries() -> None:
    host = astm.Link(astm.Role.HOST)
    host.send_message(MESSAGE, 0.0)
    assert host.data_to_send() == ENQ
    assert state(host) is astm.LinkState.ESTABLISHING
    host.receive_data(NAK, 2.0)
    assert events(host) == [astm.LinkBusy()]
    assert state(host) is astm.LinkState.BACKOFF
    assert host.get_timer() == 12.0
    host.handle_timer(11.9)
    assert host.data_to_send() == b""
    host.handle_timer(12.0)
    assert host.data_to_send() == ENQ
    host.receive_data(ACK, 13.0)
    assert host.data_to_send() == frame(1, MESSAGE)


def test_peer_may_take_the_line_during_our_busy_wait() -> None:
    host = astm.Link(astm.Role.HOST)
    host.send_message(MESSAGE, 0.0)
    host.receive_data(NAK, 0.0)
    host.data_to_send()
    host.receive_data(ENQ + frame(1, b"H|\\^&\rL|1\r"), 1.0)
    assert host.data_to_send() == ACK
    host.acknowledge(1.0)
    host.receive_data(EOT, 2.0)
    assert host.data_to_send() == ACK + ENQ  # line released: our turn at once


def test_no_reply_to_enq_terminates_and_counts_as_a_failed_transfer() -> None:
    host = astm.Link(astm.Role.HOST)
    host.send_message(MESSAGE, 0.0)
    host.data_to_send()
    host.handle_timer(15.0)
    assert host.data_to_send() == EOT
    (failed,) = events(host)
    assert isinstance(failed, astm.MessageFailed) and "ENQ" in failed.reason
    assert host.get_timer() == 25.0
    host.handle_timer(25.0)
    assert host.data_to_send() == ENQ


def test_no_reply_to_a_frame_terminates_and_keeps_the_message_for_a_full_resend() -> None:
    long = b"H|\\^&\r" + b"R|1|x\r" * 90  # 3 frames
    inst = sending_instrument(long)
    assert inst.data_to_send() == frame(1, long[:240], False)
    inst.receive_data(ACK, 1.0)
    inst.data_to_send()
    assert inst.get_timer() == 16.0
    inst.handle_timer(16.0)
    assert inst.data_to_send() == EOT
    (failed,) = events(inst)
    assert isinstance(failed, astm.MessageFailed) and "no reply to frame 2" in failed.reason
    inst.handle_timer(26.0)
    assert inst.data_to_send() == ENQ
    inst.receive_data(ACK, 27.0)
    assert inst.data_to_send()[:2] == STX + b"1"  # from the first frame again


def test_anything_but_ack_or_eot_after_a_frame_counts_as_nak() -> None:
    inst = sending_instrument(MESSAGE)
    first = inst.data_to_send()
    inst.receive_data(b"?", 1.0)
    assert inst.data_to_send() == frame(1, MESSAGE)
    inst.receive_data(ENQ, 2.0)
    assert inst.data_to_send() == frame(1, MESSAGE)
    inst.receive_data(ACK, 3.0)
    assert inst.data_to_send() == EOT
    assert first.endswith(frame(1, MESSAGE))
    assert events(inst) == [astm.MessageSent()]


def test_duplicate_ack_in_the_same_read_does_not_acknowledge_the_next_frame() -> None:
    long = b"H|\\^&\r" + b"R|1|x\r" * 90  # 3 frames
    inst = sending_instrument(long)
    inst.data_to_send()
    inst.receive_data(ACK + ACK, 1.0)  # read together: the second cannot answer frame 2
    assert inst.data_to_send()[:2] == STX + b"2"
    assert events(inst) == [astm.GarbageDiscarded(ACK)]
    assert state(inst) is astm.LinkState.SENDING
    inst.receive_data(ACK, 2.0)
    assert inst.data_to_send()[:2] == STX + b"3"


def test_contention_instrument_wins_and_host_sends_afterwards() -> None:
    pair = LinkPair()
    pair.host.send_message(b"H|\\^&\rO|1|host-order\rL|1\r", pair.now)
    pair.instrument.send_message(MESSAGE, pair.now)
    pair.pump()
    assert astm.ContentionDetected() in pair.host_events
    assert astm.ContentionDetected() in pair.instrument_events
    assert pair.host.state is pair.instrument.state is astm.LinkState.BACKOFF
    assert pair.instrument.get_timer() == pair.now + 1.0
    assert pair.host.get_timer() == pair.now + 20.0
    pair.advance(1.0)  # the instrument sends ENQ again, the host accepts it
    assert message_texts(pair.host_events) == [MESSAGE]
    assert message_texts(pair.instrument_events) == [b"H|\\^&\rO|1|host-order\rL|1\r"]
    assert not pair.host.busy and not pair.instrument.busy


def test_host_after_contention_waits_20s_for_the_instrument_then_tries_again() -> None:
    host = astm.Link(astm.Role.HOST)
    host.send_message(MESSAGE, 0.0)
    host.receive_data(ENQ, 0.5)
    assert host.data_to_send() == ENQ  # our own; the instrument's ENQ is not answered
    assert events(host) == [astm.ContentionDetected()]
    host.handle_timer(20.5)
    assert host.data_to_send() == ENQ


def test_instrument_after_contention_sends_enq_again_after_1s() -> None:
    inst = astm.Link(astm.Role.INSTRUMENT)
    inst.send_message(MESSAGE, 0.0)
    inst.receive_data(ENQ, 0.2)
    assert inst.data_to_send() == ENQ
    assert events(inst) == [astm.ContentionDetected()]
    assert inst.get_timer() == pytest.approx(1.2)
    inst.handle_timer(1.2)
    assert inst.data_to_send() == ENQ


def test_receiver_interrupt_finishes_the_message_then_waits_before_the_next() -> None:
    long = b"H|\\^&\r" + b"R|1|x\r" * 90  # 3 frames
    inst = sending_instrument(long, MESSAGE)
    inst.data_to_send()
    inst.receive_data(EOT, 1.0)  # EOT instead of ACK after frame 1: please stop
    assert events(inst) == [astm.InterruptRequested()]
    assert inst.data_to_send()[:2] == STX + b"2"  # the message in progress goes on
    inst.receive_data(EOT, 2.0)
    inst.receive_data(ACK, 3.0)
    assert inst.data_to_send().endswith(EOT)
    assert events(inst) == [astm.MessageSent()]
    assert inst.state is astm.LinkState.BACKOFF and inst.busy
    assert inst.get_timer() == 18.0
    inst.handle_timer(18.0)
    assert inst.data_to_send() == ENQ  # the second message was kept


def test_after_an_interrupt_the_peer_may_send_first() -> None:
    inst = sending_instrument(MESSAGE, MESSAGE)
    inst.data_to_send()
    inst.receive_data(EOT, 1.0)
    assert inst.data_to_send() == EOT
    inst.receive_data(ENQ + frame(1, b"H|\\^&\rQ|1|^S1||ALL\rL|1\r"), 2.0)
    assert inst.data_to_send() == ACK
    inst.acknowledge(2.0)
    inst.receive_data(EOT, 3.0)
    assert inst.data_to_send() == ACK + ENQ


def test_send_message_refuses_empty_or_restricted_text() -> None:
    link = astm.Link(astm.Role.HOST)
    with pytest.raises(LocalProtocolError):
        link.send_message(b"", 0.0)
    with pytest.raises(LocalProtocolError):
        link.send_message(b"H|\\^&\nL|1\r", 0.0)
    with pytest.raises(LocalProtocolError):
        link.send_message(b"H|\\^&\x02\r", 0.0)
    assert not link.busy


def test_message_queued_while_receiving_is_sent_after_the_peer_releases_the_line() -> None:
    host = receiving_host()
    host.send_message(MESSAGE, 0.5)
    assert host.data_to_send() == b""
    host.receive_data(EOT, 1.0)
    assert host.data_to_send() == ENQ


def test_neutral_link_has_no_timer_and_early_timer_calls_do_nothing() -> None:
    link = astm.Link(astm.Role.HOST)
    assert link.get_timer() is None
    link.handle_timer(1e9)
    assert link.data_to_send() == b"" and link.next_event() is None
    assert link.state is astm.LinkState.NEUTRAL and not link.busy


def test_bad_options_are_local_errors() -> None:
    with pytest.raises(LocalProtocolError):
        astm.Link(astm.Role.HOST, max_text=0)
    with pytest.raises(LocalProtocolError):
        astm.Link(astm.Role.HOST, max_retries=0)
    with pytest.raises(LocalProtocolError):
        astm.Link(astm.Role.HOST, max_frame=4)


def test_custom_timers_are_used() -> None:
    timers = astm.Timers(establish=2.0, busy=1.0)
    link = astm.Link(astm.Role.HOST, timers)
    link.send_message(MESSAGE, 100.0)
    assert link.get_timer() == 102.0
    link.receive_data(NAK, 100.5)
    assert link.get_timer() == 101.5


def test_close_while_sending_ends_the_transfer_with_eot_and_drops_the_queue() -> None:
    link = sending_instrument(MESSAGE, MESSAGE)
    assert frames_in(link.data_to_send())  # the first frame is on the wire
    link.close(1.0)
    assert link.data_to_send() == EOT
    assert state(link) is astm.LinkState.NEUTRAL
    assert not link.busy  # the second message is the caller's to keep
    link.receive_data(ACK, 2.0)  # a late reply changes nothing
    assert link.data_to_send() == b""


def test_close_while_establishing_sends_eot() -> None:
    link = astm.Link(astm.Role.HOST)
    link.send_message(MESSAGE, 0.0)
    assert link.data_to_send() == ENQ
    link.close(0.5)
    assert link.data_to_send() == EOT
    assert state(link) is astm.LinkState.NEUTRAL


def test_close_while_receiving_sends_nothing() -> None:
    host = receiving_host()
    host.receive_data(frame(1, MESSAGE, final=False), 0.1)
    assert host.data_to_send() == ACK
    host.close(0.2)
    assert host.data_to_send() == b""  # only the sender may end a transfer
