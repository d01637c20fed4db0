"""HPRIM Santé records: delimiters, escapes, continuation lines, errors with their line."""

from __future__ import annotations

import pickle
from dataclasses import FrozenInstanceError
from decimal import Decimal

import pytest

from protocols import hprim
from protocols.errors import LocalProtocolError, RemoteProtocolError

# The illustration of the fact sheet (reference/HPRIM.md §4), CR-terminated.
ILLUSTRATION = (
    b"H|~^\\&|R42.HPR||LAB01~LABO CENTRAL||ORU|||MW01~LABGATE||P|H2.2~C|202405011000\r"
    b"P|1|PID987|||DUPONT~MARIE||19700101|F\r"
    b"OBR|1||S12345|GLU~Glucose~L|R||202405010800\r"
    b"OBX|1|NM|GLU~Glucose~L||5.4|mmol/L|3.9-5.8||||F||||202405010930\r"
    b"L|1||1|4\r"
)


H = hprim.Record.of("H", "~^\\&")  # a built H equals a decoded one only with its H-2


def decode(text: str) -> hprim.Message:
    return hprim.decode_message(text.replace("\n", "\r").encode("latin-1"))


def record(text: str, head: str = "H|~^\\&") -> hprim.Record:
    """The second record of a message made of `head` and `text`."""
    return decode(f"{head}\n{text}\n").records[1]


# --- delimiters -------------------------------------------------------------------------------


def test_the_illustration_reads_with_component_and_repetition_swapped() -> None:
    message = hprim.decode_message(ILLUSTRATION)
    d = message.delimiters
    assert (d.field, d.component, d.repeat, d.escape, d.subcomponent) == ("|", "~", "^", "\\", "&")
    assert d.definition == "~^\\&"
    assert [r.type for r in message.records] == ["H", "P", "OBR", "OBX", "L"]
    header, patient, request, result, _ = message.records
    assert header.field(2) == "~^\\&"
    assert header.component(5, 1) == "LAB01" and header.component(5, 2) == "LABO CENTRAL"
    assert message.version == "H2.2" and header.component(13, 2) == "C"
    assert message.message_type == "ORU"
    assert patient.component(6, 1) == "DUPONT" and patient.component(6, 2) == "MARIE"
    assert request.repeats(5) == ((("GLU",), ("Glucose",), ("L",)),)
    assert result.field(6) == "5.4" and result.field(12) == "F"
    assert hprim.encode_message(message) == ILLUSTRATION


def test_tilde_separates_components_and_caret_separates_repeats() -> None:
    r = record("OBX|1|CE|X~x~L||A~a~L^B~b~L")
    assert r.repeats(6) == ((("A",), ("a",), ("L",)), (("B",), ("b",), ("L",)))


def test_sub_components() -> None:
    r = record("P|1|ID&SITE~2")
    assert r.subcomponents(3, 1) == ("ID", "SITE")
    assert r.component(3, 1) == "ID" and r.component(3, 2) == "2"
    assert r.subcomponents(3, 3) == () and r.subcomponents(9, 1) == ()


def test_delimiters_are_read_from_each_message() -> None:
    message = decode("H!@#$%!F1!!S!ORU\nP!1!NOM@Prenom#X@Y\nC!1!L!a$!b$$c\n")
    d = message.delimiters
    assert (d.field, d.component, d.repeat, d.escape, d.subcomponent) == ("!", "@", "#", "$", "%")
    p, c = message.records[1], message.records[2]
    assert p.repeats(3) == ((("NOM",), ("Prenom",)), (("X",), ("Y",)))
    assert c.field(4) == "a!b$c"
    assert hprim.encode_message(message) == b"H!@#$%!F1!!S!ORU\rP!1!NOM@Prenom#X@Y\rC!1!L!a$!b$$c\r"


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        ("H|~^\\", "too short"),
        ("H|~^\\~|x", "must all differ"),
        ("H|~^\\a|x", "letters, digits or white space"),
        ("H|~^\\ |x", "letters, digits or white space"),
        ("H|~^\\&x", "followed by the field delimiter"),
    ],
)
def test_bad_headers_are_refused_with_their_line(head: str, reason: str) -> None:
    with pytest.raises(hprim.DecodeError) as caught:
        decode(f"\n\n{head}\nL|1\n")
    assert caught.value.line == 3 and caught.value.record == "H"
    assert reason in str(caught.value) and str(caught.value).startswith("line 3 (H record): ")


