"""Control characters, limits and timer defaults of ASTM E1381 / CLSI LIS1-A.

Clause numbers refer to CLSI LIS1-A (2003) as summarised in `reference/PROTOCOLS.md` §1.
"""

from __future__ import annotations

__all__ = [
    "ACK",
    "CR",
    "ENQ",
    "EOT",
    "ETB",
    "ETX",
    "LF",
    "MAX_FRAME",
    "MAX_RETRIES",
    "MAX_TEXT",
    "NAK",
    "RESTRICTED",
    "STX",
    "TIMER_BUSY",
    "TIMER_CONTENTION_HOST",
    "TIMER_CONTENTION_INSTRUMENT",
    "TIMER_ESTABLISH",
    "TIMER_INTERRUPT",
    "TIMER_RECEIVE",
    "TIMER_REPLY",
]

# --- control characters (single bytes) -------------------------------------------------------
STX = b"\x02"  #: start of a frame [§6.3.1]
ETX = b"\x03"  #: end of the text of an end frame (last frame of a message) [§6.3.1]
EOT = b"\x04"  #: termination; as a reply to a frame, a receiver interrupt [§6.3.5, §6.4]
ENQ = b"\x05"  #: request to establish the link [§6.2]
ACK = b"\x06"  #: positive reply to ENQ or to a frame [§6.2, §6.3.4]
NAK = b"\x15"  #: negative reply: busy (to ENQ) or "resend the frame" [§6.2, §6.3.4]
ETB = b"\x17"  #: end of the text of an intermediate frame [§6.3.1]
CR = b"\r"  #: ends a frame (after the checksum) and separates E1394 records
LF = b"\n"  #: last byte of a frame; restricted anywhere else [§6.6]

#: Bytes a message text must not contain [§6.6]: SOH STX ETX EOT ENQ ACK DLE NAK SYN ETB LF
#: DC1-DC4. CR is allowed: it is the E1394 record separator.
RESTRICTED = frozenset(b"\x01\x02\x03\x04\x05\x06\x10\x15\x16\x17\n\x11\x12\x13\x14")

# --- limits -----------------------------------------------------------------------------------
#: Text characters per frame when labgate splits a message. LIS1-A allows 64,000 characters per
#: frame [§6.3.1], but the older E1381 limit of 240 text characters is what many analysers
#: still expect, so it is the safe default for what we send.
MAX_TEXT = 240
#: Largest frame (STX through LF) accepted on receive [§6.3.1]; longer ones are refused with NAK.
MAX_FRAME = 64_000
#: Failed attempts on one frame before the sender aborts the message [§6.5.1.2].
MAX_RETRIES = 6

# --- timers, seconds [§6.5] ---------------------------------------------------------------------
TIMER_ESTABLISH = 15.0  #: sender waits this long for a reply to ENQ [§6.5]
TIMER_REPLY = 15.0  #: sender waits this long for a reply to a frame [§6.5]
TIMER_RECEIVE = 30.0  #: receiver waits this long for the next frame or EOT [§6.5]
TIMER_BUSY = 10.0  #: after NAK to ENQ, the sender waits at least this long [§6.2]
TIMER_CONTENTION_HOST = 20.0  #: computer waits this long for the instrument's ENQ [§6.5.2.2]
TIMER_CONTENTION_INSTRUMENT = 1.0  #: instrument waits this long before a new ENQ [§6.2.7.1]
TIMER_INTERRUPT = 15.0  #: after honouring a receiver interrupt, no ENQ for this long [§6.3.5]
