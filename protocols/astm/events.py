"""Events emitted by `protocols.astm.Link`, in past tense: things that happened on the line.

Receiver side: `TransferStarted`, `MessageReceived`, `TransferEnded`, `TransferAborted`,
`FrameRejected`, `DuplicateFrameIgnored`, `GarbageDiscarded`.
Sender side: `MessageSent`, `MessageFailed`, `LinkBusy`, `ContentionDetected`,
`InterruptRequested`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ContentionDetected",
    "DuplicateFrameIgnored",
    "Event",
    "FrameRejected",
    "GarbageDiscarded",
    "InterruptRequested",
    "LinkBusy",
    "MessageFailed",
    "MessageReceived",
    "MessageSent",
    "TransferAborted",
    "TransferEnded",
    "TransferStarted",
]


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of every link event."""


# --- receiver side ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TransferStarted(Event):
    """The peer sent ENQ and we answered ACK: a transfer phase began [LIS1-A §6.2]."""


@dataclass(frozen=True, slots=True)
class MessageReceived(Event):
    """A valid end frame (ETX) completed a message. Its ACK is withheld until
    `Link.acknowledge()` (or `Link.refuse()`): commit first, then acknowledge.

    `text` is the message text (the texts of its ETB frames and of the ETX frame), `raw` the
    received bytes of those frames, each from STX to its CR (the LF after a frame, when there
    is one, is not included: see `FrameReader`).
    """

    text: bytes
    raw: bytes


@dataclass(frozen=True, slots=True)
class TransferEnded(Event):
    """The peer ended the transfer (EOT) and the line is neutral again [§6.4]."""


@dataclass(frozen=True, slots=True)
class TransferAborted(Event):
    """The transfer ended abnormally (receive timer expired, EOT or ENQ in the middle of a
    message): any partial message was discarded and the line is neutral [§6.5]."""

    reason: str


@dataclass(frozen=True, slots=True)
class FrameRejected(Event):
    """A frame was refused with NAK (bad checksum, wrong frame number, malformed, too long)
    [§6.5.1.1]. `raw` is the frame as received (its first `max_frame` bytes if too long)."""

    raw: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class DuplicateFrameIgnored(Event):
    """The peer resent the frame we had already accepted (our ACK was lost, or the frame came
    again while its ACK was withheld): it is acknowledged, never delivered twice [§6.5.1.1]."""

    raw: bytes


@dataclass(frozen=True, slots=True)
class GarbageDiscarded(Event):
    """Bytes that mean nothing where they came (noise, a frame cut short, a frame outside a
    transfer). Long runs are reported in several pieces."""

    data: bytes


# --- sender side ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageSent(Event):
    """The oldest queued message was fully acknowledged by the peer."""


@dataclass(frozen=True, slots=True)
class MessageFailed(Event):
    """A transfer of the oldest queued message failed and the link went to termination [§6.5]:
    six failed attempts on one frame, no reply to a frame or to ENQ.

    With ``dropped=False`` the message stays at the head of the queue and is sent again, in
    full, at the next establishment. After `max_retries` failed transfers it is removed from
    the queue and ``dropped=True``: the caller, who keeps its own copy, decides what next.
    """

    reason: str
    dropped: bool = False


@dataclass(frozen=True, slots=True)
class LinkBusy(Event):
    """The peer answered our ENQ with NAK; we try again after the busy timer [§6.2]."""


@dataclass(frozen=True, slots=True)
class ContentionDetected(Event):
    """Both sides sent ENQ. The instrument wins: the host yields and waits for the
    instrument's ENQ, the instrument sends ENQ again after a short wait [§6.2.7.1]."""


@dataclass(frozen=True, slots=True)
class InterruptRequested(Event):
    """The receiver answered a frame with EOT (receiver interrupt) [§6.3.5]. The frame counts
    as accepted; we finish the message in progress, terminate, and wait before the next ENQ.
    The messages still queued are kept."""
