"""IHE LAW messages (HL7 v2.5.1): results, orders and work-order queries, built.

The counterparts of :func:`protocols.hl7.build_oru_r01` for an analyser that speaks the IHE
Laboratory Analytical Workflow profile, and for a LIS that pushes orders the classic way:

=========================  ===================  ======================================
builder                    message              who sends it
=========================  ===================  ======================================
:func:`build_oul_r22`      ``OUL^R22^OUL_R22``  analyser → labgate: results (LAB-29)
:func:`build_oml_o33`      ``OML^O33^OML_O33``  LIS/labgate → analyser: orders (LAB-28)
:func:`build_orm_o01`      ``ORM^O01^ORM_O01``  LIS/labgate → analyser: orders (pre-LAW)
:func:`build_orl`          ``ORL^O34^ORL_O34``  analyser → labgate: answer to an OML
:func:`build_qbp_q11`      ``QBP^Q11^QBP_Q11``  analyser → labgate: query (LAB-27)
:func:`build_rsp_k11`      ``RSP^K11^RSP_K11``  labgate/LIS → analyser: query answer
=========================  ===================  ======================================

What they emit (after the MSH, which is built as for ORU^R01 with the message type changed)::

    OUL^R22  PID|1||patient id||family^given||birth|sex     none for QC, or without patient id
             SPM|1|specimen id||type|||||||role             one SPECIMEN group per specimen id
             OBR|1|specimen id||test^text^L|||observed at    one ORDER group per OrderOut
             ORC|RE|specimen id                              (ORC follows OBR in OUL_R22)
             OBX|1|NM|code^text^L||value|... / NTE          exactly as in ORU^R01

    OML^O33  PID|1||patient id||family^given||birth|sex     when the orders name a patient
             SPM|1|specimen id||type|||||||P|||||||collected at
             ORC|NW|placer                                   one ORDER group per test
             TQ1|1||||||||R                                  TQ1-9 priority
             OBR|1|placer||test^^L|||collected at

    ORM^O01  PID (as above), then per test ORC|NW|placer|specimen id||||^^^^^R
             OBR|1|placer|specimen id|test^^L|R||collected at||||||||type
             (no SPM in ORM_O01: the specimen id rides in ORC-3/OBR-3, the type in OBR-15)

    QBP^Q11  QPD|WOS^Work Order Step^IHE_LABTF|query tag|specimen id
             RCP|I||R^real time^HL70394

    RSP^K11  MSA|AA|query control id
             QAK|query tag|OK or NF|WOS^Work Order Step^IHE_LABTF|hits
             QPD (the query's, re-encoded), then the orders as in OML^O33

    ORL^O34  MSA|code|OML control id|text                     MSH as in an ACK (swapped)
             ERR|||207^Application internal error^HL70357|E||||text   only on a refusal

Choices and limits:

- OUL_R22 and OML_O33 have at most one PATIENT group (HL7 v2.5.1 abstract message syntax),
  so each message carries one patient; the builders refuse more rather than emit a message
  an IHE receiver must reject.  SPM-4 (specimen type) is required in both.
- In IHE LAW proper, an RSP^K11 only acknowledges the query and the work order follows as
  a separate OML^O33 (LAB-28).  Many non-LAW analysers expect the orders in the response
  itself, so :func:`build_rsp_k11` appends them when given some; with ``orders=()`` it is
  the LAW-shaped answer.
- hl7apy (the structure checker) cannot validate every shape: it models ORM_O01's
  "OBR or RQD or RQ1..." choice as a sequence and so rejects any ORM, and it files a
  second ORC/OBR of one OML_O33 specimen under the prior-results group.  The tests
  validate what it can read and check the rest by reading it back (:func:`parse_orders`).
- ORC-1 is ``NW`` (new order) or ``CA`` (cancel request), from :attr:`OrderSpec.action`.
- Reading is not done here: :mod:`protocols.hl7.orders_in` reads orders, queries and
  query answers, :mod:`protocols.hl7.inbound` results.  :func:`parse_orders` only turns
  what ``orders_in`` read back into OrderSpecs, and :func:`read_answer` takes the MSA of
  any answer (ACK, ORL, RSP) through :func:`protocols.hl7.parse_answer`.

Nothing here does I/O or reads the clock: every time is passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.hl7 import _er7 as er7
from protocols.hl7._er7 import format_date
from protocols.hl7.ack import ACK_CODES, Ack, _MshReader, parse_answer
from protocols.hl7.orders_in import (
    InboundOrder,
    parse_order_message,
    parse_qbp_q11,
    parse_rsp_k11,
)
from protocols.hl7.oru import (
    _CHARSET,
    VERSION,
    MessageHeader,
    OrderOut,
    PatientOut,
    _msh,
    _msh_text,
    _obx,
    _pid,
    _render,
    _ts,
)

__all__ = [
    "QUERY_RESPONSE_STATUSES",
    "WORK_ORDER_STEP",
    "OrderPatient",
    "OrderSpec",
    "build_oml_o33",
    "build_orl",
    "build_orm_o01",
    "build_oul_r22",
    "build_qbp_q11",
    "build_rsp_k11",
    "parse_orders",
    "read_answer",
]

#: QPD-1 message query name of the IHE LAW work-order query (LAB-27).
WORK_ORDER_STEP = ("WOS", "Work Order Step", "IHE_LABTF")
#: QAK-2 query response status (HL7 table 0208): data found, no data, error, rejected.
QUERY_RESPONSE_STATUSES = frozenset({"OK", "NF", "AE", "AR"})

#: OrderSpec.action -> ORC-1 order control (HL7 table 0119).
_ORDER_CONTROL = {"N": "NW", "C": "CA"}
#: Priorities (HL7 table 0027): stat, ASAP, routine, pre-op, callback, timing critical.
_PRIORITIES = frozenset({"S", "A", "R", "P", "C", "T"})
#: SPM-11 specimen roles (HL7 table 0369) that belong to a patient; any other (Q control,
#: C calibrator, E electronic QC...) is not a patient's specimen and gets no PID.
_PATIENT_ROLES = frozenset({"", "P"})

_field = er7.field
_EMPTY = er7.field()


# --- orders --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrderPatient:
    """The patient an order is for (PID); ``sex`` is HL7 table 0001 (``F``, ``M``, ``U``...)."""

    patient_id: str
    family_name: str = ""
    given_name: str = ""
    birth_date: date | None = None
    sex: str = ""

    def __post_init__(self) -> None:
        """PID-3 (patient identifier list) is required."""
        if not self.patient_id:
            raise LocalProtocolError("an order's patient needs an id (PID-3)")


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderSpec:
    """Tests ordered on one specimen: one SPECIMEN group, one ORDER group per test.

    ``placer_number`` (ORC-2/OBR-2) defaults to the specimen id, the tube barcode most
    LIS use as placer order number.  ``priority`` is HL7 table 0027 (``R`` routine, ``S``
    stat...), ``action`` ``N`` (new, ORC-1 ``NW``) or ``C`` (cancel, ORC-1 ``CA``).
    ``collected_at`` (SPM-17, OBR-7) must be timezone-aware.  ``specimen_type`` is
    SPM-4 (HL7 table 0487: ``SER`` serum, ``BLD`` whole blood, ``UR`` urine...).
    """

    specimen_id: str
    tests: tuple[str, ...]
    placer_number: str = ""
    patient: OrderPatient | None = None
    priority: str = "R"
    action: str = "N"
    collected_at: datetime | None = None
    specimen_type: str = "SER"

    def __post_init__(self) -> None:
        """Check what the receiving analyser would reject."""
        if not self.specimen_id:
            raise LocalProtocolError("an order needs a specimen id")
        if not isinstance(self.tests, tuple) or not self.tests or not all(self.tests):
            raise LocalProtocolError(
                f"order {self.specimen_id!r}: tests must be a non-empty tuple of test codes"
            )
        if self.priority not in _PRIORITIES:
            raise LocalProtocolError(f"priority must be one of {sorted(_PRIORITIES)}")
        if self.action not in _ORDER_CONTROL:
            raise LocalProtocolError(f"action must be one of {sorted(_ORDER_CONTROL)}")
        if not self.specimen_type:
            raise LocalProtocolError(f"order {self.specimen_id!r}: SPM-4 specimen type is required")
        if self.collected_at is not None and self.collected_at.utcoffset() is None:
            raise LocalProtocolError(f"collected_at must be timezone-aware: {self.collected_at!r}")

    @property
    def placer(self) -> str:
        """ORC-2/OBR-2: ``placer_number``, else the specimen id."""
        return self.placer_number or self.specimen_id


# --- building: shared pieces -----------------------------------------------------------


def _trimmed(*components: str) -> tuple[str, ...]:
    """``components`` without trailing empty ones (no lone ``^`` for an empty name)."""
    parts = list(components)
    while parts and not parts[-1]:
        parts.pop()
    return tuple(parts)


def _order_pid(patient: OrderPatient) -> Any:
    birth = format_date(patient.birth_date) if patient.birth_date is not None else ""
    return er7.segment(
        "PID",
        _field("1"),
        _EMPTY,
        _field(patient.patient_id),  # 3
        _EMPTY,
        _field(*_trimmed(patient.family_name, patient.given_name)),  # 5
        _EMPTY,
        _field(birth),  # 7
        _field(patient.sex),  # 8
    )


def _one_patient(orders: Sequence[OrderSpec], kind: str) -> OrderPatient | None:
    """The single patient of ``orders`` (None when they name none); LocalProtocolError if mixed."""
    patients = {order.patient for order in orders}
    if len(patients) > 1:
        raise LocalProtocolError(
            f"an {kind} carries one patient: these orders name {len(patients)}; "
            "send one message per patient"
        )
    return patients.pop() if patients else None


def _order_body(orders: Sequence[OrderSpec]) -> list[Any]:
    """PID, then per specimen SPM and (ORC, TQ1, OBR) per test: OML_O33 from PATIENT on."""
    if not orders:
        raise LocalProtocolError("an order message needs at least one order")
    patient = _one_patient(orders, "order message")
    segments: list[Any] = [] if patient is None else [_order_pid(patient)]
    request = 0
    for specimen_number, order in enumerate(orders, start=1):
        segments.append(
            er7.segment(
                "SPM",
                _field(str(specimen_number)),
                _field(order.specimen_id),  # 2 specimen id (placer assigned)
                _EMPTY,
                _field(order.specimen_type),  # 4 (required)
                *(_EMPTY,) * 6,
                _field("P"),  # 11 specimen role: patient
                *(_EMPTY,) * 5,
                _ts(order.collected_at),  # 17 collection date/time (DR start)
            )
        )
        for test in order.tests:
            request += 1
            segments += [
                er7.segment("ORC", _field(_ORDER_CONTROL[order.action]), _field(order.placer)),
                er7.segment("TQ1", _field("1"), *(_EMPTY,) * 7, _field(order.priority)),  # 9
                er7.segment(
                    "OBR",
                    _field(str(request)),
                    _field(order.placer),  # 2 placer order number
                    _EMPTY,
                    _field(test, "", "L"),  # 4 universal service identifier
                    _EMPTY,
                    _EMPTY,
                    _ts(order.collected_at),  # 7 observation (collection) date/time
                ),
            ]
    return segments


# --- results: OUL^R22 ------------------------------------------------------------------


def _specimen_groups(orders: Iterable[OrderOut]) -> dict[str, list[OrderOut]]:
    """Orders grouped by specimen id, in order of first appearance."""
    groups: dict[str, list[OrderOut]] = {}
    for order in orders:
        groups.setdefault(order.specimen_id, []).append(order)
    return groups


def build_oul_r22(
    header: MessageHeader, patients: Sequence[PatientOut], *, specimen_role: str = ""
) -> bytes:
    """Encode results as one ``OUL^R22^OUL_R22`` (IHE LAW LAB-29, v2.5.1, UTF-8, CR-separated).

    ``patients`` holds exactly one patient (OUL_R22 has one PATIENT group); the observation
    content is the same as :func:`protocols.hl7.build_oru_r01`'s.  Orders are grouped by
    specimen id, one SPM each, whose SPM-4 is the first type its orders name (required).
    ``specimen_role`` goes to SPM-11 (HL7 table 0369): ``Q`` marks a QC specimen, which
    has no PID; nor has a patient without an id (PATIENT is optional, an empty PID-3 is not
    valid 2.5.1: the specimen ids identify the results).  Raises LocalProtocolError when the
    message cannot be built.
    """
    if len(patients) != 1:
        raise LocalProtocolError(
            f"an OUL^R22 carries exactly one patient, got {len(patients)}; "
            "send one message per patient"
        )
    patient = patients[0]
    e = er7.escape
    role = e(specimen_role)
    segments = [_msh_text(header, "OUL", "R22", "OUL_R22")]
    if specimen_role in _PATIENT_ROLES and patient.patient_id:
        segments.append(_pid(1, patient))
    order_number = 0
    for specimen_number, (specimen_id, orders) in enumerate(
        _specimen_groups(patient.orders).items(), start=1
    ):
        specimen_type = next((o.specimen_type for o in orders if o.specimen_type), "")
        if not specimen_type:
            raise LocalProtocolError(
                f"specimen {specimen_id!r}: OUL^R22 needs a specimen type (SPM-4)"
            )
        specimen = e(specimen_id)
        # 2 specimen id, 4 type, 11 role
        segments.append(
            f"SPM|{specimen_number}|{specimen}||{e(specimen_type)}|||||||{role}".rstrip("|")
        )
        for order in orders:
            order_number += 1
            test = f"{e(order.test_code)}^{e(order.test_text)}^L" if order.test_code else ""
            observed = er7.format_ts(order.observed_at) if order.observed_at is not None else ""
            segments.append(
                # 2 placer order number, 4 universal service identifier, 7 observed at
                f"OBR|{order_number}|{specimen}||{test}|||{observed}".rstrip("|")
            )
            segments.append(f"ORC|RE|{specimen}".rstrip("|"))  # ORC follows OBR in OUL_R22
            segments += [_obx(obs) for obs in order.results]
    return _render(segments)


# --- orders: OML^O33, ORM^O01 ---------------------------------------------------------


def build_oml_o33(header: MessageHeader, orders: Sequence[OrderSpec]) -> bytes:
    """Encode orders as one ``OML^O33^OML_O33`` (IHE LAW LAB-28, v2.5.1).

    Every order must name the same patient (or none).  Raises LocalProtocolError when
    there is nothing to send or the orders mix patients.
    """
    segments = [_msh(header, "OML", "O33", "OML_O33"), *_order_body(orders)]
    return er7.render(segments).encode("utf-8")


def build_orm_o01(header: MessageHeader, orders: Sequence[OrderSpec]) -> bytes:
    """Encode orders as one ``ORM^O01^ORM_O01`` (v2.5.1 syntax, the shape most LIS send).

    ORM_O01 has no SPM: the specimen id goes to ORC-3/OBR-3 (filler order number), its
    type to OBR-15, the priority to ORC-7.6 (quantity/timing) and OBR-5.  Same rules as
    :func:`build_oml_o33` otherwise.
    """
    if not orders:
        raise LocalProtocolError("an order message needs at least one order")
    patient = _one_patient(orders, "ORM^O01")
    segments: list[Any] = [_msh(header, "ORM", "O01", "ORM_O01")]
    if patient is not None:
        segments.append(_order_pid(patient))
    request = 0
    for order in orders:
        for test in order.tests:
            request += 1
            segments += [
                er7.segment(
                    "ORC",
                    _field(_ORDER_CONTROL[order.action]),
                    _field(order.placer),  # 2
                    _field(order.specimen_id),  # 3
                    *(_EMPTY,) * 3,
                    _field("", "", "", "", "", order.priority),  # 7 TQ, 6th component
                ),
                er7.segment(
                    "OBR",
                    _field(str(request)),
                    _field(order.placer),  # 2
                    _field(order.specimen_id),  # 3
                    _field(test, "", "L"),  # 4
                    _field(order.priority),  # 5
                    _EMPTY,
                    _ts(order.collected_at),  # 7
                    *(_EMPTY,) * 7,
                    _field(order.specimen_type),  # 15 specimen source
                ),
            ]
    return er7.render(segments).encode("utf-8")


# --- queries: QBP^Q11 / RSP^K11 -------------------------------------------------------


def build_qbp_q11(header: MessageHeader, query_tag: str, specimen_id: str) -> bytes:
    """Encode an IHE LAW work-order query (LAB-27) for one specimen.

    QPD-1 is ``WOS^Work Order Step^IHE_LABTF``, QPD-2 ``query_tag`` (echoed by the
    answer's QAK-1), QPD-3 the specimen (container) id; RCP asks for an immediate,
    real-time answer.
    """
    if not query_tag:
        raise LocalProtocolError("a query needs a tag (QPD-2)")
    if not specimen_id:
        raise LocalProtocolError("a work-order query needs a specimen id (QPD-3)")
    segments = [
        _msh(header, "QBP", "Q11", "QBP_Q11"),
        er7.segment("QPD", _field(*WORK_ORDER_STEP), _field(query_tag), _field(specimen_id)),
        er7.segment("RCP", _field("I"), _EMPTY, _field("R", "real time", "HL70394")),
    ]
    return er7.render(segments).encode("utf-8")


def build_rsp_k11(
    query: bytes,
    orders: Sequence[OrderSpec],
    control_id: str,
    now: datetime,
    *,
    status: str = "OK",
) -> bytes:
    """Answer the QBP^Q11 ``query`` with an ``RSP^K11^RSP_K11``.

    The query is read by :func:`protocols.hl7.orders_in.parse_qbp_q11`.  MSH swaps its
    sender and receiver; MSA-1 is ``AA`` and MSA-2 the query's MSH-10; QAK echoes the
    tag and query name with ``status`` (``OK`` data follows, ``NF`` nothing found,
    ``AE``/``AR``) and the hit count; QPD repeats the query's name, tag and specimen ids
    (QPD-3, one repetition each; ``WOS`` is written out in full).  Then
    ``orders`` as in an OML^O33 (none for an IHE LAW answer, whose orders follow in a
    LAB-28 OML^O33).  Raises RemoteProtocolError if ``query`` is not a QBP^Q11, and
    LocalProtocolError for a bad status, orders with ``NF``, or a naive ``now``.
    """
    if status not in QUERY_RESPONSE_STATUSES:
        raise LocalProtocolError(f"status must be one of {sorted(QUERY_RESPONSE_STATUSES)}")
    if status != "OK" and orders:
        raise LocalProtocolError(f"a {status} answer carries no orders")
    if not control_id:
        raise LocalProtocolError("the answer needs a message control id (MSH-10)")
    asked = parse_qbp_q11(query)
    original = _MshReader(query)
    msh = er7.msh_segment(
        _field(*original.components(5)),  # 3: whom the query was sent to
        _field(*original.components(6)),
        _field(*original.components(3)),  # 5: who asked
        _field(*original.components(4)),
        _ts(now),  # 7 (LocalProtocolError when naive)
        _EMPTY,
        _field("RSP", "K11", "RSP_K11"),  # 9
        _field(control_id),
        _field(*(original.components(11) or ["P"])),
        _field(VERSION),
        *(_EMPTY,) * 5,
        _field(_CHARSET),  # 18
    )
    # QPD-1 is read as its identifier (WOS); the answer carries the full LAW name for it.
    query_name = (
        WORK_ORDER_STEP if asked.query_name in ("", WORK_ORDER_STEP[0]) else (asked.query_name,)
    )
    hits = sum(len(o.tests) for o in orders) if status == "OK" else 0
    segments = [
        msh,
        er7.segment("MSA", _field("AA"), _field(asked.control_id)),
        er7.segment(
            "QAK",
            _field(asked.query_tag),
            _field(status),
            _field(*query_name),
            _field(str(hits)),  # 4 hit count total
        ),
        er7.segment(
            "QPD", _field(*query_name), _field(asked.query_tag), er7.repeated(asked.specimen_ids)
        ),
    ]
    if orders:
        segments += _order_body(orders)
    return er7.render(segments).encode("utf-8")


# --- reading orders back: an adapter over protocols.hl7.orders_in ------------------------


def _order_spec(order: InboundOrder) -> OrderSpec | None:
    """The OrderSpec for one order read by :mod:`protocols.hl7.orders_in`.

    None for an item that is no work-order change (ORC-1 ``SC``, ``OK``...: action ``""``).
    RemoteProtocolError for what an OrderSpec cannot hold: a change (``XO``/``RP``/``RO``,
    action ``"A"``), or an order we would refuse to send.
    """
    if not order.action:
        return None
    if order.action not in _ORDER_CONTROL:
        raise RemoteProtocolError(
            f"order {order.specimen_id!r}: ORC-1 {order.order_control!r} is not NW or CA"
        )
    patient = order.patient
    try:
        return OrderSpec(
            specimen_id=order.specimen_id,
            tests=order.tests,
            placer_number=(
                "" if order.placer_order_number == order.specimen_id else order.placer_order_number
            ),
            patient=(
                OrderPatient(
                    patient.patient_id,
                    patient.family_name,
                    patient.given_name,
                    patient.birth_date,
                    patient.sex,
                )
                if patient.patient_id
                else None
            ),
            priority=order.priority,
            action=order.action,
            collected_at=order.collected_at,
            specimen_type=order.specimen_type or "SER",
        )
    except LocalProtocolError as exc:  # what we would refuse to send, we refuse to read
        raise RemoteProtocolError(f"unusable order: {exc}") from exc


def parse_orders(message: bytes, *, default_encoding: str = "latin-1") -> tuple[OrderSpec, ...]:
    """The orders of an OML^O33, ORM^O01 or RSP^K11 as OrderSpecs: one per specimen and action.

    A thin adapter: :func:`protocols.hl7.orders_in.parse_order_message` (or
    :func:`~protocols.hl7.orders_in.parse_rsp_k11` for an RSP^K11) reads the message, with
    its rules (items merged per patient, specimen and action; priority ``S`` for stat or
    ASAP, else ``R``); each :class:`~protocols.hl7.orders_in.InboundOrder` becomes an
    OrderSpec.  Items that change no work order are skipped; a missing specimen type reads
    as ``SER``.  What :func:`build_oml_o33` writes reads back equal.  Raises
    RemoteProtocolError for another message type, or an order an OrderSpec cannot hold.
    """
    msh = _MshReader(message)
    if (msh.get(9).strip().upper(), msh.get(9, 2).strip().upper()) == ("RSP", "K11"):
        read = parse_rsp_k11(message, default_encoding=default_encoding)
    else:
        read = parse_order_message(message, default_encoding=default_encoding)
    return tuple(spec for order in read.orders if (spec := _order_spec(order)) is not None)


# --- answers ---------------------------------------------------------------------------

#: The ORL that answers each OML trigger: (ORL trigger, ORL message structure).
_ORL_FOR = {"O21": ("O22", "ORL_O22"), "O33": ("O34", "ORL_O34"), "O35": ("O36", "ORL_O36")}


def build_orl(message: bytes, code: str, control_id: str, now: datetime, text: str = "") -> bytes:
    """Answer the order message ``message`` with an ORL (IHE LAW LAB-28: ``ORL^O34``).

    ``OML^O33`` is answered ``ORL^O34^ORL_O34``, ``OML^O21`` ``ORL^O22^ORL_O22`` and
    ``OML^O35`` ``ORL^O36^ORL_O36``.  The MSH is built as :func:`protocols.hl7.build_ack`
    builds it (sender and receiver swapped, MSH-11/12/18 copied, encoded in the original's
    character set); MSA-1 is ``code``, MSA-2 the OML's MSH-10, MSA-3 ``text``.  A refusal
    (any code but ``AA``/``CA``) adds an ERR: ERR-3 ``207`` (application internal error,
    HL7 table 0357), ERR-4 severity ``E``, ERR-8 ``text``.  The optional order echo of
    ORL_O34 (its RESPONSE group) is not sent.  Raises RemoteProtocolError when
    ``message`` is not an OML with one of those triggers, LocalProtocolError for an unknown
    code, an empty control id or a naive ``now``.
    """
    if code not in ACK_CODES:
        raise LocalProtocolError(f"acknowledgement code must be one of {sorted(ACK_CODES)}")
    if not control_id:
        raise LocalProtocolError("the answer needs a message control id (MSH-10)")
    original = _MshReader(message)
    kind, trigger = original.get(9).strip().upper(), original.get(9, 2).strip().upper()
    if kind != "OML" or trigger not in _ORL_FOR:
        raise RemoteProtocolError(
            f"an ORL answers OML^O21, OML^O33 or OML^O35, not {kind}^{trigger}"
        )
    answer_trigger, structure = _ORL_FOR[trigger]
    charset = original.components(18)[:1]
    msh = er7.msh_segment(
        _field(*original.components(5)),  # 3: whom the order was sent to
        _field(*original.components(6)),
        _field(*original.components(3)),  # 5: who sent it
        _field(*original.components(4)),
        _ts(now),  # 7 (LocalProtocolError when naive)
        _EMPTY,
        _field("ORL", answer_trigger, structure),  # 9
        _field(control_id),
        _field(*(original.components(11) or ["P"])),
        _field(*original.components(12)),
        *(_EMPTY,) * 5,
        _field(*charset),  # 18
    )
    segments = [msh, er7.segment("MSA", _field(code), _field(original.get(10)), _field(text))]
    if code not in ("AA", "CA"):
        segments.append(
            er7.segment(
                "ERR",
                _EMPTY,
                _EMPTY,
                _field("207", "Application internal error", "HL70357"),  # 3
                _field("E"),  # 4 severity
                *(_EMPTY,) * 3,
                _field(text),  # 8 user message
            )
        )
    codec = er7.codec_for(charset[0] if charset else "")
    return er7.render(segments).encode(codec, errors="replace")


def read_answer(message: bytes) -> Ack:
    """The acknowledgement in any answer: an ACK, or the MSA of an ORL^O34 or RSP^K11.

    An LAW receiver answers OML^O33 with ORL^O34 and QBP^Q11 with RSP^K11, not ACK; each
    carries the MSA a sender waits for.  This is :func:`protocols.hl7.parse_answer`, the
    one reading of MSA (:func:`protocols.hl7.parse_ack` is the same, limited to ACK).
    Raises RemoteProtocolError when there is no MSA or MSA-1 is no acknowledgement code.
    """
    return parse_answer(message)
