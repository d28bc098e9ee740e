"""A multi-adapter engine process (``python -m tuneforge.engine.server --multi-adapter``) over its socket:
mixed adapters answered concurrently, a corrupt adapter refused by name while the others keep serving,
and the adapter cache reported by the ``stats`` request."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.unit.adapter_folders import AdapterFactory
from tuneforge.serving.engine_client import engine_stats, stream_events
from tuneforge.serving.protocol import GenerationRequest

BUDGET_ADAPTERS = 5
"""The engine's cache budget, in rank-4 adapters: the three of the first test (ranks 2-4) fit in it."""


def adapter_bytes(factory: AdapterFactory, folder: Path) -> int:
    from tuneforge.engine.adapters import load_adapter, wrap_for_adapters
    from tuneforge.model.loading import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(factory.base_dir)
    _, shapes = wrap_for_adapters(model)
    options = {"base_source": "builtin:forge-micro", "dtype": torch.float32, "device": torch.device("cpu")}
    return load_adapter(folder, shapes=shapes, **options).nbytes


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("engine")
    factory = AdapterFactory("forge-micro", root / "data" / "models")
    folders = [factory.make(root / f"adapter-{i}", seed=i, rank=2 + i) for i in range(3)]
    many = [factory.make(root / f"many-{i}", seed=100 + i, rank=4) for i in range(50)]
    size = adapter_bytes(factory, many[0])
    corrupt = factory.make(root / "corrupt", seed=9)
    weights = corrupt / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    status = root / "status.json"
    env = {
        **os.environ,
        "TUNEFORGE_DATA_DIR": str(root / "data"),
        "TUNEFORGE_ENGINE_THREADS": "1",
        "TUNEFORGE_ADAPTER_CACHE_BYTES": str(BUDGET_ADAPTERS * size),
    }
    command = [sys.executable, "-m", "tuneforge.engine.server", "--source", "builtin:forge-micro", "--multi-adapter"]
    process = subprocess.Popen(
        [*command, "--socket", str(root / "e.sock"), "--status", str(status)], env=env, stdin=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not (status.is_file() and json.loads(status.read_text())["state"] != "starting"):
        assert process.poll() is None and time.monotonic() < deadline, "the engine did not start"
        time.sleep(0.1)
    assert json.loads(status.read_text())["state"] == "ready"
    try:
        yield {"socket": root / "e.sock", "folders": folders, "corrupt": corrupt, "many": many, "size": size}
    finally:
        process.kill()
        process.wait()


async def answer(path: Path, adapter: Path | None) -> dict[str, Any]:
    request = GenerationRequest(prompt="Ticket: refund\nCategory:", max_tokens=6, adapter=adapter and str(adapter))
    events = [event async for event in stream_events(path, request)]
    return events[-1]


def test_mixed_adapters_answer_concurrently_and_a_corrupt_one_fails_alone(engine: dict[str, Any]) -> None:
    path, folders, corrupt = engine["socket"], engine["folders"], engine["corrupt"]

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
        first = await asyncio.gather(*(answer(path, a) for a in [*folders, None, corrupt]))
        again = await asyncio.gather(*(answer(path, a) for a in [*folders, None]))
        return first, again, await engine_stats(path)

    first, again, stats = asyncio.run(scenario())
    assert [e["event"] for e in first] == ["end"] * 4 + ["error"]
    failure = first[-1]
    assert failure["code"] == "AdapterLoadError" and failure["adapter"] == str(corrupt)
    assert failure["message"].startswith(f"Adapter {corrupt} could not be loaded: ")
    assert [e["text"] for e in again] == [e["text"] for e in first[:4]], "answers are per adapter and stable"
    assert len({e["text"] for e in again}) > 1, "different adapters should answer differently on random weights"
    cache = stats["adapter_cache"]
    assert stats["multi_adapter"] and stats["running"] == 0
    assert sorted(a["adapter"] for a in cache["adapters"]) == sorted(map(str, folders))
    assert cache["loads"] == 3 and all(a["in_use"] == 0 for a in cache["adapters"])


def test_an_adapter_sent_to_a_single_model_engine_is_a_validation_error(tmp_path: Path) -> None:
    """In process, over a socket pair: the engine's connection handler without an adapter cache."""
    from tuneforge.engine.batching import ContinuousBatcher
    from tuneforge.engine.server import Connection
    from tuneforge.model.builtin import ensure_builtin
    from tuneforge.model.folders import load_for_inference

    model, tokenizer = load_for_inference(ensure_builtin("forge-micro", tmp_path), tmp_path)
    ours, theirs = socket.socketpair()
    thread = threading.Thread(target=Connection(theirs, ContinuousBatcher(model, tokenizer)).serve)
    thread.start()
    request = GenerationRequest(prompt="hi", max_tokens=2, adapter=str(tmp_path))
    ours.sendall(json.dumps(request.to_json()).encode() + b"\n")
    with ours, ours.makefile("rb") as reader:
        event = json.loads(reader.readline())
    thread.join(timeout=30)
    assert event["event"] == "error" and event["code"] == "ValidationException"
    assert "cannot answer with adapter" in event["message"]


def test_fifty_adapters_through_the_engine_only_the_active_ones_stay_loaded(engine: dict[str, Any]) -> None:
    path, many, size = engine["socket"], engine["many"], engine["size"]
    budget = BUDGET_ADAPTERS * size

    async def one_by_one() -> list[dict[str, Any]]:
        seen = []
        for folder in many:
            assert (await answer(path, folder))["event"] == "end"
            seen.append((await engine_stats(path))["adapter_cache"])
        return seen

    async def eight_at_once() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        ends = await asyncio.gather(*(answer(path, folder) for folder in many[:8]))
        return ends, await engine_stats(path)

    seen = asyncio.run(one_by_one())
    assert all(cache["held_bytes"] <= budget for cache in seen)
    assert [a["adapter"] for a in seen[-1]["adapters"]] == list(map(str, many[-BUDGET_ADAPTERS:]))

    ends, stats = asyncio.run(eight_at_once())  # more adapters in flight than the budget holds
    assert [e["event"] for e in ends] == ["end"] * 8
    cache = stats["adapter_cache"]
    assert cache["held_bytes"] <= budget, "adapters over the budget go once no request holds them"
    assert all(a["in_use"] == 0 for a in cache["adapters"])
    assert {a["adapter"] for a in cache["adapters"]} <= set(map(str, many[:8]))
