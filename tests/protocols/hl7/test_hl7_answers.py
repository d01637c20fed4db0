"""One reading of MSA for every answer (parse_answer: ACK, ORL^O34, ORL^O22, RSP^K11), parse_ack's
unchanged contract (ACK only), and build_orl, the LAB-28 answer to an OML."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import hl7 as v2
from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.hl7.outbound import (
    OrderPatient,
    OrderSpec,
    build_oml_o33,
    build_orl,
    build_orm_o01,
    build_qbp_q11,
    build_rsp_k11,
    read_answer,
)

NOW = datetime(2025, 6, 28, 17, 33, 34, tzinfo=timezone(timedelta(hours=2)))
HEADER = v2.MessageHeader("labgate", "LAB", "XN-HL7", "HAEMATO", "LGP0001", NOW)
ORDER = OrderSpec(specimen_id="S1", tests=("GLU", "K"), patient=OrderPatient("PAT1", "DUPONT"))


def _oml() -> bytes:
    return build_oml_o33(HEADER, [ORDER])


def test_orl_o34_answers_an_oml_o33_with_the_senders_swapped() -> None:
    orl = build_orl(_oml(), "AA", "XN1", NOW)
    msh, msa = orl.decode().rstrip("\r").split("\r")
    fields = msh.split("|")
    assert fields[2:6] == ["XN-HL7", "HAEMATO", "labgate", "LAB"]
    assert fields[8:12] == ["ORL^O34^ORL_O34", "XN1", "P", "2.5.1"]
    assert fields[17] == "UNICODE UTF-8"
    assert msa == "MSA|AA|LGP0001"
    v2.validate_message(orl)


def test_orl_refusal_carries_an_err_and_reads_back_with_its_text() -> None:
    orl = build_orl(_oml(), "AE", "XN2", NOW, "unknown test K")
    assert b"\rERR|||207^Application internal error^HL70357|E||||unknown test K\r" in orl
    ack = v2.parse_answer(orl)
    assert (ack.code, ack.acknowledged_control_id, ack.control_id) == ("AE", "LGP0001", "XN2")
    assert ack.text == "unknown test K" and not ack.accepted
    # The text is found in ERR-8 when an analyser leaves MSA-3 empty (deprecated in 2.5).
    no_msa_text = orl.replace(b"MSA|AE|LGP0001|unknown test K", b"MSA|AE|LGP0001")
    assert v2.parse_answer(no_msa_text).text == "unknown test K"


def test_orl_o22_answers_an_oml_o21_and_latin1_is_kept() -> None:
    oml_o21 = (
        "MSH|^~\\&|LIS|LAB|AN|LAB|20250101||OML^O21^OML_O21|M7|P|2.5||||||8859/1\r"
        "ORC|NW|P1\rOBR|1|P1|S1|GLU\r"
    ).encode("latin-1")
    orl = build_orl(oml_o21, "AR", "A7", NOW, "unité inconnue")
    assert b"|ORL^O22^ORL_O22|A7|P|2.5|" in orl
    assert "unité".encode("latin-1") in orl
    assert v2.parse_answer(orl).text == "unité inconnue"


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (build_orm_o01(HEADER, [ORDER]), "not ORM\\^O01"),
        (b"MSH|^~\\&|A||||20250101||OML^O39|1|P|2.5.1\r", "not OML\\^O39"),
        (b"<xml/>", "MSH"),
    ],
)
def test_build_orl_answers_only_an_oml(message: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=reason):
        build_orl(message, "AA", "1", NOW)


@pytest.mark.parametrize(
    ("code", "control_id", "now"),
    [("OK", "1", NOW), ("AA", "", NOW), ("AA", "1", datetime(2025, 1, 1))],
)
def test_build_orl_refuses_bad_arguments(code: str, control_id: str, now: datetime) -> None:
    with pytest.raises(LocalProtocolError):
        build_orl(_oml(), code, control_id, now)


def test_parse_answer_reads_every_kind_of_answer() -> None:
    query = build_qbp_q11(HEADER, "Q-1", "S1")
    answers = {
        "ACK": v2.build_ack(_oml(), "AA", "A1", NOW),
        "ORL": build_orl(_oml(), "AA", "A1", NOW),
        "RSP": build_rsp_k11(query, (), "A1", NOW, status="NF"),
    }
    for raw in answers.values():
        ack = v2.parse_answer(raw)
        assert (ack.code, ack.acknowledged_control_id, ack.control_id) == ("AA", "LGP0001", "A1")
        assert ack.raw == raw
        assert read_answer(raw) == ack  # the outbound name is the same reading


def test_parse_ack_still_refuses_what_is_not_an_ack() -> None:
    """The LIS sender takes only an ACK for its results: an ORL must stay refused there."""
    orl = build_orl(_oml(), "AA", "A1", NOW)
    with pytest.raises(RemoteProtocolError, match="not an acknowledgement: MSH-9 is 'ORL'"):
        v2.parse_ack(orl)
    ack = v2.build_ack(_oml(), "AA", "A1", NOW)
    assert v2.parse_ack(ack) == v2.parse_answer(ack)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"", "MSH"),
        (b"MSH|^~\\&|AN||||20250101||ORL^O34|9|P|2.5.1\r", "ORL\\^O34 without an MSA"),
        (b"MSH|^~\\&|AN||||20250101||OUL^R22|9|P|2.5.1\rSPM|1|S\r", "without an MSA"),
        (b"MSH|^~\\&|AN||||20250101||ORL^O34|9|P|2.5.1\rMSA|OK|1\r", "not an acknowledgement c"),
    ],
)
def test_parse_answer_refuses_with_a_reason(message: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=reason):
        v2.parse_answer(message)


TEXT = st.text(
    st.characters(exclude_categories=["Cs", "Cc"]) | st.sampled_from(["|", "^", "~", "\\", "&"]),
    max_size=20,
)


@given(st.sampled_from(sorted(v2.ACK_CODES)), TEXT.filter(str.strip), TEXT)
def test_parse_ack_and_parse_answer_agree_on_any_ack(code: str, control_id: str, text: str) -> None:
    ack = v2.build_ack(_oml(), code, control_id, datetime(2025, 1, 1, tzinfo=UTC), text)
    assert v2.parse_ack(ack) == v2.parse_answer(ack)
    orl = build_orl(_oml(), code, control_id, datetime(2025, 1, 1, tzinfo=UTC), text)
    read = v2.parse_answer(orl)
    assert (read.code, read.acknowledged_control_id, read.control_id) == (
        code,
        "LGP0001",
        control_id,
    )
    # With no text of its own, a refusal reads as its ERR-3 error code's text.
    refused = code not in ("AA", "CA")
    assert read.text == (text or ("Application internal error" if refused else ""))


@given(st.binary(max_size=300))
def test_parse_answer_on_arbitrary_bytes_raises_only_remote_errors(data: bytes) -> None:
    for parse in (v2.parse_answer, read_answer):
        try:
            parse(b"MSH|^~\\&|" + data)
        except RemoteProtocolError:
            pass
