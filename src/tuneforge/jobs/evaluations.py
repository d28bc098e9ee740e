"""Evaluation jobs: the rules behind Create/Get/List/Stop/BatchDeleteEvaluationJob. No HTTP, no torch.

Everything a job needs is checked when it is created, so a refused request leaves nothing behind:
the task types' metrics (:data:`tuneforge.evaluation.metrics.SUPPORTED`), the models (resolved as
batch inference resolves them: foundation, imported or custom, which a worker loads itself; a
provisioned throughput or custom model deployment stands for the model it serves), the
URIs (inside the allowed roots), and every dataset line (:func:`tuneforge.evaluation.dataset.check_dataset`).

A job is an :class:`~tuneforge.db.tables.EvaluationJob` row in phase ``queued``; the supervisor
claims it like a batch inference job and runs it in a worker process
(:mod:`tuneforge.recipes.evaluation`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from tuneforge.arns import ArnFactory, decode_identifier, is_arn, new_id, resource_type
from tuneforge.db.listing import Cursor, Page, created_and_named, fetch_page
from tuneforge.db.session import Database, unique_or_conflict
from tuneforge.db.tables import CustomModelDeployment, EvaluationJob, KnowledgeBase, ProvisionedModel, utcnow
from tuneforge.errors import ConflictException, ResourceNotFoundException, ServiceError, ValidationException
from tuneforge.evaluation.dataset import check_dataset
from tuneforge.evaluation.judge import BUILTIN_JUDGE_METRICS, JUDGE_TASK_TYPES
from tuneforge.evaluation.metrics import ACCURACY, BUILTIN_METRICS, ROBUSTNESS, SUPPORTED, needs_reference
from tuneforge.idempotency import IdempotentRequest
from tuneforge.jobs.invocations import InvocationJobService
from tuneforge.storage import ObjectStore, StorageError

STATUSES = ("InProgress", "Completed", "Failed", "Stopping", "Stopped", "Deleting")
TERMINAL = ("Completed", "Failed", "Stopped")
APPLICATION_TYPES = ("ModelEvaluation", "RagEvaluation")
MAX_DATASET_BYTES = 50 << 20
DEFAULT_MAX_TOKENS = 128
"""Answer length when ``inferenceParams`` sets none: enough for a label, a short answer or a summary."""


@dataclass(frozen=True)
class DatasetMetricConfig:
    task_type: str
    dataset_name: str
    dataset_uri: str | None
    metric_names: tuple[str, ...]


@dataclass(frozen=True)
class ModelSpec:
    """One of ``inferenceConfig.models``: a Bedrock model, or a precomputed inference source."""

    identifier: str
    precomputed: bool = False
    inference_params: str | None = None


@dataclass(frozen=True)
class CreateEvaluationJobRequest(IdempotentRequest):
    job_name: str
    role_arn: str
    evaluation_config: dict[str, Any]
    inference_config: dict[str, Any]
    output_uri: str
    datasets: tuple[DatasetMetricConfig, ...]
    models: tuple[ModelSpec, ...]
    judge: str | None = None
    """``evaluatorModelConfig``'s model (or ``customMetricConfig``'s: one judge per job)."""
    custom_metrics: tuple[dict[str, Any], ...] = ()
    """``customMetricConfig``'s ``customMetricDefinition`` objects, already checked."""
    application_type: str = "ModelEvaluation"
    description: str | None = None
    kms_key_id: str | None = None
    client_request_token: str | None = None
    tags: tuple[dict[str, str], ...] = ()


@dataclass(frozen=True)
class EvaluationJobFilter:
    creation_time_after: datetime | None = None
    creation_time_before: datetime | None = None
    status_equals: str | None = None
    application_type_equals: str | None = None
    name_contains: str | None = None
    sort_descending: bool = True


