"""The work behind the OpenAI-compatible routes, over the same engines as the Bedrock runtime.

``model`` takes what Bedrock's ``modelId`` takes: a provisioned throughput's name or ARN, or a
foundation model id for on-demand inference. Chat messages are checked and rendered exactly like
Converse messages (``system``/``developer`` messages become the system prompt). Streams are
server-sent events (``data: {...}``, then ``data: [DONE]``).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from tuneforge.api.openai.protocol import (
    FINISH_REASONS,
    ChatCompletionRequest,
    CompletionRequest,
    chat_chunk,
    chat_completion,
    completion,
    service_error,
    usage,
    usage_chunk,
)
from tuneforge.api.runtime.protocol import Sampling
from tuneforge.api.runtime.serving import Caller, Generation, Inference
from tuneforge.errors import ServiceError
from tuneforge.serving.runtime import collect
from tuneforge.serving.throughput import ThroughputService


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode("utf-8") + b"\n\n"


DONE = b"data: [DONE]\n\n"


def _sampling(request: ChatCompletionRequest | CompletionRequest, max_tokens: int | None) -> Sampling:
    return Sampling(
        max_tokens=max_tokens,
        temperature=request.temperature or 0.0,
        top_p=request.top_p or 1.0,
        stop=request.stops(),
        seed=request.seed,
    )


class OpenAIServing:
    def __init__(self, inference: Inference, throughput: ThroughputService) -> None:
        self.inference = inference
        self.throughput = throughput

    def models(self) -> dict[str, Any]:
        """On-demand foundation models by id, and live provisioned throughputs by name."""
        created = int(time.time())
        data = [
            {"id": m.model_id, "object": "model", "created": created, "owned_by": m.provider}
            for m in self.throughput.catalog.all()
            if "ON_DEMAND" in m.inference_types
        ]
        data += [
            {"id": row.name, "object": "model", "created": int(row.created_at.timestamp()), "owned_by": "tuneforge"}
            for row in self.throughput.live()
        ]
        return {"object": "list", "data": data}

    # -- chat -----------------------------------------------------------------------------------

    async def chat(self, request: ChatCompletionRequest, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        generation = await self._start_chat(request, stream=False)
        end = await collect(generation.events)
        response = chat_completion(caller.request_id, request.model, end)
        await self.inference.log("OpenAI.ChatCompletions", generation, caller, body, response, end)
        return response

    async def chat_stream(
        self, request: ChatCompletionRequest, body: dict[str, Any], caller: Caller
    ) -> AsyncIterator[bytes]:
        generation = await self._start_chat(request, stream=True)
        return self._chat_events(generation, request, body, caller)

    async def _start_chat(self, request: ChatCompletionRequest, *, stream: bool) -> Generation:
        max_tokens = request.max_completion_tokens or request.max_tokens
        return await self.inference.start(
            request.model,
            _sampling(request, max_tokens),
            stream=stream,
            conversation=request.conversation(),
            max_tokens_member="max_tokens",
            api="openai",
        )

    async def _chat_events(
        self, generation: Generation, request: ChatCompletionRequest, body: dict[str, Any], caller: Caller
    ) -> AsyncIterator[bytes]:
        rid, model = caller.request_id, request.model
        yield _sse(chat_chunk(rid, model, {"role": "assistant", "content": ""}))
        end: dict[str, Any] | None = None
        try:
            async for event in generation.events:
                if event["event"] == "text":
                    yield _sse(chat_chunk(rid, model, {"content": event["text"]}))
                elif event["event"] == "end":
                    end = event
        except ServiceError as exc:
            yield _sse(service_error(exc)[1])
            return
        finally:
            await generation.events.aclose()
        assert end is not None
        yield _sse(chat_chunk(rid, model, {}, FINISH_REASONS[end["stop_reason"]]))
        if request.stream_options and request.stream_options.include_usage:
            yield _sse(usage_chunk(f"chatcmpl-{rid}", model, "chat.completion.chunk", end))
        yield DONE
        response = chat_completion(rid, model, end)
        await self.inference.log("OpenAI.ChatCompletions", generation, caller, body, response, end)

    # -- completions ----------------------------------------------------------------------------

    async def complete(self, request: CompletionRequest, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        generation = await self._start_completion(request, stream=False)
        end = await collect(generation.events)
        response = completion(caller.request_id, request.model, end["text"], FINISH_REASONS[end["stop_reason"]])
        response["usage"] = usage(end["input_tokens"], end["output_tokens"])
        await self.inference.log("OpenAI.Completions", generation, caller, body, response, end)
        return response

    async def complete_stream(
        self, request: CompletionRequest, body: dict[str, Any], caller: Caller
    ) -> AsyncIterator[bytes]:
        generation = await self._start_completion(request, stream=True)
        return self._completion_events(generation, request, body, caller)

    async def _start_completion(self, request: CompletionRequest, *, stream: bool) -> Generation:
        return await self.inference.start(
            request.model,
            _sampling(request, request.max_tokens),
            stream=stream,
            prompt=request.prompt_text(),
            max_tokens_member="max_tokens",
            api="openai",
        )

    async def _completion_events(
        self, generation: Generation, request: CompletionRequest, body: dict[str, Any], caller: Caller
    ) -> AsyncIterator[bytes]:
        rid, model = caller.request_id, request.model
        end: dict[str, Any] | None = None
        try:
            async for event in generation.events:
                if event["event"] == "text":
                    yield _sse(completion(rid, model, event["text"], None))
                elif event["event"] == "end":
                    end = event
        except ServiceError as exc:
            yield _sse(service_error(exc)[1])
            return
        finally:
            await generation.events.aclose()
        assert end is not None
        yield _sse(completion(rid, model, "", FINISH_REASONS[end["stop_reason"]]))
        if request.stream_options and request.stream_options.include_usage:
            yield _sse(usage_chunk(f"cmpl-{rid}", model, "text_completion", end))
        yield DONE
        response = completion(rid, model, end["text"], FINISH_REASONS[end["stop_reason"]])
        response["usage"] = usage(end["input_tokens"], end["output_tokens"])
        await self.inference.log("OpenAI.Completions", generation, caller, body, response, end)
