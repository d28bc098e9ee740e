"""The work behind the bedrock-runtime routes: resolve, generate, shape, stream, meter and log.

Streaming responses first wait for the engine's ``start`` event, so everything that can go wrong
before the first token (unknown model, model not ready, a prompt too long for the context) is an
ordinary HTTP error with its exception type; after that, failures arrive in the stream as
event-stream exception frames, as they do from Bedrock.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from tuneforge.api.runtime import eventstream
from tuneforge.api.runtime.protocol import (
    NATIVE_STOP_REASONS,
    Sampling,
    converse_response,
    native_response,
    parse_converse,
    parse_native,
    usage,
)
from tuneforge.errors import ServiceError
from tuneforge.serving.conversation import Conversation
from tuneforge.serving.invocation_logs import InvocationLogs
from tuneforge.serving.metrics import Api
from tuneforge.serving.protocol import GenerationRequest
from tuneforge.serving.runtime import InvalidParameter, RuntimeService, Target, collect

STREAM_EXCEPTIONS = {
    "ValidationException": "validationException",
    "ThrottlingException": "throttlingException",
    "ServiceUnavailableException": "serviceUnavailableException",
    "ModelErrorException": "modelStreamErrorException",
}


@dataclass(frozen=True)
class Caller:
    """Who called, for invocation logs: the request id and the identity that signed."""

    request_id: str
    identity: str


@dataclass
class Generation:
    target: Target
    events: AsyncGenerator[dict[str, Any], None]
    start: dict[str, Any]
    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None

    def elapsed_ms(self, since: float | None = None) -> int:
        return int(((since or time.perf_counter()) - self.started) * 1000)


def prompt_chars(prompt: str | None, conversation: Conversation | None) -> int:
    if conversation is None:
        return len(prompt or "")
    blocks = [*conversation["system"], *(b for m in conversation["messages"] for b in m["content"])]
    return sum(len(block["text"]) for block in blocks)


class Inference:
    """Shared by the Bedrock runtime and the OpenAI surfaces: start a generation, log it.

    Both surfaces' requests pass the same checks here, in the same order: the prompt's size (before
    anything is resolved or tokenized, so a 50 MB prompt is refused at once), the model, ``maxTokens``,
    then what the model can do (tools).
    """

    def __init__(self, runtime: RuntimeService, logs: InvocationLogs) -> None:
        self.runtime = runtime
        self.logs = logs
        self.max_prompt_chars = runtime.manager.settings.max_prompt_chars

    async def start(
        self,
        model_id: str,
        sampling: Sampling,
        *,
        stream: bool,
        prompt: str | None = None,
        conversation: Conversation | None = None,
        max_tokens_member: str = "inferenceConfig.maxTokens",
        prompt_member: str = "messages",
        tools_member: str | None = None,
        api: Api = "bedrock",
    ) -> Generation:
        """``tools_member`` names the member that asked for tools, if the request did."""
        started = time.perf_counter()
        chars = prompt_chars(prompt, conversation)
        if chars > self.max_prompt_chars:
            raise InvalidParameter(
                f"The prompt has {chars} characters, more than the limit of {self.max_prompt_chars} "
                "(setting max_prompt_chars). Shorten the input and try again.",
                prompt_member,
            )
        target = await asyncio.to_thread(self.runtime.resolve, model_id)
        max_tokens = target.limits.max_output_tokens if sampling.max_tokens is None else sampling.max_tokens
        self.runtime.check_max_tokens(target, max_tokens, max_tokens_member)
        if tools_member is not None and not target.tool_use:
            raise InvalidParameter(
                f"This model doesn't support tool use ({tools_member}): its chat template has no tool support.",
                tools_member,
            )
        request = GenerationRequest(
            max_tokens=max_tokens,
            prompt=prompt,
            conversation=conversation,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            stop=sampling.stop,
            stream=stream,
            seed=sampling.seed,
            top_k=sampling.top_k,
            logprobs=sampling.logprobs,
            prompt_logprobs=sampling.prompt_logprobs,
            response_format=sampling.response_format,
            frequency_penalty=sampling.frequency_penalty,
            presence_penalty=sampling.presence_penalty,
            logit_bias=sampling.logit_bias,
        )
        events = self.runtime.generate(target, request, api)
        try:
            start = await anext(events)
        except BaseException:
            await events.aclose()
            raise
        return Generation(target, events, start, started)

    async def log(
        self,
        operation: str,
        generation: Generation,
        caller: Caller,
        input_body: dict[str, Any],
        output_body: dict[str, Any],
        end: dict[str, Any],
        request_metadata: dict[str, str] | None = None,
    ) -> None:
        target = generation.target
        await asyncio.to_thread(
            self.logs.record,
            operation=operation,
            model_id=target.model_id,
            request_id=caller.request_id,
            identity=caller.identity,
            input_body=input_body,
            output_body=output_body,
            input_tokens=int(end["input_tokens"]),
            output_tokens=int(end["output_tokens"]),
            request_metadata=request_metadata,
            extension={
                "prompt": generation.start.get("prompt"),
                "completion": end["text"],
                "stopReason": end["stop_reason"],
                "modelArn": target.model_arn,
                "provisionedModelArn": target.provisioned_model_arn,
                "latencyMs": generation.elapsed_ms(),
            },
        )


class BedrockRuntime:
    def __init__(self, inference: Inference) -> None:
        self.inference = inference

    # -- Converse -------------------------------------------------------------------------------

    async def converse(self, model_id: str, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        parsed = parse_converse(body)
        generation = await self.inference.start(
            model_id,
            parsed.sampling,
            stream=False,
            conversation=parsed.conversation,
            tools_member="toolConfig" if parsed.tools else None,
        )
        end = await collect(generation.events)
        response = converse_response(
            end["text"], end["stop_reason"], end["input_tokens"], end["output_tokens"], generation.elapsed_ms()
        )
        await self.inference.log("Converse", generation, caller, body, response, end, parsed.request_metadata)
        return response

    async def converse_stream(self, model_id: str, body: dict[str, Any], caller: Caller) -> AsyncIterator[bytes]:
        parsed = parse_converse(body)
        generation = await self.inference.start(
            model_id,
            parsed.sampling,
            stream=True,
            conversation=parsed.conversation,
            tools_member="toolConfig" if parsed.tools else None,
        )
        return self._converse_frames(generation, body, caller, parsed.request_metadata)

    async def _converse_frames(
        self, generation: Generation, body: dict[str, Any], caller: Caller, metadata: dict[str, str] | None
    ) -> AsyncIterator[bytes]:
        yield eventstream.event("messageStart", {"role": "assistant"})
        end: dict[str, Any] | None = None
        try:
            async for event in generation.events:
                if event["event"] == "text":
                    yield eventstream.event(
                        "contentBlockDelta", {"delta": {"text": event["text"]}, "contentBlockIndex": 0}
                    )
                elif event["event"] == "end":
                    end = event
        except ServiceError as exc:
            yield eventstream.exception(STREAM_EXCEPTIONS.get(exc.code, "internalServerException"), exc.message)
            return
        finally:
            await generation.events.aclose()
        assert end is not None
        latency = generation.elapsed_ms()
        yield eventstream.event("contentBlockStop", {"contentBlockIndex": 0})
        yield eventstream.event("messageStop", {"stopReason": end["stop_reason"]})
        yield eventstream.event(
            "metadata", {"usage": usage(end["input_tokens"], end["output_tokens"]), "metrics": {"latencyMs": latency}}
        )
        response = converse_response(
            end["text"], end["stop_reason"], end["input_tokens"], end["output_tokens"], latency
        )
        await self.inference.log("ConverseStream", generation, caller, body, response, end, metadata)

    # -- InvokeModel ----------------------------------------------------------------------------

    async def invoke(
        self, model_id: str, body: dict[str, Any], caller: Caller, metadata: dict[str, str] | None
    ) -> tuple[dict[str, Any], dict[str, str]]:
        parsed = parse_native(body)
        generation = await self.inference.start(
            model_id,
            parsed.sampling,
            stream=False,
            prompt=parsed.prompt,
            max_tokens_member="max_gen_len",
            prompt_member="prompt",
        )
        end = await collect(generation.events)
        response = native_response(end["text"], end["stop_reason"], end["input_tokens"], end["output_tokens"])
        headers = {
            "x-amzn-bedrock-input-token-count": str(end["input_tokens"]),
            "x-amzn-bedrock-output-token-count": str(end["output_tokens"]),
            "x-amzn-bedrock-invocation-latency": str(generation.elapsed_ms()),
        }
        await self.inference.log("InvokeModel", generation, caller, body, response, end, metadata)
        return response, headers

    async def invoke_stream(
        self, model_id: str, body: dict[str, Any], caller: Caller, metadata: dict[str, str] | None
    ) -> AsyncIterator[bytes]:
        parsed = parse_native(body)
        generation = await self.inference.start(
            model_id,
            parsed.sampling,
            stream=True,
            prompt=parsed.prompt,
            max_tokens_member="max_gen_len",
            prompt_member="prompt",
        )
        return self._chunks(generation, body, caller, metadata)

    async def _chunks(
        self, generation: Generation, body: dict[str, Any], caller: Caller, metadata: dict[str, str] | None
    ) -> AsyncIterator[bytes]:
        input_tokens = int(generation.start["input_tokens"])
        first = True
        end: dict[str, Any] | None = None
        try:
            async for event in generation.events:
                if event["event"] == "text":
                    if generation.first_token is None:
                        generation.first_token = time.perf_counter()
                    yield _chunk(
                        {
                            "generation": event["text"],
                            "prompt_token_count": input_tokens if first else None,
                            "generation_token_count": event["output_tokens"],
                            "stop_reason": None,
                        }
                    )
                    first = False
                elif event["event"] == "end":
                    end = event
        except ServiceError as exc:
            yield eventstream.exception(STREAM_EXCEPTIONS.get(exc.code, "internalServerException"), exc.message)
            return
        finally:
            await generation.events.aclose()
        assert end is not None
        latency = generation.elapsed_ms()
        yield _chunk(
            {
                "generation": "",
                "prompt_token_count": input_tokens if first else None,
                "generation_token_count": end["output_tokens"],
                "stop_reason": NATIVE_STOP_REASONS[end["stop_reason"]],
                "amazon-bedrock-invocationMetrics": {
                    "inputTokenCount": end["input_tokens"],
                    "outputTokenCount": end["output_tokens"],
                    "invocationLatency": latency,
                    "firstByteLatency": generation.elapsed_ms(generation.first_token),
                },
            }
        )
        response = native_response(end["text"], end["stop_reason"], end["input_tokens"], end["output_tokens"])
        await self.inference.log("InvokeModelWithResponseStream", generation, caller, body, response, end, metadata)


def _chunk(data: dict[str, Any]) -> bytes:
    payload = base64.b64encode(json.dumps(data).encode("utf-8")).decode("ascii")
    return eventstream.event("chunk", {"bytes": payload})
