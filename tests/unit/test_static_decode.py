"""The static-cache decoder writes exactly ``generate``'s greedy tokens, eagerly and when traced by dynamo."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tuneforge.engine.static_decode import StaticGreedyDecoder


@pytest.fixture(scope="module")
def model() -> Any:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).eval()


def greedy(model: Any, prompt: list[int], new_tokens: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    return [int(t) for t in out[0, len(prompt) :]]


PROMPT = [5, 17, 250, 3, 99, 42, 7, 180, 64, 11]


def test_eager_decoder_matches_generate_and_reuses_its_cache(model: Any) -> None:
    expected = greedy(model, PROMPT, 24)
    decoder = StaticGreedyDecoder(model, 40)
    assert decoder.generate(PROMPT, 24) == expected
    assert decoder.generate(PROMPT, 24) == expected  # the cache is reset between calls
    assert decoder.generate(PROMPT[:4], 5) == greedy(model, PROMPT[:4], 5)


def test_traced_decode_step_matches_generate(model: Any) -> None:
    """fullgraph=True: the step has no graph break (what CUDA graphs need); eager backend, CPU."""
    decoder = StaticGreedyDecoder(model, 40, backend="eager")
    assert decoder.generate(PROMPT, 20) == greedy(model, PROMPT, 20)


def test_end_token_and_length_limits(model: Any) -> None:
    expected = greedy(model, PROMPT, 24)
    decoder = StaticGreedyDecoder(model, 40)
    stop = expected[5]
    first = expected.index(stop)
    assert decoder.generate(PROMPT, 24, eos_ids={stop}, check_every=4) == expected[: first + 1]
    with pytest.raises(ValueError, match="max_length"):
        decoder.generate(PROMPT, 31)
    with pytest.raises(ValueError, match="empty prompt"):
        decoder.generate([], 3)
