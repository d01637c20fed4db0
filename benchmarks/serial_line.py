"""Serial benchmark: is a 9600-baud analyser limited by its line, or by labgate?

A simulated analyser sends M result messages back to back over a virtual null-modem cable paced
at 9600 baud 8N1 (960 bytes/s each way) to the real labgate daemon (subprocess, serial
transport), then to a bare E1381 host that acknowledges at once (the baseline, same cable, same
run). Prints one JSON object: the line's theoretical rate, the bytes/s the analyser achieved,
its share of the line (1.0 = the line is the only limit) for both, and labgate/baseline.

    python benchmarks/serial_line.py [--messages 20] [--results 8] [--baud 9600]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import serial_asyncio_fast  # noqa: E402

from benchmarks._support import free_ports, get_json, wait_port  # noqa: E402
from protocols import astm  # noqa: E402
from simulators.analyser import AnalyserSimulator, build_result_message, demo_results  # noqa: E402
from simulators.lis import LisSimulator  # noqa: E402
from simulators.nullmodem import NullModem, line_rate_for  # noqa: E402


async def _drive(path: str, args: argparse.Namespace, rate: float) -> dict[str, float]:
    rng = random.Random(9600)
    analyser = AnalyserSimulator.over_serial(path, baudrate=args.baud)
    await analyser.connect()
    try:
        messages = [
            build_result_message(f"SER{n:05d}", f"P{n}", demo_results(args.results, rng))
            for n in range(args.messages)
        ]
        begin = time.perf_counter()
        for message in messages:
            if not await analyser.send(message):
                raise RuntimeError("the analyser could not deliver a message")
        elapsed = time.perf_counter() - begin
        sent = analyser.bytes_out
    finally:
        await analyser.close()
    return {
        "messages": args.messages,
        "bytes_sent": sent,
        "seconds": round(elapsed, 3),
        "bytes_per_s": round(sent / elapsed, 1),
        "line_share": round(sent / elapsed / rate, 3),
    }


async def _labgate(args: argparse.Namespace, rate: float, workdir: Path) -> dict[str, Any]:
    cable = NullModem(line_rate=rate)
    labgate_end, analyser_end = await cable.start()
    lis = LisSimulator()
    lis_port = await lis.start()
    [api_port] = free_ports(1)
    config = workdir / "serial.yaml"
    config.write_text(
        f"store:\n  url: sqlite:///{workdir / 'serial.db'}\napi:\n  port: {api_port}\n"
        f"lis:\n  port: {lis_port}\ninstruments:\n  - name: xn\n    protocol: astm\n"
        f"    transport:\n      type: serial\n      port: {labgate_end}\n"
        f"      baudrate: {args.baud}\n"
    )
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "middleware",
            "run",
            "--config",
            str(config),
            "--json-logs",
            "--log-level",
            "warning",
        ],
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_port(api_port, daemon)
        await _wait_connected(api_port, "xn")  # the port is open: nothing sent before is lost
        figures = await _drive(analyser_end, args, rate)
        await lis.wait_for(args.messages, timeout=120)
        figures["delivered_to_lis"] = len(lis.delivered)
        return figures
    finally:
        daemon.terminate()
        daemon.wait(30)
        await lis.close()
        await cable.close()


async def _wait_connected(api_port: int, instrument: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = await asyncio.to_thread(get_json, f"http://127.0.0.1:{api_port}/api/health")
        if any(
            c["name"] == instrument and c["state"] == "connected" for c in health["connections"]
        ):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{instrument} never opened its serial port")


async def _baseline(args: argparse.Namespace, rate: float) -> dict[str, Any]:
    """A bare E1381 host on the same kind of cable: acknowledges every frame at once."""
    cable = NullModem(line_rate=rate)
    host_end, analyser_end = await cable.start()
    reader, writer = await serial_asyncio_fast.open_serial_connection(
        url=host_end, baudrate=args.baud
    )
    loop = asyncio.get_running_loop()

    async def host() -> None:
        link = astm.Link(astm.Role.HOST)
        while True:
            timer = link.get_timer()
            try:
                async with asyncio.timeout(None if timer is None else max(0, timer - loop.time())):
                    data = await reader.read(4096)
                link.receive_data(data, loop.time())
            except TimeoutError:
                link.handle_timer(loop.time())
            while (event := link.next_event()) is not None:
                if isinstance(event, astm.MessageReceived):
                    link.acknowledge(loop.time())
            if out := link.data_to_send():
                writer.write(out)

    task = asyncio.create_task(host())
    try:
        return await _drive(analyser_end, args, rate)
    finally:
        task.cancel()
        writer.close()
        await cable.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--results", type=int, default=8, help="results per message")
    parser.add_argument("--baud", type=int, default=9600)
    args = parser.parse_args()
    rate = line_rate_for(args.baud)
    with tempfile.TemporaryDirectory(prefix="labgate-serial-") as tmp:
        labgate = await _labgate(args, rate, Path(tmp))
    baseline = await _baseline(args, rate)
    print(
        json.dumps(
            {
                "benchmark": "serial_line",
                "baud": args.baud,
                "line_bytes_per_s": rate,
                "labgate": labgate,
                "baseline": baseline,
                "ratio": {"line_share": round(labgate["line_share"] / baseline["line_share"], 3)},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
