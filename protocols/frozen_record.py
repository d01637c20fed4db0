"""Value semantics for the lazy record classes of the record codecs (ASTM, HPRIM): they keep
their fields split only when first read, so they cannot be dataclasses, yet must compare, hash,
print, copy and refuse changes as a frozen dataclass does."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["FrozenRecord"]


class FrozenRecord:
    """Mixed into a record class with `type`, `fields` and `raw_fields` and a constructor
    `cls(type, fields, raw_fields)`; equal when type and fields are."""

    __slots__ = ()

    type: str
    fields: Any
    raw_fields: Any

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, FrozenRecord)
        return self.type == other.type and self.fields == other.fields

    def __hash__(self) -> int:
        return hash((self.type, self.fields))

    def __repr__(self) -> str:
        return f"Record(type={self.type!r}, fields={self.fields!r})"

    def __setattr__(self, name: str, value: object) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:  # pickle and copy: rebuilt whole
        return (self.__class__, (self.type, self.fields, self.raw_fields))
