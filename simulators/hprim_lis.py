"""A simulated HPRIM Santé LIS: a spool-directory consumer and a TCP receiver, keeping what it got.

`HprimSpoolLis` polls a directory for `NAME.HPR` files (only once `NAME.OK` exists, when told
the sender writes one), decodes each with `protocols.hprim` and then consumes it as told:
deletes it, moves it to another folder, or writes an answer file `NAME` + suffix and deletes
it. `consuming = False` makes it leave files where they are (the "LIS that never reads").

`HprimTcpLis` listens for HPRIM messages over TCP, bare (a message ends with its L record;
answered with ACK 0x06, or NAK 0x15 with `refuse=True`, or nothing with `answer=False`) or in
ASTM E1381 frames (the receiving side of `protocols.astm.Link`).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from protocols import astm, hprim

__all__ = ["HprimReceived", "HprimSpoolLis", "HprimTcpLis"]


@dataclass(frozen=True, slots=True)
class HprimReceived:
    """One message the LIS took: its bytes, its decoding (None if unreadable), where from."""

    data: bytes
    message: hprim.Message | None
    source: str  # the file name, or the peer of a TCP connection

    def observations(self) -> list[hprim.Record]:
        return [r for r in self.message.records if r.type == "OBX"] if self.message else []

    def comments(self) -> list[str]:
        return [r.field(4) for r in self.message.records if r.type == "C"] if self.message else []


def _decode(data: bytes) -> hprim.Message | None:
    parts = hprim.split_messages(data)
    try:
        return hprim.decode_message(parts[0].data) if parts else None
    except hprim.DecodeError:
        return None


class _Received:
    def __init__(self) -> None:
        self.received: list[HprimReceived] = []
        self._arrived = asyncio.Condition()

    async def _keep(self, record: HprimReceived) -> None:
        async with self._arrived:
            self.received.append(record)
            self._arrived.notify_all()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[HprimReceived]:
        """The first `count` messages, once that many have arrived."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.received) >= count)
        return self.received[:count]


class HprimSpoolLis(_Received):
    """Consumes `*.HPR` files from `directory` every `poll` seconds."""

    def __init__(
        self,
        directory: Path,
        *,
        consumption: Literal["deleted", "moved", "answered"] = "deleted",
        moved_to: Path | None = None,
        answer_suffix: str = ".ACK",
        ok_file: bool = False,
        data_suffix: str = ".HPR",
        ok_suffix: str = ".OK",
        poll: float = 0.05,
    ) -> None:
        super().__init__()
        self.directory = directory
        self.consumption = consumption
        self.moved_to = moved_to
        self.answer_suffix = answer_suffix
        self.ok_file = ok_file
        self.data_suffix = data_suffix
        self.ok_suffix = ok_suffix
        self.poll = poll
        self.consuming = True
        #: Every file name seen under the data suffix, in the order first seen.
        self.seen: list[str] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await self.scan()
            await asyncio.sleep(self.poll)

    async def scan(self) -> None:
        """Look at the directory once, consuming what is ready."""
        for path in sorted(self.directory.glob(f"*{self.data_suffix}")):
            if path.name not in self.seen:
                self.seen.append(path.name)
            if not self.consuming:
                continue
            ok = path.with_suffix(self.ok_suffix)
            if self.ok_file and not ok.exists():
                continue  # still being delivered
            data = path.read_bytes()
            await self._keep(HprimReceived(data, _decode(data), path.name))
            if self.consumption == "moved":
                assert self.moved_to is not None
                shutil.move(path, self.moved_to / path.name)
            elif self.consumption == "answered":
                answer = path.with_name(path.stem + self.answer_suffix)
                answer.write_bytes(b"OK " + path.name.encode() + b"\r")
                path.unlink()
            else:
                path.unlink()
            ok.unlink(missing_ok=True)


class HprimTcpLis(_Received):
    """An HPRIM receiver on TCP, bare or in E1381 frames."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        framing: Literal["none", "e1381"] = "none",
        answer: bool = True,
        refuse: bool = False,
    ) -> None:
        super().__init__()
        self.host, self.port, self.framing = host, port, framing
        self.answer, self.refuse = answer, refuse
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = str(writer.get_extra_info("peername"))
        try:
            if self.framing == "e1381":
                await self._serve_framed(reader, writer, peer)
            else:
                await self._serve_bare(reader, writer, peer)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _serve_bare(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> None:
        buffer = b""
        while data := await reader.read(65536):
            buffer += data
            while (end := _message_end(buffer)) is not None:
                message, buffer = buffer[:end], buffer[end:]
                await self._keep(HprimReceived(message, _decode(message), peer))
                if self.answer:
                    writer.write(b"\x15" if self.refuse else b"\x06")
                    await writer.drain()

    async def _serve_framed(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> None:
        link = astm.Link(astm.Role.INSTRUMENT)
        loop = asyncio.get_running_loop()
        while True:
            while (event := link.next_event()) is not None:
                if isinstance(event, astm.MessageReceived):
                    await self._keep(HprimReceived(event.text, _decode(event.text), peer))
                    if self.answer:
                        (link.refuse if self.refuse else link.acknowledge)(loop.time())
            out = link.data_to_send()
            if out:
                writer.write(out)
                await writer.drain()
            try:
                async with asyncio.timeout_at(link.get_timer()):
                    data = await reader.read(65536)
            except TimeoutError:
                link.handle_timer(loop.time())
                continue
            if not data:
                return
            link.receive_data(data, loop.time())


def _message_end(buffer: bytes) -> int | None:
    """Where the first whole message ends: after the CR of its L record (a line ``L`` + the
    field delimiter, which is the byte after the H)."""
    if len(buffer) < 2 or not buffer.startswith(b"H"):
        return None
    trailer = b"\rL" + buffer[1:2]
    at = buffer.find(trailer)
    if at < 0:
        return None
    end = buffer.find(b"\r", at + 2)
    return None if end < 0 else end + 1
