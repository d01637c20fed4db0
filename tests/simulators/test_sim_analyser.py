"""The simulated analyser against a real host link, over TCP and over a pseudo-terminal, with
each fault: every message still reaches the host, and the fault really happened."""

from __future__ import annotations

import asyncio
import random

import pytest
from sim_helpers import FAST, TcpHost, analyser_and_host

from protocols import astm
from protocols.astm.constants import RESTRICTED
from simulators.analyser import AnalyserSimulator, build_result_message, demo_results
from simulators.faults import Faults, corrupt_checksum, find_frames

TRANSPORTS = ["tcp", "serial"]


def messages(count: int, results: int = 4, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [
        build_result_message(f"SPEC{n:04d}", f"PAT{n}", demo_results(results, rng))
        for n in range(count)
    ]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_messages_arrive_once_each_without_faults(transport: str) -> None:
    sent = messages(3, results=12)  # more than 240 characters: several frames each
    async with analyser_and_host(transport) as (sim, host):
        for message in sent:
            assert await sim.send(message) is True
        await host.wait_until(lambda: host.count(astm.TransferEnded) >= 3)
    assert host.received == sent
    assert (sim.sent, sim.failed, sim.connections) == (3, 0, 1)
    assert host.count(astm.FrameRejected) == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_flipped_bits_are_naked_and_the_frames_resent(transport: str) -> None:
    faults = Faults(bit_flips=0.3, seed=7)
    sent = messages(4, results=12)
    async with analyser_and_host(transport, faults=faults, max_text=100) as (sim, host):
        assert await asyncio.gather(*(sim.send(m) for m in sent)) == [True] * 4
    assert host.received == sent  # each exactly once, intact
    assert faults.counts.bit_flips > 0
    rejected = [e for e in host.events if isinstance(e, astm.FrameRejected)]
    assert len(rejected) == faults.counts.bit_flips
    assert all("checksum" in e.reason for e in rejected)
    assert sim.failed == 0  # a NAK costs a frame, not a transfer


def test_a_flip_never_makes_a_control_character() -> None:
    faults = Faults(bit_flips=1.0, seed=1)
    frame = astm.Frame(1, b"R|1|^^^GLU|5.4|mmol/L\r", True).to_bytes()
    for _ in range(500):
        flipped = faults.tamper_outgoing(frame)
        [(start, end)] = find_frames(flipped)
        assert (start, end) == (0, len(frame) - 2)
        diff = [i for i in range(len(frame)) if frame[i] != flipped[i]]
        assert len(diff) == 1 and 1 <= diff[0] < len(frame) - 5  # FN or text
        assert bin(frame[diff[0]] ^ flipped[diff[0]]).count("1") == 1
        assert flipped[diff[0]] not in RESTRICTED
        with pytest.raises(Exception, match="checksum"):
            astm.Frame.from_bytes(flipped)


def test_same_seed_same_faults() -> None:
    frames = astm.Frame(2, b"O|1|SPEC||^^^GLU\r", False).to_bytes() * 20
    acks = b"\x06\x15\x06" * 20
    first, second = Faults(bit_flips=0.5, drop_acks=0.5, seed=42), Faults(0.5, 0.5, seed=42)
    assert first.tamper_outgoing(frames) == second.tamper_outgoing(frames) != frames
    assert first.tamper_incoming(acks) == second.tamper_incoming(acks) != acks
    assert first.counts == second.counts


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_corrupt_frames_still_spoils_the_next_checksums(transport: str) -> None:
    sent = messages(2)
    async with analyser_and_host(transport) as (sim, host):
        sim.corrupt_frames = 2
        for message in sent:
            assert await sim.send(message) is True
    assert host.received == sent
    assert host.count(astm.FrameRejected) == 2
    assert sim.corrupt_frames == 0 and sim.faults.counts.checksums_corrupted == 2


def test_corrupt_checksum_changes_only_the_first_digit_of_the_first_frames() -> None:
    frame = astm.Frame(1, b"L|1|N\r", True).to_bytes()
    spoiled, count = corrupt_checksum(frame + frame, 1)
    assert count == 1
    assert spoiled[len(frame) :] == frame
    assert [i for i in range(len(frame)) if spoiled[i] != frame[i]] == [len(frame) - 4]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_dropped_acks_expire_the_timers_and_every_message_still_arrives(
    transport: str,
) -> None:
    # Seeded: 3 ACKs lost, one of them the final frame's, so the host gets message 0 twice
    # (labgate deduplicates; the analyser cannot know).
    faults = Faults(drop_acks=0.25, seed=2)
    sent = messages(3, results=2)  # two frames each
    async with analyser_and_host(transport, faults=faults, timers=FAST) as (sim, host):
        for message in sent:
            assert await sim.send(message) is True  # the analyser believes it delivered
    assert faults.counts.acks_dropped == sim.failed > 0  # each loss cost one transfer
    assert set(host.received) == set(sent)  # every message at least once
    assert len(host.received) > len(sent)  # and one twice: its final ACK was lost
    assert host.received == sorted(host.received, key=sent.index)  # never out of order


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_line_rate_paces_the_outgoing_bytes(transport: str) -> None:
    faults = Faults(line_rate=960)  # 9600 baud, 8N1
    [message] = messages(1, results=2)
    async with analyser_and_host(transport, faults=faults) as (sim, host):
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await sim.send(message) is True
        elapsed = loop.time() - start
        written = sim.bytes_out
    assert host.received == [message]
    assert written > len(message)  # ENQ, the frame's envelope
    assert elapsed >= written / 960 - 1e-3
    assert elapsed < written / 960 + 1.0  # paced, not stalled


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_contention_the_host_yields_and_its_order_follows(transport: str) -> None:
    faults = Faults(contention=True, contention_hold=30)
    [result] = messages(1)
    order = b"H|\\^&|||LIS\rP|1\rO|1|SPEC0000||^^^GLU\rL|1|N\r"
    async with analyser_and_host(transport, faults=faults, timers=FAST) as (sim, host):
        sending = asyncio.ensure_future(sim.send(result))
        await asyncio.sleep(0)  # let send() queue the message: it now waits for the host's ENQ
        assert sim.held == 1 and host.received == []
        host.send(order)  # the host bids for the line: ENQ
        assert await asyncio.wait_for(sending, 10) is True
        await host.wait_until(lambda: host.count(astm.MessageSent) == 1)
    assert faults.counts.contentions == 1
    assert host.count(astm.ContentionDetected) == 1  # the host saw both ENQs and yielded
    assert host.received == [result]  # the instrument won the line
    assert sim.received == [order]  # and the host's message went after


async def test_contention_hold_expires_when_the_host_never_sends_enq() -> None:
    faults = Faults(contention=True, contention_hold=0.05)
    [result] = messages(1)
    async with analyser_and_host("tcp", faults=faults) as (sim, host):
        assert await sim.send(result) is True
    assert host.received == [result]
    assert faults.counts.contentions == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_disconnect_mid_frame_reconnects_and_resends_the_message_in_full(
    transport: str,
) -> None:
    faults = Faults(disconnect_after=150)
    sent = messages(2, results=8)
    async with analyser_and_host(transport, faults=faults, max_text=60) as (sim, host):
        for message in sent:
            assert await sim.send(message) is True
    assert faults.counts.disconnects == 1
    assert sim.connections == 2
    assert host.received == sent  # the cut message once, whole; the next one after it
    if transport == "tcp":
        assert host.connections == 2
    else:  # the same pty: the host saw a frame cut short, then a new ENQ
        assert host.count(astm.TransferAborted) == 1
    assert sim.bytes_out > sum(len(m) for m in sent) + 150


async def test_host_closing_the_connection_fails_pending_messages_without_reconnect() -> None:
    async with analyser_and_host("tcp") as (sim, host):
        assert isinstance(host, TcpHost) and host.server is not None
        host.server.close()
        for transport in list(host.transports):
            transport.abort()
        assert await asyncio.wait_for(sim.send(messages(1)[0]), 5) is False
        assert await sim.send(messages(1)[0]) is False  # no connection: at once


async def test_with_reconnect_a_connection_the_host_drops_is_reopened() -> None:
    first, second = messages(2)
    host = TcpHost()
    await host.start()
    sim = AnalyserSimulator("127.0.0.1", host.port, reconnect=True)
    try:
        await sim.connect()
        assert await sim.send(first) is True
        for transport in list(host.transports):
            transport.abort()  # the host restarts, say
        await host.wait_until(lambda: host.connections == 2)
        assert await sim.send(second) is True
    finally:
        await sim.close()
        await host.close()
    assert host.received == [first, second]
    assert sim.connections == 2


@pytest.mark.parametrize(
    "settings",
    [
        {"bit_flips": 1.5},
        {"drop_acks": -0.1},
        {"line_rate": 0},
        {"disconnect_after": 0},
        {"contention_hold": -1},
    ],
)
def test_faults_out_of_range_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Faults(**settings)  # type: ignore[arg-type]


def test_analyser_needs_an_address() -> None:
    with pytest.raises(ValueError):
        AnalyserSimulator()
