"""Work orders and work-order queries received over HL7: ORM^O01, OML^O33, QBP^Q11, RSP^K11.

- :func:`parse_order_message`: the LIS's orders, ``ORM^O01`` (v2.3-2.5) or IHE LAW
  LAB-28 ``OML^O33`` (v2.5.1);
- :func:`parse_qbp_q11`: an analyser's LAB-27 query for the work order of a specimen;
- :func:`parse_rsp_k11`: the LIS's LAB-27 answer, read into the same orders.

Structures read (other segments are skipped)::

    ORM^O01: MSH [PID [PV1]] {ORC [OBR] [NTE]}
    OML^O33: MSH [PID [PV1]] {SPM [OBX] [SAC] {ORC [TQ1] [OBR]}}
    RSP^K11: MSH MSA [ERR] QAK QPD [PID [PV1]] {SPM [SAC] {ORC [TQ1] [OBR]}}

An ORC opens an order item and the OBR after it completes it; an OBR with no ORC
before it opens its own item.  Items with the same patient, specimen and action are
merged into one :class:`InboundOrder` (tests in message order, no duplicates), so an
LIS that sends one OBR per test and one that repeats OBR-4 give the same result.

Field choices (documented because LIS practice varies):

- specimen id: SPM-2 (placer id, else filler id) or SAC-3 when an SPM/SAC precedes the
  order, else OBR-3 (filler order number: where ORM-era LIS put the tube's barcode),
  OBR-2, ORC-3 — the first not empty.  An order item without one is unusable (an
  analyser finds work by specimen id): RemoteProtocolError;
- placer order number: ORC-2, else OBR-2;
- tests: OBR-4.1 of every OBR-4 repetition (text in :attr:`InboundOrder.test_names`);
- priority: ``"S"`` when TQ1-9, OBR-27.6, ORC-7.6 (v2.3-2.4 TQ) or OBR-5 says ``S``
  (stat) or ``A`` (ASAP) for any item of the order, else ``"R"``;
- action (the E1394 O-12 vocabulary drivers already use): ORC-1 ``NW`` → ``"N"``
  (new); ``CA``/``DC``/``OC`` → ``"C"`` (cancel, discontinue, cancelled);
  ``XO``/``RP``/``RO`` → ``"A"`` (change, replace, replacement: an analyser merges the
  tests into the specimen's work order; a test dropped by the change needs its own CA);
  no ORC → ``"N"``.  Any other ORC-1 (``SC`` status changed, ``OK``, ``RE``...) is not a
  work-order change: its items get action ``""`` and the caller skips them.
  :attr:`InboundOrder.order_control` keeps ORC-1 as sent;
- collected_at: SPM-17.1, else OBR-7;
- specimen type: SPM-4.1, else OBR-15.1 (specimen source, where v2.3-2.4 ORM^O01 carry
  it: ``SER``, or ``SER&Serum&HL70070`` read as ``SER``), else empty.

Like :mod:`protocols.hl7.inbound`, on which it builds (decoding, PID), it raises
RemoteProtocolError with the reason for anything unusable; every parser takes the same
keyword ``default_encoding`` for messages that declare no MSH-18 and are not UTF-8.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from protocols.errors import RemoteProtocolError
from protocols.hl7._er7 import ParsedMessage
from protocols.hl7.inbound import (
    InboundPatient,
    decode_inbound,
    first_id,
    header_fields,
    message_type,
    read_patient,
    repetitions,
    spm_id,
    timestamp,
)

__all__ = [
    "ORDER_ACTIONS",
    "InboundOrder",
    "InboundOrders",
    "InboundQuery",
    "parse_order_message",
    "parse_qbp_q11",
    "parse_rsp_k11",
]

#: ORC-1 order control code (HL7 table 0119) -> action ("N" new, "C" cancel, "A" add).
ORDER_ACTIONS = {
    "NW": "N",
    "CA": "C",
    "DC": "C",
    "OC": "C",
    "XO": "A",
    "RP": "A",
    "RO": "A",
}
_URGENT = frozenset({"S", "A", "STAT", "ASAP"})
_ORDER_TYPES = frozenset({("ORM", "O01"), ("ORM", ""), ("OML", "O33"), ("OML", "O21")})


@dataclass(frozen=True, slots=True)
class InboundOrder:
    """The tests asked for on one specimen of one patient, with one action.

    ``action`` is ``"N"``, ``"A"``, ``"C"`` or ``""`` (not a work-order change: skip);
    ``order_control`` ORC-1 as sent; ``priority`` ``"S"`` or ``"R"``;
    ``placer_order_number`` the first ORC-2 (else OBR-2) of the merged items and
    ``placer_order_numbers`` all of them.  See the module docstring for each source.
    """

    specimen_id: str
    placer_order_number: str
    tests: tuple[str, ...]
    priority: str
    action: str
    patient: InboundPatient
    collected_at: datetime | None = None
    order_control: str = ""
    test_names: tuple[str, ...] = ()
    placer_order_numbers: tuple[str, ...] = ()
    specimen_type: str = ""


@dataclass(frozen=True, slots=True)
class InboundOrders:
    """An order message (``ORM^O01``, ``OML^O33``) or a query response (``RSP^K11``).

    Header fields as in :class:`protocols.hl7.inbound.InboundResults`.  For an
    ``RSP^K11`` only: ``query_tag`` (QAK-1, else QPD-2: the tag of the QBP answered),
    ``query_status`` (QAK-2: ``OK`` data found, ``NF`` no data found, ``AE``/``AR``),
    ``query_name`` (QPD-1.1), ``ack_code`` (MSA-1) and ``acknowledged_control_id``
    (MSA-2).  ``orders`` is empty when the LIS found nothing.
    """

    message_type: str
    trigger: str
    control_id: str
    sending_application: str
    sending_facility: str
    version: str
    charset: str
    orders: tuple[InboundOrder, ...]
    receiving_application: str = ""
    receiving_facility: str = ""
    created_at: datetime | None = None
    processing_id: str = ""
    codec: str = "utf-8"
    query_tag: str = ""
    query_status: str = ""
    query_name: str = ""
    ack_code: str = ""
    acknowledged_control_id: str = ""


@dataclass(frozen=True, slots=True)
class InboundQuery:
    """An analyser's LAB-27 ``QBP^Q11``: which work order for these specimens?

    ``query_name`` is QPD-1.1 (``WOS`` in IHE LAW), ``query_tag`` QPD-2 (to echo in
    QAK-1), ``specimen_ids`` QPD-3.1 of every repetition then SPM-2 of any SPM, without
    duplicates; ``response_priority`` RCP-1 (``I`` immediate, ``D`` deferred).
    Header fields as in :class:`protocols.hl7.inbound.InboundResults`.
    """

    message_type: str
    trigger: str
    control_id: str
    sending_application: str
    sending_facility: str
    version: str
    charset: str
    query_name: str
    query_tag: str
    specimen_ids: tuple[str, ...]
    response_priority: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    created_at: datetime | None = None
    processing_id: str = ""
    codec: str = "utf-8"


# --- reading orders ------------------------------------------------------------------


@dataclass(slots=True)
class _Item:
    """One ORC (+ OBR) being read."""

    patient: InboundPatient
    patient_number: int
    specimen: tuple[str, str, datetime | None]  # SPM/SAC id, SPM-4 type, SPM-17 time
    order_control: str = ""
    orc_ids: tuple[str, str] = ("", "")
    obr_ids: tuple[str, str] = ("", "")
    has_obr: bool = False
    tests: list[tuple[str, str]] = field(default_factory=list)
    urgent: bool = False
    obr_time: datetime | None = None
    obr_specimen_type: str = ""  # OBR-15.1 specimen source (no SPM before ORM^O01 items)

    def specimen_id(self) -> str:
        return first_id(self.specimen[0], self.obr_ids[1], self.obr_ids[0], self.orc_ids[1])

    def action(self) -> str:
        if not self.order_control:
            return "N"
        return ORDER_ACTIONS.get(self.order_control, "")


def _specimen_type(members: list[_Item]) -> str:
    """SPM-4 of the first merged item that has one, else the first OBR-15, else empty."""
    kinds = [m.specimen[1] for m in members] + [m.obr_specimen_type for m in members]
    return next((kind for kind in kinds if kind), "")


def _urgent(*codes: str) -> bool:
    return any(code.strip().upper() in _URGENT for code in codes)


def _read_orders(msg: ParsedMessage) -> tuple[InboundOrder, ...]:
    """Every order item of ``msg``, merged per patient, specimen and action."""
    items: list[_Item] = []
    patient, patient_number = InboundPatient(), 0
    specimen: tuple[str, str, datetime | None] = ("", "", None)
    item: _Item | None = None

    for segment in msg.segments[1:]:
        name = msg.name(segment).upper()
        if name == "PID":
            patient, patient_number = read_patient(msg, segment), patient_number + 1
            specimen, item = ("", "", None), None
        elif name == "SPM":
            specimen = (spm_id(msg, segment), msg.get(segment, 4), timestamp(msg, segment, 17))
            item = None
        elif name == "SAC" and not specimen[0]:
            specimen = (msg.get(segment, 3), specimen[1], specimen[2])
        elif name == "ORC":
            item = _Item(patient, patient_number, specimen)
            item.order_control = msg.get(segment, 1).strip().upper()
            item.orc_ids = (msg.get(segment, 2), msg.get(segment, 3))
            item.urgent = _urgent(msg.get(segment, 7, 6))
            items.append(item)
        elif name == "TQ1" and item is not None:
            item.urgent = item.urgent or _urgent(msg.get(segment, 9))
        elif name == "OBR":
            if item is None or item.has_obr:
                item = _Item(patient, patient_number, specimen)
                items.append(item)
            item.has_obr = True
            item.obr_ids = (msg.get(segment, 2), msg.get(segment, 3))
            count = msg.repetition_count(segment, 4)
            codes = repetitions(msg, segment, 4)
            names = [msg.get(segment, 4, 2, repetition=r) for r in range(1, count + 1)]
            item.tests.extend((c, n) for c, n in zip(codes, names, strict=True) if c or n)
            item.urgent = item.urgent or _urgent(msg.get(segment, 5), msg.get(segment, 27, 6))
            item.obr_time = timestamp(msg, segment, 7)
            item.obr_specimen_type = msg.get(segment, 15).strip()

    merged: dict[tuple[int, str, str], list[_Item]] = {}
    for one in items:
        specimen_id = one.specimen_id()
        if not specimen_id:
            placer = first_id(*one.orc_ids[:1], one.obr_ids[0])
            raise RemoteProtocolError(
                f"order {placer or '(no placer number)'} names no specimen "
                "(SPM-2, SAC-3, OBR-3, OBR-2 and ORC-3 are empty)"
            )
        merged.setdefault((one.patient_number, specimen_id, one.action()), []).append(one)

    orders = []
    for (_, specimen_id, action), members in merged.items():
        tests: dict[str, str] = {}
        for member in members:
            for code, name in member.tests:
                tests.setdefault(code, name)
        placers = tuple(
            dict.fromkeys(p for m in members if (p := first_id(m.orc_ids[0], m.obr_ids[0])))
        )
        orders.append(
            InboundOrder(
                specimen_id=specimen_id,
                placer_order_number=placers[0] if placers else "",
                placer_order_numbers=placers,
                tests=tuple(tests),
                test_names=tuple(tests.values()),
                priority="S" if any(m.urgent for m in members) else "R",
                action=action,
                order_control=members[0].order_control,
                patient=members[0].patient,
                collected_at=next(
                    (t for m in members for t in (m.specimen[2], m.obr_time) if t is not None),
                    None,
                ),
                specimen_type=_specimen_type(members),
            )
        )
    return tuple(orders)


def parse_order_message(message: bytes, *, default_encoding: str = "latin-1") -> InboundOrders:
    """Read an LIS's ``ORM^O01`` or ``OML^O33`` into orders (see the module docstring).

    Raises RemoteProtocolError, with the reason, when the bytes are not an HL7 message,
    not an order message, hold no order, or an order names no specimen.
    """
    msg, charset = decode_inbound(message, default_encoding=default_encoding)
    kind, trigger = message_type(msg)
    if (kind, trigger) not in _ORDER_TYPES:
        raise RemoteProtocolError(
            f"not an order message (ORM^O01 or OML^O33): MSH-9 is {kind}^{trigger}"
        )
    header = header_fields(msg, charset)
    orders = _read_orders(msg)
    if not orders:
        raise RemoteProtocolError(f"{kind}^{trigger} holds no order (no ORC or OBR segment)")
    return InboundOrders(orders=orders, **header)


def _first_segment(msg: ParsedMessage, name: str) -> Any | None:
    return next((s for s in msg.segments if msg.name(s).upper() == name), None)


def parse_qbp_q11(message: bytes, *, default_encoding: str = "latin-1") -> InboundQuery:
    """Read an analyser's LAB-27 ``QBP^Q11`` query for work orders.

    Raises RemoteProtocolError when the bytes are not a ``QBP^Q11``, have no QPD, or
    name no specimen (QPD-3 and SPM-2 empty).
    """
    msg, charset = decode_inbound(message, default_encoding=default_encoding)
    kind, trigger = message_type(msg)
    if (kind, trigger) != ("QBP", "Q11"):
        raise RemoteProtocolError(f"not a QBP^Q11 query: MSH-9 is {kind}^{trigger}")
    header = header_fields(msg, charset)
    qpd = _first_segment(msg, "QPD")
    if qpd is None:
        raise RemoteProtocolError("QBP^Q11 without a QPD segment")
    ids = [i.strip() for i in repetitions(msg, qpd, 3)]
    ids += [spm_id(msg, s).strip() for s in msg.segments if msg.name(s).upper() == "SPM"]
    specimen_ids = tuple(dict.fromkeys(i for i in ids if i))
    if not specimen_ids:
        raise RemoteProtocolError("QBP^Q11 names no specimen (QPD-3 and SPM-2 are empty)")
    rcp = _first_segment(msg, "RCP")
    return InboundQuery(
        query_name=msg.get(qpd, 1),
        query_tag=msg.get(qpd, 2),
        specimen_ids=specimen_ids,
        response_priority=msg.get(rcp, 1) if rcp is not None else "",
        **header,
    )


def parse_rsp_k11(message: bytes, *, default_encoding: str = "latin-1") -> InboundOrders:
    """Read the LIS's LAB-27 ``RSP^K11`` answer: query status and the orders found.

    Raises RemoteProtocolError when the bytes are not an ``RSP^K11``, lack QAK, or an
    order in it names no specimen.  ``NF`` (no data found) gives no orders.
    """
    msg, charset = decode_inbound(message, default_encoding=default_encoding)
    kind, trigger = message_type(msg)
    if (kind, trigger) != ("RSP", "K11"):
        raise RemoteProtocolError(f"not an RSP^K11 response: MSH-9 is {kind}^{trigger}")
    header = header_fields(msg, charset)
    qak = _first_segment(msg, "QAK")
    if qak is None:
        raise RemoteProtocolError("RSP^K11 without a QAK segment (query status unknown)")
    qpd = _first_segment(msg, "QPD")
    msa = _first_segment(msg, "MSA")
    return InboundOrders(
        orders=_read_orders(msg),
        query_tag=msg.get(qak, 1) or (msg.get(qpd, 2) if qpd is not None else ""),
        query_status=msg.get(qak, 2).strip().upper(),
        query_name=msg.get(qpd, 1) if qpd is not None else msg.get(qak, 3),
        ack_code=msg.get(msa, 1) if msa is not None else "",
        acknowledged_control_id=msg.get(msa, 2) if msa is not None else "",
        **header,
    )
