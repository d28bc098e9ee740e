"""Fixtures every unit test module shares."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _no_tuneforge_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's shell settings must not change what a unit test sees."""
    for name in list(os.environ):
        if name.startswith("TUNEFORGE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def fast_tmp(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs folder where there is one: SQLite's fsyncs on disk cost ~70 ms per test, on tmpfs ~10."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir=shm, prefix="tuneforge-test-") as folder:
        yield Path(folder)
