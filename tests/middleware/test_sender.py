"""Pieces of the LIS sender and the ASTM session that need no socket."""

from __future__ import annotations

import random

import pytest

from middleware.lis.sender import backoff_delay
from middleware.sessions.astm import completes_message


def test_backoff_doubles_up_to_the_maximum_with_jitter() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 30.0), (40, 30.0)]:
        delays = [backoff_delay(attempt, 1.0, 30.0, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 10  # jittered, not in lock-step


@pytest.mark.parametrize(
    "text,complete",
    [
        (b"H|\\^&\rP|1\rO|1|S\rR|1|^^^A|1\rL|1|N\r", True),
        (b"H|\\^&\rP|1\rO|1|S\rR|1|^^^A|1\r", False),
        (b"H|\\^&\rP|1\rO|1|LAB\r", False),  # an 'L' inside a field is not a terminator
        (b"H!\\^&\nL!1\n", True),  # any field delimiter, LF record ends
        (b"H|\\^&\rL\r", True),  # bare L record (ORTHO VISION sends `L||`)
        (b"garbage", True),  # not E1394: decode now and refuse it, do not wait
    ],
)
def test_message_is_complete_when_its_l_record_arrived(text: bytes, complete: bool) -> None:
    assert completes_message(text) is complete
