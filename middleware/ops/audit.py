"""The audit row an operation leaves in the store (GBUI I-3 and I-4: every backup and restore
is archived with its date, time, what it concerned and who did it; GBUI IX for exports).

Written with SQLAlchemy Core on the engine, so the commands can record into a store they did
not migrate, and the daemon through `Store.run` (its one writer thread).
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert

from middleware.store.tables import AuditRow

__all__ = ["SYSTEM_ACTOR", "operator", "record"]

#: The actor of what the daemon does on its own (the daily backup).
SYSTEM_ACTOR = "labgate"


def operator() -> str:
    """Who runs this command: the person behind sudo when there is one, else the login."""
    sudo = os.environ.get("SUDO_USER", "")
    if sudo and sudo != "root":
        return sudo
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def record(
    engine: Engine,
    actor: str,
    action: str,
    subject: str,
    detail: Mapping[str, Any],
    at: datetime | None = None,
) -> None:
    """One audit row, committed."""
    with engine.begin() as connection:
        connection.execute(
            insert(AuditRow).values(
                at=at or datetime.now(UTC),
                actor=actor[:128],
                action=action,
                subject=subject[:256],
                detail=dict(detail),
            )
        )
