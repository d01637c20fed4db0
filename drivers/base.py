"""What a driver is: the pure mapping between an analyser family's messages and the lab's models."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from drivers.models import Order, Query, SpecimenReport
from protocols import astm

__all__ = ["AstmDriver", "DriverError"]


class DriverError(Exception):
    """The message is valid ASTM but this driver cannot map it (the text says what is missing)."""


class AstmDriver(Protocol):
    """An ASTM analyser family. `to_reports` must be pure: replaying a stored raw message through
    the same driver rebuilds the same reports (the trace depends on it). Every method raises
    only `DriverError`."""

    name: str
    #: The text encoding of the analyser's messages (a profile setting, latin-1 by default).
    encoding: str

    def to_reports(self, message: astm.Message, instrument: str) -> list[SpecimenReport]:
        """Map one decoded E1394 message to one report per specimen."""
        ...

    def parse_queries(self, message: astm.Message) -> list[Query]:
        """The host queries (Q records) the analyser sent in `message`."""
        ...

    def build_order_message(
        self,
        orders: Sequence[Order],
        *,
        sender: str,
        receiver: str,
        now: datetime,
        query_answer: bool = False,
    ) -> bytes:
        """E1394 text downloading `orders` (LIS codes, transcoded here); O-26 says whether it
        answers a query."""
        ...

    def build_no_order_message(
        self, query: Query, *, sender: str, receiver: str, now: datetime
    ) -> bytes:
        """E1394 text answering `query` with "no information" (no order for its specimens)."""
        ...

    def untranscoded(self, orders: Sequence[Order]) -> list[str]:
        """LIS codes in `orders` the driver's transcoding table lacks (sent unchanged)."""
        ...
