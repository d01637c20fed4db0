"""Alarms on a running daemon: the LIS link lost within the configured time and cleared when it
comes back, each episode told once to a webhook; a blocked device and a QC rejection raised;
the open alarms on the API and on /metrics; a person's acknowledgement audited."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

from e2e.test_validation_governance import (
    chem_instrument,
    glucose_message,
    qc_message,
    send_messages,
)
from prometheus_client.parser import text_string_to_metric_families
from web.console_support import signed_in

from middleware.cli import main as labgate
from middleware.config import load_settings_text
from middleware.gateway import Gateway
from simulators.lis import LisSimulator


class Webhook:
    """A plain HTTP endpoint that keeps the JSON bodies it was POSTed."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, object]] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{self.port}/hook"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        self.bodies.append(json.loads(await reader.readexactly(length)))
        writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@contextlib.asynccontextmanager
async def _daemon(
    tmp_path: Path, lis_port: int, hook: str, extra: str, auto_block: str = ""
) -> AsyncIterator[Gateway]:
    text = (
        f"gateway: LABGATE\nstore:\n  url: sqlite:///{tmp_path / 'labgate.db'}\napi:\n  port: 0\n"
        f"lis:\n  port: {lis_port}\n  connect_timeout: 0.5\n"
        "  retry:\n    initial: 0.1\n    maximum: 0.3\n"
        f"alarms:\n  check_seconds: 0.1\n  link_lost_after_seconds: 0.5\n  webhook: {hook}\n"
        f"{auto_block}"
        f"instruments:\n{extra}"
    )
    gateway = Gateway(load_settings_text(text))
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    await asyncio.wait_for(gateway.ready.wait(), 10)
    try:
        yield gateway
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _until(condition: object, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.05)


async def test_link_lost_qc_and_block_alarms_raise_once_and_clear(tmp_path: Path) -> None:
    hook = Webhook()
    url = await hook.start()
    lis = LisSimulator()
    lis_port = await lis.start()
    await lis.close()  # the LIS is down from the start
    plan = tmp_path / "qc.yaml"
    plan.write_text(
        "targets:\n  - {instrument: chem-1, test: GLU, lot: L1, level: '1', mean: 5.5, sd: 0.2}\n",
        encoding="utf-8",
    )
    extra = chem_instrument(tmp_path, validation=f"  qc: {plan}\n")
    try:
        async with _daemon(tmp_path, lis_port, url, extra) as gateway:
            api = "http://{}:{}".format(*gateway.addresses["api"])

            def raised(kind: str) -> bool:
                return any(b["event"] == "alarm_raised" and b["kind"] == kind for b in hook.bodies)

            # A result is owed to the LIS, which does not answer: the link is lost.
            when = datetime.now().replace(microsecond=0) - timedelta(minutes=5)
            port = gateway.addresses["chem-1"][1]
            await send_messages(port, glucose_message("AL-1", "PAT-1", "5.2", when))
            await _until(lambda: raised("link_lost"))
            # The analyser's QC is rejected (1-3s): an alarm for the instrument and test.
            await send_messages(port, qc_message("6.3", when + timedelta(minutes=1)))
            await _until(lambda: raised("qc_failed"))
            config = tmp_path / "cli.yaml"
            config.write_text(
                f"store:\n  url: sqlite:///{tmp_path / 'labgate.db'}\nlis:\n  port: 1\n"
                "instruments: []\n",
                encoding="utf-8",
            )
            who = ["--config", str(config), "--author", "Dr Durand"]
            assert labgate(["device", "block", "chem-1", *who, "--reason", "QC"]) == 0
            await _until(lambda: raised("device_blocked"))
            async with signed_in(gateway) as client:
                open_now = (await client.get(f"{api}/api/alarms")).json()
                metrics = (await client.get(f"{api}/metrics")).text
            kinds = {a["kind"] for a in open_now}
            assert {"link_lost", "qc_failed", "device_blocked"} <= kinds
            gauge = {
                s.labels["kind"]: s.value
                for family in text_string_to_metric_families(metrics)
                if family.name == "labgate_alarms_open"
                for s in family.samples
            }
            assert gauge["link_lost"] == 1 and gauge["qc_failed"] == 1
            # The LIS comes back: the result goes, the episode ends, and is told once.
            lis = LisSimulator(port=lis_port)
            await lis.start()
            await lis.wait_for(1)
            await _until(
                lambda: any(
                    b["event"] == "alarm_cleared" and b["kind"] == "link_lost" for b in hook.bodies
                )
            )
            lost = next(a for a in open_now if a["kind"] == "link_lost")
            assert (
                labgate(["alarms", "ack", str(lost["id"]), *who, "--comment", "LIS restarted"]) == 0
            )
            async with signed_in(gateway) as client:
                everything = (await client.get(f"{api}/api/alarms?open_only=false")).json()
    finally:
        await lis.close()
        await hook.close()
    episodes = [b for b in hook.bodies if b["kind"] == "link_lost" and b["event"] == "alarm_raised"]
    assert len(episodes) == 1  # once per episode, however many checks saw it
    acknowledged = next(a for a in everything if a["id"] == lost["id"])
    assert acknowledged["acknowledged_by"] == "Dr Durand" and acknowledged["cleared_at"]
    assert all(b["gateway"] == "LABGATE" for b in hook.bodies)


async def test_a_qc_rejection_blocks_a_device_configured_for_it(tmp_path: Path) -> None:
    hook = Webhook()
    url = await hook.start()
    lis = LisSimulator()
    lis_port = await lis.start()
    plan = tmp_path / "qc.yaml"
    plan.write_text(
        "targets:\n  - {instrument: chem-1, test: GLU, lot: L1, level: '1', mean: 5.5, sd: 0.2}\n",
        encoding="utf-8",
    )
    extra = chem_instrument(tmp_path, validation=f"  qc: {plan}\n")
    when = datetime.now().replace(microsecond=0) - timedelta(minutes=5)
    try:
        async with _daemon(
            tmp_path, lis_port, url, extra, "  auto_block: {chem-1: [qc_failed]}\n"
        ) as gateway:
            port = gateway.addresses["chem-1"][1]
            await send_messages(port, qc_message("6.3", when))
            await _until(lambda: "chem-1" in gateway.validation.pipeline.blocked_devices)
            await send_messages(port, glucose_message("AB-1", "PAT-1", "5.2", when))
            await asyncio.sleep(0.3)
            state = await gateway.store.read(gateway.store.governance_state)
            audit = await gateway.store.read(gateway.store.audit_trail)
            outbox = await gateway.store.read(gateway.store.outbox_list)
    finally:
        await lis.close()
        await hook.close()
    assert state.blocked_devices == {"chem-1"}
    blocked = next(row for row in audit if row["action"] == "device_blocked")
    assert blocked["actor"] == "labgate" and "qc_failed" in blocked["detail"]["reason"]
    assert [row["state"] for row in outbox] == ["quarantined"]  # held back, not forwarded
    assert lis.delivered == []
