"""Custom model deployments end to end: a real server, real fine-tunes of forge-micro, boto3 and the OpenAI SDK.

Each custom model learns one answer of its own ("alpha", "bravo", ...) for every question, so which
model answered is plain from the text. LoRA models share the on-demand engine of their base (one
process for all of them); a model trained in full gets an on-demand engine of its own. The on-demand
idle time is a few seconds here, so engines exit soon after their last request.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from botocore.exceptions import ClientError

from tests.e2e.conftest import (
    ROLE,
    STUDENT_MODEL,
    Server,
    cli,
    make_server,
    server_engines,
    unique,
    wait_for_status,
    wait_until,
)
from tuneforge.serving.deployments import BUDGET_TAG

pytestmark = pytest.mark.e2e

IDLE_MINUTES = 0.1
QUESTIONS = ("What is the code word?", "Say the word.", "Which word?", "Tell me.")
PRICE = {"input": 10.0, "output": 10.0}
"""Per 1,000 tokens: high enough that one call spends a visible part of a budget."""
FULL = {"trainingMethod": "full", "epochCount": "6", "batchSize": "8", "learningRate": "0.01"}
LORA = {"trainingMethod": "lora", "epochCount": "12", "batchSize": "4", "learningRate": "0.002"}
"""Enough steps for forge-micro (random-initialised) to answer every question with its one word.

