"""What every analyser session is given by the gateway, whatever its protocol."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from drivers.models import Order
from middleware.health import Health
from middleware.pipeline import Pipeline
from middleware.store import Store

__all__ = ["AskLis", "SessionServices"]

#: Forwards a query for specimens labgate holds no order for to the LIS (LAB-27).
AskLis = Callable[[Sequence[str], str], Awaitable[list[tuple[int, Order]]]]


@dataclass(frozen=True, slots=True)
class SessionServices:
    """The store, the health board, the LIS's name and outbox wake-up, the decision pipeline,
    and (when configured) query forwarding to the LIS."""

    store: Store
    health: Health
    lis: str
    on_stored: Callable[[], None]
    pipeline: Pipeline = field(default_factory=Pipeline)
    ask_lis: AskLis | None = None
    gateway_name: str = "LABGATE"
