"""ASTM date and time fields (YYYYMMDD[HH[MM[SS]]]) as Python dates."""

from __future__ import annotations

from datetime import date, datetime

__all__ = ["parse_astm_date", "parse_astm_datetime"]


def parse_astm_datetime(text: str) -> datetime | None:
    """YYYYMMDD[HH[MM[SS]]] as the analyser's local time (made aware with the gateway's zone);
    None when empty or not a date (dummy dates such as 18991230 are kept as dates)."""
    digits = text.strip()
    formats = {14: "%Y%m%d%H%M%S", 12: "%Y%m%d%H%M", 10: "%Y%m%d%H", 8: "%Y%m%d"}
    fmt = formats.get(len(digits))
    if fmt is None or not digits.isascii() or not digits.isdigit():
        return None
    try:
        return datetime.strptime(digits, fmt).astimezone()
    except (ValueError, OverflowError, OSError):
        return None


def parse_astm_date(text: str) -> date | None:
    """The date part of an ASTM date/time field."""
    moment = parse_astm_datetime(text.strip()[:8])
    return moment.date() if moment is not None else None
