"""Supervised records in OpenAI's chat spelling train on exactly what their Bedrock spelling trains on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.data.tasks import write_jsonl
from tuneforge.model import prompts
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


def test_every_prompt_renderer_reads_openai_spelling_as_bedrock_spelling(tmp_path: Path) -> None:
    """Distillation, evaluation and batch inference render records through model/prompts.py directly."""
    tokenizer = load_tokenizer(ensure_builtin("forge-micro", tmp_path / "models"))
    openai_messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where is my parcel?"},
        {"role": "assistant", "content": "With the courier."},
    ]
    bedrock_messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"text": "Where is my parcel?"}]},
        {"role": "assistant", "content": [{"text": "With the courier."}]},
    ]
    openai = {"messages": openai_messages}
    bedrock = {"system": [{"text": "Be brief."}], "messages": bedrock_messages}
    assert prompts.render_prompt(openai) == prompts.render_prompt(bedrock)
    assert "Where is my parcel?" in prompts.render_prompt(openai)
    assert prompts.prompt_ids(tokenizer, openai) == prompts.prompt_ids(tokenizer, bedrock)
    assert prompts.expected_answer(openai) == prompts.expected_answer(bedrock) == "With the courier."
    question = {"messages": openai_messages[:2]}
    assert (
        prompts.serving_prompt(tokenizer, conversation=question).ids
        == prompts.serving_prompt(tokenizer, conversation={**bedrock, "messages": bedrock_messages[:1]}).ids
    )
