"""`labgate simulate ...` / `python -m simulators ...`: the analyser and LIS commands."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sim_helpers import PtyHost, TcpHost, oru

from protocols import hl7 as v2
from simulators.cli import main
from simulators.replay import messages_from_file

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "data" / "corpus"


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def test_analyser_generates_messages_over_tcp(capsys: pytest.CaptureFixture[str]) -> None:
    host = TcpHost()
    await host.start()
    try:
        argv = ["analyser", "--protocol", "astm", "--tcp", f"127.0.0.1:{host.port}"]
        code = await asyncio.to_thread(main, [*argv, "--generate", "3", "--seed", "5"])
    finally:
        await host.close()
    assert code == 0
    *lines, summary = json_lines(capsys.readouterr().out)
    assert [(line["message"], line["specimen"], line["acknowledged"]) for line in lines] == [
        (1, "SIM0000001", True),
        (2, "SIM0000002", True),
        (3, "SIM0000003", True),
    ]
    assert all(isinstance(line["seconds"], float) for line in lines)
    assert summary["summary"]["messages"] == summary["summary"]["acknowledged"] == 3  # type: ignore[index]
    assert len(host.received) == 3
    assert all(b"O|1|SIM000000" in text for text in host.received)


async def test_analyser_replays_a_capture_over_serial_with_faults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    host = PtyHost()
    await host.start()
    capture = CORPUS / "astm-pentra-xlr-1.astm"
    try:
        argv = ["analyser", "--serial", host.path, "--baud", "9600", "--replay", str(capture)]
        faults = ["--bit-flips", "0.2", "--seed", "11", "--disconnect-after", "300"]
        code = await asyncio.to_thread(main, [*argv, *faults])
    finally:
        await host.close()
    assert code == 0
    expected = messages_from_file(capture)
    *lines, summary = json_lines(capsys.readouterr().out)
    assert len(lines) == len(expected) and all(line["acknowledged"] for line in lines)
    counts = summary["summary"]["faults"]  # type: ignore[index]
    assert counts["bit_flips"] > 0 and counts["disconnects"] == 1
    # Every message arrives, in order; one may arrive twice if the cut fell right after a whole
    # frame (the host acknowledged it on a dead line): at least once, as LIS1-A promises.
    assert [r for i, r in enumerate(host.received) if r not in host.received[:i]] == expected


def test_analyser_reports_an_unreachable_host(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there
    assert main(["analyser", "--tcp", f"127.0.0.1:{port}", "--generate", "1"]) == 1
    assert "cannot open tcp://127.0.0.1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["analyser", "--tcp", "nowhere", "--generate", "1"],
        ["analyser", "--tcp", "127.0.0.1:1", "--serial", "/dev/null", "--generate", "1"],
        ["analyser", "--tcp", "127.0.0.1:1", "--generate", "1", "--drop-acks", "2"],
        ["lis", "--port", "0", "--ack", "OK"],
        ["fax"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_replay_of_a_missing_file_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["analyser", "--tcp", "127.0.0.1:1", "--replay", "/nonexistent.astm"]
    assert main(argv) == 2
    assert "nonexistent.astm" in capsys.readouterr().err


async def test_lis_runs_until_ctrl_c_and_stops_cleanly(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulators",
        "lis",
        "--port",
        "0",
        "--received-dir",
        str(tmp_path),
        "--ack-sequence",
        "AE",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert process.stdout is not None
        started = json.loads(await asyncio.wait_for(process.stdout.readline(), 20))
        host, port = started["listening"].rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        framer = v2.MllpFramer()
        codes = []
        for n in range(2):
            writer.write(v2.mllp_frame(oru(f"C{n}")))
            while (answer := framer.next_message()) is None:
                framer.receive_data(await asyncio.wait_for(reader.read(65536), 5))
            codes.append(v2.parse_ack(answer).code)
            line = json.loads(await asyncio.wait_for(process.stdout.readline(), 5))
            assert line["control_id"] == f"C{n}" and line["ack"] == codes[-1]
        writer.close()
        assert codes == ["AE", "AA"]
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 20) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.stderr is not None
    assert b"Traceback" not in await process.stderr.read()
    assert file_count(tmp_path) == 2


def file_count(folder: Path) -> int:
    return len(list(folder.iterdir()))
