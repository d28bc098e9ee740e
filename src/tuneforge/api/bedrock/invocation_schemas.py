"""Batch inference wire shapes: CreateModelInvocationJob in, jobs out (Get and List).

Bodies have already passed :func:`tuneforge.api.bedrock.shapes.parse_body` (members and JSON types
against botocore's input shape); lengths, patterns, enums and ranges are checked here, in AWS's
format. As for customization jobs, the URIs are not held to botocore's ``s3://`` pattern: a local
path inside the allowed roots works too (the service confines both).
"""

from __future__ import annotations

from typing import Any

from tuneforge.api.bedrock.schemas import (
    JOB_NAME_PATTERN,
    MAX_TAGS,
    ROLE_ARN_PATTERN,
    TOKEN_PATTERN,
    Checker,
    _compact,
    _tags,
    iso,
    s3_uri_lengths,
)
from tuneforge.db.tables import ModelInvocationJob
from tuneforge.errors import TooManyTagsException
from tuneforge.jobs.invocations import INVOCATION_TYPES, CreateInvocationJobRequest, expiration_time
from tuneforge.serving.usage import batch_job_cost

INVOCATION_JOB_NAME_PATTERN = JOB_NAME_PATTERN
r"""botocore's ``ModelInvocationJobName`` (``[a-zA-Z0-9]{1,63}(-*[a-zA-Z0-9\+\-\.]){0,63}``) accepts exactly the
customization jobs' names (the length is checked apart); its own spelling backtracks exponentially."""
INVOCATION_TOKEN_PATTERN = TOKEN_PATTERN
"""botocore's ``ModelInvocationIdempotencyToken`` (``[a-zA-Z0-9]{1,256}(-*[a-zA-Z0-9]){0,256}``), linear-time."""
INPUT_URI = "inputDataConfig.s3InputDataConfig.s3Uri"
OUTPUT_URI = "outputDataConfig.s3OutputDataConfig.s3Uri"


def _union_member(c: Checker, body: dict[str, Any], union: str, member: str) -> dict[str, Any] | None:
    """``body[union][member]``: Bedrock's data configs are unions with one member tuneforge knows."""
    config = body.get(union)
    inner = config.get(member) if isinstance(config, dict) else None
    if not isinstance(inner, dict):
        c.violations.append(f"Value null at '{union}.{member}' failed to satisfy constraint: Member must not be null")
        return None
    return inner


def parse_create_invocation_job(body: dict[str, Any]) -> CreateInvocationJobRequest:
    if isinstance(body.get("tags"), list) and len(body["tags"]) > MAX_TAGS:
        raise TooManyTagsException(f"tags: a resource can have at most {MAX_TAGS} tags")
    c = Checker()
    job_name = c.string(body, "jobName", required=True, max_len=63, pattern=INVOCATION_JOB_NAME_PATTERN)
    role_arn = c.string(body, "roleArn", required=True, max_len=2048, pattern=ROLE_ARN_PATTERN)
    model_id = c.string(body, "modelId", required=True, max_len=2048)
    token = c.string(body, "clientRequestToken", max_len=256, pattern=INVOCATION_TOKEN_PATTERN)
    invocation_type = c.string(body, "modelInvocationType", enum=INVOCATION_TYPES)
    timeout = c.integer(body.get("timeoutDurationInHours"), "timeoutDurationInHours", 24, 168)
    input_uri = output_uri = input_format = kms = None
    s3_in = _union_member(c, body, "inputDataConfig", "s3InputDataConfig")
    if s3_in is not None:
        input_uri = c.string(s3_in, "s3Uri", required=True, max_len=1024, where=INPUT_URI)
        input_format = c.string(
            s3_in, "s3InputFormat", enum=("JSONL",), where="inputDataConfig.s3InputDataConfig.s3InputFormat"
        )
        s3_uri_lengths(c, input_uri, INPUT_URI)
    s3_out = _union_member(c, body, "outputDataConfig", "s3OutputDataConfig")
    if s3_out is not None:
        output_uri = c.string(s3_out, "s3Uri", required=True, max_len=1024, where=OUTPUT_URI)
        kms = c.string(s3_out, "s3EncryptionKeyId", where="outputDataConfig.s3OutputDataConfig.s3EncryptionKeyId")
        s3_uri_lengths(c, output_uri, OUTPUT_URI)
    tags = _tags(c, body, "tags")
    vpc = body.get("vpcConfig")
    c.raise_if_any()
    assert job_name and role_arn is not None and model_id and input_uri and output_uri
    return CreateInvocationJobRequest(
        job_name=job_name,
        role_arn=role_arn,
        model_id=model_id,
        input_uri=input_uri,
        output_uri=output_uri,
        input_format=input_format,
        invocation_type=invocation_type,
        timeout_hours=timeout,
        client_request_token=token,
        vpc_config=vpc if isinstance(vpc, dict) else None,
        output_kms_key=kms,
        tags=tags,
    )


def invocation_job(job: ModelInvocationJob) -> dict[str, Any]:
    """GetModelInvocationJob's response; List's summaries have the same members.

    The ``tuneforge`` block (which boto3 ignores) holds the job's tokens so far and what they cost
    at the batch price it was created with: what ``/usage`` bills once the job ends.
    """
    return _compact(
        {
            "jobArn": job.arn,
            "jobName": job.name,
            "modelId": job.model_id,
            "clientRequestToken": job.client_request_token,
            "roleArn": job.role_arn,
            "status": job.status,
            "message": job.message,
            "submitTime": iso(job.created_at),
            "lastModifiedTime": iso(job.updated_at),
            "endTime": iso(job.ended_at),
            "inputDataConfig": job.input_data,
            "outputDataConfig": job.output_data,
            "vpcConfig": job.vpc_config,
            "timeoutDurationInHours": job.timeout_hours,
            "jobExpirationTime": iso(expiration_time(job)),
            "modelInvocationType": job.invocation_type,
            "totalRecordCount": job.total_records,
            "processedRecordCount": job.processed_records,
            "successRecordCount": job.success_records,
            "errorRecordCount": job.error_records,
            "tuneforge": {
                "inputTokenCount": job.input_tokens or 0,
                "outputTokenCount": job.output_tokens or 0,
                "pricePer1kInputTokens": job.price_per_1k_input_tokens,
                "pricePer1kOutputTokens": job.price_per_1k_output_tokens,
                "cost": batch_job_cost(job),
            },
        }
    )
