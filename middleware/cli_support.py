"""What the `labgate` commands that work on the store share: opening the store a configuration
names, and arguments that may not be blank (an author, a reason)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from middleware.config import ConfigError, load_settings
from middleware.store import Store

__all__ = ["DEFAULT_CONFIG", "list_rows", "open_store", "required_text"]

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


def list_rows(
    args: argparse.Namespace,
    read: Callable[[Store], list[dict[str, Any]]],
    line: Callable[[dict[str, Any]], str],
) -> int:
    """A listing command: rows read from the store, printed as JSON (`args.json`) or one line
    each. Exit 2 if the configuration is refused."""
    store = open_store(args)
    if store is None:
        return 2
    try:
        rows = read(store)
    finally:
        store.close()
    if getattr(args, "json", False):
        print(json.dumps(rows, ensure_ascii=False, indent=2, default=str))
    else:
        for row in rows:
            print(line(row))
    return 0
