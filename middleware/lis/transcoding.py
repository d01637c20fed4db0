"""The LIS's own test codes (GBUI XIV): one table per LIS, applied by every LIS message builder.

`lis.transcoding` maps a code to the code the LIS knows. A key is either `INSTRUMENT:CODE`
(the code one analyser sends, for when two analysers use one code for different tests) or a
plain `CODE`, looked up first as the driver's labgate code (`Result.lis_code`, after the
driver's own table), then as the analyser's code. A code in no entry goes out as before: the
driver's code, else the analyser's.
"""

from __future__ import annotations

from collections.abc import Mapping

from drivers.models import Result

__all__ = ["lis_test_code"]


def lis_test_code(result: Result, table: Mapping[str, str]) -> str:
    """The code `result` carries to the LIS, after the LIS's transcoding `table`."""
    default = result.lis_code or result.test_code
    if not table:
        return default
    for key in (f"{result.instrument}:{result.test_code}", result.lis_code, result.test_code):
        if key and key in table:
            return table[key]
    return default
