"""Batch inference jobs: the rules behind Create/Get/List/StopModelInvocationJob. No HTTP, no torch.

A job is a :class:`~tuneforge.db.tables.ModelInvocationJob` row in phase ``queued`` (status
``Submitted``): the supervisor claims it like a customization job and runs it in a worker process
(:mod:`tuneforge.recipes.batch_inference`). Every status change after the claim is the worker's,
except a stop of a job still queued and the recovery of a job whose worker died, which are here
(:func:`mark_ended`) and in the supervisor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from tuneforge.arns import ArnFactory, decode_identifier, is_arn, new_id, resource_type
from tuneforge.db.listing import Cursor, Page, created_and_named, fetch_page
from tuneforge.db.session import Database, unique_or_conflict
from tuneforge.db.tables import ModelInvocationJob, utcnow
from tuneforge.errors import ConflictException, ResourceNotFoundException, ValidationException
from tuneforge.idempotency import IdempotentRequest
from tuneforge.serving.throughput import ServedModel, ThroughputService
from tuneforge.serving.usage import record_batch_job
from tuneforge.storage import ObjectStore, StorageError

STATUSES = (
    "Submitted",
    "InProgress",
    "Completed",
    "Failed",
    "Stopping",
    "Stopped",
    "PartiallyCompleted",
    "Expired",
    "Validating",
    "Scheduled",
)
"""botocore's ``ModelInvocationJobStatus``, all accepted by ``statusEquals``; tuneforge uses
Submitted, InProgress, Completed, PartiallyCompleted, Failed, Stopping, Stopped and Expired."""
TERMINAL = ("Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired")
INVOCATION_TYPES = ("InvokeModel", "Converse")


@dataclass(frozen=True)
class CreateInvocationJobRequest(IdempotentRequest):
    job_name: str
    role_arn: str
    model_id: str
    input_uri: str
    output_uri: str
    input_format: str | None = None
    invocation_type: str | None = None
    timeout_hours: int | None = None
    client_request_token: str | None = None
    vpc_config: dict[str, Any] | None = None
    output_kms_key: str | None = None
    tags: tuple[dict[str, str], ...] = ()


@dataclass(frozen=True)
class InvocationJobFilter:
    submit_time_after: datetime | None = None
    submit_time_before: datetime | None = None
    status_equals: str | None = None
    name_contains: str | None = None
    sort_descending: bool = True


class InvocationJobService:
    def __init__(self, db: Database, store: ObjectStore, arns: ArnFactory, throughput: ThroughputService) -> None:
        self.db = db
        self.store = store
        self.arns = arns
        self.throughput = throughput

    def create(self, request: CreateInvocationJobRequest) -> ModelInvocationJob:
        fingerprint = request.fingerprint()
        if request.client_request_token:
            with self.db.session() as session:
                existing = session.scalar(
                    select(ModelInvocationJob).where(
                        ModelInvocationJob.client_request_token == request.client_request_token
                    )
                )
            if existing is not None:
                if existing.request_fingerprint != fingerprint:
                    raise ConflictException(
                        f"The clientRequestToken {request.client_request_token} was already used "
                        "for a different CreateModelInvocationJob request"
                    )
                return existing
        served = self.resolve_model(request.model_id)
        for member, uri in (
            ("inputDataConfig.s3InputDataConfig.s3Uri", request.input_uri),
            ("outputDataConfig.s3OutputDataConfig.s3Uri", request.output_uri),
        ):
            try:
                self.store.check(uri)
            except StorageError as exc:
                raise ValidationException(f"Invalid {member} {uri}: {exc}") from None
        input_config: dict[str, Any] = {"s3Uri": request.input_uri}
        if request.input_format:
            input_config["s3InputFormat"] = request.input_format
        output_config: dict[str, Any] = {"s3Uri": request.output_uri}
        if request.output_kms_key:
            output_config["s3EncryptionKeyId"] = request.output_kms_key
        price = self.throughput.settings.batch_token_price(served.foundation.model_id)
        job_id = new_id()
        now = utcnow()
        job = ModelInvocationJob(
            id=job_id,
            arn=self.arns.model_invocation_job(job_id),
            name=request.job_name,
            client_request_token=request.client_request_token,
            request_fingerprint=fingerprint,
            role_arn=request.role_arn,
            model_id=request.model_id,
            model_arn=served.arn,
            invocation_type=request.invocation_type or "InvokeModel",
            input_data={"s3InputDataConfig": input_config},
            output_data={"s3OutputDataConfig": output_config},
            vpc_config=request.vpc_config,
            timeout_hours=request.timeout_hours,
            tags=list(request.tags),
            price_per_1k_input_tokens=price.input,
            price_per_1k_output_tokens=price.output,
            status="Submitted",
            phase="queued",
            created_at=now,
            updated_at=now,
        )
        taken = f"A model invocation job named {request.job_name} (or with this clientRequestToken) already exists"
        with unique_or_conflict(taken), self.db.session() as session:
            if session.scalar(select(ModelInvocationJob.id).where(ModelInvocationJob.name == request.job_name)):
                raise ConflictException(f"A model invocation job named {request.job_name} already exists")
            session.add(job)
        return job

    def resolve_model(self, model_id: str) -> ServedModel:
        """What answers the job's records: a foundation or imported model (id or ARN), or a custom model
        (ARN or name), fine-tuned with LoRA or in full. A batch job runs the model in its own worker,
        so a custom model needs no provisioned throughput, unlike InvokeModel."""
        identifier = decode_identifier(model_id)
        if is_arn(identifier) and resource_type(identifier) not in (
            "foundation-model",
            "custom-model",
            "imported-model",
        ):
            raise ValidationException(
                f"The model {identifier} cannot run a batch inference job: give a foundation model, imported "
                "model or custom model identifier"
            )
        try:
            return self.throughput.resolve_model(identifier)
        except ResourceNotFoundException:
            raise ResourceNotFoundException(f"The model {identifier} does not exist.") from None

    # -- read -----------------------------------------------------------------------------------

    def get(self, identifier: str) -> ModelInvocationJob:
        with self.db.session() as session:
            return self._find(session, identifier)

    @staticmethod
    def _find(session: Session, identifier: str) -> ModelInvocationJob:
        identifier = decode_identifier(identifier)
        column = ModelInvocationJob.arn if is_arn(identifier) else ModelInvocationJob.id
        job = session.scalar(select(ModelInvocationJob).where(column == identifier))
        if job is None:
            raise ResourceNotFoundException(f"The model invocation job {identifier} does not exist.")
        return job

    def list_jobs(self, filters: InvocationJobFilter, after: Cursor | None, limit: int) -> Page[ModelInvocationJob]:
        query = created_and_named(
            select(ModelInvocationJob),
            ModelInvocationJob,
            after=filters.submit_time_after,
            before=filters.submit_time_before,
            name_contains=filters.name_contains,
        )
        if filters.status_equals:
            query = query.where(ModelInvocationJob.status == filters.status_equals)
        return fetch_page(
            self.db, query, ModelInvocationJob, descending=filters.sort_descending, after=after, limit=limit
        )

    # -- stop -----------------------------------------------------------------------------------

    def stop(self, identifier: str) -> None:
        """A queued job stops at once; a running one goes to Stopping and its worker ends it Stopped,
        keeping the output records it wrote (with a manifest that counts them)."""
        with self.db.session() as session:
            job = self._find(session, identifier)
            if job.status in TERMINAL:
                raise ConflictException(f"The model invocation job {job.arn} is {job.status} and cannot be stopped")
            if job.status == "Stopping":
                return
            job.stop_requested = True
            if job.phase == "queued":
                mark_ended(job, "Stopped", None)
            else:
                job.status = "Stopping"
                job.updated_at = utcnow()


def expiration_time(job: ModelInvocationJob) -> datetime | None:
    """When a job with ``timeoutDurationInHours`` expires: that long after it was submitted, as
    Bedrock's ``jobExpirationTime`` says (time spent queued counts)."""
    if job.timeout_hours is None:
        return None
    return job.created_at + timedelta(hours=job.timeout_hours)


def has_expired(job: ModelInvocationJob, now: Callable[[], datetime] = utcnow) -> bool:
    expires = expiration_time(job)
    return expires is not None and now() >= expires


def mark_ended(job: ModelInvocationJob, status: str, message: str | None) -> None:
    """The one place a batch job's final status is written (worker, service and supervisor call it),
    so it is also where the job's tokens enter the usage ledger, in the same transaction."""
    now = utcnow()
    job.status, job.phase, job.message = status, "done", message
    job.ended_at = job.updated_at = now
    job.worker_pid = None
    session = object_session(job)
    assert session is not None, "mark_ended needs the job's row as loaded in a session"
    record_batch_job(session, job, now)
