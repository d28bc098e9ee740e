"""OpenAI-compatible request and response shapes (the subset the ``openai`` SDK sends and reads).

Requests are pydantic models that ignore fields tuneforge does not use (``user``, ``logit_bias``,
...) and refuse values it cannot honour (``n`` > 1, non-text content). Errors use OpenAI's envelope
``{"error": {"message", "type", "param", "code"}}`` so the SDK raises its own exception classes.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tuneforge.errors import ServiceError, ValidationException
from tuneforge.serving.conversation import Conversation, check_conversation

FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}

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
    status, error_type, code = _ERROR_TYPES.get(exc.code, (500, "server_error", None))
    return status, error_body(exc.message, error_type, code)


class _Request(BaseModel):
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


class StreamOptions(_Request):
    include_usage: bool = False


class _Sampling(_Request):
    model: str = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1, description="tuneforge returns one choice")
    seed: int | None = None

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if len(stops) > 4 or not all(stops):
            raise ValidationException("'stop' takes up to 4 non-empty sequences")
        return stops


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def conversation(self) -> Conversation:
        system = [{"text": m.text()} for m in self.messages if m.role in ("system", "developer")]
        messages = [
            {"role": m.role, "content": [{"text": m.text()}]} for m in self.messages if m.role in ("user", "assistant")
        ]
        return check_conversation(system, messages)


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int = Field(default=16, ge=1)

    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise ValidationException("tuneforge completes one prompt per request")
        return self.prompt[0]


def usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": input_tokens,
        "completion_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
    }


def chat_completion(request_id: str, model: str, end: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": end["text"]},
                "finish_reason": FINISH_REASONS[end["stop_reason"]],
                "logprobs": None,
            }
        ],
        "usage": usage(end["input_tokens"], end["output_tokens"]),
    }


def chat_chunk(request_id: str, model: str, delta: dict[str, str], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
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


def completion(request_id: str, model: str, text: str, finish_reason: str | None) -> dict[str, Any]:
    return {
        "id": f"cmpl-{request_id}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}],
    }
