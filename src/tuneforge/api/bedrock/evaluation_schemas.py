"""Evaluation job wire shapes: CreateEvaluationJob in, jobs out (Get, List, BatchDelete).

Bodies have already passed :func:`tuneforge.api.bedrock.shapes.parse_body` (members and JSON types
against botocore's input shape); lengths, patterns, enums and list sizes are checked here, in
AWS's format. What the request asks for is checked by the service
(:meth:`tuneforge.jobs.evaluations.EvaluationJobService.create`). As elsewhere, URIs are not held
to botocore's ``s3://`` pattern (a local path inside the allowed roots works too), and neither is
``modelIdentifier``: a custom model's ARN or name works too, as in batch inference.
"""

from __future__ import annotations

import json
from typing import Any

from tuneforge.api.bedrock.schemas import (
    MAX_TAGS,
    ROLE_ARN_PATTERN,
    TOKEN_PATTERN,
    Checker,
    _compact,
    _tags,
    iso,
    s3_uri_lengths,
)
from tuneforge.db.tables import EvaluationJob
from tuneforge.errors import TooManyTagsException
from tuneforge.evaluation.judge import MAX_JUDGES
from tuneforge.evaluation.metrics import TASK_TYPES
from tuneforge.jobs.evaluations import (
    APPLICATION_TYPES,
    CreateEvaluationJobRequest,
    DatasetMetricConfig,
    ModelSpec,
)

EVALUATION_JOB_NAME_PATTERN = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
r"""botocore's ``EvaluationJobName`` (``[a-z0-9](-*[a-z0-9]){0,62}``) in a linear-time spelling (length apart)."""
DATASET_NAME_PATTERN = r"[0-9a-zA-Z\-_.]+"
METRIC_NAME_PATTERN = DATASET_NAME_PATTERN
PRECOMPUTED_PATTERN = r"[a-zA-Z0-9][a-zA-Z0-9._-]{0,255}"
MAX_DATASET_CONFIGS = 5
MAX_MODELS = 2
MAX_METRICS = 25
MAX_CUSTOM_METRICS = 10
MAX_RATING_SCALE = 10


def _object(body: dict[str, Any], member: str) -> dict[str, Any]:
    value = body.get(member)
    return value if isinstance(value, dict) else {}


def _json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def _list(c: Checker, value: Any, member: str, maximum: int) -> list[Any]:
    if not isinstance(value, list) or not value:
        c.violations.append(f"Value null at '{member}' failed to satisfy constraint: Member must not be null")
        return []
    if len(value) > maximum:
        c.violations.append(
            f"Value '{len(value)} items' at '{member}' failed to satisfy constraint: "
            f"Member must have length less than or equal to {maximum}"
        )
    return value


def _datasets(c: Checker, automated: dict[str, Any]) -> tuple[DatasetMetricConfig, ...]:
    prefix = "evaluationConfig.automated.datasetMetricConfigs"
    out = []
    for index, config in enumerate(_list(c, automated.get("datasetMetricConfigs"), prefix, MAX_DATASET_CONFIGS)):
        where = f"{prefix}.{index + 1}.member"
        task = c.string(config, "taskType", required=True, max_len=63, enum=TASK_TYPES, where=f"{where}.taskType")
        dataset = _object(config, "dataset")
        name = c.string(
            dataset, "name", required=True, max_len=63, pattern=DATASET_NAME_PATTERN, where=f"{where}.dataset.name"
        )
        location = _object(dataset, "datasetLocation")
        uri_member = f"{where}.dataset.datasetLocation.s3Uri"
        uri = c.string(location, "s3Uri", max_len=1024, where=uri_member) if location else None
        s3_uri_lengths(c, uri, uri_member)
        metrics = []
        for number, metric in enumerate(_list(c, config.get("metricNames"), f"{where}.metricNames", MAX_METRICS)):
            checked = c.string(
                {"m": metric}, "m", max_len=63, pattern=METRIC_NAME_PATTERN, where=f"{where}.metricNames.{number + 1}"
            )
            if checked:
                metrics.append(checked)
        if task and name:
            out.append(DatasetMetricConfig(task, name, uri, tuple(metrics)))
    places = [(config.task_type, config.dataset_name) for config in out]
    if len(set(places)) != len(places):
        # Each one's results go to taskTypes/<task type>/datasets/<name>/ (Bedrock's layout).
        c.violations.append(
            f"Value at '{prefix}' failed to satisfy constraint: dataset names must differ within a task type"
        )
    return tuple(out)


