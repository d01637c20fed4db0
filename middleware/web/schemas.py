"""Request and response bodies of the HTTP API (pydantic at the edge, lab models inside)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from drivers.models import Order, Patient

__all__ = ["OrderIn", "PatientIn"]

_Code = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^|\\^&~\r\n]+$")]


class PatientIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patient_id: str = ""
    family_name: str = ""
    given_name: str = ""
    birth_date: date | None = None
    sex: Literal["", "M", "F", "U", "O"] = ""


class OrderIn(BaseModel):
    """An order for one specimen; `tests` are LIS codes (the analyser's driver transcodes)."""

    model_config = ConfigDict(extra="forbid")

    specimen_id: _Code
    tests: list[_Code] = Field(min_length=1)
    patient: PatientIn = PatientIn()
    priority: Literal["R", "S", "A"] = "R"
    action: Literal["N", "A", "C"] = "N"
    collected_at: datetime | None = None
    instrument: str = ""

    def to_model(self) -> Order:
        return Order(
            specimen_id=self.specimen_id,
            patient=Patient(**self.patient.model_dump()),
            tests=tuple(self.tests),
            priority=self.priority,
            collected_at=self.collected_at,
            action=self.action,
        )
