"""OpenAI-compatible request and response shapes (what the ``openai`` SDK sends and reads).

Every request member OpenAI documents is either honoured, accepted because it cannot change the
output (``user``, ``metadata``, ``store``, ``service_tier``, ``prompt_cache_key``,
``safety_identifier``, ``parallel_tool_calls``), or refused with a 400 whose ``param`` names it;
members OpenAI does not document are refused as OpenAI refuses them ("Unrecognized request argument
supplied"). Nothing is silently dropped. Errors use OpenAI's envelope
``{"error": {"message", "type", "param", "code"}}`` so the SDK raises its own exception classes.
"""

from __future__ import annotations

import time
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuneforge.api.runtime.protocol import Sampling
from tuneforge.errors import ServiceError
from tuneforge.jobs.openai_files import ObjectNotFound
from tuneforge.serving.conversation import Conversation, check_conversation
from tuneforge.serving.runtime import InvalidParameter, UnknownModel

FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}
MAX_N = 8
"""Choices one request may ask for: each is a full generation on the engine."""
SEED_RANGE = 2**63
"""OpenAI takes any integer seed; the engines' generators take [0, 2**63): seeds map there by modulo."""

_ERROR_TYPES: dict[str, tuple[int, str, str | None]] = {
    "ValidationException": (400, "invalid_request_error", None),
    "ResourceNotFoundException": (404, "invalid_request_error", "model_not_found"),
    "AccessDeniedException": (401, "authentication_error", "invalid_api_key"),
    "ModelNotReadyException": (503, "server_error", "model_not_ready"),
    "ThrottlingException": (429, "rate_limit_error", None),
    "ServiceQuotaExceededException": (429, "rate_limit_error", None),
}