def _models(c: Checker, inference: dict[str, Any]) -> tuple[ModelSpec, ...]:
    if "ragConfigs" in inference and "models" not in inference:
        return ()
    out = []
    for index, model in enumerate(_list(c, inference.get("models"), "inferenceConfig.models", MAX_MODELS)):
        where = f"inferenceConfig.models.{index + 1}.member"
        bedrock, precomputed = model.get("bedrockModel"), model.get("precomputedInferenceSource")
        if isinstance(bedrock, dict):
            identifier = c.string(
                bedrock, "modelIdentifier", required=True, where=f"{where}.bedrockModel.modelIdentifier"
            )
            params = c.string(bedrock, "inferenceParams", max_len=1023, where=f"{where}.bedrockModel.inferenceParams")
            if params is not None and not _json_object(params):
                c.violations.append(
                    f"Value at '{where}.bedrockModel.inferenceParams' failed to satisfy constraint: "
                    'Member must be a JSON object, e.g. {"inferenceConfig": {"maxTokens": 64}}'
                )
            if identifier:
                out.append(ModelSpec(identifier, inference_params=params))
        elif isinstance(precomputed, dict):
            identifier = c.string(
                precomputed,
                "inferenceSourceIdentifier",
                required=True,
                max_len=256,
                pattern=PRECOMPUTED_PATTERN,
                where=f"{where}.precomputedInferenceSource.inferenceSourceIdentifier",
            )
            if identifier:
                out.append(ModelSpec(identifier, precomputed=True))
        else:
            c.violations.append(
                f"Value null at '{where}' failed to satisfy constraint: Member must have bedrockModel or "
                "precomputedInferenceSource"
            )
    identifiers = [spec.identifier for spec in out]
    if len(set(identifiers)) != len(identifiers):
        c.violations.append("Value at 'inferenceConfig.models' failed to satisfy constraint: models must differ")
    return tuple(out)


def _judges(c: Checker, config: dict[str, Any], where: str) -> list[str]:
    """The ``bedrockEvaluatorModels`` identifiers of an ``evaluatorModelConfig`` (botocore: one model)."""
    out = []
    for index, model in enumerate(_list(c, config.get("bedrockEvaluatorModels"), where, MAX_JUDGES)):
        identifier = c.string(
            model, "modelIdentifier", required=True, max_len=2048, where=f"{where}.{index + 1}.member.modelIdentifier"
        )
        if identifier:
            out.append(identifier)
    return out


def _custom_metrics(c: Checker, config: dict[str, Any]) -> tuple[tuple[dict[str, Any], ...], list[str]]:
    """(custom metric definitions, their judges) of a ``customMetricConfig``."""
    prefix = "evaluationConfig.automated.customMetricConfig"
    definitions = []
    for index, source in enumerate(
        _list(c, config.get("customMetrics"), f"{prefix}.customMetrics", MAX_CUSTOM_METRICS)
    ):
        where = f"{prefix}.customMetrics.{index + 1}.member.customMetricDefinition"
        definition = _object(source, "customMetricDefinition")
        name = c.string(
            definition, "name", required=True, max_len=63, pattern=METRIC_NAME_PATTERN, where=f"{where}.name"
        )
        instructions = c.string(definition, "instructions", required=True, max_len=5000, where=f"{where}.instructions")
        scale = definition.get("ratingScale")
        if scale is None:
            c.violations.append(
                f"Value null at '{where}.ratingScale' failed to satisfy constraint: a rating scale is required "
                "here (the judge's reply is forced into it)"
            )
            continue
        for number, item in enumerate(_list(c, scale, f"{where}.ratingScale", MAX_RATING_SCALE)):
            item_where = f"{where}.ratingScale.{number + 1}.member"
            c.string(item, "definition", required=True, max_len=100, where=f"{item_where}.definition")
            value = _object(item, "value")
            if "floatValue" not in value:
                c.violations.append(
                    f"Value at '{item_where}.value' failed to satisfy constraint: only floatValue ratings are "
                    "supported (a stringValue scale has no order to score on)"
                )
        labels = [json.dumps(item.get("value")) for item in scale if isinstance(item, dict)]
        if len(set(labels)) != len(labels):
            c.violations.append(
                f"Value at '{where}.ratingScale' failed to satisfy constraint: rating values must differ"
            )
        if name and instructions:
            definitions.append(definition)
    names = [d["name"] for d in definitions]
    if len(set(names)) != len(names):
        c.violations.append(f"Value at '{prefix}.customMetrics' failed to satisfy constraint: names must differ")
    evaluator = _object(config, "evaluatorModelConfig")
    if not evaluator:
        c.violations.append(
            f"Value null at '{prefix}.evaluatorModelConfig' failed to satisfy constraint: Member must not be null"
        )
    judges = _judges(c, evaluator, f"{prefix}.evaluatorModelConfig.bedrockEvaluatorModels") if evaluator else []
    return tuple(definitions), judges


