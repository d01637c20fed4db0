"""The LAB-28 order pusher's pieces: the message for an order and the meaning of an answer (no
I/O), the pusher's bookkeeping over a scripted link and a real SQLite store, its settings."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pydantic
import pytest

from drivers.models import Order, Patient
from middleware.config.settings import Hl7InstrumentSettings
from middleware.health import ConnectionHealth, Health
from middleware.sessions.hl7_orders import (
    Hl7OrderPusher,
    NoAnswer,
    PushOutcome,
    ResultsConnectionLink,
    build_order_message,
    is_answer,
    judge_answer,
    order_spec,
)
from middleware.store import Store
from protocols import hl7 as v2
from protocols.errors import LocalProtocolError
from protocols.hl7 import build_orl, message_control_id, parse_order_message

NOW = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
HEADER = v2.MessageHeader("labgate", "", "XN", "", "LGP1", NOW)
ORDER = Order("S1", Patient("P1", "DUPONT", "Marie"), ("GLU", "K"), priority="S")


# --- no I/O --------------------------------------------------------------------------------


def test_order_spec_keeps_what_hl7_carries() -> None:
    spec = order_spec(ORDER)
    assert (spec.specimen_id, spec.tests, spec.priority, spec.action) == (
        "S1",
        ("GLU", "K"),
        "S",
        "N",
    )
    assert spec.patient is not None and spec.patient.family_name == "DUPONT"
    odd = order_spec(Order("S2", Patient(), ("NA",), priority="X", action="C"))
    assert (odd.priority, odd.action, odd.patient) == ("R", "C", None)


@pytest.mark.parametrize(
    ("message_type", "shape"),
    [("OML^O33", b"|OML^O33^OML_O33|"), ("ORM^O01", b"|ORM^O01^ORM_O01|")],
)
def test_build_order_message(message_type: str, shape: bytes) -> None:
    message = build_order_message(ORDER, message_type, HEADER)  # type: ignore[arg-type]
    assert shape in message
    [read] = parse_order_message(message).orders
    assert (read.specimen_id, read.tests, read.order_control) == ("S1", ("GLU", "K"), "NW")
    cancel = build_order_message(Order("S1", Patient(), ("GLU",), action="C"), message_type, HEADER)  # type: ignore[arg-type]
    assert parse_order_message(cancel).orders[0].order_control == "CA"


def test_an_order_without_tests_cannot_be_built() -> None:
    with pytest.raises(LocalProtocolError, match="tests"):
        build_order_message(Order("S1", Patient(), ()), "OML^O33", HEADER)


def _oml() -> bytes:
    return build_order_message(ORDER, "OML^O33", HEADER)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (build_orl(_oml(), "AA", "A1", NOW), PushOutcome("sent", ack_code="AA")),
        (v2.build_ack(_oml(), "CA", "A1", NOW), PushOutcome("sent", ack_code="CA")),
        (
            build_orl(_oml(), "AE", "A1", NOW, "unknown test"),
            PushOutcome("refused", "AE: unknown test", "AE"),
        ),
        (
            v2.build_ack(_oml(), "AR", "A1", NOW),
            PushOutcome("refused", "AR: no reason given", "AR"),
        ),
    ],
)
def test_judge_answer(answer: bytes, expected: PushOutcome) -> None:
    assert judge_answer(answer, "LGP1") == expected


def test_an_answer_for_another_message_or_garbage_means_retry() -> None:
    other = judge_answer(build_orl(_oml(), "AA", "A1", NOW), "LGP2")
    assert (other.outcome, other.ack_code) == ("retry", "AA")
    assert "expected 'LGP2'" in other.reason
    assert judge_answer(b"garbage", "LGP1").outcome == "retry"
    assert judge_answer(_oml(), "LGP1").outcome == "retry"  # an OML has no MSA


@pytest.mark.parametrize(
    ("message", "answer"),
    [
        (b"MSH|^~\\&|A||||20250101||ACK^O01|1|P|2.5\rMSA|AA|1", True),
        (b"\x0b\nMSH|^~\\&|A||||20250101||ORL^O34^ORL_O34|1|P|2.5.1", True),
        (b"MSH#$%\\&#A####20250101##ORR$O02#1#P#2.3", True),
        (b"MSH|^~\\&|A||||20250101||OUL^R22|1|P|2.5.1\rSPM|1|S", False),
        (b"MSH|^~\\&|A||||20250101||QBP^Q11|1|P|2.5.1", False),
        (b"MSH|^~\\&|A", False),
        (b"garbage", False),
    ],
)
def test_is_answer(message: bytes, answer: bool) -> None:
    assert is_answer(message) is answer


# --- the pusher over a scripted link ---------------------------------------------------------


class ScriptedLink:
    """Answers each message as told: an ack code, "silent" (NoAnswer) or "garbage"."""

    def __init__(self, *script: str) -> None:
        self.script = list(script)
        self.sent: list[bytes] = []
        self.resets = 0
        self.before_answer = lambda: None

    async def exchange(self, message: bytes, control_id: str, timeout: float) -> bytes:
        assert message_control_id(message) == control_id
        self.sent.append(message)
        what = self.script.pop(0) if self.script else "AA"
        if what == "silent":
            raise NoAnswer(f"no answer within {timeout:g} s")
        if what == "garbage":
            return b"MSH|^~\\&|XN||||20260101||ORL^O34|9|P|2.5.1\r"
        self.before_answer()
        build = build_orl if b"|OML^" in message else v2.build_ack
        return build(message, what, "XN1", NOW, "refused" if what != "AA" else "")

    async def reset(self) -> None:
        self.resets += 1

    async def close(self) -> None:
        pass


@pytest.fixture(name="store")
def fixture_store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(f"sqlite:///{tmp_path / 'labgate.db'}")
    yield store
    store.close()


def _settings(**orders: object) -> Hl7InstrumentSettings:
    return Hl7InstrumentSettings.model_validate(
        {
            "name": "xn-hl7",
            "protocol": "hl7",
            "transport": {"type": "tcp-server", "port": 0},
            "orders": {"host": "127.0.0.1", "port": 5200, **orders},
        }
    )


def _pusher(store: Store, link: ScriptedLink, **orders: object) -> Hl7OrderPusher:
    health = Health()
    health.add(ConnectionHealth("xn-hl7", "hl7", "tcp-server", ""))
    return Hl7OrderPusher(_settings(**orders), store, health, link=link, rng=random.Random(1))


def _receive(store: Store, *orders: Order) -> None:
    store.apply_order_message("lis-orders", "m1", b"raw", list(orders), ["xn-hl7"])


def _states(store: Store) -> list[tuple[str, str, str, str | None]]:
    rows = [r for r in store.list_orders() if r["instrument"] == "xn-hl7"]
    return [(r["specimen_id"], r["action"], r["state"], r["error"]) for r in reversed(rows)]


async def test_orders_go_in_order_each_marked_when_answered(store: Store) -> None:
    link = ScriptedLink("AA", "AE", "AA")
    _receive(store, ORDER, Order("S2", Patient(), ("NA",)), Order("S3", Patient(), ("K",)))
    pusher = _pusher(store, link)
    assert await pusher.push_pending() is None
    assert _states(store) == [
        ("S1", "N", "sent", None),
        ("S2", "N", "refused", "AE: refused"),  # and the queue went on
        ("S3", "N", "sent", None),
    ]
    assert [parse_order_message(m).orders[0].specimen_id for m in link.sent] == ["S1", "S2", "S3"]
    assert pusher.health.connections["xn-hl7"].errors == 1


@pytest.mark.parametrize("failure", ["silent", "garbage"])
async def test_no_usable_answer_stops_the_queue_and_the_same_bytes_go_again(
    store: Store, failure: str
) -> None:
    link = ScriptedLink(failure, failure)
    _receive(store, ORDER, Order("S2", Patient(), ("NA",)))
    pusher = _pusher(store, link, retry={"initial": 2, "maximum": 8})
    first = await pusher.push_pending()
    second = await pusher.push_pending()
    assert first is not None and 1 <= first <= 2  # equal jitter: between half and all
    assert second is not None and 2 <= second <= 4
    assert [state for _, _, state, _ in _states(store)] == ["pending", "pending"]
    assert len(link.sent) == 2 and link.sent[0] == link.sent[1]  # S2 never overtook S1
    assert await pusher.push_pending() is None
    assert link.sent[2] == link.sent[0]  # answered at last: still the very same message
    assert [state for _, _, state, _ in _states(store)] == ["sent", "sent"]
    assert link.resets == (2 if failure == "garbage" else 0)


async def test_an_order_hl7_cannot_carry_is_refused_with_why(store: Store) -> None:
    link = ScriptedLink()
    _receive(store, Order("S1", Patient(), ()), ORDER)
    assert await _pusher(store, link).push_pending() is None
    [(_, _, state, error), (_, _, second, _)] = _states(store)
    assert state == "refused" and error is not None and "tests" in error
    assert second == "sent" and len(link.sent) == 1


async def test_an_order_cancelled_on_its_way_is_followed_by_a_cancel(store: Store) -> None:
    link = ScriptedLink()
    _receive(store, ORDER)
    # The LIS's cancellation arrives while the analyser is reading the order: the store
    # withdraws the order (still pending) and queues no cancel of its own.
    link.before_answer = lambda: store.apply_order_message(
        "lis-orders", "m2", b"raw", [Order("S1", Patient(), ("GLU", "K"), action="C")], ["xn-hl7"]
    )
    pusher = _pusher(store, link)
    await pusher.push_pending()
    link.before_answer = lambda: None
    assert await pusher.push_pending() is None
    assert _states(store) == [("S1", "N", "cancelled", None), ("S1", "C", "sent", None)]
    controls = [parse_order_message(m).orders[0].order_control for m in link.sent]
    assert controls == ["NW", "CA"]


async def test_orm_is_sent_when_the_analyser_wants_it(store: Store) -> None:
    link = ScriptedLink()
    _receive(store, ORDER)
    pusher = _pusher(store, link, message_type="ORM^O01", receiving_application="XN-1000")
    assert await pusher.push_pending() is None
    [message] = link.sent
    assert b"|ORM^O01^ORM_O01|" in message
    assert message.startswith(b"MSH|^~\\&|LABGATE||XN-1000|")


async def test_results_connection_link_without_a_connection_gives_no_answer() -> None:
    link = ResultsConnectionLink()
    with pytest.raises(NoAnswer, match="not connected"):
        await link.exchange(_oml(), "LGP1", 1.0)


# --- settings -----------------------------------------------------------------------------


def test_orders_settings_defaults() -> None:
    orders = _settings().orders
    assert orders is not None
    assert (orders.connection, orders.message_type, orders.ack_timeout) == (
        "order-port",
        "OML^O33",
        30.0,
    )
    shared = Hl7InstrumentSettings.model_validate(
        {
            "name": "xn",
            "protocol": "hl7",
            "transport": {"type": "tcp-server", "port": 0},
            "orders": {"connection": "results", "message_type": "ORM^O01"},
        }
    )
    assert shared.orders is not None and shared.orders.port is None


@pytest.mark.parametrize(
    ("orders", "problem"),
    [
        ({}, "needs the analyser's order listener"),
        ({"host": "10.0.0.5"}, "needs the analyser's order listener"),
        ({"connection": "results", "port": 5200}, "no host, port or tls"),
        ({"host": "h", "port": 5200, "message_type": "OUL^R22"}, "message_type"),
        ({"host": "h", "port": 5200, "ack_timeout": 0}, "ack_timeout"),
        ({"host": "h", "port": 5200, "colour": "red"}, "colour"),
    ],
)
def test_orders_settings_refused(orders: dict[str, object], problem: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=problem):
        Hl7InstrumentSettings.model_validate(
            {
                "name": "xn",
                "protocol": "hl7",
                "transport": {"type": "tcp-server", "port": 0},
                "orders": orders,
            }
        )
