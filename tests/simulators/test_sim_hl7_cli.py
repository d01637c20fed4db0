"""The HL7 options of `labgate simulate`: an HL7 analyser and an order push, against a
simulated LIS running on its own event loop in a thread (the CLI runs `asyncio.run`)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from simulators.cli import main
from simulators.lis import LisSimulator
from simulators.tls import server_context


@pytest.fixture(name="lis_in_thread")
def fixture_lis_in_thread() -> Iterator[tuple[LisSimulator, asyncio.AbstractEventLoop]]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    holder: dict[str, LisSimulator] = {}

    def start(lis: LisSimulator) -> int:
        holder["lis"] = lis
        return asyncio.run_coroutine_threadsafe(lis.start(), loop).result(5)

    yield start, loop  # type: ignore[misc]
    if "lis" in holder:
        asyncio.run_coroutine_threadsafe(holder["lis"].close(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def _lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_hl7_analyser_sends_generated_oru_over_mutual_tls(
    lis_in_thread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    start, _loop = lis_in_thread
    ca = trustme.CA()
    server, client = ca.issue_cert("127.0.0.1"), ca.issue_cert("analyser-1")
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "scert", "skey", "ccert", "ckey")}
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.cert_chain_pems[0].write_to_path(str(files["scert"]))
    server.private_key_pem.write_to_path(str(files["skey"]))
    client.cert_chain_pems[0].write_to_path(str(files["ccert"]))
    client.private_key_pem.write_to_path(str(files["ckey"]))
    context = server_context(
        files["scert"], files["skey"], cafile=files["ca"], require_client_cert=True
    )
    port = start(LisSimulator(ssl=context))
    code = main(
        [
            "analyser", "--protocol", "hl7", "--tcp", f"127.0.0.1:{port}", "--oru",
            "--generate", "2", "--results-per-message", "3", "--seed", "1",
            "--tls-ca", str(files["ca"]),
            "--tls-cert", str(files["ccert"]), "--tls-key", str(files["ckey"]),
        ]
    )  # fmt: skip
    out = _lines(capsys.readouterr().out)
    assert code == 0
    assert [line.get("ack") for line in out[:2]] == ["AA", "AA"]
    assert out[-1]["summary"]["acknowledged"] == 2  # type: ignore[index]


def test_lis_orders_prints_the_answer(lis_in_thread, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    start, _loop = lis_in_thread
    port = start(LisSimulator())  # reads results only: answers an order AR
    code = main(
        ["lis-orders", "--tcp", f"127.0.0.1:{port}", "--specimen", "S1", "--tests", "GLU,K"]
    )
    out = _lines(capsys.readouterr().out)
    assert code == 1
    assert out == [
        {"specimen": "S1", "ack": "AR", "text": out[0]["text"], "control_id": out[0]["control_id"]}
    ]


def test_hl7_analyser_needs_generate(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["analyser", "--protocol", "hl7", "--tcp", "127.0.0.1:1", "--replay", "x"])
    assert code == 2
    assert "--generate" in capsys.readouterr().err
