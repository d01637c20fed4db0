"""Mindray BS chemistry: QC results sent in the O record, with no R record.

In the BS-240 capture [corpus: astm-mindray-bs240-1.txt] a QC message has H-12 ``QR`` (patient
messages: ``PR``), an empty O-3/O-4, the test in O-5 and the QC data in the components of O-12::

    O|517|||P^P||20250701110003|||||1^MLT cntrl1^059325001^20270201^4.220000^M^0.220000^4.926913

read (from the data; no vendor document was at hand) as control number (level) ^ control name
^ lot ^ expiry ^ target mean ^ (M, meaning unknown) ^ target SD ^ measured value. This hook
turns such an order into one QC result; the profile reads level and lot (`qc.level`,
`qc.lot`) and takes the control name as specimen id. The other components go to the report's
extras (``qc_control``, ``qc_expiry``, ``qc_target_mean``, ``qc_target_sd``).
"""

from __future__ import annotations

from pydantic import Field

from drivers.hooks.base import Hook, HookOptions, SpecimenDraft
from drivers.models import Result
from drivers.timestamps import parse_astm_datetime
from protocols import astm

__all__ = ["MindrayBsHook", "MindrayBsOptions"]


class MindrayBsOptions(HookOptions):
    """Where the QC value and details sit in O-12 (component numbers, from 1)."""

    qc_processing_ids: tuple[str, ...] = ("QR",)
    qc_value_component: int = Field(default=8, ge=1, le=99)
    qc_details: dict[str, int] = Field(
        default_factory=lambda: {
            "qc_control": 2,
            "qc_expiry": 4,
            "qc_target_mean": 5,
            "qc_target_sd": 7,
        }
    )


class MindrayBsHook(Hook):
    """QC values carried by Mindray BS order records."""

    name = "mindray-bs"
    options_model = MindrayBsOptions

    def on_order_end(self, draft: SpecimenDraft) -> None:
        assert isinstance(self.options, MindrayBsOptions)
        options = self.options
        header = draft.header
        if draft.results or header is None:
            return
        if header.field(12).strip() not in options.qc_processing_ids:
            return
        order = draft.order
        tests = order.repeats(5)
        test = draft.reader.test_code(tests[0]) if tests else None
        qc = [c.strip() for c in order.repeats(12)[0]] if order.repeats(12) else []

        def component(n: int) -> str:
            return qc[n - 1] if 1 <= n <= len(qc) else ""

        value = component(options.qc_value_component)
        if test is None or not test.code or not value:
            return
        parsed = astm.parse_value(value)
        draft.results.append(
            Result(
                specimen_id="",
                test_code=test.code,
                value=value,
                test_name=test.name,
                numeric=parsed.number,
                comparator=parsed.comparator,
                status="F",
                measured_at=parse_astm_datetime(order.field(7)),
                instrument=draft.instrument,
                sequence=1,
                lis_code=draft.reader.transcode(test.code),
            )
        )
        for key, n in options.qc_details.items():
            if component(n):
                draft.extras[key] = component(n)
