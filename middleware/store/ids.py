"""Identifiers the store hands out."""

from __future__ import annotations

import uuid

__all__ = ["new_control_id"]


def new_control_id() -> str:
    """An HL7 message control id (MSH-10, at most 20 characters), unique across gateways."""
    return "LG" + uuid.uuid4().hex[:18].upper()
