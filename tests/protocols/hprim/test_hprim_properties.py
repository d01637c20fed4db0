"""Property tests (hypothesis) for the HPRIM Santé codec and the results builder."""

from __future__ import annotations

import itertools
from datetime import datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import hprim
from protocols.errors import RemoteProtocolError

FAST = settings(max_examples=100)

_DELIMITER_CHARS = "|~^\\&!@#$%*+/;:?<>=`'\"{}[]"

# data: any latin-1 character but CR and LF (the record separators); delimiters and the escape
# character come often, because they are what can go wrong
_CHAR = st.one_of(
    st.characters(min_codepoint=0, max_codepoint=255, blacklist_characters="\r\n"),
    st.sampled_from(_DELIMITER_CHARS + "A"),
)
_DATA = st.text(_CHAR, max_size=12)
_LONG_DATA = st.text(_CHAR, max_size=400)
_COMPONENT = st.lists(_DATA, min_size=1, max_size=3).map(tuple)
_REPEAT = st.lists(_COMPONENT, min_size=1, max_size=3).map(tuple)
_FIELD = st.one_of(
    _DATA.map(lambda v: (((v,),),)), st.lists(_REPEAT, min_size=1, max_size=3).map(tuple)
)
_TYPES = st.one_of(
    st.sampled_from(["P", "OBR", "C", "L", "REG", "FAC", "ACT"]),
    st.from_regex(r"[A-Z][A-Z0-9]{0,3}", fullmatch=True).filter(lambda t: t not in ("A", "H")),
)


@st.composite
def delimiters(draw: st.DrawFn) -> hprim.Delimiters:
    chars = draw(st.permutations(_DELIMITER_CHARS).map(lambda p: p[:5]))
    return hprim.Delimiters(*chars)


@st.composite
def opaque_text(draw: st.DrawFn, d: hprim.Delimiters) -> str:
    """An embedded file's OBX-6 as a sender writes it: anything but CR, LF and an unescaped
    field delimiter (escape pairs included)."""
    plain = st.text(
        st.characters(
            min_codepoint=0, max_codepoint=255, blacklist_characters=f"\r\n{d.field}{d.escape}"
        ),
        max_size=300,
    )
    pair = st.sampled_from(_DELIMITER_CHARS + "xyz").map(lambda c: d.escape + c)
    return "".join(draw(st.lists(st.one_of(plain, pair), max_size=6)))


@st.composite
def some_fields(draw: st.DrawFn, min_size: int, max_size: int) -> list[hprim.Field]:
    """Fields 2, 3...; one of them may be long enough to be folded into ``A|`` lines."""
    drawn = draw(st.lists(_FIELD, min_size=min_size, max_size=max_size))
    if drawn and draw(st.booleans()):
        drawn[draw(st.integers(0, len(drawn) - 1))] = (((draw(_LONG_DATA),),),)
    return drawn


@st.composite
def messages(draw: st.DrawFn) -> hprim.Message:
    d = draw(delimiters())
    header = hprim.Record("H", ((((("H",),),)), (((d.definition,),),), *draw(some_fields(0, 14))))
    records = [header]
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.integers(0, 3)) == 0:  # an OBX, sometimes with an embedded file
            value_type = draw(st.sampled_from(["NM", "ST", "CE", "TX", "FIC", ""]))
            fields = draw(some_fields(5, 16))  # fields 2..
            # fields[1] is OBX-3, fields[4] OBX-6
            fields[1] = (((value_type,),),)
            if value_type == "FIC":
                fields[4] = (((draw(opaque_text(d)),),),)
            records.append(hprim.Record("OBX", ((((("OBX",),),)), *fields)))
        else:
            kind = draw(_TYPES)
            fields = draw(some_fields(0, 10))
            records.append(hprim.Record(kind, (((((kind,),),)), *fields)))
    return hprim.Message(tuple(records), d)


_MAX_LINE = st.one_of(st.none(), st.integers(8, 300))


@FAST
@given(messages(), _MAX_LINE)
def test_decode_of_encode_gives_the_message_back(
    message: hprim.Message, max_line: int | None
) -> None:
    text = hprim.encode_message(message, max_line=max_line)
    assert hprim.decode_message(text) == message
    if max_line is not None:
        assert all(len(line) <= max_line for line in text.split(b"\r"))


@FAST
@given(messages(), _MAX_LINE, _MAX_LINE)
def test_what_was_decoded_encodes_to_the_same_bytes(
    message: hprim.Message, first: int | None, second: int | None
) -> None:
    text = hprim.encode_message(message, max_line=first)
    decoded = hprim.decode_message(text)
    assert hprim.encode_message(decoded, max_line=first) == text
    # folding differently changes the lines, never the records
    assert hprim.decode_message(hprim.encode_message(decoded, max_line=second)) == message