def test_delimiters_built_wrong_are_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        hprim.Delimiters("|", "|", "^", "\\", "&")
    with pytest.raises(LocalProtocolError):
        hprim.Delimiters("|", "~", "^", "\\", "&&")


# --- escapes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("a\\|b", "a|b"),
        ("a\\~b", "a~b"),
        ("a\\^b", "a^b"),
        ("a\\&b", "a&b"),
        ("a\\\\b", "a\\b"),
        ("C:\\dir", "C:dir"),  # the next character is taken literally, whatever it is
        ("fin\\", "fin\\"),  # a lone escape at the end of the record escapes nothing
    ],
)
def test_the_character_after_the_escape_is_data(raw: str, value: str) -> None:
    r = record(f"C|1|L|{raw}")
    assert r.field(4) == value and len(r.fields) == 4


def test_escaped_delimiters_do_not_split_anything() -> None:
    r = record("C|1|L|x\\|y\\~z\\^w\\&v|last")
    assert r.repeats(4) == ((("x|y~z^w&v",),),)
    assert r.field(5) == "last"
    assert r.raw_field(4) == "x\\|y\\~z\\^w\\&v"


def test_encoding_escapes_the_five_delimiters() -> None:
    message = hprim.Message(
        (H, hprim.Record.of("C", "1", "L", "a|b~c^d\\e&f"), hprim.Record.of("L"))
    )
    text = hprim.encode_message(message)
    assert text == b"H|~^\\&\rC|1|L|a\\|b\\~c\\^d\\\\e\\&f\rL\r"
    assert hprim.decode_message(text) == message


# --- continuation lines -----------------------------------------------------------------------


def test_continuation_lines_are_joined_before_fields_are_split() -> None:
    message = decode("H|~^\\&|F\nOBX|1|ST|X~x~L||debut\nA| et fin|mg\nA|/L||\nL|1\n")
    obx = message.records[1]
    assert obx.field(6) == "debut et fin" and obx.field(7) == "mg/L" and len(obx.fields) == 9
    assert obx.lines == (2, 4)
    assert message.records[2].lines == (5, 5)


def test_the_header_and_any_record_can_be_continued() -> None:
    message = decode("H|~^\\&|F1\nA|.HPR||S~Sender\n\nA|||ORU\nZZZ|1|a\nA|b\nL|1\n")
    header, other, _ = message.records
    assert header.field(3) == "F1.HPR" and header.component(5, 2) == "Sender"
    assert header.field(7) == "ORU" and header.lines == (1, 4)  # a blank line in between
    assert other.type == "ZZZ" and other.field(3) == "ab"


def test_an_escape_at_the_end_of_a_line_escapes_the_first_character_of_the_next() -> None:
    assert record("C|1|L|a\\\nA||b").field(4) == "a|b"


def test_a_field_can_begin_on_a_continuation_line() -> None:
    assert record("OBX|1|NM|GLU\nA||x|5.4").field(6) == "5.4"


def test_long_records_are_folded_at_220_characters() -> None:
    text = "x" * 500
    message = hprim.Message((H, hprim.Record.of("C", "1", "L", text)))
    lines = hprim.encode_message(message).split(b"\r")[:-1]
    assert [len(line) for line in lines] == [6, 220, 220, 70]  # 506 = 220 + 218 + 68
    assert lines[2].startswith(b"A|") and lines[3].startswith(b"A|")
    assert hprim.decode_message(b"\r".join(lines)).records[1].field(4) == text
    assert len(hprim.encode_message(message, max_line=None).split(b"\r")) == 3


def test_folding_never_separates_an_escape_from_what_it_escapes() -> None:
    # "C|1|L|" is 6 characters: an escaped "|" at 219-220 would straddle the fold at 220
    text = "y" * 213 + "|" + "z" * 10
    message = hprim.Message((H, hprim.Record.of("C", "1", "L", text)))
    lines = hprim.encode_message(message).split(b"\r")
    assert lines[1] == b"C|1|L|" + b"y" * 213 and lines[2] == b"A|\\|" + b"z" * 10
    assert hprim.decode_message(hprim.encode_message(message)) == message


def test_max_line_must_leave_room_for_a_continuation() -> None:
    message = hprim.Message((hprim.Record.of("H"),))
    with pytest.raises(LocalProtocolError, match="at least 8"):
        hprim.encode_message(message, max_line=7)


# --- line endings and tolerated characters ----------------------------------------------------


