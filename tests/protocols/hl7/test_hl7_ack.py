"""Acknowledgements: building the answer to a message, reading the LIS's ACK."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import hl7 as v2
from protocols.errors import LocalProtocolError, RemoteProtocolError

PARIS = timezone(timedelta(hours=2))
NOW = datetime(2025, 6, 28, 17, 33, 34, tzinfo=PARIS)


def built_oru(control_id: str = "LG42") -> bytes:
    return v2.build_oru_r01(
        v2.MessageHeader("labgate", "LAB", "LIS", "HOSP", control_id, NOW),
        [
            v2.PatientOut(
                "P1",
                "Müller",
                "Anna",
                date(1980, 1, 2),
                "F",
                (
                    v2.OrderOut(
                        "S1",
                        "GLU",
                        "Glucose",
                        NOW,
                        (v2.ObservationOut(set_id=1, code="GLU", value="5.5", units="mmol/L"),),
                    ),
                ),
            )
        ],
    )


def test_ack_round_trip() -> None:
    ack_bytes = v2.build_ack(built_oru(), "AA", "LIS0001", NOW)
    ack = v2.parse_ack(ack_bytes)
    assert ack == v2.Ack(
        code="AA", acknowledged_control_id="LG42", control_id="LIS0001", text="", raw=ack_bytes
    )
    assert ack.accepted


def test_ack_swaps_sender_and_receiver_and_copies_version() -> None:
    ack = v2.build_ack(built_oru(), "AA", "LIS0001", NOW).decode()
    msh, msa = ack.rstrip("\r").split("\r")
    fields = msh.split("|")
    assert fields[2:6] == ["LIS", "HOSP", "labgate", "LAB"]
    assert fields[6] == "20250628173334+0200"
    assert fields[8] == "ACK^R01^ACK"
    assert fields[9:12] == ["LIS0001", "P", "2.5.1"]
    assert fields[17] == "UNICODE UTF-8"
    assert msa == "MSA|AA|LG42"


def test_ack_of_a_251_message_validates_strictly() -> None:
    v2.validate_message(v2.build_ack(built_oru(), "AE", "LIS0002", NOW, "bad unit"))


@pytest.mark.parametrize("code", sorted(v2.ACK_CODES))
def test_every_code_with_tricky_text_round_trips(code: str) -> None:
    text = "Rejected: OBX|3 ^unit~ \\E\\ & déjà vu"
    ack = v2.parse_ack(v2.build_ack(built_oru("id|with^delims"), code, "A~1", NOW, text))
    assert (ack.code, ack.text) == (code, text)
    assert ack.acknowledged_control_id == "id|with^delims"
    assert ack.control_id == "A~1"
    assert ack.accepted is (code in ("AA", "CA"))


def test_ack_answers_a_message_whose_body_is_broken() -> None:
    broken = b"MSH|^~\\&|AN|LABO|LIS|H|20250101||OUL^R22^OUL_R22|X9|T|2.5.1\r\xff\xfe garbage\r"
    ack = v2.parse_ack(v2.build_ack(broken, "AR", "R1", NOW, "cannot read"))
    assert (ack.code, ack.acknowledged_control_id, ack.text) == ("AR", "X9", "cannot read")
    assert b"|ACK^R22^ACK|R1|T|2.5.1" in v2.build_ack(broken, "AR", "R1", NOW)


def test_ack_keeps_latin1_when_the_original_uses_it() -> None:
    original = "MSH|^~\\&|AN|LABO|||20250101||ORU^R01|7|P|2.3.1||||||8859/1\r".encode("latin-1")
    ack = v2.build_ack(original, "AE", "8", NOW, "unité inconnue")
    assert "unité".encode("latin-1") in ack
    assert v2.parse_ack(ack).text == "unité inconnue"


def test_ack_without_trigger() -> None:
    original = b"MSH|^~\\&|A|B|C|D|20250101||ORU|7|P|2.3\r"
    assert b"|ACK^^ACK|" in v2.build_ack(original, "AA", "8", NOW)


@pytest.mark.parametrize(
    ("code", "control_id", "now"),
    [("OK", "1", NOW), ("AA", "", NOW), ("AA", "1", datetime(2025, 1, 1))],
)
def test_build_ack_refuses_bad_arguments(code: str, control_id: str, now: datetime) -> None:
    with pytest.raises(LocalProtocolError):
        v2.build_ack(built_oru(), code, control_id, now)


def test_build_ack_refuses_non_hl7() -> None:
    with pytest.raises(RemoteProtocolError):
        v2.build_ack(b"<xml/>", "AR", "1", NOW)


def test_message_control_id() -> None:
    assert v2.message_control_id(built_oru("LG77")) == "LG77"
    assert v2.message_control_id(b"\x0b\r\nMSH|^~\\&|a||||||ORU^R01|abc") == "abc"
    assert v2.message_control_id(b"MSH|^~\\&|a||||||ORU^R01|a\\F\\b|P\r") == "a|b"
    assert v2.message_control_id(b"MSH|^~\\&|a\r") == ""
    with pytest.raises(RemoteProtocolError):
        v2.message_control_id(b"PID|1")


def test_parse_ack_reads_err_text_when_msa3_empty() -> None:
    v25 = (
        b"MSH|^~\\&|LIS||labgate||20250101||ACK^R01^ACK|9|P|2.5.1\rMSA|AE|LG1\r"
        b"ERR||OBX^3^5|207^Application internal error^HL70357|E||||Unit unknown\r"
    )
    assert v2.parse_ack(v25).text == "Unit unknown"
    v23 = (
        b"MSH|^~\\&|LIS||labgate||20250101||ACK^R01|9|P|2.3\rMSA|AR|LG1\r"
        b"ERR|OBX^3^5^101&Required field missing\r"
    )
    assert v2.parse_ack(v23).text == "Required field missing"


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"", "MSH"),
        (b"MSH|^~\\&|LIS||||20250101||ORU^R01|9|P|2.5.1\rMSA|AA|1\r", "not an acknowledgement"),
        (b"MSH|^~\\&|LIS||||20250101||ACK^R01|9|P|2.5.1\r", "without an MSA"),
        (b"MSH|^~\\&|LIS||||20250101||ACK^R01|9|P|2.5.1\rMSA|OK|1\r", "not an acknowledgement c"),
    ],
)
def test_parse_ack_refuses_with_a_reason(message: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=reason):
        v2.parse_ack(message)


_FIELD_TEXT = st.text(alphabet=st.sampled_from("AZaz09 .-_|^~&\\é"), max_size=8)


@settings(max_examples=300)
@given(
    kind=st.sampled_from(
        ["ACK", "ACK^R01^ACK", "ACK^R22^ACK", "ACK^R01", "ORU^R01", "ACK^O33^ACK"]
    ),
    control_id=_FIELD_TEXT,
    code=st.sampled_from(["AA", "AE", "AR", "CA", "CE", "CR", "XX", "", "AA "]),
    acked=_FIELD_TEXT,
    text=st.none() | _FIELD_TEXT,
    err=st.booleans(),
    end=st.sampled_from(["", "\r", "\r\n", "\n"]),
)
def test_plain_acks_read_without_the_parser_as_the_parser_reads_them(
    kind: str, control_id: str, code: str, acked: str, text: str | None, err: bool, end: str
) -> None:
    """The sender's fast reading of a plain ACK (split, not parsed) gives what the parser
    gives, and leaves every other answer to the parser."""
    from protocols.hl7 import ack as module

    msa = f"MSA|{code}|{acked}" + (f"|{text}" if text is not None else "")
    segments = [f"MSH|^~\\&|LIS|HOSP|labgate|LAB|20250628173334||{kind}|{control_id}|P|2.5.1", msa]
    if err:
        segments.append("ERR|||207^Application internal error^HL70357|E||||database down")
    message = ("\r".join(segments) + end).encode("utf-8")
    fast = module._plain_ack(message)
    try:
        parsed: v2.Ack | Exception = module._parsed_ack(message)
    except RemoteProtocolError as exc:
        parsed = exc
    if fast is not None:
        assert fast == parsed
    if isinstance(parsed, Exception):
        with pytest.raises(RemoteProtocolError):
            v2.parse_ack(message)
    else:
        assert v2.parse_ack(message) == parsed


def test_the_lis_plain_aa_takes_the_fast_reading() -> None:
    from protocols.hl7 import ack as module

    message = (
        b"MSH|^~\\&|LIS|HOSP|labgate|LAB|20250628173334||ACK^R01^ACK|A7|P|2.5.1\rMSA|AA|LG42\r"
    )
    assert module._plain_ack(message) == v2.Ack("AA", "LG42", "A7", "", message)
    assert module._plain_ack(message.replace(b"LG42", b"LG\\T\\42")) is None  # an escape
