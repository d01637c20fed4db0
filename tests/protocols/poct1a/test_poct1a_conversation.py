"""The host side of a POCT1-A conversation, driven by hand: device messages in, the host's
answers and own messages out, time advanced as a float (no loop, no sleeps)."""

from __future__ import annotations

import itertools
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import poct1a
from protocols.errors import LocalProtocolError

T0 = datetime(2024, 5, 1, 10, 0, 0)


def _conversation(**options: object) -> poct1a.HostConversation:
    return poct1a.HostConversation(
        0.0, clock=lambda: T0, timers=poct1a.HostTimers(hello=30, reply=60), **options
    )  # type: ignore[arg-type]


def _out(conversation: poct1a.HostConversation) -> list[poct1a.Message]:
    reader = poct1a.MessageReader()
    reader.receive_data(conversation.data_to_send())
    messages = []
    while (raw := reader.next_message()) is not None:
        messages.append(poct1a.decode(raw.data))
    return messages


def _events(conversation: poct1a.HostConversation) -> list[poct1a.Event]:
    events = []
    while (event := conversation.next_event()) is not None:
        events.append(event)
    return events


def _hello(control_id: str = "1", **fields: object) -> bytes:
    return poct1a.encode(poct1a.Hello(poct1a.Header(control_id), device_id="D^1", **fields))  # type: ignore[arg-type]


def _status(control_id: str = "2", new: int = 0, condition: str = "R") -> bytes:
    return poct1a.encode(poct1a.DeviceStatus(poct1a.Header(control_id), new, None, condition))


def _ack(control_id: str, acknowledged: str, kind: str = "AA", note: str = "") -> bytes:
    return poct1a.encode(
        poct1a.Acknowledgement(poct1a.Header(control_id), acknowledged, kind, note)
    )


def _obs(control_id: str, value: str = "5.2") -> bytes:
    service = poct1a.Service(
        (poct1a.Observation("GLU", value=value, unit="mmol/L"),),
        patient=poct1a.PatientInfo("P1"),
        operator_id="OP1",
    )
    return poct1a.encode(poct1a.Observations(poct1a.Header(control_id), (service,)))


def _acks(messages: list[poct1a.Message]) -> list[tuple[str, str]]:
    return [(m.type, m.acknowledged) for m in messages if isinstance(m, poct1a.Acknowledgement)]


def _opened(**options: object) -> poct1a.HostConversation:
    """A conversation past HEL and DST, with nothing of labgate's outstanding."""
    conversation = _conversation(continuous=False, **options)
    conversation.receive_data(_hello() + _status(), 1.0)
    _out(conversation)
    _events(conversation)
    return conversation


def test_hello_is_acknowledged_and_labgate_waits_for_the_status_before_speaking() -> None:
    conversation = _conversation()
    conversation.lock(0.0)
    conversation.receive_data(_hello("10014"), 1.0)
    assert _acks(_out(conversation)) == [("AA", "10014")]
    (hello,) = _events(conversation)
    assert isinstance(hello, poct1a.HelloReceived) and hello.hello.device_id == "D^1"
    assert conversation.state is poct1a.ConversationState.AWAITING_STATUS

    conversation.receive_data(_status("10015", condition="R"), 2.0)
    ack, lock = _out(conversation)
    assert isinstance(ack, poct1a.Acknowledgement) and ack.acknowledged == "10015"
    assert isinstance(lock, poct1a.Directive) and lock.command == "LOCK"
    assert lock.header.created_at == T0 and lock.header.control_id == "3"  # host numbering
    status, sent = _events(conversation)
    assert isinstance(status, poct1a.StatusReceived) and not status.status.locked
    assert isinstance(sent, poct1a.HostMessageSent) and sent.message == lock
    assert conversation.state is poct1a.ConversationState.OPEN


