"""Property tests: any bytes into the inbound parsers give a result or RemoteProtocolError."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.errors import RemoteProtocolError
from protocols.hl7.inbound import parse_results_message
from protocols.hl7.orders_in import parse_order_message, parse_qbp_q11, parse_rsp_k11

PARSERS: list[Callable[[bytes], Any]] = [
    parse_results_message,
    parse_order_message,
    parse_qbp_q11,
    parse_rsp_k11,
]

# Segment-looking text: real segment ids and delimiters made frequent, so the parsers get
# past MSH and into their structure handling.
PIECES = st.sampled_from(
    [
        "|", "^", "~", "\\", "&", "\r", "\n", "\r\n", "MSH", "PID", "OBR", "ORC", "OBX",
        "SPM", "SAC", "NTE", "TQ1", "QPD", "QAK", "MSA", "RCP", "ORU^R01", "OUL^R22",
        "ORM^O01", "OML^O33", "QBP^Q11", "RSP^K11", "UNICODE", "8859/1", "2024010512",
        "\\X0D\\", "\xe9", "\x0b", "\x1c", "1", "Q", "NW", "CA", "S",
    ]
)  # fmt: skip
SEGMENTISH = st.lists(st.one_of(PIECES, st.text(max_size=4)), max_size=60).map(
    lambda parts: ("MSH|^~\\&|" + "".join(parts)).encode("utf-8", "surrogatepass")
)


def _check(parser: Callable[[bytes], Any], data: bytes) -> None:
    try:
        parser(data)
    except RemoteProtocolError:
        pass


@pytest.mark.parametrize("parser", PARSERS)
@given(data=st.binary(max_size=400))
def test_arbitrary_bytes(parser: Callable[[bytes], Any], data: bytes) -> None:
    _check(parser, data)


@pytest.mark.parametrize("parser", PARSERS)
@given(data=SEGMENTISH)
def test_message_like_text(parser: Callable[[bytes], Any], data: bytes) -> None:
    _check(parser, data)
