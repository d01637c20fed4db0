"""structlog set-up: JSON lines for journald and files, a readable console on a terminal.

Context (instrument, connection, message_id) is bound with `structlog.contextvars`, so every line
a session writes while handling a message carries them without formatting strings by hand. At info
and above only ids are logged, never patient names or values (GBUI II: confidentiality).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

__all__ = ["configure_logging"]


def configure_logging(*, json: bool | None = None, level: str = "info") -> None:
    """Configure structlog for the process; `json=None` picks JSON unless stdout is a terminal."""
    if json is None:
        json = not sys.stdout.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks if json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=False,
    )
