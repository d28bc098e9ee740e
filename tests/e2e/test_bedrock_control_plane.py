"""The Bedrock control plane, driven by boto3 against a real server subprocess."""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.e2e.conftest import BASE_MODEL, HANG_GUARD_S, ROLE, Server, TaskData, unique, wait_for_status
from tuneforge.storage import ObjectStore

pytestmark = pytest.mark.e2e


def create_job(bedrock: Any, training_uri: str, **overrides: Any) -> str:
    name = overrides.pop("jobName", unique("job"))
    request: dict[str, Any] = {
        "jobName": name,
        "customModelName": overrides.pop("customModelName", f"m-{name}"),
        "roleArn": ROLE,
        "baseModelIdentifier": BASE_MODEL,
        "customizationType": "FINE_TUNING",
        "trainingDataConfig": {"s3Uri": training_uri},
        "outputDataConfig": {"s3Uri": f"s3://tests/out/{name}/"},
        **overrides,
    }
    arn: str = bedrock.create_model_customization_job(**request)["jobArn"]
    return arn


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    code: str = exc.value.response["Error"]["Code"]
    return code


# -- foundation models ---------------------------------------------------------------------------


def test_list_foundation_models_applies_every_filter(bedrock: Any) -> None:
    ids = {m["modelId"] for m in bedrock.list_foundation_models()["modelSummaries"]}
    assert {BASE_MODEL, "tuneforge.forge-micro-v1:0:512"} <= ids

    def listed(**filters: str) -> set[str]:
        return {m["modelId"] for m in bedrock.list_foundation_models(**filters)["modelSummaries"]}

    assert BASE_MODEL in listed(byProvider="tuneforge")
    assert listed(byProvider="nobody") == set()
    for ctype in ("FINE_TUNING", "CONTINUED_PRE_TRAINING", "DISTILLATION"):
        assert BASE_MODEL in listed(byCustomizationType=ctype)
    assert BASE_MODEL in listed(byInferenceType="ON_DEMAND")
    assert BASE_MODEL in listed(byOutputModality="TEXT")
    assert listed(byOutputModality="IMAGE") == set()
    with pytest.raises(ClientError) as exc:
        bedrock.list_foundation_models(byInferenceType="SOMETIMES")
    assert error_code(exc) == "ValidationException"
    assert "enum value set" in str(exc.value)


def test_get_foundation_model_by_id_and_by_arn(bedrock: Any) -> None:
    details = bedrock.get_foundation_model(modelIdentifier=BASE_MODEL)["modelDetails"]
    assert details["modelArn"] == f"arn:aws:bedrock:us-east-1::foundation-model/{BASE_MODEL}"
    assert details["customizationsSupported"] == [
        "FINE_TUNING",
        "CONTINUED_PRE_TRAINING",
        "DISTILLATION",
        "REINFORCEMENT_FINE_TUNING",
    ]
    assert details["modelLifecycle"] == {"status": "ACTIVE"}
    by_arn = bedrock.get_foundation_model(modelIdentifier=details["modelArn"])["modelDetails"]
    assert by_arn == details


def test_unknown_model_and_job_are_resource_not_found(bedrock: Any) -> None:
    with pytest.raises(ClientError) as exc:
        bedrock.get_foundation_model(modelIdentifier="nobody.nothing-v1:0")
    assert error_code(exc) == "ResourceNotFoundException"
    with pytest.raises(ClientError) as exc:
        bedrock.get_model_customization_job(jobIdentifier="no-such-job")
    assert error_code(exc) == "ResourceNotFoundException"
    with pytest.raises(ClientError) as exc:
        bedrock.get_custom_model(modelIdentifier="no-such-model")
    assert error_code(exc) == "ResourceNotFoundException"
    with pytest.raises(ClientError) as exc:
        bedrock.stop_model_customization_job(jobIdentifier="no-such-job")
    assert error_code(exc) == "ResourceNotFoundException"


