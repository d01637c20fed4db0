"""Times as the store hands them back."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["utc"]


def utc(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC, so say so."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
