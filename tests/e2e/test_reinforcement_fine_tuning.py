"""REINFORCEMENT_FINE_TUNING through boto3 against a real server: a job whose reward rises, and refusals.

The task is one a random-initialised forge-micro can learn in a few steps, so the test shows the
reward rising rather than only a job ending: every prompt asks for the letter A and the built-in
exact-match grader scores 1 for an answer of "A" (or "a"). The untrained model answers one of 260
byte tokens about evenly, so the first step's mean reward is near 0; six GRPO steps of 16 prompts
x 8 sampled answers bring it well above 0.5 (seeded: the same run every time).
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any
from urllib.parse import quote

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.e2e.conftest import ROLE, STUDENT_MODEL, Server, unique, wait_for_status, wait_until
from tuneforge.jobs import layout
from tuneforge.storage import ObjectStore

pytestmark = pytest.mark.e2e

RFT = "REINFORCEMENT_FINE_TUNING"
EXACT_MATCH = {"lambdaGrader": {"lambdaArn": "arn:aws:lambda:us-east-1:123456789012:function:tuneforge-exact-match"}}
WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "green",
    "table",
    "music",
    "light",
    "ocean",
    "paper",
    "tiger",
    "bread",
    "chair",
    "smile",
    "dream",
    "earth",
    "zebra",
    "maple",
    "quiet",
    "north",
]
TERMINAL = ("Completed", "Failed", "Stopped")


def prompt(word: str) -> dict[str, Any]:
    """Bedrock's RFT record for open-weight models: OpenAI chat messages plus reference_answer and extras."""
    return {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Say A: {word}"}],
        "reference_answer": "A",
        "word": word,
    }


def upload(server: Server, name: str, records: list[dict[str, Any]]) -> str:
    uri = f"s3://tests/rft/{name}.jsonl"
    ObjectStore.from_settings(server.settings).write_bytes(uri, "".join(json.dumps(r) + "\n" for r in records).encode())
    return uri


def create(bedrock: Any, training_uri: str, hyper: dict[str, Any], **request: Any) -> str:
    name = unique("rft")
    arn: str = bedrock.create_model_customization_job(
        jobName=name,
        customModelName=f"m-{name}",
        roleArn=ROLE,
        baseModelIdentifier=request.pop("baseModelIdentifier", STUDENT_MODEL),
        customizationType=RFT,
        trainingDataConfig={"s3Uri": training_uri},
        outputDataConfig={"s3Uri": f"s3://tests/rft-out/{name}/"},
        customizationConfig={
            "rftConfig": {"graderConfig": request.pop("grader", EXACT_MATCH), "hyperParameters": hyper}
        },
        **request,
    )["jobArn"]
    return arn


def output_csv(server: Server, job: dict[str, Any], relative: str) -> list[dict[str, str]]:
    job_id = job["jobArn"].rsplit("/", 1)[-1]
    uri = f"{job['outputDataConfig']['s3Uri'].rstrip('/')}/{layout.job_folder(job_id)}/{relative}"
    return list(csv.DictReader(io.StringIO(ObjectStore.from_settings(server.settings).read_bytes(uri).decode())))


