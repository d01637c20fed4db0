"""Property tests for orders: what build_oml_o33 / build_orm_o01 write, orders_in reads back equal
(specimen type included: SPM-4 in an OML, OBR-15 in an ORM), and any OBR-15 text is read as its
first component or refused with RemoteProtocolError only."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import hl7 as v2
from protocols.errors import RemoteProtocolError
from protocols.hl7.orders_in import parse_order_message
from protocols.hl7.outbound import (
    OrderPatient,
    OrderSpec,
    build_oml_o33,
    build_orm_o01,
    parse_orders,
)

# Identifiers as LIS write them: letters, digits and a few marks, HL7 delimiters included
# (they are escaped on the way out), no blanks at either end.
ID = st.text(
    st.sampled_from("ABCXYZ0189-_./|^~&\\é"),
    min_size=1,
    max_size=10,
).filter(lambda s: s == s.strip())
CODE = st.text(st.sampled_from("ABCDEFGHKLNPRSU0123456789"), min_size=1, max_size=6)
MOMENT = st.one_of(
    st.none(),
    st.builds(
        lambda d, z: d.replace(microsecond=0, tzinfo=z),
        st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2090, 1, 1)),
        st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(-timedelta(hours=5))]),
    ),
)
PATIENT = st.one_of(
    st.none(),
    st.builds(
        OrderPatient,
        ID,
        st.sampled_from(["", "MARTIN", "MÜLLER", "O^NEIL"]),
        st.sampled_from(["", "Anne", "JEAN|LUC"]),
        st.one_of(st.none(), st.dates(min_value=date(1900, 1, 1), max_value=date(2030, 1, 1))),
        st.sampled_from(["", "F", "M", "U"]),
    ),
)


@st.composite
def orders(draw: st.DrawFn) -> list[OrderSpec]:
    """1-3 orders of one patient (or none), on distinct specimens (items of one specimen
    and action are merged on reading, by design)."""
    patient = draw(PATIENT)
    specimens = draw(st.lists(ID, min_size=1, max_size=3, unique=True))
    return [
        OrderSpec(
            specimen_id=specimen,
            tests=tuple(draw(st.lists(CODE, min_size=1, max_size=3, unique=True))),
            placer_number=draw(st.one_of(st.just(""), ID.filter(lambda p, s=specimen: p != s))),
            patient=patient,
            priority=draw(st.sampled_from(["R", "S"])),
            action=draw(st.sampled_from(["N", "C"])),
            collected_at=draw(MOMENT),
            specimen_type=draw(CODE),
        )
        for specimen in specimens
    ]


def _header() -> v2.MessageHeader:
    return v2.MessageHeader("labgate", "LAB", "AN", "LAB", "P1", datetime(2025, 1, 1, tzinfo=UTC))


@given(orders())
def test_oml_o33_reads_back_equal(sent: list[OrderSpec]) -> None:
    assert parse_orders(build_oml_o33(_header(), sent)) == tuple(sent)


@given(orders())
def test_orm_o01_reads_back_equal_specimen_type_from_obr_15(sent: list[OrderSpec]) -> None:
    assert parse_orders(build_orm_o01(_header(), sent)) == tuple(sent)


OBR_15 = st.lists(
    st.one_of(
        st.sampled_from(["^", "&", "~", "\\", " ", "SER", "UR", "\\T\\"]), st.text(max_size=3)
    ),
    max_size=8,
).map("".join)


@settings(max_examples=300)
@given(OBR_15)
def test_any_obr_15_gives_its_first_component_or_a_remote_error(obr_15: str) -> None:
    raw = (
        "MSH|^~\\&|LIS||||20240105||ORM^O01|M1|P|2.3\rORC|NW|P1|S1\r"
        f"OBR|1|P1|S1|GLU|||||||||||{obr_15}"
    ).encode("utf-8", "surrogatepass")
    try:
        read = parse_order_message(raw)
    except RemoteProtocolError:
        return
    [order] = [o for o in read.orders if o.specimen_id == "S1"] or [None]
    if order is None:
        return
    first = obr_15
    for delimiter in ("\r", "\n", "|", "~", "^", "&"):  # segment, field, then inwards
        first = first.split(delimiter, 1)[0]
    if "\\" not in first:  # escapes are decoded: only plain text is compared as written
        assert order.specimen_type == first.strip()
