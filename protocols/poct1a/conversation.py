"""The host side (the "observation reviewer", labgate) of a POCT1-A2 device conversation, as a
sans-IO state machine.

`HostConversation` never reads a clock and never does I/O: bytes come in with
`receive_data(data, now)`, events come out of `next_event()`, bytes to write come out of
`data_to_send()`, and its one deadline is `get_timer()`, passed back through
`handle_timer(now)`. The wall-clock time written in message headers comes from an injected
`clock` (none: the headers carry no creation time).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum, auto

from protocols.errors import LocalProtocolError, RemoteProtocolError
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
    Acknowledgement,
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
    Observations,
    Operator,
    OperatorList,
    OtherMessage,
    Request,
    decode,
    encode,
    message_name,
)
from protocols.poct1a.stream import MLLP_END, MLLP_START, MessageReader, mllp_wrap

__all__ = [
    "LOCK",
    "START_CONTINUOUS",
    "UNLOCK",
    "ConversationState",
    "HostConversation",
    "HostTimers",
]

# Theory of operation
# ===================
#
# A POCT1-A conversation, as the DCA Vantage capture shows it (reference/POCT1A.md §6):
#
#   device                                   host (labgate)
#   ------------------------------------     ---------------------------------------------
#   connects; HEL.R01                  --->  ACK AA                               [state 1]
#   DST.R01 (new_observations_qty n)   --->  ACK AA                               [state 2]
#                                      <---  labgate's own messages, one at a time: the
#                                            lock/unlock directive, the operator list
#                                            (OPL.R01 pages + EOT OPL), REQ.R01 ROBS when
#                                            n > 0, DTV.R01 START_CONTINUOUS once
#   ACK AA (or AE / ESC) for each      --->
#   OBS.R01 / OBS.R02 (after ROBS, or  --->  ACK AA once stored (withheld until the caller
#     whenever measured, continuous)         says so), AE when refused
#   EOT.R01 OBS                        --->  ACK AA
#   DST.R01 (locked, ready...)         --->  ACK AA
#   END.R01                            --->  ACK AA, closed
#
#   state              device sends                 we do                         next state
#   -----------------  ---------------------------  ----------------------------  ---------------
#   AWAITING_HELLO     HEL                          ACK AA, HelloReceived         AWAITING_STATUS
#   AWAITING_HELLO     anything else                ACK AE 100, MessageRejected   AWAITING_HELLO
#   AWAITING_HELLO     deadline (timers.hello)      END ABN, ConversationEnded    CLOSED
#   AWAITING_STATUS    DST                          ACK AA, StatusReceived        OPEN
#   any but CLOSED     HEL again                    ACK AA, HelloReceived         (unchanged)
#   AWAITING_STATUS+   OBS                          ObservationsReceived, ACK
#                                                   withheld until acknowledge()
#                                                   or reject()                   (unchanged)
#   AWAITING_STATUS+   DST, EVS, EOT                ACK AA and an event           (unchanged)
#   any but CLOSED     ACK / ESC to our message     HostMessageAccepted/Refused   (unchanged)
#   any but CLOSED     END                          ACK AA, ConversationEnded     CLOSED
#   OPEN               (our messages)               sent at safe points, below    OPEN
#   any but CLOSED     no answer to ours in time    END ABN, ConversationEnded    CLOSED
#
# The states are `ConversationState`; the per-message handlers are `_HANDLERS` at the end.
#
# The host speaks only once the device has said hello and told its status (§6: "the host
# speaks only after the device's HEL"; in the capture, after the DST). Its own messages wait
# in a queue and leave one at a time at a *safe point*: nothing of ours is waiting for the
# device's answer (the SA profile keeps one message outstanding: unverified as a rule, but all
# traces behave so), we owe the device no withheld ACK, and the device is not in the middle of
# the observation topic we asked for with REQ ROBS (the capture's host sent its directive only
# after the device's EOT). A topic that never ends is released after `timers.reply`, so a
# device that omits EOT cannot hold a lock directive back for longer than that.
#
# What the caller queues goes first; then, when nothing is queued, what the conversation
# decides itself: REQ ROBS when a DST reports new observations outside continuous mode, and
# START_CONTINUOUS once after the first DST (if `continuous`), so that the device then sends
# each result as it is measured [nova-doc] [sofia-sheet] [pix].
#
# Every device message with a control id is answered. OBS messages are answered only when the
# caller calls `acknowledge()` (after its commit: nothing acknowledged is ever lost) or
# `reject()` (after keeping the refused message). A message that cannot be read but whose root
# and control id could be is answered ACK AE with the reason; one whose XML is unreadable
# cannot be answered at all. A device may be full duplex: its messages are handled whenever they
# arrive, also while ours waits for its answer.
#
# The device's answer to our message is an ACK with ack_control_id = our control id, or ESC
# (refusal, e.g. CNC "cannot complete now" from a busy DCA). A refusal drops the rest of that
# topic (later OPL pages and their EOT). No answer within `timers.reply` ends the conversation
# (END ABN): the fact sheet treats the application timeout's consequence as unverified and
# suggests "END/close and let the device reconnect", which devices do at once (§2).
#
# END from labgate closes the conversation at once (ConversationEnded); the device's ACK to it
# is not awaited (closing the connection is the same for the device either way).
#
# Framing: answers follow the device's. A device that sent its last message inside an MLLP
# block gets MLLP-framed messages back (HemoScreen); bare XML otherwise (DCA Vantage).

#: DTV.R01 command codes from the [model]; LOCK/UNLOCK seen as DTV.R01 in [pix],
#: START_CONTINUOUS on the wire in the DCA capture.
START_CONTINUOUS = "START_CONTINUOUS"
LOCK = "LOCK"
UNLOCK = "UNLOCK"

# ACK.error_detail_cd values from the [model]: 100 sequence error, 101 required field missing,
# 200 unsupported, 202 internal (application) error.
_SEQUENCE = "100"
_FIELD_MISSING = "101"
_UNSUPPORTED = "200"
_INTERNAL = "202"

# Messages answered AA and otherwise ignored. KPA.R01 (keep-alive) appears only in Nova's code
# (unverified as standard).
_ACKNOWLEDGED_ONLY = frozenset({"KPA.R01"})

# Room kept in each operator-list page for the header's varying parts (control id, time).
_PAGE_SLACK = 64


class ConversationState(Enum):
    """Where the conversation is."""

    #: Connected; waiting for the device's HEL.R01.
    AWAITING_HELLO = auto()
    #: HEL received; waiting for its first DST.R01 before labgate speaks.
    AWAITING_STATUS = auto()
    #: Both sides may send; labgate's queued messages leave at safe points.
    OPEN = auto()
    #: END sent or received: write what is left and close the connection.
    CLOSED = auto()


@dataclass(frozen=True, slots=True)
class HostTimers:
    """How long labgate waits, in seconds. The DCA announces a 60 s application timeout,
    Sofia 100 s, Nova 120 s (`DCP.application_timeout`)."""

    hello: float = 30.0  #: from the connection to the device's HEL
    reply: float = 60.0  #: for the device's ACK (or ESC) to one of labgate's messages


@dataclass(slots=True)
class _Queued:
    """One of labgate's messages waiting to go out; `group` ties a topic's messages."""

    message: Message
    group: int


@dataclass(slots=True)
class _Outstanding:
    """Our message on the wire, waiting for the device's answer until `deadline`."""

    message: Message
    group: int
    deadline: float


