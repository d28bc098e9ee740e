"""Supervised records in OpenAI's chat spelling train on exactly what their Bedrock spelling trains on."""

from __future__ import annotations

from pathlib import Path

from tuneforge.data.tasks import write_jsonl
from tuneforge.model.builtin import ensure_builtin
from tuneforge.model.loading import load_tokenizer
from tuneforge.recipes.tokenising import encode_file


def test_openai_spelled_conversations_encode_like_bedrock_spelled_ones(tmp_path: Path) -> None:
    tokenizer = load_tokenizer(ensure_builtin("forge-micro", tmp_path / "models"))
    openai = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Where is my parcel?"}]},
            {"role": "assistant", "content": "With the courier."},
        ]
    }
    bedrock = {
        "system": [{"text": "Be brief."}],
        "messages": [
            {"role": "user", "content": [{"text": "Where is my parcel?"}]},
            {"role": "assistant", "content": [{"text": "With the courier."}]},
        ],
    }
    (from_openai,) = encode_file(write_jsonl(tmp_path / "openai.jsonl", [openai]), tokenizer, 512)
    (from_bedrock,) = encode_file(write_jsonl(tmp_path / "bedrock.jsonl", [bedrock]), tokenizer, 512)
    assert from_openai == from_bedrock
    assert "With the courier." in tokenizer.decode(from_openai.input_ids)