def error_body(message: str, error_type: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def service_error(exc: ServiceError) -> tuple[int, dict[str, Any]]:
    """An AWS-style service error as OpenAI's status and envelope."""
    if isinstance(exc, ObjectNotFound):
        return 404, error_body(exc.message, "invalid_request_error")
    if isinstance(exc, UnknownModel):
        message = f"The model `{exc.model_id}` does not exist or you do not have access to it."
        return 404, error_body(message, "invalid_request_error", "model_not_found", "model")
    status, error_type, code = _ERROR_TYPES.get(exc.code, (500, "server_error", None))
    param = exc.param if isinstance(exc, InvalidParameter) else None
    if code == "model_not_found":
        param = "model"
    return status, error_body(exc.message, error_type, code, param)


R = TypeVar("R", bound=BaseModel)


def parse_request(model: type[R], body: dict[str, Any]) -> R:
    """``body`` as ``model``; the first problem as an InvalidParameter naming its top-level member."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = str(first["loc"][0]) if first["loc"] else ""
        where = ".".join(str(part) for part in first["loc"])
        if first["type"] == "extra_forbidden":
            raise InvalidParameter(f"Unrecognized request argument supplied: {where}", param) from None
        raise InvalidParameter(f"Invalid value for '{where}': {first['msg']}", param) from None


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Lenient(BaseModel):
    """Nested objects whose unknown members cannot change the output (e.g. ``stream_options``)."""

    model_config = ConfigDict(extra="ignore")


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class StreamOptions(_Lenient):
    include_usage: bool = False


class JsonSchemaFormat(_Request):
    name: str = Field(min_length=1, max_length=64)
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def for_engine(self) -> dict[str, Any] | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return {"type": "json_object"}
        if self.json_schema is None:
            raise InvalidParameter("response_format.json_schema is required for type 'json_schema'", "response_format")
        return {"type": "json_schema", "schema": self.json_schema.schema_}


_UNSUPPORTED = {
    "audio": "audio output",
    "prediction": "predicted outputs",
    "reasoning_effort": "reasoning",
    "verbosity": "verbosity",
    "web_search_options": "web search",
    "functions": "function calling (its chat template has no tool support)",
    "function_call": "function calling (its chat template has no tool support)",
    "suffix": "suffix (insertion)",
}


class _Sampling(_Request):
    model: str = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=MAX_N)
    seed: int | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    # Accepted and ignored: they cannot change the output.
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    # Refused when given (see _UNSUPPORTED).
    audio: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    web_search_options: Any = None
    functions: Any = None
    function_call: Any = None
    suffix: Any = None

    def check(self) -> None:
        """Refuse, by name, what tuneforge cannot honour."""
        for member, what in _UNSUPPORTED.items():
            if getattr(self, member, None) is not None:
                raise InvalidParameter(f"'{member}' is not supported: this model does not do {what}.", member)
        self.token_biases()
        if self.stream and self.n > 1:
            raise InvalidParameter("Streaming is supported for n=1 only; send n=1 or stream=false.", "n")
        self.stops()

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if len(stops) > 4 or not all(stops):
            raise InvalidParameter("'stop' takes up to 4 non-empty sequences", "stop")
        return stops

    def token_biases(self) -> dict[int, float] | None:
        """``logit_bias`` keyed by token id (the model's own vocabulary; the engine checks the range)."""
        if not self.logit_bias:
            return None
        biases: dict[int, float] = {}
        for key, bias in self.logit_bias.items():
            if not key.isdigit() or not -100 <= bias <= 100:
                raise InvalidParameter(
                    f"logit_bias maps token ids to biases between -100 and 100; got {key!r}: {bias}", "logit_bias"
                )
            biases[int(key)] = bias
        return biases

    def sampling(self, max_tokens: int | None, **extra: Any) -> Sampling:
        return Sampling(
            max_tokens=max_tokens,
            temperature=self.temperature or 0.0,
            top_p=self.top_p or 1.0,
            stop=self.stops(),
            seed=None if self.seed is None else self.seed % SEED_RANGE,
            frequency_penalty=self.frequency_penalty or 0.0,
            presence_penalty=self.presence_penalty or 0.0,
            logit_bias=self.token_biases(),
            **extra,
        )


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    modalities: list[Literal["text"]] | None = None

    def check(self) -> None:
        super().check()
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidParameter("'top_logprobs' requires 'logprobs' to be true.", "top_logprobs")
        if self.tool_choice is not None and not self.tools:
            raise InvalidParameter("'tool_choice' is only allowed when 'tools' are specified.", "tool_choice")

    def conversation(self) -> Conversation:
        """The messages as a Converse conversation; empty system messages say nothing and are left out."""
        system = [{"text": m.text()} for m in self.messages if m.role in ("system", "developer") and m.text()]
        messages = [
            {"role": m.role, "content": [{"text": m.text()}]} for m in self.messages if m.role in ("user", "assistant")
        ]
        return check_conversation(system, messages)

    def to_sampling(self) -> Sampling:
        return self.sampling(
            self.max_completion_tokens or self.max_tokens,
            logprobs=(self.top_logprobs or 0) if self.logprobs else None,
            response_format=self.response_format.for_engine() if self.response_format else None,
        )


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int = Field(default=16, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False
    best_of: int | None = Field(default=None, ge=1, le=MAX_N)

    def check(self) -> None:
        super().check()
        if self.stream and self.echo and self.logprobs is not None:
            raise InvalidParameter(
                "'echo' with 'logprobs' is supported without streaming only; send stream=false.", "echo"
            )
        if self.best_of is not None and self.best_of != self.n:
            raise InvalidParameter("'best_of' is supported only equal to 'n' (no server-side ranking).", "best_of")

    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise InvalidParameter("tuneforge completes one prompt per request", "prompt")
        return self.prompt[0]

    def to_sampling(self) -> Sampling:
        return self.sampling(
            self.max_tokens, logprobs=self.logprobs, prompt_logprobs=self.echo and self.logprobs is not None
        )


def usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": input_tokens,
        "completion_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
    }


def total_usage(ends: list[dict[str, Any]]) -> dict[str, int]:
    """One prompt, however many choices: OpenAI counts its tokens once and every choice's output."""
    return usage(ends[0]["input_tokens"], sum(int(end["output_tokens"]) for end in ends))


def chat_logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    return None if entries is None else {"content": entries, "refusal": None}


def completion_logprobs(entries: list[dict[str, Any]] | None, offset: int = 0) -> dict[str, Any] | None:
    """Completions' legacy shape; ``offset`` is where the first token's text starts in the choice's text."""
    if entries is None:
        return None
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry["token"])
    return {
        "tokens": [entry["token"] for entry in entries],
        "token_logprobs": [entry["logprob"] for entry in entries],
        "top_logprobs": [{top["token"]: top["logprob"] for top in entry["top_logprobs"]} for entry in entries],
        "text_offset": offsets,
    }


def chat_completion(request_id: str, model: str, ends: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": end["text"]},
                "finish_reason": FINISH_REASONS[end["stop_reason"]],
                "logprobs": chat_logprobs(end.get("logprobs")),
            }
            for index, end in enumerate(ends)
        ],
        "usage": total_usage(ends),
    }


def chat_chunk(
    request_id: str,
    model: str,
    delta: dict[str, str],
    finish_reason: str | None = None,
    logprobs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": chat_logprobs(logprobs)}],
    }


def usage_chunk(request_id: str, model: str, obj: str, end: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": usage(end["input_tokens"], end["output_tokens"]),
    }


def completion_choice(
    index: int, text: str, finish_reason: str | None, logprobs: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": logprobs}


def completion(request_id: str, model: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": f"cmpl-{request_id}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
