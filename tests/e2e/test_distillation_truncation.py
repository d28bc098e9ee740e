"""A teacher's answers cut at maxResponseLengthForInference are kept, as Bedrock keeps them."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import BASE_MODEL, ROLE, STUDENT_MODEL, Server, unique, wait_for_status
from tuneforge.jobs import layout
from tuneforge.storage import ObjectStore

pytestmark = pytest.mark.e2e


def test_distillation_with_short_teacher_answers_trains_on_them_as_capped(server: Server) -> None:
    """The built-in teacher is random-initialised: at 8 tokens nearly every answer is cut short."""
    store = ObjectStore.from_settings(server.settings)
    prompts = [
        {"messages": [{"role": "user", "content": [{"text": f"Ticket: question number {i}\nCategory:"}]}]}
        for i in range(24)
    ]
    store.write_bytes("s3://truncation/prompts.jsonl", "".join(json.dumps(p) + "\n" for p in prompts).encode())
    name = unique("truncated-teacher")
    arn: str = server.bedrock().create_model_customization_job(
        jobName=name,
        customModelName=f"m-{name}",
        roleArn=ROLE,
        baseModelIdentifier=STUDENT_MODEL,
        customizationType="DISTILLATION",
        trainingDataConfig={"s3Uri": "s3://truncation/prompts.jsonl"},
        outputDataConfig={"s3Uri": f"s3://truncation/out/{name}/"},
        customizationConfig={
            "distillationConfig": {
                "teacherModelConfig": {"teacherModelIdentifier": BASE_MODEL, "maxResponseLengthForInference": 8}
            }
        },
        hyperParameters={"epochCount": "1", "batchSize": "8"},
    )["jobArn"]
    job = wait_for_status(server.bedrock(), arn, ("Completed", "Failed", "Stopped"))
    assert job["status"] == "Completed", job.get("failureMessage")
    job_id = arn.rsplit("/", 1)[-1]
    insights = json.loads(
        store.read_bytes(f"s3://truncation/out/{name}/{layout.job_folder(job_id)}/{layout.PROMPT_INSIGHTS}")
    )
    assert insights["truncatedResponses"] > 0
    assert insights["trained"] + insights["heldOut"] >= insights["truncatedResponses"]
    assert "truncated" not in insights["rejectedByReason"]
    assert any(d.get("truncated") for d in insights["details"] if d["status"] in ("trained", "heldOut"))
