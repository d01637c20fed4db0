"""Property tests: whatever an analyser sends, a driver answers with reports or a DriverError
(never a crash that would drop the session and make the analyser resend the same message
forever); orders it writes read back the same."""

from __future__ import annotations

import string
from datetime import datetime

from hypothesis import given
from hypothesis import strategies as st

from drivers import registry
from drivers.base import DriverError
from drivers.engine import INTERNAL_ERROR
from drivers.models import Order, Patient
from protocols import astm

DRIVERS = st.sampled_from(registry.names()).map(registry.get)

_INTERESTING = [
    "",
    " ",
    "Q",
    "QR",
    "P",
    "F",
    "X",
    "W",
    "R",
    "N",
    "H",
    "HH",
    "A",
    "ALL",
    "-----",
    "  5.5 ",
    "< 1.20",
    "146",
    "  H ",
    "20240627135407",
    "18991230",
    "202402",
    "99999999999999",
    "1",
    "0",
    "-118",
    "Examine",
    "CTRL",
    "GLU",
    "685/",
    "/",
    "10^9/L",
    "PNG\\x\\y.PNG",
    "Blasts?",
    "SCAT_WDF",
    "1^MLT cntrl1",
    "٣",  # a non-ASCII digit
]
component = st.one_of(
    st.sampled_from(_INTERESTING),
    st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=10),
)
repeat = st.lists(component, min_size=1, max_size=6).map(tuple)
field = st.lists(repeat, min_size=1, max_size=2).map(tuple)
record_type = st.sampled_from([*"HPORCMQLS", "o", "r", "p", "Z", "", " R"])


@st.composite
def records(draw: st.DrawFn) -> astm.Record:
    kind = draw(record_type)
    fields = draw(st.lists(field, max_size=30))
    return astm.Record(kind, (((kind,),), *fields))


def _record(draw: st.DrawFn, kind: str, max_fields: int = 26) -> astm.Record:
    return astm.Record(kind, (((kind,),), *draw(st.lists(field, max_size=max_fields))))


@st.composite
def shuffled_messages(draw: st.DrawFn) -> astm.Message:
    """Records of any type in any order, with or without a header."""
    body = draw(st.lists(records(), max_size=8))
    if draw(st.booleans()):
        header = astm.Record("H", ((("H",),), (("\\^&",),), *draw(st.lists(field, max_size=14))))
        body.insert(0, header)
    return astm.Message(tuple(body))


@st.composite
def shaped_messages(draw: st.DrawFn) -> astm.Message:
    """H, then patients with orders with results, comments and M records: the usual shape with
    arbitrary fields, to reach deep into the engine and the hooks."""
    body = [_record(draw, "H", 14)]
    for _ in range(draw(st.integers(0, 2))):
        body.append(_record(draw, "P", 10))
        for _ in range(draw(st.integers(0, 2))):
            body.append(_record(draw, "O", 26))
            kinds = draw(st.lists(st.sampled_from("RRRCM"), max_size=4))
            body.extend(_record(draw, kind, 15) for kind in kinds)
    body.append(_record(draw, "L", 3))
    return astm.Message(tuple(body))


messages = st.one_of(shuffled_messages(), shaped_messages())


@given(DRIVERS, messages)
def test_any_message_gives_reports_or_a_driver_error(driver: object, message: astm.Message) -> None:
    assert hasattr(driver, "to_reports") and hasattr(driver, "parse_queries")
    try:
        reports = driver.to_reports(message, "analyser")
    except DriverError as exc:
        assert not str(exc).startswith(INTERNAL_ERROR), str(exc)
    else:
        for report in reports:
            assert report.specimen_id
            assert all(r.specimen_id == report.specimen_id for r in report.results)
            assert all(r.is_qc == report.is_qc for r in report.results)
    try:
        driver.parse_queries(message)
    except DriverError as exc:
        assert not str(exc).startswith(INTERNAL_ERROR), str(exc)


identifier = st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=12)
test_code = st.text(string.ascii_letters + string.digits + "#%", min_size=1, max_size=6)
orders = st.builds(
    Order,
    specimen_id=identifier,
    patient=st.builds(
        Patient,
        patient_id=st.text(max_size=10),
        family_name=st.text(max_size=10),
        given_name=st.text(max_size=10),
        sex=st.sampled_from(["", "F", "M", "U"]),
    ),
    tests=st.lists(test_code, min_size=1, max_size=4).map(tuple),
    priority=st.sampled_from(["R", "S", "A"]),
    action=st.sampled_from(["N", "A", "C"]),
)


@given(DRIVERS, st.lists(orders, min_size=1, max_size=3), st.booleans())
def test_orders_read_back_through_the_same_driver(
    driver: object, batch: list[Order], query_answer: bool
) -> None:
    assert hasattr(driver, "build_order_message")
    text = driver.build_order_message(
        batch,
        sender="LABGATE",
        receiver="AN",
        now=datetime(2024, 1, 2, 3, 4, 5),
        query_answer=query_answer,
    )
    message = astm.decode_message(text, driver.encoding)
    reports = driver.to_reports(message, "analyser")
    assert [r.specimen_id for r in reports] == [o.specimen_id for o in batch]
    assert [r.ordered_tests for r in reports] == [o.tests for o in batch]
