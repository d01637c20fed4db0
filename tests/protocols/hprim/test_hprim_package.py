"""The package's public surface: every module's `__all__` is re-exported, and nothing else."""

from __future__ import annotations

import importlib

import protocols.hprim as hprim

MODULES = ("records", "values", "structure", "results")


def test_the_package_exports_what_its_modules_export() -> None:
    names: set[str] = set()
    for name in MODULES:
        module = importlib.import_module(f"protocols.hprim.{name}")
        names.update(module.__all__)
        for exported in module.__all__:
            assert getattr(hprim, exported) is getattr(module, exported)
    assert set(hprim.__all__) == names
    assert sorted(hprim.__all__) == sorted(set(hprim.__all__))


def test_public_names_have_docstrings() -> None:
    for name in hprim.__all__:
        value = getattr(hprim, name)
        if callable(value) and not isinstance(value, type(tuple[str])):
            assert value.__doc__, name
