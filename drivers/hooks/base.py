"""What a family hook sees and may change: the specimen being assembled from one O record.

Hooks are for the few things a profile cannot say as data (a vendor's pseudo-results, QC values
carried in an order record, manufacturer records). They stay small and pure like the engine:
the same message always gives the same reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict

from drivers.models import Patient, Result
from protocols import astm

__all__ = ["Hook", "HookOptions", "SpecimenDraft", "TestCode", "TestCodeReader"]


class TestCode(NamedTuple):
    """A universal test ID read with the profile's rules."""

    code: str
    name: str
    dilution: str


class TestCodeReader(Protocol):
    """The engine's reading of universal test IDs, for hooks that meet one elsewhere."""

    def test_code(self, repeat: tuple[str, ...]) -> TestCode:
        """The analyser code, name and dilution in one repeat of R-3 or O-5."""
        ...

    def transcode(self, code: str) -> str:
        """The LIS code for an analyser code (the code itself when the table lacks it)."""
        ...


@dataclass(slots=True)
class SpecimenDraft:
    """One specimen while its records are read: the O record, what came before it, and the
    results so far. `extras` ends up in `SpecimenReport.extras`."""

    header: astm.Record | None
    patient_record: astm.Record | None
    patient: Patient
    order: astm.Record
    reader: TestCodeReader
    instrument: str
    results: list[Result] = field(default_factory=list)
    extras: dict[str, str] = field(default_factory=dict)

    def add_extra(self, key: str, text: str, separator: str = " | ") -> None:
        """Append `text` to the extra `key` (several comments or messages in one string)."""
        if not text:
            return
        old = self.extras.get(key)
        self.extras[key] = f"{old}{separator}{text}" if old else text


class HookOptions(BaseModel):
    """Options of a hook, from the profile's `hook_options` (none by default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Hook:
    """A family's code. Every method has a neutral default; override only what is needed."""

    name: ClassVar[str] = ""
    options_model: ClassVar[type[HookOptions]] = HookOptions

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = self.options_model.model_validate(dict(options))

    def on_result(self, draft: SpecimenDraft, record: astm.Record, result: Result) -> Result | None:
        """A result as the profile mapped it; return it (changed or not) or None to drop it."""
        return result

    def on_record(self, draft: SpecimenDraft | None, record: astm.Record) -> None:
        """A record the engine does not map itself (M, S, vendor types)."""
        return None

    def on_order_end(self, draft: SpecimenDraft) -> None:
        """The specimen's records are all read; its report is built next."""
        return None