def test_labgate_messages_leave_one_at_a_time_each_after_the_answer() -> None:
    conversation = _conversation(continuous=True)
    conversation.receive_data(_hello(), 1.0)
    conversation.lock(1.0)
    conversation.send_operator_list([poct1a.Operator("OP1", "Alice", "ALL")], 1.0)
    conversation.receive_data(_status(), 2.0)
    sent: list[poct1a.Message] = []
    for step in range(5):
        out = [m for m in _out(conversation) if not isinstance(m, poct1a.Acknowledgement)]
        if not out:
            break
        (message,) = out
        sent.append(message)
        conversation.receive_data(_ack(f"9{step}", message.header.control_id), 3.0 + step)
    names = [poct1a.message_name(m) for m in sent]
    assert names == ["DTV.R01", "OPL.R01", "EOT.R01", "DTV.R01"]
    lock, operators, end_of_topic, continuous = sent
    assert isinstance(lock, poct1a.Directive) and lock.command == "LOCK"
    assert isinstance(operators, poct1a.OperatorList) and operators.operators[0].name == "Alice"
    assert isinstance(end_of_topic, poct1a.EndOfTopic) and end_of_topic.topic == "OPL"
    assert end_of_topic.topic_control_id == operators.header.control_id
    assert isinstance(continuous, poct1a.Directive) and continuous.command == "START_CONTINUOUS"
    assert conversation.continuous
    accepted = [e for e in _events(conversation) if isinstance(e, poct1a.HostMessageAccepted)]
    assert [e.message for e in accepted] == sent


def test_observations_are_answered_only_when_the_caller_says() -> None:
    conversation = _opened()
    conversation.receive_data(_obs("20") + _obs("21"), 5.0)
    assert _out(conversation) == []  # nothing acknowledged before the commit
    first, second = _events(conversation)
    assert isinstance(first, poct1a.ObservationsReceived) and first.control_id == "20"
    assert first.message.services[0].observations[0].value == "5.2"
    assert first.raw == _obs("20")
    assert isinstance(second, poct1a.ObservationsReceived)
    conversation.acknowledge("20", 5.1)
    conversation.reject("21", "operator OP1 is not on the operator list", 5.2, "103")
    accepted, refused = _out(conversation)
    assert isinstance(accepted, poct1a.Acknowledgement) and accepted.accepted
    assert isinstance(refused, poct1a.Acknowledgement)
    assert (refused.type, refused.acknowledged, refused.error_code) == ("AE", "21", "103")
    assert "OP1" in refused.note
    with pytest.raises(LocalProtocolError):
        conversation.acknowledge("21", 5.3)


def test_labgate_does_not_speak_while_it_owes_an_acknowledgement() -> None:
    conversation = _opened()
    conversation.receive_data(_obs("20"), 5.0)
    conversation.lock(5.0)
    assert _out(conversation) == []
    conversation.acknowledge("20", 5.1)
    ack, lock = _out(conversation)
    assert isinstance(ack, poct1a.Acknowledgement)
    assert isinstance(lock, poct1a.Directive) and lock.command == "LOCK"


def test_messages_before_hello_are_refused_with_a_sequence_error() -> None:
    conversation = _conversation()
    conversation.receive_data(_status("5"), 1.0)
    (ack,) = _out(conversation)
    assert isinstance(ack, poct1a.Acknowledgement)
    assert (ack.type, ack.acknowledged, ack.error_code) == ("AE", "5", "100")
    (event,) = _events(conversation)
    assert isinstance(event, poct1a.MessageRejected) and event.answered
    assert conversation.state is poct1a.ConversationState.AWAITING_HELLO


def test_no_hello_in_time_ends_the_conversation() -> None:
    conversation = _conversation()
    assert conversation.get_timer() == 30.0
    conversation.handle_timer(29.0)
    assert _out(conversation) == []
    conversation.handle_timer(30.0)
    (end,) = _out(conversation)
    assert isinstance(end, poct1a.End) and end.reason == "ABN"
    _sent, ended = _events(conversation)
    assert isinstance(ended, poct1a.ConversationEnded) and not ended.by_device
    assert conversation.state is poct1a.ConversationState.CLOSED
    assert conversation.get_timer() is None


def test_no_answer_to_a_directive_in_time_ends_the_conversation() -> None:
    conversation = _opened()
    conversation.lock(10.0)
    (lock,) = _out(conversation)
    assert conversation.get_timer() == 70.0
    conversation.handle_timer(70.0)
    (end,) = _out(conversation)
    assert isinstance(end, poct1a.End) and lock.header.control_id in end.note