@pytest.mark.parametrize("end", [b"\r", b"\n", b"\r\n", b"\r\n\x00", b"\r\x1a"])
def test_records_may_end_with_cr_lf_crlf_and_stray_control_characters(end: bytes) -> None:
    text = ILLUSTRATION.replace(b"\r", end)
    assert hprim.decode_message(text) == hprim.decode_message(ILLUSTRATION)


def test_a_utf8_byte_order_mark_is_skipped() -> None:
    text = "\ufeff".encode() + ILLUSTRATION.replace(b"MARIE", "MARIÉ".encode())
    message = hprim.decode_message(text, "utf-8")
    assert message.records[1].component(6, 2) == "MARIÉ"


def test_latin_1_is_the_default_encoding() -> None:
    message = hprim.decode_message(b"H|~^\\&\rP|1|X|||LEFEVRE~H\xe9l\xe8ne\rL|1\r")
    assert message.records[1].component(6, 2) == "Hélène"


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("", 1, "holds no records"),
        ("\n \n", 1, "holds no records"),
        ("P|1\nL|1", 1, "must start with an H record"),
        ("A|x\nH|~^\\&", 1, "must start with an H record"),
        ("H|~^\\&\nP|1\n|x|y", 3, "not a record"),
        ("H|~^\\&\nP|1\n12|x", 3, "not a record"),
        ("H|~^\\&\nP|1\nA", 3, "continuation line, not a record type"),
        ("H|~^\\&\nP|1\nH|~^\\&\nL", 3, "a second H record"),
    ],
)
def test_what_cannot_be_read_is_a_remote_error_with_its_line(
    text: str, line: int, reason: str
) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        decode(text)
    assert isinstance(caught.value, hprim.DecodeError)
    assert caught.value.line == line and reason in str(caught.value)
    assert f"line {line}" in str(caught.value)


def test_error_lines_count_from_first_line() -> None:
    with pytest.raises(hprim.DecodeError) as caught:
        hprim.decode_message(b"H|~^\\&\r\nP|1\r\n?|x\r\n", first_line=41)
    assert caught.value.line == 43


def test_bytes_the_encoding_refuses_give_their_line() -> None:
    with pytest.raises(hprim.DecodeError, match=r"^line 3: not valid utf-8") as caught:
        hprim.decode_message(b"H|~^\\&\r\nP|1\r\nC|1|L|\xe9t\xe9\r\n", "utf-8")
    assert caught.value.line == 3


def test_an_unknown_encoding_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        hprim.decode_message(ILLUSTRATION, "no-such-codec")


@pytest.mark.parametrize(
    ("records", "reason"),
    [
        ((), "starts with its H record"),
        ((hprim.Record.of("P"),), "starts with its H record"),
        ((hprim.Record.of("H"), hprim.Record.of("H")), "one H record"),
        ((hprim.Record.of("H", "|~^&"),), "does not match the delimiters"),
        ((hprim.Record.of("H"), hprim.Record.of("C", "1", "L", "a\rb")), "CR or LF"),
        ((hprim.Record.of("H"), hprim.Record.of("C", "1", "L", "\u2014")), "cannot encode"),
    ],
)
def test_what_cannot_be_written_is_a_local_error(
    records: tuple[hprim.Record, ...], reason: str
) -> None:
    with pytest.raises(LocalProtocolError, match=reason):
        hprim.encode_message(hprim.Message(records))


# --- records ----------------------------------------------------------------------------------


def test_record_types_are_checked() -> None:
    for bad in ("", "A", "1X", "O|X", "é"):
        with pytest.raises(LocalProtocolError):
            hprim.Record.of(bad)
    with pytest.raises(LocalProtocolError, match="record type"):
        hprim.Record("P", ((((("X",),),),)))
    with pytest.raises(LocalProtocolError, match="every field"):
        hprim.Record("P", ((((("P",),),)), ()))


def test_decoded_and_built_records_compare_by_fields_only() -> None:
    decoded = record("OBX|1|NM|GLU~Glucose~L||5.4")
    built = hprim.Record.of("OBX", "1", "NM", hprim.components("GLU", "Glucose", "L"), "", "5.4")
    assert decoded == built and hash(decoded) == hash(built)
    assert decoded.lines == (2, 2) and built.lines is None
    assert built.raw_field(4) == "GLU~Glucose~L" and built.raw_field(99) == ""
    assert decoded.raw_field(4) == "GLU~Glucose~L"
    assert pickle.loads(pickle.dumps(decoded)) == decoded
    assert repr(built).startswith("Record(type='OBX'")
    with pytest.raises(FrozenInstanceError):
        built.type = "OBR"  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        del built.type
    with pytest.raises(LocalProtocolError):
        built.field(0)
    with pytest.raises(LocalProtocolError):
        built.component(1, 0)


