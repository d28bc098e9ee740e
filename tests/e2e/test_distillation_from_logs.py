"""Distillation from production traffic: the runtime's invocation logs as a DISTILLATION job's data."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.e2e.conftest import BASE_MODEL, HANG_GUARD_S, ROLE, STUDENT_MODEL, Server, unique, wait_for_status
from tuneforge.data.tasks import make_classification_task
from tuneforge.serving.invocation_logs import read_records
from tuneforge.storage import ObjectStore

pytestmark = pytest.mark.e2e


def test_distillation_job_reads_invocation_logs_written_by_the_runtime(bedrock: Any, server: Server) -> None:
    prefix = unique("inv")
    bedrock.put_model_invocation_logging_configuration(
        loggingConfig={"s3Config": {"bucketName": "tests-logs", "keyPrefix": prefix}, "textDataDeliveryEnabled": True}
    )
    runtime = server.bedrock_runtime()
    train, _ = make_classification_task(n_train=28, n_test=1, seed=11)
    try:
        for index, record in enumerate(train):
            runtime.converse(
                modelId=BASE_MODEL,
                messages=[{"role": "user", "content": [{"text": record["prompt"]}]}],
                inferenceConfig={"maxTokens": 6},
                requestMetadata={"team": "triage" if index < 24 else "other"},
            )
    finally:
        bedrock.delete_model_invocation_logging_configuration()

    store = ObjectStore.from_settings(server.settings)
    source = f"s3://tests-logs/{prefix}"
    deadline = time.monotonic() + HANG_GUARD_S
    while len(list(read_records(store, source))) < len(train):
        assert time.monotonic() < deadline, "the runtime did not write its invocation logs"
        time.sleep(0.3)

    logs_config = {
        "invocationLogSource": {"s3Uri": source},
        "usePromptResponse": True,
        "requestMetadataFilters": {"equals": {"team": "triage"}},
    }
    name = unique("from-logs")
    arn = bedrock.create_model_customization_job(
        jobName=name,
        customModelName=f"m-{name}",
        roleArn=ROLE,
        baseModelIdentifier=STUDENT_MODEL,
        customizationType="DISTILLATION",
        trainingDataConfig={"invocationLogsConfig": logs_config},
        outputDataConfig={"s3Uri": f"s3://tests/out/{name}/"},
        # A short teacher answer: the report times both models writing this many tokens per prompt, and
        # at the default (the teacher's 256-token output limit) that took ~45 s of this test's ~50 on CI.
        customizationConfig={
            "distillationConfig": {
                "teacherModelConfig": {"teacherModelIdentifier": BASE_MODEL, "maxResponseLengthForInference": 16}
            }
        },
        hyperParameters={"epochCount": "1"},
    )["jobArn"]
    job = wait_for_status(bedrock, arn, ("Completed", "Failed", "Stopped"))
    assert job["status"] == "Completed", job.get("failureMessage")
    assert job["trainingDataConfig"]["invocationLogsConfig"] == logs_config
    assert bedrock.get_custom_model(modelIdentifier=job["outputModelArn"])["customizationType"] == "DISTILLATION"

    import httpx

    events = httpx.get(f"{server.url}/model-customization-jobs/{name}/events", timeout=10).json()["events"]
    messages = [e["data"].get("message", "") for e in events if e["kind"] == "log"]
    assert any(f"selected 24 logged invocations from {source}" in m for m in messages), messages


def test_invocation_logs_are_refused_for_fine_tuning(bedrock: Any) -> None:
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as exc:
        bedrock.create_model_customization_job(
            jobName=unique("ft-logs"),
            customModelName=unique("m"),
            roleArn=ROLE,
            baseModelIdentifier=BASE_MODEL,
            customizationType="FINE_TUNING",
            trainingDataConfig={"invocationLogsConfig": {"invocationLogSource": {"s3Uri": "s3://tests-logs/x"}}},
            outputDataConfig={"s3Uri": "s3://tests/out/x/"},
        )
    assert exc.value.response["Error"]["Code"] == "ValidationException"
    assert "only for customizationType DISTILLATION" in exc.value.response["Error"]["Message"]
