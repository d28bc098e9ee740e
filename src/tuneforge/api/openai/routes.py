"""OpenAI-compatible routes: ``/v1/models`` (and one by id), ``/v1/chat/completions``, ``/v1/completions``.

HTTP only."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from tuneforge.api.bodies import json_object
from tuneforge.api.deps import get_openai
from tuneforge.api.openai.protocol import ChatCompletionRequest, CompletionRequest, parse_request
from tuneforge.api.openai.serving import OpenAIServing
from tuneforge.api.runtime.routes import caller

router = APIRouter(prefix="/v1")
ServingDep = Annotated[OpenAIServing, Depends(get_openai)]
SSE = "text/event-stream"


@router.get("/models")
def list_models(serving: ServingDep) -> dict[str, Any]:
    return serving.models()


@router.get("/models/{model_id:path}")
def retrieve_model(model_id: str, serving: ServingDep) -> dict[str, Any]:
    return serving.model(model_id)


@router.post("/chat/completions", response_model=None)
async def chat_completions(request: Request, serving: ServingDep) -> dict[str, Any] | StreamingResponse:
    body = json_object(await request.body())
    parsed = parse_request(ChatCompletionRequest, body)
    if parsed.stream:
        return StreamingResponse(await serving.chat_stream(parsed, body, caller(request)), media_type=SSE)
    return await serving.chat(parsed, body, caller(request))


@router.post("/completions", response_model=None)
async def completions(request: Request, serving: ServingDep) -> dict[str, Any] | StreamingResponse:
    body = json_object(await request.body())
    parsed = parse_request(CompletionRequest, body)
    if parsed.stream:
        return StreamingResponse(await serving.complete_stream(parsed, body, caller(request)), media_type=SSE)
    return await serving.complete(parsed, body, caller(request))
