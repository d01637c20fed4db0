"""The decision taken on each patient result before it goes to the LIS.

The walking skeleton has no rule set yet, so every patient result is `held` for the biologists
with the reason `no_rule` (DESIGN.md vocabulary): nothing is ever auto-validated by default.
The validation issue replaces this with QC gate -> flags -> delta -> rules.
"""

from __future__ import annotations

from drivers.models import Result

__all__ = ["Decision", "decide"]

Decision = tuple[str, tuple[str, ...]]


def decide(result: Result) -> Decision:
    """(decision, reasons) for one result; QC results are not patient results and get none."""
    if result.is_qc:
        return ("", ())
    return ("held", ("no_rule",))
