"""Dependencies point one way: protocols <- drivers <- middleware; simulators use protocols only.
The cores stay free of I/O so they can be tested without sockets (STYLE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "protocols": {
        "asyncio",
        "socket",
        "serial",
        "serial_asyncio",
        "structlog",
        "logging",
        "sqlalchemy",
        "drivers",
        "middleware",
        "simulators",
        "time",
        "threading",
        "selectors",
    },
    "drivers": {"asyncio", "socket", "serial", "sqlalchemy", "middleware", "simulators"},
    "simulators": {"middleware", "drivers", "sqlalchemy"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_its_layer_allows(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert {path: bad for path, bad in offenders.items() if bad} == {}
