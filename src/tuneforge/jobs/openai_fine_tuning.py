"""OpenAI's fine-tuning jobs, mapped onto tuneforge's customization jobs. No HTTP, no torch.

Every OpenAI job *is* a customization job made by the same :class:`~tuneforge.jobs.service.JobService`
as Bedrock's CreateModelCustomizationJob, named by the OpenAI id (``ftjob-...``), so Bedrock's
GetModelCustomizationJob and ListModelCustomizationJobs see it too. An
:class:`~tuneforge.db.tables.OpenAIFineTuningJob` row keeps what only OpenAI's shape holds.

Methods:

- ``supervised`` -> ``FINE_TUNING`` on the chat file as it is;
- ``dpo`` -> ``FINE_TUNING`` on the preference file as it is, with hyperparameter ``beta``;
- ``reinforcement`` -> ``REINFORCEMENT_FINE_TUNING`` with ``customizationConfig = {"rftConfig":
  {"graderConfig": {"openai": <grader>}, "hyperParameters": {...}}}``.

Hyperparameters: ``n_epochs`` -> ``epochCount``, ``batch_size`` -> ``batchSize``,
``learning_rate_multiplier`` -> ``learningRate`` = multiplier x the base model's default rate,
``beta`` -> ``beta``, and for reinforcement ``eval_interval`` -> ``evalInterval``,
``reasoning_effort`` -> ``reasoningEffort``. ``"auto"`` (or leaving one out) takes tuneforge's
default, which for ``n_epochs`` scales with the dataset as OpenAI's does
(:func:`tuneforge.catalog.tuning.adaptive_epochs`). ``seed`` -> ``seed`` (drawn when not given, and
reported). The result is served as ``fine_tuned_model`` (``ft:<base>:<suffix>:<id>``) and each
checkpoint the recipe keeps as ``<fine_tuned_model>:ckpt-step-<N>``.
"""

from __future__ import annotations

import random
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import and_, or_, select

from tuneforge.catalog.models import FINE_TUNING, REINFORCEMENT_FINE_TUNING, FoundationModel
from tuneforge.db.session import Database
from tuneforge.db.tables import CustomModel, CustomModelDeployment, Job, JobEvent, OpenAIFineTuningJob
from tuneforge.errors import ConflictException, ResourceNotFoundException
from tuneforge.jobs.openai_files import CHAT, PREFERENCE, PROMPT, FileService, ObjectNotFound
from tuneforge.jobs.service import CreateJobRequest, JobService
from tuneforge.serving.deployments import DeploymentRoute, DeploymentService
from tuneforge.serving.runtime import InvalidParameter
from tuneforge.settings import Settings

METHODS = ("supervised", "dpo", "reinforcement")
AUTO = "auto"
OUTPUT_PREFIX = "s3://tuneforge/openai-fine-tuning"
CHECKPOINTS = "checkpoints"
"""Where the recipe keeps each checkpoint's model (:data:`tuneforge.recipes.outputs.CHECKPOINT_MODELS`)."""
SUFFIX = re.compile(r"[A-Za-z0-9._-]{1,64}")
SEED_LIMIT = 2**31
"""The ``seed`` hyperparameter's range is [0, 2**31 - 1]."""

_COMMON = {"n_epochs": "epochCount", "batch_size": "batchSize"}
ALLOWED: dict[str, tuple[str, ...]] = {
    "supervised": ("n_epochs", "batch_size", "learning_rate_multiplier"),
    "dpo": ("n_epochs", "batch_size", "learning_rate_multiplier", "beta"),
    "reinforcement": (
        "n_epochs",
        "batch_size",
        "learning_rate_multiplier",
        "eval_interval",
        "eval_samples",
        "reasoning_effort",
        "compute_multiplier",
    ),
}
KINDS = {"supervised": (CHAT,), "dpo": (PREFERENCE,), "reinforcement": (PROMPT, CHAT)}
"""The file record kinds each method reads (:mod:`tuneforge.jobs.openai_files`)."""
UNMAPPED = {"eval_samples", "compute_multiplier"}
"""Accepted as ``"auto"`` only: tuneforge's reinforcement loop has no such knob."""


@dataclass(frozen=True)
class FineTuningRequest:
    """``fine_tuning.jobs.create``, parsed at the API edge."""

    model: str
    training_file: str
    method: str = "supervised"
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    grader: dict[str, Any] | None = None
    suffix: str | None = None
    seed: int | None = None
    validation_file: str | None = None
    metadata: dict[str, str] | None = None


def _number(name: str, value: Any, *, integer: bool, low: float, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not float(value).is_integer()):
        kind = "an integer" if integer else "a number"
        raise InvalidParameter(f"hyperparameters.{name} must be {kind} or 'auto', got {value!r}", "hyperparameters")
    if value < low or (high is not None and value > high):
        where = f"at least {low:g}" if high is None else f"between {low:g} and {high:g}"
        raise InvalidParameter(f"hyperparameters.{name} must be {where}, got {value!r}", "hyperparameters")
    return float(value)


