"""Ortho VISION: M records carry the reactions of the card wells behind each result.

After each R record the analyser sends one M record per well [corpus: astm-ortho-vision-1.txt]::

    M|1|Anti-A|ABO-Rh/Reverse^1^000009^77777^20231022235959^<mono>.jpg^<colour>.jpg||40^A

read (after a public transcription of the vendor's record tables) as M-3 well name, M-4 card
type ^ well number ^ card id ^ card lot ^ expiry ^ image files, M-6 grade ^ correction flag
(A automatic, M manual) ^ read grade ^ operator. Grades 0/10/20/30/40 are reactions 0 to 4+,
negative grades are well errors. Each well becomes a comment on the result it follows, so the
biologist sees the reactions behind a blood group.

The card is the reagent of a gel test: its lot (M-4.4) is the result's `reagent_lot`, patient
and QC alike, so that a QC plan can ask for QC on each new card lot (`new_lot_qc`). A result
read on wells of several cards keeps the lot of the first (each well's lot stays in its
comment).
"""

from __future__ import annotations

from dataclasses import replace

from drivers.hooks.base import Hook, SpecimenDraft
from protocols import astm

__all__ = ["OrthoVisionHook"]

_GRADES = {"0": "0", "10": "1+", "20": "2+", "30": "3+", "40": "4+"}


class OrthoVisionHook(Hook):
    """Well reactions (M records) as comments on their result."""

    name = "ortho-vision"

    def on_record(self, draft: SpecimenDraft | None, record: astm.Record) -> None:
        if record.type.strip().upper() != "M" or draft is None or not draft.results:
            return
        well = record.field(3).strip()
        grade = record.component(6, 1).strip()
        if not well and not grade:
            return
        reaction = _GRADES.get(grade, f"error {grade}" if grade.startswith("-") else grade)
        card = record.component(4, 1).strip()
        number = record.component(4, 2).strip()
        lot = record.component(4, 4).strip()
        details = [f"grade {grade}"] if grade else []
        if card:
            details.append(f"card {card}" + (f" well {number}" if number else ""))
        if lot:
            details.append(f"lot {lot}")
        if record.component(6, 2).strip() == "M":
            details.append("corrected manually")
        text = f"{well}: {reaction}" + (f" ({', '.join(details)})" if details else "")
        last = draft.results[-1]
        draft.results[-1] = replace(
            last, comments=(*last.comments, text), reagent_lot=last.reagent_lot or lot
        )
