"""HL7 v2 over MLLP, sans-IO: framing, ORU^R01 results for the LIS, acknowledgements.

Use the package as a namespace::

    from protocols import hl7 as v2

    framer = v2.MllpFramer()
    framer.receive_data(chunk)
    while (payload := framer.next_message()) is not None:
        ack = v2.parse_ack(payload)

Parsing rides on python-hl7 (``import hl7`` inside this package is the library, not
this package: every import here is absolute); structure validation on hl7apy.
Nothing here does I/O, logs or reads the clock: times are passed in.
"""

from __future__ import annotations

from protocols.hl7.ack import (
    ACK_CODES,
    Ack,
    build_ack,
    message_control_id,
    parse_ack,
    parse_answer,
)
from protocols.hl7.inbound import (
    InboundObservation,
    InboundPatient,
    InboundResults,
    InboundSpecimen,
    parse_results_message,
)
from protocols.hl7.mllp import END_BLOCK, START_BLOCK, MllpFramer, mllp_frame
from protocols.hl7.orders_in import (
    InboundOrder,
    InboundOrders,
    InboundQuery,
    parse_order_message,
    parse_qbp_q11,
    parse_rsp_k11,
)
from protocols.hl7.oru import (
    MessageHeader,
    ObservationOut,
    OrderOut,
    ParsedObservation,
    ParsedOru,
    PatientOut,
    build_oru_r01,
    parse_oru,
)
from protocols.hl7.outbound import (
    OrderPatient,
    OrderSpec,
    build_oml_o33,
    build_orl,
    build_orm_o01,
    build_oul_r22,
    build_qbp_q11,
    build_rsp_k11,
    read_answer,
)
from protocols.hl7.validation import validate_message

__all__ = [
    "ACK_CODES",
    "END_BLOCK",
    "START_BLOCK",
    "Ack",
    "InboundObservation",
    "InboundOrder",
    "InboundOrders",
    "InboundPatient",
    "InboundQuery",
    "InboundResults",
    "InboundSpecimen",
    "MessageHeader",
    "MllpFramer",
    "ObservationOut",
    "OrderOut",
    "OrderPatient",
    "OrderSpec",
    "ParsedObservation",
    "ParsedOru",
    "PatientOut",
    "build_ack",
    "build_oml_o33",
    "build_orl",
    "build_orm_o01",
    "build_oru_r01",
    "build_oul_r22",
    "build_qbp_q11",
    "build_rsp_k11",
    "message_control_id",
    "mllp_frame",
    "parse_ack",
    "parse_answer",
    "parse_order_message",
    "parse_oru",
    "parse_qbp_q11",
    "parse_results_message",
    "parse_rsp_k11",
    "read_answer",
    "validate_message",
]