class HostConversation:
    """One device connection, host side. See the theory of operation above."""

    def __init__(
        self,
        now: float,
        *,
        timers: HostTimers | None = None,
        max_message: int = 1_048_576,
        continuous: bool = True,
        clock: Callable[[], datetime] | None = None,
        first_control_id: int = 1,
    ) -> None:
        """Start a conversation on a connection that opened at `now`."""
        self.timers = timers or HostTimers()
        self._reader = MessageReader(max_message)
        self._clock = clock
        self._continuous_wanted = continuous
        self._next_id = first_control_id
        self._state = ConversationState.AWAITING_HELLO
        self._events: deque[Event] = deque()
        self._out = bytearray()
        self._hello_deadline: float | None = now + self.timers.hello
        self._queue: deque[_Queued] = deque()
        self._outstanding: _Outstanding | None = None
        self._withheld: dict[str, None] = {}  # OBS control ids awaiting acknowledge/reject
        self._topic_hold: float | None = None  # REQ ROBS accepted: until EOT, or this deadline
        self._want_request = False
        self._want_continuous = False
        self._continuous = False
        self._groups = 0
        self._group_opener: dict[int, str] = {}  # group -> control id of its first message
        self._mllp = False
        #: The device's HEL (None until it said hello) and its latest DST.
        self.hello: Hello | None = None
        self.status: DeviceStatus | None = None

    # --- the caller's side: I/O ---------------------------------------------------------

    @property
    def state(self) -> ConversationState:
        return self._state

    @property
    def continuous(self) -> bool:
        """The device accepted START_CONTINUOUS: it sends results as they are measured."""
        return self._continuous

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes as read from the connection, any chunking."""
        if self._state is ConversationState.CLOSED:
            return
        self._reader.receive_data(data)
        while self.state is not ConversationState.CLOSED:  # (handling a message may close)
            try:
                raw = self._reader.next_message()
            except RemoteProtocolError as exc:
                self._events.append(BytesDiscarded(str(exc)))
                continue
            if raw is None:
                break
            self._mllp = raw.mllp
            self._on_message(raw.data, now)
        self._pump(now)

    def next_event(self) -> Event | None:
        """The oldest event not yet read, or None."""
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        """All bytes waiting to be written to the device (and forget them)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def get_timer(self) -> float | None:
        """When `handle_timer` must be called (same clock as `now`), or None."""
        if self._state is ConversationState.CLOSED:
            return None
        deadlines = [
            deadline
            for deadline in (
                self._hello_deadline if self._state is ConversationState.AWAITING_HELLO else None,
                self._outstanding.deadline if self._outstanding is not None else None,
                self._topic_hold,
            )
            if deadline is not None
        ]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        """Act on whatever deadline has passed (calling it early does nothing)."""
        if self._state is ConversationState.CLOSED:
            return
        if (
            self._state is ConversationState.AWAITING_HELLO
            and self._hello_deadline is not None
            and now >= self._hello_deadline
        ):
            self._end(now, "ABN", f"no HEL.R01 within {self.timers.hello:g} s")
            return
        outstanding = self._outstanding
        if outstanding is not None and now >= outstanding.deadline:
            name = message_name(outstanding.message)
            control_id = outstanding.message.header.control_id
            self._end(
                now, "ABN", f"no answer to {name} {control_id} within {self.timers.reply:g} s"
            )
            return
        if self._topic_hold is not None and now >= self._topic_hold:
            self._topic_hold = None  # the device never closed the topic: go on anyway
        self._pump(now)

    # --- the caller's side: commands ----------------------------------------------------

    def acknowledge(self, control_id: str, now: float) -> None:
        """ACK AA for the withheld OBS message `control_id` (call it after the commit)."""
        self._settle(control_id, now, "AA", "", "")

    def reject(self, control_id: str, note: str, now: float, error_code: str = _INTERNAL) -> None:
        """ACK AE, with `note`, for the withheld OBS message `control_id` (after keeping it)."""
        self._settle(control_id, now, "AE", note, error_code)

    def send_directive(self, command: str, now: float, code_system: str = "") -> None:
        """Queue a DTV.R01 directive (LOCK, UNLOCK, GOTO_READY...)."""
        self._enqueue([Directive(self._placeholder(), command, code_system)])
        self._pump(now)

    def lock(self, now: float) -> None:
        """Queue DTV.R01 LOCK: the device stops testing, messaging goes on [model]."""
        self.send_directive(LOCK, now)

    def unlock(self, now: float) -> None:
        """Queue DTV.R01 UNLOCK."""
        self.send_directive(UNLOCK, now)

    def send_operator_list(self, operators: Iterable[Operator], now: float) -> None:
        """Queue the complete operator list (OPL.R01), in as many pages as the device's
        DSC.max_message_sz needs, closed by EOT OPL."""
        pages: list[Message] = [
            OperatorList(self._placeholder(), page) for page in self._pages(list(operators))
        ]
        self._enqueue([*pages, EndOfTopic(self._placeholder(), "OPL")])
        self._pump(now)

    def request_observations(self, now: float) -> None:
        """Ask the device for its new observations (REQ.R01 ROBS) at the next safe point."""
        self._want_request = True
        self._pump(now)

    def end(self, now: float, reason: str = "NRM", note: str = "") -> None:
        """Send END.R01 now and close the conversation."""
        if self._state is not ConversationState.CLOSED:
            self._end(now, reason, note)

    # --- from the device ----------------------------------------------------------------

    def _on_message(self, data: bytes, now: float) -> None:
        try:
            message = decode(data)
        except MessageDecodeError as exc:
            self._unreadable(data, exc, now)
            return
        if isinstance(message, End):
            self._answer(message, now)
            self._state = ConversationState.CLOSED
            note = f": {message.note}" if message.note else ""
            self._events.append(
                ConversationEnded(f"the device ended ({message.reason}{note})", by_device=True)
            )
            return
        if isinstance(message, Acknowledgement | Escape):
            self._answered(message, data, now)
            return
        if isinstance(message, Hello):
            self._answer(message, now)
            self.hello = message
            if self._state is ConversationState.AWAITING_HELLO:
                self._state = ConversationState.AWAITING_STATUS
                self._hello_deadline = None
            self._events.append(HelloReceived(message, data))
            return
        if self._state is ConversationState.AWAITING_HELLO:
            reason = f"{message_name(message)} before HEL.R01"
            self._answer(message, now, "AE", "HEL.R01 expected first", _SEQUENCE)
            self._events.append(MessageRejected(data, reason, answered=True))
            return
        handler = _HANDLERS.get(type(message))
        if handler is None:
            self._other(message, data, now)
            return
        handler(self, message, data, now)

    def _on_status(self, message: Message, data: bytes, now: float) -> None:
        assert isinstance(message, DeviceStatus)
        self._answer(message, now)
        self.status = message
        if self._state is ConversationState.AWAITING_STATUS:
            self._state = ConversationState.OPEN
            self._want_continuous = self._continuous_wanted
        if message.new_observations > 0 and not self._continuous:
            self._want_request = True
        self._events.append(StatusReceived(message, data))

    def _on_observations(self, message: Message, data: bytes, now: float) -> None:
        assert isinstance(message, Observations)
        control_id = message.header.control_id
        if control_id in self._withheld:
            self._events.append(
                MessageRejected(
                    data, f"OBS {control_id} sent again before its answer", answered=False
                )
            )
            return
        self._withheld[control_id] = None
        if self._topic_hold is not None:
            self._topic_hold = now + self.timers.reply  # the topic is alive
        self._events.append(ObservationsReceived(message, data))

    def _on_events(self, message: Message, data: bytes, now: float) -> None:
        assert isinstance(message, DeviceEvents)
        self._answer(message, now)
        self._events.append(EventsReported(message, data))

    def _on_end_of_topic(self, message: Message, data: bytes, now: float) -> None:
        assert isinstance(message, EndOfTopic)
        self._answer(message, now)
        if message.topic == "OBS":
            self._topic_hold = None
        self._events.append(TopicEnded(message, data))

    def _other(self, message: Message, data: bytes, now: float) -> None:
        """Messages a device does not send to a host (REQ, DTV, OPL) or that labgate does not
        handle (PTL, vendor topics): AE "unsupported", so the device does not wait."""
        name = message_name(message)
        if isinstance(message, OtherMessage) and name in _ACKNOWLEDGED_ONLY:
            self._answer(message, now)
            return
        self._answer(message, now, "AE", f"{name} is not supported here", _UNSUPPORTED)
        self._events.append(MessageRejected(data, f"{name} is not supported", answered=True))

    def _unreadable(self, data: bytes, exc: MessageDecodeError, now: float) -> None:
        reason = str(exc)
        control_id = exc.control_id
        if not control_id:
            self._events.append(MessageRejected(data, reason, answered=False))
        elif (exc.name or "").startswith("OBS."):
            # Results, maybe: the caller keeps them before the AE (never dropped silently).
            if control_id in self._withheld:
                self._events.append(MessageRejected(data, reason, answered=False))
                return
            self._withheld[control_id] = None
            self._events.append(ObservationsUnreadable(data, reason, control_id))
        elif exc.name in ("ACK.R01", "ESC.R01"):
            self._events.append(MessageRejected(data, reason, answered=False))  # never answered
        else:
            self._write(
                Acknowledgement(self._header(), control_id, "AE", reason[:200], _FIELD_MISSING)
            )
            self._events.append(MessageRejected(data, reason, answered=True))

    def _answered(self, message: Acknowledgement | Escape, data: bytes, now: float) -> None:
        """The device's answer to one of our messages."""
        answered = message.acknowledged if isinstance(message, Acknowledgement) else message.escaped
        outstanding = self._outstanding
        if outstanding is None or answered != outstanding.message.header.control_id:
            self._events.append(
                MessageRejected(data, f"an answer to {answered!r}, which awaits none", False)
            )
            return
        self._outstanding = None
        sent = outstanding.message
        if isinstance(message, Acknowledgement) and message.accepted:
            if isinstance(sent, Request) and sent.request == "ROBS":
                self._topic_hold = now + self.timers.reply
            elif isinstance(sent, Directive) and sent.command == START_CONTINUOUS:
                self._continuous = True
                self._want_request = False
            self._events.append(HostMessageAccepted(sent, data))
            return
        if isinstance(message, Acknowledgement):
            reason = " ".join(
                part for part in (message.type, message.error_code, message.note) if part
            )
        else:
            reason = " ".join(part for part in ("ESC", message.detail, message.note) if part)
        # The rest of that topic goes no further (the device refused its beginning).
        self._queue = deque(item for item in self._queue if item.group != outstanding.group)
        self._group_opener.pop(outstanding.group, None)
        self._events.append(HostMessageRefused(sent, reason, data))

    # --- to the device ------------------------------------------------------------------

    def _settle(self, control_id: str, now: float, kind: str, note: str, code: str) -> None:
        if control_id not in self._withheld:
            raise LocalProtocolError(f"no OBS message {control_id!r} is awaiting an answer")
        del self._withheld[control_id]
        if self._state is ConversationState.CLOSED:
            return
        self._write(Acknowledgement(self._header(), control_id, kind, note[:200], code))
        self._pump(now)

    def _answer(
        self, message: Message, now: float, kind: str = "AA", note: str = "", code: str = ""
    ) -> None:
        self._write(
            Acknowledgement(self._header(), message.header.control_id, kind, note[:200], code)
        )

    def _pump(self, now: float) -> None:
        """Send our next message if this is a safe point (see the theory of operation)."""
        if (
            self._state is not ConversationState.OPEN
            or self._outstanding is not None
            or self._withheld
            or self._topic_hold is not None
        ):
            return
        if self._queue:
            item = self._queue.popleft()
        elif self._want_request:
            self._want_request = False
            item = _Queued(Request(self._placeholder(), "ROBS"), self._new_group())
        elif self._want_continuous:
            self._want_continuous = False
            item = _Queued(Directive(self._placeholder(), START_CONTINUOUS), self._new_group())
        else:
            return
        message = dataclasses.replace(item.message, header=self._header())
        # A topic's EOT names the control id of the message that opened it (fact sheet §5).
        opener = self._group_opener.setdefault(item.group, message.header.control_id)
        if isinstance(message, EndOfTopic) and not message.topic_control_id:
            message = dataclasses.replace(message, topic_control_id=opener)
        if not any(queued.group == item.group for queued in self._queue):
            del self._group_opener[item.group]  # the group's last message
        raw = self._write(message)
        self._outstanding = _Outstanding(message, item.group, now + self.timers.reply)
        self._events.append(HostMessageSent(message, raw))

    def _end(self, now: float, reason: str, note: str) -> None:
        message = End(self._header(), reason, note)
        raw = self._write(message)
        self._state = ConversationState.CLOSED
        self._outstanding = None
        self._topic_hold = None
        self._events.append(HostMessageSent(message, raw))
        self._events.append(ConversationEnded(note or reason, by_device=False))

    def _write(self, message: Message) -> bytes:
        raw = encode(message)
        self._out += mllp_wrap(raw) if self._mllp else raw
        return raw

    def _enqueue(self, messages: list[Message]) -> None:
        if self._state is ConversationState.CLOSED:
            return
        group = self._new_group()
        self._queue.extend(_Queued(message, group) for message in messages)

    def _new_group(self) -> int:
        self._groups += 1
        return self._groups

    def _header(self) -> Header:
        control_id = str(self._next_id)
        self._next_id += 1
        return Header(control_id, self._clock() if self._clock is not None else None)

    def _placeholder(self) -> Header:
        """The header of a queued message; the real one is given when it is sent."""
        return Header("")

    def _pages(self, operators: list[Operator]) -> list[tuple[Operator, ...]]:
        """The operators split so that each OPL.R01 fits the device's DSC.max_message_sz
        (pages inside one topic, as a Nova-style server does; fact sheet §6)."""
        limit = self.hello.max_message_size if self.hello is not None else None
        if not limit or not operators:
            return [tuple(operators)]
        sample = Header("9" * 12, self._clock() if self._clock is not None else None)
        empty = len(encode(OperatorList(sample, ())))
        budget = limit - empty - len(MLLP_START) - len(MLLP_END) - _PAGE_SLACK
        pages: list[tuple[Operator, ...]] = []
        page: list[Operator] = []
        used = 0
        for operator in operators:
            cost = len(encode(OperatorList(sample, (operator,)))) - empty
            if page and used + cost > budget:
                pages.append(tuple(page))
                page, used = [], 0
            # An operator larger than the whole budget still goes, alone: the device's
            # refusal (ACK AE) then says so, rather than labgate silently dropping them.
            page.append(operator)
            used += cost
        pages.append(tuple(page))
        return pages


_HANDLERS: dict[type, Callable[[HostConversation, Message, bytes, float], None]] = {
    DeviceStatus: HostConversation._on_status,
    Observations: HostConversation._on_observations,
    DeviceEvents: HostConversation._on_events,
    EndOfTopic: HostConversation._on_end_of_topic,
}
