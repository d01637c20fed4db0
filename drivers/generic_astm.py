"""The driver for analysers that follow LIS2-A2 closely: test code in the universal test ID,
value, units, range, flags and status where the standard puts them.

It is the profile ``drivers/profiles/generic-astm.yaml`` run by the engine; that file documents
every setting and is the one to copy for a new analyser. Record layout it relies on (field
numbers as in the standard, 1 = record type): P-3 practice patient id (P-4 laboratory id as
fallback), P-6 name last^first, P-8 birth date, P-9 sex; O-3 specimen id (first non-empty
component; O-4 instrument specimen id as fallback), O-5 tests, O-12 action code (Q = quality
control); R-3 universal test id, R-4 value, R-5 units, R-6 range, R-7 abnormal flags, R-9
status, R-13 completion (R-12 start) time; C records attach to the record before them.
"""

from __future__ import annotations

from pathlib import Path

from drivers.engine import ProfileDriver
from drivers.profile import load_profile_file
from drivers.timestamps import parse_astm_date, parse_astm_datetime
from protocols import astm

__all__ = ["GenericAstmDriver", "parse_astm_date", "parse_astm_datetime", "universal_test_code"]

_PROFILE = Path(__file__).resolve().parent / "profiles" / "generic-astm.yaml"


def universal_test_code(record: astm.Record, field: int) -> str:
    """The local test code of a universal test ID: nominally the 4th component (`^^^GLU`), but
    vendors shift it (`^^^^WBC^1` Sysmex) — take the first non-empty component from the 4th on,
    then anything non-empty at all."""
    repeats = record.repeats(field)
    if not repeats:
        return ""
    components = [c.strip() for c in repeats[0]]
    for component in (*components[3:], *components):
        if component:
            return component
    return ""


class GenericAstmDriver(ProfileDriver):
    """LIS2-A2 as written; the fallback for analysers without a dedicated profile."""

    name = "generic-astm"

    def __init__(self) -> None:
        super().__init__(load_profile_file(_PROFILE))
