"""Bedrock wire shapes for provisioned throughput and invocation logging (camelCase in and out).

The meter is a tuneforge extension: Get and List add a ``tuneforge`` object to each deployment
(``modelUnitHours``, ``pricePerModelUnitHour``, ``cost``, tokens, idle timeout, replicas, deletion).
botocore's parser drops members it does not know, so boto3 users read it from the raw response or
with ``tuneforge throughput get``; clients that ignore it see exactly Bedrock's shapes.
"""

from __future__ import annotations

from typing import Any

from tuneforge.api.bedrock.schemas import (
    TOKEN_PATTERN,
    Checker,
    _compact,
    _tags,
    iso,
    s3_uri_lengths,
)
from tuneforge.db.tables import ProvisionedModel
from tuneforge.errors import TooManyTagsException, ValidationException
from tuneforge.serving.throughput import COMMITMENT_MONTHS, DELETED, STATUSES, CreateThroughputRequest
from tuneforge.serving.usage import Meter

PROVISIONED_NAME_PATTERN = r"([0-9a-zA-Z][_-]?)+"
LIST_STATUSES = (*STATUSES, DELETED)
BUCKET_PATTERN = r"[a-z0-9][\.\-a-z0-9]{1,61}[a-z0-9]"


def parse_create_throughput(body: dict[str, Any]) -> CreateThroughputRequest:
    c = Checker()
    name = c.string(body, "provisionedModelName", required=True, max_len=63, pattern=PROVISIONED_NAME_PATTERN)
    model_id = c.string(body, "modelId", required=True, max_len=2048)
    token = c.string(body, "clientRequestToken", max_len=256, pattern=TOKEN_PATTERN)
    commitment = c.string(body, "commitmentDuration", enum=tuple(COMMITMENT_MONTHS))
    if body.get("modelUnits") is None:
        c.violations.append("Value null at 'modelUnits' failed to satisfy constraint: Member must not be null")
    units = c.integer(body.get("modelUnits"), "modelUnits", 1)
    if isinstance(body.get("tags"), list) and len(body["tags"]) > 200:
        raise TooManyTagsException("A resource can have at most 200 tags")
    tags = _tags(c, body, "tags")
    c.raise_if_any()
    assert name and model_id and units
    return CreateThroughputRequest(
        name=name,
        model_id=model_id,
        model_units=units,
        commitment_duration=commitment,
        tags=tags,
        client_request_token=token,
    )


def parse_update_throughput(body: dict[str, Any]) -> tuple[str | None, str | None]:
    c = Checker()
    name = c.string(body, "desiredProvisionedModelName", max_len=63, pattern=PROVISIONED_NAME_PATTERN)
    model_id = c.string(body, "desiredModelId", max_len=2048)
    c.raise_if_any()
    return name, model_id


def check_list_filters(status_equals: str | None, name_contains: str | None) -> None:
    c = Checker()
    c.string({"statusEquals": status_equals}, "statusEquals", enum=LIST_STATUSES)
    c.string({"nameContains": name_contains}, "nameContains", max_len=63, pattern=PROVISIONED_NAME_PATTERN)
    c.raise_if_any()


def _summary(row: ProvisionedModel) -> dict[str, Any]:
    return _compact(
        {
            "provisionedModelName": row.name,
            "provisionedModelArn": row.arn,
            "modelArn": row.model_arn,
            "desiredModelArn": row.desired_model_arn,
            "foundationModelArn": row.foundation_model_arn,
            "modelUnits": row.model_units,
            "desiredModelUnits": row.model_units,
            "status": row.status,
            "commitmentDuration": row.commitment_duration,
            "commitmentExpirationTime": iso(row.commitment_expires_at),
            "creationTime": iso(row.created_at),
            "lastModifiedTime": iso(row.updated_at),
        }
    )


