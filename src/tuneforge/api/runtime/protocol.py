"""bedrock-runtime wire shapes: Converse and the native InvokeModel body, in and out.

**Native InvokeModel body** (Llama-style, for every model tuneforge serves)::

    request  {"prompt": str, "max_gen_len": int, "temperature": float, "top_p": float}
    response {"generation": str, "prompt_token_count": int, "generation_token_count": int,
              "stop_reason": "stop" | "length"}

``prompt`` is continued verbatim (no chat template: use Converse for conversations).
``max_gen_len`` defaults to the model's maximum output; ``temperature`` defaults to 0 (greedy,
deterministic; Bedrock's Llama defaults to 0.5), ``top_p`` to 1. Stream chunks carry the same keys
with the text generated since the previous chunk; the last one has ``stop_reason`` and
``amazon-bedrock-invocationMetrics``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tuneforge.api.bedrock.schemas import Checker
from tuneforge.errors import ValidationException, constraint_errors
from tuneforge.serving.conversation import Conversation, check_conversation, text_blocks
from tuneforge.serving.protocol import StopReason

NATIVE_STOP_REASONS: dict[str, str] = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}
MAX_STOP_SEQUENCES = 2500


@dataclass(frozen=True)
class Sampling:
    max_tokens: int | None
    """None: the model's maximum output."""
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    """Makes sampling (temperature > 0) repeatable; OpenAI's ``seed``."""


@dataclass(frozen=True)
class ConverseInput:
    conversation: Conversation
    sampling: Sampling
    request_metadata: dict[str, str] | None


def json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise ValidationException("The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ValidationException("The request body must be a JSON object")
    return body


def _number(c: Checker, value: Any, member: str, low: float, high: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        c.violations.append(f"Value '{value}' at '{member}' failed to satisfy constraint: Member must be a number")
        return None
    if not low <= value <= high:
        c.violations.append(
            f"Value '{value}' at '{member}' failed to satisfy constraint: "
            f"Member must have value between {low:g} and {high:g}"
        )
    return float(value)


def parse_converse(body: dict[str, Any]) -> ConverseInput:
    for unsupported, message in (
        ("toolConfig", "This model doesn't support tool use."),
        ("guardrailConfig", "Guardrails are not available on tuneforge."),
        ("promptVariables", "Prompt resources are not available on tuneforge."),
    ):
        if body.get(unsupported) is not None:
            raise ValidationException(message)
    system = text_blocks(body.get("system") or [], "system")
    conversation = check_conversation(system, body.get("messages"))
    config = body.get("inferenceConfig") or {}
    if not isinstance(config, dict):
        raise constraint_errors(["Value at 'inferenceConfig' failed to satisfy constraint: Member must be a structure"])
    c = Checker()
    max_tokens = c.integer(config.get("maxTokens"), "inferenceConfig.maxTokens", 1)
    temperature = _number(c, config.get("temperature"), "inferenceConfig.temperature", 0, 1)
    top_p = _number(c, config.get("topP"), "inferenceConfig.topP", 0, 1)
    stops = config.get("stopSequences") or []
    if not isinstance(stops, list) or len(stops) > MAX_STOP_SEQUENCES:
        c.violations.append(
            "Value at 'inferenceConfig.stopSequences' failed to satisfy constraint: "
            f"Member must be a list of at most {MAX_STOP_SEQUENCES} strings"
        )
        stops = []
    for i, stop in enumerate(stops):
        if not isinstance(stop, str) or not stop:
            c.violations.append(
                f"Value '{stop}' at 'inferenceConfig.stopSequences.{i + 1}.member' failed to satisfy constraint: "
                "Member must have length greater than or equal to 1"
            )
    metadata = body.get("requestMetadata")
    if metadata is not None and (
        not isinstance(metadata, dict)
        or not 1 <= len(metadata) <= 16
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        c.violations.append(
            "Value at 'requestMetadata' failed to satisfy constraint: Member must be a map of 1 to 16 strings"
        )
    c.raise_if_any()
    return ConverseInput(
        conversation=conversation,
        sampling=Sampling(
            max_tokens=max_tokens,
            temperature=0.0 if temperature is None else temperature,
            top_p=1.0 if top_p is None else top_p,
            stop=tuple(stops),
        ),
        request_metadata=metadata,
    )


def converse_response(
    text: str, stop_reason: StopReason, input_tokens: int, output_tokens: int, latency_ms: int
) -> dict[str, Any]:
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": stop_reason,
        "usage": usage(input_tokens, output_tokens),
        "metrics": {"latencyMs": latency_ms},
    }


def usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {"inputTokens": input_tokens, "outputTokens": output_tokens, "totalTokens": input_tokens + output_tokens}


@dataclass(frozen=True)
class NativeInput:
    prompt: str
    sampling: Sampling


def parse_native(body: dict[str, Any]) -> NativeInput:
    c = Checker()
    prompt = c.string(body, "prompt", required=True, min_len=1, max_len=1_000_000)
    max_tokens = c.integer(body.get("max_gen_len"), "max_gen_len", 1)
    temperature = _number(c, body.get("temperature"), "temperature", 0, 1)
    top_p = _number(c, body.get("top_p"), "top_p", 0, 1)
    c.raise_if_any()
    assert prompt is not None
    return NativeInput(
        prompt=prompt,
        sampling=Sampling(
            max_tokens=max_tokens,
            temperature=0.0 if temperature is None else temperature,
            top_p=1.0 if top_p is None else top_p,
        ),
    )


def native_response(text: str, stop_reason: StopReason, input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "generation": text,
        "prompt_token_count": input_tokens,
        "generation_token_count": output_tokens,
        "stop_reason": NATIVE_STOP_REASONS[stop_reason],
    }


def request_metadata_header(value: str | None) -> dict[str, str] | None:
    """``X-Amzn-Bedrock-Request-Metadata``: a JSON map of strings."""
    if not value:
        return None
    try:
        data = json.loads(value)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValidationException("X-Amzn-Bedrock-Request-Metadata must be a JSON object of string values")
    return data
