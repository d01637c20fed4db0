"""What the benchmarks share: free loopback ports, waiting for a server, a process's peak RSS."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

__all__ = [
    "free_ports",
    "get_json",
    "mllp_pipelined",
    "peak_rss_mib",
    "start_daemon",
    "wait_port",
]

ROOT = Path(__file__).resolve().parent.parent


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports nothing listens on (held open together while chosen, so
    the OS cannot hand out the same one twice)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def get_json(url: str) -> Any:
    """GET a JSON document (blocking: call it through asyncio.to_thread)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def peak_rss_mib(pid: int) -> float:
    """The process's high-water resident set size (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


async def wait_port(
    port: int, process: subprocess.Popen[bytes] | None = None, timeout: float = 60
) -> None:
    """Wait until something accepts connections on `port` (failing early if `process` died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the process exited with {process.returncode} before listening")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port} after {timeout} s")


async def mllp_pipelined(port: int, payloads: list[bytes], window: int) -> float:
    """Messages/s of `payloads` sent over MLLP to `port`, `window` frames in flight, each
    counted once its answer (any framed message) is back: the baselines' bare sender."""
    from protocols.hl7 import MllpFramer, mllp_frame

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    framer = MllpFramer()
    count = len(payloads)
    begin = time.perf_counter()
    sent = answered = 0
    while answered < count:
        top = min(count, answered + window)
        if sent < top:
            writer.write(b"".join(mllp_frame(p) for p in payloads[sent:top]))
            sent = top
        framer.receive_data(await reader.read(65536))
        while framer.next_message() is not None:
            answered += 1
    elapsed = time.perf_counter() - begin
    writer.close()
    await writer.wait_closed()
    return count / elapsed


def start_daemon(workdir: Path, config_lines: list[str]) -> subprocess.Popen[bytes]:
    """`labgate run` on a configuration written in `workdir`, logging warnings only."""
    config = workdir / f"bench-{len(list(workdir.glob('bench-*.yaml')))}.yaml"
    config.write_text("\n".join(config_lines) + "\n")
    command = [sys.executable, "-m", "middleware", "run", "--config", str(config)]
    return subprocess.Popen(
        [*command, "--json-logs", "--log-level", "warning"],
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
