"""OpenAI-compatible routes: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``. HTTP only."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from tuneforge.api.deps import get_openai
from tuneforge.api.openai.protocol import ChatCompletionRequest, CompletionRequest
from tuneforge.api.openai.serving import OpenAIServing
from tuneforge.api.runtime.protocol import json_object
from tuneforge.api.runtime.routes import caller
from tuneforge.errors import ValidationException

router = APIRouter(prefix="/v1")
ServingDep = Annotated[OpenAIServing, Depends(get_openai)]
SSE = "text/event-stream"


def _parse(model: type[ChatCompletionRequest] | type[CompletionRequest], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValidationException(f"Invalid value for '{where}': {first['msg']}") from None


@router.get("/models")
def list_models(serving: ServingDep) -> dict[str, Any]:
    return serving.models()


@router.post("/chat/completions", response_model=None)
async def chat_completions(request: Request, serving: ServingDep) -> dict[str, Any] | StreamingResponse:
    body = json_object(await request.body())
    parsed: ChatCompletionRequest = _parse(ChatCompletionRequest, body)
    if parsed.stream:
        return StreamingResponse(await serving.chat_stream(parsed, body, caller(request)), media_type=SSE)
    return await serving.chat(parsed, body, caller(request))


@router.post("/completions", response_model=None)
async def completions(request: Request, serving: ServingDep) -> dict[str, Any] | StreamingResponse:
    body = json_object(await request.body())
    parsed: CompletionRequest = _parse(CompletionRequest, body)
    if parsed.stream:
        return StreamingResponse(await serving.complete_stream(parsed, body, caller(request)), media_type=SSE)
    return await serving.complete(parsed, body, caller(request))
