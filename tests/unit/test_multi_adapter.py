"""Multi-adapter engines: each row of one continuous batch decodes with its own LoRA adapter, and
adapters live in an LRU cache with a byte budget (:mod:`tuneforge.engine.adapters`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.unit.adapter_folders import ATTENTION, AdapterFactory
from tuneforge.data.formats import FORMAT_PROMPT_COMPLETION
from tuneforge.engine.adapters import AdapterCache, AdapterLoadError, load_adapter, wrap_for_adapters
from tuneforge.engine.batching import ContinuousBatcher, Sequence
from tuneforge.model.folders import load_for_inference
from tuneforge.model.prompts import encode_prompt
from tuneforge.serving.protocol import GenerationRequest

PROMPTS = ["Ticket: my invoice\nCategory:", "a much longer prompt, so that rows need left padding", "x", "hello"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("adapters")
    factory = AdapterFactory("forge-micro", root / "models")
    folders = [
        factory.make(root / "a", seed=1, rank=2),
        factory.make(root / "b", seed=2, rank=8, targets=tuple(ATTENTION), data_format=FORMAT_PROMPT_COMPLETION),
        factory.make(root / "c", seed=3, rank=4),
    ]
    model, tokenizer = load_for_inference(factory.base_dir, root / "models")
    router, shapes = wrap_for_adapters(model)
    cache = AdapterCache(1 << 30, lambda folder: load_adapter(folder, **loader_options(shapes)))
    return {
        "root": root,
        "factory": factory,
        "folders": folders,
        "model": model,
        "tokenizer": tokenizer,
        "router": router,
        "shapes": shapes,
        "cache": cache,
    }


def loader_options(shapes: dict[str, tuple[int, int]]) -> dict[str, Any]:
    return {
        "base_source": "builtin:forge-micro",
        "shapes": shapes,
        "dtype": torch.float32,
        "device": torch.device("cpu"),
    }


def solo_greedy(model: Any, tokenizer: Any, prompt: str, max_tokens: int) -> list[int]:
    ids = torch.tensor([encode_prompt(tokenizer, prompt)])
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=tokenizer.pad_token_id,
    )
    return [int(t) for t in out[0, ids.shape[1] :]]


def test_rows_of_one_batch_each_get_their_own_adapters_merged_answer(setup: dict[str, Any]) -> None:
    model, tokenizer, cache = setup["model"], setup["tokenizer"], setup["cache"]
    batcher = ContinuousBatcher(model, tokenizer, max_batch=8, router=setup["router"])
    batcher.eos_ids = set()  # random weights may end early; compare full lengths
    plan = [
        (PROMPTS[i % len(PROMPTS)], folder) for i, folder in enumerate([*setup["folders"], None, setup["folders"][0]])
    ]
    sequences = []
    for index, (prompt, folder) in enumerate(plan):
        adapter = None if folder is None else cache.acquire(str(folder))
        sequence = Sequence(
            GenerationRequest(prompt=prompt, max_tokens=10),
            batcher.tokenize(prompt, 10),
            lambda e: None,
            adapter=adapter,
        )
        batcher.submit(sequence)
        sequences.append(sequence)
        if index == 1:  # the rest join a running batch
            batcher.step()
    while batcher.running:
        batcher.step()
    setup["router"].route([], torch.device("cpu"))  # the wrapped model alone is the base model
    merged = {folder: load_for_inference(folder, setup["root"] / "models")[0] for folder in setup["folders"]}
    for (prompt, folder), sequence in zip(plan, sequences, strict=True):
        reference = model if folder is None else merged[folder]
        assert sequence.generated == solo_greedy(reference, tokenizer, prompt, 10), f"adapter {folder} differs"
        if sequence.adapter is not None:
            cache.release(sequence.adapter)
    distinct = {tuple(s.generated) for s in sequences[:4]}
    assert len(distinct) == 4, "the adapters should answer differently from each other and from the base"


def test_a_request_renders_through_its_adapters_trained_format(setup: dict[str, Any]) -> None:
    batcher = ContinuousBatcher(setup["model"], setup["tokenizer"], router=setup["router"])
    request = GenerationRequest(
        max_tokens=4, conversation={"messages": [{"role": "user", "content": [{"text": "Ticket: refund"}]}]}
    )
    plain = setup["cache"].acquire(str(setup["folders"][1]))  # trained on prompt/completion records
    chat = setup["cache"].acquire(str(setup["folders"][0]))
    try:
        assert batcher.render(request, plain).text == "Ticket: refund"
        assert batcher.render(request, chat).text == batcher.render(request).text != "Ticket: refund"
    finally:
        setup["cache"].release(plain)
        setup["cache"].release(chat)


def test_fifty_adapters_only_the_active_ones_stay_loaded(setup: dict[str, Any]) -> None:
    factory: AdapterFactory = setup["factory"]
    folders = [str(factory.make(setup["root"] / f"many-{i}", seed=100 + i, rank=4)) for i in range(50)]
    size = load_adapter(Path(folders[0]), **loader_options(setup["shapes"])).nbytes
    cache = AdapterCache(3 * size, lambda folder: load_adapter(folder, **loader_options(setup["shapes"])))
    for folder in folders:  # 50 requests one after another: at most three adapters are ever held
        weights = cache.acquire(folder)
        cache.release(weights)
        stats = cache.stats()
        assert stats["held_bytes"] <= 3 * size
    assert [a["adapter"] for a in cache.stats()["adapters"]] == folders[-3:]
    assert cache.loads == 50 and cache.evictions == 47

    held = [cache.acquire(folder) for folder in folders[:4]]  # four in flight: none may go, over budget or not
    assert {a["adapter"] for a in cache.stats()["adapters"]} == set(folders[:4])
    for weights in held[:3]:
        cache.release(weights)
    assert [a["adapter"] for a in cache.stats()["adapters"]] == [folders[1], folders[2], folders[3]]
    recent = cache.acquire(folders[1])  # a hit: no reload, and it becomes the most recently used
    assert cache.loads == 54 and cache.stats()["adapters"][-1]["adapter"] == folders[1]
    cache.release(recent)
    cache.release(held[3])


def test_a_corrupt_adapter_fails_with_its_name_and_the_others_keep_serving(setup: dict[str, Any]) -> None:
    factory: AdapterFactory = setup["factory"]
    corrupt = factory.make(setup["root"] / "corrupt", seed=7)
    weights = corrupt / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    cache: AdapterCache = setup["cache"]
    with pytest.raises(AdapterLoadError, match=rf"^Adapter {corrupt} could not be loaded: ") as error:
        cache.acquire(str(corrupt))
    assert error.value.folder == str(corrupt)
    assert str(corrupt) not in {a["adapter"] for a in cache.stats()["adapters"]}
    good = cache.acquire(str(setup["folders"][2]))
    cache.release(good)

    other_base = factory.make(setup["root"] / "other-base", seed=8)
    manifest = other_base / "tuneforge-model.json"
    manifest.write_text(manifest.read_text().replace("builtin:forge-micro", "builtin:forge-small"))
    with pytest.raises(AdapterLoadError, match="adapter of 'builtin:forge-small'"):
        cache.acquire(str(other_base))
    with pytest.raises(AdapterLoadError, match="not a custom model folder"):
        cache.acquire(str(setup["root"]))
