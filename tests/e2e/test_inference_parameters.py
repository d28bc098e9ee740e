"""Inference parameters end to end: the openai SDK and boto3 against a real server and a real engine.

Everything runs on the built-in micro model served on demand (no training needed). It is
random-initialised, so answers are nonsense, but deterministic under greedy decoding: that is
enough to check shapes, that prefill continues rather than restarts, and that constrained decoding
alone makes the output valid JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import openai
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.e2e.conftest import STUDENT_MODEL, Server, make_server

pytestmark = pytest.mark.e2e

KEYS = {"AKIDPARAMS": "params-secret"}
API_KEY = "sk-tuneforge-parameters"
MODEL = STUDENT_MODEL
QUESTION = "Ticket: my invoice is wrong"
SCHEMA = {
    "type": "object",
    "properties": {"category": {"type": "string", "maxLength": 8}, "urgent": {"type": "boolean"}},
    "required": ["category", "urgent"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = make_server(
        tmp_path_factory.mktemp("parameters"),
        access_keys=KEYS,
        allow_anonymous=False,
        api_keys=[API_KEY],
        engine_threads=1,
    )
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def sdk(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def runtime(server: Server) -> Any:
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=server.url,
        region_name="us-east-1",
        aws_access_key_id="AKIDPARAMS",
        aws_secret_access_key=KEYS["AKIDPARAMS"],
        config=Config(retries={"max_attempts": 1}, read_timeout=120),
    )


def user(text: str = QUESTION) -> list[Any]:
    return [{"role": "user", "content": text}]


def check_schema(value: Any) -> None:
    assert isinstance(value, dict) and set(value) == {"category", "urgent"}, value
    assert isinstance(value["category"], str) and len(value["category"]) <= 8
    assert isinstance(value["urgent"], bool)


# -- errors and models (item 2) -------------------------------------------------------------------------


def test_unknown_model_is_not_found_and_models_can_be_retrieved(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        sdk.chat.completions.create(model="nobody.nothing-v1", messages=user(), max_tokens=2)
    assert exc.value.code == "model_not_found" and exc.value.param == "model"
    assert sdk.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as exc:
        sdk.models.retrieve("nobody.nothing-v1")
    assert exc.value.code == "model_not_found"


# -- parameters (items 3 and 22) ------------------------------------------------------------------------


def test_chat_logprobs_and_top_logprobs(sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(model=MODEL, messages=user(), max_tokens=5, logprobs=True, top_logprobs=3)
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    content = choice.logprobs.content
    assert reply.usage is not None
    assert len(content) == reply.usage.completion_tokens - (1 if choice.finish_reason == "stop" else 0)
    for entry in content:
        assert entry.logprob <= 0 and entry.bytes is not None and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-4)  # greedy picks the top one
    streamed = [
        entry
        for chunk in sdk.chat.completions.create(
            model=MODEL, messages=user(), max_tokens=5, logprobs=True, top_logprobs=3, stream=True
        )
        if chunk.choices and chunk.choices[0].logprobs is not None
        for entry in chunk.choices[0].logprobs.content or []
    ]
    assert [e.token for e in streamed] == [e.token for e in content]


def test_completions_logprobs_with_echo(sdk: openai.OpenAI) -> None:
    prompt = "The invoice"
    reply = sdk.completions.create(model=MODEL, prompt=prompt, max_tokens=4, logprobs=2, echo=True)
    choice = reply.choices[0]
    assert choice.text.startswith(prompt)
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs and logprobs.text_offset
    assert "".join(logprobs.tokens).startswith(prompt)
    assert logprobs.text_offset[: len(prompt)] == list(range(len(prompt)))  # byte-level: one character a token
    assert all(len(top) <= 2 for top in logprobs.top_logprobs or [])
    plain = sdk.completions.create(model=MODEL, prompt=prompt, max_tokens=4)
    assert choice.text == prompt + plain.choices[0].text


def test_n_choices_on_both_routes_count_every_choice(sdk: openai.OpenAI) -> None:
    one = sdk.chat.completions.create(model=MODEL, messages=user(), max_tokens=6)
    three = sdk.chat.completions.create(model=MODEL, messages=user(), max_tokens=6, n=3)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert {c.message.content for c in three.choices} == {one.choices[0].message.content}  # greedy: all alike
    assert three.usage is not None and one.usage is not None
    assert three.usage.completion_tokens == 3 * one.usage.completion_tokens
    assert three.usage.prompt_tokens == one.usage.prompt_tokens
    sampled = sdk.completions.create(model=MODEL, prompt="x", max_tokens=6, n=2, temperature=1.0, seed=2**70)
    again = sdk.completions.create(model=MODEL, prompt="x", max_tokens=6, n=2, temperature=1.0, seed=2**70)
    assert [c.text for c in sampled.choices] == [c.text for c in again.choices], "a seed repeats every choice"


def test_seed_beyond_64_bits_is_accepted(sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(model=MODEL, messages=user(), max_tokens=3, temperature=0.8, seed=2**70)
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_response_format_json_schema_and_json_object(sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(
        model=MODEL,
        messages=user(),
        max_tokens=120,
        response_format={"type": "json_schema", "json_schema": {"name": "ticket", "schema": SCHEMA}},
    )
    assert reply.choices[0].finish_reason == "stop"
    check_schema(json.loads(reply.choices[0].message.content or ""))
    reply = sdk.chat.completions.create(
        model=MODEL, messages=user(), max_tokens=200, response_format={"type": "json_object"}
    )
    choice = reply.choices[0]
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content or ""), dict)
    else:  # max_tokens ran out first: OpenAI's own behaviour for an unclosed document
        assert choice.finish_reason == "length" and (choice.message.content or "").startswith("{")


def test_tools_are_refused_naming_the_parameter(sdk: openai.OpenAI) -> None:
    tool: Any = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as exc:
        sdk.chat.completions.create(model=MODEL, messages=user(), tools=[tool])
    assert exc.value.param == "tools" and "chat template" in str(exc.value)


def test_converse_output_config_and_top_k(runtime: Any) -> None:
    response = runtime.converse(
        modelId=MODEL,
        messages=[{"role": "user", "content": [{"text": QUESTION}]}],
        inferenceConfig={"maxTokens": 120},
        outputConfig={
            "textFormat": {"type": "json_schema", "structure": {"jsonSchema": {"schema": json.dumps(SCHEMA)}}}
        },
    )
    assert response["stopReason"] == "end_turn"
    check_schema(json.loads(response["output"]["message"]["content"][0]["text"]))
    greedy = runtime.converse(
        modelId=MODEL, messages=[{"role": "user", "content": [{"text": QUESTION}]}], inferenceConfig={"maxTokens": 6}
    )
    top_1 = runtime.converse(
        modelId=MODEL,
        messages=[{"role": "user", "content": [{"text": QUESTION}]}],
        inferenceConfig={"maxTokens": 6, "temperature": 1.0},
        additionalModelRequestFields={"top_k": 1},
    )
    assert top_1["output"] == greedy["output"]
    with pytest.raises(ClientError) as exc:
        runtime.converse(
            modelId=MODEL,
            messages=[{"role": "user", "content": [{"text": QUESTION}]}],
            additionalModelRequestFields={"repetition_penalty": 1.2},
        )
    assert exc.value.response["Error"]["Code"] == "ValidationException"
    assert "repetition_penalty" in exc.value.response["Error"]["Message"]


# -- assistant prefill (item 4) -------------------------------------------------------------------------


def test_prefill_continues_the_assistant_message_on_both_surfaces(sdk: openai.OpenAI, runtime: Any) -> None:
    prefill = "The category is"
    raw = sdk.completions.create(model=MODEL, prompt=f"User: {QUESTION}\nAssistant: {prefill}", max_tokens=6)
    continuation = raw.choices[0].text
    messages = [
        {"role": "user", "content": [{"text": QUESTION}]},
        {"role": "assistant", "content": [{"text": prefill}]},
    ]
    converse = runtime.converse(modelId=MODEL, messages=messages, inferenceConfig={"maxTokens": 6})
    assert converse["output"]["message"]["content"][0]["text"] == continuation
    stream = runtime.converse_stream(modelId=MODEL, messages=messages, inferenceConfig={"maxTokens": 6})
    deltas = [e["contentBlockDelta"]["delta"]["text"] for e in stream["stream"] if "contentBlockDelta" in e]
    assert "".join(deltas) == continuation
    chat = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTION}, {"role": "assistant", "content": prefill}],
        max_tokens=6,
    )
    assert chat.choices[0].message.content == continuation


def test_logit_bias_and_penalties_are_honoured(sdk: openai.OpenAI, tmp_path: Any) -> None:
    from tuneforge.model.builtin import build_tokenizer
    from tuneforge.model.loading import load_tokenizer

    build_tokenizer(tmp_path)
    (z,) = load_tokenizer(tmp_path).encode("z", add_special_tokens=False)
    biased = sdk.completions.create(model=MODEL, prompt="x", max_tokens=5, logit_bias={str(z): 100})
    assert biased.choices[0].text == "zzzzz"
    varied = sdk.chat.completions.create(model=MODEL, messages=user(), max_tokens=8, presence_penalty=2.0)
    assert varied.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.BadRequestError) as exc:
        sdk.completions.create(model=MODEL, prompt="x", max_tokens=2, logit_bias={"99999": 1})
    assert "outside the model's vocabulary" in str(exc.value)