# -- the main path -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def completed_job(bedrock: Any, task_data: TaskData) -> dict[str, Any]:
    arn = create_job(
        bedrock,
        task_data.train_uri,
        validationDataConfig={"validators": [{"s3Uri": task_data.validation_uri}]},
        hyperParameters={"seed": "7"},
    )
    return wait_for_status(bedrock, arn, ("Completed", "Failed", "Stopped"))


def test_fine_tuning_job_completes_with_metrics_and_bedrock_outputs(
    completed_job: dict[str, Any], server: Server
) -> None:
    job = completed_job
    assert job["status"] == "Completed", job.get("failureMessage")
    assert job["trainingMetrics"]["trainingLoss"] > 0
    assert len(job["validationMetrics"]) == 1 and job["validationMetrics"][0]["validationLoss"] > 0
    assert {d["status"] for d in job["statusDetails"].values()} == {"Completed"}
    assert job["endTime"] >= job["creationTime"]
    store = ObjectStore.from_settings(server.settings)
    job_id = job["jobArn"].rsplit("/", 1)[-1]
    prefix = f"{job['outputDataConfig']['s3Uri'].rstrip('/')}/model-customization-job-{job_id}"
    training = list(
        csv.reader(
            io.StringIO(store.read_bytes(f"{prefix}/training_artifacts/step_wise_training_metrics.csv").decode())
        )
    )
    assert training[0] == ["step_number", "epoch_number", "training_loss", "perplexity"]
    assert training[1][0] == "0" and len(training) > 2
    validation = list(
        csv.reader(
            io.StringIO(
                store.read_bytes(
                    f"{prefix}/validation_artifacts/post_fine_tuning_validation/validation/validation_metrics.csv"
                ).decode()
            )
        )
    )
    assert validation[0] == ["step_number", "epoch_number", "validation_loss", "perplexity"]
    assert len(validation) >= 2


def test_completed_job_registers_custom_model_with_its_hyperparameters(
    completed_job: dict[str, Any], bedrock: Any
) -> None:
    model = bedrock.get_custom_model(modelIdentifier=completed_job["outputModelArn"])
    assert model["modelName"] == completed_job["outputModelName"]
    assert model["jobArn"] == completed_job["jobArn"]
    assert model["hyperParameters"] == completed_job["hyperParameters"]
    assert model["hyperParameters"]["seed"] == "7" and model["hyperParameters"]["trainingMethod"] == "lora"
    assert model["trainingMetrics"] == completed_job["trainingMetrics"]
    assert model["modelStatus"] == "Active"
    by_name = bedrock.get_custom_model(modelIdentifier=model["modelName"])
    assert by_name["modelArn"] == model["modelArn"]
    listed = bedrock.list_custom_models(nameContains=model["modelName"])["modelSummaries"]
    assert [m["modelArn"] for m in listed] == [model["modelArn"]]


def test_fine_tuned_model_learns_the_held_out_task(
    completed_job: dict[str, Any], server: Server, task_data: TaskData
) -> None:
    from tuneforge.engine.generation import exact_match_accuracy
    from tuneforge.model.folders import load_for_inference
    from tuneforge.services import Services

    services = Services.create(server.settings)
    weights = Path(services.custom_models.get(completed_job["outputModelArn"]).weights_path)
    base, base_tokenizer = load_for_inference(
        server.settings.models_dir / "builtin" / "forge-small", server.settings.models_dir
    )
    tuned, tuned_tokenizer = load_for_inference(weights, server.settings.models_dir)
    before = exact_match_accuracy(base, base_tokenizer, task_data.test_records)
    after = exact_match_accuracy(tuned, tuned_tokenizer, task_data.test_records)
    services.close()
    assert before <= 0.1
    assert after >= 0.8


def test_stopping_a_finished_job_is_a_conflict(completed_job: dict[str, Any], bedrock: Any) -> None:
    with pytest.raises(ClientError) as exc:
        bedrock.stop_model_customization_job(jobIdentifier=completed_job["jobArn"])
    assert error_code(exc) == "ConflictException"


