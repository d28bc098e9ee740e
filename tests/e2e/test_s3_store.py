"""A fine-tuning job end to end on real S3 (moto's S3 server on loopback), then the endpoint going away.

The server runs with ``TUNEFORGE_OBJECT_STORE=s3`` and finds moto through the AWS configuration
chain (``AWS_ENDPOINT_URL_S3``), as it would find AWS. The training data is put into the bucket with
boto3, the job's outputs must appear in the bucket in the usual layout, and the custom model must
answer a Converse call. Then moto is stopped: its port on loopback is closed, and two new jobs (one
reading its data from S3, one reading a local file and writing to S3) must fail, after the retry
budget, with a reason that names the endpoint. The same flow on the local
object root is what every other end-to-end test runs.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from tests.e2e.conftest import ROLE, STUDENT_MODEL, Server, make_server, unique, wait_for_status
from tests.moto_s3 import MotoS3, moto_s3

pytestmark = pytest.mark.e2e

BUCKET = "tf-s3-e2e"
RECORDS = [{"prompt": f"Ticket {i}: my order has not arrived.", "completion": " shipping"} for i in range(4)] + [
    {"prompt": f"Ticket {i}: I was charged twice.", "completion": " billing"} for i in range(4)
]
TERMINAL = ("Completed", "Failed", "Stopped")


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3]:
    """A moto of this module's own: the test stops it to close its port under the server."""
    with moto_s3() as server:
        yield server


@pytest.fixture(scope="module")
def server(moto: MotoS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in moto.environment().items():
            patch.setenv(name, value)  # the server (and its workers) inherit the AWS chain from here
        srv = make_server(
            tmp_path_factory.mktemp("s3"), object_store="s3", s3_max_attempts=2, s3_timeout_seconds=10, engine_threads=1
        )
        srv.start()
    yield srv
    srv.stop()


def s3_client(moto: MotoS3) -> Any:
    env = moto.environment()
    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL_S3"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def create_job(bedrock: Any, name: str, training: str, output: str) -> str:
    arn: str = bedrock.create_model_customization_job(
        jobName=name,
        customModelName=name,
        roleArn=ROLE,
        baseModelIdentifier=STUDENT_MODEL,
        trainingDataConfig={"s3Uri": training},
        outputDataConfig={"s3Uri": output},
        hyperParameters={"trainingMethod": "lora", "epochCount": "1", "batchSize": "4"},
    )["jobArn"]
    return arn


def test_a_job_trains_from_and_writes_to_s3_serves_and_a_closed_endpoint_fails_the_next_one(
    server: Server, moto: MotoS3
) -> None:
    s3, bedrock = s3_client(moto), server.bedrock()
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="data/train.jsonl", Body="".join(json.dumps(r) + "\n" for r in RECORDS))
    name = unique("s3job")
    done = wait_for_status(
        bedrock, create_job(bedrock, name, f"s3://{BUCKET}/data/train.jsonl", f"s3://{BUCKET}/out/"), TERMINAL
    )
    assert done["status"] == "Completed", done.get("failureMessage")

    job_id = done["jobArn"].rsplit("/", 1)[-1]
    prefix = f"out/model-customization-job-{job_id}/"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]]
    assert f"{prefix}training_artifacts/step_wise_training_metrics.csv" in keys, keys
    assert "out/.write_access_check_file.tmp" in [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    body = s3.get_object(Bucket=BUCKET, Key=f"{prefix}training_artifacts/step_wise_training_metrics.csv")["Body"]
    rows = list(csv.reader(io.StringIO(body.read().decode())))
    assert rows[0] == ["step_number", "epoch_number", "training_loss", "perplexity"] and len(rows) >= 2

    deployment = bedrock.create_custom_model_deployment(modelDeploymentName=name, modelArn=done["outputModelArn"])[
        "customModelDeploymentArn"
    ]
    answer = server.bedrock_runtime().converse(
        modelId=deployment,
        messages=[{"role": "user", "content": [{"text": "Ticket 9: my order has not arrived."}]}],
        inferenceConfig={"maxTokens": 4},
    )
    assert answer["usage"]["outputTokens"] > 0 and answer["output"]["message"]["role"] == "assistant"

    local_data = server.settings.data_dir / "inputs" / "train.jsonl"  # a local path: the local backend's
    local_data.parent.mkdir(parents=True, exist_ok=True)
    local_data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    moto.stop()  # the endpoint's port on loopback is now closed
    reading = create_job(bedrock, unique("s3down-in"), f"s3://{BUCKET}/data/train.jsonl", f"s3://{BUCKET}/o/")
    writing = create_job(bedrock, unique("s3down-out"), str(local_data), f"s3://{BUCKET}/o/")
    unreachable = f"the S3 endpoint {moto.endpoint} is unreachable after 2 attempts (TUNEFORGE_S3_MAX_ATTEMPTS)"
    for arn in (reading, writing):
        failed = wait_for_status(bedrock, arn, TERMINAL)
        assert failed["status"] == "Failed"
        assert unreachable in failed["failureMessage"], failed["failureMessage"]
