"""Distillation from production traffic: invocation-log records -> conversation training records.

A DISTILLATION job may take ``trainingDataConfig.invocationLogsConfig`` instead of a JSONL file, as on
Bedrock. Each logged call (see docs/serving.md for the log format) becomes one
``bedrock-conversation-2024`` record:

- Converse and OpenAI chat calls keep their messages (``system`` entries become the system prompt);
  InvokeModel / completion calls become one user turn holding the request's ``prompt``.
- ``usePromptResponse=true`` appends the logged answer as the assistant's golden response, which the
  distillation recipe trains on as is; ``false`` (Bedrock's default) keeps prompts only, so the
  teacher answers them again.
- ``requestMetadataFilters`` select calls by their ``requestMetadata``: ``equals`` / ``notEquals`` (one
  pair) or ``andAll`` / ``orAll`` over such pairs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def matches(filters: Mapping[str, Any] | None, metadata: Mapping[str, str] | None) -> bool:
    if not filters:
        return True
    metadata = metadata or {}
    if "equals" in filters:
        return all(metadata.get(k) == v for k, v in filters["equals"].items())
    if "notEquals" in filters:
        return all(metadata.get(k) != v for k, v in filters["notEquals"].items())
    if "andAll" in filters:
        return all(matches(f, metadata) for f in filters["andAll"])
    if "orAll" in filters:
        return any(matches(f, metadata) for f in filters["orAll"])
    raise ValueError(f"unknown requestMetadataFilters operator in {dict(filters)}")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(block["text"]) for block in content if isinstance(block, Mapping) and "text" in block)
    return ""


def _answer(record: Mapping[str, Any]) -> str:
    extension = record.get("tuneforge") or {}
    if isinstance(extension.get("completion"), str):
        return str(extension["completion"])
    body = (record.get("output") or {}).get("outputBodyJson") or {}
    message = (body.get("output") or {}).get("message") or {}
    if message:
        return _text(message.get("content"))
    choices = body.get("choices") or []
    if choices:
        return str(choices[0].get("message", {}).get("content") or choices[0].get("text") or "")
    return str(body.get("generation") or "")


def conversation_from_log(record: Mapping[str, Any], use_prompt_response: bool) -> dict[str, Any] | None:
    """One log record as a conversation record, or None when it holds no user text."""
    body = (record.get("input") or {}).get("inputBodyJson") or {}
    system = [_text(block.get("text")) for block in body.get("system") or [] if isinstance(block, Mapping)]
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("messages"), list):
        for message in body["messages"]:
            role, text = message.get("role"), _text(message.get("content"))
            if role == "system":
                system.append(text)
            elif role in ("user", "assistant") and text:
                messages.append({"role": role, "content": [{"text": text}]})
    elif isinstance(body.get("prompt"), str) and body["prompt"]:
        messages.append({"role": "user", "content": [{"text": body["prompt"]}]})
    while messages and messages[-1]["role"] == "assistant":
        messages.pop()
    if not messages:
        return None
    if use_prompt_response:
        answer = _answer(record)
        if answer:
            messages.append({"role": "assistant", "content": [{"text": answer}]})
    conversation: dict[str, Any] = {"schemaVersion": "bedrock-conversation-2024", "messages": messages}
    if any(system):
        conversation["system"] = [{"text": "\n".join(s for s in system if s)}]
    return conversation


def training_records(
    log_records: Iterable[Mapping[str, Any]], config: Mapping[str, Any], limit: int
) -> list[dict[str, Any]]:
    """The conversation records an ``invocationLogsConfig`` selects, at most ``limit`` of them."""
    use_prompt_response = bool(config.get("usePromptResponse", False))
    filters = config.get("requestMetadataFilters")
    out: list[dict[str, Any]] = []
    for record in log_records:
        if not matches(filters, record.get("requestMetadata")):
            continue
        conversation = conversation_from_log(record, use_prompt_response)
        if conversation is not None:
            out.append(conversation)
        if len(out) >= limit:
            break
    return out
