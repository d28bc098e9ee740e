"""The SmolLM2 benchmarks compare like with like only if their shared examples are right: rendered by
the model's own chat template, with the loss on every assistant turn and its end-of-turn marker only."""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.smollm2 import conversation_records, encode_chat, smollm2_dir

from tuneforge.model.loading import load_tokenizer

MODEL_CACHE = Path(tempfile.gettempdir()) / "tuneforge-bench-models"


def test_chat_examples_train_on_assistant_turns_and_their_end_marker() -> None:
    tokenizer = load_tokenizer(smollm2_dir(MODEL_CACHE))
    records = conversation_records(40)
    assert records == conversation_records(40)  # deterministic
    multi_turn = [r for r in records if len(r["messages"]) > 2]
    assert multi_turn and any("system" in r for r in records)
    for record in [multi_turn[0], records[0]]:
        ids, labels = encode_chat(tokenizer, record, 4096)
        trained = [token for token, label in zip(ids, labels, strict=True) if label != -100]
        answers = [m["content"][0]["text"] for m in record["messages"] if m["role"] == "assistant"]
        assert tokenizer.decode(trained) == "".join(f"{answer}<|im_end|>" for answer in answers)
        assert tokenizer.decode(ids).startswith("<|im_start|>system\n")
    lengths = [len(encode_chat(tokenizer, r, 4096)[0]) for r in records]
    assert max(lengths) > 3 * min(lengths)  # varied lengths: what length grouping is measured on
