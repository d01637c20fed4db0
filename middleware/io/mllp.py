"""The MLLP request/answer loop shared by every HL7 port labgate serves (HL7 analysers, the
LIS's orders): read blocks, hand each message to `handle`, write back what it returns, in order.
An oversize or broken block is reported through `on_refused` and skipped; the loop ends when the
peer closes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from protocols.errors import RemoteProtocolError
from protocols.hl7 import MllpFramer, mllp_frame

__all__ = ["answer_messages"]


async def answer_messages(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    handle: Callable[[bytes], Awaitable[bytes]],
    on_refused: Callable[[RemoteProtocolError], None],
    max_message: int = 1_048_576,
) -> None:
    """Serve one connection until the peer closes it; the answer to a message is written only
    once `handle` has returned (after the commit, for messages that are stored)."""
    framer = MllpFramer(max_message=max_message)
    while data := await reader.read(65536):
        framer.receive_data(data)
        while True:
            try:
                message = framer.next_message()
            except RemoteProtocolError as exc:
                on_refused(exc)
                continue
            if message is None:
                break
            writer.write(mllp_frame(await handle(message)))
            await writer.drain()
