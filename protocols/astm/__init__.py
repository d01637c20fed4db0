"""ASTM for analysers: the E1381 (CLSI LIS1-A) link and the E1394 (CLSI LIS2-A2) records.

Sans-IO: bytes and the time go in, events and bytes come out (see `link.py`)::

    from protocols import astm

    link = astm.Link(astm.Role.HOST)
    link.receive_data(data, now)
    while (event := link.next_event()) is not None:
        if isinstance(event, astm.MessageReceived):
            store(event.raw)                  # durable first...
            link.acknowledge(now)             # ...then the ACK of the end frame
            message = astm.decode_message(event.text)
    transport.write(link.data_to_send())
    call_at(link.get_timer(), link.handle_timer)
"""

from __future__ import annotations

from protocols.astm.events import (
    ContentionDetected,
    DuplicateFrameIgnored,
    Event,
    FrameRejected,
    GarbageDiscarded,
    InterruptRequested,
    LinkBusy,
    MessageFailed,
    MessageReceived,
    MessageSent,
    TransferAborted,
    TransferEnded,
    TransferStarted,
)
from protocols.astm.frames import Frame, checksum, split_text
from protocols.astm.link import Link, LinkState, Role, Timers
from protocols.astm.records import (
    Delimiters,
    Field,
    Message,
    ParsedValue,
    Record,
    Repeat,
    decode_message,
    encode_message,
    parse_value,
)

__all__ = [
    "ContentionDetected",
    "Delimiters",
    "DuplicateFrameIgnored",
    "Event",
    "Field",
    "Frame",
    "FrameRejected",
    "GarbageDiscarded",
    "InterruptRequested",
    "Link",
    "LinkBusy",
    "LinkState",
    "Message",
    "MessageFailed",
    "MessageReceived",
    "MessageSent",
    "ParsedValue",
    "Record",
    "Repeat",
    "Role",
    "Timers",
    "TransferAborted",
    "TransferEnded",
    "TransferStarted",
    "checksum",
    "decode_message",
    "encode_message",
    "parse_value",
    "split_text",
]
