"""Third-party clients against a real tuneforge server: every tested snippet of docs/clients.md, run as written.

Each client sends the same conversation with greedy decoding, so each must get the answer boto3's
Converse got (``deployment.answer``), and its stream must be that answer in more than one piece.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.clients.conftest import (
    KEY_ID,
    MAX_TOKENS,
    REGION,
    SECRET,
    Deployment,
    boto3_client,
    run_python_snippet,
    run_shell_snippet,
    snippets,
)
from tests.e2e.conftest import STUDENT_MODEL, Server, wait_for_status
from tuneforge.data.tasks import make_classification_task

pytestmark = pytest.mark.e2e


def assert_streams_the_answer(namespace: dict[str, Any], expected: str | None) -> None:
    """``answer`` is the invoked text (``expected`` where the client sends Converse's conversation);
    ``chunks`` the streamed pieces: several of them, adding up to the same text."""
    answer, chunks = namespace["answer"], namespace["chunks"]
    assert isinstance(answer, str) and answer, answer
    if expected is not None:
        assert answer == expected
    assert len([c for c in chunks if c]) > 1, f"not streamed: {chunks!r}"
    assert "".join(chunks) == answer


def test_every_tested_snippet_has_a_test() -> None:
    tested = {
        "aws-cli-provision",
        "aws-cli-list-models",
        "aws-cli-create-job",
        "aws-cli-get-job-and-model",
        "aws-cli-converse",
        "boto3",
        "langchain-bedrock-converse",
        "langchain-bedrock",
        "langchain-openai",
        "litellm-bedrock-converse",
        "litellm-openai",
        "openai-sdk",
    }
    assert set(snippets()) == tested


# -- AWS CLI -------------------------------------------------------------------------------------------


def test_aws_cli_lists_foundation_models(server: Server) -> None:
    (listing,) = run_shell_snippet("aws-cli-list-models", server)
    ids = [m["modelId"] for m in listing["modelSummaries"]]
    assert STUDENT_MODEL in ids
    assert all("FINE_TUNING" in m["customizationsSupported"] for m in listing["modelSummaries"])


def test_aws_cli_creates_a_job_and_reads_it_and_its_model(server: Server) -> None:
    from tuneforge.storage import ObjectStore

    train, _ = make_classification_task(n_train=16, n_test=1, seed=3)
    ObjectStore.from_settings(server.settings).write_bytes(
        "s3://my-data/train.jsonl", "".join(json.dumps(r) + "\n" for r in train).encode()
    )
    (created,) = run_shell_snippet("aws-cli-create-job", server)
    assert created["jobArn"].startswith(f"arn:aws:bedrock:{REGION}:"), created
    assert ":model-customization-job/" in created["jobArn"], created
    done = wait_for_status(boto3_client(server, "bedrock"), created["jobArn"], ("Completed", "Failed", "Stopped"))
    assert done["status"] == "Completed", done.get("failureMessage")

    job, model = run_shell_snippet("aws-cli-get-job-and-model", server)
    assert (job["jobArn"], job["jobName"], job["status"]) == (created["jobArn"], "my-first-job", "Completed")
    assert job["hyperParameters"]["epochCount"] == "1"
    assert job["outputModelArn"] == model["modelArn"]
    assert model["modelName"] == "my-first-model" and model["jobArn"] == created["jobArn"]
    assert model["baseModelArn"].endswith(STUDENT_MODEL)


def test_aws_cli_converses_with_a_provisioned_model(server: Server, deployment: Deployment) -> None:
    (reply,) = run_shell_snippet("aws-cli-converse", server, deployment)
    assert reply["output"]["message"]["content"][0]["text"] == deployment.answer
    assert reply["usage"]["outputTokens"] <= MAX_TOKENS and reply["stopReason"] in ("end_turn", "max_tokens")


# -- boto3 ---------------------------------------------------------------------------------------------


def test_boto3_converse_and_converse_stream(server: Server, deployment: Deployment) -> None:
    assert_streams_the_answer(run_python_snippet("boto3", server, deployment), deployment.answer)


def test_boto3_refuses_a_wrong_secret(server: Server, deployment: Deployment) -> None:
    """The clients above really authenticate: the same client with a wrong secret is refused."""
    runtime = boto3.client(
        "bedrock-runtime",
        endpoint_url=server.url,
        region_name=REGION,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key="wrong",
        config=Config(retries={"max_attempts": 1}),
    )
    with pytest.raises(ClientError) as exc:
        runtime.converse(modelId=deployment.arn, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert exc.value.response["Error"]["Code"] == "AccessDeniedException"


# -- LangChain -----------------------------------------------------------------------------------------


def test_langchain_chat_bedrock_converse_invokes_and_streams(server: Server, deployment: Deployment) -> None:
    namespace = run_python_snippet("langchain-bedrock-converse", server, deployment)
    assert_streams_the_answer(namespace, deployment.answer)


def test_langchain_chat_bedrock_converse_needs_provider_for_arns_and_streams_only_when_told(
    server: Server, deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    """What docs/clients.md says about langchain-aws: ``provider=`` for an ARN, ``disable_streaming=False``."""
    from langchain_aws import ChatBedrockConverse

    options: dict[str, Any] = dict(
        base_url=server.url, region_name=REGION, aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET, max_tokens=8
    )
    with pytest.raises(ValueError, match="Model provider should be supplied when passing a model ARN"):
        ChatBedrockConverse(model=deployment.arn, **options)
    with caplog.at_level(logging.WARNING, logger="langchain_aws"):
        quiet = ChatBedrockConverse(model=deployment.arn, provider="tuneforge", **options)
    assert "Streaming disabled" in caplog.text
    chunks = [chunk.text for chunk in quiet.stream("my invoice pls")]
    assert chunks == [deployment.answer], "without disable_streaming=False, .stream() is one Converse call"


def test_langchain_chat_bedrock_invokes_and_streams(server: Server, deployment: Deployment) -> None:
    """ChatBedrock's Llama 3 markup makes another prompt, so only invoke-equals-stream is checked."""
    assert_streams_the_answer(run_python_snippet("langchain-bedrock", server, deployment), None)


def test_langchain_chat_openai_invokes_and_streams(server: Server, deployment: Deployment) -> None:
    assert_streams_the_answer(run_python_snippet("langchain-openai", server, deployment), deployment.answer)


# -- LiteLLM -------------------------------------------------------------------------------------------


def test_litellm_bedrock_converse_invokes_and_streams(server: Server, deployment: Deployment) -> None:
    assert_streams_the_answer(run_python_snippet("litellm-bedrock-converse", server, deployment), deployment.answer)


def test_litellm_openai_compatible_invokes_and_streams(server: Server, deployment: Deployment) -> None:
    assert_streams_the_answer(run_python_snippet("litellm-openai", server, deployment), deployment.answer)


# -- OpenAI SDK ----------------------------------------------------------------------------------------


def test_openai_sdk_chat_invokes_and_streams(server: Server, deployment: Deployment) -> None:
    assert_streams_the_answer(run_python_snippet("openai-sdk", server, deployment), deployment.answer)
