"""SQLAlchemy 2 tables. Internal names are plain Python; wire shapes live in api/bedrock."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, synonym
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite stores naive timestamps)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Job(Base):
    """A model customization job; also the durable queue entry (``phase``)."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    arn: Mapped[str] = mapped_column(String(256), unique=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    custom_model_name: Mapped[str] = mapped_column(String(63))
    role_arn: Mapped[str] = mapped_column(String(2048))
    client_request_token: Mapped[str | None] = mapped_column(String(256), unique=True)
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    base_model_id: Mapped[str] = mapped_column(String(256))
    base_model_arn: Mapped[str] = mapped_column(String(1011))
    customization_type: Mapped[str] = mapped_column(String(32))
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    training_data: Mapped[dict[str, Any]] = mapped_column(JSON)
    validation_data: Mapped[dict[str, Any]] = mapped_column(JSON)
    output_data: Mapped[dict[str, Any]] = mapped_column(JSON)
    customization_config: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    vpc_config: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    kms_key: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    job_tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    custom_model_tags: Mapped[list[Any]] = mapped_column(JSON, default=list)

    status: Mapped[str] = mapped_column(String(16), default="InProgress")
    failure_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    status_details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    training_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    validation_losses: Mapped[list[Any]] = mapped_column(JSON, default=list)
    output_model_arn: Mapped[str | None] = mapped_column(String(1011), nullable=True)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    tuning: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """Automatic tuning's trials and best trial (tuneforge extension ``tuning`` of the Get response)."""

    phase: Mapped[str] = mapped_column(String(16), default="queued")
    """queued -> running -> done. The queue is the set of jobs in phase 'queued'; a paused job
    (OpenAI's pause) is in phase 'paused', out of the queue with its checkpoint kept, until resumed."""
    stop_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    pause_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """Ask the running worker to end keeping its checkpoint (phase 'paused'), not to stop the job."""
    worker_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    worker_host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    owner_replica: Mapped[str | None] = mapped_column(String(12), nullable=True)
    """The API replica (:class:`ReplicaRow`) that claimed the job and watches its worker."""
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (Index("ix_jobs_phase_created", "phase", "created_at"),)


class JobEvent(Base):
    """Progress and log lines of a job: step, loss, tokens/s, stage changes, messages."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    kind: Mapped[str] = mapped_column(String(16))
    """'progress' | 'processing' | 'stage' | 'log' | 'status'"""
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class CustomModel(Base):
    __tablename__ = "custom_models"

    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    arn: Mapped[str] = mapped_column(String(1011), unique=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    job_id: Mapped[str | None] = mapped_column(String(12), nullable=True)
    job_arn: Mapped[str | None] = mapped_column(String(256), nullable=True)
    job_name: Mapped[str | None] = mapped_column(String(63), nullable=True)
    base_model_id: Mapped[str] = mapped_column(String(256))
    base_model_arn: Mapped[str] = mapped_column(String(1011))
    customization_type: Mapped[str] = mapped_column(String(32))
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    training_data: Mapped[dict[str, Any]] = mapped_column(JSON)
    validation_data: Mapped[dict[str, Any]] = mapped_column(JSON)
    output_data: Mapped[dict[str, Any]] = mapped_column(JSON)
    customization_config: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    training_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    validation_losses: Mapped[list[Any]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16), default="Active")
    failure_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    weights_path: Mapped[str] = mapped_column(String(4096))
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    kms_key: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RegisteredModel(Base):
    """A user's own Hugging Face format causal LM, listed beside the built-in family.

    Models imported with CreateModelImportJob are rows here too (Bedrock's *imported models*): they
    have an ``arn`` (``imported-model/<id>``), a ``name`` and a ``weights_path`` (the copy or the GGUF
    conversion under the data directory), and their ``model_id`` is ``imported.<id>``. Keeping both
    kinds in one table is what makes an imported model a base for customization jobs and a model to
    serve with no second code path.
    """

    __tablename__ = "registered_models"

    model_id: Mapped[str] = mapped_column(String(140), primary_key=True)
    provider: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(4096))
    """Where the model came from: a local folder or s3:// prefix (a GGUF file, for some imports)."""
    family: Mapped[str] = mapped_column(String(64))
    context_length: Mapped[int] = mapped_column(Integer)
    parameter_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    arn: Mapped[str | None] = mapped_column(String(1011), unique=True, nullable=True)
    name: Mapped[str | None] = mapped_column(String(63), unique=True, nullable=True)
    weights_path: Mapped[str | None] = mapped_column(String(4096), nullable=True)
    job_arn: Mapped[str | None] = mapped_column(String(1011), nullable=True)
    job_name: Mapped[str | None] = mapped_column(String(63), nullable=True)
    instruct_supported: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    """Whether the model has a chat template (Bedrock's ``instructSupported``)."""
    tags: Mapped[list[Any] | None] = mapped_column(JSON, default=list, nullable=True)
    kms_key: Mapped[str | None] = mapped_column(String(2048), nullable=True)

    id = synonym("model_id")
    """The key that :func:`tuneforge.db.listing.fetch_page` pages by."""


class ModelImportJob(Base):
    """A CreateModelImportJob: checks at create, then the copy (or GGUF conversion) in the background."""

    __tablename__ = "model_import_jobs"

    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    arn: Mapped[str] = mapped_column(String(1011), unique=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    imported_model_name: Mapped[str] = mapped_column(String(63))
    imported_model_id: Mapped[str] = mapped_column(String(12))
    owner_replica: Mapped[str | None] = mapped_column(String(12), nullable=True)
    """The API replica whose process runs the import (imports run in the API process)."""
    """The id the imported model gets when the job completes (its ARN is made from it)."""
    imported_model_arn: Mapped[str | None] = mapped_column(String(1011), nullable=True)
    """Set when the job completes and the model exists."""
    role_arn: Mapped[str] = mapped_column(String(2048))
    source_uri: Mapped[str] = mapped_column(String(4096))
    source_kind: Mapped[str] = mapped_column(String(16))
    """'folder' | 'gguf'"""
    facts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """What the create-time checks found (architecture, parameters, context length, chat template)."""
    client_request_token: Mapped[str | None] = mapped_column(String(256), unique=True)
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    vpc_config: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    kms_key: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    job_tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    imported_model_tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16), default="InProgress")
    """InProgress | Completed | Failed"""
    failure_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


