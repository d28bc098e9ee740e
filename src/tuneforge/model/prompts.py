"""Prompt rendering: how a record or a request becomes the text and token ids a model sees.

Training and serving both call these, so a model is served exactly as it was trained.

Prompt/completion records train on ``<bos> prompt completion <eos>`` with the
loss on ``completion <eos>`` only. Conversation records (``bedrock-conversation-2024``) are rendered
with one fixed plain-text template::

    System: {system}\\n
    User: {user text}\\nAssistant: {assistant text}\\n
    User: {user text}\\nAssistant: {assistant text}<eos>

The loss covers each assistant text with its terminator: ``<eos>`` after the last turn, a newline
after earlier turns, because that is how an earlier turn appears in the prompt at inference time.
So :func:`render_prompt` (used by serving) always yields an exact prefix of a training sequence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase


def _text(blocks: Sequence[Mapping[str, Any]]) -> str:
    return "\n".join(str(block["text"]) for block in blocks if "text" in block)


def conversation_segments(record: Mapping[str, Any]) -> list[tuple[str, bool]]:
    """(text, trained_on) pieces of a conversation, in order; see the module docstring."""
    segments: list[tuple[str, bool]] = []
    system = _text(record.get("system") or [])
    if system:
        segments.append((f"System: {system}\n", False))
    messages = list(record["messages"])
    for index, message in enumerate(messages):
        text = _text(message["content"])
        if message["role"] == "user":
            segments.append((f"User: {text}\nAssistant:", False))
        else:
            terminator = "" if index == len(messages) - 1 else "\n"
            segments.append((f" {text}{terminator}", True))
    return segments


def render_prompt(record_or_messages: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> str:
    """The text a model continues to answer: the same rendering for training and serving.

    Accepts a prompt/completion record (returns its prompt), a conversation record or a Converse
    request body (``{"system": [...], "messages": [...]}``), or a bare list of messages. A trailing
    assistant message is treated as the expected answer and left out.
    """
    if isinstance(record_or_messages, Mapping) and "prompt" in record_or_messages:
        return str(record_or_messages["prompt"])
    if isinstance(record_or_messages, Mapping):
        conversation: Mapping[str, Any] = record_or_messages
    else:
        conversation = {"messages": list(record_or_messages)}
    messages = list(conversation["messages"])
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    segments = conversation_segments({"system": conversation.get("system"), "messages": messages})
    return "".join(text for text, _ in segments)


def expected_answer(record: Mapping[str, Any]) -> str:
    """The completion, or the final assistant message of a conversation record."""
    if "completion" in record:
        return str(record["completion"])
    return _text(record["messages"][-1]["content"])


def encode_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """``<bos>`` (when the tokenizer has one) + the text's tokens, as training and serving both see it.

    Adding ``<bos>`` here rather than through the tokenizer's post-processor keeps user models whose
    tokenizer appends ``<eos>`` to every encoding from closing the prompt.
    """
    ids: list[int] = tokenizer.encode(text, add_special_tokens=False)
    return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + ids