def test_new_observations_are_requested_and_continuous_mode_follows_the_topic() -> None:
    conversation = _conversation(continuous=True)
    conversation.receive_data(_hello(), 1.0)
    conversation.receive_data(_status(new=2), 2.0)
    *_, request = _out(conversation)
    assert isinstance(request, poct1a.Request) and request.request == "ROBS"
    conversation.receive_data(_ack("30", request.header.control_id), 3.0)
    conversation.unlock(3.0)  # waits: the device is in the topic labgate asked for
    conversation.receive_data(_obs("31"), 4.0)
    _events(conversation)
    conversation.acknowledge("31", 4.1)
    assert _acks(_out(conversation)) == [("AA", "31")]
    end_of_topic = poct1a.EndOfTopic(poct1a.Header("32"), "OBS", request.header.control_id)
    conversation.receive_data(poct1a.encode(end_of_topic), 5.0)
    _ack_eot, unlock = _out(conversation)
    assert isinstance(unlock, poct1a.Directive) and unlock.command == "UNLOCK"
    conversation.receive_data(_ack("33", unlock.header.control_id), 6.0)
    (continuous,) = _out(conversation)
    assert isinstance(continuous, poct1a.Directive) and continuous.command == "START_CONTINUOUS"
    conversation.receive_data(_ack("34", continuous.header.control_id), 7.0)
    conversation.receive_data(_status("35", new=1), 8.0)
    assert _acks(_out(conversation)) == [("AA", "35")]  # continuous: no request needed


def test_a_topic_the_device_never_closes_is_released_after_the_reply_timer() -> None:
    conversation = _opened()
    conversation.request_observations(10.0)
    (request,) = _out(conversation)
    conversation.receive_data(_ack("40", request.header.control_id), 11.0)
    conversation.lock(11.0)
    assert _out(conversation) == []
    assert conversation.get_timer() == 71.0
    conversation.handle_timer(71.0)
    (lock,) = _out(conversation)
    assert isinstance(lock, poct1a.Directive) and lock.command == "LOCK"


def test_a_refusal_drops_the_rest_of_its_topic() -> None:
    conversation = _opened(first_control_id=4001)
    conversation.send_operator_list([poct1a.Operator("OP1")], 10.0)
    conversation.lock(10.0)
    (page,) = _out(conversation)
    escape = poct1a.Escape(poct1a.Header("50"), page.header.control_id, "CNC", "busy")
    conversation.receive_data(poct1a.encode(escape), 11.0)
    (lock,) = _out(conversation)  # the EOT OPL is not sent
    assert isinstance(lock, poct1a.Directive)
    _page_sent, refused, _lock_sent = _events(conversation)
    assert isinstance(refused, poct1a.HostMessageRefused)
    assert refused.message == page and refused.reason == "ESC CNC busy"
    conversation.receive_data(_ack("51", lock.header.control_id, "AE", "not now"), 12.0)
    (refused_lock,) = _events(conversation)
    assert isinstance(refused_lock, poct1a.HostMessageRefused)
    assert refused_lock.reason == "AE not now"


def test_the_operator_list_is_paged_under_the_devices_maximum() -> None:
    conversation = _conversation(continuous=False)
    conversation.receive_data(_hello(max_message_size=700) + _status(), 1.0)
    operators = [poct1a.Operator(f"OP{n:03d}", f"Operator number {n}", "ALL") for n in range(30)]
    conversation.send_operator_list(operators, 1.0)
    pages: list[poct1a.OperatorList] = []
    raw = b""
    for step in range(40):
        data = conversation.data_to_send()
        raw += data
        reader = poct1a.MessageReader()
        reader.receive_data(data)
        while (message := reader.next_message()) is not None:
            assert len(message.data) <= 700
            decoded = poct1a.decode(message.data)
            if isinstance(decoded, poct1a.OperatorList):
                pages.append(decoded)
            if not isinstance(decoded, poct1a.Acknowledgement):
                conversation.receive_data(_ack(f"7{step}", decoded.header.control_id), 2.0)
    assert len(pages) > 2
    assert [o for page in pages for o in page.operators] == operators
    ends = [m for m in _out(conversation)]
    assert ends == []  # everything went, the EOT included (answered above)


def test_answers_follow_the_devices_framing() -> None:
    conversation = _conversation()
    conversation.receive_data(poct1a.mllp_wrap(_hello()), 1.0)
    data = conversation.data_to_send()
    assert data.startswith(b"\x0b<?xml") and data.endswith(b"\x1c\r")
    conversation.receive_data(_status(), 2.0)
    assert conversation.data_to_send().startswith(b"<?xml")


