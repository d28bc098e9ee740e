"""Custom Model Import wire shapes: CreateModelImportJob in, jobs and imported models out.

Bodies have already passed :func:`tuneforge.api.bedrock.shapes.parse_body` (members and JSON types
against botocore's input shape); lengths, patterns and enums are checked here, in AWS's format.
The source URI is not held to botocore's ``s3://`` pattern: tuneforge also takes a local path
inside its allowed roots (botocore does not check patterns on the client, so boto3 sends it).
"""

from __future__ import annotations

from typing import Any

from tuneforge.api.bedrock.schemas import (
    JOB_NAME_PATTERN,
    MAX_TAGS,
    MODEL_NAME_PATTERN,
    ROLE_ARN_PATTERN,
    TOKEN_PATTERN,
    Checker,
    _compact,
    _tags,
    iso,
    kms_key_arn,
    s3_uri_lengths,
)
from tuneforge.catalog.imported import SOURCE_MEMBER, CreateImportJobRequest
from tuneforge.db.tables import ModelImportJob, RegisteredModel
from tuneforge.errors import TooManyTagsException

IMPORT_JOB_STATUSES = ("InProgress", "Completed", "Failed")


def parse_create_import_job(body: dict[str, Any]) -> CreateImportJobRequest:
    for member in ("jobTags", "importedModelTags"):
        if isinstance(body.get(member), list) and len(body[member]) > MAX_TAGS:
            raise TooManyTagsException(f"{member}: a resource can have at most {MAX_TAGS} tags")
    c = Checker()
    job_name = c.string(body, "jobName", required=True, max_len=63, pattern=JOB_NAME_PATTERN)
    model_name = c.string(body, "importedModelName", required=True, max_len=63, pattern=MODEL_NAME_PATTERN)
    role_arn = c.string(body, "roleArn", required=True, max_len=2048, pattern=ROLE_ARN_PATTERN)
    token = c.string(body, "clientRequestToken", max_len=256, pattern=TOKEN_PATTERN)
    kms = c.string(body, "importedModelKmsKeyId", max_len=2048)
    source = body.get("modelDataSource")
    s3 = source.get("s3DataSource") if isinstance(source, dict) else None
    uri = None
    if not isinstance(s3, dict):
        c.violations.append(
            "Value null at 'modelDataSource.s3DataSource' failed to satisfy constraint: Member must not be null"
        )
    else:
        uri = c.string(s3, "s3Uri", required=True, max_len=1024, where=SOURCE_MEMBER)
        s3_uri_lengths(c, uri, SOURCE_MEMBER)
    job_tags = _tags(c, body, "jobTags")
    model_tags = _tags(c, body, "importedModelTags")
    vpc = body.get("vpcConfig")
    c.raise_if_any()
    assert job_name and model_name and role_arn is not None and uri
    return CreateImportJobRequest(
        job_name=job_name,
        imported_model_name=model_name,
        role_arn=role_arn,
        source_uri=uri,
        job_tags=job_tags,
        imported_model_tags=model_tags,
        client_request_token=token,
        vpc_config=vpc if isinstance(vpc, dict) else None,
        kms_key=kms,
    )


def _source(uri: str) -> dict[str, Any]:
    return {"s3DataSource": {"s3Uri": uri}}


def import_job_details(job: ModelImportJob) -> dict[str, Any]:
    return _compact(
        {
            "jobArn": job.arn,
            "jobName": job.name,
            "importedModelName": job.imported_model_name,
            "importedModelArn": job.imported_model_arn,
            "roleArn": job.role_arn,
            "modelDataSource": _source(job.source_uri),
            "status": job.status,
            "failureMessage": job.failure_message,
            "creationTime": iso(job.created_at),
            "lastModifiedTime": iso(job.updated_at),
            "endTime": iso(job.ended_at),
            "vpcConfig": job.vpc_config,
            "importedModelKmsKeyArn": kms_key_arn(job.kms_key),
        }
    )


def import_job_summary(job: ModelImportJob) -> dict[str, Any]:
    return _compact(
        {
            "jobArn": job.arn,
            "jobName": job.name,
            "status": job.status,
            "lastModifiedTime": iso(job.updated_at),
            "creationTime": iso(job.created_at),
            "endTime": iso(job.ended_at),
            "importedModelArn": job.imported_model_arn,
            "importedModelName": job.imported_model_name,
        }
    )


def imported_model_details(model: RegisteredModel) -> dict[str, Any]:
    return _compact(
        {
            "modelArn": model.arn,
            "modelName": model.name,
            "jobName": model.job_name,
            "jobArn": model.job_arn,
            "modelDataSource": _source(model.source),
            "creationTime": iso(model.created_at),
            "modelArchitecture": model.family,
            "modelKmsKeyArn": kms_key_arn(model.kms_key),
            "instructSupported": model.instruct_supported,
            "customModelUnits": {"customModelUnitsPerModelCopy": 1, "customModelUnitsVersion": "v1.0"},
        }
    )


def imported_model_summary(model: RegisteredModel) -> dict[str, Any]:
    return _compact(
        {
            "modelArn": model.arn,
            "modelName": model.name,
            "creationTime": iso(model.created_at),
            "instructSupported": model.instruct_supported,
            "modelArchitecture": model.family,
        }
    )
