"""What labgate writes to an analyser: order downloads and answers to its host queries, and
the reading of those queries. Used through `ProfileDriver`'s methods.

Messages are E1394 text for the link core to frame::

    H|\\^&|||<sender>|||||<receiver>||P|LIS2-A2|<now>
    P|1||<patient id>|||<family>^<given>||<birth date>|<sex>
    O|1|<specimen>||^^^<test>\\^^^<test>|<priority>||<collected>||||<action>||||<descriptor>
        ||||||||||<O-26: O for a download, Q for a query answer>
    L|1|N

with one P and one O per order, places and formats from the profile (`patient`, `test_id.
order_template`, `orders`). Times are the gateway's local time, as analysers expect.

The answer to a query about specimens labgate holds no order for is ``H`` then
``L|1|I``: LIS2-A2's termination code for "no information available from the last query".
That letter comes from general knowledge of LIS2-A2 and is not verified against the standard
text (PROTOCOLS.md §2.2 lists only N and F as seen); a profile can change it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from drivers.base import DriverError
from drivers.models import Order, Query
from drivers.profile import FieldRef
from protocols import astm
from protocols.errors import LocalProtocolError

if TYPE_CHECKING:
    from drivers.engine import ProfileDriver

__all__ = ["no_order_message", "order_message", "queries"]


def _astm_time(moment: datetime) -> str:
    local = moment.astimezone() if moment.tzinfo is not None else moment
    return local.strftime("%Y%m%d%H%M%S")


class _RecordBuilder:
    """Fields of one record put in place by number and component, then built."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.fields: dict[int, astm.Field] = {}

    def put(self, field: int, text: str, component: int = 1) -> None:
        old = self.fields.get(field, ((),))
        components = list(old[0])
        components.extend([""] * (component - len(components)))
        components[component - 1] = text
        self.fields[field] = (tuple(components), *old[1:])

    def put_ref(self, ref: FieldRef, text: str) -> None:
        self.put(ref.field, text, ref.component or 1)

    def put_repeats(self, field: int, repeats: Sequence[Sequence[str]]) -> None:
        self.fields[field] = tuple(tuple(rep) for rep in repeats) or (("",),)

    def build(self) -> astm.Record:
        last = max(self.fields, default=1)
        fields: list[astm.Field] = [((self.kind,),)]
        for n in range(2, last + 1):
            field = self.fields.get(n, (("",),))
            fields.append(tuple(rep if rep else ("",) for rep in field))
        return astm.Record(self.kind, tuple(fields))


