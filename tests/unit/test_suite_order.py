"""The suite's longest-first module order (tests/conftest.py) names modules that exist."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import HEAVY_FIRST

ROOT = Path(__file__).resolve().parents[2]


def test_every_module_in_the_longest_first_order_exists_once() -> None:
    missing = [module for module in HEAVY_FIRST if not (ROOT / module).is_file()]
    assert not missing, f"renamed or removed: {missing}"
    assert len(set(HEAVY_FIRST)) == len(HEAVY_FIRST)
