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


@pytest.fixture(scope="session")
def smollm2_converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct converted from the wheel's GGUF once per session, alone in its folder.

    A conversion takes about 20 s on 2 cores, and three modules read the result (test_gguf_conversion,
    test_prompt_parity, test_smollm2_builtin). Users only read it; a module that adds a model beside it
    links its files into a models folder of its own.
    """
    from tests.model_folders import smollm2_folder  # torch and transformers: only for the modules that ask

    return smollm2_folder(tmp_path_factory.mktemp("smollm2") / "smollm2-135m-instruct")
