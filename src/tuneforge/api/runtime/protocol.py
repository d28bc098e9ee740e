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
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuneforge.errors import ValidationException, constraint_errors
from tuneforge.serving.conversation import Conversation, check_conversation, text_blocks
from tuneforge.serving.protocol import StopReason

NATIVE_STOP_REASONS: dict[str, str] = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}
MAX_STOP_SEQUENCES = 2500
ADDITIONAL_FIELDS = ("top_k",)
"""``additionalModelRequestFields`` the engines understand; any other member is refused by name."""


@dataclass(frozen=True)
class Sampling:
    max_tokens: int | None
    """None: the model's maximum output."""
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    """Makes sampling (temperature > 0) repeatable; OpenAI's ``seed``, already within [0, 2**63)."""
    top_k: int | None = None
    logprobs: int | None = None
    """None: none; k: each output token's logprob and its k most likely alternatives."""
    prompt_logprobs: bool = False
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    """Token id (of the model's own vocabulary) -> bias added to its logit."""
    response_format: dict[str, Any] | None = None
    """``{"type": "json_object"}`` or ``{"type": "json_schema", "schema": {...}}``."""


@dataclass(frozen=True)
class ConverseInput:
    conversation: Conversation
    sampling: Sampling
    request_metadata: dict[str, str] | None
    tools: bool = False
    """The request carries a ``toolConfig`` (refused unless the model's template supports tools)."""


# -- strict wire models ---------------------------------------------------------------------------
#
# Bedrock refuses members it does not know and values of the wrong JSON type (``maxTokens: "5"``,
# ``inferenceConfig: []``); so do these models. Ranges are checked after parsing, with AWS's
# aggregate message, so that every violation is reported at once.


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _InferenceConfig(_Wire):
    """Members keep the wire's camelCase names: these models are the wire."""

    maxTokens: int | None = None
    temperature: float | None = None
    topP: float | None = None
    stopSequences: list[str] | None = None


class _Message(_Wire):
    role: str
    content: list[dict[str, Any]]


class _JsonSchema(_Wire):
    schema_: str = Field(alias="schema")
    name: str | None = None
    description: str | None = None


class _OutputStructure(_Wire):
    jsonSchema: _JsonSchema


class _OutputFormat(_Wire):
    type: str
    structure: _OutputStructure


class _OutputConfig(_Wire):
    textFormat: _OutputFormat | None = None
    effort: str | None = None


class _Converse(_Wire):
    messages: list[_Message]
    system: list[dict[str, Any]] | None = None
    inferenceConfig: _InferenceConfig | None = None
    toolConfig: dict[str, Any] | None = None
    guardrailConfig: dict[str, Any] | None = None
    projectIdentifier: str | None = None
    additionalModelRequestFields: dict[str, Any] | None = None
    promptVariables: dict[str, Any] | None = None
    additionalModelResponseFieldPaths: list[str] | None = None
    requestMetadata: dict[str, str] | None = None
    performanceConfig: dict[str, Any] | None = None
    serviceTier: dict[str, Any] | None = None
    outputConfig: _OutputConfig | None = None


class _Native(_Wire):
    prompt: str
    max_gen_len: int | None = None
    temperature: float | None = None
    top_p: float | None = None


_TYPE_NAMES = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "a boolean",
    "list_type": "a list",
    "dict_type": "a structure",
    "model_type": "a structure",
    "model_attributes_type": "a structure",
}


def _member(loc: tuple[int | str, ...]) -> str:
    """pydantic's location as AWS names members: 1-based list indexes as ``N.member``."""
    parts: list[str] = []
    for part in loc:
        parts.append(f"{part + 1}.member" if isinstance(part, int) else str(part).rstrip("_"))
    return ".".join(parts)


M = TypeVar("M", bound=BaseModel)


