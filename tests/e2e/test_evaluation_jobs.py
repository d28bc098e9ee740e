"""Evaluation jobs end to end: boto3's CreateEvaluationJob comparing a base model with its fine-tune.

A tiny LoRA fine-tune of forge-micro on a few demo tickets (the demo classification task), then one
automated evaluation job with both models on those tickets: the results under the output URI, in
Bedrock's layout, must report the fine-tune's accuracy gain. Stop, BatchDelete, List and a refusal
are driven through boto3 too.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.e2e.conftest import ROLE, STUDENT_MODEL, Server, unique, wait_for_status, wait_until
from tuneforge.data.tasks import make_classification_task
from tuneforge.storage import ObjectStore

pytestmark = pytest.mark.e2e

TERMINAL = ("Completed", "Failed", "Stopped")


def jsonl(records: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def evaluation_request(name: str, dataset: str, output: str, models: list[str], max_tokens: int) -> dict[str, Any]:
    params = json.dumps({"inferenceConfig": {"maxTokens": max_tokens}})
    return {
        "jobName": name,
        "roleArn": ROLE,
        "applicationType": "ModelEvaluation",
        "evaluationConfig": {
            "automated": {
                "datasetMetricConfigs": [
                    {
                        "taskType": "Classification",
                        "dataset": {"name": "tickets", "datasetLocation": {"s3Uri": dataset}},
                        "metricNames": ["Builtin.Accuracy"],
                    }
                ]
            }
        },
        "inferenceConfig": {
            "models": [{"bedrockModel": {"modelIdentifier": m, "inferenceParams": params}} for m in models]
        },
        "outputDataConfig": {"s3Uri": output},
    }


def wait_for(bedrock: Any, arn: str) -> dict[str, Any]:
    job: dict[str, Any] = wait_until(
        lambda: bedrock.get_evaluation_job(jobIdentifier=arn),
        lambda got: got["status"] in TERMINAL,
        f"evaluation job {arn} to end",
    )
    return job


def test_an_evaluation_job_reports_the_fine_tunes_accuracy_gain_over_its_base(server: Server) -> None:
    bedrock, store = server.bedrock(), ObjectStore.from_settings(server.settings)
    name = unique("evalgain")
    prefix = f"s3://tests/evaluation/{name}"
    tickets, _ = make_classification_task(n_train=4, n_test=1, seed=7)
    store.write_bytes(f"{prefix}/train.jsonl", jsonl(tickets))
    store.write_bytes(
        f"{prefix}/tickets.jsonl",
        jsonl([{"prompt": t["prompt"], "referenceResponse": t["completion"].strip()} for t in tickets]),
    )
    trained = wait_for_status(
        bedrock,
        bedrock.create_model_customization_job(
            jobName=name,
            customModelName=name,
            roleArn=ROLE,
            baseModelIdentifier=STUDENT_MODEL,
            trainingDataConfig={"s3Uri": f"{prefix}/train.jsonl"},
            outputDataConfig={"s3Uri": f"{prefix}/training/"},
            hyperParameters={"trainingMethod": "lora", "epochCount": "40", "batchSize": "4", "learningRate": "1e-2"},
        )["jobArn"],
        TERMINAL,
    )
    assert trained["status"] == "Completed", trained.get("failureMessage")
    tuned = trained["outputModelArn"]

    with pytest.raises(ClientError) as three:
        bedrock.create_evaluation_job(
            **evaluation_request(f"{name}-3", f"{prefix}/tickets.jsonl", f"{prefix}/out", [STUDENT_MODEL] * 3, 4)
        )
    assert three.value.response["Error"]["Code"] == "ValidationException"
    assert "inferenceConfig.models" in three.value.response["Error"]["Message"]

    arn = bedrock.create_evaluation_job(
        **evaluation_request(name, f"{prefix}/tickets.jsonl", f"{prefix}/out", [STUDENT_MODEL, tuned], 16)
    )["jobArn"]
    done = wait_for(bedrock, arn)
    assert done["status"] == "Completed", done.get("failureMessages")
    assert done["jobType"] == "Automated" and done["applicationType"] == "ModelEvaluation"
    job_id = arn.rsplit("/", 1)[-1]
    summary = json.loads(store.read_bytes(f"{prefix}/out/{name}/{job_id}/summary.json"))
    base, candidate = summary["results"]
    assert base["modelIdentifier"] == STUDENT_MODEL and candidate["modelIdentifier"] == tuned
    (gain,) = summary["comparisons"]
    assert gain["metricName"] == "Builtin.Accuracy" and gain["candidate"] == tuned
    assert gain["difference"] == candidate["metrics"]["Builtin.Accuracy"] - base["metrics"]["Builtin.Accuracy"]
    assert gain["difference"] >= 0.5, summary
    for row in (base, candidate):
        assert row["records"] == len(tickets) and row["latencyP50Ms"] > 0 and row["tokensPerSecond"] > 0
    folder = f"{prefix}/out/{name}/{job_id}/models/{tuned.replace('/', '_').replace(':', '_')}"
    lines = store.read_bytes(f"{folder}/taskTypes/Classification/datasets/tickets/{job_id}_output.jsonl")
    assert len(lines.splitlines()) == len(tickets)
    listed = bedrock.list_evaluation_jobs(nameContains=name)["jobSummaries"]
    assert [(j["jobArn"], j["status"], j["evaluationTaskTypes"]) for j in listed] == [
        (arn, "Completed", ["Classification"])
    ]
    assert listed[0]["modelIdentifiers"] == [STUDENT_MODEL, tuned]

    stopped_arn = bedrock.create_evaluation_job(
        **evaluation_request(f"{name}-stop", f"{prefix}/tickets.jsonl", f"{prefix}/out", [STUDENT_MODEL], 400)
    )["jobArn"]
    bedrock.stop_evaluation_job(jobIdentifier=stopped_arn)
    assert wait_for(bedrock, stopped_arn)["status"] == "Stopped"
    deleted = bedrock.batch_delete_evaluation_job(jobIdentifiers=[stopped_arn, arn])
    assert deleted["errors"] == []
    assert {j["jobIdentifier"] for j in deleted["evaluationJobs"]} == {stopped_arn, arn}
    with pytest.raises(ClientError) as gone:
        bedrock.get_evaluation_job(jobIdentifier=arn)
    assert gone.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert store.exists(f"{prefix}/out/{name}/{job_id}/summary.json")  # the results are the user's to keep


def test_a_judge_model_rates_each_answer_on_its_scale(server: Server) -> None:
    """A local judge (forge-micro, random-initialised: the mechanism, not its skill) through boto3:
    one rating per record and metric, on the scale, in Bedrock's output layout; and the refusal of a
    judge metric without a judge."""
    bedrock, store = server.bedrock(), ObjectStore.from_settings(server.settings)
    name = unique("evaljudge")
    prefix = f"s3://tests/evaluation/{name}"
    rows = [("What is 2 + 3?", "5", "9"), ("What is the capital of Italy?", "Rome", "Oslo")]
    store.write_bytes(
        f"{prefix}/qa.jsonl",
        jsonl(
            [
                {
                    "prompt": prompt,
                    "referenceResponse": right,
                    "modelResponses": [
                        {"response": right, "modelIdentifier": "right"},
                        {"response": wrong, "modelIdentifier": "wrong"},
                    ],
                }
                for prompt, right, wrong in rows
            ]
        ),
    )
    request: dict[str, Any] = {
        "jobName": name,
        "roleArn": ROLE,
        "evaluationConfig": {
            "automated": {
                "datasetMetricConfigs": [
                    {
                        "taskType": "Custom",
                        "dataset": {"name": "qa", "datasetLocation": {"s3Uri": f"{prefix}/qa.jsonl"}},
                        "metricNames": ["Builtin.Correctness", "Builtin.Completeness"],
                    }
                ],
            }
        },
        "inferenceConfig": {
            "models": [{"precomputedInferenceSource": {"inferenceSourceIdentifier": s}} for s in ("right", "wrong")]
        },
        "outputDataConfig": {"s3Uri": f"{prefix}/out"},
    }
    with pytest.raises(ClientError) as no_judge:
        bedrock.create_evaluation_job(**request)
    assert no_judge.value.response["Error"]["Code"] == "ValidationException"
    assert "is rated by a judge model" in no_judge.value.response["Error"]["Message"]
    request["evaluationConfig"]["automated"]["evaluatorModelConfig"] = {
        "bedrockEvaluatorModels": [{"modelIdentifier": STUDENT_MODEL}]
    }
    arn = bedrock.create_evaluation_job(**request)["jobArn"]
    done = wait_for(bedrock, arn)
    assert done["status"] == "Completed", done.get("failureMessages")
    job_id = arn.rsplit("/", 1)[-1]
    summary = json.loads(store.read_bytes(f"{prefix}/out/{name}/{job_id}/summary.json"))
    for row in summary["results"]:
        assert row["judge"]["modelIdentifier"] == STUDENT_MODEL
        for metric in ("Builtin.Correctness", "Builtin.Completeness"):
            assert sum(row["judge"]["ratingCounts"][metric].values()) == len(rows)
            assert 0.0 <= row["metrics"][metric] <= 1.0
        lines = store.read_bytes(
            f"{prefix}/out/{name}/{job_id}/models/{row['modelIdentifier']}/taskTypes/Custom/datasets/qa/"
            f"{job_id}_output.jsonl"
        ).splitlines()
        assert len(lines) == len(rows)
        for line in lines:
            scores = json.loads(line)["automatedEvaluationResult"]["scores"]
            assert [s["metricName"] for s in scores] == ["Correctness", "Completeness"]
            assert all(s["result"] in (0.0, 0.5, 1.0) and s["evaluatorDetails"] for s in scores)
    assert {c["metricName"] for c in summary["comparisons"]} == {"Builtin.Correctness", "Builtin.Completeness"}
