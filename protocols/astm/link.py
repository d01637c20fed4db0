"""The E1381 / CLSI LIS1-A data link, as a sans-IO state machine.

`Link` plays either side of one serial line or TCP connection. It never reads a clock and
never does I/O: bytes come in with `receive_data(data, now)`, events come out of `next_event()`,
bytes to write come out of `data_to_send()`, and the one deadline it may have is `get_timer()`,
to be passed back through `handle_timer(now)` when it is due.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum, auto

from protocols.astm._core import CoreOutput
from protocols.astm.constants import (
    ACK,
    ENQ,
    EOT,
    MAX_FRAME,
    MAX_RETRIES,
    MAX_TEXT,
    NAK,
    RESTRICTED,
    TIMER_BUSY,
    TIMER_CONTENTION_HOST,
    TIMER_CONTENTION_INSTRUMENT,
    TIMER_ESTABLISH,
    TIMER_INTERRUPT,
    TIMER_RECEIVE,
    TIMER_REPLY,
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
from protocols.astm.frames import (
    Frame,
    FrameReader,
    FrameToken,
    GarbageToken,
    ReadMode,
    Token,
    split_text,
)
from protocols.errors import LocalProtocolError

__all__ = ["Link", "LinkState", "Role", "Timers"]

# Theory of operation
# ===================
#
# LIS1-A runs one direction at a time, stop-and-wait, in three phases [§6.1.3-6.1.5]:
#
#   establishment [§6.2]   the sender sends ENQ; the receiver answers ACK (go) or NAK (busy).
#   transfer [§6.3]        the sender sends one frame at a time and waits for the reply:
#                          ACK = next frame, NAK = send it again, EOT = accepted, and "please
#                          stop soon" (receiver interrupt, §6.3.5).
#   termination [§6.4]     the sender sends EOT; the line is neutral again.
#
# One `Link` object plays both parts, since either side may send when the line is neutral:
#
#   state          input                    we do                              next state
#   -------------  -----------------------  ---------------------------------  ---------------
#   NEUTRAL        send_message()           ENQ                                ESTABLISHING
#   NEUTRAL        ENQ                      ACK, TransferStarted               RECEIVING
#   BACKOFF        deadline                 ENQ if messages are queued         ESTABLISHING
#   BACKOFF        ENQ                      ACK, TransferStarted               RECEIVING
#   ESTABLISHING   ACK                      send the first frame               SENDING
#   ESTABLISHING   NAK                      LinkBusy                           BACKOFF (10 s)
#   ESTABLISHING   ENQ                      ContentionDetected                 BACKOFF (20/1 s)
#   ESTABLISHING   deadline (15 s)          EOT, MessageFailed                 BACKOFF (10 s)
#   SENDING        ACK (or EOT: interrupt)  next frame; after the last one     SENDING
#                                           MessageSent, then the next
#                                           message, or EOT                    NEUTRAL/BACKOFF
#   SENDING        any other byte           resend; the 6th time EOT,
#                                           MessageFailed                      BACKOFF (10 s)
#   SENDING        deadline (15 s)          EOT, MessageFailed                 BACKOFF (10 s)
#   RECEIVING      good ETB frame           ACK                                RECEIVING
#   RECEIVING      good ETX frame           MessageReceived (no ACK yet)       ACK_WITHHELD
#   RECEIVING      duplicate / bad frame    ACK, DuplicateFrameIgnored /
#                                           NAK, FrameRejected                 RECEIVING
#   RECEIVING      EOT, deadline (30 s)     TransferEnded / TransferAborted    NEUTRAL
#   ACK_WITHHELD   acknowledge() / refuse() ACK / NAK                          RECEIVING
#   ACK_WITHHELD   EOT, deadline (30 s)     TransferEnded / TransferAborted    NEUTRAL
#
# The states are `LinkState`; the (state, input) → handler table is `_TRANSITIONS` at the end of
# this module, and any pair not in it means "ignore the input as garbage". Inputs are the tokens
# of `FrameReader` (frames, control characters, garbage), read in a mode that depends on the
# state: while we wait for the reply to a frame every byte is a reply and anything but ACK or EOT
# counts as NAK [§6.5.1.2]; while we wait for the reply to ENQ only ACK, NAK and ENQ matter
# [§6.2]; otherwise frames, ENQ and EOT matter, and everything else is reported as garbage.
#
# Receiving [§6.3, §6.5.1.1]. Frame numbers run 1..7, 0, 1... from the first frame after ENQ.
# A frame is accepted when its checksum is right and its FN is the expected one. A frame whose
# FN is the last accepted one is the sender's retransmission after our ACK was lost: it is
# ACKed again and not delivered twice (`DuplicateFrameIgnored`). Any other frame is NAKed
# (`FrameRejected`). Intermediate (ETB) frames are ACKed at once and kept; the end (ETX) frame
# completes a message, which is delivered as `MessageReceived` *without* an ACK: the state is
# ACK_WITHHELD until the application has made the message durable and calls `acknowledge()`
# (ACK) or `refuse()` (NAK: the sender will retransmit the frame, which is then delivered again
# as a new `MessageReceived` with the same text). While the ACK is withheld:
#   - a retransmission of the withheld frame (same FN) is dropped (`DuplicateFrameIgnored`);
#   - EOT means the sender gave up waiting (its 15 s reply timer, §6.5): the transfer ends
#     (`TransferEnded`) and the pending `acknowledge()`/`refuse()` becomes a no-op, because an
#     ACK sent now would be read as the reply to the sender's next ENQ. Expect the message again;
#   - garbage is reported as usual;
#   - anything else (the next frame, an ENQ...) is held back, unread, and handled after the
#     reply is sent, in order. At most `max_frame` bytes are held; beyond that they are
#     discarded as garbage (a conforming sender sends nothing before our reply).
# Lenient receiving (`lenient_frames=True`, off by default). Some analysers send frames with no
# FN digit and/or no checksum digits (the Maglumi: `STX text ETX CR LF`, PROTOCOLS.md §1.5).
# Strictly, those are refused with NAK. With the option, a frame without checksum digits is
# accepted unchecked (digits that are present must still match), and a frame without FN is
# taken as the next expected one: nothing then tells a retransmission from a new frame, so
# a frame resent after a lost ACK is delivered twice (its message shows up twice downstream).
# Numbered frames keep the usual sequence checks; a frame without FN whose text starts with a
# digit 0-7 reads as numbered (records start with a letter, so real traffic does not do that).
#
# The receive timer (30 s, §6.5) runs from the start of the transfer and from each reply; it
# also bounds the wait for `acknowledge()`. When it expires the partial message is discarded
# (`TransferAborted`) and the line is neutral. EOT (or ENQ) in the middle of a message also
# discards the partial message (`TransferAborted`); EOT between messages is `TransferEnded`.
#
# Sending [§6.2, §6.3, §6.5]. `send_message()` queues a message; from a neutral line the link
# sends ENQ. Once ACKed, it sends the head message's frames (split at `max_text`, ETB ... ETX),
# then the next queued message in the same transfer, and EOT when the queue is empty.
#   - NAK (or anything but ACK/EOT) to a frame: resend it; after `max_retries` failed attempts
#     on one frame, go to termination (EOT) [§6.5.1.2].
#   - no reply to a frame within 15 s, or to ENQ within 15 s: termination (EOT) [§6.5].
#   In those three cases the head message failed (`MessageFailed`): it stays at the head of the
#   queue and is sent again *in full*, from FN 1, at the next establishment, after the busy
#   delay (10 s; LIS1-A does not say how long to wait, the busy delay is a safe pause). After
#   `max_retries` failed transfers it is dropped (`MessageFailed(dropped=True)`).
#   - NAK to ENQ: the receiver is busy; wait 10 s, then ENQ again (`LinkBusy`; not a failure,
#     retried for as long as the peer stays busy) [§6.2].
#   - ENQ to ENQ, contention [§6.2.7.1, §6.5.2.2]: the instrument wins. The host yields: it does
#     not answer this ENQ, waits up to 20 s for the instrument's next ENQ (answered with ACK as
#     usual), then treats the line as neutral and tries again. The instrument waits 1 s and
#     sends ENQ again.
#   - EOT to a frame, receiver interrupt [§6.3.5]: the frame counts as accepted. We honour the
#     request at the end of the message in progress (LIS1-A lets a sender ignore it, and the
#     receiver repeats it, so finishing the message is allowed and avoids resending it), then
#     terminate and send no ENQ for 15 s, unless the peer takes the line and releases it first.
#     Queued messages stay queued.
# A reply can only follow the frame it answers: bytes already received when a frame is sent
# (a receiver's duplicate ACK in the same read, say) are discarded, not taken as its reply.
# Bytes received during a transfer that mean nothing are reported as `GarbageDiscarded`;
# bytes before an STX never disturb frame recognition [§6.5.1.1].

_HOLD_LIMIT_EXTRA = 16  # held-back bytes allowed beyond max_frame (room for a trailer and EOT)


class Role(Enum):
    """Which end of the link this is; it only matters on contention [§6.2.7.1]."""

    #: The computer system (labgate's side, or the LIS): yields on contention.
    HOST = "host"
    #: The analyser (played by the simulators): wins on contention.
    INSTRUMENT = "instrument"


@dataclass(frozen=True, slots=True)
class Timers:
    """The link's timers, in seconds; defaults from LIS1-A [§6.2, §6.3.5, §6.5]."""

    establish: float = TIMER_ESTABLISH  #: sender waits for the reply to ENQ
    reply: float = TIMER_REPLY  #: sender waits for the reply to a frame
    receive: float = TIMER_RECEIVE  #: receiver waits for the next frame or EOT
    busy: float = TIMER_BUSY  #: wait after NAK to ENQ (and after a failed transfer)
    contention_host: float = TIMER_CONTENTION_HOST  #: host waits for the instrument's ENQ
    contention_instrument: float = TIMER_CONTENTION_INSTRUMENT  #: instrument waits, then ENQ
    interrupt: float = TIMER_INTERRUPT  #: no new ENQ this long after a receiver interrupt