def test_reading_one_field_and_reading_them_all_agree() -> None:
    text = "OBX|1|CE|X~x~L||A~a&b~L^B\\^~b|u"
    lazy, whole = record(text), record(text)
    all_fields = whole.fields
    assert lazy.repeats(6) == all_fields[5] and lazy == whole


# --- embedded files (2.4) ----------------------------------------------------------------------

FILE_TEXT = "JVBER~i0^xLjQ\\|&\\\\\\x" + "Q" * 400  # delimiters and escapes, kept as they are


def test_an_embedded_file_is_opaque_and_round_trips_byte_for_byte() -> None:
    text = (
        "H|~^\\&|F||S||ORU|||R||P|H2.4~C|202405011000\r"
        f"OBX|1|FIC|CR~Compte rendu~L||{FILE_TEXT}||||||F\r"
        "L|1\r"
    )
    folded = hprim.encode_message(hprim.decode_message(text.encode("latin-1")))
    assert folded.count(b"\rA|") == 2
    message = hprim.decode_message(folded)
    obx = message.records[1]
    assert obx.repeats(6) == (((FILE_TEXT,),),) and obx.field(12) == "F"
    value = hprim.observation_value(obx)
    assert value.value_type == "FIC" and value.file == hprim.EmbeddedFile(FILE_TEXT)
    assert value.text == ""
    assert hprim.encode_message(message, max_line=None) == text.encode("latin-1")
    assert hprim.encode_message(message) == folded


def test_an_embedded_file_that_would_not_read_back_is_refused() -> None:
    for bad in ("a|b", "a\nb"):
        obx = hprim.Record.of("OBX", "1", "FIC", "CR", "", bad, "x")
        with pytest.raises(LocalProtocolError, match="embedded file"):
            hprim.encode_message(hprim.Message((hprim.Record.of("H"), obx)))
    lone = hprim.Record.of("OBX", "1", "FIC", "CR", "", "data\\", "x")
    with pytest.raises(LocalProtocolError, match="embedded file"):
        hprim.encode_message(hprim.Message((hprim.Record.of("H"), lone)))
    several = hprim.Record.of("OBX", "1", "FIC", "CR", "", hprim.components("a", "b"))
    with pytest.raises(LocalProtocolError, match="one text"):
        hprim.encode_message(hprim.Message((hprim.Record.of("H"), several)))


# --- values -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "number"),
    [("5.4", Decimal("5.4")), (" -0.50 ", Decimal("-0.50")), ("12", Decimal(12))]
    + [(raw, None) for raw in ("<0.5", "5,4", "", "NEG", "1e3", "Infinity")],
)
def test_nm_values_read_as_decimals_or_none(raw: str, number: Decimal | None) -> None:
    value = hprim.observation_value(record(f"OBX|1|NM|X||{raw}"))
    assert value.number == number and value.text == raw


def test_ce_st_tx_and_other_values() -> None:
    ce = hprim.observation_value(record("OBX|1|CE|X||POS~Positif~L^^NEG~Négatif"))
    assert ce.coded == (hprim.Coded("POS", "Positif", "L"), hprim.Coded("NEG", "Négatif"))
    tx = hprim.observation_value(record("OBX|1|TX|X||ligne 1^ligne 2"))
    assert tx.text == "ligne 1" and [r[0][0] for r in tx.repeats] == ["ligne 1", "ligne 2"]
    other = hprim.observation_value(record("OBX|1|pn|X||NOM~Prenom"))
    assert other.value_type == "PN" and other.number is None and other.text == "NOM"
    empty = hprim.observation_value(record("OBX|1"))
    assert empty.value_type == "" and empty.repeats == () and empty.text == ""
    with pytest.raises(LocalProtocolError):
        hprim.observation_value(record("OBR|1"))


# --- splitting a file into messages -----------------------------------------------------------