def _extension(row: ProvisionedModel, meter: Meter, replicas: dict[str, int]) -> dict[str, Any]:
    return _compact(
        {
            "modelUnitHours": round(meter.model_unit_hours, 6),
            "pricePerModelUnitHour": row.price_per_model_unit_hour,
            "cost": round(meter.cost, 6),
            "invocations": meter.invocations,
            "inputTokens": meter.input_tokens,
            "outputTokens": meter.output_tokens,
            "idleTimeoutMinutes": None if row.idle_timeout_s is None else row.idle_timeout_s / 60,
            "lastInvocationTime": iso(row.last_invocation_at),
            "replicas": replicas,
            "deletionTime": iso(row.deleted_at),
            "deletionReason": row.deletion_reason,
        }
    )


def throughput_details(row: ProvisionedModel, meter: Meter, replicas: dict[str, int]) -> dict[str, Any]:
    return {
        **_summary(row),
        **_compact({"failureMessage": row.failure_message}),
        "tuneforge": _extension(row, meter, replicas),
    }


def throughput_summary(row: ProvisionedModel, meter: Meter, replicas: dict[str, int]) -> dict[str, Any]:
    return {**_summary(row), "tuneforge": _extension(row, meter, replicas)}


# -- invocation logging ----------------------------------------------------------------------------

_DELIVERY_FLAGS = (
    "textDataDeliveryEnabled",
    "imageDataDeliveryEnabled",
    "embeddingDataDeliveryEnabled",
    "videoDataDeliveryEnabled",
    "audioDataDeliveryEnabled",
)


def _key_prefix(c: Checker, prefix: str, member: str) -> None:
    """A key prefix the log files can be written under: relative, no ``.``/``..`` segments (they
    would leave the bucket on the embedded store, and S3 keeps them as literal names nobody means),
    no control characters, segments short enough to be file names."""
    segments = prefix.strip("/").split("/")
    if prefix.startswith("/") or any(part in (".", "..") for part in segments):
        c.violations.append(
            f"Value '{prefix}' at '{member}' failed to satisfy constraint: "
            "Member must be a relative key prefix without '.' or '..' segments"
        )
    elif any(ord(char) < 32 or ord(char) == 127 for char in prefix):
        c.violations.append(
            f"Value '{prefix!r}' at '{member}' failed to satisfy constraint: Member must not contain control characters"
        )
    else:
        s3_uri_lengths(c, prefix, member)


def parse_logging_config(body: dict[str, Any]) -> dict[str, Any]:
    """Bedrock's ``loggingConfig``; tuneforge delivers to ``s3Config`` (CloudWatch is not available)."""
    config = body.get("loggingConfig")
    if not isinstance(config, dict):
        raise ValidationException(
            "1 validation error detected: Value null at 'loggingConfig' failed to satisfy constraint: "
            "Member must not be null"
        )
    c = Checker()
    s3 = config.get("s3Config")
    if s3 is not None:
        if not isinstance(s3, dict):
            s3 = {}
        c.string(
            s3,
            "bucketName",
            required=True,
            min_len=3,
            max_len=63,
            pattern=BUCKET_PATTERN,
            where="loggingConfig.s3Config.bucketName",
        )
        prefix = c.string(s3, "keyPrefix", min_len=0, max_len=1024, where="loggingConfig.s3Config.keyPrefix")
        if prefix:
            _key_prefix(c, prefix, "loggingConfig.s3Config.keyPrefix")
    for flag in _DELIVERY_FLAGS:
        if flag in config and not isinstance(config[flag], bool):
            c.violations.append(
                f"Value '{config[flag]}' at '{flag}' failed to satisfy constraint: Member must be a boolean"
            )
    c.raise_if_any()
    if s3 is None:
        raise ValidationException(
            "tuneforge delivers invocation logs to Amazon S3 only: set loggingConfig.s3Config "
            "(cloudWatchConfig is not supported)"
        )
    return {
        "s3Config": {k: v for k, v in s3.items() if k in ("bucketName", "keyPrefix")},
        **{flag: bool(config.get(flag, False)) for flag in _DELIVERY_FLAGS if flag in config},
    }
