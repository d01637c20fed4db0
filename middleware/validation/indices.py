"""Serum indices of a specimen: haemolysis, icterus, lipaemia ("H/I/L", CLSI C56-A,
AUTOVERIFICATION.md §7: "the index values travel with the result").

A chemistry analyser measures the indices once per specimen and reports them as results of
their own (Roche's serum index application, Abbott's and Siemens' HIL tests...), each vendor
with its own test codes. labgate reads them under three LIS codes of its own, `INDEX_CODES`:
a lab transcodes its analysers' index tests to them (`transcoding` in the analyser's profile
or `lis.transcoding`), and every result of the specimen then shows its H, I and L beside its
flags. An analyser that already sends these codes needs no transcoding.

Pure: (test code, value) pairs in, {"h"|"i"|"l": value} out, the keys the rule set's
`specimen_indices` limits use (`validation/ruleset.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from types import MappingProxyType

__all__ = [
    "ABOVE_EVERY_LIMIT",
    "INDEX_CODES",
    "comparable_index",
    "index_name",
    "index_reading",
    "indices_of",
]

#: The LIS code of each serum index -> its key ("h", "i", "l").
INDEX_CODES: Mapping[str, str] = MappingProxyType({"HIL-H": "h", "HIL-I": "i", "HIL-L": "l"})


def index_name(*codes: str) -> str | None:
    """The index a result stands for ("h", "i", "l"), from its LIS or analyser code."""
    for code in codes:
        name = INDEX_CODES.get(code.strip().upper())
        if name is not None:
            return name
    return None


def indices_of(results: Iterable[tuple[str, str, str]]) -> dict[str, str]:
    """The indices among a specimen's (LIS code, analyser code, value) results, as the analyser
    wrote them, in H, I, L order; an index measured twice keeps its last value."""
    found: dict[str, str] = {}
    for lis_code, test_code, value in results:
        name = index_name(lis_code, test_code)
        if name is not None and value.strip():
            found[name] = value.strip()
    return {name: found[name] for name in ("h", "i", "l") if name in found}


#: What an index that cannot be compared with a limit counts as (see `comparable_index`).
ABOVE_EVERY_LIMIT = Decimal("Infinity")


def comparable_index(numeric: Decimal | None, comparator: str | None) -> Decimal:
    """An index result as the rule set's `specimen_indices` limits compare it: its number, or
    when it has none that can be compared — text ("++"), "> n" — above every limit, so the
    results are held for the biologist rather than auto-validated on an index nobody could
    read (fail closed, AUTOVERIFICATION.md §7). "< n" is at most n."""
    if numeric is not None and comparator in (None, "", "<", "<="):
        return numeric
    return ABOVE_EVERY_LIMIT


def index_reading(
    lis_code: str, test_code: str, value: str, numeric: Decimal | None, comparator: str | None
) -> tuple[str, Decimal] | None:
    """("h"|"i"|"l", the value limits compare) for an index result; None for any other result
    or an index left empty. The one reading of the live pipeline and of replay from the store."""
    name = index_name(lis_code, test_code)
    if name is None or not value.strip():
        return None
    return name, comparable_index(numeric, comparator)