class _Writer:
    def __init__(self, driver: ProfileDriver) -> None:
        self.driver = driver
        self.profile = driver.profile
        self.encoding = driver.profile.encoding
        self.delimiters = astm.Delimiters(*driver.profile.orders.delimiters)

    def text(self, value: str) -> str:
        """Free text (names): CR/LF become spaces, characters the encoding lacks become ?."""
        flat = value.replace("\r", " ").replace("\n", " ")
        return flat.encode(self.encoding, "replace").decode(self.encoding)

    def identifier(self, value: str, what: str) -> str:
        """Ids and codes must arrive exactly as given, or not at all."""
        if self.text(value) != value:
            raise DriverError(
                f"{what} {value!r} cannot be sent in {self.encoding} (line break or a "
                "character the encoding lacks)"
            )
        return value

    def header(self, sender: str, receiver: str, now: datetime) -> astm.Record:
        orders = self.profile.orders
        h = _RecordBuilder("H")
        h.put(2, self.delimiters.definition)
        h.put(5, self.text(sender))
        h.put(10, self.text(receiver))
        h.put(12, orders.processing_id)
        h.put(13, orders.version)
        h.put(14, _astm_time(now))
        return h.build()

    def message(self, records: list[astm.Record]) -> bytes:
        try:
            return astm.encode_message(astm.Message(tuple(records), self.delimiters), self.encoding)
        except LocalProtocolError as exc:  # pragma: no cover - text() and identifier() guard
            raise DriverError(f"cannot write the message: {exc}") from exc

    def order_records(self, seq: int, order: Order, report_type: str) -> list[astm.Record]:
        rules = self.profile.patient
        patient = order.patient
        p = _RecordBuilder("P")
        p.put(2, str(seq))
        p.put_ref(rules.id[0], self.text(patient.patient_id))
        p.put_ref(rules.family_name, self.text(patient.family_name))
        p.put_ref(rules.given_name, self.text(patient.given_name))
        if patient.birth_date is not None:
            p.put_ref(rules.birth_date, patient.birth_date.strftime("%Y%m%d"))
        p.put_ref(rules.sex, self.text(patient.sex))

        orders = self.profile.orders
        specimen = self.identifier(order.specimen_id, "specimen id")
        tests = []
        for lis_code in order.tests:
            code = self.identifier(self.driver.to_analyser_code(lis_code), "test code")
            tests.append(
                [part.replace("{code}", code) for part in self.profile.test_id.order_template]
            )
        o = _RecordBuilder("O")
        o.put(2, "1")
        o.fields[3] = (
            tuple(part.replace("{specimen}", specimen) for part in orders.specimen_template),
        )
        o.put_repeats(5, tests)
        o.put(6, self.text(order.priority))
        if order.collected_at is not None:
            o.put(8, _astm_time(order.collected_at))
        o.put(12, self.text(order.action))
        if orders.specimen_descriptor:
            o.put(16, orders.specimen_descriptor)
        o.put(26, report_type)
        return [p.build(), o.build()]


def order_message(
    driver: ProfileDriver,
    orders: Sequence[Order],
    *,
    sender: str,
    receiver: str,
    now: datetime,
    query_answer: bool = False,
) -> bytes:
    """H, a P and an O per order, L: `ProfileDriver.build_order_message`."""
    writer = _Writer(driver)
    rules = driver.profile.orders
    report_type = rules.report_type_query if query_answer else rules.report_type_order
    records = [writer.header(sender, receiver, now)]
    for seq, order in enumerate(orders, start=1):
        records.extend(writer.order_records(seq, order, report_type))
    records.append(astm.Record("L", ((("L",),), (("1",),), (("N",),))))
    return writer.message(records)


def no_order_message(
    driver: ProfileDriver, query: Query, *, sender: str, receiver: str, now: datetime
) -> bytes:
    """H and L with the "no information" termination code: `build_no_order_message`."""
    writer = _Writer(driver)
    code = driver.profile.orders.no_order_termination_code
    trailer = astm.Record("L", ((("L",),), (("1",),), ((code,),)))
    return writer.message([writer.header(sender, receiver, now), trailer])


def queries(driver: ProfileDriver, message: astm.Message) -> list[Query]:
    """The Q records of `message`: specimen ids from the Q-3 starting range (one per repeat,
    component per profile), tests from Q-5 (``ALL`` or nothing = every test)."""
    found: list[Query] = []
    component = driver.profile.orders.query_specimen_component
    for record in message.records:
        if record.type.strip().upper() != "Q":
            continue
        specimens: list[str] = []
        for repeat in record.repeats(3):
            parts = [c.strip() for c in repeat]
            specimen = parts[component - 1] if component <= len(parts) else ""
            specimen = specimen or next((c for c in parts if c), "")
            if specimen and specimen.upper() != "ALL" and specimen not in specimens:
                specimens.append(specimen)
        tests: list[str] = []
        for repeat in record.repeats(5):
            code = driver.test_code(repeat).code
            if code and code.upper() != "ALL" and code not in tests:
                tests.append(code)
        text = record.field(2).strip()
        sequence = int(text) if text.isascii() and text.isdigit() and len(text) < 10 else 1
        found.append(Query(tuple(specimens), tuple(tests), sequence))
    return found
