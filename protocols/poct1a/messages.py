"""POCT1-A2 Device Messaging Layer messages as typed values, and their XML form.

Layout of every message (reference/POCT1A.md §3-4; element names are the fact sheet's)::

    <?xml version="1.0" encoding="utf-8"?>
    <OBS.R01>                                     root element = message name (topic.trigger)
      <HDR>                                       header, first child of every message
        <HDR.message_type V="OBS.R01"/>
        <HDR.control_id V="17"/>                  the sender's own number, unique per conversation
        <HDR.version_id V="POCT1"/>
        <HDR.creation_dttm V="2024-05-01T10:00:05+02:00"/>
      </HDR>
      <SVC> <SVC.role_cd V="OBS"/> ... </SVC>     objects are elements (SVC, PT, OBS, OPR...);
    </OBS.R01>                                    a field is an element OBJ.field whose value
                                                  sits in the attribute V (U = unit, SN = code
                                                  system, DN = display name)

`decode(raw)` turns one message's bytes into one of the dataclasses below (`Message`);
`encode(message)` does the reverse. Both are pure. The root element names the message: the DCA
Vantage accepted a host message whose HDR.message_type was wrong (§4), so the root is what
counts here too, and `encode` writes both consistently.

Reading is lenient where devices differ (§3): a value may be in V or in the element's text,
a field may be null (`NULL="NI"`: read as empty), timestamps come with or without an offset and
with fractional seconds, ACK fields may be spelled `ACK.type_id`/`ACK.control_id`, the operator
list may be rooted `OP_LST.R01`. Writing follows the spellings the real DCA traffic used.

Safety: the bytes must be UTF-8 (§2), and any document type declaration is refused before the
XML parser sees the text, so no entity can be declared: no "billion laughs", no external entity
(the standard library's parser does not fetch external entities, and with no DOCTYPE there is
nothing for it to expand). `defusedxml` is not a dependency of labgate; this check is its
relevant part for messages that never need a DTD.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime

from protocols.errors import RemoteProtocolError

__all__ = [
    "CONDITION_BUSY",
    "CONDITION_LOCKED",
    "CONDITION_PARTIALLY_LOCKED",
    "CONDITION_READY",
    "NON_PATIENT_ROLES",
    "XML_DECLARATION",
    "Acknowledgement",
    "ControlMaterial",
    "DeviceEvent",
    "DeviceEvents",
    "DeviceStatus",
    "Directive",
    "End",
    "EndOfTopic",
    "Escape",
    "Header",
    "Hello",
    "Message",
    "MessageDecodeError",
    "Observation",
    "Observations",
    "Operator",
    "OperatorList",
    "OtherMessage",
    "PatientInfo",
    "Request",
    "Service",
    "decode",
    "encode",
    "message_name",
    "parse_interval",
]

XML_DECLARATION = '<?xml version="1.0" encoding="utf-8"?>'

#: SVC.role_cd values of non-patient test events: liquid and electronic QC, calibration
#: verification, calibration, proficiency testing [model]. "OBS" is a patient test.
NON_PATIENT_ROLES = frozenset({"LQC", "EQC", "CVR", "CAL", "PRF"})

# DST.condition_cd. The [model] names the conditions (busy, locked, partially locked, ready,
# standby) but no source gives the full letter table: R (ready) is seen from Nova and Sofia,
# B from the DCA (probably busy). L and P are our reading, unverified: confirm them against the
# device's interface manual before relying on a real device's DST.
CONDITION_READY = "R"
CONDITION_BUSY = "B"
CONDITION_LOCKED = "L"  # unverified letter
CONDITION_PARTIALLY_LOCKED = "P"  # unverified letter


class MessageDecodeError(RemoteProtocolError):
    """A message that cannot be read. `name` (the root element) and `control_id` are given
    when the XML was readable that far, so the receiver can still answer it with ACK AE."""

    def __init__(self, reason: str, name: str | None = None, control_id: str | None = None):
        super().__init__(reason)
        self.name = name
        self.control_id = control_id


# --- the messages -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Header:
    """HDR: the sender's control id (each side numbers its own messages), its clock when it
    built the message (None: not sent), and the version (always POCT1 in the sources)."""

    control_id: str
    created_at: datetime | None = None
    version_id: str = "POCT1"


@dataclass(frozen=True, slots=True)
class Hello:
    """HEL.R01, device → host, the first message of a conversation: who the device is (DEV)
    and what it can do (DCP, DSC nested inside DEV in the DCA capture)."""

    header: Header
    device_id: str = ""  # DCA: SIEM^DCA Vantage^S013023; Sofia: a MAC address
    vendor_id: str = ""
    model_id: str = ""
    serial_id: str = ""
    manufacturer_name: str = ""
    hw_version: str = ""
    sw_version: str = ""
    device_name: str = ""
    application_timeout: int | None = None  # DCP.application_timeout, seconds
    connection_profile: str = ""  # SA, CS or AA
    topics: tuple[str, ...] = ()  # DSC.topics_supported_cd: OBS, D_EV, DTV, OP_LST...
    directives: tuple[str, ...] = ()  # DSC.directives_supported_cd
    max_message_size: int | None = None  # DSC.max_message_sz: the largest message it takes


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """DST.R01, device → host: how many new observations (and events) it holds and its
    condition (ready, busy, locked...)."""

    header: Header
    new_observations: int = 0
    new_events: int | None = None
    condition: str = ""
    status_at: datetime | None = None
    observations_updated_at: datetime | None = None
    operators_updated_at: datetime | None = None

    @property
    def locked(self) -> bool:
        """The device says it refuses tests (all, or some: partially locked)."""
        return self.condition in (CONDITION_LOCKED, CONDITION_PARTIALLY_LOCKED)


@dataclass(frozen=True, slots=True)
class PatientInfo:
    """PT: the patient as entered or scanned on the device."""

    patient_id: str = ""
    family_name: str = ""
    given_name: str = ""
    birth_date: str = ""  # as written (ISO date); the driver reads it
    gender: str = ""  # F M O U A N
    location: str = ""


@dataclass(frozen=True, slots=True)
class ControlMaterial:
    """CTC: the control (or calibrator) material of a non-patient test event."""

    name: str = ""
    lot_number: str = ""
    expiration_date: str = ""
    level: str = ""


@dataclass(frozen=True, slots=True)
class Observation:
    """OBS: one value for one test."""

    code: str  # OBS.observation_id (LOINC preferred, SN="LN"; local codes allowed)
    code_system: str = ""  # its SN
    name: str = ""  # its DN
    value: str = ""  # OBS.value V, as written (decimal point)
    unit: str = ""  # OBS.value U
    qualitative_value: str = ""  # instead of value, for qualitative tests
    method: str = ""  # M measured, C calculated, I input...
    status: str = ""  # A accepted, D discarded, X rejected, U
    interpretation: str = ""  # L H LL HH < > N A AA U D B W
    normal_range: str = ""  # OBS.normal_lo-hi_limit, e.g. "[3.9;6.1]"
    critical_range: str = ""  # OBS.critical_lo-hi_limit
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Service:
    """SVC: one test event (a patient test, or a QC run), with who ran it and its values."""

    observations: tuple[Observation, ...]
    role: str = "OBS"  # OBS (patient) or a NON_PATIENT_ROLES code
    observed_at: datetime | None = None
    status: str = ""  # NRM normal, OVR override, UNK
    reason: str = ""  # NEW, RES resent, EDT edited
    sequence: str = ""
    uid: str = ""  # SVC.observation_uid
    patient: PatientInfo | None = None
    control: ControlMaterial | None = None
    operator_id: str = ""
    operator_name: str = ""
    order_id: str = ""
    specimen_id: str = ""
    specimen_type: str = ""  # SPC.type_cd, e.g. BLD, BLDA
    reagent_lot: str = ""
    reagent_expiry: str = ""
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Observations:
    """OBS.R01 (patient results) or OBS.R02 (`non_patient`: QC, calibration, proficiency)."""

    header: Header
    services: tuple[Service, ...]
    non_patient: bool = False


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """EVT: one thing the device reports (a lock, an error, an operator list loaded)."""

    description: str = ""
    at: datetime | None = None
    severity: str = ""  # N note, W warning, C critical


@dataclass(frozen=True, slots=True)
class DeviceEvents:
    """EVS.R01, device → host."""

    header: Header
    events: tuple[DeviceEvent, ...] = ()


@dataclass(frozen=True, slots=True)
class EndOfTopic:
    """EOT.R01: the sender closes a topic (OBS, EVS, OPL, PTL...); `topic_control_id` is the
    control id of the message that opened it (the DCA put the host's REQ id there)."""

    header: Header
    topic: str
    topic_control_id: str = ""
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Acknowledgement:
    """ACK.R01: AA accepted, AE error (AR in some code), for the message `acknowledged`."""

    header: Header
    acknowledged: str
    type: str = "AA"
    note: str = ""
    error_code: str = ""  # ACK.error_detail_cd: 100 sequence, 101 missing field, 103 not found...

    @property
    def accepted(self) -> bool:
        return self.type == "AA"


@dataclass(frozen=True, slots=True)
class Request:
    """REQ.R01, host → device: ROBS (send your observations) or RDEV (send device events)."""

    header: Header
    request: str


@dataclass(frozen=True, slots=True)
class Directive:
    """DTV.R01, host → device: START_CONTINUOUS, LOCK, UNLOCK, GOTO_STANDBY, GOTO_READY
    [model]. Vendor directives have a root of their own (DTV.SIEM.DVCMD) and an SN."""

    header: Header
    command: str
    code_system: str = ""
    name: str = "DTV.R01"


@dataclass(frozen=True, slots=True)
class Operator:
    """OPR with its ACC (access control): who may test, with what, from when and until when."""

    operator_id: str
    name: str = ""
    method: str = ""  # ACC.method_cd: ALL or a test code
    active_date: str = ""  # ISO dates: the certification window
    expiration_date: str = ""
    permission_level: str = ""  # numeric codes are vendor-specific (fact sheet §5)
    action: str = ""  # OPL.R02 only: I insert/update, D delete


@dataclass(frozen=True, slots=True)
class OperatorList:
    """OPL.R01 (the complete list: replaces the device's) or OPL.R02 (`incremental` updates).
    A list too big for one message is split over several within one topic, closed by EOT."""

    header: Header
    operators: tuple[Operator, ...] = ()
    incremental: bool = False


@dataclass(frozen=True, slots=True)
class Escape:
    """ESC.R01: the receiver refuses a topic (detail OTH other, TOP unsupported topic, CNC
    cannot complete now). Element names are unverified (the [model] gives fields only):
    we write ESC.esc_control_id / ESC.detail_cd / ESC.note_txt and also read Nova's
    ESC.reason."""

    header: Header
    escaped: str  # control id of the message refused
    detail: str = ""
    note: str = ""


@dataclass(frozen=True, slots=True)
class End:
    """END.R01: either side ends the conversation (TRM.reason_cd NRM, ABN, USR, UNK)."""

    header: Header
    reason: str = "NRM"
    note: str = ""  # TRM.note_txt (element name unverified)


@dataclass(frozen=True, slots=True)
class OtherMessage:
    """A message this module does not model (PTL, REQ variants, KPA, vendor messages): only
    its name and header are read."""

    header: Header
    name: str


Message = (
    Hello
    | DeviceStatus
    | Observations
    | DeviceEvents
    | EndOfTopic
    | Acknowledgement
    | Request
    | Directive
    | OperatorList
    | Escape
    | End
    | OtherMessage
)


def message_name(message: Message) -> str:
    """The root element name `encode` gives `message` (HEL.R01, OBS.R02, OPL.R01...)."""
    if isinstance(message, Observations):
        return "OBS.R02" if message.non_patient else "OBS.R01"
    if isinstance(message, OperatorList):
        return "OPL.R02" if message.incremental else "OPL.R01"
    if isinstance(message, Directive | OtherMessage):
        return message.name
    return _NAMES[type(message)]


_NAMES: dict[type, str] = {
    Hello: "HEL.R01",
    DeviceStatus: "DST.R01",
    DeviceEvents: "EVS.R01",
    EndOfTopic: "EOT.R01",
    Acknowledgement: "ACK.R01",
    Request: "REQ.R01",
    Escape: "ESC.R01",
    End: "END.R01",
}


def parse_interval(text: str) -> tuple[str, str]:
    """The bounds of a POCT1-A interval ``[lo;hi]`` (either may be empty); ``("", "")`` when
    `text` is not one."""
    inner = text.strip()
    if len(inner) < 2 or inner[0] not in "[(" or inner[-1] not in "])" or ";" not in inner:
        return ("", "")
    low, _, high = inner[1:-1].partition(";")
    return (low.strip(), high.strip())


# --- writing ------------------------------------------------------------------------------


def _xml_char_ok(char: str) -> bool:
    code = ord(char)
    if code < 0x20:
        return code in (0x09, 0x0A, 0x0D)
    return not (0xD800 <= code <= 0xDFFF or code in (0xFFFE, 0xFFFF))


def _clean(text: str) -> str:
    """`text` with the characters XML 1.0 cannot carry (most control characters) replaced by
    U+FFFD, so a note quoting a device's bad bytes still makes a well-formed message."""
    if all(_xml_char_ok(char) for char in text):
        return text
    return "".join(char if _xml_char_ok(char) else "\ufffd" for char in text)


def _put(parent: ET.Element, tag: str, value: str | None, **attributes: str) -> None:
    """Add field `tag` with V=`value` and the non-empty `attributes` (a unit, a code system);
    nothing when all are empty."""
    if not value and not any(attributes.values()):
        return
    element = ET.SubElement(parent, tag, {"V": _clean(value)} if value else {})
    for name, text in attributes.items():
        if text:
            element.set(name, _clean(text))


def _put_time(parent: ET.Element, tag: str, value: datetime | None) -> None:
    if value is not None:
        _put(parent, tag, value.isoformat())


def _put_int(parent: ET.Element, tag: str, value: int | None) -> None:
    if value is not None:
        _put(parent, tag, str(value))


def _put_notes(parent: ET.Element, notes: tuple[str, ...]) -> None:
    for note in notes:
        _put(ET.SubElement(parent, "NTE"), "NTE.text", note)


def _build(message: Message) -> ET.Element:
    name = message_name(message)
    root = ET.Element(name)
    header = ET.SubElement(root, "HDR")
    _put(header, "HDR.message_type", name)
    _put(header, "HDR.control_id", message.header.control_id)
    _put(header, "HDR.version_id", message.header.version_id)
    _put_time(header, "HDR.creation_dttm", message.header.created_at)
    _BUILDERS[type(message)](root, message)
    return root


def _build_hello(root: ET.Element, message: Message) -> None:
    assert isinstance(message, Hello)
    device = ET.SubElement(root, "DEV")
    for tag in (
        "device_id",
        "vendor_id",
        "model_id",
        "serial_id",
        "manufacturer_name",
        "hw_version",
        "sw_version",
        "device_name",
    ):
        _put(device, f"DEV.{tag}", getattr(message, tag))
    if message.application_timeout is not None:
        policy = ET.SubElement(device, "DCP")
        _put_int(policy, "DCP.application_timeout", message.application_timeout)
    if (
        message.connection_profile
        or message.topics
        or message.directives
        or message.max_message_size is not None
    ):
        capabilities = ET.SubElement(device, "DSC")
        _put(capabilities, "DSC.connection_profile_cd", message.connection_profile)
        for topic in message.topics:
            _put(capabilities, "DSC.topics_supported_cd", topic)
        for directive in message.directives:
            _put(capabilities, "DSC.directives_supported_cd", directive)
        _put_int(capabilities, "DSC.max_message_sz", message.max_message_size)


def _build_status(root: ET.Element, message: Message) -> None:
    assert isinstance(message, DeviceStatus)
    status = ET.SubElement(root, "DST")
    _put_time(status, "DST.status_dttm", message.status_at)
    _put_int(status, "DST.new_observations_qty", message.new_observations)
    _put_int(status, "DST.new_events_qty", message.new_events)
    _put(status, "DST.condition_cd", message.condition)
    _put_time(status, "DST.observations_update_dttm", message.observations_updated_at)
    _put_time(status, "DST.operators_update_dttm", message.operators_updated_at)


def _build_observation(parent: ET.Element, observation: Observation) -> None:
    element = ET.SubElement(parent, "OBS")
    _put(
        element,
        "OBS.observation_id",
        observation.code,
        SN=observation.code_system,
        DN=observation.name,
    )
    _put(element, "OBS.value", observation.value, U=observation.unit)
    _put(element, "OBS.qualitative_value", observation.qualitative_value)
    _put(element, "OBS.method_cd", observation.method)
    _put(element, "OBS.status_cd", observation.status)
    _put(element, "OBS.interpretation_cd", observation.interpretation)
    _put(element, "OBS.normal_lo-hi_limit", observation.normal_range)
    _put(element, "OBS.critical_lo-hi_limit", observation.critical_range)
    _put_notes(element, observation.notes)


def _build_service(root: ET.Element, service: Service) -> None:
    element = ET.SubElement(root, "SVC")
    _put(element, "SVC.role_cd", service.role)
    _put_time(element, "SVC.observation_dttm", service.observed_at)
    _put(element, "SVC.status_cd", service.status)
    _put(element, "SVC.reason_cd", service.reason)
    _put(element, "SVC.sequence_nbr", service.sequence)
    _put(element, "SVC.observation_uid", service.uid)
    # The OBS elements sit inside PT for a patient, inside CTC for a control [pcap] [model];
    # a test event with neither gets them directly under SVC (read back the same way).
    holder = element
    if service.patient is not None:
        holder = patient = ET.SubElement(element, "PT")
        _put(patient, "PT.patient_id", service.patient.patient_id)
        _put(patient, "PT.location", service.patient.location)
        if service.patient.family_name or service.patient.given_name:
            # FAM/GIV children as the fact sheet describes them (exact layout unverified).
            name = ET.SubElement(patient, "PT.name")
            _put(name, "FAM", service.patient.family_name)
            _put(name, "GIV", service.patient.given_name)
        _put(patient, "PT.birth_date", service.patient.birth_date)
        _put(patient, "PT.gender_cd", service.patient.gender)
    if service.control is not None:
        control = ET.SubElement(element, "CTC")
        _put(control, "CTC.name", service.control.name)
        _put(control, "CTC.lot_number", service.control.lot_number)
        _put(control, "CTC.expiration_date", service.control.expiration_date)
        _put(control, "CTC.level_cd", service.control.level)
        if service.patient is None:
            holder = control
    for observation in service.observations:
        _build_observation(holder, observation)
    if service.operator_id or service.operator_name:
        operator = ET.SubElement(element, "OPR")
        _put(operator, "OPR.operator_id", service.operator_id)
        _put(operator, "OPR.name", service.operator_name)
    if service.order_id:
        _put(ET.SubElement(element, "ORD"), "ORD.order_id", service.order_id)
    if service.specimen_id or service.specimen_type:
        specimen = ET.SubElement(element, "SPC")
        _put(specimen, "SPC.specimen_id", service.specimen_id)
        _put(specimen, "SPC.type_cd", service.specimen_type)
    if service.reagent_lot or service.reagent_expiry:
        reagent = ET.SubElement(element, "RGT")
        _put(reagent, "RGT.lot_number", service.reagent_lot)
        _put(reagent, "RGT.expiration_date", service.reagent_expiry)
    _put_notes(element, service.notes)


def _build_observations(root: ET.Element, message: Message) -> None:
    assert isinstance(message, Observations)
    for service in message.services:
        _build_service(root, service)


def _build_events(root: ET.Element, message: Message) -> None:
    assert isinstance(message, DeviceEvents)
    for event in message.events:
        element = ET.SubElement(root, "EVT")
        _put(element, "EVT.description", event.description)
        _put_time(element, "EVT.event_dttm", event.at)
        _put(element, "EVT.severity_cd", event.severity)


def _build_end_of_topic(root: ET.Element, message: Message) -> None:
    assert isinstance(message, EndOfTopic)
    element = ET.SubElement(root, "EOT")
    _put(element, "EOT.topic_cd", message.topic)
    _put_time(element, "EOT.update_dttm", message.updated_at)
    _put(element, "EOT.eot_control_id", message.topic_control_id)


def _build_ack(root: ET.Element, message: Message) -> None:
    assert isinstance(message, Acknowledgement)
    element = ET.SubElement(root, "ACK")
    _put(element, "ACK.type_cd", message.type)
    _put(element, "ACK.ack_control_id", message.acknowledged)
    _put(element, "ACK.note_txt", message.note)
    _put(element, "ACK.error_detail_cd", message.error_code)


def _build_request(root: ET.Element, message: Message) -> None:
    assert isinstance(message, Request)
    _put(ET.SubElement(root, "REQ"), "REQ.request_cd", message.request)


def _build_directive(root: ET.Element, message: Message) -> None:
    assert isinstance(message, Directive)
    element = ET.SubElement(root, "DTV")
    _put(element, "DTV.command_cd", message.command, SN=message.code_system)


def _build_operator(parent: ET.Element, operator: Operator) -> None:
    element = ET.SubElement(parent, "OPR")
    _put(element, "OPR.operator_id", operator.operator_id)
    _put(element, "OPR.name", operator.name)
    if (
        operator.method
        or operator.active_date
        or operator.expiration_date
        or operator.permission_level
    ):
        access = ET.SubElement(element, "ACC")
        _put(access, "ACC.method_cd", operator.method)
        _put(access, "ACC.active_date", operator.active_date)
        _put(access, "ACC.expiration_date", operator.expiration_date)
        _put(access, "ACC.permission_level_cd", operator.permission_level)


def _build_operator_list(root: ET.Element, message: Message) -> None:
    assert isinstance(message, OperatorList)
    for operator in message.operators:
        if message.incremental:
            update = ET.SubElement(root, "UPD")
            _put(update, "UPD.action_cd", operator.action)
            _build_operator(update, operator)
        else:
            _build_operator(root, operator)


def _build_escape(root: ET.Element, message: Message) -> None:
    assert isinstance(message, Escape)
    element = ET.SubElement(root, "ESC")
    _put(element, "ESC.esc_control_id", message.escaped)
    _put(element, "ESC.detail_cd", message.detail)
    _put(element, "ESC.note_txt", message.note)


def _build_end(root: ET.Element, message: Message) -> None:
    assert isinstance(message, End)
    element = ET.SubElement(root, "TRM")
    _put(element, "TRM.reason_cd", message.reason)
    _put(element, "TRM.note_txt", message.note)


def _build_nothing(root: ET.Element, message: Message) -> None:
    """OtherMessage: a header only."""


_BUILDERS = {
    Hello: _build_hello,
    DeviceStatus: _build_status,
    Observations: _build_observations,
    DeviceEvents: _build_events,
    EndOfTopic: _build_end_of_topic,
    Acknowledgement: _build_ack,
    Request: _build_request,
    Directive: _build_directive,
    OperatorList: _build_operator_list,
    Escape: _build_escape,
    End: _build_end,
    OtherMessage: _build_nothing,
}


def encode(message: Message) -> bytes:
    """The message as a UTF-8 XML document with its declaration (no framing, no newline at
    the end, as the DCA sends it)."""
    body = ET.tostring(_build(message), encoding="unicode")
    return (XML_DECLARATION + body).encode("utf-8")


# --- reading ------------------------------------------------------------------------------

_FORBIDDEN_MARKUP = ("<!DOCTYPE", "<!ENTITY")


def _text(element: ET.Element | None) -> str:
    """A field's value: V, else the element's text (Nova); "" when absent or null."""
    if element is None or element.get("NULL") is not None:
        return ""
    value = element.get("V")
    if value is not None:
        return value
    return (element.text or "").strip()


def _get(scope: ET.Element | None, tag: str) -> str:
    return _text(scope.find(tag)) if scope is not None else ""


def _get_all(scope: ET.Element | None, tag: str) -> tuple[str, ...]:
    if scope is None:
        return ()
    return tuple(value for element in scope.findall(tag) if (value := _text(element)))


class _Reader:
    """Field access for one message, raising MessageDecodeError that names the message."""

    def __init__(self, name: str, control_id: str) -> None:
        self.name = name
        self.control_id = control_id

    def fail(self, reason: str) -> MessageDecodeError:
        return MessageDecodeError(f"{self.name}: {reason}", self.name, self.control_id)

    def time(self, scope: ET.Element | None, tag: str) -> datetime | None:
        text = _get(scope, tag).strip()
        if not text:
            return None
        try:
            # ISO 8601 with or without an offset, with or without fractional seconds (§3).
            return datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            raise self.fail(f"{tag} is not a date and time: {text[:40]!r}") from None

    def integer(self, scope: ET.Element | None, tag: str) -> int | None:
        text = _get(scope, tag).strip()
        if not text:
            return None
        try:
            return int(text)
        except ValueError:
            raise self.fail(f"{tag} is not a whole number: {text[:40]!r}") from None

    def required(self, scope: ET.Element | None, tag: str) -> str:
        value = _get(scope, tag)
        if not value:
            raise self.fail(f"{tag} is missing")
        return value


def _read_hello(read: _Reader, root: ET.Element, header: Header) -> Message:
    device = root.find("DEV")
    # DCP and DSC are inside DEV in the DCA capture; accept them beside it too.
    policy = root.find(".//DCP")
    capabilities = root.find(".//DSC")
    return Hello(
        header=header,
        device_id=_get(device, "DEV.device_id"),
        vendor_id=_get(device, "DEV.vendor_id"),
        model_id=_get(device, "DEV.model_id"),
        serial_id=_get(device, "DEV.serial_id"),
        manufacturer_name=_get(device, "DEV.manufacturer_name"),
        hw_version=_get(device, "DEV.hw_version"),
        sw_version=_get(device, "DEV.sw_version"),
        device_name=_get(device, "DEV.device_name"),
        application_timeout=read.integer(policy, "DCP.application_timeout"),
        connection_profile=_get(capabilities, "DSC.connection_profile_cd"),
        topics=_get_all(capabilities, "DSC.topics_supported_cd"),
        directives=_get_all(capabilities, "DSC.directives_supported_cd"),
        max_message_size=read.integer(capabilities, "DSC.max_message_sz"),
    )


def _read_status(read: _Reader, root: ET.Element, header: Header) -> Message:
    status = root.find("DST")
    return DeviceStatus(
        header=header,
        new_observations=read.integer(status, "DST.new_observations_qty") or 0,
        new_events=read.integer(status, "DST.new_events_qty"),
        condition=_get(status, "DST.condition_cd"),
        status_at=read.time(status, "DST.status_dttm"),
        observations_updated_at=read.time(status, "DST.observations_update_dttm"),
        operators_updated_at=read.time(status, "DST.operators_update_dttm"),
    )


def _read_notes(scope: ET.Element) -> tuple[str, ...]:
    return tuple(note for element in scope.findall("NTE") if (note := _get(element, "NTE.text")))


def _read_observation(read: _Reader, element: ET.Element) -> Observation:
    code = element.find("OBS.observation_id")
    value = element.find("OBS.value")
    return Observation(
        code=read.required(element, "OBS.observation_id"),
        code_system=code.get("SN", "") if code is not None else "",
        name=code.get("DN", "") if code is not None else "",
        value=_text(value),
        unit=value.get("U", "") if value is not None else "",
        qualitative_value=_get(element, "OBS.qualitative_value"),
        method=_get(element, "OBS.method_cd"),
        status=_get(element, "OBS.status_cd"),
        interpretation=_get(element, "OBS.interpretation_cd"),
        normal_range=_get(element, "OBS.normal_lo-hi_limit"),
        critical_range=_get(element, "OBS.critical_lo-hi_limit"),
        notes=_read_notes(element),
    )


def _read_patient(element: ET.Element) -> PatientInfo:
    name = element.find("PT.name")
    family, given = _get(name, "FAM"), _get(name, "GIV")
    if name is not None and not family and not given:
        family, _, given = _text(name).partition("^")  # a one-value name, components by ^
    return PatientInfo(
        patient_id=_get(element, "PT.patient_id"),
        family_name=family,
        given_name=given,
        birth_date=_get(element, "PT.birth_date"),
        gender=_get(element, "PT.gender_cd"),
        location=_get(element, "PT.location"),
    )


def _read_service(read: _Reader, element: ET.Element) -> Service:
    patient = element.find("PT")
    control = element.find("CTC")
    operator = element.find("OPR")
    specimen = element.find("SPC")
    reagent = element.find("RGT")
    observations = tuple(_read_observation(read, obs) for obs in element.iter("OBS"))
    if not observations:
        raise read.fail("a test event (SVC) without any observation (OBS)")
    return Service(
        observations=observations,
        role=_get(element, "SVC.role_cd") or "OBS",
        observed_at=read.time(element, "SVC.observation_dttm"),
        status=_get(element, "SVC.status_cd"),
        reason=_get(element, "SVC.reason_cd"),
        sequence=_get(element, "SVC.sequence_nbr"),
        uid=_get(element, "SVC.observation_uid"),
        patient=_read_patient(patient) if patient is not None else None,
        control=ControlMaterial(
            name=_get(control, "CTC.name"),
            lot_number=_get(control, "CTC.lot_number"),
            expiration_date=_get(control, "CTC.expiration_date"),
            level=_get(control, "CTC.level_cd"),
        )
        if control is not None
        else None,
        operator_id=_get(operator, "OPR.operator_id"),
        operator_name=_get(operator, "OPR.name"),
        order_id=_get(element.find("ORD"), "ORD.order_id"),
        specimen_id=_get(specimen, "SPC.specimen_id"),
        specimen_type=_get(specimen, "SPC.type_cd"),
        reagent_lot=_get(reagent, "RGT.lot_number"),
        reagent_expiry=_get(reagent, "RGT.expiration_date"),
        notes=_read_notes(element),
    )


def _read_observations(read: _Reader, root: ET.Element, header: Header) -> Message:
    services = tuple(_read_service(read, element) for element in root.findall("SVC"))
    if not services:
        raise read.fail("no test event (SVC)")
    return Observations(header=header, services=services, non_patient=read.name == "OBS.R02")


def _read_events(read: _Reader, root: ET.Element, header: Header) -> Message:
    return DeviceEvents(
        header=header,
        events=tuple(
            DeviceEvent(
                description=_get(element, "EVT.description"),
                at=read.time(element, "EVT.event_dttm"),
                severity=_get(element, "EVT.severity_cd"),
            )
            for element in root.iter("EVT")
        ),
    )


def _read_end_of_topic(read: _Reader, root: ET.Element, header: Header) -> Message:
    element = root.find("EOT")
    return EndOfTopic(
        header=header,
        topic=read.required(element, "EOT.topic_cd"),
        topic_control_id=_get(element, "EOT.eot_control_id"),
        updated_at=read.time(element, "EOT.update_dttm"),
    )


def _read_ack(read: _Reader, root: ET.Element, header: Header) -> Message:
    element = root.find("ACK")
    # Some sources spell the fields ACK.type_id / ACK.control_id (fact sheet §5).
    acknowledged = _get(element, "ACK.ack_control_id") or _get(element, "ACK.control_id")
    if not acknowledged:
        raise read.fail("ACK.ack_control_id is missing")
    return Acknowledgement(
        header=header,
        acknowledged=acknowledged,
        type=_get(element, "ACK.type_cd") or _get(element, "ACK.type_id") or "AA",
        note=_get(element, "ACK.note_txt"),
        error_code=_get(element, "ACK.error_detail_cd"),
    )


def _read_request(read: _Reader, root: ET.Element, header: Header) -> Message:
    return Request(header=header, request=read.required(root.find("REQ"), "REQ.request_cd"))


def _read_directive(read: _Reader, root: ET.Element, header: Header) -> Message:
    command = root.find(".//DTV.command_cd")
    if command is None or not _text(command):
        raise read.fail("DTV.command_cd is missing")
    return Directive(
        header=header, command=_text(command), code_system=command.get("SN", ""), name=read.name
    )


def _read_operator(element: ET.Element, action: str = "") -> Operator:
    access = element.find("ACC")
    return Operator(
        operator_id=_get(element, "OPR.operator_id"),
        name=_get(element, "OPR.name"),
        method=_get(access, "ACC.method_cd"),
        active_date=_get(access, "ACC.active_date"),
        expiration_date=_get(access, "ACC.expiration_date"),
        permission_level=_get(access, "ACC.permission_level_cd"),
        action=action,
    )


def _read_operator_list(read: _Reader, root: ET.Element, header: Header) -> Message:
    incremental = read.name.endswith(".R02")
    operators: list[Operator] = []
    if incremental:
        for update in root.iter("UPD"):
            action = _get(update, "UPD.action_cd")
            operators += [_read_operator(element, action) for element in update.findall("OPR")]
    else:
        operators = [_read_operator(element) for element in root.iter("OPR")]
    if any(not operator.operator_id for operator in operators):
        raise read.fail("an operator (OPR) without OPR.operator_id")
    return OperatorList(header=header, operators=tuple(operators), incremental=incremental)


def _read_escape(read: _Reader, root: ET.Element, header: Header) -> Message:
    element = root.find("ESC")
    return Escape(
        header=header,
        escaped=_get(element, "ESC.esc_control_id"),
        detail=_get(element, "ESC.detail_cd") or _get(element, "ESC.reason"),
        note=_get(element, "ESC.note_txt"),
    )


def _read_end(read: _Reader, root: ET.Element, header: Header) -> Message:
    element = root.find("TRM")
    return End(
        header=header,
        reason=_get(element, "TRM.reason_cd") or "UNK",
        note=_get(element, "TRM.note_txt"),
    )


_READERS = {
    "HEL.R01": _read_hello,
    "DST.R01": _read_status,
    "OBS.R01": _read_observations,
    "OBS.R02": _read_observations,
    "EVS.R01": _read_events,
    "EOT.R01": _read_end_of_topic,
    "ACK.R01": _read_ack,
    "REQ.R01": _read_request,
    "OPL.R01": _read_operator_list,
    "OPL.R02": _read_operator_list,
    "ESC.R01": _read_escape,
    "END.R01": _read_end,
}
# Nova's code roots the operator list OP_LST.R01/R02 where its spec says OPL (§5).
_ALIASES = {"OP_LST.R01": "OPL.R01", "OP_LST.R02": "OPL.R02"}


def decode(raw: bytes) -> Message:
    """One message from its bytes (no framing). Raises MessageDecodeError (a
    RemoteProtocolError) when the bytes are not a readable POCT1-A message."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageDecodeError(f"not UTF-8 at byte {exc.start}") from None
    text = text.removeprefix("\ufeff")
    for markup in _FORBIDDEN_MARKUP:
        if markup in text:
            raise MessageDecodeError(f"{markup[2:]} declarations are refused (XML entities)")
    try:
        # A str: the parser ignores the declared encoding (the bytes were UTF-8).
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise MessageDecodeError(f"not well-formed XML: {exc}") from None
    name = _ALIASES.get(root.tag, root.tag)
    header_element = root.find("HDR")
    control_id = _get(header_element, "HDR.control_id")
    read = _Reader(name, control_id)
    if header_element is None:
        raise read.fail("no header (HDR)")
    if not control_id:
        raise read.fail("HDR.control_id is missing")
    header = Header(
        control_id=control_id,
        created_at=read.time(header_element, "HDR.creation_dttm"),
        version_id=_get(header_element, "HDR.version_id"),
    )
    reader = _READERS.get(name)
    if reader is not None:
        return reader(read, root, header)
    if name.startswith("DTV."):  # DTV.R01, DTV.R02 and vendor directives (DTV.SIEM.DVCMD)
        return _read_directive(read, root, header)
    return OtherMessage(header=header, name=name)