def test_unreadable_messages() -> None:
    conversation = _opened()
    broken_obs = _obs("60").replace(b"<SVC>", b'<SVC><SVC.observation_dttm V="soon"/>')
    broken_status = _status("61").replace(b'V="0"', b'V="none"')
    conversation.receive_data(broken_obs + broken_status + b"@@@" + _status("62"), 5.0)
    unreadable, rejected, discarded, status = _events(conversation)
    assert isinstance(unreadable, poct1a.ObservationsUnreadable)
    assert (unreadable.control_id, unreadable.raw) == ("60", broken_obs)
    assert "not a date and time" in unreadable.reason
    assert isinstance(rejected, poct1a.MessageRejected) and rejected.answered
    assert isinstance(discarded, poct1a.BytesDiscarded)
    assert isinstance(status, poct1a.StatusReceived)
    assert _acks(_out(conversation)) == [("AE", "61"), ("AA", "62")]
    conversation.reject("60", unreadable.reason, 5.1, "101")
    assert _acks(_out(conversation)) == [("AE", "60")]


def test_unsupported_messages_are_answered_so_the_device_does_not_wait() -> None:
    conversation = _opened()
    keep_alive = poct1a.encode(poct1a.OtherMessage(poct1a.Header("70"), "KPA.R01"))
    patients = poct1a.encode(poct1a.OtherMessage(poct1a.Header("71"), "PTL.R01"))
    stray = _ack("72", "999")
    conversation.receive_data(keep_alive + patients + stray, 5.0)
    assert _acks(_out(conversation)) == [("AA", "70"), ("AE", "71")]
    rejected, stray_event = _events(conversation)
    assert isinstance(rejected, poct1a.MessageRejected) and rejected.answered
    assert isinstance(stray_event, poct1a.MessageRejected) and not stray_event.answered


def test_the_device_ends_the_conversation() -> None:
    conversation = _opened()
    conversation.receive_data(poct1a.encode(poct1a.End(poct1a.Header("80"), "USR")), 5.0)
    assert _acks(_out(conversation)) == [("AA", "80")]
    (ended,) = _events(conversation)
    assert isinstance(ended, poct1a.ConversationEnded) and ended.by_device
    conversation.receive_data(_status("81"), 6.0)  # closed: ignored
    conversation.lock(6.0)
    assert _out(conversation) == [] and _events(conversation) == []


def test_labgate_ends_the_conversation() -> None:
    conversation = _opened()
    conversation.end(5.0, "ABN", "not stored, send again later")
    (end,) = _out(conversation)
    assert isinstance(end, poct1a.End) and (end.reason, end.note) == (
        "ABN",
        "not stored, send again later",
    )
    assert conversation.state is poct1a.ConversationState.CLOSED


# --- property: chunking never changes the conversation ------------------------------------

DEVICE_SCRIPT = [
    _hello("1"),
    _status("2", new=1),
    _obs("3"),
    poct1a.encode(poct1a.EndOfTopic(poct1a.Header("4"), "OBS")),
    b"  garbage  ",
    poct1a.mllp_wrap(_obs("5", "7.1")),
    poct1a.encode(poct1a.DeviceStatus(poct1a.Header("6"), 0, None, "L")),
]


def _run(chunks: list[bytes]) -> tuple[list[tuple[str, str]], list[str]]:
    """Feed the device's bytes, acknowledging results as they come. What labgate answers to
    the device's messages, and what it reports of them, must not depend on the chunking
    (when labgate's own messages leave does: they wait for safe points)."""
    conversation = _conversation(continuous=False)
    out = b""
    names: list[str] = []
    for chunk in chunks:
        conversation.receive_data(chunk, 1.0)
        for event in _events(conversation):
            if not isinstance(event, poct1a.HostMessageSent):
                names.append(type(event).__name__)
            if isinstance(event, poct1a.ObservationsReceived):
                conversation.acknowledge(event.control_id, 1.0)
        out += conversation.data_to_send()
    reader = poct1a.MessageReader()
    reader.receive_data(out)
    answers = []
    while (raw := reader.next_message()) is not None:
        message = poct1a.decode(raw.data)
        if isinstance(message, poct1a.Acknowledgement):
            answers.append((message.type, message.acknowledged))
    return answers, names


@given(st.lists(st.integers(0, 5000), max_size=10))
def test_any_chunking_of_the_device_stream_gives_the_same_answers(cuts: list[int]) -> None:
    stream = b"".join(DEVICE_SCRIPT)
    points = sorted({cut % (len(stream) + 1) for cut in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(points)]
    answers, names = _run(chunks)
    whole_answers, whole_names = _run([stream])
    # Results are answered when the caller acknowledges them, which may come after the answers
    # to later messages of the same read: the same answers, not necessarily in the same order.
    assert names == whole_names
    assert sorted(answers) == sorted(whole_answers) == [("AA", str(n)) for n in range(1, 7)]
    assert names.count("ObservationsReceived") == 2 and names[-1] == "StatusReceived"
