from __future__ import annotations

import copy
import dataclasses
import pickle
from decimal import Decimal

import pytest

from protocols import astm
from protocols.errors import LocalProtocolError, RemoteProtocolError

SAMPLE = (
    b"H|\\^&|||Analyser^1.0^SN42|||||LIS||P|LIS2-A2|20240101120000\r"
    b"P|1||PID7||Doe^Jane||19800101|F\r"
    b"O|1|S1^R2^3||^^^GLU\\^^^NA|R\r"
    b"R|1|^^^GLU|  5.5|mmol/L|3.9 to 6.1|N||F\r"
    b"C|1|I|hemolysed^slightly|G\r"
    b"L|1|N\r"
)


def record(line: bytes) -> astm.Record:
    return astm.decode_message(b"H|\\^&\r" + line).records[1]


def test_fields_are_numbered_from_the_record_type() -> None:
    header = astm.decode_message(SAMPLE).records[0]
    assert header.field(1) == "H"
    assert header.field(2) == "\\^&"  # the delimiter definition, verbatim
    assert header.field(5) == "Analyser"
    assert header.component(5, 3) == "SN42"
    assert header.field(13) == "LIS2-A2"
    assert header.field(99) == "" and header.component(5, 9) == ""


def test_repeats_and_components() -> None:
    message = astm.decode_message(SAMPLE)
    order = message.records[2]
    assert order.repeats(5) == (("", "", "", "GLU"), ("", "", "", "NA"))
    assert order.component(3, 2) == "R2"
    assert order.repeats(30) == ()
    patient = message.records[1]
    assert (patient.component(6, 1), patient.component(6, 2)) == ("Doe", "Jane")


def test_padding_is_kept_verbatim() -> None:
    result = astm.decode_message(SAMPLE).records[3]
    assert result.field(4) == "  5.5"
    assert result.field(6) == "3.9 to 6.1"


def test_record_types_are_kept_as_their_letter() -> None:
    text = b"H|\\^&\rQ|1|^S1||ALL\rM|1|X\rS|1\rZ|1|vendor\rL|1\r"
    assert [r.type for r in astm.decode_message(text).records] == list("HQMSZL")


@pytest.mark.parametrize("separator", [b"\r", b"\n", b"\r\n"])
def test_records_end_with_cr_lf_or_crlf_and_blank_lines_are_skipped(separator: bytes) -> None:
    text = SAMPLE.replace(b"\r", separator).replace(b"P|1", separator + b"P|1", 1)
    message = astm.decode_message(separator + text + separator + b"   " + separator)
    assert [r.type for r in message.records] == ["H", "P", "O", "R", "C", "L"]
    assert message == astm.decode_message(SAMPLE)


def test_message_must_start_with_an_h_record() -> None:
    with pytest.raises(RemoteProtocolError, match="H record"):
        astm.decode_message(b"P|1\rL|1\r")
    with pytest.raises(RemoteProtocolError, match="no records"):
        astm.decode_message(b"\r\n \r")


