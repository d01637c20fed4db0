"""Events emitted by `protocols.poct1a.HostConversation`, in past tense.

From the device: `HelloReceived`, `StatusReceived`, `ObservationsReceived` and
`ObservationsUnreadable` (their acknowledgement is withheld until the caller answers),
`EventsReported`, `TopicEnded`, `MessageRejected`, `BytesDiscarded`.
About labgate's own messages: `HostMessageSent`, `HostMessageAccepted`, `HostMessageRefused`.
The end: `ConversationEnded`.

Every event that stands for bytes received carries them (`raw`), for the trace.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocols.poct1a.messages import (
    DeviceEvents,
    DeviceStatus,
    EndOfTopic,
    Hello,
    Message,
    Observations,
)

__all__ = [
    "BytesDiscarded",
    "ConversationEnded",
    "Event",
    "EventsReported",
    "HelloReceived",
    "HostMessageAccepted",
    "HostMessageRefused",
    "HostMessageSent",
    "MessageRejected",
    "ObservationsReceived",
    "ObservationsUnreadable",
    "StatusReceived",
    "TopicEnded",
]


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of every conversation event."""


@dataclass(frozen=True, slots=True)
class HelloReceived(Event):
    """The device introduced itself (HEL); it was acknowledged."""

    hello: Hello
    raw: bytes


@dataclass(frozen=True, slots=True)
class StatusReceived(Event):
    """The device reported its status (DST); it was acknowledged. The first one opens the
    conversation to labgate's own messages."""

    status: DeviceStatus
    raw: bytes


@dataclass(frozen=True, slots=True)
class ObservationsReceived(Event):
    """Results or QC (OBS.R01/R02). Its ACK is withheld: store it, then call
    `acknowledge(control_id)`, or `reject(control_id, why)` to refuse it."""

    message: Observations
    raw: bytes

    @property
    def control_id(self) -> str:
        return self.message.header.control_id


@dataclass(frozen=True, slots=True)
class ObservationsUnreadable(Event):
    """An OBS message that could not be decoded. Its answer is withheld too: keep it (never
    drop results silently), then `reject(control_id, reason)`."""

    raw: bytes
    reason: str
    control_id: str


@dataclass(frozen=True, slots=True)
class EventsReported(Event):
    """The device reported events (EVS); they were acknowledged."""

    message: DeviceEvents
    raw: bytes


@dataclass(frozen=True, slots=True)
class TopicEnded(Event):
    """The device closed a topic (EOT); it was acknowledged."""

    message: EndOfTopic
    raw: bytes


@dataclass(frozen=True, slots=True)
class MessageRejected(Event):
    """A device message that was refused: unreadable, or not allowed where it came (anything
    but HEL first). `answered` says whether an ACK AE went back (it needs a control id)."""

    raw: bytes
    reason: str
    answered: bool


@dataclass(frozen=True, slots=True)
class BytesDiscarded(Event):
    """Bytes of the stream that were no message: garbage, a message longer than the limit,
    one cut short by MLLP bytes, or one with a DOCTYPE. Nothing can be answered."""

    reason: str


@dataclass(frozen=True, slots=True)
class HostMessageSent(Event):
    """One of labgate's own messages (directive, operator list, request, EOT, END) went out."""

    message: Message
    raw: bytes


@dataclass(frozen=True, slots=True)
class HostMessageAccepted(Event):
    """The device acknowledged (ACK AA) one of labgate's messages."""

    message: Message
    raw: bytes


@dataclass(frozen=True, slots=True)
class HostMessageRefused(Event):
    """The device refused one of labgate's messages (ACK AE, or ESC); `reason` says why.
    The rest of that message's topic (later pages, its EOT) is not sent."""

    message: Message
    reason: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class ConversationEnded(Event):
    """The conversation is over (END from the device, answered; or END from labgate: asked
    for, or no answer in time). Write what `data_to_send()` holds, then close."""

    reason: str
    by_device: bool