class LinkState(Enum):
    """Where the link is. Only NEUTRAL and BACKOFF are neutral lines."""

    #: Line idle, nothing queued (or about to send ENQ).
    NEUTRAL = auto()
    #: Line idle, but our next ENQ waits for a deadline: busy peer, failed transfer, contention,
    #: receiver interrupt. An ENQ from the peer is accepted meanwhile.
    BACKOFF = auto()
    #: We sent ENQ and wait for ACK, NAK or ENQ.
    ESTABLISHING = auto()
    #: We sent a frame and wait for its reply.
    SENDING = auto()
    #: We accepted the peer's ENQ and wait for its next frame or EOT.
    RECEIVING = auto()
    #: We delivered a `MessageReceived`; its ACK waits for `acknowledge()` or `refuse()`.
    ACK_WITHHELD = auto()


_READ_MODE = {
    LinkState.NEUTRAL: ReadMode.FRAMES,
    LinkState.BACKOFF: ReadMode.FRAMES,
    LinkState.ESTABLISHING: ReadMode.ESTABLISHING,
    LinkState.SENDING: ReadMode.REPLY,
    LinkState.RECEIVING: ReadMode.FRAMES,
    LinkState.ACK_WITHHELD: ReadMode.FRAMES,
}


class _Input(Enum):
    """What a token is, for the transition table."""

    ENQ = auto()
    ACK = auto()
    NAK = auto()
    EOT = auto()
    OTHER = auto()  # any other single byte (only read as such while awaiting a frame's reply)
    FRAME = auto()
    GARBAGE = auto()


