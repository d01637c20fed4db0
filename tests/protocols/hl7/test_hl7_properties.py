"""Property tests: framing under any chunking, no stray exceptions, ORU round trips."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import hl7 as v2
from protocols.errors import RemoteProtocolError

# Any text a caller could hand us: every code point UTF-8 can carry (no surrogates),
# with the HL7 delimiters and escape look-alikes made frequent.
DELIMITERS = st.sampled_from(["|", "^", "~", "\\", "&", "\\F\\", "\\X0D\\", "\\.br\\", "\r", " "])
TEXT = st.lists(st.one_of(st.characters(exclude_categories=["Cs"]), DELIMITERS), max_size=25).map(
    "".join
)
NONEMPTY = TEXT.filter(bool)

payloads = st.binary(max_size=300).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b""))


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@given(st.lists(payloads, max_size=5), st.lists(st.integers(min_value=0), max_size=20))
def test_framing_round_trips_under_any_chunking(messages: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(v2.mllp_frame(m) for m in messages)
    framer = v2.MllpFramer()
    received = []
    for chunk in split_at(stream, cuts):
        framer.receive_data(chunk)
        while (message := framer.next_message()) is not None:
            received.append(message)
    assert received == messages
    assert framer.discarded == 0


@given(
    st.binary(max_size=2000),
    st.lists(st.integers(min_value=0), max_size=10),
    st.integers(min_value=1, max_value=300),
)
def test_framer_on_arbitrary_bytes(data: bytes, cuts: list[int], max_message: int) -> None:
    framer = v2.MllpFramer(max_message=max_message)
    for chunk in split_at(data, cuts):
        framer.receive_data(chunk)
        assert framer.buffered <= max_message
        while True:
            try:
                message = framer.next_message()
            except RemoteProtocolError:
                continue
            if message is None:
                break
            assert len(message) <= max_message
            assert b"\x0b" not in message and b"\x1c" not in message
    assert framer.discarded <= len(data)


# Arbitrary bytes, and bytes that start like HL7 so the parsers get past the first check.
HL7ISH = st.one_of(
    st.binary(max_size=400),
    st.tuples(
        st.sampled_from([b"MSH|^~\\&|", b"MSH|", b"MSH", b"\x0bMSH#$%\\&#", b"MSH|^~\\&|A|B|C|D|"]),
        st.lists(
            st.sampled_from(
                [
                    b"|",
                    b"^",
                    b"~",
                    b"\\",
                    b"&",
                    b"\r",
                    b"\n",
                    b"ORU^R01",
                    b"ACK",
                    b"\rMSA|AA|1",
                    b"\rPID|1||P",
                    b"\rOBR|1|S",
                    b"\rOBX|1|NM|X||1",
                    b"\rNTE|1||n",
                    b"\rSPM|1|S",
                    b"\rERR|",
                    b"2025",
                    b"\\X",
                    b"\\.sp",
                    b"\\Xzz\\",
                    b"+0100",
                    b"\xff",
                    b"\xc3",
                    b"|||||||",
                    b"8859/1",
                    b"UNICODE UTF-8",
                    b"ASCII",
                ]
            ),
            max_size=40,
        ),
    ).map(lambda t: t[0] + b"".join(t[1])),
)


@given(HL7ISH)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_parsers_on_arbitrary_bytes_raise_only_remote_errors(data: bytes) -> None:
    for parse in (v2.parse_ack, v2.parse_oru, v2.message_control_id):
        try:
            parse(data)
        except RemoteProtocolError:
            pass
    try:
        v2.build_ack(data, "AR", "1", datetime(2025, 1, 1, tzinfo=UTC))
    except RemoteProtocolError:
        pass


ZONES = st.sampled_from(
    [UTC, timezone(timedelta(hours=2)), timezone(-timedelta(hours=9, minutes=30))]
)
MOMENTS = st.one_of(
    st.none(),
    st.builds(
        lambda d, z: d.replace(tzinfo=z),
        st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1)),
        ZONES,
    ).map(lambda d: d.replace(microsecond=0) if d else d),
)

OBSERVATIONS = st.builds(
    lambda i, **kw: v2.ObservationOut(set_id=i, **kw),
    st.integers(min_value=1, max_value=999),
    code=NONEMPTY,
    text=TEXT,
    coding_system=TEXT,
    value=TEXT,
    value_type=st.sampled_from(["", "NM", "ST", "TX"]),
    units=TEXT,
    reference_range=TEXT,
    abnormal_flags=st.lists(NONEMPTY, max_size=3).map(tuple),
    status=NONEMPTY,
    observed_at=MOMENTS,
    producer=TEXT,
    notes=st.lists(TEXT, max_size=2).map(tuple),
)
ORDERS = st.builds(
    v2.OrderOut,
    specimen_id=NONEMPTY,
    test_code=TEXT,
    test_text=TEXT,
    observed_at=MOMENTS,
    results=st.lists(OBSERVATIONS, max_size=3).map(tuple),
    specimen_type=TEXT,
)
PATIENTS = st.builds(
    v2.PatientOut,
    patient_id=TEXT,
    family_name=TEXT,
    given_name=TEXT,
    birth_date=st.none() | st.dates(min_value=date(1900, 1, 1)),
    sex=TEXT,
    orders=st.lists(ORDERS, min_size=1, max_size=2).map(tuple),
)
HEADERS = st.builds(
    v2.MessageHeader,
    sending_application=TEXT,
    sending_facility=TEXT,
    receiving_application=TEXT,
    receiving_facility=TEXT,
    control_id=NONEMPTY,
    created_at=MOMENTS.filter(lambda m: m is not None),
    processing_id=st.sampled_from(["P", "T", "D"]),
)


@given(HEADERS, st.lists(PATIENTS, min_size=1, max_size=3))
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
def test_oru_round_trip_preserves_values(
    header: v2.MessageHeader, patients: list[v2.PatientOut]
) -> None:
    message = v2.build_oru_r01(header, patients)
    assert b"\x0b" not in message and b"\x1c" not in message
    assert v2.message_control_id(message) == header.control_id
    parsed = v2.parse_oru(message)
    assert parsed.control_id == header.control_id
    assert parsed.sending_application == header.sending_application
    assert parsed.sending_facility == header.sending_facility
    assert parsed.receiving_application == header.receiving_application
    assert parsed.receiving_facility == header.receiving_facility
    assert parsed.created_at == header.created_at
    sent = [(p, o, r) for p in patients for o in p.orders for r in o.results]
    assert len(parsed.observations) == len(sent)
    for got, (patient, order, result) in zip(parsed.observations, sent, strict=True):
        # An empty PID-3 reads as PID-2 (v2.3 external id), which we leave empty too.
        assert got.patient_id == patient.patient_id
        assert got.specimen_id == order.specimen_id
        assert got.test_code == order.test_code
        assert got.code == result.code
        assert got.text == result.text
        assert got.coding_system == result.coding_system
        assert got.value == result.value
        assert got.value_type == result.effective_value_type
        assert got.units == result.units
        assert got.reference_range == result.reference_range
        assert got.abnormal_flags == result.abnormal_flags
        assert got.status == result.status
        assert got.observed_at == result.observed_at
        assert got.producer == result.producer
        assert got.notes == result.notes


@given(st.sampled_from(sorted(v2.ACK_CODES)), NONEMPTY, NONEMPTY, TEXT)
def test_ack_round_trip_preserves_values(
    code: str, original_id: str, ack_id: str, text: str
) -> None:
    original = v2.build_oru_r01(
        v2.MessageHeader("a", "b", "c", "d", original_id, datetime(2025, 1, 1, tzinfo=UTC)),
        [v2.PatientOut("P", "", "", None, "", (v2.OrderOut("S", "T", "", None, ()),))],
    )
    ack = v2.parse_ack(v2.build_ack(original, code, ack_id, datetime(2025, 1, 1, tzinfo=UTC), text))
    assert (ack.code, ack.acknowledged_control_id, ack.control_id, ack.text) == (
        code,
        original_id,
        ack_id,
        text,
    )
