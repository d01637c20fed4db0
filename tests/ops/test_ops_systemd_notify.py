"""sd_notify without systemd: a real datagram socket stands in for it, first for the notifier
and the watchdog in this process, then for a real daemon subprocess that is signalled."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port, gateway_config
from e2e.daemon import Daemon

from middleware.health import Health
from middleware.ops.looplag import LoopMonitor
from middleware.ops.systemd import Notifier, feed_watchdog, watchdog_interval
from simulators.analyser import AnalyserSimulator, SimulatedResult, build_result_message
from simulators.lis import LisSimulator


class FakeSystemd:
    """A bound AF_UNIX datagram socket collecting what is sent to it, as systemd's is."""

    def __init__(self, abstract: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"labgate-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.env = "@" + name
        else:
            # A short path: AF_UNIX paths are limited to about 100 bytes.
            self._folder = tempfile.mkdtemp(prefix="lg-", dir="/tmp")
            path = os.path.join(self._folder, "notify")
            self.sock.bind(path)
            self.env = path
        self.sock.settimeout(0.2)
        self.received: list[dict[str, str]] = []

    def drain(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return self.received
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
            self.received.append(fields)

    def wait_for(self, key: str, timeout: float = 20.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            self.drain()
            for message in self.received[seen:]:
                if key in message:
                    return message
            seen = len(self.received)
        raise AssertionError(f"no {key} within {timeout} s; got {self.received}")

    def close(self) -> None:
        self.sock.close()
        if not self.env.startswith("@"):
            os.unlink(self.env)
            os.rmdir(self._folder)


@pytest.fixture(params=["abstract", "path"])
def systemd(request: pytest.FixtureRequest) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(abstract=request.param == "abstract")
    yield fake
    fake.close()


def test_notifier_sends_each_state_as_one_datagram(systemd: FakeSystemd) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": systemd.env})
    assert notifier.enabled
    assert notifier.ready("running: 2/2 connection(s) up")
    assert notifier.status("line one\nline two")  # a newline would start a new assignment
    assert notifier.stopping()
    assert systemd.drain() == [
        {"READY": "1", "STATUS": "running: 2/2 connection(s) up"},
        {"STATUS": "line one line two"},
        {"STOPPING": "1", "STATUS": "stopping"},
    ]


def test_without_systemd_nothing_is_sent_and_nothing_fails(tmp_path: Path) -> None:
    assert not Notifier({}).send("READY=1")
    assert watchdog_interval({}) is None
    # A socket that went away: refused quietly, the daemon goes on.
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert gone.enabled and not gone.send("WATCHDOG=1")


def test_watchdog_interval_is_half_the_period_and_only_for_this_process() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    pid = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": pid}) == 1.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None


async def test_watchdog_pings_stop_while_the_loop_is_stuck_and_resume_after(
    systemd: FakeSystemd,
) -> None:
    """A loop that keeps running late (a synchronous call hogging it) gets no pings, so
    systemd would restart the daemon; once it is responsive again the pings resume."""
    health = Health()
    monitor = LoopMonitor(health, period=0.05)
    notifier = Notifier({"NOTIFY_SOCKET": systemd.env})
    tasks = [
        asyncio.create_task(monitor.run()),
        asyncio.create_task(
            feed_watchdog(notifier, monitor, 0.1, health=health, max_lag=0.2, status=lambda: "ok")
        ),
    ]
    try:
        await asyncio.sleep(0.5)
        healthy = len(systemd.drain())
        assert healthy >= 3 and systemd.received[0] == {"WATCHDOG": "1", "STATUS": "ok"}
        assert systemd.received[1] == {"WATCHDOG": "1"}  # the status only when it changes

        # Stuck: every turn of the loop blocks it for longer than max_lag, for 2 s.
        started = time.monotonic()
        while time.monotonic() - started < 2.0:
            time.sleep(0.3)  # noqa: ASYNC251 -- blocking the loop is the point
            await asyncio.sleep(0)
        stuck = len(systemd.drain()) - healthy
        assert stuck <= 1  # at most one that was already due when the stall began

        await asyncio.sleep(0.6)
        assert len(systemd.drain()) - healthy - stuck >= 2  # back to normal
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    from prometheus_client import generate_latest

    metrics = generate_latest(health.registry).decode()
    assert "labgate_watchdog_skipped_total" in metrics
    skipped = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("labgate_watchdog_skipped_total")
    )
    assert skipped >= 2


async def test_a_real_daemon_notifies_ready_feeds_the_watchdog_and_stops_on_sigterm(
    systemd: FakeSystemd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started as systemd would (NOTIFY_SOCKET, WATCHDOG_USEC), with an analyser connected and
    results delivered: READY, then pings; SIGTERM gives STOPPING and a clean exit, soon."""
    lis = LisSimulator()
    lis_port = await lis.start()
    api_port, analyser_port = free_port(), free_port()
    config = tmp_path / "labgate.yaml"
    config.write_text(
        gateway_config(
            tmp_path / "labgate.db",
            lis_port=lis_port,
            api_port=api_port,
            instruments={"chem-1": analyser_port},
        )
    )
    monkeypatch.setenv("NOTIFY_SOCKET", systemd.env)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # a ping every 0.5 s
    daemon = Daemon(config, api_port, tmp_path / "daemon.log")
    await asyncio.to_thread(daemon.start)
    analyser = AnalyserSimulator("127.0.0.1", analyser_port)
    try:
        ready = await asyncio.to_thread(systemd.wait_for, "READY")
        assert ready["READY"] == "1" and "connection(s) up" in ready["STATUS"]
        await analyser.connect()
        message = build_result_message(
            "S-1", "P-1", [SimulatedResult("GLU", "5.1", "mmol/L", "3.9 to 6.1")]
        )
        assert await analyser.send(message) is True
        await lis.wait_for(1)
        before = len(systemd.received)
        await asyncio.sleep(1.6)
        pings = [m for m in systemd.drain()[before:] if m.get("WATCHDOG") == "1"]
        assert len(pings) >= 2

        # The analyser stays connected, the LIS link is open: SIGTERM all the same.
        assert daemon.process is not None
        asked = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        stopping = await asyncio.to_thread(systemd.wait_for, "STOPPING")
        assert stopping["STOPPING"] == "1"
        code = await asyncio.to_thread(daemon.process.wait, 15)
        took = time.monotonic() - asked
    finally:
        await analyser.close()
        daemon.stop()
        await lis.close()
    assert code == 0, daemon.log()
    assert took < 10.0, f"stopping took {took:.1f} s"
    log = daemon.log()
    assert '"gateway_stopped"' in log and '"operations_started"' in log