def parse_wire(model: type[M], body: dict[str, Any]) -> M:
    """``body`` as ``model``, or a ValidationException worded as AWS words it."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        violations: list[str] = []
        for error in exc.errors():
            member = _member(error["loc"])
            if error["type"] == "extra_forbidden":
                raise ValidationException(
                    f"Malformed input request: extraneous key [{member}] is not permitted, "
                    "please reformat your input and try again."
                ) from None
            if error["type"] == "missing":
                violations.append(f"Value null at '{member}' failed to satisfy constraint: Member must not be null")
                continue
            expected = _TYPE_NAMES.get(error["type"], "of the documented type")
            value = json.dumps(error.get("input"), default=str)[:100]
            violations.append(f"Value '{value}' at '{member}' failed to satisfy constraint: Member must be {expected}")
        raise constraint_errors(violations) from None


def _between(violations: list[str], value: float | None, member: str, low: float, high: float) -> None:
    if value is not None and not low <= value <= high:
        violations.append(
            f"Value '{value}' at '{member}' failed to satisfy constraint: "
            f"Member must have value between {low:g} and {high:g}"
        )


def _top_k(fields: dict[str, Any] | None) -> int | None:
    """``additionalModelRequestFields``: only what the engines understand; the rest is refused by name."""
    if not fields:
        return None
    for key in fields:
        if key not in ADDITIONAL_FIELDS:
            raise ValidationException(
                f"additionalModelRequestFields.{key} is not supported by this model; "
                f"supported fields: {', '.join(ADDITIONAL_FIELDS)}."
            )
    top_k = fields.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise constraint_errors(
            [
                f"Value '{top_k}' at 'additionalModelRequestFields.top_k' failed to satisfy constraint: "
                "Member must be an integer greater than or equal to 1"
            ]
        )
    return top_k


def _response_format(config: _OutputConfig | None) -> dict[str, Any] | None:
    """Converse's ``outputConfig.textFormat`` as the engines' ``response_format`` (a JSON schema)."""
    if config is None:
        return None
    if config.effort is not None:
        raise ValidationException("outputConfig.effort is not supported: tuneforge's models do not reason.")
    if config.textFormat is None:
        return None
    if config.textFormat.type != "json_schema":
        raise constraint_errors(
            [
                f"Value '{config.textFormat.type}' at 'outputConfig.textFormat.type' failed to satisfy "
                "constraint: Member must satisfy enum value set: [json_schema]"
            ]
        )
    try:
        schema = json.loads(config.textFormat.structure.jsonSchema.schema_)
    except ValueError:
        schema = None
    if not isinstance(schema, dict):
        raise ValidationException("outputConfig.textFormat.structure.jsonSchema.schema must be a JSON object schema")
    return {"type": "json_schema", "schema": schema}


def parse_converse(body: dict[str, Any]) -> ConverseInput:
    wire = parse_wire(_Converse, body)
    for value, message in (
        (wire.guardrailConfig, "Guardrails are not available on tuneforge."),
        (wire.promptVariables, "Prompt resources are not available on tuneforge."),
        (
            wire.additionalModelResponseFieldPaths,
            "additionalModelResponseFieldPaths is not supported: tuneforge's models return no additional fields.",
        ),
    ):
        if value is not None:
            raise ValidationException(message)
    system = text_blocks(wire.system or [], "system")
    conversation = check_conversation(system, [m.model_dump() for m in wire.messages])
    config = wire.inferenceConfig or _InferenceConfig()
    violations: list[str] = []
    if config.maxTokens is not None and config.maxTokens < 1:
        violations.append(
            f"Value '{config.maxTokens}' at 'inferenceConfig.maxTokens' failed to satisfy constraint: "
            "Member must have value greater than or equal to 1"
        )
    _between(violations, config.temperature, "inferenceConfig.temperature", 0, 1)
    _between(violations, config.topP, "inferenceConfig.topP", 0, 1)
    stops = config.stopSequences or []
    if len(stops) > MAX_STOP_SEQUENCES:
        violations.append(
            "Value at 'inferenceConfig.stopSequences' failed to satisfy constraint: "
            f"Member must have length less than or equal to {MAX_STOP_SEQUENCES}"
        )
    for i, stop in enumerate(stops):
        if not stop:
            violations.append(
                f"Value '{stop}' at 'inferenceConfig.stopSequences.{i + 1}.member' failed to satisfy constraint: "
                "Member must have length greater than or equal to 1"
            )
    metadata = wire.requestMetadata
    if metadata is not None and not 1 <= len(metadata) <= 16:
        violations.append(
            "Value at 'requestMetadata' failed to satisfy constraint: Member must be a map of 1 to 16 strings"
        )
    if violations:
        raise constraint_errors(violations)
    return ConverseInput(
        conversation=conversation,
        sampling=Sampling(
            max_tokens=config.maxTokens,
            temperature=0.0 if config.temperature is None else config.temperature,
            top_p=1.0 if config.topP is None else config.topP,
            stop=tuple(stops),
            top_k=_top_k(wire.additionalModelRequestFields),
            response_format=_response_format(wire.outputConfig),
        ),
        request_metadata=metadata,
        tools=wire.toolConfig is not None,
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
    wire = parse_wire(_Native, body)
    violations: list[str] = []
    if not wire.prompt:
        violations.append(
            "Value '' at 'prompt' failed to satisfy constraint: Member must have length greater than or equal to 1"
        )
    if wire.max_gen_len is not None and wire.max_gen_len < 1:
        violations.append(
            f"Value '{wire.max_gen_len}' at 'max_gen_len' failed to satisfy constraint: "
            "Member must have value greater than or equal to 1"
        )
    _between(violations, wire.temperature, "temperature", 0, 1)
    _between(violations, wire.top_p, "top_p", 0, 1)
    if violations:
        raise constraint_errors(violations)
    return NativeInput(
        prompt=wire.prompt,
        sampling=Sampling(
            max_tokens=wire.max_gen_len,
            temperature=0.0 if wire.temperature is None else wire.temperature,
            top_p=1.0 if wire.top_p is None else wire.top_p,
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
