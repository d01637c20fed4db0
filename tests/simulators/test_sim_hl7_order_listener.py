"""The simulated HL7 analyser taking orders (IHE LAW LAB-28): its order listener answers ORL^O34
(ACK for an ORM), AE or nothing as told, over clear or TLS MLLP, and `labgate simulate analyser
--protocol hl7 --order-port` prints every order it took, until Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from protocols import hl7 as v2
from protocols.hl7.outbound import OrderPatient, OrderSpec
from simulators.hl7_analyser import NO_ANSWER, Hl7AnalyserSimulator
from simulators.lis import LisSimulator
from simulators.tls import client_context, server_context

ROOT = Path(__file__).resolve().parents[2]
ORDER = OrderSpec(specimen_id="S1", tests=("GLU", "K"), patient=OrderPatient("PAT1", "DUPONT"))
CANCEL = OrderSpec(specimen_id="S1", tests=("GLU",), action="C")


async def test_order_listener_answers_orl_for_oml_and_ack_for_orm() -> None:
    analyser = Hl7AnalyserSimulator()
    port = await analyser.start_order_listener()
    lis = LisSimulator()
    try:
        oml = await lis.send_orders("127.0.0.1", port, [ORDER, CANCEL])
        orm = await lis.send_orders("127.0.0.1", port, [ORDER], kind="ORM")
    finally:
        await analyser.close()
    assert [a.code for a in (*oml, *orm)] == ["AA"] * 3
    answers = [a.raw.split(b"\r", 1)[0].split(b"|")[8] for a in (*oml, *orm)]
    assert answers == [b"ORL^O34^ORL_O34"] * 2 + [b"ACK^O01^ACK"]
    assert analyser.orders_received == lis.sent_orders
    assert analyser.order_answers == ["AA"] * 3
    read = analyser.received_orders()
    assert [(o.orders[0].specimen_id, o.orders[0].order_control) for o in read] == [
        ("S1", "NW"),
        ("S1", "CA"),
        ("S1", "NW"),
    ]


async def test_order_faults_refuse_then_say_nothing() -> None:
    analyser = Hl7AnalyserSimulator(order_acks=["AE", NO_ANSWER], order_ack_text="no reagent")
    port = await analyser.start_order_listener()
    lis = LisSimulator()
    try:
        [refused] = await lis.send_orders("127.0.0.1", port, [ORDER])
        with pytest.raises(TimeoutError):
            await lis.send_orders("127.0.0.1", port, [ORDER], timeout=0.5)
        [accepted] = await lis.send_orders("127.0.0.1", port, [ORDER])
    finally:
        await analyser.close()
    assert (refused.code, refused.text) == ("AE", "no reagent")
    assert b"\rERR|||207^" in refused.raw
    assert accepted.code == "AA"
    assert analyser.order_answers == ["AE", NO_ANSWER, "AA"]


async def test_order_listener_over_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    analyser = Hl7AnalyserSimulator()
    port = await analyser.start_order_listener(
        ssl=server_context(tmp_path / "cert.pem", tmp_path / "key.pem")
    )
    try:
        [ack] = await LisSimulator().send_orders(
            "127.0.0.1",
            port,
            [ORDER],
            ssl=client_context(tmp_path / "ca.pem"),
            server_hostname="127.0.0.1",
        )
    finally:
        await analyser.close()
    assert ack.code == "AA" and len(analyser.orders_received) == 1


def test_bad_order_answer_codes_are_refused() -> None:
    with pytest.raises(ValueError, match="order answer"):
        Hl7AnalyserSimulator(order_ack="OK")
    with pytest.raises(ValueError, match="order answer"):
        Hl7AnalyserSimulator(order_acks=["AA", "silent"])


async def test_cli_listens_for_orders_until_ctrl_c() -> None:
    lis = LisSimulator()
    lis_port = await lis.start()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulators",
        "analyser",
        "--protocol",
        "hl7",
        "--tcp",
        f"127.0.0.1:{lis_port}",
        "--generate",
        "1",
        "--results-per-message",
        "2",
        "--order-port",
        "0",
        "--order-ack-sequence",
        "AE",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert process.stdout is not None

        stdout = process.stdout

        async def line() -> dict[str, object]:
            async with asyncio.timeout(20):
                return json.loads(await stdout.readline())  # type: ignore[no-any-return]

        host, port = str((await line())["order_listener"]).rsplit(":", 1)
        assert (await line())["ack"] == "AA"  # its results went to the LIS
        assert "summary" in await line()
        acks = await lis.send_orders(host, int(port), [ORDER, CANCEL])
        assert [a.code for a in acks] == ["AE", "AA"]
        first, second = await line(), await line()
        assert first == {
            "order": v2.message_control_id(lis.sent_orders[0]),
            "type": "OML^O33",
            "specimens": ["S1"],
            "actions": ["NW"],
            "tests": [["GLU", "K"]],
            "answer": "AE",
        }
        assert (second["actions"], second["answer"]) == (["CA"], "AA")
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(20):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await lis.close()
    assert process.stderr is not None
    assert b"Traceback" not in await process.stderr.read()


def test_cli_order_options_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    from simulators.cli import main

    argv = ["analyser", "--protocol", "hl7", "--tcp", "127.0.0.1:1", "--generate", "1"]
    assert main([*argv, "--order-ack", "OK"]) == 2
    assert "usage:" in capsys.readouterr().err
    assert main([*argv, "--order-port", "0", "--order-tls-cert", "/nonexistent.pem"]) == 2
    assert "TLS" in capsys.readouterr().err
