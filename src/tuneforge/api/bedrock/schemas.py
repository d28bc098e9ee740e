"""Bedrock wire shapes: camelCase JSON in, internal requests out, and back.

botocore checks only required members, types and minimum lengths on the client; ``max``,
``pattern`` and ``enum`` constraints are checked here, with AWS's aggregate message format.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, TypeVar

from tuneforge.arns import ArnFactory
from tuneforge.catalog.models import CUSTOMIZATION_TYPES, FoundationModel
from tuneforge.db.listing import Cursor, Page, PageTokens
from tuneforge.db.tables import CustomModel, Job
from tuneforge.errors import (
    TooManyTagsException,
    ValidationException,
    constraint_errors,
    enum_violation,
    length_violation,
    pattern_violation,
    range_violation,
)
from tuneforge.jobs.layout import output_artifacts
from tuneforge.jobs.service import CreateJobRequest

# Every pattern here matches in linear time (tests/unit/test_patterns.py times each against adversarial
# input). Where botocore's shape pattern would backtrack, an equivalent one is used and named: Bedrock's
# job name pattern ``[a-zA-Z0-9](-*[a-zA-Z0-9\+\-\.])*`` takes seconds on ``"a" + "-" * 26 + "!"``.
JOB_NAME_PATTERN = r"[a-zA-Z0-9][a-zA-Z0-9+\-.]*"
MODEL_NAME_PATTERN = r"[0-9a-zA-Z](?:[_-]?[0-9a-zA-Z])*[_-]?"
"""Bedrock's ``([0-9a-zA-Z][_-]?){1,63}``: an alphanumeric first, never two of ``_``/``-`` in a row."""
ROLE_ARN_PATTERN = r"arn:aws(-[^:]+)?:iam::([0-9]{12})?:role/.+"
TOKEN_PATTERN = r"[a-zA-Z0-9](?:[-a-zA-Z0-9]{0,254}[a-zA-Z0-9])?"
TAG_PATTERN = r"[a-zA-Z0-9\s._:/=+@-]*"
PROVIDER_PATTERN = r"[A-Za-z0-9- ]{1,63}"
MAX_TAGS = 200
MAX_S3_KEY_BYTES = 1024
MAX_PATH_SEGMENT_BYTES = 255
REQUEST_TYPES = (*CUSTOMIZATION_TYPES, "IMPORTED")
JOB_STATUSES = ("InProgress", "Completed", "Failed", "Stopping", "Stopped")


def iso(value: datetime | None) -> str | None:
    """The one timestamp format on the wire: UTC, milliseconds, ``Z`` (``2024-01-01T00:00:00.123Z``)."""
    if value is None:
        return None
    aware = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def status_details(details: dict[str, Any] | None) -> dict[str, Any] | None:
    """``statusDetails`` with its stored ISO times re-rendered by :func:`iso`, like every other time."""
    if not details:
        return None
    out: dict[str, Any] = {}
    for stage, value in details.items():
        if isinstance(value, dict):
            value = {k: _wire_time(v) if k.endswith("Time") else v for k, v in value.items()}
        out[stage] = value
    return out