def _plain(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def tuneforge_hyperparameters(method: str, given: dict[str, Any], default_learning_rate: float) -> dict[str, str]:
    """OpenAI's hyperparameters as tuneforge's (strings, as a job stores them); ``"auto"`` leaves one out."""
    allowed = ALLOWED[method]
    out: dict[str, str] = {}
    for name, value in given.items():
        if name not in allowed:
            raise InvalidParameter(
                f"hyperparameters.{name} is not a {method} hyperparameter; expected one of {', '.join(allowed)}",
                "hyperparameters",
            )
        if value is None or value == AUTO:
            continue
        if name in UNMAPPED:
            raise InvalidParameter(
                f"hyperparameters.{name} is supported as 'auto' only: tuneforge has no such setting", "hyperparameters"
            )
        if name in _COMMON:
            out[_COMMON[name]] = _plain(_number(name, value, integer=True, low=1))
        elif name == "learning_rate_multiplier":
            out["learningRate"] = _plain(_number(name, value, integer=False, low=1e-6) * default_learning_rate)
        elif name == "beta":
            out["beta"] = _plain(_number(name, value, integer=False, low=1e-6, high=2))
        elif name == "eval_interval":
            out["evalInterval"] = _plain(_number(name, value, integer=True, low=1))
        elif name == "reasoning_effort":
            if value not in ("low", "medium", "high"):
                raise InvalidParameter(
                    f"hyperparameters.reasoning_effort must be 'low', 'medium', 'high' or 'auto', got {value!r}",
                    "hyperparameters",
                )
            out["reasoningEffort"] = str(value)
    return out


def fine_tuned_model_name(base_model_id: str, suffix: str | None, openai_id: str) -> str:
    return f"ft:{base_model_id}:{suffix or ''}:{openai_id.removeprefix('ftjob-')}"


def job_request(
    request: FineTuningRequest,
    openai_id: str,
    base: FoundationModel,
    training_uri: str,
    validation_uri: str | None,
    seed: int,
    role_arn: str,
) -> CreateJobRequest:
    """The customization job an OpenAI request makes (see the module docstring for the mapping)."""
    if request.method not in METHODS:
        raise InvalidParameter(f"method.type must be one of {', '.join(METHODS)}, got {request.method!r}", "method")
    customization_type = REINFORCEMENT_FINE_TUNING if request.method == "reinforcement" else FINE_TUNING
    specs = {spec.name: spec for spec in base.hyperparameter_specs(customization_type)}
    default_rate = float(specs["learningRate"].default) if "learningRate" in specs else 1e-4
    hyper = tuneforge_hyperparameters(request.method, request.hyperparameters, default_rate)
    common: dict[str, Any] = dict(
        job_name=openai_id,
        custom_model_name=openai_id,
        role_arn=role_arn,
        base_model_identifier=base.model_id,
        training_uri=training_uri,
        output_uri=f"{OUTPUT_PREFIX}/{openai_id}/",
        validation_uris=(validation_uri,) if validation_uri else (),
    )
    if request.method == "reinforcement":
        if request.grader is None:
            raise InvalidParameter("method.reinforcement.grader is required", "method")
        return CreateJobRequest(
            customization_type=REINFORCEMENT_FINE_TUNING,
            customization_config={"rftConfig": {"graderConfig": {"openai": request.grader}, "hyperParameters": hyper}},
            hyperparameters={"seed": str(seed)},
            **common,
        )
    return CreateJobRequest(customization_type=FINE_TUNING, hyperparameters={**hyper, "seed": str(seed)}, **common)


@dataclass(frozen=True)
class FineTuningJob:
    """A job as OpenAI's surface shows it: the customization job and the OpenAI row."""

    job: Job
    openai: OpenAIFineTuningJob


@dataclass(frozen=True)
class Checkpoint:
    step: int
    model: str
    folder: Path
    created_at: int


def openai_status(job: Job) -> str:
    if job.status == "Completed":
        return "succeeded"
    if job.status == "Failed":
        return "failed"
    if job.status == "Stopped":
        return "cancelled"
    if job.status == "Stopping":
        return "running"
    if job.phase == "paused" or job.pause_requested:
        return "paused"
    if job.phase == "queued":
        return "queued"
    validation = (job.status_details or {}).get("validationDetails", {}).get("status")
    return "validating_files" if validation in ("NotStarted", "InProgress") else "running"


class FineTuningService:
    def __init__(
        self, db: Database, jobs: JobService, files: FileService, deployments: DeploymentService, settings: Settings
    ) -> None:
        self.db = db
        self.jobs = jobs
        self.files = files
        self.deployments = deployments
        self.settings = settings

    # -- create -----------------------------------------------------------------------------------

    def create(self, request: FineTuningRequest) -> FineTuningJob:
        if request.suffix is not None and not SUFFIX.fullmatch(request.suffix):
            raise InvalidParameter("suffix must be 1 to 64 letters, digits, '.', '_' or '-'", "suffix")
        if request.metadata is not None and len(request.metadata) > 16:
            raise InvalidParameter("metadata holds at most 16 key-value pairs", "metadata")
        try:
            base = self.jobs.resolve_base_model(request.model)
        except ResourceNotFoundException:
            raise InvalidParameter(
                f"Model {request.model} is not available for fine-tuning: name a base model of GET /v1/models "
                "(e.g. huggingface.smollm2-135m-instruct-v1:0:8k)",
                "model",
            ) from None
        kinds = KINDS.get(request.method, (CHAT,))
        training = self.files.for_job(request.training_file, "training_file", kinds)
        validation = (
            self.files.for_job(request.validation_file, "validation_file", kinds) if request.validation_file else None
        )
        seed = request.seed if request.seed is not None else random.randrange(SEED_LIMIT)
        if not 0 <= seed < SEED_LIMIT:
            raise InvalidParameter(f"seed must be between 0 and {SEED_LIMIT - 1}, got {seed}", "seed")
        openai_id = f"ftjob-{secrets.token_hex(12)}"
        role = f"arn:aws:iam::{self.settings.account_id}:role/tuneforge-openai-fine-tuning"
        mapped = job_request(request, openai_id, base, training.uri, validation.uri if validation else None, seed, role)
        method: dict[str, Any] = {"type": request.method}
        if request.grader is not None:
            method["grader"] = request.grader
        rows: list[OpenAIFineTuningJob] = []

        def record(job: Job) -> list[Any]:
            rows.append(
                OpenAIFineTuningJob(
                    job_id=job.id,
                    openai_id=openai_id,
                    model=base.model_id,
                    method=method,
                    hyperparameters=dict(request.hyperparameters),
                    suffix=request.suffix,
                    seed=seed,
                    training_file=request.training_file,
                    validation_file=request.validation_file,
                    job_metadata=request.metadata,
                    fine_tuned_model=fine_tuned_model_name(base.model_id, request.suffix, openai_id),
                    created_at=job.created_at,
                )
            )
            return rows

        job = self.jobs.create(mapped, beside=record)
        (row,) = rows
        return FineTuningJob(job, row)

    # -- read -------------------------------------------------------------------------------------

    def get(self, openai_id: str) -> FineTuningJob:
        with self.db.session() as session:
            row = session.scalar(select(OpenAIFineTuningJob).where(OpenAIFineTuningJob.openai_id == openai_id))
            job = None if row is None else session.get(Job, row.job_id)
        if row is None or job is None:
            raise ObjectNotFound(f"Could not find fine-tune job {openai_id}")
        return FineTuningJob(job, row)

    def list_jobs(
        self, after: str | None, limit: int, metadata: dict[str, str] | None = None
    ) -> tuple[list[FineTuningJob], bool]:
        query = select(OpenAIFineTuningJob, Job).join(Job, Job.id == OpenAIFineTuningJob.job_id)
        if after:
            anchor = self.get(after).openai
            query = query.where(
                or_(
                    OpenAIFineTuningJob.created_at < anchor.created_at,
                    and_(
                        OpenAIFineTuningJob.created_at == anchor.created_at,
                        OpenAIFineTuningJob.job_id < anchor.job_id,
                    ),
                )
            )
        query = query.order_by(OpenAIFineTuningJob.created_at.desc(), OpenAIFineTuningJob.job_id.desc())
        if not metadata:
            query = query.limit(limit + 1)
        with self.db.session() as session:
            pairs = [(row, job) for row, job in session.execute(query)]
        if metadata:
            pairs = [
                (row, job)
                for row, job in pairs
                if all((row.job_metadata or {}).get(key) == value for key, value in metadata.items())
            ]
        items = [FineTuningJob(job, row) for row, job in pairs]
        return items[:limit], len(items) > limit

    def events(self, openai_id: str, after: str | None, limit: int) -> tuple[list[JobEvent], bool]:
        """The job's events, newest first, as OpenAI lists them; ``after`` is an event id (``ftevent-N``)."""
        found = self.get(openai_id)
        query = select(JobEvent).where(JobEvent.job_id == found.job.id)
        if after:
            number = after.removeprefix("ftevent-")
            if not number.isdigit():
                raise InvalidParameter(f"after must be an event id (ftevent-N), got {after!r}", "after")
            query = query.where(JobEvent.id < int(number))
        with self.db.session() as session:
            rows = list(session.scalars(query.order_by(JobEvent.id.desc()).limit(limit + 1)))
        return rows[:limit], len(rows) > limit

    def custom_model(self, found: FineTuningJob) -> CustomModel | None:
        if found.job.output_model_arn is None:
            return None
        with self.db.session() as session:
            return session.scalar(select(CustomModel).where(CustomModel.arn == found.job.output_model_arn))

    def checkpoints(self, openai_id: str) -> list[Checkpoint]:
        """The checkpoints kept as models, newest first (none until the job's first checkpoint)."""
        found = self.get(openai_id)
        root = self.settings.models_dir / "custom" / found.job.id / CHECKPOINTS
        out = []
        for folder in root.glob("step-*"):
            number = folder.name.removeprefix("step-")
            if number.isdigit() and (folder / "tuneforge-model.json").is_file():
                out.append(
                    Checkpoint(
                        step=int(number),
                        model=f"{found.openai.fine_tuned_model}:ckpt-step-{number}",
                        folder=folder,
                        created_at=int(folder.stat().st_mtime),
                    )
                )
        return sorted(out, key=lambda checkpoint: checkpoint.step, reverse=True)

    # -- control ----------------------------------------------------------------------------------

    def cancel(self, openai_id: str) -> FineTuningJob:
        found = self.get(openai_id)
        try:
            self.jobs.stop(found.job.id)
        except ConflictException as exc:
            raise InvalidParameter(exc.message.replace(found.job.name, openai_id), "fine_tuning_job_id") from None
        return self.get(openai_id)

    def pause(self, openai_id: str) -> FineTuningJob:
        return self._control(openai_id, self.jobs.pause)

    def resume(self, openai_id: str) -> FineTuningJob:
        return self._control(openai_id, self.jobs.resume)

    def _control(self, openai_id: str, action: Any) -> FineTuningJob:
        found = self.get(openai_id)
        try:
            action(found.job.id)
        except ConflictException as exc:
            raise InvalidParameter(exc.message, "fine_tuning_job_id") from None
        return self.get(openai_id)

    # -- serving ----------------------------------------------------------------------------------

    def route(self, name: str) -> DeploymentRoute | None:
        """Where a request for a ``fine_tuned_model`` (or one of its checkpoints) goes, or None.

        The model is served as a custom model deployment of it would be (the multi-adapter engine of
        its base, the folder as adapter), with no deployment to create first: it is invocable as soon
        as the job succeeds, a checkpoint as soon as it is written. Tokens are metered under the job's id.
        """
        served = self._served_model(name)
        if served is None:
            return None
        custom, folder = served
        stand_in = CustomModelDeployment(id=custom.job_id or custom.id, arn=custom.arn, name=name)
        with_folder = CustomModel(
            id=custom.id,
            arn=custom.arn,
            name=custom.name,
            base_model_id=custom.base_model_id,
            weights_path=str(folder),
        )
        return self.deployments.route_for_model(stand_in, with_folder)

    def _served_model(self, name: str) -> tuple[CustomModel, Path] | None:
        """The custom model and weights folder behind a ``fine_tuned_model`` or checkpoint name, if ready."""
        if not name.startswith("ft:"):
            return None
        model_name, _, checkpoint = name.partition(":ckpt-step-")
        with self.db.session() as session:
            row = session.scalar(select(OpenAIFineTuningJob).where(OpenAIFineTuningJob.fine_tuned_model == model_name))
            job = None if row is None else session.get(Job, row.job_id)
        if row is None or job is None:
            return None
        if checkpoint:
            folder = self.settings.models_dir / "custom" / job.id / CHECKPOINTS / f"step-{checkpoint}"
            if not checkpoint.isdigit() or not (folder / "tuneforge-model.json").is_file():
                return None
        custom = self.custom_model(FineTuningJob(job, row))
        if custom is None:
            if not checkpoint:
                return None
            custom = self._checkpoint_model(job)
        return custom, folder if checkpoint else Path(custom.weights_path)

    @staticmethod
    def _checkpoint_model(job: Job) -> CustomModel:
        """A stand-in custom model for a checkpoint of a job still training: its base, its type."""
        return CustomModel(id=job.id, job_id=job.id, arn=job.arn, name=job.name, base_model_id=job.base_model_id)

    def models(self) -> list[OpenAIFineTuningJob]:
        """The OpenAI jobs whose model is ready to serve."""
        with self.db.session() as session:
            return list(
                session.scalars(
                    select(OpenAIFineTuningJob)
                    .join(Job, Job.id == OpenAIFineTuningJob.job_id)
                    .where(Job.status == "Completed")
                    .order_by(OpenAIFineTuningJob.created_at)
                )
            )

    @staticmethod
    def error_of(job: Job) -> dict[str, Any] | None:
        if job.status != "Failed":
            return None
        return {"code": "job_failed", "message": job.failure_message or "The job failed", "param": None}