_CONTROL = {ENQ: _Input.ENQ, ACK: _Input.ACK, NAK: _Input.NAK, EOT: _Input.EOT}


def _classify(token: Token) -> _Input:
    if isinstance(token, FrameToken):
        return _Input.FRAME
    if isinstance(token, GarbageToken):
        return _Input.GARBAGE
    return _CONTROL.get(token.byte, _Input.OTHER)


def _token_bytes(token: Token) -> bytes:
    if isinstance(token, FrameToken):
        return token.raw
    if isinstance(token, GarbageToken):
        return token.data
    return token.byte


@dataclass(slots=True)
class _Outgoing:
    """A queued message and how many of its transfers failed."""

    text: bytes
    failures: int = 0


class Link(CoreOutput):
    """One end of an E1381 link (see the theory of operation in this module).

    `role` decides who yields on contention; `timers` defaults to LIS1-A's; messages we send
    are cut into frames of `max_text` text bytes; a frame is tried `max_retries` times (and a
    message transferred at most that many times); frames longer than `max_frame` bytes are
    refused. `lenient_frames` accepts received frames without frame number or checksum (see
    "Lenient receiving" above); leave it off unless an analyser needs it. Raises
    `LocalProtocolError` for impossible settings.
    """

    def __init__(
        self,
        role: Role,
        timers: Timers = Timers(),
        max_text: int = MAX_TEXT,
        max_retries: int = MAX_RETRIES,
        max_frame: int = MAX_FRAME,
        *,
        lenient_frames: bool = False,
    ) -> None:
        if max_text < 1:
            raise LocalProtocolError(f"max_text must be at least 1, not {max_text}")
        if max_retries < 1:
            raise LocalProtocolError(f"max_retries must be at least 1, not {max_retries}")
        if max_frame < 8:
            raise LocalProtocolError(f"max_frame must be at least 8, not {max_frame}")
        self.role = role
        self.timers = timers
        self.max_text = max_text
        self.max_retries = max_retries
        self.max_frame = max_frame
        self.lenient_frames = lenient_frames
        self._reader = FrameReader(max_frame, checksum_required=not lenient_frames)
        super().__init__()  # events, output, deadline (CoreOutput)
        self._state = LinkState.NEUTRAL
        # sender
        self._queue: deque[_Outgoing] = deque()
        self._frames: list[Frame] = []  # frames of the head message, numbered for this transfer
        self._index = 0  # the frame awaiting its reply
        self._tries = 0  # failed attempts on that frame
        self._next_fn = 1  # FN of the next message's first frame in this transfer
        self._interrupted = False  # the receiver asked us to stop after this message
        # receiver
        self._expected = 1  # FN the next new frame must carry
        self._last: int | None = None  # FN of the last accepted frame
        self._text = bytearray()  # texts of the accepted ETB frames of the current message
        self._raw = bytearray()  # and their bytes
        self._withheld: Frame | None = None  # the end frame whose ACK is withheld
        self._stale_answers = 0  # delivered messages whose reply the link no longer needs
        self._held: Token | None = None  # read while the ACK was withheld, handled after it

    # --- public API -----------------------------------------------------------------------

    @property
    def state(self) -> LinkState:
        """The current `LinkState`."""
        return self._state

    @property
    def busy(self) -> bool:
        """True while the line is not neutral or messages are queued."""
        return self._state is not LinkState.NEUTRAL or bool(self._queue)

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes from the peer, cut anywhere; then read `next_event()` and `data_to_send()`."""
        self._reader.feed(data)
        self._process(now)

    def handle_timer(self, now: float) -> None:
        """Act on the deadline if it has passed (calling it early does nothing)."""
        if self._deadline is None or now < self._deadline:
            return
        self._deadline = None
        state = self._state
        if state is LinkState.BACKOFF:
            self._set_state(LinkState.NEUTRAL)
            self._establish_if_queued(now)
        elif state is LinkState.ESTABLISHING:
            self._fail(f"no reply to ENQ within {self.timers.establish:g} s", now)
        elif state is LinkState.SENDING:
            number = self._frames[self._index].number
            self._fail(f"no reply to frame {number} within {self.timers.reply:g} s", now)
        elif state is LinkState.RECEIVING:
            self._end_transfer(f"no frame or EOT within {self.timers.receive:g} s", now)
        elif state is LinkState.ACK_WITHHELD:
            self._drop_withheld()
            self._end_transfer(
                f"end frame not acknowledged by the application within {self.timers.receive:g} s",
                now,
                always_abort=True,
            )
        self._process(now)

    def send_message(self, text: bytes, now: float) -> None:
        """Queue one message (E1394 records, CR-terminated) to send to the peer.

        Raises `LocalProtocolError` if the text is empty or holds characters LIS1-A forbids in
        message text (§6.6: STX, ETX, ETB, EOT, ENQ, ACK, NAK, LF...).
        """
        if not text:
            raise LocalProtocolError("cannot send an empty message")
        bad = RESTRICTED.intersection(text)
        if bad:
            raise LocalProtocolError(
                f"message holds characters LIS1-A §6.6 forbids in text: {sorted(bad)}"
            )
        self._queue.append(_Outgoing(bytes(text)))
        self._establish_if_queued(now)
        self._process(now)

    def close(self, now: float) -> None:
        """The host is going away (labgate stops, or this analyser left its configuration).
        A transfer we are sending ends properly with EOT (the termination phase, §6.4) and the
        line is left neutral; messages still queued are dropped from the link — the caller
        keeps them to send after a restart. A transfer we are receiving is the peer's to end:
        nothing is sent, and its own timers tell it we are gone."""
        if self._state in (LinkState.ESTABLISHING, LinkState.SENDING):
            self._terminate(now, None)
        self._queue.clear()

    def acknowledge(self, now: float) -> None:
        """Send the withheld ACK for the end frame delivered as `MessageReceived`.

        Call it once per `MessageReceived`, in order, after the message is durable. If the link
        already dropped that frame (the sender gave up, or the receive timer expired), this is
        a no-op. Raises `LocalProtocolError` when no message is awaiting a reply.
        """
        if self._answer_is_stale():
            return
        frame = self._withheld
        assert frame is not None and frame.number is not None
        self._send(ACK)
        self._last, self._expected = frame.number, (frame.number + 1) % 8
        self._text.clear()
        self._raw.clear()
        self._withheld = None
        self._set_state(LinkState.RECEIVING, self.timers.receive + now)
        self._process(now)

    def refuse(self, now: float) -> None:
        """Send NAK instead of ACK for the delivered end frame (e.g. the store could not commit).

        The sender retransmits the frame, and the message is delivered again as a new
        `MessageReceived`. Same calling rules as `acknowledge()`.
        """
        if self._answer_is_stale():
            return
        self._send(NAK)
        self._withheld = None
        self._set_state(LinkState.RECEIVING, self.timers.receive + now)
        self._process(now)

    # --- the machinery --------------------------------------------------------------------

    def _handle_token(self, token: Token, now: float) -> None:
        """Handle one token as if this link had read it from the stream.

        For `capture.py` only, which cuts a recorded stream with its own `FrameReader` (in
        `ReadMode.FRAMES`, the only mode a host that never sends reads in) to know where each
        token lies; its events then come out at once, not when the next bytes arrive. A live
        link reads its own bytes through `receive_data`."""
        _TRANSITIONS.get((self._state, _classify(token)), Link._discard)(self, token, now)
        self._process(now)

    def _process(self, now: float) -> None:
        """Read and handle tokens until the reader needs more bytes or a token must wait."""
        while True:
            if self._held is not None:
                if self._state is LinkState.ACK_WITHHELD:
                    break
                token: Token | None = self._held
                self._held = None
            else:
                token = self._reader.next_token(_READ_MODE[self._state])
            if token is None:
                break
            handler = _TRANSITIONS.get((self._state, _classify(token)), Link._discard)
            handler(self, token, now)
        if self._held is not None and self._reader.buffered > self.max_frame + _HOLD_LIMIT_EXTRA:
            self._emit(GarbageDiscarded(self._reader.truncate(self.max_frame + _HOLD_LIMIT_EXTRA)))

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _send(self, data: bytes) -> None:
        self._out += data

    def _set_state(self, state: LinkState, deadline: float | None = None) -> None:
        if _READ_MODE[state] is not _READ_MODE[self._state]:
            partial = self._reader.flush()
            if partial:
                self._emit(GarbageDiscarded(partial))
        self._state = state
        self._deadline = deadline

    def _answer_is_stale(self) -> bool:
        """Shared by acknowledge/refuse: True if this answer is for a dropped delivery."""
        if self._stale_answers:
            self._stale_answers -= 1
            return True
        if self._state is not LinkState.ACK_WITHHELD:
            state = self._state.name
            raise LocalProtocolError(f"no received message awaits a reply (state {state})")
        return False

    # --- input handlers (see _TRANSITIONS) --------------------------------------------------

    def _discard(self, token: Token, now: float) -> None:
        self._emit(GarbageDiscarded(_token_bytes(token)))

    def _on_enq_when_neutral(self, token: Token, now: float) -> None:
        """The peer establishes the link: accept [§6.2]."""
        self._send(ACK)
        self._emit(TransferStarted())
        self._expected, self._last = 1, None
        self._text.clear()
        self._raw.clear()
        self._set_state(LinkState.RECEIVING, now + self.timers.receive)

    def _on_enq_when_receiving(self, token: Token, now: float) -> None:
        """ENQ during a transfer: the sender lost track and starts again; so do we."""
        if self._text:
            self._emit(TransferAborted("ENQ in the middle of a message: partial message discarded"))
        else:
            self._emit(TransferEnded())
        self._on_enq_when_neutral(token, now)

    def _on_frame(self, token: Token, now: float) -> None:
        assert isinstance(token, FrameToken)
        frame = token.frame
        if frame is not None and frame.number is None and self.lenient_frames:
            # No FN: take it as the next frame (the expected FN never equals the last accepted
            # one, so it cannot pass for a duplicate below).
            frame = replace(frame, number=self._expected)
        if frame is None:
            self._reject(token.raw, token.error or "malformed frame", now)
        elif frame.number is None:
            self._reject(token.raw, "frame has no frame number", now)
        elif frame.number == self._last:
            self._emit(DuplicateFrameIgnored(token.raw))  # our ACK was lost [§6.5.1.1]
            self._send(ACK)
            self._deadline = now + self.timers.receive
        elif frame.number != self._expected:
            self._reject(token.raw, f"frame number {frame.number}, expected {self._expected}", now)
        elif not frame.final:
            self._text += frame.text
            self._raw += token.raw
            self._last, self._expected = frame.number, (frame.number + 1) % 8
            self._send(ACK)
            self._deadline = now + self.timers.receive
        else:
            self._withheld = frame
            text, raw = bytes(self._text + frame.text), bytes(self._raw + token.raw)
            self._emit(MessageReceived(text, raw))
            self._set_state(LinkState.ACK_WITHHELD, now + self.timers.receive)

    def _reject(self, raw: bytes, reason: str, now: float) -> None:
        self._emit(FrameRejected(raw, reason))
        self._send(NAK)
        self._deadline = now + self.timers.receive

    def _on_eot_when_receiving(self, token: Token, now: float) -> None:
        self._end_transfer("EOT in the middle of a message: partial message discarded", now)

    def _on_frame_when_withheld(self, token: Token, now: float) -> None:
        assert isinstance(token, FrameToken) and self._withheld is not None
        if token.frame is not None and token.frame.number == self._withheld.number:
            self._emit(DuplicateFrameIgnored(token.raw))
        else:
            self._held = token

    def _on_eot_when_withheld(self, token: Token, now: float) -> None:
        """The sender stopped waiting for our reply: it will send the message again."""
        self._drop_withheld()
        self._end_transfer("", now)

    def _hold(self, token: Token, now: float) -> None:
        self._held = token

    def _on_establish_ack(self, token: Token, now: float) -> None:
        self._next_fn = 1
        self._interrupted = False
        self._start_message(now)

    def _on_establish_nak(self, token: Token, now: float) -> None:
        self._emit(LinkBusy())
        self._set_state(LinkState.BACKOFF, now + self.timers.busy)

    def _on_contention(self, token: Token, now: float) -> None:
        self._emit(ContentionDetected())
        if self.role is Role.HOST:
            self._set_state(LinkState.BACKOFF, now + self.timers.contention_host)
        else:
            self._set_state(LinkState.BACKOFF, now + self.timers.contention_instrument)

    def _on_frame_ack(self, token: Token, now: float) -> None:
        self._index += 1
        self._tries = 0
        if self._index < len(self._frames):
            self._send_frame(now)
            return
        self._queue.popleft()
        self._emit(MessageSent())
        if self._interrupted:
            self._terminate(now, now + self.timers.interrupt)
        elif self._queue:
            self._start_message(now)
        else:
            self._terminate(now, None)

    def _on_frame_interrupt(self, token: Token, now: float) -> None:
        if not self._interrupted:
            self._interrupted = True
            self._emit(InterruptRequested())
        self._on_frame_ack(token, now)

    def _on_frame_nak(self, token: Token, now: float) -> None:
        self._tries += 1
        if self._tries >= self.max_retries:
            number = self._frames[self._index].number
            self._fail(f"frame {number} refused {self._tries} times", now)
        else:
            self._send_frame(now)

    # --- sender helpers ---------------------------------------------------------------------

    def _establish_if_queued(self, now: float) -> None:
        if self._queue and self._state is LinkState.NEUTRAL:
            self._send(ENQ)
            self._set_state(LinkState.ESTABLISHING, now + self.timers.establish)

    def _start_message(self, now: float) -> None:
        parts = split_text(self._queue[0].text, self.max_text)
        last = len(parts) - 1
        self._frames = [
            Frame((self._next_fn + i) % 8, part, i == last) for i, part in enumerate(parts)
        ]
        self._next_fn = (self._next_fn + len(parts)) % 8
        self._index = 0
        self._tries = 0
        self._send_frame(now)

    def _send_frame(self, now: float) -> None:
        # Bytes already read but not yet handled arrived before this frame goes out, so they
        # cannot be its reply (a receiver that sends ACK twice would otherwise acknowledge a
        # frame it never saw).
        stale = self._reader.drop_unread()
        if stale:
            self._emit(GarbageDiscarded(stale))
        self._send(self._frames[self._index].to_bytes())
        self._set_state(LinkState.SENDING, now + self.timers.reply)

    def _fail(self, reason: str, now: float) -> None:
        """The head message's transfer failed: termination; keep it for a full resend."""
        head = self._queue[0]
        head.failures += 1
        dropped = head.failures >= self.max_retries
        if dropped:
            self._queue.popleft()
            reason = f"{reason}; giving up after {head.failures} failed transfers"
        self._emit(MessageFailed(reason, dropped))
        self._terminate(now, now + self.timers.busy if self._queue else None)

    def _terminate(self, now: float, backoff_until: float | None) -> None:
        self._send(EOT)
        self._frames = []
        if backoff_until is None:
            self._set_state(LinkState.NEUTRAL)
        else:
            self._set_state(LinkState.BACKOFF, backoff_until)

    # --- receiver helpers -------------------------------------------------------------------

    def _drop_withheld(self) -> None:
        """Forget the withheld end frame; the application's answer will be a no-op."""
        self._withheld = None
        self._stale_answers += 1
        self._text.clear()
        self._raw.clear()

    def _end_transfer(self, reason: str, now: float, *, always_abort: bool = False) -> None:
        """Back to neutral: `TransferAborted(reason)` if a partial message is lost, else ended."""
        if self._text or always_abort:
            self._emit(TransferAborted(reason))
        else:
            self._emit(TransferEnded())
        self._text.clear()
        self._raw.clear()
        self._set_state(LinkState.NEUTRAL)
        if self._held is None:
            partial = self._reader.flush()
            if partial:
                self._emit(GarbageDiscarded(partial))
        self._establish_if_queued(now)


