"""Memory planning through boto3: a job that needs less memory is fitted, one that cannot fit is refused."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.e2e.conftest import ROLE, Server, make_server, unique
from tuneforge.catalog.families import lora_target_modules
from tuneforge.catalog.hyperparameters import fine_tuning_specs, resolve
from tuneforge.jobs import memory

pytestmark = pytest.mark.e2e

MICRO = "tuneforge.forge-micro-v1:0:512"
SMALL = "tuneforge.forge-small-v1:0:512"


def estimate(model: str, checkpointing: bool, **raw: str) -> int:
    """The estimate the server makes for a job on a built-in model (its whole context, 512 tokens)."""
    shape = memory.builtin_shape(model)
    assert shape is not None
    hp = resolve(fine_tuning_specs(), raw)
    training = memory.training_shape(hp, lora_target_modules("llama", "all"), 512, memory.cpu_has_bf16())
    return memory.estimate(shape, replace(training, checkpointing=checkpointing), gpu=False).total


BUDGET = estimate("forge-micro", checkpointing=True)
"""Enough for a default forge-micro LoRA job with gradient checkpointing, not without."""


@pytest.fixture(scope="module")
def bedrock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server: Server = make_server(tmp_path_factory.mktemp("memory"), training_memory_bytes=BUDGET)
    server.start()
    yield server.bedrock()
    server.stop()


def job_request(base: str, **hyperparameters: str) -> dict[str, Any]:
    name = unique("mem")
    return {
        "jobName": name,
        "customModelName": f"m-{name}",
        "roleArn": ROLE,
        "baseModelIdentifier": base,
        "customizationType": "FINE_TUNING",
        "trainingDataConfig": {"s3Uri": "s3://tests/memory/train.jsonl"},
        "outputDataConfig": {"s3Uri": f"s3://tests/out/{name}/"},
        "hyperParameters": hyperparameters,
    }


def test_a_job_over_the_budget_is_queued_with_gradient_checkpointing(bedrock: Any) -> None:
    assert estimate("forge-micro", checkpointing=False) > BUDGET
    request = job_request(MICRO)
    arn = bedrock.create_model_customization_job(**request)["jobArn"]
    try:
        job = bedrock.get_model_customization_job(jobIdentifier=arn)
        assert job["hyperParameters"]["gradientCheckpointing"] == "true"
        assert job["hyperParameters"]["gradientAccumulationSteps"] == "1"
    finally:
        bedrock.stop_model_customization_job(jobIdentifier=arn)


def test_a_job_that_cannot_fit_is_refused_with_the_numbers_and_nothing_is_created(bedrock: Any) -> None:
    smallest = estimate("forge-small", checkpointing=True, trainingMethod="full", gradientAccumulationSteps="8")
    assert smallest > BUDGET
    request = job_request(SMALL, trainingMethod="full")
    with pytest.raises(ClientError) as refused:
        bedrock.create_model_customization_job(**request)
    error = refused.value.response["Error"]
    assert error["Code"] == "ValidationException"
    assert "does not fit in memory" in error["Message"]
    assert memory.gib(smallest) in error["Message"]
    assert f"{memory.gib(BUDGET)} (TUNEFORGE_TRAINING_MEMORY_BYTES)" in error["Message"]
    assert "full training, micro-batch 1 x 512 tokens" in error["Message"]
    listed = bedrock.list_model_customization_jobs(nameContains=request["jobName"])
    assert listed["modelCustomizationJobSummaries"] == []
    with pytest.raises(ClientError) as missing:
        bedrock.get_custom_model(modelIdentifier=request["customModelName"])
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"
