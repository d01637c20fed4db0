"""Driver names, as written in a configuration file, to driver objects."""

from __future__ import annotations

from drivers.base import AstmDriver
from drivers.generic_astm import GenericAstmDriver

__all__ = ["get", "names"]

_DRIVERS: dict[str, AstmDriver] = {
    GenericAstmDriver.name: GenericAstmDriver(),
}


def names() -> list[str]:
    """Every driver name a configuration may use."""
    return sorted(_DRIVERS)


def get(name: str) -> AstmDriver:
    """The driver registered under `name` (config validation has already checked it exists)."""
    return _DRIVERS[name]
