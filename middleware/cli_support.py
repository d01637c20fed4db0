"""What the `labgate` commands that work on the store share: opening the store a configuration
names, and arguments that may not be blank (an author, a reason)."""

from __future__ import annotations

import argparse
import sys

from middleware.config import ConfigError, load_settings
from middleware.store import Store

__all__ = ["DEFAULT_CONFIG", "open_store", "required_text"]

DEFAULT_CONFIG = "config/demo.yaml"


def open_store(args: argparse.Namespace) -> Store | None:
    """The store of the configuration in `args.config` (None, with the reason printed, if the
    configuration is refused)."""
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"labgate: configuration refused: {exc}", file=sys.stderr)
        return None
    return Store.open(settings.store.url)


def required_text(value: str) -> str:
    """An argparse type for texts recorded in the audit trail: blank is refused."""
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value.strip()
