"""`_er7.split` against `hl7.parse`, whose faster stand-in it is: the same containers, the same
attributes, the same text, or an error for the same inputs."""

from __future__ import annotations

from typing import Any

import hl7
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.hl7._er7 import split

PIECES = st.sampled_from(
    ["|", "^", "~", "\\", "&", "\r", "MSH", "PID", "OBX", "\\F\\", "#", "1", "é", " ", ""]
)
BODY = st.lists(st.one_of(PIECES, st.characters(exclude_categories=["Cs"])), max_size=60).map(
    "".join
)
HEADS = st.sampled_from(
    ["MSH|^~\\&|", "MSH|^~\\&#|", "MSH|^~|", "MSH|^|", "MSH|", "MSH#^~\\&#", "MSH|^^\\&|", "MS"]
)
MESSAGES = st.one_of(st.builds(lambda head, body: head + body, HEADS, BODY), BODY)


def same(ours: Any, theirs: Any) -> None:
    assert type(ours) is type(theirs)
    if isinstance(theirs, str):
        assert ours == theirs
        return
    assert vars(ours) == vars(theirs)
    assert len(ours) == len(theirs)
    for mine, reference in zip(ours, theirs, strict=True):
        same(mine, reference)


@given(MESSAGES)
def test_split_builds_what_python_hl7_builds(text: str) -> None:
    try:
        expected = hl7.parse(text)
    except Exception as exc:  # whatever python-hl7 raises, split raises the same kind
        with pytest.raises(type(exc)):
            split(text)
        return
    got = split(text)
    same(got, expected)
    assert rendered(got) == rendered(expected)


def rendered(message: Any) -> str | type[Exception]:
    """The text python-hl7 renders, or the kind of error it raises trying (an MSH cut short)."""
    try:
        return str(message)
    except Exception as exc:
        return type(exc)


@pytest.mark.parametrize(
    "text",
    [
        "MSH|^~\\&|LIS|LAB|LABGATE|LAB|20261123080000+0000||ACK^R01^ACK|L1|P|2.5.1\rMSA|AA|C1",
        "MSH|^~\\&|A|B\rPID|1||P1^^^H&1.2&ISO~P2||DUPONT^Marie\rOBX|1|NM|GLU^^L||5|||H~A",
        "MSH|^~\\&\rZZZ",
        "FHS|^~\\&\rBHS|^~\\&\rMSH|^~\\&|A",
    ],
)
def test_split_on_real_shapes(text: str) -> None:
    same(split(text), hl7.parse(text))
