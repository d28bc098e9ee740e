"""The replica-to-replica endpoint: inference forwarded by another API replica to the one serving the model.

Only :class:`~tuneforge.api.edge.Edge` lets a request in here, and only with the replica credential
(``x-tuneforge-replica-secret``, compared in constant time); the body is the caller's resolved
``modelId``, surface and engine request, the answer is the engine's events as JSON lines, with a
``forwarded_error`` event carrying a ServiceError's AWS name and message (see
:func:`tuneforge.serving.runtime.forwarded_events`, the calling side).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from tuneforge.api.bodies import json_object
from tuneforge.errors import ServiceError
from tuneforge.serving.metrics import Api
from tuneforge.serving.protocol import GenerationRequest
from tuneforge.serving.runtime import FORWARD_PATH, FORWARDED_ERROR, RuntimeService

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)


@router.post(FORWARD_PATH)
async def forwarded_generate(request: Request) -> StreamingResponse:
    runtime: RuntimeService = request.app.state.runtime
    body = json_object(await request.body())
    api: Api = "openai" if body.get("api") == "openai" else "bedrock"

    async def lines() -> AsyncIterator[str]:
        try:
            target = runtime.resolve(str(body.get("model_id", "")))
            engine_request = GenerationRequest.from_json(dict(body.get("request") or {}))
            async for event in runtime.generate(target, engine_request, api, forwarded=True):
                yield json.dumps(event) + "\n"
        except ServiceError as exc:
            yield error_line(exc.code, exc.message)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("a forwarded request was malformed: %s", exc)
            yield error_line("ValidationException", f"The forwarded request was malformed: {exc}")

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def error_line(code: str, message: str) -> str:
    event: dict[str, Any] = {"event": FORWARDED_ERROR, "code": code, "message": message}
    return json.dumps(event) + "\n"
