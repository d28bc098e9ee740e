"""The work behind the OpenAI-compatible routes, over the same engines as the Bedrock runtime.

``model`` takes what Bedrock's ``modelId`` takes: a provisioned throughput's name or ARN, or a
foundation model id for on-demand inference. Chat messages are checked and rendered exactly like
Converse messages (``system``/``developer`` messages become the system prompt; a final assistant
message is continued, as Converse continues it). Streams are server-sent events (``data: {...}``,
then ``data: [DONE]``).

``n`` choices are ``n`` generations of the same prompt, started together so the engine batches
them; a request with a ``seed`` gives choice ``i`` the seed ``seed + i``, so choices differ when
sampling and the whole answer is still repeatable.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from tuneforge.api.openai.protocol import (
    FINISH_REASONS,
    SEED_RANGE,
    ChatCompletionRequest,
    CompletionRequest,
    chat_chunk,
    chat_completion,
    completion,
    completion_choice,
    completion_logprobs,
    service_error,
    total_usage,
    usage_chunk,
)
from tuneforge.api.runtime.protocol import Sampling
from tuneforge.api.runtime.serving import Caller, Generation, Inference
from tuneforge.errors import ServiceError
from tuneforge.jobs.openai_fine_tuning import FineTuningService
from tuneforge.serving.conversation import Conversation
from tuneforge.serving.deployments import DeploymentService
from tuneforge.serving.runtime import UnknownModel, collect
from tuneforge.serving.throughput import ThroughputService


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode("utf-8") + b"\n\n"


DONE = b"data: [DONE]\n\n"


class OpenAIServing:
    def __init__(
        self,
        inference: Inference,
        throughput: ThroughputService,
        deployments: DeploymentService | None = None,
        fine_tuning: FineTuningService | None = None,
    ) -> None:
        self.inference = inference
        self.throughput = throughput
        self.deployments = deployments
        self.fine_tuning = fine_tuning

    def models(self) -> dict[str, Any]:
        """On-demand foundation models by id, live provisioned throughputs and custom model deployments by
        name, and the models of succeeded OpenAI fine-tuning jobs by their ``fine_tuned_model``."""
        return {"object": "list", "data": [entry for entry, _ in self._entries()]}

    def model(self, model_id: str) -> dict[str, Any]:
        """One model of :meth:`models`, by its id (a deployment also by its ARN)."""
        for entry, aliases in self._entries():
            if model_id in aliases:
                return entry
        raise UnknownModel(model_id)

    def _entries(self) -> list[tuple[dict[str, Any], tuple[str, ...]]]:
        created = int(time.time())
        entries: list[tuple[dict[str, Any], tuple[str, ...]]] = [
            (
                {"id": m.model_id, "object": "model", "created": created, "owned_by": m.provider},
                (m.model_id, m.arn) if m.arn else (m.model_id,),
            )
            for m in self.throughput.catalog.all()
            if "ON_DEMAND" in m.inference_types
        ]
        entries += [
            (
                {
                    "id": row.name,
                    "object": "model",
                    "created": int(row.created_at.timestamp()),
                    "owned_by": "tuneforge",
                },
                (row.name, row.arn),
            )
            for row in self.throughput.live()
        ]
        entries += [
            (
                {
                    "id": row.name,
                    "object": "model",
                    "created": int(row.created_at.timestamp()),
                    "owned_by": "tuneforge",
                },
                (row.name, row.arn),
            )
            for row in (self.deployments.live() if self.deployments is not None else [])
        ]
        entries += [
            (
                {
                    "id": row.fine_tuned_model,
                    "object": "model",
                    "created": int(row.created_at.timestamp()),
                    "owned_by": "tuneforge",
                },
                (row.fine_tuned_model,),
            )
            for row in (self.fine_tuning.models() if self.fine_tuning is not None else [])
        ]
        return entries

    async def _start(
        self,
        request: ChatCompletionRequest | CompletionRequest,
        sampling: Sampling,
        *,
        stream: bool,
        conversation: Conversation | None = None,
        prompt: str | None = None,
        tools: bool = False,
    ) -> list[Generation]:
        """``request.n`` generations, started together; if one cannot start, none is left running."""
        request.check()

        def choice(index: int) -> Sampling:
            if sampling.seed is None or index == 0:
                return sampling
            return replace(sampling, seed=(sampling.seed + index) % SEED_RANGE)

        starts = [
            self.inference.start(
                request.model,
                choice(index),
                stream=stream,
                conversation=conversation,
                prompt=prompt,
                max_tokens_member="max_tokens",
                prompt_member="messages" if conversation is not None else "prompt",
                tools_member="tools" if tools else None,
                api="openai",
            )
            for index in range(request.n)
        ]
        results = await asyncio.gather(*starts, return_exceptions=True)
        generations = [r for r in results if isinstance(r, Generation)]
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            for generation in generations:
                await generation.events.aclose()
            raise failure
        return generations

    async def _collect(self, generations: list[Generation]) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(collect(g.events) for g in generations)))

    async def _log(
        self,
        operation: str,
        generations: list[Generation],
        caller: Caller,
        body: dict[str, Any],
        response: dict[str, Any],
        ends: list[dict[str, Any]],
    ) -> None:
        """One invocation-log record per request, with the usage of all its choices."""
        end = {**ends[0], "output_tokens": total_usage(ends)["completion_tokens"]}
        await self.inference.log(operation, generations[0], caller, body, response, end)

    # -- chat -----------------------------------------------------------------------------------

    async def _start_chat(self, request: ChatCompletionRequest, *, stream: bool) -> list[Generation]:
        return await self._start(
            request,
            request.to_sampling(),
            stream=stream,
            conversation=request.conversation(),
            tools=bool(request.tools),
        )

    async def chat(self, request: ChatCompletionRequest, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        generations = await self._start_chat(request, stream=False)
        ends = await self._collect(generations)
        response = chat_completion(caller.request_id, request.model, ends)
        await self._log("OpenAI.ChatCompletions", generations, caller, body, response, ends)
        return response

    async def chat_stream(
        self, request: ChatCompletionRequest, body: dict[str, Any], caller: Caller
    ) -> AsyncIterator[bytes]:
        (generation,) = await self._start_chat(request, stream=True)
        return self._chat_events(generation, request, body, caller)

    async def _chat_events(
        self, generation: Generation, request: ChatCompletionRequest, body: dict[str, Any], caller: Caller
    ) -> AsyncIterator[bytes]:
        rid, model = caller.request_id, request.model
        yield _sse(chat_chunk(rid, model, {"role": "assistant", "content": ""}))
        end: dict[str, Any] | None = None
        try:
            async for event in generation.events:
                if event["event"] == "text":
                    yield _sse(chat_chunk(rid, model, {"content": event["text"]}, logprobs=event.get("logprobs")))
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
        response = chat_completion(rid, model, [end])
        await self._log("OpenAI.ChatCompletions", [generation], caller, body, response, [end])

    # -- completions ----------------------------------------------------------------------------

    async def _start_completion(self, request: CompletionRequest, *, stream: bool) -> list[Generation]:
        return await self._start(request, request.to_sampling(), stream=stream, prompt=request.prompt_text())

    @staticmethod
    def _choice(request: CompletionRequest, index: int, end: dict[str, Any]) -> dict[str, Any]:
        """A choice's text and logprobs; with ``echo`` the prompt (and its token logprobs) come first."""
        prefix = request.prompt_text() if request.echo else ""
        entries = end.get("logprobs")
        if entries is not None and request.echo:
            entries = [*end.get("prompt_logprobs", []), *entries]
        return completion_choice(
            index, prefix + end["text"], FINISH_REASONS[end["stop_reason"]], completion_logprobs(entries)
        )

    async def complete(self, request: CompletionRequest, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        generations = await self._start_completion(request, stream=False)
        ends = await self._collect(generations)
        choices = [self._choice(request, index, end) for index, end in enumerate(ends)]
        response = completion(caller.request_id, request.model, choices)
        response["usage"] = total_usage(ends)
        await self._log("OpenAI.Completions", generations, caller, body, response, ends)
        return response

    async def complete_stream(
        self, request: CompletionRequest, body: dict[str, Any], caller: Caller
    ) -> AsyncIterator[bytes]:
        (generation,) = await self._start_completion(request, stream=True)
        return self._completion_events(generation, request, body, caller)

    async def _completion_events(
        self, generation: Generation, request: CompletionRequest, body: dict[str, Any], caller: Caller
    ) -> AsyncIterator[bytes]:
        rid, model = caller.request_id, request.model
        end: dict[str, Any] | None = None
        offset = 0
        if request.echo:
            prompt = request.prompt_text()
            # The prompt's logprobs arrive only with the end event: the echo chunk carries the text.
            yield _sse(completion(rid, model, [completion_choice(0, prompt, None)]))
            offset = len(prompt)
        try:
            async for event in generation.events:
                if event["event"] == "text":
                    logprobs = completion_logprobs(event.get("logprobs"), offset)
                    offset += len(event["text"])
                    yield _sse(completion(rid, model, [completion_choice(0, event["text"], None, logprobs)]))
                elif event["event"] == "end":
                    end = event
        except ServiceError as exc:
            yield _sse(service_error(exc)[1])
            return
        finally:
            await generation.events.aclose()
        assert end is not None
        yield _sse(completion(rid, model, [completion_choice(0, "", FINISH_REASONS[end["stop_reason"]])]))
        if request.stream_options and request.stream_options.include_usage:
            yield _sse(usage_chunk(f"cmpl-{rid}", model, "text_completion", end))
        yield DONE
        response = completion(rid, model, [self._choice(request, 0, end)])
        response["usage"] = total_usage([end])
        await self._log("OpenAI.Completions", [generation], caller, body, response, [end])
