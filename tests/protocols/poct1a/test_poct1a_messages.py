"""POCT1-A messages: reading what devices send (with their variations), writing what the host
sends, refusing what must not be parsed, and parse(encode(x)) == x for every message type."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import poct1a
from protocols.errors import RemoteProtocolError

# Written for these tests after the fact sheet's description of the DCA Vantage capture: bare
# XML, DCP/DSC inside DEV, a timestamp without offset, a vendor observation code with notes.
DCA_LIKE_HELLO = (
    b'<?xml version="1.0" encoding="utf-8"?><HEL.R01><HDR><HDR.message_type V="HEL.R01"/>'
    b'<HDR.control_id V="10014"/><HDR.version_id V="POCT1"/>'
    b'<HDR.creation_dttm V="2024-03-01T08:15:00-05:00"/></HDR>'
    b'<DEV><DEV.device_id V="VEND^Meter X^S0001"/><DEV.vendor_id V="VEND"/>'
    b'<DEV.model_id V="Meter X"/><DEV.sw_version V="4.2"/>'
    b'<DCP><DCP.application_timeout V="60"/></DCP>'
    b'<DSC><DSC.connection_profile_cd V="SA"/><DSC.topics_supported_cd V="DTV"/>'
    b'<DSC.topics_supported_cd V="D_EV"/><DSC.topics_supported_cd V="OP_LST"/>'
    b'<DSC.directives_supported_cd V="FORCE_HIGH" SN="VEND"/>'
    b'<DSC.max_message_sz V="16000"/></DSC></DEV></HEL.R01>'
)

PATIENT_OBS = (
    b'<?xml version="1.0" encoding="utf-8"?>\n<OBS.R01>\n <HDR><HDR.control_id V="10016"/>'
    b'<HDR.version_id V="POCT1"/></HDR>\n'
    b' <SVC><SVC.role_cd V="OBS"/><SVC.observation_dttm V="2024-03-01T08:14:27"/>'
    b'<SVC.reason_cd V="NEW"/><SVC.sequence_nbr V="412"/>\n'
    b'  <PT><PT.patient_id V="P123"/><PT.name><FAM V="DUPONT"/><GIV V="MARIE"/></PT.name>'
    b'<PT.birth_date V="1960-02-29"/><PT.gender_cd V="F"/>\n'
    b'   <OBS><OBS.observation_id V="HbA1c" SN="VEND" DN="Hemoglobin A1c"/>'
    b'<OBS.value V="6.1" U="%"/><OBS.method_cd V="M"/><OBS.interpretation_cd V="H"/>'
    b'<OBS.normal_lo-hi_limit V="[4.0;6.0]"/><NTE><NTE.text V="Slope^1.000"/></NTE></OBS>\n'
    b'  </PT>\n  <OPR><OPR.operator_id V="OP7"/></OPR>\n'
    b'  <RGT><RGT.lot_number V="L42"/><RGT.expiration_date V="2025-01-31"/></RGT>\n'
    b" </SVC>\n</OBS.R01>"
)

QC_OBS = (
    b'<OBS.R02><HDR><HDR.control_id V="7"/></HDR><SVC><SVC.role_cd V="OBS"/>'
    b'<SVC.observation_dttm V="2024-03-01T08:00:00.250+01:00"/>'
    b'<CTC><CTC.name V="Control"/><CTC.lot_number V="QC9"/><CTC.level_cd V="2"/>'
    b'<OBS><OBS.observation_id V="2345-7" SN="LN"/><OBS.value V="8.3" U="mmol/L"/></OBS></CTC>'
    b"</SVC></OBS.R02>"
)


def test_reads_a_hello_with_capabilities_nested_in_dev() -> None:
    hello = poct1a.decode(DCA_LIKE_HELLO)
    assert isinstance(hello, poct1a.Hello)
    assert hello.header.control_id == "10014"
    assert hello.header.created_at == datetime(2024, 3, 1, 13, 15, tzinfo=UTC)
    assert hello.device_id == "VEND^Meter X^S0001"
    assert (hello.application_timeout, hello.connection_profile) == (60, "SA")
    assert hello.topics == ("DTV", "D_EV", "OP_LST")
    assert hello.directives == ("FORCE_HIGH",)
    assert hello.max_message_size == 16000


def test_reads_patient_observations_inside_pt() -> None:
    message = poct1a.decode(PATIENT_OBS)
    assert isinstance(message, poct1a.Observations) and not message.non_patient
    (service,) = message.services
    assert service.observed_at == datetime(2024, 3, 1, 8, 14, 27)  # no offset: kept naive
    assert (service.sequence, service.operator_id, service.reagent_lot) == ("412", "OP7", "L42")
    assert service.patient == poct1a.PatientInfo("P123", "DUPONT", "MARIE", "1960-02-29", "F")
    (obs,) = service.observations
    assert (obs.code, obs.code_system, obs.name) == ("HbA1c", "VEND", "Hemoglobin A1c")
    assert (obs.value, obs.unit, obs.interpretation) == ("6.1", "%", "H")
    assert poct1a.parse_interval(obs.normal_range) == ("4.0", "6.0")
    assert obs.notes == ("Slope^1.000",)


def test_qc_is_told_by_the_root_even_with_role_obs() -> None:
    message = poct1a.decode(QC_OBS)
    assert isinstance(message, poct1a.Observations) and message.non_patient
    (service,) = message.services
    assert service.control == poct1a.ControlMaterial("Control", "QC9", "", "2")
    assert service.observed_at == datetime(
        2024, 3, 1, 8, 0, 0, 250000, tzinfo=timezone(timedelta(hours=1))
    )
    assert service.observations[0].value == "8.3"


def test_lenient_spellings_text_values_nulls_and_aliases() -> None:
    ack = poct1a.decode(
        b'<ACK.R01><HDR><HDR.control_id V="5"/></HDR><ACK><ACK.type_id V="AE"/>'
        b'<ACK.control_id V="4001"/><ACK.note_txt>busy</ACK.note_txt></ACK></ACK.R01>'
    )
    assert ack == poct1a.Acknowledgement(poct1a.Header("5", None, ""), "4001", "AE", "busy")
    status = poct1a.decode(
        b"<DST.R01><HDR><HDR.control_id>9</HDR.control_id></HDR><DST>"
        b'<DST.new_observations_qty V="2"/><DST.condition_cd NULL="NI"/></DST></DST.R01>'
    )
    assert isinstance(status, poct1a.DeviceStatus)
    assert (status.header.control_id, status.new_observations, status.condition) == ("9", 2, "")
    operators = poct1a.decode(
        b'<OP_LST.R01><HDR><HDR.control_id V="1"/></HDR><OPR><OPR.operator_id V="A"/></OPR>'
        b"</OP_LST.R01>"
    )
    assert isinstance(operators, poct1a.OperatorList)
    assert operators.operators == (poct1a.Operator("A"),)


def test_unknown_and_vendor_messages() -> None:
    other = poct1a.decode(b'<KPA.R01><HDR><HDR.control_id V="3"/></HDR><KPA/></KPA.R01>')
    assert other == poct1a.OtherMessage(poct1a.Header("3", None, ""), "KPA.R01")
    vendor = poct1a.decode(
        b'<DTV.SIEM.DVCMD><HDR><HDR.control_id V="4"/></HDR><DTV>'
        b'<DTV.command_cd V="FORCE_HIGH" SN="SIEM"/></DTV></DTV.SIEM.DVCMD>'
    )
    assert vendor == poct1a.Directive(
        poct1a.Header("4", None, ""), "FORCE_HIGH", "SIEM", "DTV.SIEM.DVCMD"
    )


BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
    b'<DST.R01><HDR><HDR.control_id V="&lol2;"/></HDR></DST.R01>'
)
EXTERNAL_ENTITY = (
    b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
    b'<DST.R01><HDR><HDR.control_id V="1"/></HDR><DST><DST.condition_cd V="&e;"/></DST></DST.R01>'
)


@pytest.mark.parametrize("raw", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["bomb", "external"])
def test_document_type_declarations_are_refused(raw: bytes) -> None:
    with pytest.raises(poct1a.MessageDecodeError, match="DOCTYPE"):
        poct1a.decode(raw)


@pytest.mark.parametrize(
    ("raw", "reason", "name", "control_id"),
    [
        (b"\xff<DST.R01/>", "not UTF-8", None, None),
        (b"<DST.R01><HDR>", "not well-formed", None, None),
        (b"<DST.R01/>", "no header", "DST.R01", ""),
        (b"<DST.R01><HDR/></DST.R01>", "HDR.control_id is missing", "DST.R01", ""),
        (
            b'<OBS.R01><HDR><HDR.control_id V="8"/></HDR><SVC><SVC.observation_dttm V="soon"/>'
            b'<OBS><OBS.observation_id V="X"/></OBS></SVC></OBS.R01>',
            "not a date and time",
            "OBS.R01",
            "8",
        ),
        (
            b'<OBS.R01><HDR><HDR.control_id V="8"/></HDR><SVC/></OBS.R01>',
            "without any observation",
            "OBS.R01",
            "8",
        ),
        (
            b'<DST.R01><HDR><HDR.control_id V="2"/></HDR><DST>'
            b'<DST.new_observations_qty V="two"/></DST></DST.R01>',
            "not a whole number",
            "DST.R01",
            "2",
        ),
    ],
)
def test_unreadable_messages_say_why_and_what_could_be_read(
    raw: bytes, reason: str, name: str | None, control_id: str | None
) -> None:
    with pytest.raises(poct1a.MessageDecodeError, match=reason) as caught:
        poct1a.decode(raw)
    assert (caught.value.name, caught.value.control_id) == (name, control_id)


def test_encode_writes_the_declaration_and_names_the_root() -> None:
    raw = poct1a.encode(poct1a.Directive(poct1a.Header("4002"), poct1a.LOCK))
    assert raw.startswith(b'<?xml version="1.0" encoding="utf-8"?><DTV.R01><HDR>')
    assert b'<HDR.message_type V="DTV.R01" />' in raw
    assert b'<DTV.command_cd V="LOCK" />' in raw
    assert not raw.endswith(b"\n")


def test_characters_xml_cannot_carry_are_replaced() -> None:
    ack = poct1a.Acknowledgement(poct1a.Header("1"), "2", "AE", "bad byte \x01 here")
    decoded = poct1a.decode(poct1a.encode(ack))
    assert isinstance(decoded, poct1a.Acknowledgement)
    assert decoded.note == "bad byte \ufffd here"


@pytest.mark.parametrize(
    ("text", "bounds"),
    [("[80;120]", ("80", "120")), ("[;6.1]", ("", "6.1")), ("80-120", ("", "")), ("", ("", ""))],
)
def test_parse_interval(text: str, bounds: tuple[str, str]) -> None:
    assert poct1a.parse_interval(text) == bounds


# --- properties -----------------------------------------------------------------------------

# Text a device may send: any XML character (no control characters but tab/LF/CR).
_text = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff")
    | st.sampled_from("\t\n\r"),
    max_size=12,
)
_word = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=8)
_times = (
    st.none()
    | st.datetimes(
        min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.none()
    )
    | st.datetimes(
        min_value=datetime(1990, 1, 2),
        max_value=datetime(2100, 1, 1),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-8))]
        ),
    )
)
_headers = st.builds(poct1a.Header, _word, _times, st.sampled_from(["POCT1", ""]))
_observations = st.builds(
    poct1a.Observation,
    code=_word,
    code_system=_text,
    name=_text,
    value=_text,
    unit=_text,
    qualitative_value=_text,
    method=_text,
    status=_text,
    interpretation=_text,
    normal_range=_text,
    critical_range=_text,
    notes=st.lists(_text.filter(bool), max_size=2).map(tuple),
)
_services = st.builds(
    poct1a.Service,
    observations=st.lists(_observations, min_size=1, max_size=3).map(tuple),
    role=st.sampled_from(["OBS", "LQC", "EQC", "CAL"]),
    observed_at=_times,
    status=_text,
    reason=_text,
    sequence=_text,
    uid=_text,
    patient=st.none() | st.builds(poct1a.PatientInfo, _text, _text, _text, _text, _text, _text),
    control=st.none() | st.builds(poct1a.ControlMaterial, _text, _text, _text, _text),
    operator_id=_text,
    operator_name=_text,
    order_id=_text,
    specimen_id=_text,
    specimen_type=_text,
    reagent_lot=_text,
    reagent_expiry=_text,
    notes=st.lists(_text.filter(bool), max_size=2).map(tuple),
)
_operators = st.builds(poct1a.Operator, _word, _text, _text, _text, _text, _text)
_messages = st.one_of(
    st.builds(
        poct1a.Hello,
        _headers,
        _text,
        _text,
        _text,
        _text,
        _text,
        _text,
        _text,
        _text,
        st.none() | st.integers(0, 10**6),
        _text,
        st.lists(_text.filter(bool), max_size=3).map(tuple),
        st.lists(_text.filter(bool), max_size=3).map(tuple),
        st.none() | st.integers(0, 10**9),
    ),
    st.builds(
        poct1a.DeviceStatus,
        _headers,
        st.integers(0, 10**6),
        st.none() | st.integers(0, 99),
        _text,
        _times,
        _times,
        _times,
    ),
    st.builds(
        poct1a.Observations,
        _headers,
        st.lists(_services, min_size=1, max_size=3).map(tuple),
        st.booleans(),
    ),
    st.builds(
        poct1a.DeviceEvents,
        _headers,
        st.lists(st.builds(poct1a.DeviceEvent, _text, _times, _text), max_size=3).map(tuple),
    ),
    st.builds(poct1a.EndOfTopic, _headers, _word, _text, _times),
    st.builds(poct1a.Acknowledgement, _headers, _word, _word, _text, _text),
    st.builds(poct1a.Request, _headers, _word),
    st.builds(poct1a.Directive, _headers, _word, _text),
    st.builds(
        poct1a.OperatorList,
        _headers,
        st.lists(_operators, max_size=4).map(tuple),
        st.just(False),
    ),
    st.builds(
        poct1a.OperatorList,
        _headers,
        st.lists(
            st.builds(poct1a.Operator, _word, _text, _text, _text, _text, _text, _word),
            max_size=4,
        ).map(tuple),
        st.just(True),
    ),
    st.builds(poct1a.Escape, _headers, _text, _text, _text),
    st.builds(poct1a.End, _headers, _word, _text),
    st.builds(poct1a.OtherMessage, _headers, st.sampled_from(["KPA.R01", "PTL.R01", "X.Y"])),
)


@given(_messages)
def test_decode_encode_round_trip(message: poct1a.Message) -> None:
    assert poct1a.decode(poct1a.encode(message)) == message


@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_a_message_or_a_decode_error(data: bytes) -> None:
    try:
        poct1a.decode(data)
    except RemoteProtocolError as exc:
        assert isinstance(exc, poct1a.MessageDecodeError)


@given(_messages, st.data())
def test_a_corrupted_message_never_raises_anything_else(
    message: poct1a.Message, data: st.DataObject
) -> None:
    raw = bytearray(poct1a.encode(message))
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] = data.draw(st.integers(0, 255))
    try:
        poct1a.decode(bytes(raw))
    except poct1a.MessageDecodeError:
        pass


def test_exported_members() -> None:
    from protocols.poct1a import conversation, events, messages, stream

    modules = (conversation, events, messages, stream)
    assert set(poct1a.__all__) == {name for module in modules for name in module.__all__}
    for name in poct1a.__all__:
        assert getattr(poct1a, name).__doc__ or name.isupper(), name
