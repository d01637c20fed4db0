"""ASTM date and time fields (YYYYMMDD[HH[MM[SS]]]) as Python dates."""

from __future__ import annotations

from datetime import date, datetime
from functools import lru_cache

__all__ = ["parse_astm_date", "parse_astm_datetime"]


def parse_astm_datetime(text: str) -> datetime | None:
    """YYYYMMDD[HH[MM[SS]]] as the analyser's local time (made aware with the gateway's zone);
    None when empty or not a date (dummy dates such as 18991230 are kept as dates)."""
    digits = text.strip()
    if len(digits) not in (8, 10, 12, 14) or not digits.isascii() or not digits.isdigit():
        return None
    return _local_moment(digits)


# Every result of a message tends to carry the same time: parsed once. Sliced by hand rather
# than with strptime, which cost more than the rest of a result's mapping (profiled). Bounded,
# and keyed by the text, so a change of the machine's zone is seen by times not met before.
@lru_cache(maxsize=4096)
def _local_moment(digits: str) -> datetime | None:
    try:
        return datetime(
            int(digits[0:4]),
            int(digits[4:6]),
            int(digits[6:8]),
            int(digits[8:10] or 0),
            int(digits[10:12] or 0),
            int(digits[12:14] or 0),
        ).astimezone()
    except (ValueError, OverflowError, OSError):
        return None


def parse_astm_date(text: str) -> date | None:
    """The date part of an ASTM date/time field."""
    moment = parse_astm_datetime(text.strip()[:8])
    return moment.date() if moment is not None else None
