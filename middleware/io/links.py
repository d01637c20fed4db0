"""Open the byte streams analysers talk over: TCP server, TCP client, serial line.

Every transport ends in the same `(StreamReader, StreamWriter)` pair handed to a session, so the
protocol code never knows which one it runs on. For the links labgate opens itself (TCP client,
serial port) `keep_open` reconnects with a growing, jittered pause, forever: an analyser that is
switched off at night is found again in the morning without anyone restarting labgate.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import Awaitable, Callable

import serial
import serial_asyncio_fast
import structlog

from middleware.config.settings import (
    ReconnectSettings,
    SerialTransport,
    TcpClientTransport,
    TcpServerTransport,
)

__all__ = ["Handler", "describe", "keep_open", "open_serial", "serve_tcp"]

log = structlog.get_logger("labgate.io")

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

_PARITY = {"none": serial.PARITY_NONE, "even": serial.PARITY_EVEN, "odd": serial.PARITY_ODD}


def describe(transport: TcpServerTransport | TcpClientTransport | SerialTransport) -> str:
    """Where a transport points, for health pages and logs."""
    if isinstance(transport, SerialTransport):
        return (
            f"{transport.port} {transport.baudrate} {transport.bytesize}"
            f"{transport.parity[0].upper()}{transport.stopbits}"
        )
    return f"{transport.host}:{transport.port}"


async def serve_tcp(
    transport: TcpServerTransport, handler: Handler, tls: ssl.SSLContext | None = None
) -> asyncio.Server:
    """Listen for analysers; each connection runs `handler` until it closes."""
    return await asyncio.start_server(handler, transport.host, transport.port, ssl=tls)


async def open_serial(
    transport: SerialTransport,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a serial port with the line settings from the configuration."""
    return await serial_asyncio_fast.open_serial_connection(
        url=transport.port,
        baudrate=transport.baudrate,
        bytesize=transport.bytesize,
        parity=_PARITY[transport.parity],
        stopbits=transport.stopbits,
        rtscts=transport.flow_control == "rtscts",
        xonxoff=transport.flow_control == "xonxoff",
    )


async def _open(
    transport: TcpClientTransport | SerialTransport,
    tls: ssl.SSLContext | None,
    server_hostname: str | None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if isinstance(transport, SerialTransport):
        return await open_serial(transport)
    async with asyncio.timeout(transport.connect_timeout):
        return await asyncio.open_connection(
            transport.host,
            transport.port,
            ssl=tls,
            server_hostname=(server_hostname or transport.host) if tls else None,
        )


def _pause(attempt: int, reconnect: ReconnectSettings) -> float:
    ceiling = min(reconnect.maximum, reconnect.initial * 2 ** max(0, attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


async def keep_open(
    name: str,
    transport: TcpClientTransport | SerialTransport,
    handler: Handler,
    on_state: Callable[[str], None],
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> None:
    """Open the link, run `handler` on it, and do it again whenever it closes or fails."""
    failures = 0
    where = describe(transport)
    while True:
        try:
            reader, writer = await _open(transport, tls, server_hostname)
        except (OSError, TimeoutError, serial.SerialException, ssl.SSLError) as exc:
            failures += 1
            pause = _pause(failures, transport.reconnect)
            on_state("disconnected")
            log.warning(
                "link_open_failed",
                instrument=name,
                address=where,
                error=str(exc) or type(exc).__name__,
                retry_in=round(pause, 2),
            )
            await asyncio.sleep(pause)
            continue
        failures = 0
        await handler(reader, writer)
        on_state("disconnected")
        # A link that closes at once (analyser rebooting) must not spin: pause a little.
        await asyncio.sleep(_pause(1, transport.reconnect))
