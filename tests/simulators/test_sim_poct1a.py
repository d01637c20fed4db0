"""The POCT1-A device simulator against a host built on labgate's own conversation core, over
real loopback TCP: hello and status, results on request or continuously, lock and unlock, the
operator list, link loss and reconnection, MLLP framing, and the command line."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import pytest

from protocols import poct1a
from simulators.cli import main as simulate
from simulators.poct1a import MeasurementRefused, Poct1aDeviceSimulator

E = TypeVar("E", bound=poct1a.Event)


class FakeHost:
    """A POCT1-A host: one `HostConversation` per connection, results acknowledged at once
    (or refused by `refuse`, or left unanswered while `hold`)."""

    def __init__(
        self,
        *,
        continuous: bool = True,
        operators: list[poct1a.Operator] | None = None,
        refuse: Callable[[poct1a.Observations], str | None] = lambda message: None,
    ) -> None:
        self.continuous = continuous
        self.operators = operators
        self.refuse = refuse
        self.hold = False
        self.events: list[poct1a.Event] = []
        self.conversation: poct1a.HostConversation | None = None
        self.connections = 0
        self._writer: asyncio.StreamWriter | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        if self._writer is not None:
            self._writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def command(self, act: Callable[[poct1a.HostConversation, float], None]) -> None:
        """Run a command on the current conversation and write what it produced."""
        assert self.conversation is not None and self._writer is not None
        act(self.conversation, asyncio.get_running_loop().time())
        self._writer.write(self.conversation.data_to_send())

    def of_type(self, kind: type[E]) -> list[E]:
        return [event for event in self.events if isinstance(event, kind)]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        loop = asyncio.get_running_loop()
        conversation = poct1a.HostConversation(
            loop.time(),
            continuous=self.continuous,
            timers=poct1a.HostTimers(hello=5, reply=5),
        )
        self.conversation, self._writer = conversation, writer
        self.connections += 1
        try:
            while conversation.state is not poct1a.ConversationState.CLOSED:
                try:
                    async with asyncio.timeout(0.05):
                        data = await reader.read(65536)
                except TimeoutError:
                    conversation.handle_timer(loop.time())
                else:
                    if not data:
                        break
                    conversation.receive_data(data, loop.time())
                while (event := conversation.next_event()) is not None:
                    self.events.append(event)
                    self._react(conversation, event, loop.time())
                writer.write(conversation.data_to_send())
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    def _react(
        self, conversation: poct1a.HostConversation, event: poct1a.Event, now: float
    ) -> None:
        if isinstance(event, poct1a.HelloReceived) and self.operators is not None:
            conversation.send_operator_list(self.operators, now)
        elif isinstance(event, poct1a.ObservationsReceived) and not self.hold:
            reason = self.refuse(event.message)
            if reason is None:
                conversation.acknowledge(event.control_id, now)
            else:
                conversation.reject(event.control_id, reason, now, "103")


@contextlib.asynccontextmanager
async def _pair(
    host: FakeHost, **options: object
) -> AsyncIterator[tuple[FakeHost, Poct1aDeviceSimulator]]:
    port = await host.start()
    device = Poct1aDeviceSimulator("127.0.0.1", port, reconnect_delay=0.05, **options)  # type: ignore[arg-type]
    try:
        yield host, device
    finally:
        await device.close()
        await host.close()


async def test_hello_status_and_continuous_results() -> None:
    async with _pair(FakeHost()) as (host, device):
        await device.connect()
        await device.wait_until(lambda: device.continuous)
        measurement = device.measure("7.4", operator="OP1", patient_id="P1")
        answer = await measurement.wait()
        assert answer.accepted and device.pending == []
    (hello,) = host.of_type(poct1a.HelloReceived)
    assert hello.hello.device_id == "SIM^GLUCO-SIM^0001"
    assert hello.hello.directives == ("START_CONTINUOUS", "LOCK", "UNLOCK")
    (status,) = host.of_type(poct1a.StatusReceived)
    assert status.status.condition == "R" and not status.status.locked
    (received,) = host.of_type(poct1a.ObservationsReceived)
    (service,) = received.message.services
    assert (service.operator_id, service.patient, service.role) == (
        "OP1",
        poct1a.PatientInfo("P1"),
        "OBS",
    )
    (observation,) = service.observations
    assert (observation.code, observation.value, observation.unit) == ("14743-9", "7.4", "mmol/L")
    assert observation.interpretation == "H" and observation.normal_range == "[3.9;6.1]"


async def test_results_measured_offline_wait_for_the_hosts_request() -> None:
    async with _pair(FakeHost(continuous=False)) as (host, device):
        qc = device.measure("5.6", operator="OP1", qc_level="2", qc_lot="QC-7")
        patient = device.measure("4.8", operator="OP1", patient_id="P2")
        await device.connect()
        assert (await qc.wait()).accepted and (await patient.wait()).accepted
        await device.wait_until(lambda: bool(host.of_type(poct1a.TopicEnded)))
        assert not device.continuous
    (status,) = host.of_type(poct1a.StatusReceived)
    assert status.status.new_observations == 2
    first, second = host.of_type(poct1a.ObservationsReceived)
    assert first.message.non_patient and first.message.services[0].role == "LQC"
    control = first.message.services[0].control
    assert control is not None and (control.level, control.lot_number) == ("2", "QC-7")
    assert not second.message.non_patient
    (topic,) = host.of_type(poct1a.TopicEnded)
    assert topic.message.topic == "OBS"
    requests = [
        e.message for e in host.of_type(poct1a.HostMessageSent) if e.message.header.control_id
    ]
    assert isinstance(requests[0], poct1a.Request)
    assert topic.message.topic_control_id == requests[0].header.control_id


async def test_a_locked_device_refuses_tests_and_says_so_in_its_status() -> None:
    async with _pair(FakeHost()) as (host, device):
        await device.connect()
        host.command(lambda conversation, now: conversation.lock(now))
        await device.wait_until(lambda: device.locked)
        with pytest.raises(MeasurementRefused, match="locked"):
            device.measure("5.0", operator="OP1")
        await device.wait_until(lambda: len(host.of_type(poct1a.StatusReceived)) == 2)
        assert host.of_type(poct1a.StatusReceived)[-1].status.locked
        host.command(lambda conversation, now: conversation.unlock(now))
        await device.wait_until(lambda: not device.locked)
        assert (await device.measure("5.0", operator="OP1").wait()).accepted
        assert device.directives[-2:] == ["LOCK", "UNLOCK"]
        await device.wait_until(lambda: len(host.of_type(poct1a.StatusReceived)) == 3)
    accepted = [
        e.message.command
        for e in host.of_type(poct1a.HostMessageAccepted)
        if isinstance(e.message, poct1a.Directive)
    ]
    assert accepted == ["START_CONTINUOUS", "LOCK", "UNLOCK"]


async def test_the_operator_list_is_kept_and_obeyed() -> None:
    operators = [poct1a.Operator(f"OP{n}", method="ALL") for n in range(1, 4)]
    operators.append(poct1a.Operator("OLD", expiration_date="2001-01-01"))
    host = FakeHost(
        operators=operators,
        refuse=lambda m: (
            "operator X9 is not on the operator list" if m.services[0].operator_id == "X9" else None
        ),
    )
    async with _pair(host, max_message_size=600) as (host, device):
        await device.connect()
        await device.wait_until(lambda: device.operators is not None)
        assert device.operators is not None and sorted(device.operators) == [
            "OLD",
            "OP1",
            "OP2",
            "OP3",
        ]
        with pytest.raises(MeasurementRefused, match="X9"):
            device.measure("5.0", operator="X9")
        with pytest.raises(MeasurementRefused, match="certification"):
            device.measure("5.0", operator="OLD")
        assert (await device.measure("5.0", operator="OP2").wait()).accepted
        device.enforce_operators = False  # a device that does not check: the host refuses
        refused = await device.measure("5.0", operator="X9").wait()
        assert (refused.type, refused.error_code) == ("AE", "103")
        assert "X9" in refused.note and device.pending == []  # refused results are not resent


async def test_link_loss_reconnects_and_sends_what_was_not_acknowledged() -> None:
    host = FakeHost()
    async with _pair(host) as (host, device):
        await device.connect()
        await device.wait_until(lambda: device.continuous)
        host.hold = True  # the host never answers this one on the first connection
        first = device.measure("6.0", operator="OP1", patient_id="P1")
        await device.wait_until(lambda: bool(host.of_type(poct1a.ObservationsReceived)))
        host.hold = False
        device.drop_link()
        during = device.measure("6.1", operator="OP1", patient_id="P2")  # while disconnected
        assert (await first.wait()).accepted and (await during.wait()).accepted
        assert device.connections == 2 and host.connections == 2
    values = [
        e.message.services[0].observations[0].value
        for e in host.of_type(poct1a.ObservationsReceived)
    ]
    assert values == ["6.0", "6.0", "6.1"]  # the first one again, after reconnecting


async def test_end_from_the_host_makes_the_device_reconnect() -> None:
    async with _pair(FakeHost()) as (host, device):
        await device.connect()
        host.command(lambda conversation, now: conversation.end(now))
        await device.wait_until(lambda: device.connections == 2 and device.connected)


async def test_mllp_framing() -> None:
    async with _pair(FakeHost(), mllp=True) as (_host, device):
        await device.connect()
        await device.wait_until(lambda: device.continuous)
        assert (await device.measure("5.5", operator="OP1").wait()).accepted


async def test_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    host = FakeHost()
    port = await host.start()
    try:
        argv = ["poct1a", "--tcp", f"127.0.0.1:{port}", "--generate", "3", "--interval", "0"]
        argv += ["--qc-every", "2", "--seed", "4"]
        code = await asyncio.to_thread(simulate, argv)
    finally:
        await host.close()
    lines = [json.loads(line) for line in io.StringIO(capsys.readouterr().out)]
    assert code == 0
    kinds = [(line["test"], line["kind"], line["ack"]) for line in lines if "test" in line]
    assert kinds == [
        (1, "qc", "AA"),
        (1, "patient", "AA"),
        (2, "patient", "AA"),
        (3, "qc", "AA"),
        (3, "patient", "AA"),
    ]
    assert lines[-1]["summary"]["accepted"] == 3
