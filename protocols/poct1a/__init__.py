"""POCT1-A2 (CLSI POCT1-A) for point-of-care devices: the Device Messaging Layer's XML messages,
where they begin and end in a TCP stream, and the host side of the device conversation.

Sans-IO: bytes and the time go in, events and bytes come out (see `conversation.py`)::

    from protocols import poct1a

    conversation = poct1a.HostConversation(now, timers=poct1a.HostTimers(reply=60))
    conversation.receive_data(data, now)
    while (event := conversation.next_event()) is not None:
        if isinstance(event, poct1a.HelloReceived):
            conversation.send_operator_list(operators, now)  # sent once the DST has come
        elif isinstance(event, poct1a.ObservationsReceived):
            store(event.raw)                                  # durable first...
            conversation.acknowledge(event.control_id, now)   # ...then ACK AA
    transport.write(conversation.data_to_send())
    call_at(conversation.get_timer(), conversation.handle_timer)

What the element names and codes rest on is `reference/POCT1A.md` (no CLSI text was
available); what it marks unverified is said so where it is used.
"""

from __future__ import annotations

from protocols.poct1a.conversation import (
    LOCK,
    START_CONTINUOUS,
    UNLOCK,
    ConversationState,
    HostConversation,
    HostTimers,
)
from protocols.poct1a.events import (
    BytesDiscarded,
    ConversationEnded,
    Event,
    EventsReported,
    HelloReceived,
    HostMessageAccepted,
    HostMessageRefused,
    HostMessageSent,
    MessageRejected,
    ObservationsReceived,
    ObservationsUnreadable,
    StatusReceived,
    TopicEnded,
)
from protocols.poct1a.messages import (
    CONDITION_BUSY,
    CONDITION_LOCKED,
    CONDITION_PARTIALLY_LOCKED,
    CONDITION_READY,
    NON_PATIENT_ROLES,
    XML_DECLARATION,
    Acknowledgement,
    ControlMaterial,
    DeviceEvent,
    DeviceEvents,
    DeviceStatus,
    Directive,
    End,
    EndOfTopic,
    Escape,
    Header,
    Hello,
    Message,
    MessageDecodeError,
    Observation,
    Observations,
    Operator,
    OperatorList,
    OtherMessage,
    PatientInfo,
    Request,
    Service,
    decode,
    encode,
    message_name,
    parse_interval,
)
from protocols.poct1a.stream import MLLP_END, MLLP_START, MessageReader, RawMessage, mllp_wrap

__all__ = [
    "CONDITION_BUSY",
    "CONDITION_LOCKED",
    "CONDITION_PARTIALLY_LOCKED",
    "CONDITION_READY",
    "LOCK",
    "MLLP_END",
    "MLLP_START",
    "NON_PATIENT_ROLES",
    "START_CONTINUOUS",
    "UNLOCK",
    "XML_DECLARATION",
    "Acknowledgement",
    "BytesDiscarded",
    "ControlMaterial",
    "ConversationEnded",
    "ConversationState",
    "DeviceEvent",
    "DeviceEvents",
    "DeviceStatus",
    "Directive",
    "End",
    "EndOfTopic",
    "Escape",
    "Event",
    "EventsReported",
    "Header",
    "Hello",
    "HelloReceived",
    "HostConversation",
    "HostMessageAccepted",
    "HostMessageRefused",
    "HostMessageSent",
    "HostTimers",
    "Message",
    "MessageDecodeError",
    "MessageReader",
    "MessageRejected",
    "Observation",
    "Observations",
    "ObservationsReceived",
    "ObservationsUnreadable",
    "Operator",
    "OperatorList",
    "OtherMessage",
    "PatientInfo",
    "RawMessage",
    "Request",
    "Service",
    "StatusReceived",
    "TopicEnded",
    "decode",
    "encode",
    "message_name",
    "mllp_wrap",
    "parse_interval",
]