LIVE_PROVISIONED_STATUSES = ("Creating", "InService", "Updating")
"""Provisioned throughputs in these statuses hold replicas, accrue cost and pin their models."""


class ProvisionedModel(Base):
    """A provisioned throughput: ``model_units`` engine replicas serving ``model_arn``.

    Rows are never removed: a deleted deployment keeps its row with status ``Deleted``, the time and
    the reason (a user's Delete, or the idle timeout), so its history and its bill stay visible.
    """

    __tablename__ = "provisioned_models"

    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    arn: Mapped[str] = mapped_column(String(256), unique=True)
    name: Mapped[str] = mapped_column(String(63), index=True)
    """Unique among deployments that are not Deleted (checked by the service, not the schema)."""
    client_request_token: Mapped[str | None] = mapped_column(String(256), unique=True)
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    model_units: Mapped[int] = mapped_column(Integer)
    model_arn: Mapped[str] = mapped_column(String(1011))
    """The model the replicas serve now."""
    desired_model_arn: Mapped[str] = mapped_column(String(1011))
    """Differs from ``model_arn`` while an update is starting replicas of the new model."""
    foundation_model_arn: Mapped[str] = mapped_column(String(1011))
    status: Mapped[str] = mapped_column(String(16), default="Creating")
    """Creating | InService | Updating | Failed | Deleted"""
    failure_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    commitment_duration: Mapped[str | None] = mapped_column(String(16), nullable=True)
    commitment_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    idle_timeout_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    """None: never deleted for idleness (turned off, or a committed deployment)."""
    price_per_model_unit_hour: Mapped[float] = mapped_column(Float)
    """Fixed at creation, so a later price change does not rewrite an existing bill."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    in_service_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_invocation_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    billing_ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    """When it stopped accruing model-unit-hours: deleted or failed."""
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    deletion_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class CustomModelDeployment(Base):
    """An on-demand deployment of a custom model (CreateCustomModelDeployment), billed per token.

    It holds no replica of its own: requests go to the shared on-demand engine of the custom model's
    base (``group`` ``od:<base model id>``, the model's folder as the request's adapter) or, for a
    model trained in full, to an on-demand engine of that model (``od:<custom model arn>``); both
    stop when idle. Rows are kept after DeleteCustomModelDeployment (``deleted_at``) so the usage
    report still names what was billed; Get and List no longer show them.
    """

    __tablename__ = "custom_model_deployments"

    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    arn: Mapped[str] = mapped_column(String(1011), unique=True)
    name: Mapped[str] = mapped_column(String(63), index=True)
    """Unique among deployments not deleted (checked by the service, not the schema)."""
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    model_arn: Mapped[str] = mapped_column(String(1011))
    base_model_id: Mapped[str] = mapped_column(String(256))
    client_request_token: Mapped[str | None] = mapped_column(String(256), unique=True)
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="Active")
    """Creating | Active | Failed"""
    failure_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    update_model_arn: Mapped[str | None] = mapped_column(String(1011), nullable=True)
    update_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    """Updating | UpdateCompleted | UpdateFailed (Bedrock's ``updateDetails``)."""
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    monthly_budget: Mapped[float | None] = mapped_column(Float, nullable=True)
    """From the ``tuneforge:monthly-budget-usd`` tag; None: no budget."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class UsageSegment(Base):
    """What one model served on one deployment over one stretch of time: the meter's ledger.

    A provisioned throughput opens a segment when it is created and when an update switches models,
    and closes it when it switches, fails or is deleted; model-unit-hours are
    ``model_units x (ended_at or now - started_at)``. On-demand use (foundation models and custom
    model deployments) has segments without a provisioned throughput: tokens at a price per 1,000,
    no hours.
    """

    __tablename__ = "usage_segments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    provisioned_model_id: Mapped[str | None] = mapped_column(String(12), nullable=True, index=True)
    model_arn: Mapped[str] = mapped_column(String(1011), index=True)
    model_units: Mapped[int] = mapped_column(Integer, default=0)
    price_per_model_unit_hour: Mapped[float] = mapped_column(Float, default=0.0)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    invocations: Mapped[int] = mapped_column(Integer, default=0)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    deployment_id: Mapped[str | None] = mapped_column(String(12), nullable=True, index=True)
    """The custom model deployment that served these tokens (on-demand use of a custom model)."""
    price_per_1k_input_tokens: Mapped[float | None] = mapped_column(Float, nullable=True)
    price_per_1k_output_tokens: Mapped[float | None] = mapped_column(Float, nullable=True)
    """On-demand segments only (provisioned ones bill hours): the price their tokens were metered at.
    A price change or a new calendar month opens a new segment, so both stay exact per segment."""
    invocation_job_id: Mapped[str | None] = mapped_column(String(12), nullable=True, index=True)
    """The batch inference job these tokens were answered by (one closed segment per job, written when
    it ends, at the batch price the job was created with)."""


class InvocationLoggingConfig(Base):
    """The account's one model-invocation logging configuration (Bedrock's ``loggingConfig``)."""

    __tablename__ = "invocation_logging"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ModelInvocationJob(Base):
    """A batch inference job (CreateModelInvocationJob): JSONL records in, one answer per record out.

    Queued beside customization jobs: the supervisor claims it from phase ``queued`` and runs it in
    a worker process, with the same columns for the claim, the heartbeat and stop requests as
    :class:`Job` has. Status: ``Submitted`` while queued, then ``InProgress`` -> ``Completed`` |
    ``PartiallyCompleted`` (some records failed) | ``Failed`` | ``Stopping`` -> ``Stopped`` |
    ``Expired`` (past its ``timeout_hours``).
    """

    __tablename__ = "model_invocation_jobs"

    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    arn: Mapped[str] = mapped_column(String(1011), unique=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    client_request_token: Mapped[str | None] = mapped_column(String(256), unique=True)
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    role_arn: Mapped[str] = mapped_column(String(2048))
    model_id: Mapped[str] = mapped_column(String(2048))
    """The ``modelId`` as the request gave it (Get and List echo it)."""
    model_arn: Mapped[str] = mapped_column(String(1011))
    """What answers: the foundation, imported or custom model it resolved to at create time."""
    invocation_type: Mapped[str] = mapped_column(String(16), default="InvokeModel")
    """``InvokeModel`` (records hold native bodies) or ``Converse`` (records hold Converse bodies)."""
    input_data: Mapped[dict[str, Any]] = mapped_column(JSON)
    output_data: Mapped[dict[str, Any]] = mapped_column(JSON)
    vpc_config: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    timeout_hours: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)

    status: Mapped[str] = mapped_column(String(20), default="Submitted")
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    total_records: Mapped[int | None] = mapped_column(Integer, nullable=True)
    processed_records: Mapped[int | None] = mapped_column(Integer, nullable=True)
    success_records: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error_records: Mapped[int | None] = mapped_column(Integer, nullable=True)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    price_per_1k_input_tokens: Mapped[float | None] = mapped_column(Float, nullable=True)
    price_per_1k_output_tokens: Mapped[float | None] = mapped_column(Float, nullable=True)
    """The batch price (``Settings.batch_token_price``) when the job was created: what its tokens are
    billed at when it ends, so a price change while it is queued does not change its bill."""

    phase: Mapped[str] = mapped_column(String(16), default="queued")
    """queued -> running -> done, as for :class:`Job`."""
    stop_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    worker_host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    owner_replica: Mapped[str | None] = mapped_column(String(12), nullable=True)
    """The API replica (:class:`ReplicaRow`) that claimed the job and watches its worker."""
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (Index("ix_model_invocation_jobs_phase_created", "phase", "created_at"),)


class EvaluationJob(Base):
    """An automated model evaluation job (CreateEvaluationJob): a dataset answered by one or two models, scored.

    Queued beside customization and batch inference jobs, with the same claim, heartbeat and stop
    columns. Bedrock's statuses have no "queued" one: a job is ``InProgress`` from its creation
    (``phase`` says whether a worker has it), then ``Completed`` | ``Failed`` | ``Stopping`` ->
    ``Stopped``; ``Deleting`` while BatchDeleteEvaluationJob removes it.
    """

    __tablename__ = "evaluation_jobs"

    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    arn: Mapped[str] = mapped_column(String(1011), unique=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    client_request_token: Mapped[str | None] = mapped_column(String(256), unique=True)
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    role_arn: Mapped[str] = mapped_column(String(2048))
    kms_key_id: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    application_type: Mapped[str] = mapped_column(String(32), default="ModelEvaluation")
    evaluation_config: Mapped[dict[str, Any]] = mapped_column(JSON)
    inference_config: Mapped[dict[str, Any]] = mapped_column(JSON)
    output_data: Mapped[dict[str, Any]] = mapped_column(JSON)
    models: Mapped[list[Any]] = mapped_column(JSON, default=list)
    """Per model of ``inference_config``: ``{"identifier", "arn"}`` (resolved at create time) or
    ``{"identifier", "precomputed": true}``."""
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)

    status: Mapped[str] = mapped_column(String(20), default="InProgress")
    failure_messages: Mapped[list[Any]] = mapped_column(JSON, default=list)
    results: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """The scores once computed (GetEvaluationJob's ``tuneforge.results``)."""

    phase: Mapped[str] = mapped_column(String(16), default="queued")
    stop_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    worker_host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    owner_replica: Mapped[str | None] = mapped_column(String(12), nullable=True)
    """The API replica (:class:`ReplicaRow`) that claimed the job and watches its worker."""
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (Index("ix_evaluation_jobs_phase_created", "phase", "created_at"),)


class KnowledgeBase(Base):
    """A vector knowledge base (bedrock-agent CreateKnowledgeBase): tuneforge's built-in embedder and
    its embedded index (one FAISS file per data source under ``<data_dir>/knowledge/<id>/``)."""

    __tablename__ = "knowledge_bases"

    id: Mapped[str] = mapped_column(String(10), primary_key=True)
    arn: Mapped[str] = mapped_column(String(128), unique=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    role_arn: Mapped[str] = mapped_column(String(2048))
    client_token: Mapped[str | None] = mapped_column(String(256), unique=True)
    configuration: Mapped[dict[str, Any]] = mapped_column(JSON)
    storage: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(24), default="ACTIVE")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class KnowledgeDataSource(Base):
    """An ``s3://`` prefix whose documents a knowledge base ingests, with its chunking configuration."""

    __tablename__ = "knowledge_data_sources"

    id: Mapped[str] = mapped_column(String(10), primary_key=True)
    knowledge_base_id: Mapped[str] = mapped_column(String(10), index=True)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    client_token: Mapped[str | None] = mapped_column(String(256), unique=True)
    configuration: Mapped[dict[str, Any]] = mapped_column(JSON)
    """``dataSourceConfiguration`` as sent (type S3, bucketArn, inclusionPrefixes)."""
    uri: Mapped[str] = mapped_column(String(2048))
    """The ``s3://bucket/prefix`` the configuration names, checked against the allowed roots."""
    ingestion: Mapped[dict[str, Any]] = mapped_column(JSON)
    """``vectorIngestionConfiguration`` with Bedrock's default chunking filled in."""
    deletion_policy: Mapped[str] = mapped_column(String(16), default="DELETE")
    status: Mapped[str] = mapped_column(String(24), default="AVAILABLE")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class IngestionJob(Base):
    """StartIngestionJob: chunk, embed and index a data source's documents in a worker process.

    Queued beside the other job kinds (same claim, heartbeat and pid columns); Bedrock's statuses
    (``STARTING`` while queued, ``IN_PROGRESS``, ``COMPLETE`` | ``FAILED``); ``statistics`` and
    ``failure_reasons`` (one per document that could not be ingested) grow while it runs.
    """

    __tablename__ = "ingestion_jobs"

    id: Mapped[str] = mapped_column(String(10), primary_key=True)
    knowledge_base_id: Mapped[str] = mapped_column(String(10), index=True)
    data_source_id: Mapped[str] = mapped_column(String(10), index=True)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    client_token: Mapped[str | None] = mapped_column(String(256), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="STARTING")
    statistics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    failure_reasons: Mapped[list[Any]] = mapped_column(JSON, default=list)

    phase: Mapped[str] = mapped_column(String(16), default="queued")
    stop_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    worker_host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    owner_replica: Mapped[str | None] = mapped_column(String(12), nullable=True)
    """The API replica (:class:`ReplicaRow`) that claimed the job and watches its worker."""
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (Index("ix_ingestion_jobs_phase_created", "phase", "created_at"),)


class KnowledgeChunk(Base):
    """One indexed chunk: its id is the vector's id in the data source's FAISS index."""

    __tablename__ = "knowledge_chunks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    knowledge_base_id: Mapped[str] = mapped_column(String(10), index=True)
    data_source_id: Mapped[str] = mapped_column(String(10), index=True)
    uri: Mapped[str] = mapped_column(String(2048))
    text: Mapped[str] = mapped_column(Text)


class ReplicaRow(Base):
    """One running ``tuneforge serve`` process (an API replica) among those sharing this database.

    Registered at start and heartbeated; one whose heartbeat is older than ``replica_lease_s`` (or
    whose pid is gone on this host) is dead, and the others take over its jobs and engine groups.
    """

    __tablename__ = "replicas"

    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    """Where the other replicas reach this one (``replica_url``), for forwarded inference."""
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    token: Mapped[str | None] = mapped_column(String(128), nullable=True)
    """This replica's random credential for forwarded calls when no ``replica_secret`` is set (loopback only)."""
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class EngineLease(Base):
    """Which replica runs an engine group (``pt:<id>`` or ``od:<model>``), until when.

    Taken by compare-and-set (insert, or update where the holder is this replica, expired or dead)
    and renewed with the holder's heartbeat; only the holder starts the group's engines.
    """

    __tablename__ = "engine_leases"

    group: Mapped[str] = mapped_column("engine_group", String(1100), primary_key=True)
    """``pt:<id>`` or ``od:<model>`` (the column is not named ``group``, a reserved word in SQL)."""
    replica_id: Mapped[str] = mapped_column(String(12), index=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class OpenAIFile(Base):
    """A file uploaded through OpenAI's ``/v1/files`` (purpose ``fine-tune``), kept in the object store.

    ``status`` is ``uploaded`` while the background check reads it, then ``processed`` or ``error``
    (``status_details`` says the line and field, in the format's own names).
    """

    __tablename__ = "openai_files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    uri: Mapped[str] = mapped_column(String(4096))
    status: Mapped[str] = mapped_column(String(16), default="uploaded")
    status_details: Mapped[str | None] = mapped_column(Text, nullable=True)
    records: Mapped[int | None] = mapped_column(Integer, nullable=True)
    record_format: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (Index("ix_openai_files_created", "created_at", "id"),)


class OpenAIFineTuningJob(Base):
    """What an OpenAI ``fine_tuning.jobs.create`` asked for beyond the customization job it made.

    The job itself is the :class:`Job` row named ``openai_id`` (so Bedrock's Get finds it by that
    name); this row keeps OpenAI's own members: method, hyperparameters as sent, suffix, seed,
    files, metadata and the ``fine_tuned_model`` name the result is invoked by.
    """

    __tablename__ = "openai_fine_tuning_jobs"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    openai_id: Mapped[str] = mapped_column(String(40), unique=True)
    model: Mapped[str] = mapped_column(String(256))
    method: Mapped[dict[str, Any]] = mapped_column(JSON)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(BigInteger)
    training_file: Mapped[str] = mapped_column(String(40))
    validation_file: Mapped[str | None] = mapped_column(String(40), nullable=True)
    job_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    fine_tuned_model: Mapped[str] = mapped_column(String(256), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (Index("ix_openai_fine_tuning_jobs_created", "created_at", "job_id"),)
