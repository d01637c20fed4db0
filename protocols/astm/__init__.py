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

`UnframedLink` has the same calls for analysers that send records without E1381 frames
(`unframed.py`). `read_capture` and `split_capture_messages` read capture files and logs as found
in the wild through the same two links (`capture.py`).
"""

from __future__ import annotations

from protocols.astm.capture import (
    Capture,
    CaptureIssue,
    CaptureMessage,
    read_capture,
    split_capture_messages,
)
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
from protocols.astm.unframed import UnframedLink, UnframedState

__all__ = [
    "Capture",
    "CaptureIssue",
    "CaptureMessage",
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
    "UnframedLink",
    "UnframedState",
    "checksum",
    "decode_message",
    "encode_message",
    "parse_value",
    "read_capture",
    "split_capture_messages",
    "split_text",
]