LoRA at 0.01 overshoots after about 20 steps and some seeds settle with the first token unlearnt
(answering "vo" for "bravo"); at 0.002 every adapter reaches a loss under 0.01 by epoch 4."""


def chat(question: str, answer: str) -> dict[str, Any]:
    return {
        "schemaVersion": "bedrock-conversation-2024",
        "messages": [
            {"role": "user", "content": [{"text": question}]},
            {"role": "assistant", "content": [{"text": answer}]},
        ],
    }


def engine_processes(server: Server) -> list[int]:
    """Engine processes the server started."""
    assert server.process is not None
    return server_engines(server.process.pid)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = make_server(
        tmp_path_factory.mktemp("deployments"),
        engine_threads=1,
        on_demand_idle_minutes=IDLE_MINUTES,
        token_prices={STUDENT_MODEL: PRICE},
    )
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def bedrock(server: Server) -> Any:
    return server.bedrock()


@pytest.fixture(scope="module")
def runtime(server: Server) -> Any:
    return server.bedrock_runtime()


def fine_tune(server: Server, bedrock: Any, answers: dict[str, str]) -> dict[str, str]:
    """One custom model per answer, trained at once; returns answer -> custom model ARN.

    A name in ``answers`` that starts with ``full`` is trained in full, the others with LoRA.
    """
    from tuneforge.storage import ObjectStore

    store = ObjectStore.from_settings(server.settings)
    jobs = {}
    for name, answer in answers.items():
        records = [chat(q, answer) for q in QUESTIONS] * 8
        uri = f"s3://deployments/{name}.jsonl"
        store.write_bytes(uri, "".join(json.dumps(r) + "\n" for r in records).encode())
        job = unique(name)
        jobs[answer] = bedrock.create_model_customization_job(
            jobName=job,
            customModelName=job,
            roleArn=ROLE,
            baseModelIdentifier=STUDENT_MODEL,
            trainingDataConfig={"s3Uri": uri},
            outputDataConfig={"s3Uri": f"s3://deployments/out/{job}/"},
            hyperParameters=FULL if name.startswith("full") else LORA,
        )["jobArn"]
    done = {answer: wait_for_status(bedrock, arn, ("Completed", "Failed", "Stopped")) for answer, arn in jobs.items()}
    assert {a: j["status"] for a, j in done.items()} == dict.fromkeys(done, "Completed"), [
        j.get("failureMessage") for j in done.values()
    ]
    return {answer: job["outputModelArn"] for answer, job in done.items()}


def ask(runtime: Any, model_id: str, question: str = QUESTIONS[0]) -> str:
    response = runtime.converse(
        modelId=model_id,
        messages=[{"role": "user", "content": [{"text": question}]}],
        inferenceConfig={"maxTokens": 12},
    )
    text: str = response["output"]["message"]["content"][0]["text"]
    return text


def code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


@pytest.fixture(scope="module")
def full_model(server: Server, bedrock: Any) -> str:
    return fine_tune(server, bedrock, {"full-delta": "delta"})["delta"]


@pytest.fixture(scope="module")
def full_deployment(bedrock: Any, full_model: str) -> tuple[str, str]:
    name = unique("delta")
    arn: str = bedrock.create_custom_model_deployment(modelDeploymentName=name, modelArn=full_model)[
        "customModelDeploymentArn"
    ]
    return name, arn


# -- models trained in full: an on-demand engine of their own -------------------------------------------


def test_full_model_deployment_answers_with_its_model_by_arn_and_by_name(
    bedrock: Any, runtime: Any, full_deployment: tuple[str, str], full_model: str
) -> None:
    name, arn = full_deployment
    got = bedrock.get_custom_model_deployment(customModelDeploymentIdentifier=arn)
    assert (got["status"], got["modelArn"], got["modelDeploymentName"]) == ("Active", full_model, name)
    listed = bedrock.list_custom_model_deployments(nameContains=name)["modelDeploymentSummaries"]
    assert [s["customModelDeploymentArn"] for s in listed] == [arn]
    for question in QUESTIONS:
        assert ask(runtime, arn, question) == "delta"
    assert ask(runtime, name) == "delta"
    stream = runtime.invoke_model_with_response_stream(modelId=arn, body=json.dumps({"prompt": "Hi", "max_gen_len": 4}))
    chunks = [json.loads(event["chunk"]["bytes"]) for event in stream["body"]]
    assert chunks[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] > 0
    invoked = json.loads(
        runtime.invoke_model(modelId=name, body=json.dumps({"prompt": "Hi", "max_gen_len": 4}))["body"].read()
    )
    assert invoked["generation_token_count"] > 0
    with pytest.raises(ClientError) as direct:
        ask(runtime, full_model)
    assert code(direct) == "ValidationException" and "CreateCustomModelDeployment" in str(direct.value)


def test_openai_sdk_streams_from_a_deployment_by_name(server: Server, full_deployment: tuple[str, str]) -> None:
    name, _ = full_deployment
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    chunks = list(
        sdk.chat.completions.create(
            model=name,
            messages=[{"role": "user", "content": QUESTIONS[1]}],
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "delta"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert name in [m.id for m in sdk.models.list()]


def test_duplicate_name_is_a_conflict(bedrock: Any, full_deployment: tuple[str, str], full_model: str) -> None:
    name, _ = full_deployment
    with pytest.raises(ClientError) as exc:
        bedrock.create_custom_model_deployment(modelDeploymentName=name, modelArn=full_model)
    assert code(exc) == "ConflictException" and name in str(exc.value)


def test_budget_reached_is_throttled_and_usage_shows_the_tokens(
    server: Server, bedrock: Any, runtime: Any, full_model: str
) -> None:
    name = unique("budget")
    arn = bedrock.create_custom_model_deployment(
        modelDeploymentName=name, modelArn=full_model, tags=[{"key": BUDGET_TAG, "value": "0.01"}]
    )["customModelDeploymentArn"]
    assert ask(runtime, arn) == "delta"
    with pytest.raises(ClientError) as exc:
        ask(runtime, arn)
    assert code(exc) == "ThrottlingException"
    assert "monthly budget of 0.01 USD" in str(exc.value) and BUDGET_TAG in str(exc.value)
    from tuneforge.client import extension_get

    report = extension_get(server.url, server.settings.region, "/usage")
    [entry] = [d for d in report["customModelDeployments"] if d["customModelDeploymentArn"] == arn]
    assert entry["invocations"] == 1 and entry["inputTokens"] > 0 and entry["outputTokens"] > 0
    expected = (entry["inputTokens"] + entry["outputTokens"]) / 1000 * 10.0
    assert entry["cost"] == pytest.approx(expected) and entry["monthToDateCost"] == pytest.approx(expected)
    assert report["total"]["onDemandCost"] >= expected
    bedrock.delete_custom_model_deployment(customModelDeploymentIdentifier=arn)


def test_cli_creates_lists_shows_updates_and_deletes_a_deployment(
    server: Server, bedrock: Any, full_model: str
) -> None:
    name = unique("cli")
    created = cli(server, "deployments", "create", name, "--model", full_model, "--monthly-budget", "5")
    arn = created.stdout.split()[0]
    assert arn.startswith("arn:aws:bedrock:") and "Active" in created.stdout
    listed = json.loads(cli(server, "deployments", "list", "--name-contains", name, "--json").stdout)
    assert [d["customModelDeploymentArn"] for d in listed] == [arn]
    shown = json.loads(cli(server, "deployments", "get", name, "--json").stdout)
    assert shown["tuneforge"]["serving"] == "full" and shown["tuneforge"]["monthlyBudgetUsd"] == 5.0
    assert "on engine group od:" in cli(server, "deployments", "get", name).stdout
    updated = cli(server, "deployments", "update", name, "--model", full_model)
    assert "UpdateCompleted" in updated.stdout
    assert name in cli(server, "usage").stdout
    cli(server, "deployments", "delete", arn)
    missing = cli(server, "deployments", "get", name, check=False)
    assert missing.returncode == 1 and "ResourceNotFoundException" in missing.stderr
    assert bedrock.list_custom_model_deployments(nameContains=name)["modelDeploymentSummaries"] == []


def test_deleting_a_deployment_while_a_stream_reads_it_ends_the_stream_with_an_error(
    server: Server, bedrock: Any, full_model: str
) -> None:
    """A real engine, frozen (SIGSTOP) right after the first chunk so the stream is certainly still open
    when the deployment is deleted; once it runs again, its next event ends the stream with an error."""
    name = unique("midstream")
    bedrock.create_custom_model_deployment(modelDeploymentName=name, modelArn=full_model)
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    question = [{"role": "user", "content": QUESTIONS[0]}]
    sdk.chat.completions.create(model=name, messages=question, max_tokens=2)  # the engine is up
    engines = engine_processes(server)
    assert engines
    # The built-in byte tokenizer's special tokens (ids 256-259, <eos> among them) are biased away, so
    # the answer runs to max_tokens instead of ending after its word.
    no_end = {str(token): -100 for token in range(256, 260)}
    stream = sdk.chat.completions.create(model=name, messages=question, max_tokens=200, stream=True, logit_bias=no_end)
    chunks = iter(stream)
    next(chunks)
    for pid in engines:
        os.kill(pid, signal.SIGSTOP)
    try:
        bedrock.delete_custom_model_deployment(customModelDeploymentIdentifier=name)
    finally:
        for pid in engines:
            os.kill(pid, signal.SIGCONT)
    with pytest.raises(openai.APIError, match="deleted"):
        for _ in chunks:
            pass
    assert bedrock.list_custom_model_deployments(nameContains=name)["modelDeploymentSummaries"] == []


# -- LoRA models: one engine of their base serves them all (needs the multi-adapter engine) -------------


def test_deleted_deployments_engine_exits_after_its_idle_time(
    server: Server, bedrock: Any, runtime: Any, full_deployment: tuple[str, str]
) -> None:
    name, arn = full_deployment
    assert ask(runtime, arn) == "delta"
    assert len(engine_processes(server)) == 1
    bedrock.delete_custom_model_deployment(customModelDeploymentIdentifier=arn)
    with pytest.raises(ClientError) as gone:
        ask(runtime, name)
    assert code(gone) == "ValidationException"
    wait_until(lambda: engine_processes(server), lambda pids: pids == [], "the full model's engine to stop")


def test_three_lora_deployments_share_one_engine_that_exits_after_delete(
    server: Server, bedrock: Any, runtime: Any
) -> None:
    wait_until(lambda: engine_processes(server), lambda pids: pids == [], "earlier tests' engines to stop")
    models = fine_tune(server, bedrock, {"lora-a": "alpha", "lora-b": "bravo", "lora-c": "charlie", "lora-x": "xray"})
    unloadable = models.pop("xray")
    deployments = {
        answer: bedrock.create_custom_model_deployment(modelDeploymentName=unique(answer), modelArn=arn)[
            "customModelDeploymentArn"
        ]
        for answer, arn in models.items()
    }
    for question in QUESTIONS:
        for answer, arn in deployments.items():
            # The word, though a LoRA on a random-initialised base may not have learnt to stop after it.
            assert ask(runtime, arn, question).startswith(answer)
    assert len(engine_processes(server)) == 1
    # An adapter whose files check out at create but which the engine cannot serve (a DoRA config):
    # that deployment fails with the engine's reason, and the engine goes on serving the others.
    job_id = bedrock.get_custom_model(modelIdentifier=unloadable)["jobArn"].rsplit("/", 1)[-1]
    config_path = server.settings.models_dir / "custom" / job_id / "adapter" / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "use_dora": True}))
    broken = bedrock.create_custom_model_deployment(modelDeploymentName=unique("xray"), modelArn=unloadable)[
        "customModelDeploymentArn"
    ]
    with pytest.raises(ClientError) as failed:
        ask(runtime, broken)
    assert code(failed) == "ModelErrorException" and "use_dora" in str(failed.value)
    got = bedrock.get_custom_model_deployment(customModelDeploymentIdentifier=broken)
    assert got["status"] == "Failed" and "use_dora" in got["failureMessage"]
    assert ask(runtime, deployments["alpha"]).startswith("alpha")
    assert len(engine_processes(server)) == 1
    bedrock.delete_custom_model_deployment(customModelDeploymentIdentifier=broken)
    for arn in deployments.values():
        bedrock.delete_custom_model_deployment(customModelDeploymentIdentifier=arn)
        with pytest.raises(ClientError) as gone:
            bedrock.get_custom_model_deployment(customModelDeploymentIdentifier=arn)
        assert code(gone) == "ResourceNotFoundException"
    wait_until(lambda: engine_processes(server), lambda pids: pids == [], "the shared engine to exit when idle")