def _judge(c: Checker, automated: dict[str, Any]) -> tuple[str | None, tuple[dict[str, Any], ...]]:
    """The job's judge model and custom metrics; one judge per job, as Bedrock's lists allow."""
    evaluator = _object(automated, "evaluatorModelConfig")
    where = "evaluationConfig.automated.evaluatorModelConfig.bedrockEvaluatorModels"
    judges = _judges(c, evaluator, where) if evaluator else []
    custom: tuple[dict[str, Any], ...] = ()
    if isinstance(automated.get("customMetricConfig"), dict):
        custom, custom_judges = _custom_metrics(c, automated["customMetricConfig"])
        judges += [j for j in custom_judges if j not in judges]
    if len(judges) > MAX_JUDGES:
        c.violations.append(
            "Value at 'evaluationConfig.automated' failed to satisfy constraint: evaluatorModelConfig and "
            f"customMetricConfig.evaluatorModelConfig must name the same model (at most {MAX_JUDGES} judge per job)"
        )
    return (judges[0] if judges else None), custom


def parse_create_evaluation_job(body: dict[str, Any]) -> CreateEvaluationJobRequest:
    if isinstance(body.get("jobTags"), list) and len(body["jobTags"]) > MAX_TAGS:
        raise TooManyTagsException(f"jobTags: a resource can have at most {MAX_TAGS} tags")
    c = Checker()
    job_name = c.string(body, "jobName", required=True, max_len=63, pattern=EVALUATION_JOB_NAME_PATTERN)
    description = c.string(body, "jobDescription", max_len=200)
    token = c.string(body, "clientRequestToken", max_len=256, pattern=TOKEN_PATTERN)
    role_arn = c.string(body, "roleArn", required=True, max_len=2048, pattern=ROLE_ARN_PATTERN)
    kms = c.string(body, "customerEncryptionKeyId", max_len=2048)
    application_type = c.string(body, "applicationType", enum=APPLICATION_TYPES) or "ModelEvaluation"
    evaluation, inference = _object(body, "evaluationConfig"), _object(body, "inferenceConfig")
    if not evaluation:
        c.violations.append("Value null at 'evaluationConfig' failed to satisfy constraint: Member must not be null")
    if not inference:
        c.violations.append("Value null at 'inferenceConfig' failed to satisfy constraint: Member must not be null")
    automated = evaluation.get("automated")
    datasets = _datasets(c, automated) if isinstance(automated, dict) else ()
    judge, custom_metrics = _judge(c, automated) if isinstance(automated, dict) else (None, ())
    models = _models(c, inference) if inference else ()
    output = _object(body, "outputDataConfig")
    output_uri = c.string(output, "s3Uri", required=True, max_len=1024, where="outputDataConfig.s3Uri")
    s3_uri_lengths(c, output_uri, "outputDataConfig.s3Uri")
    tags = _tags(c, body, "jobTags")
    c.raise_if_any()
    assert job_name and role_arn is not None and output_uri
    return CreateEvaluationJobRequest(
        job_name=job_name,
        role_arn=role_arn,
        evaluation_config=evaluation,
        inference_config=inference,
        output_uri=output_uri,
        datasets=datasets,
        models=models,
        judge=judge,
        custom_metrics=custom_metrics,
        application_type=application_type,
        description=description,
        kms_key_id=kms,
        client_request_token=token,
        tags=tags,
    )


def evaluation_job(job: EvaluationJob) -> dict[str, Any]:
    """GetEvaluationJob's response. The ``tuneforge`` block (which boto3 drops: botocore's shape has
    no member for scores) holds the job's results once computed: per dataset, task type and model,
    each metric's mean, plus latency and tokens/s (tuneforge extensions), and where the files are."""
    return _compact(
        {
            "jobName": job.name,
            "status": job.status,
            "jobArn": job.arn,
            "jobDescription": job.description,
            "roleArn": job.role_arn,
            "customerEncryptionKeyId": job.kms_key_id,
            "jobType": "Automated",
            "applicationType": job.application_type,
            "evaluationConfig": job.evaluation_config,
            "inferenceConfig": job.inference_config,
            "outputDataConfig": job.output_data,
            "creationTime": iso(job.created_at),
            "lastModifiedTime": iso(job.updated_at),
            "failureMessages": job.failure_messages or None,
            "tuneforge": {"results": job.results} if job.results else None,
        }
    )


def evaluation_summary(job: EvaluationJob) -> dict[str, Any]:
    """ListEvaluationJobs' ``EvaluationSummary``."""
    configs = (job.evaluation_config.get("automated") or {}).get("datasetMetricConfigs") or []
    bedrock = [m["identifier"] for m in job.models if not m.get("precomputed") and not m.get("judge")]
    precomputed = [m["identifier"] for m in job.models if m.get("precomputed")]
    model_summary = _compact(
        {
            "bedrockModelIdentifiers": bedrock or None,
            "precomputedInferenceSourceIdentifiers": precomputed or None,
        }
    )
    return _compact(
        {
            "jobArn": job.arn,
            "jobName": job.name,
            "status": job.status,
            "creationTime": iso(job.created_at),
            "jobType": "Automated",
            "evaluationTaskTypes": sorted({c["taskType"] for c in configs}),
            "modelIdentifiers": bedrock or None,
            "inferenceConfigSummary": {"modelConfigSummary": model_summary},
            "applicationType": job.application_type,
        }
    )
