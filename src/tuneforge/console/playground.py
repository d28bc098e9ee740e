"""The playground: chat with any model the runtime can invoke, streamed, one model or two side by side.

A message goes out as a ConverseStream request through the same :class:`BedrockRuntime` the
bedrock-runtime routes use, so it is checked, metered and logged (operation ``ConverseStream``)
exactly like an API call, and a refusal reads as the API's own ``ErrorCode: message``. The page's
script builds the Converse body itself (history, system prompt, ``inferenceConfig``), so every
range is checked once, by the API, with the API's words.

The AWS event stream the runtime answers with is re-read here with botocore's parser into one JSON
line per event: a browser reads lines from a fetch body with a few lines of script, binary
event-stream frames (and their CRCs) with many more.

Which models are offered is the runtime's own answer too: every candidate (foundation models,
provisioned throughputs, custom model deployments, custom models with neither) is passed to
``RuntimeService.resolve``; one it refuses is listed disabled with the refusal as its reason.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from botocore.eventstream import EventStreamBuffer
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response, StreamingResponse

from tuneforge.api.bodies import json_object
from tuneforge.api.deps import get_bedrock_runtime
from tuneforge.api.runtime.serving import BedrockRuntime, Caller
from tuneforge.catalog.custom import CustomModelFilter
from tuneforge.console.pages import ApiError, CsrfChecked, ServicesDep, render
from tuneforge.errors import ServiceError, ValidationException
from tuneforge.services import Services
from tuneforge.serving.runtime import RuntimeService

router = APIRouter()
RuntimeDep = Annotated[BedrockRuntime, Depends(get_bedrock_runtime)]
DEFAULT_MAX_TOKENS = 64
"""What the page asks for unless told otherwise: enough for a chat turn, quick on a CPU."""
STREAM_MEDIA_TYPE = "application/x-ndjson"


@dataclass(frozen=True)
class Choice:
    """One model the page offers: what the runtime calls it, and whether the runtime will answer."""

    model_id: str
    """The identifier sent as ``modelId``: a foundation model id, or a throughput's or deployment's ARN."""
    label: str
    max_tokens: int
    """The most the model can produce (the runtime's ``maxTokens`` limit); 0 when it cannot be invoked."""
    refusal: ApiError | None = None


@dataclass(frozen=True)
class Group:
    label: str
    choices: list[Choice]


def _choice(runtime: RuntimeService, model_id: str, label: str) -> Choice:
    try:
        target = runtime.resolve(model_id)
    except ServiceError as exc:
        return Choice(model_id, label, 0, ApiError.of(exc))
    return Choice(model_id, label, target.limits.max_output_tokens)


def _custom_models(services: Services) -> list[tuple[str, str]]:
    """Every custom model, as (ARN, name), all pages."""
    models: list[tuple[str, str]] = []
    after = None
    while True:
        page = services.custom_models.list_models(CustomModelFilter(sort_descending=False), after, 100)
        models += [(row.arn, row.name) for row in page.items]
        if page.next_cursor is None:
            return models
        after = page.next_cursor


def model_groups(services: Services, runtime: RuntimeService) -> list[Group]:
    """The models to chat with, grouped as the runtime serves them.

    A custom model with a live throughput or deployment is offered through those; one with neither
    is listed (disabled) so that the page says how to make it invocable.
    """
    throughputs = services.throughput.live()
    deployments = services.deployments.live()
    served = {row.model_arn for row in throughputs} | {row.model_arn for row in deployments}
    return [
        Group(
            "Foundation models (on demand)",
            [_choice(runtime, m.model_id, f"{m.name} ({m.model_id})") for m in services.catalog.all()],
        ),
        Group(
            "Provisioned throughput",
            [_choice(runtime, row.arn, f"{row.name} ({row.status})") for row in throughputs],
        ),
        Group("Custom model deployments", [_choice(runtime, row.arn, row.name) for row in deployments]),
        Group(
            "Custom models",
            [_choice(runtime, arn, name) for arn, name in _custom_models(services) if arn not in served],
        ),
    ]


@router.get("/console/playground", response_class=HTMLResponse, include_in_schema=False)
def playground(request: Request, services: ServicesDep, runtime: RuntimeDep) -> Response:
    groups = [group for group in model_groups(services, runtime.inference.runtime) if group.choices]
    choices = [choice for group in groups for choice in group.choices]
    first = next((c for c in choices if c.refusal is None), None)
    limit = first.max_tokens if first is not None else DEFAULT_MAX_TOKENS
    return render(
        request,
        "playground.html",
        groups=groups,
        refused=[choice for choice in choices if choice.refusal is not None],
        max_tokens=min(DEFAULT_MAX_TOKENS, limit),
        max_tokens_limit=limit,
    )


async def _capped_body(request: Request, cap: int) -> bytes:
    """The body, refused past ``cap`` bytes (the edge leaves console bodies to their routes)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise ValidationException(
                f"The request body is larger than this operation's limit of {cap} bytes "
                "(set by max_inference_body_bytes)"
            )
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("/console/playground/converse-stream", include_in_schema=False, dependencies=[CsrfChecked])
async def converse_stream(request: Request, services: ServicesDep, runtime: RuntimeDep) -> Response:
    """``{"modelId": ..., "request": <ConverseStream body>}`` -> the answer, one JSON event per line.

    Anything refused before the first token (an unknown or unready model, an invalid body) is a
    plain-text ``ErrorCode: message`` with the API's status; a failure mid-answer arrives as an
    ``exception`` event, as it does in the API's event stream.
    """
    try:
        body = json_object(await _capped_body(request, services.settings.max_inference_body_bytes))
        model_id, converse = body.get("modelId"), body.get("request")
        if not isinstance(model_id, str) or not model_id or not isinstance(converse, dict):
            raise ValidationException('The playground sends {"modelId": "...", "request": {...ConverseStream...}}')
        caller = Caller(request_id=request.state.request_id, identity=request.state.identity)
        frames = await runtime.converse_stream(model_id, converse, caller)
    except ServiceError as exc:
        return PlainTextResponse(str(ApiError.of(exc)), status_code=exc.status)
    return StreamingResponse(json_lines(frames), media_type=STREAM_MEDIA_TYPE)


def _event(headers: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    """An event-stream message as ``{"event": type, "data": payload}``; exceptions by their AWS name."""
    if headers.get(":message-type") == "exception":
        name = str(headers.get(":exception-type", "internalServerException"))
        return {"event": "exception", "data": {"code": name[:1].upper() + name[1:], "message": payload.get("message")}}
    return {"event": headers.get(":event-type"), "data": payload}


async def json_lines(frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    parser = EventStreamBuffer()
    async for frame in frames:
        parser.add_data(frame)
        for message in parser:
            event = _event(message.headers, json.loads(message.payload))
            yield json.dumps(event, separators=(",", ":")).encode("utf-8") + b"\n"
