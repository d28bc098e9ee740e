"""Hostile bytes in datasets and the object store: one clear error with line and field, never a traceback.

Validation (``tuneforge data validate``) and a job's own reading of the same file must agree: a file
that passes the first must not fail the second, and an error must name the line and the field in both.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.e2e.conftest import ROLE, STUDENT_MODEL, Server, cli, unique, wait_for_status
from tuneforge.storage import ObjectStore

pytestmark = pytest.mark.e2e

TINY_JOB = {"epochCount": "1", "batchSize": "4"}


def records(count: int) -> bytes:
    line = b'{"prompt": "Ticket: refund %d\\nCategory:", "completion": " billing"}\n'
    return b"".join(line % i for i in range(count))


def create_job(server: Server, name: str, training_uri: str) -> str:
    arn: str = server.bedrock().create_model_customization_job(
        jobName=name,
        customModelName=f"m-{name}",
        roleArn=ROLE,
        baseModelIdentifier=STUDENT_MODEL,
        trainingDataConfig={"s3Uri": training_uri},
        outputDataConfig={"s3Uri": f"s3://hostile/out/{name}/"},
        hyperParameters=TINY_JOB,
    )["jobArn"]
    return arn


def test_a_byte_order_mark_passes_validation_and_the_job(server: Server, tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + records(8))
    checked = cli(server, "data", "validate", str(path), "--model", STUDENT_MODEL, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    ObjectStore.from_settings(server.settings).upload_file(path, "s3://hostile/bom.jsonl")
    arn = create_job(server, unique("bom"), "s3://hostile/bom.jsonl")
    job = wait_for_status(server.bedrock(), arn, ("Completed", "Failed", "Stopped"))
    assert job["status"] == "Completed", job.get("failureMessage")


def test_a_lone_surrogate_is_named_by_line_and_field_in_validation_and_in_the_job(
    server: Server, tmp_path: Path
) -> None:
    path = tmp_path / "surrogate.jsonl"
    path.write_bytes(records(3) + b'{"prompt": "Ticket: \\ud800\\nCategory:", "completion": " billing"}\n')
    checked = cli(server, "data", "validate", str(path), "--model", STUDENT_MODEL, check=False)
    assert checked.returncode == 1
    assert "Traceback" not in checked.stdout + checked.stderr
    assert 'line 4, field "prompt": contains the escape \\ud800' in checked.stdout
    ObjectStore.from_settings(server.settings).upload_file(path, "s3://hostile/surrogate.jsonl")
    arn = create_job(server, unique("surrogate"), "s3://hostile/surrogate.jsonl")
    job = wait_for_status(server.bedrock(), arn, ("Completed", "Failed", "Stopped"))
    assert job["status"] == "Failed"
    assert 'line 4, field "prompt": contains the escape \\ud800' in job["failureMessage"]
    assert "s3://hostile/surrogate.jsonl" in job["failureMessage"]


@pytest.fixture
def symlink_loop(server: Server) -> str:
    """``s3://hostile-loop/a`` where ``a -> b -> a`` inside the object root."""
    bucket = server.settings.objects_dir / "hostile-loop"
    bucket.mkdir(parents=True, exist_ok=True)
    for name, target in (("a", "b"), ("b", "a")):
        if not (bucket / name).is_symlink():
            os.symlink(bucket / target, bucket / name)
    return "s3://hostile-loop/a"


def test_a_symlink_loop_is_a_validation_exception_on_create(server: Server, symlink_loop: str) -> None:
    with pytest.raises(ClientError) as caught:
        create_job(server, unique("loop"), f"{symlink_loop}/train.jsonl")
    error: dict[str, Any] = caught.value.response["Error"]
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error["Code"] == "ValidationException"
    assert "cannot be resolved" in error["Message"]


def test_data_cp_of_a_symlink_loop_prints_one_clear_line(server: Server, symlink_loop: str, tmp_path: Path) -> None:
    result = cli(server, "data", "cp", symlink_loop, str(tmp_path / "copy.jsonl"), check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error:") and "cannot be resolved" in result.stderr
