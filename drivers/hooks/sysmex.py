"""Sysmex XN: IP messages sent as pseudo-results, and image file names sent as results.

An XN result message ends with "IP messages" in R records of their own [corpus:
astm-sysmex-xn550-1.astm]:

- abnormal messages with no value and flag A (``^^^^Eosinophilia||||A``);
- suspect messages, named with a final ``?``, whose value is a "Q-flag" score
  (``^^^^Blasts/Abn_Lympho?|40``). The message is reported positive from a score of 100
  (Sysmex's documented default; unverified here, hence an option);
- scattergram and distribution image files (``SCAT_WDF``, ``DIST_PLT``) as a file list in
  the value (``PNG&R&20240628&R&...PNG``, escaped repeat delimiters).

The pseudo-results stay results (so the LIS and the biologist see them), positive suspect
messages get the normalised flag A, every positive message is listed in the report's
``extras["ip_messages"]`` so the pipeline can hold the whole specimen, and image results move
to ``extras["image:<name>"]``: they are not measurements.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from pydantic import Field

from drivers.hooks.base import Hook, HookOptions, SpecimenDraft
from drivers.models import Result
from protocols import astm

__all__ = ["SysmexXnHook", "SysmexXnOptions"]


class SysmexXnOptions(HookOptions):
    """Options of the Sysmex XN hook."""

    qflag_threshold: Decimal = Field(default=Decimal(100), ge=0)
    image_prefixes: tuple[str, ...] = ("SCAT_", "DIST_")


class SysmexXnHook(Hook):
    """IP messages and image names of Sysmex XN-series haematology analysers."""

    name = "sysmex-xn"
    options_model = SysmexXnOptions

    def on_result(self, draft: SpecimenDraft, record: astm.Record, result: Result) -> Result | None:
        assert isinstance(self.options, SysmexXnOptions)
        code = result.test_code
        if self.options.image_prefixes and code.startswith(self.options.image_prefixes):
            draft.extras[f"image:{code}"] = result.value
            return None
        if code.endswith("?"):
            score = result.numeric
            positive = score is not None and score >= self.options.qflag_threshold
            if positive:
                draft.add_extra("ip_messages", code, ",")
            return replace(result, normalized_flags=("A",) if positive else ())
        if not result.value and result.flags:
            draft.add_extra("ip_messages", code, ",")
        return result
