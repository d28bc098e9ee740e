"""bedrock-runtime routes: InvokeModel, InvokeModelWithResponseStream, Converse, ConverseStream. HTTP only.

``modelId`` arrives percent-encoded (an ARN's ``:`` and ``/``); the ``path`` converter plus the fixed
suffix finds it on the decoded path.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tuneforge.api.bodies import json_object
from tuneforge.api.deps import get_bedrock_runtime
from tuneforge.api.runtime import eventstream
from tuneforge.api.runtime.protocol import request_metadata_header
from tuneforge.api.runtime.serving import BedrockRuntime, Caller

router = APIRouter()
RuntimeDep = Annotated[BedrockRuntime, Depends(get_bedrock_runtime)]
METADATA_HEADER = "x-amzn-bedrock-request-metadata"


def caller(request: Request) -> Caller:
    return Caller(request_id=request.state.request_id, identity=request.state.identity)


@router.post("/model/{model_id:path}/converse")
async def converse(model_id: str, request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    return await runtime.converse(model_id, json_object(await request.body()), caller(request))


@router.post("/model/{model_id:path}/converse-stream")
async def converse_stream(model_id: str, request: Request, runtime: RuntimeDep) -> StreamingResponse:
    frames = await runtime.converse_stream(model_id, json_object(await request.body()), caller(request))
    return StreamingResponse(frames, media_type=eventstream.CONTENT_TYPE)


@router.post("/model/{model_id:path}/invoke")
async def invoke_model(model_id: str, request: Request, runtime: RuntimeDep) -> Response:
    body, headers = await runtime.invoke(
        model_id,
        json_object(await request.body()),
        caller(request),
        request_metadata_header(request.headers.get(METADATA_HEADER)),
    )
    return JSONResponse(body, headers=headers)


@router.post("/model/{model_id:path}/invoke-with-response-stream")
async def invoke_model_with_response_stream(model_id: str, request: Request, runtime: RuntimeDep) -> StreamingResponse:
    frames = await runtime.invoke_stream(
        model_id,
        json_object(await request.body()),
        caller(request),
        request_metadata_header(request.headers.get(METADATA_HEADER)),
    )
    return StreamingResponse(
        frames,
        media_type=eventstream.CONTENT_TYPE,
        headers={"X-Amzn-Bedrock-Content-Type": "application/json"},
    )