def test_a_file_with_several_messages_and_junk_is_split_by_h_records() -> None:
    data = b"junk\r\n\r\n" + ILLUSTRATION + b"\r\n" + ILLUSTRATION.replace(b"\r", b"\n")
    parts = hprim.split_messages(data)
    assert [(p.line, p.offset) for p in parts] == [(1, 0), (3, 8), (9, 8 + len(ILLUSTRATION) + 2)]
    for part in parts:
        assert data[part.offset : part.offset + len(part.data)] == part.data
    with pytest.raises(hprim.DecodeError):
        hprim.decode_message(parts[0].data, first_line=parts[0].line)
    for part in parts[1:]:
        message = hprim.decode_message(part.data, first_line=part.line)
        assert message.records[0].lines == (part.line, part.line)
        assert message.records[-1].lines == (part.line + 4, part.line + 4)


def test_split_messages_skips_blank_input_and_the_byte_order_mark() -> None:
    assert hprim.split_messages(b"") == [] and hprim.split_messages(b"\r\n \r\n") == []
    parts = hprim.split_messages(b"\xef\xbb\xbf" + ILLUSTRATION)
    assert [(p.line, p.offset) for p in parts] == [(1, 3)]
    # a record type that begins with H is not a header
    assert len(hprim.split_messages(ILLUSTRATION + b"HEU|1\r")) == 1


# --- structure --------------------------------------------------------------------------------


def findings(text: str) -> list[tuple[int | None, str, str]]:
    return [(f.line, f.record, f.text) for f in hprim.check_structure(decode(text))]


HEAD = "H|~^\\&|F||S~s||ORU|||R~r||P|H2.2~C|202405011000"


def test_the_illustration_has_the_expected_structure() -> None:
    assert hprim.check_structure(hprim.decode_message(ILLUSTRATION)) == ()


def test_other_record_types_are_passed_over() -> None:
    assert findings(f"{HEAD}\nREG|1\nP|1\nFAC|1\nOBR|1\nOBX|1|NM\nACT|1\nL|1") == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("OBR|1\nOBX|1|NM\nL|1", [(2, "OBR", "OBR record with no P before it")]),
        ("P|1\nOBX|1|NM\nL|1", [(3, "OBX", "OBX record with no OBR before it")]),
        ("C|1|L|x\nP|1\nOBR|1\nOBX|1|NM\nL|1", [(2, "C", "C record right after H: no")]),
        ("P|1\nC|1\nP|2\nOBR|1\nOBX|1|NM\nL|1", [(4, "P", "the P record of line 2 has no OBR")]),
        ("P|1\nOBR|1\nC|1\nL|1", [(5, "L", "the OBR record of line 3 has no OBX")]),
        ("P|1\nOBR|1\nOBX|1|NM\nL|1\nC|1", [(6, "C", "C record after the L record")]),
        ("P|1\nOBR|1\nOBX|1|NM\nL|1\nL|2", [(6, "L", "L record after the L record")]),
        (
            "P|1\nOBR|1\nOBX|1|NM",
            [(4, "OBX", "no L record at the end: the file may be truncated")],
        ),
        (
            "P|1\nOBR|1",
            [
                (3, "OBR", "the OBR record of line 3 has no OBX"),
                (3, "OBR", "no L record at the end"),
            ],
        ),
        ("P|1\nOBR|1\nOBX|1\nL|1", [(4, "OBX", "OBX-3 value type is empty")]),
        ("P|1\nOBR|1\nOBX|1|XY\nL|1", [(4, "OBX", "OBX-3 value type 'XY' is not a known one")]),
        ("P|1\nOBR|1\nOBX|1|FIC\nL|1", [(4, "OBX", "an embedded file (FIC) in a H2.2 message")]),
    ],
)
def test_structure_findings_name_the_record_and_its_line(
    body: str, expected: list[tuple[int, str, str]]
) -> None:
    found = findings(f"{HEAD}\n{body}")
    assert [(line, kind) for line, kind, _ in found] == [(line, kind) for line, kind, _ in expected]
    for (_, _, text), (_, _, start) in zip(found, expected, strict=True):
        assert text.startswith(start)


def test_header_findings() -> None:
    found = findings("H|~^\\&|F|||||||||P|H2.5|2024-05-01\nL|1")
    assert [text for _, _, text in found] == [
        "H-5 (sender) is empty",
        "H-10 (receiver) is empty",
        "H-7 (message type) is empty",
        "H-13 version 'H2.5' is not one of H2.0, H2.1, H2.2, H2.4",
        "H-14 date-time '2024-05-01' is not YYYYMMDDHHMM[SS]",
    ]
    assert all(line == 1 for line, _, _ in found)