@pytest.mark.parametrize("header", [b"H|\\^", b"H", b"H||||", b"H|\\^\\"])
def test_header_must_declare_four_distinct_delimiters(header: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        astm.decode_message(header + b"\rL|1\r")


def test_delimiters_come_from_the_header() -> None:
    message = astm.decode_message(b"H|\\!~|||DxH\rR|1|!!!WBC|5.3|10^9/L\r")
    assert message.delimiters == astm.Delimiters("|", "\\", "!", "~")
    assert message.records[1].component(3, 4) == "WBC"
    assert message.records[1].field(5) == "10^9/L"
    assert astm.Delimiters.from_header("H@#$%rest") == astm.Delimiters("@", "#", "$", "%")


def test_delimiters_must_be_single_distinct_characters() -> None:
    for bad in (("|", "|", "^", "&"), ("||", "\\", "^", "&"), ("\r", "\\", "^", "&")):
        with pytest.raises(LocalProtocolError):
            astm.Delimiters(*bad)
    assert astm.Delimiters().definition == "\\^&"


def test_escape_sequences_are_decoded() -> None:
    result = record(b"R|1|a&F&b&S&c&R&d&E&e")
    assert result.field(3) == "a|b^c\\d&e"
    assert result.raw_field(3) == "a&F&b&S&c&R&d&E&e"


def test_escape_sequences_use_the_declared_escape_character() -> None:
    message = astm.decode_message(b"H|\\!~\rR|1|a~S~b&S&c\r")
    assert message.records[1].field(3) == "a!b&S&c"


def test_unknown_escape_sequences_are_kept_verbatim() -> None:
    assert record(b"R|1|&X&|a&|&|&H&&S&").repeats(3) == (("&X&",),)
    assert record(b"R|1|&X&|a&|&|&H&&S&").field(4) == "a&"
    assert record(b"R|1|&X&|a&|&|&H&&S&").field(6) == "&H&^"


def test_encode_escapes_delimiters_in_data() -> None:
    built = astm.Record("R", ((("R",),), (("1",),), (("a|b", "c^d"), ("e\\f&g",))))
    message = astm.Message((astm.Record("H", ((("H",),),)), built), astm.Delimiters())
    text = astm.encode_message(message)
    assert text == b"H|\\^&\rR|1|a&F&b^c&S&d\\e&R&f&E&g\r"
    assert astm.decode_message(text) == message.__class__(
        (astm.Record("H", ((("H",),), (("\\^&",),))), built), astm.Delimiters()
    )


def test_encode_decode_round_trip_of_a_real_message() -> None:
    message = astm.decode_message(SAMPLE)
    assert astm.encode_message(message) == SAMPLE
    assert astm.decode_message(astm.encode_message(message)) == message


def test_encode_refuses_what_cannot_be_written() -> None:
    header = astm.Record("H", ((("H",),), (("\\^&",),)))
    with pytest.raises(LocalProtocolError):
        astm.encode_message(
            astm.Message((header, astm.Record("C", ((("C",),), (("two\rlines",),)))))
        )
    with pytest.raises(LocalProtocolError, match="H-2"):
        astm.encode_message(astm.Message((header,), astm.Delimiters(component="!")))
    with pytest.raises(LocalProtocolError):
        astm.encode_message(
            astm.Message((header, astm.Record("C", ((("C",),), (("µ",),))))), "ascii"
        )


def test_records_need_their_type_as_field_one() -> None:
    with pytest.raises(LocalProtocolError):
        astm.Record("R", ((("P",),),))
    with pytest.raises(LocalProtocolError):
        astm.Record("R", ())
    with pytest.raises(LocalProtocolError):
        astm.Record("R", ((("R",),), ()))
    with pytest.raises(LocalProtocolError):
        astm.decode_message(SAMPLE).records[0].field(0)


def test_raw_field_of_a_built_record_uses_default_delimiters() -> None:
    built = astm.Record("O", ((("O",),), (("1",),), (("S1", "R2"),), (("a",), ("b|c",))))
    assert built.raw_field(3) == "S1^R2"
    assert built.raw_field(4) == "a\\b&F&c"
    assert built.raw_field(9) == ""


def test_decode_with_a_strict_encoding_reports_bad_bytes_as_remote_errors() -> None:
    with pytest.raises(RemoteProtocolError):
        astm.decode_message(b"H|\\^&\rC|1|\xff\r", "utf-8")
    assert astm.decode_message(b"H|\\^&\rC|1|\xb5mol/L\r").records[1].field(3) == "µmol/L"


@pytest.mark.parametrize(
    ("raw", "number", "comparator"),
    [
        ("  5.5", Decimal("5.5"), None),
        ("< 1.20", Decimal("1.20"), "<"),
        (">500", Decimal(500), ">"),
        ("<=0.5", Decimal("0.5"), "<="),
        (">= 10", Decimal(10), ">="),
        ("-3.2", Decimal("-3.2"), None),
        ("2.837141", Decimal("2.837141"), None),
        ("1.5E3", Decimal("1.5E3"), None),
        (".5", Decimal("0.5"), None),
        ("-----", None, None),
        ("NA", None, None),
        ("NEG", None, None),
        ("Examine", None, None),
        ("3.8 to 11.8", None, None),
        ("146!  H ", None, None),
        ("<", None, None),
        ("", None, None),
        ("NaN", None, None),
        ("Infinity", None, None),
    ],
)
def test_parse_value(raw: str, number: Decimal | None, comparator: str | None) -> None:
    parsed = astm.parse_value(raw)
    assert parsed == astm.ParsedValue(raw, number, comparator)


def test_public_names_are_exported() -> None:
    expected = {
        "checksum", "Frame", "split_text", "Role", "Timers", "Link", "LinkState",
        "TransferStarted", "MessageReceived", "TransferEnded", "TransferAborted",
        "FrameRejected", "DuplicateFrameIgnored", "GarbageDiscarded", "MessageSent",
        "MessageFailed", "LinkBusy", "ContentionDetected", "InterruptRequested", "Event",
        "Delimiters", "Record", "Message", "decode_message", "encode_message", "parse_value",
        "ParsedValue", "Field", "Repeat", "UnframedLink", "UnframedState", "Capture",
        "CaptureIssue", "CaptureMessage", "read_capture", "split_capture_messages",
    }  # fmt: skip
    assert set(astm.__all__) == expected
    for name in astm.__all__:
        assert getattr(astm, name) is not None


# --- value semantics of decoded records (split on demand) ---------------------------------------


def test_a_decoded_record_is_equal_to_the_same_record_built() -> None:
    decoded = record(b"R|1|^^^GLU\\^^^NA|5.5&S&x|mmol/L")
    built = astm.Record(
        "R",
        (
            (("R",),),
            (("1",),),
            (("", "", "", "GLU"), ("", "", "", "NA")),
            (("5.5^x",),),
            (("mmol/L",),),
        ),
    )
    assert decoded == built and hash(decoded) == hash(built)
    assert {decoded: 1}[built] == 1
    assert decoded != astm.Record("R", ((("R",),), (("2",),)))
    assert decoded.__eq__("R") is NotImplemented
    assert repr(decoded) == repr(built) == f"Record(type='R', fields={built.fields!r})"


def test_records_are_immutable() -> None:
    decoded = record(b"R|1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        decoded.type = "P"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del decoded.raw_fields
    assert not hasattr(decoded, "__dict__")


def test_records_survive_pickle_and_copy() -> None:
    decoded = record(b"R|1|^^^GLU|5.5")
    for clone in (pickle.loads(pickle.dumps(decoded)), copy.deepcopy(decoded), copy.copy(decoded)):
        assert (
            clone == decoded and clone.raw_field(3) == "^^^GLU" and clone.component(3, 4) == "GLU"
        )


def test_records_match_by_type_and_fields() -> None:
    match record(b"R|1|^^^GLU"):
        case astm.Record("R", fields):
            assert fields[2] == (("", "", "", "GLU"),)
        case _:
            pytest.fail("no match")


def test_reading_one_field_gives_what_all_fields_give() -> None:
    text = b"H|\\^&|||X^1\rR|1|^^^GLU\\^^^NA|a&F&b^c&x|||\rL|1\r"
    for lazy, whole in zip(
        astm.decode_message(text).records, astm.decode_message(text).records, strict=True
    ):
        fields = whole.fields
        for n in range(1, len(fields) + 3):
            assert lazy.repeats(n) == (fields[n - 1] if n <= len(fields) else ())
            for c in range(1, 6):
                expected = (
                    fields[n - 1][0][c - 1]
                    if n <= len(fields) and c <= len(fields[n - 1][0])
                    else ""
                )
                assert lazy.component(n, c) == expected
    with pytest.raises(LocalProtocolError):
        lazy.component(2, 0)
    with pytest.raises(LocalProtocolError):
        lazy.repeats(0)