def test_stop_moves_running_job_to_stopped(bedrock: Any, task_data: TaskData, server: Server) -> None:
    arn = create_job(bedrock, task_data.train_uri, hyperParameters={"epochCount": "100"})
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        job = bedrock.get_model_customization_job(jobIdentifier=arn)
        if job["statusDetails"]["trainingDetails"]["status"] == "InProgress":
            break
        assert job["status"] == "InProgress" and time.monotonic() < deadline, job
        time.sleep(0.2)
    bedrock.stop_model_customization_job(jobIdentifier=arn)
    assert bedrock.get_model_customization_job(jobIdentifier=arn)["status"] in ("Stopping", "Stopped")
    job = wait_for_status(bedrock, arn, ("Stopped", "Completed", "Failed"))
    assert job["status"] == "Stopped"  # 100 epochs would take far longer: stopping ended it early
    assert job["statusDetails"]["trainingDetails"]["status"] == "Stopped"
    assert "outputModelArn" not in job


def test_list_jobs_paginates_filters_and_sorts(bedrock: Any, task_data: TaskData) -> None:
    prefix = unique("page")
    arns = []
    for i in range(3):
        arns.append(create_job(bedrock, task_data.small_uri, jobName=f"{prefix}-{i}"))
        bedrock.stop_model_customization_job(jobIdentifier=arns[-1])
    for arn in arns:
        wait_for_status(bedrock, arn, ("Stopped",))

    pages = list(
        bedrock.get_paginator("list_model_customization_jobs").paginate(
            nameContains=prefix, sortOrder="Ascending", PaginationConfig={"PageSize": 1}
        )
    )
    names = [s["jobName"] for p in pages for s in p["modelCustomizationJobSummaries"]]
    assert names == [f"{prefix}-0", f"{prefix}-1", f"{prefix}-2"]
    assert all(len(p["modelCustomizationJobSummaries"]) <= 1 for p in pages)

    first = bedrock.list_model_customization_jobs(nameContains=prefix, maxResults=1)
    assert len(first["modelCustomizationJobSummaries"]) == 1 and "nextToken" in first
    descending = bedrock.list_model_customization_jobs(
        nameContains=prefix, sortBy="CreationTime", sortOrder="Descending"
    )
    assert [s["jobName"] for s in descending["modelCustomizationJobSummaries"]] == names[::-1]

    stopped = bedrock.list_model_customization_jobs(nameContains=prefix, statusEquals="Stopped")
    assert len(stopped["modelCustomizationJobSummaries"]) == 3
    completed = bedrock.list_model_customization_jobs(nameContains=prefix, statusEquals="Completed")
    assert completed["modelCustomizationJobSummaries"] == []


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"jobName": "bad_name!"}, "Member must satisfy regular expression pattern"),
        ({"jobName": "x" * 64}, "Member must have length less than or equal to 63"),
        ({"hyperParameters": {"epochCount": "1000"}}, "epochCount value 1000 is out of range"),
        ({"hyperParameters": {"learningRate": "fast"}}, "learningRate must be a number"),
        ({"hyperParameters": {"dropoutEverything": "1"}}, "Unknown hyperparameter(s): dropoutEverything"),
        ({"customizationType": "MAGIC"}, "Member must satisfy enum value set"),
    ],
)
def test_create_job_refuses_invalid_requests(
    bedrock: Any, task_data: TaskData, overrides: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ClientError) as exc:
        create_job(bedrock, task_data.small_uri, **overrides)
    assert error_code(exc) == "ValidationException"
    assert expected in exc.value.response["Error"]["Message"]


def test_unknown_base_model_is_resource_not_found(bedrock: Any, task_data: TaskData) -> None:
    with pytest.raises(ClientError) as exc:
        create_job(bedrock, task_data.small_uri, baseModelIdentifier="nobody.nothing-v1:0")
    assert error_code(exc) == "ResourceNotFoundException"