def test_rft_job_raises_the_reward_reports_it_and_its_model_serves(server: Server, bedrock: Any) -> None:
    training = upload(server, "letters-train", [prompt(word) for word in WORDS[:16]])
    held_out = upload(server, "letters-validation", [prompt(word) for word in WORDS[16:]])
    hyper = {
        "epochCount": 6,
        "batchSize": 16,
        "learningRate": 1e-3,
        "trainingSamplePerPrompt": 8,
        "inferenceMaxTokens": 1,
        "evalInterval": 3,
    }
    arn = create(bedrock, training, hyper, validationDataConfig={"validators": [{"s3Uri": held_out}]})
    job = wait_for_status(bedrock, arn, TERMINAL)
    assert job["status"] == "Completed", job.get("failureMessage")

    # Get returns the rftConfig with every RFT hyperparameter the job ran with, as botocore's shapes say.
    assert job["customizationType"] == RFT
    rft = job["customizationConfig"]["rftConfig"]
    assert rft["graderConfig"] == EXACT_MATCH
    assert rft["hyperParameters"] == {**hyper, "maxPromptLength": 0, "reasoningEffort": "low"}
    assert job["hyperParameters"]["trainingMethod"] == "lora" and "klCoefficient" in job["hyperParameters"]
    assert isinstance(job["trainingMetrics"]["trainingLoss"], float)
    url = f"{server.url}/model-customization-jobs/{quote(arn, safe='')}"
    raw = httpx.get(url, timeout=10).json()
    metrics = raw["rftMetrics"]
    assert metrics["step"] == metrics["totalSteps"] == 6
    assert metrics["graderFailures"] == 0 and metrics["samplesGraded"] == 16 * 8
    assert metrics["rewardMean"] >= metrics["firstRewardMean"] + 0.3, metrics
    assert metrics["klDivergence"] > 0

    # The metrics CSVs: reward, failures, KL and loss by step; reward by reference; held-out greedy reward.
    rows = output_csv(server, job, layout.RFT_REWARD_METRICS)
    assert [int(r["step_number"]) for r in rows] == list(range(6))
    rewards = [float(r["reward_mean"]) for r in rows]
    assert sum(rewards[-2:]) / 2 >= sum(rewards[:2]) / 2 + 0.3, rewards
    assert all(int(r["samples"]) == 128 and int(r["grader_failures"]) == 0 for r in rows)
    assert float(rows[-1]["kl"]) > 0 and float(rows[-1]["sampling_seconds"]) > 0
    by_reference = output_csv(server, job, layout.RFT_REWARD_BY_REFERENCE)
    assert {r["reference_answer"] for r in by_reference} == {"A"} and len(by_reference) == 6
    validation = output_csv(server, job, layout.RFT_VALIDATION_REWARDS)
    assert [int(r["step_number"]) for r in validation] == [2, 5]
    assert float(validation[-1]["reward_mean"]) >= 0.75, validation
    assert len(output_csv(server, job, layout.TRAINING_METRICS)) == 6
    assert raw["outputArtifacts"]["rewardMetrics"].endswith(layout.RFT_REWARD_METRICS)

    # The live events carried the reward with each step.
    progress = [e for e in httpx.get(f"{url}/events", timeout=10).json()["events"] if e["kind"] == "progress"]
    assert progress and progress[-1]["data"]["rewardMean"] == metrics["rewardMean"]

    # Listed, and the custom model serves: it answers the held-out prompt as it learnt to.
    listed = bedrock.list_model_customization_jobs(nameContains=job["jobName"])["modelCustomizationJobSummaries"]
    assert [(s["jobArn"], s["customizationType"]) for s in listed] == [(arn, RFT)]
    name = unique("rft-serve")
    provisioned = bedrock.create_provisioned_model_throughput(
        provisionedModelName=name, modelId=job["outputModelArn"], modelUnits=1
    )["provisionedModelArn"]
    deployed = wait_until(
        lambda: bedrock.get_provisioned_model_throughput(provisionedModelId=provisioned),
        lambda got: got["status"] in ("InService", "Failed"),
        f"deployment {name}",
    )
    assert deployed["status"] == "InService", deployed.get("failureMessage")
    held = prompt("zebra")
    response = server.bedrock_runtime().converse(
        modelId=provisioned,
        system=[{"text": held["messages"][0]["content"]}],
        messages=[{"role": "user", "content": [{"text": held["messages"][1]["content"]}]}],
        inferenceConfig={"maxTokens": 1},
    )
    assert response["output"]["message"]["content"][0]["text"].strip().casefold() == "a"
    bedrock.delete_provisioned_model_throughput(provisionedModelId=provisioned)


def test_rft_requests_that_cannot_work_are_refused_at_create(server: Server, bedrock: Any) -> None:
    training = upload(server, "refusals", [prompt("apple")])
    # botocore checks the ranges it knows client-side; a client that skips that meets the server's check.
    unchecked = boto3.client(
        "bedrock",
        endpoint_url=server.url,
        region_name=server.settings.region,
        aws_access_key_id="AKIDTESTS",
        aws_secret_access_key="test-secret",
        config=Config(retries={"max_attempts": 1}, parameter_validation=False),
    )
    cases = [
        (unchecked, {}, {"trainingSamplePerPrompt": 1}, "trainingSamplePerPrompt"),
        (
            bedrock,
            {"grader": {"lambdaGrader": {"lambdaArn": "arn:aws:lambda:us-east-1:123456789012:function:no-such"}}},
            {},
            "no grader named 'no-such'",
        ),
        (bedrock, {"baseModelIdentifier": "tuneforge.smollm2-64m-student-v1:0:8k"}, {}, "generates usable text"),
    ]
    for client, request, hyper, fragment in cases:
        with pytest.raises(ClientError) as info:
            create(client, training, hyper, **request)
        assert info.value.response["Error"]["Code"] == "ValidationException"
        assert fragment in info.value.response["Error"]["Message"]


def test_rft_job_fails_naming_the_line_and_field_or_the_graders_error(server: Server, bedrock: Any) -> None:
    hyper = {"epochCount": 1, "batchSize": 16, "trainingSamplePerPrompt": 2, "inferenceMaxTokens": 1}
    answered = {"messages": [*prompt("stone")["messages"], {"role": "assistant", "content": "A"}]}
    bad_data = create(bedrock, upload(server, "bad-record", [prompt("apple"), answered]), hyper)
    no_reference = [{"messages": prompt(word)["messages"]} for word in WORDS[:4]]
    grader_fails = create(bedrock, upload(server, "no-reference", no_reference), hyper)

    job = wait_for_status(bedrock, bad_data, TERMINAL)
    assert job["status"] == "Failed"
    assert 'line 2, field "messages[2].role": the last message must be from "user"' in job["failureMessage"]
    job = wait_for_status(bedrock, grader_fails, TERMINAL)
    assert job["status"] == "Failed"
    assert "The grader tuneforge-exact-match failed on every one of the 8 answers of step 1" in job["failureMessage"]
    assert 'the record has no "reference_answer" to match' in job["failureMessage"]
