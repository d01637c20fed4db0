"""Every ASTM corpus file through its family's driver, compared with a golden JSON file.

The golden files (tests/data/drivers/golden/<corpus file>.json) were generated once and then
checked by hand against the captures. To regenerate after a deliberate change, run
``LABGATE_WRITE_GOLDEN=1 .venv/bin/pytest tests/drivers/test_golden.py`` and review the diff.
"""

from __future__ import annotations

import json
import os

import pytest
from driver_corpus import FAMILIES, GOLDEN, dump_golden, golden_of


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_corpus_file_matches_its_golden_file(name: str) -> None:
    actual = golden_of(name)
    path = GOLDEN / f"{name}.json"
    if os.environ.get("LABGATE_WRITE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dump_golden(actual) + "\n", encoding="utf-8")
    expected = json.loads(path.read_text(encoding="utf-8"))
    assert actual == expected


def test_every_astm_corpus_file_has_a_family() -> None:
    corpus = {p.name for p in (GOLDEN.parents[1] / "corpus").glob("astm-*")}
    assert corpus == set(FAMILIES)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_golden_files_hold_results(name: str) -> None:
    golden = json.loads((GOLDEN / f"{name}.json").read_text(encoding="utf-8"))
    assert golden["messages"], "at least one message was rebuilt from the capture"