def test_malformed_line_fails_preflight_naming_the_line(bedrock: Any, server: Server) -> None:
    store = ObjectStore.from_settings(server.settings)
    lines = [
        '{"prompt": "Ticket: refund please\\nCategory:", "completion": " billing"}',
        '{"prompt": "Ticket: app crashes\\nCategory:", "completion": " technical"}',
        '{"prompt": "Ticket: where is my parcel\\nCategory:" "completion": " shipping"}',
    ]
    store.write_bytes("s3://tests/bad/train.jsonl", ("\n".join(lines) + "\n").encode())
    arn = create_job(bedrock, "s3://tests/bad/train.jsonl")
    job = wait_for_status(bedrock, arn, ("Failed", "Completed"))
    assert job["status"] == "Failed"
    assert "line 3" in job["failureMessage"]
    assert "s3://tests/bad/train.jsonl" in job["failureMessage"]
    assert job["statusDetails"]["validationDetails"]["status"] == "Failed"
    assert job["statusDetails"]["trainingDetails"]["status"] == "NotStarted"  # refused before any training


def test_missing_training_file_fails_with_bedrock_message(bedrock: Any) -> None:
    arn = create_job(bedrock, "s3://tests/nothing/here.jsonl")
    job = wait_for_status(bedrock, arn, ("Failed", "Completed"))
    assert job["failureMessage"] == (
        "Could not validate GetObject permissions to access Amazon S3 bucket: tests at key nothing/here.jsonl"
    )


def test_same_client_request_token_returns_the_same_job(bedrock: Any, task_data: TaskData) -> None:
    name = unique("idem")
    kwargs: dict[str, Any] = {"jobName": name, "clientRequestToken": f"token-{name}"}
    first = create_job(bedrock, task_data.small_uri, **dict(kwargs))
    second = create_job(bedrock, task_data.small_uri, **dict(kwargs))
    assert first == second
    bedrock.stop_model_customization_job(jobIdentifier=first)
    jobs = bedrock.list_model_customization_jobs(nameContains=name)["modelCustomizationJobSummaries"]
    assert len(jobs) == 1


def test_duplicate_job_name_is_a_conflict(bedrock: Any, task_data: TaskData) -> None:
    name = unique("dup")
    arn = create_job(bedrock, task_data.small_uri, jobName=name)
    bedrock.stop_model_customization_job(jobIdentifier=arn)
    with pytest.raises(ClientError) as exc:
        create_job(bedrock, task_data.small_uri, jobName=name, customModelName=f"other-{name}")
    assert error_code(exc) == "ConflictException"


def test_paths_outside_the_roots_are_refused(bedrock: Any, server: Server) -> None:
    link_dir = server.settings.objects_dir / "tests" / "escape"
    link_dir.parent.mkdir(parents=True, exist_ok=True)
    if not link_dir.exists():
        os.symlink("/etc", link_dir)
    for uri in ("s3://tests/../../etc/passwd", "file:///etc/passwd", "s3://tests/escape/passwd", "/etc/passwd"):
        with pytest.raises(ClientError) as exc:
            create_job(bedrock, uri)
        assert error_code(exc) == "ValidationException", uri
        assert "trainingDataConfig.s3Uri" in exc.value.response["Error"]["Message"]


def test_delete_custom_model_removes_its_weights(bedrock: Any, task_data: TaskData, server: Server) -> None:
    arn = create_job(bedrock, task_data.small_uri, hyperParameters={"epochCount": "1"})
    job = wait_for_status(bedrock, arn, ("Completed", "Failed", "Stopped"))
    assert job["status"] == "Completed", job.get("failureMessage")
    weights = server.settings.models_dir / "custom" / arn.rsplit("/", 1)[-1]
    assert any(weights.rglob("*.safetensors"))
    bedrock.delete_custom_model(modelIdentifier=job["outputModelArn"])
    assert not weights.exists()
    with pytest.raises(ClientError) as exc:
        bedrock.get_custom_model(modelIdentifier=job["outputModelArn"])
    assert error_code(exc) == "ResourceNotFoundException"