class EvaluationJobService:
    def __init__(self, db: Database, store: ObjectStore, arns: ArnFactory, models: InvocationJobService) -> None:
        self.db = db
        self.store = store
        self.arns = arns
        self.models = models

    def create(self, request: CreateEvaluationJobRequest) -> EvaluationJob:
        fingerprint = request.fingerprint()
        if request.client_request_token:
            with self.db.session() as session:
                existing = session.scalar(
                    select(EvaluationJob).where(EvaluationJob.client_request_token == request.client_request_token)
                )
            if existing is not None:
                if existing.request_fingerprint != fingerprint:
                    raise ConflictException(
                        f"The clientRequestToken {request.client_request_token} was already used "
                        "for a different CreateEvaluationJob request"
                    )
                return existing
        check_supported(request)
        if request.application_type == "RagEvaluation":
            models = [self._resolve_rag(rag_config(request.inference_config))]
        else:
            models = [self._resolve(spec) for spec in request.models]
        if request.judge is not None:
            models.append({**self._resolve(ModelSpec(request.judge), "an evaluation job's judge"), "judge": True})
        self._check_uri("outputDataConfig.s3Uri", request.output_uri)
        precomputed = tuple(spec.identifier for spec in request.models if spec.precomputed)
        for index, config in enumerate(request.datasets):
            where = f"evaluationConfig.automated.datasetMetricConfigs.{index + 1}.member.dataset.datasetLocation.s3Uri"
            if config.dataset_uri is None:
                raise ValidationException(
                    f"The dataset {config.dataset_name} has no datasetLocation: built-in datasets are not "
                    "available in tuneforge; give your own dataset's s3Uri"
                )
            content = self._read_dataset(where, config.dataset_uri)
            need_reference = needs_reference(config.task_type, config.metric_names)
            check = check_dataset(content, need_reference, precomputed)
            if check.errors:
                raise ValidationException(check.message(config.dataset_name))
        job_id = new_id()
        now = utcnow()
        job = EvaluationJob(
            id=job_id,
            arn=self.arns.evaluation_job(job_id),
            name=request.job_name,
            description=request.description,
            client_request_token=request.client_request_token,
            request_fingerprint=fingerprint,
            role_arn=request.role_arn,
            kms_key_id=request.kms_key_id,
            application_type=request.application_type,
            evaluation_config=request.evaluation_config,
            inference_config=request.inference_config,
            output_data={"s3Uri": request.output_uri},
            models=models,
            tags=list(request.tags),
            status="InProgress",
            phase="queued",
            created_at=now,
            updated_at=now,
        )
        taken = f"An evaluation job named {request.job_name} (or with this clientRequestToken) already exists"
        with unique_or_conflict(taken), self.db.session() as session:
            if session.scalar(select(EvaluationJob.id).where(EvaluationJob.name == request.job_name)):
                raise ConflictException(f"An evaluation job named {request.job_name} already exists")
            session.add(job)
        return job

    def _resolve(self, spec: ModelSpec, role: str = "an evaluation job") -> dict[str, Any]:
        """What answers for ``spec`` (``role`` says which in messages: the job's model or its judge)."""
        if spec.precomputed:
            return {"identifier": spec.identifier, "precomputed": True}
        try:
            served = self.models.resolve_model(self._served_model(spec.identifier))
        except ValidationException as exc:
            raise ValidationException(exc.message.replace("a batch inference job", role)) from None
        except ResourceNotFoundException as exc:
            if role == "an evaluation job":
                raise
            raise ResourceNotFoundException(f"The judge model (evaluatorModelConfig): {exc.message}") from None
        return {"identifier": spec.identifier, "arn": served.arn, "inferenceParams": spec.inference_params}

    def _resolve_rag(self, config: dict[str, Any]) -> dict[str, Any]:
        """The generator resolved like any evaluated model; the knowledge base must exist now."""
        with self.db.session() as session:
            if session.get(KnowledgeBase, str(config["knowledgeBaseId"])) is None:
                raise ResourceNotFoundException(f"Knowledge base with id {config['knowledgeBaseId']} does not exist")
        resolved = self._resolve(ModelSpec(str(config["modelArn"])))
        return {**resolved, "rag": config}

    def _served_model(self, identifier: str) -> str:
        """The model a provisioned throughput or custom model deployment serves, for an identifier
        that names one (Bedrock evaluates a custom model through its provisioned throughput); any
        other identifier as it is. The worker then loads that model itself: greedy answers are the
        ones the deployment gives."""
        identifier = decode_identifier(identifier)
        kind = resource_type(identifier) if is_arn(identifier) else ""
        with self.db.session() as session:
            if kind == "provisioned-model":
                model_arn = session.scalar(select(ProvisionedModel.model_arn).where(ProvisionedModel.arn == identifier))
            elif kind == "custom-model-deployment":
                model_arn = session.scalar(
                    select(CustomModelDeployment.model_arn).where(CustomModelDeployment.arn == identifier)
                )
            else:
                return identifier
        if model_arn is None:
            raise ResourceNotFoundException(f"The model {identifier} does not exist.")
        return str(model_arn)

    def _check_uri(self, member: str, uri: str) -> None:
        try:
            self.store.check(uri)
        except StorageError as exc:
            raise ValidationException(f"Invalid {member} {uri}: {exc}") from None

    def _read_dataset(self, member: str, uri: str) -> bytes:
        self._check_uri(member, uri)
        try:
            if not self.store.exists(uri):
                raise ValidationException(f"Invalid {member} {uri}: no dataset file at this location")
            if self.store.size(uri) > MAX_DATASET_BYTES:
                raise ValidationException(
                    f"Invalid {member} {uri}: the dataset is larger than {MAX_DATASET_BYTES >> 20} MiB"
                )
            return self.store.read_bytes(uri)
        except (StorageError, OSError) as exc:
            raise ValidationException(f"Invalid {member} {uri}: {exc}") from None

    # -- read -----------------------------------------------------------------------------------

    def get(self, identifier: str) -> EvaluationJob:
        with self.db.session() as session:
            return self._find(session, identifier)

    @staticmethod
    def _find(session: Session, identifier: str) -> EvaluationJob:
        identifier = decode_identifier(identifier)
        column = EvaluationJob.arn if is_arn(identifier) else EvaluationJob.id
        job = session.scalar(select(EvaluationJob).where(column == identifier))
        if job is None:
            raise ResourceNotFoundException(f"The evaluation job {identifier} does not exist.")
        return job

    def list_jobs(self, filters: EvaluationJobFilter, after: Cursor | None, limit: int) -> Page[EvaluationJob]:
        query = created_and_named(
            select(EvaluationJob),
            EvaluationJob,
            after=filters.creation_time_after,
            before=filters.creation_time_before,
            name_contains=filters.name_contains,
        )
        if filters.status_equals:
            query = query.where(EvaluationJob.status == filters.status_equals)
        if filters.application_type_equals:
            query = query.where(EvaluationJob.application_type == filters.application_type_equals)
        return fetch_page(self.db, query, EvaluationJob, descending=filters.sort_descending, after=after, limit=limit)

    # -- stop and delete ------------------------------------------------------------------------

    def stop(self, identifier: str) -> None:
        """A queued job stops at once; a running one goes to Stopping and its worker ends it Stopped."""
        with self.db.session() as session:
            job = self._find(session, identifier)
            if job.status in (*TERMINAL, "Deleting"):
                raise ConflictException(f"The evaluation job {job.arn} is {job.status} and cannot be stopped")
            if job.status == "Stopping":
                return
            job.stop_requested = True
            if job.phase == "queued":
                mark_ended(job, "Stopped", None)
            else:
                job.status, job.updated_at = "Stopping", utcnow()

    def batch_delete(self, identifiers: list[str]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        """(deleted items, errors), as BatchDeleteEvaluationJob answers: each identifier on its own.

        Only a job that has ended can be deleted (Bedrock's rule: stop it first); its row goes and
        its results stay under the output URI, which is the user's.
        """
        deleted: list[dict[str, str]] = []
        errors: list[dict[str, str]] = []
        for identifier in identifiers:
            try:
                with self.db.session() as session:
                    job = self._find(session, identifier)
                    if job.status not in TERMINAL:
                        raise ValidationException(
                            f"The evaluation job {job.arn} is {job.status}: stop it before deleting it"
                        )
                    session.execute(delete(EvaluationJob).where(EvaluationJob.id == job.id))
                deleted.append({"jobIdentifier": identifier, "jobStatus": "Deleting"})
            except ServiceError as exc:
                errors.append({"jobIdentifier": identifier, "code": exc.code, "message": exc.message})
        return deleted, errors


def check_supported(request: CreateEvaluationJobRequest) -> None:
    """What tuneforge does not do (yet), and metrics a task type has no definition for, refused up front."""
    if request.application_type == "RagEvaluation":
        check_rag(request)
    elif "ragConfigs" in request.inference_config:
        raise ValidationException("inferenceConfig.ragConfigs needs applicationType RagEvaluation")
    evaluation = request.evaluation_config
    if "human" in evaluation:
        raise ValidationException(
            "Human evaluation (evaluationConfig.human) is not supported yet: use evaluationConfig.automated"
        )
    precomputed = any(spec.precomputed for spec in request.models)
    custom = {definition["name"] for definition in request.custom_metrics}
    judged = False
    for index, config in enumerate(request.datasets):
        where = f"evaluationConfig.automated.datasetMetricConfigs.{index + 1}.member.metricNames"
        for name in config.metric_names:
            if name in BUILTIN_JUDGE_METRICS or name in custom:
                _check_judge_metric(request, config.task_type, name, where)
                judged = True
                continue
            if name not in BUILTIN_METRICS:
                raise ValidationException(
                    f"The metric {name} at '{where}' is not a built-in metric: use one of "
                    f"{', '.join(SUPPORTED[config.task_type])}"
                )
            if name not in SUPPORTED[config.task_type]:
                reason = "is not supported yet" if name not in (ACCURACY, ROBUSTNESS) else "is not defined"
                raise ValidationException(
                    f"The metric {name} at '{where}' {reason} for task type {config.task_type}: use one of "
                    f"{', '.join(SUPPORTED[config.task_type])}"
                )
            if name == ROBUSTNESS and precomputed:
                raise ValidationException(
                    f"The metric {ROBUSTNESS} needs the model to answer perturbed prompts, which a "
                    "precomputedInferenceSource cannot: remove it or evaluate a Bedrock model"
                )
    if request.judge is not None and not judged:
        raise ValidationException(
            "evaluationConfig.automated.evaluatorModelConfig names a judge model but no metric needs one: ask for "
            f"{', '.join(BUILTIN_JUDGE_METRICS)} or a custom metric on a Custom task"
        )


def _check_judge_metric(request: CreateEvaluationJobRequest, task_type: str, name: str, where: str) -> None:
    """A judge metric runs on a Custom task and needs the job's judge model."""
    if task_type not in JUDGE_TASK_TYPES:
        raise ValidationException(
            f"The metric {name} at '{where}' is rated by a judge model, which runs on task type "
            f"{' or '.join(JUDGE_TASK_TYPES)}, not {task_type}"
        )
    if request.judge is None:
        raise ValidationException(
            f"The metric {name} at '{where}' is rated by a judge model: give its model in "
            "evaluationConfig.automated.evaluatorModelConfig.bedrockEvaluatorModels"
        )


RAG_JUDGE_METRICS = (
    "Builtin.Correctness",
    "Builtin.Completeness",
    "Builtin.Helpfulness",
    "Builtin.LogicalCoherence",
    "Builtin.Faithfulness",
    "Builtin.Harmfulness",
    "Builtin.Stereotyping",
    "Builtin.Refusal",
    "Builtin.CitationPrecision",
    "Builtin.CitationCoverage",
    "Builtin.ContextRelevance",
    "Builtin.ContextCoverage",
)
"""Bedrock's RAG metrics: every one is scored by a judge model, which a RagEvaluation job here does not
run; tuneforge scores the answers with the reference-based metrics and reports the retrieval's
context hit rate (see docs/evaluation.md)."""


def rag_config(inference_config: dict[str, Any]) -> dict[str, Any]:
    """The one ``retrieveAndGenerateConfig.knowledgeBaseConfiguration`` of a RagEvaluation job."""
    configs = inference_config.get("ragConfigs") or []
    if len(configs) != 1:
        raise ValidationException("A RagEvaluation job takes exactly one inferenceConfig.ragConfigs entry")
    knowledge_base = configs[0].get("knowledgeBaseConfig") or {}
    generate = knowledge_base.get("retrieveAndGenerateConfig")
    if not isinstance(generate, dict):
        raise ValidationException(
            "inferenceConfig.ragConfigs.1.member: only knowledgeBaseConfig.retrieveAndGenerateConfig is supported "
            "(retrieveConfig and precomputedRagSourceConfig are not)"
        )
    if generate.get("type") != "KNOWLEDGE_BASE" or not isinstance(generate.get("knowledgeBaseConfiguration"), dict):
        raise ValidationException(
            "retrieveAndGenerateConfig must be of type KNOWLEDGE_BASE with a knowledgeBaseConfiguration"
        )
    config: dict[str, Any] = generate["knowledgeBaseConfiguration"]
    if not config.get("knowledgeBaseId") or not config.get("modelArn"):
        raise ValidationException("knowledgeBaseConfiguration needs knowledgeBaseId and modelArn")
    return config


def check_rag(request: CreateEvaluationJobRequest) -> None:
    """What a RagEvaluation job can do here: one retrieve-and-generate configuration, reference-based metrics."""
    if request.models:
        raise ValidationException(
            "A RagEvaluation job evaluates inferenceConfig.ragConfigs, not inferenceConfig.models"
        )
    rag_config(request.inference_config)
    for config in request.datasets:
        for name in config.metric_names:
            if name in RAG_JUDGE_METRICS:
                raise ValidationException(
                    f"The metric {name} needs a judge model (evaluatorModelConfig), which tuneforge's RagEvaluation "
                    f"does not run: use {ACCURACY}; the retrieval's context hit rate is reported with it"
                )
            if name != ACCURACY:
                raise ValidationException(f"The metric {name} is not supported for RagEvaluation: use {ACCURACY}")


def mark_ended(job: EvaluationJob, status: str, message: str | None) -> None:
    """The one place an evaluation job's final status is written (worker, service and supervisor)."""
    now = utcnow()
    job.status, job.phase = status, "done"
    job.failure_messages = [message] if message and status == "Failed" else []
    job.ended_at = job.updated_at = now
    job.worker_pid = None


def max_tokens(inference_params: str | None, limit: int) -> int:
    """The answer length: ``inferenceParams``' ``inferenceConfig.maxTokens`` (Bedrock's JSON string),
    else :data:`DEFAULT_MAX_TOKENS`, never above the model's own output limit."""
    value: Any = None
    if inference_params:
        try:
            value = (json.loads(inference_params).get("inferenceConfig") or {}).get("maxTokens")
        except (ValueError, AttributeError):
            value = None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        return min(DEFAULT_MAX_TOKENS, limit)
    return min(value, limit)
