"""What a driver is: the pure mapping between an analyser family's messages and the lab's models."""

from __future__ import annotations

from typing import Protocol

from drivers.models import SpecimenReport
from protocols import astm

__all__ = ["AstmDriver", "DriverError"]


class DriverError(Exception):
    """The message is valid ASTM but this driver cannot map it (the text says what is missing)."""


class AstmDriver(Protocol):
    """An ASTM analyser family. `to_reports` must be pure: replaying a stored raw message through
    the same driver rebuilds the same reports (the trace depends on it)."""

    name: str

    def to_reports(self, message: astm.Message, instrument: str) -> list[SpecimenReport]:
        """Map one decoded E1394 message to one report per specimen."""
        ...
