"""Hostile and careless input to the Bedrock control plane (issue 9, items 16, 17, 18, 22, 23)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tuneforge.api.bedrock.schemas import parse_create_job
from tuneforge.api.bedrock.serving_schemas import parse_logging_config
from tuneforge.api.bedrock.shapes import parse_body
from tuneforge.db.tables import CustomModel, Job, ProvisionedModel, utcnow
from tuneforge.errors import ConflictException, TooManyTagsException, ValidationException
from tuneforge.jobs.service import CreateJobRequest
from tuneforge.services import Services
from tuneforge.serving.manager import EngineManager
from tuneforge.settings import Settings

BASE = "tuneforge.forge-micro-v1:0:512"
TEACHER = "tuneforge.forge-small-v1:0:512"
JOB_BODY: dict[str, Any] = {
    "jobName": "job-1",
    "customModelName": "model-1",
    "roleArn": "arn:aws:iam::123456789012:role/BedrockRole",
    "baseModelIdentifier": BASE,
    "trainingDataConfig": {"s3Uri": "s3://bucket/train.jsonl"},
    "outputDataConfig": {"s3Uri": "s3://bucket/out/"},
}


@pytest.fixture
def services(fast_tmp: Path) -> Iterator[Services]:
    created = Services.create(Settings(data_dir=fast_tmp / "data"))
    yield created
    created.close()


def refused(raw: bytes | dict[str, Any], operation: str = "CreateModelCustomizationJob") -> str:
    data = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    with pytest.raises(ValidationException) as info:
        parse_create_job(parse_body(data, operation))
    message = info.value.message
    message.encode("utf-8")  # the error itself must be encodable, or the client gets a 500
    return message


# -- item 22: lone surrogates ------------------------------------------------------------------


def test_lone_surrogate_in_job_name_is_a_validation_error_naming_it() -> None:
    raw = json.dumps(JOB_BODY).replace('"job-1"', '"job\\ud800"').encode()
    assert "at 'jobName' failed to satisfy constraint: Member must not contain lone surrogate" in refused(raw)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ('"s3://bucket/train.jsonl"', "trainingDataConfig.s3Uri"),
        ('"model-1"', "customModelName"),
    ],
)
def test_lone_surrogate_in_any_string_member_names_that_member(path: str, expected: str) -> None:
    raw = json.dumps(JOB_BODY).replace(path, path[:-1] + '\\udfff"').encode()
    assert f"at '{expected}'" in refused(raw)


def test_lone_surrogate_in_a_member_name_or_map_key_is_refused_with_an_encodable_message() -> None:
    raw = json.dumps({**JOB_BODY, "hyperParameters": {"epochCount": "1"}}).replace("epochCount", "x\\ud800").encode()
    assert "lone surrogate" in refused(raw)
    raw = json.dumps(JOB_BODY).replace('"jobName"', '"job\\ud800Name"').encode()
    assert "is not a member of CreateModelCustomizationJobRequest" in refused(raw)


# -- item 23: leniency, long keys ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"surprise": 1}, "Value at 'surprise' failed to satisfy constraint: Member is not a member of"),
        ({"jobTags": [{"key": "k", "value": {"o": 1}}]}, "at 'jobTags.1.member.value' failed to satisfy constraint"),
        ({"jobTags": {"key": "k"}}, "at 'jobTags' failed to satisfy constraint: Member must be a list"),
        ({"hyperParameters": {"epochCount": 2}}, "at 'hyperParameters.epochCount' failed to satisfy constraint"),
        ({"jobName": 5}, "at 'jobName' failed to satisfy constraint: Member must be a string"),
        ({"trainingDataConfig": {"s3Uri": "s3://b/x", "extra": True}}, "at 'trainingDataConfig.extra'"),
        ({"outputDataConfig": []}, "at 'outputDataConfig' failed to satisfy constraint: Member must be a structure"),
        (
            {
                "customizationConfig": {
                    "distillationConfig": {"teacherModelConfig": {"maxResponseLengthForInference": "5"}}
                }
            },
            "maxResponseLengthForInference' failed to satisfy constraint: Member must be an integer",
        ),
    ],
)
def test_unknown_members_and_wrong_types_are_refused_naming_the_member(extra: dict[str, Any], fragment: str) -> None:
    assert fragment in refused({**JOB_BODY, **extra})


def test_query_and_path_members_are_not_body_members() -> None:
    body = {"provisionedModelId": "abc", "desiredProvisionedModelName": "x"}
    with pytest.raises(ValidationException, match="'provisionedModelId' failed to satisfy constraint"):
        parse_body(json.dumps(body).encode(), "UpdateProvisionedModelThroughput")


@pytest.mark.parametrize(
    ("member", "uri"),
    [
        ("trainingDataConfig.s3Uri", "s3://bucket/" + "k" * 300 + "/train.jsonl"),
        ("outputDataConfig.s3Uri", "s3://bucket/out/" + "é" * 130 + "/"),
        ("validationDataConfig.validators.1.member.s3Uri", "s3://bucket/" + "v" * 256),
    ],
)
def test_path_segment_over_255_bytes_is_refused_at_create_naming_the_member(member: str, uri: str) -> None:
    body = json.loads(json.dumps(JOB_BODY))
    if member.startswith("validation"):
        body["validationDataConfig"] = {"validators": [{"s3Uri": uri}]}
    else:
        body[member.split(".")[0]] = {"s3Uri": uri}
    message = refused(body)
    assert f"at '{member}' failed to satisfy constraint: Member must not have a path segment longer than 255" in message


def test_s3_key_over_1024_bytes_is_refused_at_create() -> None:
    uri = "s3://bucket/" + "/".join(["é" * 100] * 6)  # 605 characters, 1205 bytes
    message = refused({**JOB_BODY, "outputDataConfig": {"s3Uri": uri}})
    assert (
        "at 'outputDataConfig.s3Uri' failed to satisfy constraint: Member must have an S3 key of at most 1024"
        in message
    )


def test_more_than_200_job_tags_is_too_many_tags() -> None:
    with pytest.raises(TooManyTagsException, match="jobTags"):
        parse_create_job({**JOB_BODY, "jobTags": [{"key": f"k{i}", "value": "v"} for i in range(201)]})


def test_key_of_255_byte_segments_is_accepted() -> None:
    uri = "s3://bucket/" + "k" * 255 + "/train.jsonl"
    assert parse_create_job({**JOB_BODY, "trainingDataConfig": {"s3Uri": uri}}).training_uri == uri


# -- item 16: invocation-logging key prefix ------------------------------------------------------


@pytest.mark.parametrize("prefix", ["../../escape", "logs/../..", "/abs", "a/./b", "ok/\x01"])
def test_logging_key_prefix_that_leaves_the_bucket_is_refused_naming_it(prefix: str) -> None:
    with pytest.raises(ValidationException, match=r"at 'loggingConfig.s3Config.keyPrefix' failed to satisfy"):
        parse_logging_config({"loggingConfig": {"s3Config": {"bucketName": "logs", "keyPrefix": prefix}}})


def test_logging_key_prefix_with_a_long_segment_is_refused() -> None:
    with pytest.raises(ValidationException, match="keyPrefix' failed to satisfy constraint: Member must not have"):
        parse_logging_config({"loggingConfig": {"s3Config": {"bucketName": "logs", "keyPrefix": "p" * 300}}})


def test_invocation_logs_put_refuses_a_prefix_the_store_cannot_write(services: Services) -> None:
    """The service checks with the object store too, whatever the caller parsed."""
    with pytest.raises(ValidationException, match=r"Invalid loggingConfig\.s3Config"):
        services.invocation_logs.put({"s3Config": {"bucketName": "logs", "keyPrefix": "../../escape"}})
    assert services.invocation_logs.get() is None
    services.invocation_logs.put({"s3Config": {"bucketName": "logs", "keyPrefix": "team/a"}})
    assert services.invocation_logs.get() == {"s3Config": {"bucketName": "logs", "keyPrefix": "team/a"}}


# -- item 17: idle timeouts ----------------------------------------------------------------------


@pytest.mark.parametrize("minutes", [float("inf"), float("nan"), 1e300, -1])
def test_idle_timeout_setting_must_be_finite_and_bounded(fast_tmp: Path, minutes: float) -> None:
    with pytest.raises(ValidationError, match="idle_timeout_minutes"):
        Settings(data_dir=fast_tmp, idle_timeout_minutes=minutes)


def add_in_service(services: Services, pid: str, idle_timeout_s: float, idle_for: timedelta) -> str:
    arn_base = f"arn:aws:bedrock:us-east-1::foundation-model/{BASE}"
    long_ago = utcnow() - idle_for
    with services.db.session() as session:
        session.add(
            ProvisionedModel(
                id=pid,
                arn=services.arns.provisioned_model(pid),
                name=f"pt-{pid}",
                request_fingerprint="x",
                model_units=1,
                model_arn=arn_base,
                desired_model_arn=arn_base,
                foundation_model_arn=arn_base,
                status="InService",
                idle_timeout_s=idle_timeout_s,
                price_per_model_unit_hour=1.0,
                created_at=long_ago,
                updated_at=long_ago,
                in_service_at=long_ago,
            )
        )
    return pid


def test_a_row_whose_idle_timeout_overflows_does_not_stop_another_deployments_idle_deletion(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    """A row written before the range check (or by hand) is logged with its id and skipped."""
    bad = add_in_service(services, "aaaaaaaaaaaa", idle_timeout_s=1e300 * 60, idle_for=timedelta(hours=2))
    good = add_in_service(services, "bbbbbbbbbbbb", idle_timeout_s=60, idle_for=timedelta(hours=2))
    manager = EngineManager(services.settings, services.throughput, services.meter, services.invocation_logs)
    with caplog.at_level(logging.ERROR, logger="tuneforge.serving.manager"):
        manager.reap_idle(services.throughput.live())
    with services.db.session() as session:
        statuses = {pid: session.get(ProvisionedModel, pid).status for pid in (bad, good)}  # type: ignore[union-attr]
    assert statuses == {bad: "InService", good: "Deleted"}
    assert bad in caplog.text


# -- item 18: teachers in use ---------------------------------------------------------------------


def add_teacher(services: Services) -> str:
    arn = services.arns.custom_model(TEACHER, "teacher00001")
    with services.db.session() as session:
        session.add(
            CustomModel(
                id="teacher00001",
                arn=arn,
                name="tuned-teacher",
                base_model_id=TEACHER,
                base_model_arn=f"arn:aws:bedrock:us-east-1::foundation-model/{TEACHER}",
                customization_type="FINE_TUNING",
                hyperparameters={},
                training_data={},
                validation_data={},
                output_data={},
                weights_path=str(services.settings.models_dir / "custom" / "teacher00001"),
            )
        )
    return arn


def distillation_job(services: Services, teacher_arn: str, name: str = "distil-1") -> Job:
    return services.jobs.create(
        CreateJobRequest(
            job_name=name,
            custom_model_name=f"{name}-model",
            role_arn="arn:aws:iam::123456789012:role/BedrockRole",
            base_model_identifier=BASE,
            customization_type="DISTILLATION",
            training_uri="s3://bucket/prompts.jsonl",
            output_uri="s3://bucket/out/",
            customization_config={
                "distillationConfig": {"teacherModelConfig": {"teacherModelIdentifier": teacher_arn}}
            },
        )
    )


@pytest.mark.parametrize("status", ["InProgress", "Stopping"])
def test_deleting_the_teacher_of_an_unfinished_distillation_is_a_conflict_naming_the_job(
    services: Services, status: str
) -> None:
    arn = add_teacher(services)
    weights = services.settings.models_dir / "custom" / "teacher00001"
    weights.mkdir(parents=True)
    job = distillation_job(services, arn)
    with services.db.session() as session:
        row = session.get(Job, job.id)
        assert row is not None
        row.status, row.phase = status, "running"
    with pytest.raises(ConflictException, match="teacher of model customization job distil-1"):
        services.custom_models.delete(arn)
    assert weights.is_dir()
    assert services.custom_models.get(arn).arn == arn


def test_the_teacher_can_be_deleted_once_the_distillation_ended(services: Services) -> None:
    arn = add_teacher(services)
    distillation_job(services, arn)
    services.jobs.stop("distil-1")
    services.custom_models.delete(arn)
    with pytest.raises(Exception, match="does not exist"):
        services.custom_models.get(arn)