def _wire_time(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return iso(parsed)


class Checker:
    """Collects constraint violations, then raises them as one ValidationException."""

    def __init__(self) -> None:
        self.violations: list[str] = []

    def string(
        self,
        body: dict[str, Any],
        member: str,
        *,
        required: bool = False,
        min_len: int = 1,
        max_len: int = 2048,
        pattern: str | None = None,
        enum: tuple[str, ...] = (),
        where: str | None = None,
    ) -> str | None:
        """``body[member]`` checked against AWS's constraints; ``where`` names it in messages (default: ``member``)."""
        value = body.get(member)
        member = where or member
        if value is None:
            if required:
                self.violations.append(
                    f"Value null at '{member}' failed to satisfy constraint: Member must not be null"
                )
            return None
        if not isinstance(value, str):
            self.violations.append(
                f"Value '{value}' at '{member}' failed to satisfy constraint: Member must be a string"
            )
            return None
        if not min_len <= len(value) <= max_len:
            self.violations.append(length_violation(value, member, min_len, max_len))
        elif pattern is not None and not re.fullmatch(pattern, value):
            self.violations.append(pattern_violation(value, member, pattern))
        elif enum and value not in enum:
            self.violations.append(enum_violation(value, member, enum))
        return value

    def integer(self, value: Any, member: str, minimum: int | None = None, maximum: int | None = None) -> int | None:
        if value is None:
            return None
        if isinstance(value, str) and value.lstrip("-").isdigit():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            self.violations.append(
                f"Value '{value}' at '{member}' failed to satisfy constraint: Member must be an integer"
            )
            return None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            self.violations.append(range_violation(value, member, minimum, maximum))
        return value

    def raise_if_any(self) -> None:
        if self.violations:
            raise constraint_errors(self.violations)


def _tags(checker: Checker, body: dict[str, Any], member: str) -> tuple[dict[str, str], ...]:
    """A ``TagList``: at most 200 ``{"key", "value"}`` pairs of strings, AWS's lengths and pattern."""
    tags = body.get(member) or []
    if not isinstance(tags, list):
        checker.violations.append(f"Value at '{member}' failed to satisfy constraint: Member must be a list")
        return ()
    if len(tags) > MAX_TAGS:
        checker.violations.append(
            f"Value at '{member}' failed to satisfy constraint: "
            f"Member must have length less than or equal to {MAX_TAGS}"
        )
    out = []
    for index, tag in enumerate(tags):
        where = f"{member}.{index + 1}.member"
        if not isinstance(tag, dict) or "key" not in tag or "value" not in tag:
            checker.violations.append(
                f"Value '{tag}' at '{member}' failed to satisfy constraint: Member must have key and value"
            )
            continue
        key = checker.string(tag, "key", required=True, max_len=128, pattern=TAG_PATTERN, where=f"{where}.key")
        value = checker.string(
            tag, "value", required=True, min_len=0, max_len=256, pattern=TAG_PATTERN, where=f"{where}.value"
        )
        if key is not None and value is not None:
            out.append({"key": key, "value": value})
    return tuple(out)


def s3_uri_lengths(checker: Checker, uri: str | None, member: str) -> None:
    """S3's limits, checked before anything is written: a key of at most 1024 bytes, and (because
    the embedded object store keeps keys as files) no path segment over 255 bytes. Local paths get
    the segment rule too, for the same reason."""
    if not uri:
        return
    key = uri[len("s3://") :].partition("/")[2] if uri.startswith("s3://") else uri
    if uri.startswith("s3://") and len(key.encode()) > MAX_S3_KEY_BYTES:
        checker.violations.append(
            f"Value '{uri[:80]}...' at '{member}' failed to satisfy constraint: "
            f"Member must have an S3 key of at most {MAX_S3_KEY_BYTES} bytes"
        )
    elif any(len(part.encode()) > MAX_PATH_SEGMENT_BYTES for part in key.split("/")):
        checker.violations.append(
            f"Value '{uri[:80]}...' at '{member}' failed to satisfy constraint: "
            f"Member must not have a path segment longer than {MAX_PATH_SEGMENT_BYTES} bytes"
        )


def _metadata_filter(c: Checker, value: Any, member: str, depth: int = 0) -> None:
    """Bedrock's RequestMetadataFilters union: exactly one of equals/notEquals (one pair) or andAll/orAll."""
    if not isinstance(value, dict) or len(value) != 1:
        c.violations.append(f"Value at '{member}' failed to satisfy constraint: Member must set exactly one operator")
        return
    ((operator, operand),) = value.items()
    if operator in ("equals", "notEquals"):
        if not isinstance(operand, dict) or len(operand) != 1:
            c.violations.append(
                f"Value at '{member}.{operator}' failed to satisfy constraint: Member must have exactly one entry"
            )
    elif operator in ("andAll", "orAll") and depth == 0:
        if not isinstance(operand, list) or not 1 <= len(operand) <= 16:
            c.violations.append(
                f"Value at '{member}.{operator}' failed to satisfy constraint: Member must have length between 1 and 16"
            )
            return
        for index, item in enumerate(operand):
            _metadata_filter(c, item, f"{member}.{operator}.{index + 1}.member", depth + 1)
    else:
        c.violations.append(
            f"Value '{operator}' at '{member}' failed to satisfy constraint: "
            "Member must satisfy enum value set: [equals, notEquals, andAll, orAll]"
        )


def _invocation_logs_config(c: Checker, logs: Any) -> dict[str, Any] | None:
    member = "trainingDataConfig.invocationLogsConfig"
    if not isinstance(logs, dict):
        c.violations.append(f"Value at '{member}' failed to satisfy constraint: Member must be a structure")
        return None
    source = logs.get("invocationLogSource")
    where = f"{member}.invocationLogSource.s3Uri"
    uri = c.string(source if isinstance(source, dict) else {}, "s3Uri", required=True, max_len=1024, where=where)
    s3_uri_lengths(c, uri, where)
    use = logs.get("usePromptResponse", False)
    if not isinstance(use, bool):
        c.violations.append(f"Value '{use}' at '{member}.usePromptResponse' failed to satisfy constraint: boolean")
    filters = logs.get("requestMetadataFilters")
    if filters is not None:
        _metadata_filter(c, filters, f"{member}.requestMetadataFilters")
    if uri is None:
        return None
    config: dict[str, Any] = {"invocationLogSource": {"s3Uri": uri}, "usePromptResponse": bool(use)}
    if filters is not None:
        config["requestMetadataFilters"] = filters
    return config


def parse_create_job(body: dict[str, Any]) -> CreateJobRequest:
    for member in ("jobTags", "customModelTags"):
        if isinstance(body.get(member), list) and len(body[member]) > MAX_TAGS:
            raise TooManyTagsException(f"{member}: a resource can have at most {MAX_TAGS} tags")
    c = Checker()
    job_name = c.string(body, "jobName", required=True, max_len=63, pattern=JOB_NAME_PATTERN)
    model_name = c.string(body, "customModelName", required=True, max_len=63, pattern=MODEL_NAME_PATTERN)
    role_arn = c.string(body, "roleArn", required=True, max_len=2048, pattern=ROLE_ARN_PATTERN)
    token = c.string(body, "clientRequestToken", max_len=256, pattern=TOKEN_PATTERN)
    base = c.string(body, "baseModelIdentifier", required=True, max_len=2048)
    ctype = c.string(body, "customizationType", enum=REQUEST_TYPES) or "FINE_TUNING"
    kms = c.string(body, "customModelKmsKeyId", max_len=2048)

    training = body.get("trainingDataConfig")
    training_uri = None
    invocation_logs: dict[str, Any] | None = None
    if not isinstance(training, dict):
        c.violations.append("Value null at 'trainingDataConfig' failed to satisfy constraint: Member must not be null")
    else:
        logs = training.get("invocationLogsConfig")
        if logs is not None:
            if ctype != "DISTILLATION":
                raise ValidationException(
                    "trainingDataConfig.invocationLogsConfig is supported only for customizationType DISTILLATION"
                )
            invocation_logs = _invocation_logs_config(c, logs)
            training_uri = invocation_logs["invocationLogSource"]["s3Uri"] if invocation_logs else None
        else:
            where = "trainingDataConfig.s3Uri"
            training_uri = c.string(training, "s3Uri", required=True, max_len=1024, where=where)
            s3_uri_lengths(c, training_uri, where)

    validators: list[str] = []
    validation = body.get("validationDataConfig")
    if isinstance(validation, dict):
        items = validation.get("validators") or []
        if not isinstance(items, list) or len(items) > 10:
            c.violations.append(
                "Value at 'validationDataConfig.validators' failed to satisfy constraint: "
                "Member must have length less than or equal to 10"
            )
        else:
            for index, item in enumerate(items):
                where = f"validationDataConfig.validators.{index + 1}.member.s3Uri"
                uri = c.string(
                    item if isinstance(item, dict) else {}, "s3Uri", required=True, max_len=1024, where=where
                )
                s3_uri_lengths(c, uri, where)
                if uri:
                    validators.append(uri)

    output = body.get("outputDataConfig")
    output_uri = None
    if not isinstance(output, dict):
        c.violations.append("Value null at 'outputDataConfig' failed to satisfy constraint: Member must not be null")
    else:
        output_uri = c.string(output, "s3Uri", required=True, max_len=1024, where="outputDataConfig.s3Uri")
        s3_uri_lengths(c, output_uri, "outputDataConfig.s3Uri")

    hyper = body.get("hyperParameters")
    hyper = {} if hyper is None else hyper
    if not isinstance(hyper, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in hyper.items()):
        c.violations.append(
            "Value at 'hyperParameters' failed to satisfy constraint: Member must be a map of string to string"
        )
        hyper = {}
    job_tags = _tags(c, body, "jobTags")
    model_tags = _tags(c, body, "customModelTags")
    vpc = body.get("vpcConfig")
    config = _customization_config(c, body.get("customizationConfig"))
    c.raise_if_any()
    assert job_name and model_name and role_arn and base and training_uri and output_uri
    if ctype not in CUSTOMIZATION_TYPES:
        raise ValidationException(f"Customization type {ctype} is not supported by tuneforge")
    return CreateJobRequest(
        job_name=job_name,
        custom_model_name=model_name,
        role_arn=role_arn,
        base_model_identifier=base,
        customization_type=ctype,
        training_uri=training_uri,
        invocation_logs=invocation_logs,
        output_uri=output_uri,
        validation_uris=tuple(validators),
        hyperparameters=dict(hyper),
        client_request_token=token,
        customization_config=config,
        vpc_config=vpc if isinstance(vpc, dict) else None,
        kms_key=kms,
        job_tags=job_tags,
        custom_model_tags=model_tags,
    )


def parse_resource_arn(body: dict[str, Any]) -> str:
    c = Checker()
    arn = c.string(body, "resourceARN", required=True, min_len=20, max_len=1011)
    c.raise_if_any()
    assert arn is not None
    return arn


def parse_tag_resource(body: dict[str, Any]) -> tuple[str, tuple[dict[str, str], ...]]:
    if isinstance(body.get("tags"), list) and len(body["tags"]) > MAX_TAGS:
        raise TooManyTagsException(f"A request can add at most {MAX_TAGS} tags")
    c = Checker()
    arn = c.string(body, "resourceARN", required=True, min_len=20, max_len=1011)
    if body.get("tags") is None:
        c.violations.append("Value null at 'tags' failed to satisfy constraint: Member must not be null")
    tags = _tags(c, body, "tags")
    c.raise_if_any()
    assert arn is not None
    return arn, tags


def parse_untag_resource(body: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    c = Checker()
    arn = c.string(body, "resourceARN", required=True, min_len=20, max_len=1011)
    keys = body.get("tagKeys")
    if keys is None:
        c.violations.append("Value null at 'tagKeys' failed to satisfy constraint: Member must not be null")
        keys = []
    elif not isinstance(keys, list) or len(keys) > MAX_TAGS:
        c.violations.append(
            f"Value at 'tagKeys' failed to satisfy constraint: Member must be a list of at most {MAX_TAGS} keys"
        )
        keys = []
    found = [
        c.string({"key": key}, "key", required=True, max_len=128, pattern=TAG_PATTERN, where=f"tagKeys.{i + 1}.member")
        for i, key in enumerate(keys)
    ]
    c.raise_if_any()
    assert arn is not None
    return arn, tuple(key for key in found if key is not None)


CUSTOMIZATION_CONFIG_MEMBERS = ("distillationConfig", "rftConfig")


def _customization_config(c: Checker, config: Any) -> dict[str, Any] | None:
    """The ``customizationConfig`` union's wire shape: exactly one member, and for distillation a
    ``teacherModelConfig`` with a ``teacherModelIdentifier`` string and an integer
    ``maxResponseLengthForInference``. Whether the teacher exists and suits the student is the job
    service's business."""
    if config is None:
        return None
    if not isinstance(config, dict):
        c.violations.append(
            f"Value '{config}' at 'customizationConfig' failed to satisfy constraint: Member must be a structure"
        )
        return None
    members = [key for key in config if config[key] is not None]
    if len(members) != 1 or members[0] not in CUSTOMIZATION_CONFIG_MEMBERS:
        c.violations.append(
            "Value at 'customizationConfig' failed to satisfy constraint: Member must set exactly one of "
            f"[{', '.join(CUSTOMIZATION_CONFIG_MEMBERS)}]"
        )
        return None
    distillation = config.get("distillationConfig")
    if distillation is not None:
        teacher = distillation.get("teacherModelConfig") if isinstance(distillation, dict) else None
        if not isinstance(teacher, dict):
            c.violations.append(
                "Value null at 'customizationConfig.distillationConfig.teacherModelConfig' failed to satisfy "
                "constraint: Member must not be null"
            )
            return None
        prefix = "customizationConfig.distillationConfig.teacherModelConfig"
        c.string(
            {f"{prefix}.teacherModelIdentifier": teacher.get("teacherModelIdentifier")},
            f"{prefix}.teacherModelIdentifier",
            required=True,
            max_len=2048,
        )
        c.integer(teacher.get("maxResponseLengthForInference"), f"{prefix}.maxResponseLengthForInference", 1)
    rft = config.get("rftConfig")
    if rft is not None:
        _rft_config(c, rft)
    return config


RFT_INTEGERS: dict[str, tuple[int | None, int | None]] = {
    "epochCount": (1, 50),
    "batchSize": (16, 512),
    "maxPromptLength": (None, None),
    "trainingSamplePerPrompt": (2, 16),
    "inferenceMaxTokens": (None, None),
    "evalInterval": (1, 100),
}
"""botocore's ``RFTHyperParameters`` integers and their ranges (None: the shape gives none)."""


def _rft_config(c: Checker, rft: Any) -> None:
    """``rftConfig``'s wire shape: a ``graderConfig`` union and ``RFTHyperParameters``' types and ranges.

    Which grader the ARN names, and the hyperparameters' tuneforge limits, are the job service's
    business (:mod:`tuneforge.graders`, the RFT specs)."""
    prefix = "customizationConfig.rftConfig"
    if not isinstance(rft, dict):
        c.violations.append(f"Value '{rft}' at '{prefix}' failed to satisfy constraint: Member must be a structure")
        return
    unknown = sorted(set(rft) - {"graderConfig", "hyperParameters"})
    if unknown:
        c.violations.append(f"Value at '{prefix}' failed to satisfy constraint: Unknown member {unknown[0]}")
    grader = rft.get("graderConfig")
    if grader is not None and not isinstance(grader, dict):
        c.violations.append(
            f"Value '{grader}' at '{prefix}.graderConfig' failed to satisfy constraint: Member must be a structure"
        )
    lambda_grader = grader.get("lambdaGrader") if isinstance(grader, dict) else None
    if isinstance(lambda_grader, dict):
        where = f"{prefix}.graderConfig.lambdaGrader.lambdaArn"
        c.string({where: lambda_grader.get("lambdaArn")}, where, required=True, max_len=512)
    hyper = rft.get("hyperParameters")
    if hyper is None:
        return
    if not isinstance(hyper, dict):
        c.violations.append(
            f"Value '{hyper}' at '{prefix}.hyperParameters' failed to satisfy constraint: Member must be a structure"
        )
        return
    for name, value in hyper.items():
        where = f"{prefix}.hyperParameters.{name}"
        if name in RFT_INTEGERS:
            c.integer(value, where, *RFT_INTEGERS[name])
        elif name == "learningRate":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                c.violations.append(
                    f"Value '{value}' at '{where}' failed to satisfy constraint: Member must be a number"
                )
            elif not 1e-7 <= value <= 1e-3:
                c.violations.append(
                    f"Value '{value}' at '{where}' failed to satisfy constraint: "
                    "Member must have value between 1.0E-7 and 0.001"
                )
        elif name == "reasoningEffort":
            c.string(hyper, name, enum=("low", "medium", "high"), where=where)
        else:
            c.violations.append(f"Value at '{where}' failed to satisfy constraint: Unknown member {name}")


def parse_time(value: str | None, member: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise constraint_errors(
            [f"Value '{value}' at '{member}' failed to satisfy constraint: Member must be an ISO-8601 timestamp"]
        ) from None


def parse_paging(max_results: str | None, sort_by: str | None, sort_order: str | None) -> tuple[int, bool]:
    """(limit, descending) from Bedrock's list query parameters; ``nextToken`` is the caller's
    :class:`~tuneforge.db.listing.PageTokens` business, scoped by :func:`page_scope`."""
    c = Checker()
    limit = c.integer(max_results, "maxResults", 1, 1000) if max_results is not None else 100
    c.string({"sortBy": sort_by}, "sortBy", enum=("CreationTime",))
    c.string({"sortOrder": sort_order}, "sortOrder", enum=("Ascending", "Descending"))
    c.raise_if_any()
    return limit or 100, sort_order != "Ascending"


def page_scope(operation: str, filters: Any) -> str:
    """What a ``nextToken`` is bound to: the operation and every filter and sort choice of the query,
    so that a token sent with other filters is refused rather than silently reused."""
    return f"{operation}:{json.dumps(asdict(filters), sort_keys=True, default=str)}"


T = TypeVar("T")


def list_page(
    tokens: PageTokens,
    operation: str,
    filters: Any,
    next_token: str | None,
    fetch: Callable[[Cursor | None], Page[T]],
    member: str,
    render: Callable[[list[T]], list[Any]],
) -> dict[str, Any]:
    """One page of a List operation: ``member`` holds the rendered items, ``nextToken`` the signed
    cursor of the next page (absent on the last), bound to the operation and its filters."""
    scope = page_scope(operation, filters)
    page = fetch(tokens.decode(scope, next_token))
    body: dict[str, Any] = {member: render(page.items)}
    token = tokens.encode(scope, page.next_cursor)
    if token:
        body["nextToken"] = token
    return body


# -- outputs -------------------------------------------------------------------------------------


def foundation_model(model: FoundationModel, arns: ArnFactory) -> dict[str, Any]:
    return {
        "modelArn": arns.foundation_model(model.model_id),
        "modelId": model.model_id,
        "modelName": model.name,
        "providerName": model.provider,
        "inputModalities": list(model.input_modalities),
        "outputModalities": list(model.output_modalities),
        "responseStreamingSupported": model.streaming,
        "customizationsSupported": list(model.customizations),
        "inferenceTypesSupported": list(model.inference_types),
        "modelLifecycle": {"status": model.lifecycle},
    }


def _metrics(job_or_model: Job | CustomModel) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if job_or_model.training_loss is not None:
        out["trainingMetrics"] = {"trainingLoss": job_or_model.training_loss}
    if job_or_model.validation_losses:
        out["validationMetrics"] = [{"validationLoss": loss} for loss in job_or_model.validation_losses]
    return out


def _output_artifacts(
    job_id: str | None, customization_type: str, output: dict[str, Any], validators: int, tuned: bool = False
) -> Any:
    """tuneforge extension ``outputArtifacts``: name -> URI of the files a completed job wrote.

    botocore drops members its service model does not know, so boto3 users find the same files
    from ``outputDataConfig`` and the job id (docs/bedrock-compatibility.md, "Outputs"); raw HTTP
    clients and the CLI read this.
    """
    if job_id is None or "s3Uri" not in output:
        return None
    return output_artifacts(output["s3Uri"], job_id, customization_type, validators, tuned)


def _validator_count(validation_data: dict[str, Any] | None) -> int:
    return len((validation_data or {}).get("validators", []))


def _compact(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


KMS_KEY_ARN_PATTERN = re.compile(r"arn:aws(-[^:]+)?:kms:[a-zA-Z0-9-]*:[0-9]{12}:key/[a-zA-Z0-9-]{36}")
"""botocore's ``KmsKeyArn``: the responses' key members hold a key ARN, while the requests'
``customModelKmsKeyId`` / ``importedModelKmsKeyId`` may also be a bare key id or an alias."""


def kms_key_arn(key: str | None) -> str | None:
    """The key as a ``KmsKeyArn``, or None (omitted): Bedrock resolves an id or alias to the key's ARN
    through KMS, which tuneforge does not have, so only a key given as its ARN is echoed."""
    return key if key is not None and KMS_KEY_ARN_PATTERN.fullmatch(key) else None


def job_details(job: Job) -> dict[str, Any]:
    return _compact(
        {
            "jobArn": job.arn,
            "jobName": job.name,
            "outputModelName": job.custom_model_name,
            "outputModelArn": job.output_model_arn,
            "clientRequestToken": job.client_request_token,
            "roleArn": job.role_arn,
            "status": job.status,
            "statusDetails": status_details(job.status_details),
            "failureMessage": job.failure_message,
            "creationTime": iso(job.created_at),
            "lastModifiedTime": iso(job.updated_at),
            "endTime": iso(job.ended_at),
            "baseModelArn": job.base_model_arn,
            "hyperParameters": job.hyperparameters,
            "trainingDataConfig": job.training_data,
            "validationDataConfig": job.validation_data or {"validators": []},
            "outputDataConfig": job.output_data,
            "customizationType": job.customization_type,
            "outputModelKmsKeyArn": kms_key_arn(job.kms_key),
            "vpcConfig": job.vpc_config,
            "customizationConfig": job.customization_config,
            **_metrics(job),
            "outputArtifacts": _output_artifacts(
                job.id,
                job.customization_type,
                job.output_data,
                _validator_count(job.validation_data),
                tuned=job.tuning is not None,
            )
            if job.status == "Completed"
            else None,
            "tuning": job.tuning,
            "rftMetrics": rft_metrics(job),
        }
    )


RFT_PROGRESS_KEYS = ("rewardMean", "rewardStd", "firstRewardMean", "klDivergence", "graderFailures", "samplesGraded")


def rft_metrics(job: Job) -> dict[str, Any] | None:
    """tuneforge extension ``rftMetrics`` of a REINFORCEMENT_FINE_TUNING job: its latest step's reward
    (mean and spread), the first step's mean to compare with, the KL to the base model, and the step's
    grader failures out of the answers graded. botocore drops it; raw HTTP clients and the CLI read it."""
    progress = job.progress or {}
    if job.customization_type != "REINFORCEMENT_FINE_TUNING" or "rewardMean" not in progress:
        return None
    return {
        "step": progress.get("step"),
        "totalSteps": progress.get("totalSteps"),
        **{key: progress[key] for key in RFT_PROGRESS_KEYS if key in progress},
    }


def job_summary(job: Job) -> dict[str, Any]:
    return _compact(
        {
            "jobArn": job.arn,
            "baseModelArn": job.base_model_arn,
            "jobName": job.name,
            "status": job.status,
            "statusDetails": status_details(job.status_details),
            "lastModifiedTime": iso(job.updated_at),
            "creationTime": iso(job.created_at),
            "endTime": iso(job.ended_at),
            "customModelArn": job.output_model_arn,
            "customModelName": job.custom_model_name,
            "customizationType": job.customization_type,
        }
    )


def custom_model_details(model: CustomModel) -> dict[str, Any]:
    return _compact(
        {
            "modelArn": model.arn,
            "modelName": model.name,
            "jobName": model.job_name,
            "jobArn": model.job_arn,
            "baseModelArn": model.base_model_arn,
            "customizationType": model.customization_type,
            "modelKmsKeyArn": kms_key_arn(model.kms_key),
            "hyperParameters": model.hyperparameters,
            "trainingDataConfig": model.training_data,
            "validationDataConfig": model.validation_data or {"validators": []},
            "outputDataConfig": model.output_data,
            "creationTime": iso(model.created_at),
            "customizationConfig": model.customization_config,
            "modelStatus": model.status,
            "failureMessage": model.failure_message,
            **_metrics(model),
            "outputArtifacts": _output_artifacts(
                model.job_id, model.customization_type, model.output_data, _validator_count(model.validation_data)
            ),
        }
    )


def custom_model_summary(model: CustomModel, account_id: str) -> dict[str, Any]:
    return {
        "modelArn": model.arn,
        "modelName": model.name,
        "creationTime": iso(model.created_at),
        "baseModelArn": model.base_model_arn,
        "baseModelName": model.base_model_id,
        "customizationType": model.customization_type,
        "ownerAccountId": account_id,
        "modelStatus": model.status,
    }