_Handler = Callable[[Link, Token, float], None]

#: (state, input) -> handler. Anything not listed is reported as garbage and otherwise ignored.
_TRANSITIONS: dict[tuple[LinkState, _Input], _Handler] = {
    (LinkState.NEUTRAL, _Input.ENQ): Link._on_enq_when_neutral,
    (LinkState.BACKOFF, _Input.ENQ): Link._on_enq_when_neutral,
    (LinkState.ESTABLISHING, _Input.ACK): Link._on_establish_ack,
    (LinkState.ESTABLISHING, _Input.NAK): Link._on_establish_nak,
    (LinkState.ESTABLISHING, _Input.ENQ): Link._on_contention,
    (LinkState.SENDING, _Input.ACK): Link._on_frame_ack,
    (LinkState.SENDING, _Input.EOT): Link._on_frame_interrupt,
    (LinkState.SENDING, _Input.NAK): Link._on_frame_nak,
    (LinkState.SENDING, _Input.ENQ): Link._on_frame_nak,
    (LinkState.SENDING, _Input.OTHER): Link._on_frame_nak,
    (LinkState.RECEIVING, _Input.FRAME): Link._on_frame,
    (LinkState.RECEIVING, _Input.EOT): Link._on_eot_when_receiving,
    (LinkState.RECEIVING, _Input.ENQ): Link._on_enq_when_receiving,
    (LinkState.ACK_WITHHELD, _Input.FRAME): Link._on_frame_when_withheld,
    (LinkState.ACK_WITHHELD, _Input.EOT): Link._on_eot_when_withheld,
    (LinkState.ACK_WITHHELD, _Input.ENQ): Link._hold,
}
