"""A job that fails (or stops) leaves no scratch files or unregistered weights behind."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.conftest import ROLE, STUDENT_MODEL, Server, unique, wait_for_status
from tuneforge.data.tasks import make_classification_task, write_jsonl
from tuneforge.jobs import layout
from tuneforge.storage import ObjectStore

pytestmark = pytest.mark.e2e


def test_a_write_failure_at_the_output_location_fails_the_job_and_removes_its_files(
    server: Server, tmp_path: Path
) -> None:
    """The output folder of the job is made a file while it trains: a real write failure, which
    chmod could not give a test running as root."""
    store = ObjectStore.from_settings(server.settings)
    train, _ = make_classification_task(n_train=64, n_test=1, seed=5)
    store.upload_file(write_jsonl(tmp_path / "train.jsonl", train), "s3://cleanup/train.jsonl")
    name = unique("unwritable")
    output = f"s3://cleanup/out/{name}"
    arn: str = server.bedrock().create_model_customization_job(
        jobName=name,
        customModelName=f"m-{name}",
        roleArn=ROLE,
        baseModelIdentifier=STUDENT_MODEL,
        trainingDataConfig={"s3Uri": "s3://cleanup/train.jsonl"},
        outputDataConfig={"s3Uri": f"{output}/"},
        hyperParameters={"epochCount": "2", "batchSize": "4", "checkpointEverySteps": "2"},
    )["jobArn"]
    job_id = arn.rsplit("/", 1)[-1]
    store.write_bytes(f"{output}/{layout.job_folder(job_id)}", b"a file where the job's output folder goes")
    work_dir = server.settings.data_dir / "jobs" / job_id
    model_dir = server.settings.models_dir / "custom" / job_id
    bedrock = server.bedrock()
    saw_checkpoint = False
    deadline = time.monotonic() + 300
    while bedrock.get_model_customization_job(jobIdentifier=arn)["status"] == "InProgress":
        saw_checkpoint = saw_checkpoint or (work_dir / "checkpoints").is_dir()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    job = wait_for_status(bedrock, arn, ("Completed", "Failed", "Stopped"))
    assert job["status"] == "Failed"
    assert job["failureMessage"] == (
        f"Could not write the job's outputs to {output} (Not a directory); make the output location writable, "
        "then create the job again"
    )
    assert saw_checkpoint, "the job should have written checkpoints before the failure"
    assert not work_dir.exists()
    assert not model_dir.exists()
