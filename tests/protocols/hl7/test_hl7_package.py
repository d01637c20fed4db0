"""The package's public surface, and that ``import hl7`` inside it is python-hl7."""

from __future__ import annotations

import importlib

import hl7 as python_hl7

import protocols.hl7 as v2

PUBLIC = {
    "ACK_CODES",
    "END_BLOCK",
    "START_BLOCK",
    "Ack",
    "MessageHeader",
    "MllpFramer",
    "ObservationOut",
    "OrderOut",
    "ParsedObservation",
    "ParsedOru",
    "PatientOut",
    "build_ack",
    "build_oru_r01",
    "message_control_id",
    "mllp_frame",
    "parse_ack",
    "parse_oru",
    "validate_message",
    # results from analysers, orders and queries (IHE LAW LAB-27/28/29)
    "InboundObservation",
    "InboundOrder",
    "InboundOrders",
    "InboundPatient",
    "InboundQuery",
    "InboundResults",
    "InboundSpecimen",
    "OrderPatient",
    "OrderSpec",
    "build_oml_o33",
    "build_orm_o01",
    "build_oul_r22",
    "build_qbp_q11",
    "build_rsp_k11",
    "parse_order_message",
    "parse_qbp_q11",
    "parse_results_message",
    "parse_rsp_k11",
    # answers of any type (ACK, ORL^O34, RSP^K11): one reading of MSA; ORL for an OML
    "build_orl",
    "parse_answer",
    "read_answer",
}


def test_exported_members() -> None:
    assert set(v2.__all__) == PUBLIC
    for name in v2.__all__:
        assert getattr(v2, name).__doc__ or name.isupper(), name


def test_import_hl7_inside_the_package_is_the_python_hl7_library() -> None:
    for module in ("_er7",):
        inner = importlib.import_module(f"protocols.hl7.{module}")
        assert inner.hl7 is python_hl7
    assert python_hl7.__name__ == "hl7"
    assert hasattr(python_hl7, "parse")
    assert v2.__name__ == "protocols.hl7"