@FAST
@given(messages())
def test_line_numbers_cover_the_text(message: hprim.Message) -> None:
    text = hprim.encode_message(message)
    decoded = hprim.decode_message(text)
    spans = [r.lines for r in decoded.records]
    assert spans[0] is not None and spans[0][0] == 1
    assert all(
        a is not None and b is not None and a[1] + 1 == b[0] for a, b in itertools.pairwise(spans)
    )
    assert spans[-1] is not None and spans[-1][1] == text.count(b"\r")


@FAST
@given(st.binary(max_size=400))
def test_arbitrary_bytes_decode_to_a_message_or_a_remote_error(data: bytes) -> None:
    for text in (data, b"H|~^\\&\r" + data, b"H|~^\\&\rOBX|1|FIC|X||" + data):
        try:
            message = hprim.decode_message(text)
        except RemoteProtocolError:
            continue
        assert message.records[0].type == "H"
        hprim.check_structure(message)  # never raises on what decoded
        for record in message.records:
            assert record.fields[0] == (((record.type,),),)
            if record.type == "OBX":
                hprim.observation_value(record)


@FAST
@given(st.text(alphabet="HAPOBRXCL|~^\\&\r\n x1", max_size=200))
def test_delimiter_soup_decodes_to_a_message_or_a_remote_error(text: str) -> None:
    try:
        message = hprim.decode_message(text.encode(), "utf-8")
    except RemoteProtocolError:
        return
    hprim.check_structure(message)


@FAST
@given(st.binary(max_size=300))
def test_split_messages_cuts_without_losing_anything(data: bytes) -> None:
    parts = hprim.split_messages(data)
    for part in parts:
        assert data[part.offset : part.offset + len(part.data)] == part.data
    for a, b in itertools.pairwise(parts):
        assert a.offset + len(a.data) <= b.offset and a.line < b.line


# --- the builder ---------------------------------------------------------------------------------

_TEXT = st.text(
    st.one_of(
        st.characters(min_codepoint=32, max_codepoint=255),
        st.sampled_from(_DELIMITER_CHARS),
    ),
    max_size=30,
)
_MOMENT = st.one_of(st.none(), st.datetimes(datetime(2000, 1, 1), datetime(2099, 1, 1)))


@st.composite
def observations(draw: st.DrawFn) -> hprim.Observation:
    value = draw(st.one_of(_TEXT, st.builds(hprim.Coded, _TEXT, _TEXT, _TEXT)))
    return hprim.Observation(
        code=draw(_TEXT.filter(bool)),
        label=draw(_TEXT),
        value=value,
        units=draw(_TEXT),
        reference_range=draw(_TEXT),
        abnormal_flags=tuple(
            draw(st.lists(st.sampled_from(sorted(hprim.ABNORMAL_FLAGS)), max_size=2))
        ),
        status=draw(st.sampled_from(sorted(hprim.OBSERVATION_STATUSES))),
        observed_at=draw(_MOMENT),
        producer=draw(_TEXT),
        validation=draw(st.none() | st.builds(hprim.ElectronicValidation, _TEXT, _TEXT, _TEXT)),
        point_of_care=draw(st.none() | st.builds(hprim.PointOfCare, _TEXT, _TEXT)),
        correction=draw(st.booleans()),
        notes=tuple(
            draw(
                st.lists(
                    st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=300),
                    max_size=2,
                )
            )
        ),
    )


@st.composite
def patients(draw: st.DrawFn) -> hprim.Patient:
    orders = tuple(
        hprim.Order(
            specimen_id=draw(
                st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=23)
            ),
            collected_at=draw(_MOMENT),
            observations=tuple(draw(st.lists(observations(), min_size=1, max_size=3))),
            notes=tuple(draw(st.lists(_TEXT, max_size=1))),
        )
        for _ in range(draw(st.integers(1, 2)))
    )
    return hprim.Patient(
        patient_id=draw(st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=36)),
        family_name=draw(_TEXT),
        given_name=draw(_TEXT),
        sex=draw(st.sampled_from(["", "M", "F", "U"])),
        orders=orders,
    )


@settings(max_examples=80)
@given(st.lists(patients(), min_size=1, max_size=3), delimiters())
def test_built_messages_round_trip_and_have_the_expected_structure(
    people: list[hprim.Patient], d: hprim.Delimiters
) -> None:
    head = hprim.Header(
        sender_id="LABGATE", receiver_id="SIL", created_at=datetime(2024, 5, 1), delimiters=d
    )
    message = hprim.build_results(head, people)
    text = hprim.encode_message(message)
    assert hprim.decode_message(text) == message
    assert hprim.check_structure(message) == ()
    assert all(len(line) <= hprim.MAX_LINE for line in text.split(b"\r"))
    obx = [r for r in message.records if r.type == "OBX"]
    expected = [o for p in people for order in p.orders for o in order.observations]
    assert len(obx) == len(expected)
    for record, observation in zip(obx, expected, strict=True):
        value = hprim.observation_value(record)
        if isinstance(observation.value, hprim.Coded):
            assert value.value_type == "CE"
        else:
            assert value.text == observation.value
        assert record.field(12) == observation.effective_status
