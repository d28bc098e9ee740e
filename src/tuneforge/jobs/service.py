"""Customization jobs: the business rules behind Create/Get/List/Stop. No HTTP, no torch."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tuneforge.arns import ArnFactory, decode_identifier, is_arn, new_id
from tuneforge.catalog.hyperparameters import HyperParameterError, as_strings, resolve
from tuneforge.catalog.models import FoundationModel
from tuneforge.catalog.service import Catalog
from tuneforge.db.session import Database
from tuneforge.db.tables import CustomModel, Job, JobEvent, utcnow
from tuneforge.errors import (
    ConflictException,
    ResourceNotFoundException,
    ValidationException,
)
from tuneforge.storage import ObjectStore, StorageError

TERMINAL = ("Completed", "Failed", "Stopped")
STAGES = ("validationDetails", "dataProcessingDetails", "trainingDetails")


@dataclass(frozen=True)
class CreateJobRequest:
    job_name: str
    custom_model_name: str
    role_arn: str
    base_model_identifier: str
    customization_type: str
    training_uri: str
    output_uri: str
    validation_uris: tuple[str, ...] = ()
    hyperparameters: dict[str, str] = field(default_factory=dict)
    client_request_token: str | None = None
    customization_config: dict[str, Any] | None = None
    vpc_config: dict[str, Any] | None = None
    kms_key: str | None = None
    job_tags: tuple[dict[str, str], ...] = ()
    custom_model_tags: tuple[dict[str, str], ...] = ()

    def fingerprint(self) -> str:
        data = asdict(self)
        data.pop("client_request_token")
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class JobFilter:
    creation_time_after: datetime | None = None
    creation_time_before: datetime | None = None
    status_equals: str | None = None
    name_contains: str | None = None
    sort_descending: bool = True


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_offset: int | None


class JobService:
    def __init__(self, db: Database, catalog: Catalog, store: ObjectStore, arns: ArnFactory) -> None:
        self.db = db
        self.catalog = catalog
        self.store = store
        self.arns = arns

    # -- create ------------------------------------------------------------------------------

    def create(self, request: CreateJobRequest) -> Job:
        fingerprint = request.fingerprint()
        with self.db.session() as session:
            if request.client_request_token:
                existing = session.scalar(select(Job).where(Job.client_request_token == request.client_request_token))
                if existing is not None:
                    if existing.request_fingerprint != fingerprint:
                        raise ConflictException(
                            f"The clientRequestToken {request.client_request_token} was already used "
                            "for a different CreateModelCustomizationJob request"
                        )
                    return existing

        base = self.resolve_base_model(request.base_model_identifier)
        if request.customization_type not in base.customizations:
            raise ValidationException(
                f"The model {base.model_id} does not support customization type "
                f"{request.customization_type}. Supported: {', '.join(base.customizations)}"
            )
        specs = base.hyperparameter_specs(request.customization_type)
        try:
            typed = resolve(specs, request.hyperparameters)
        except HyperParameterError as exc:
            raise ValidationException(str(exc)) from None
        for member, uri in [
            ("trainingDataConfig.s3Uri", request.training_uri),
            ("outputDataConfig.s3Uri", request.output_uri),
            *[
                (f"validationDataConfig.validators.{i + 1}.member.s3Uri", uri)
                for i, uri in enumerate(request.validation_uris)
            ],
        ]:
            try:
                self.store.check(uri)
            except StorageError as exc:
                raise ValidationException(f"Invalid {member} {uri}: {exc}") from None

        job_id = new_id()
        now = utcnow()
        job = Job(
            id=job_id,
            arn=self.arns.job(base.model_id, job_id),
            name=request.job_name,
            custom_model_name=request.custom_model_name,
            role_arn=request.role_arn,
            client_request_token=request.client_request_token,
            request_fingerprint=fingerprint,
            base_model_id=base.model_id,
            base_model_arn=self.catalog.arn(base),
            customization_type=request.customization_type,
            hyperparameters=as_strings(typed),
            training_data={"s3Uri": request.training_uri},
            validation_data={"validators": [{"s3Uri": uri} for uri in request.validation_uris]},
            output_data={"s3Uri": request.output_uri},
            customization_config=request.customization_config,
            vpc_config=request.vpc_config,
            kms_key=request.kms_key,
            job_tags=list(request.job_tags),
            custom_model_tags=list(request.custom_model_tags),
            status="InProgress",
            status_details={
                stage: {
                    "status": "NotStarted",
                    "creationTime": now.isoformat(),
                    "lastModifiedTime": now.isoformat(),
                }
                for stage in STAGES
            },
            phase="queued",
            created_at=now,
            updated_at=now,
        )
        with self.db.session() as session:
            if session.scalar(select(Job.id).where(Job.name == request.job_name)):
                raise ConflictException(f"A model customization job named {request.job_name} already exists")
            in_use = session.scalar(
                select(Job.id).where(
                    Job.custom_model_name == request.custom_model_name,
                    Job.status.notin_(("Failed", "Stopped")),
                )
            ) or session.scalar(select(CustomModel.id).where(CustomModel.name == request.custom_model_name))
            if in_use:
                raise ConflictException(
                    f"A custom model named {request.custom_model_name} already exists or is being created"
                )
            session.add(job)
            session.add(JobEvent(job_id=job_id, kind="status", data={"status": "InProgress", "message": "queued"}))
        return job

    def resolve_base_model(self, identifier: str) -> FoundationModel:
        return self.catalog.get(decode_identifier(identifier))

    # -- read --------------------------------------------------------------------------------

    def get(self, identifier: str) -> Job:
        with self.db.session() as session:
            return self._find(session, identifier)

    def _find(self, session: Session, identifier: str) -> Job:
        identifier = decode_identifier(identifier)
        if is_arn(identifier):
            job = session.scalar(select(Job).where(Job.arn == identifier))
        else:
            job = session.scalar(select(Job).where(Job.name == identifier)) or session.get(Job, identifier)
        if job is None:
            raise ResourceNotFoundException(f"The model customization job {identifier} does not exist.")
        return job

    def list_jobs(self, filters: JobFilter, offset: int, limit: int) -> Page[Job]:
        query = select(Job)
        if filters.creation_time_after:
            query = query.where(Job.created_at > filters.creation_time_after)
        if filters.creation_time_before:
            query = query.where(Job.created_at < filters.creation_time_before)
        if filters.status_equals:
            query = query.where(Job.status == filters.status_equals)
        if filters.name_contains:
            query = query.where(func.instr(func.lower(Job.name), filters.name_contains.lower()) > 0)
        order = Job.created_at.desc() if filters.sort_descending else Job.created_at.asc()
        query = query.order_by(order, Job.id).offset(offset).limit(limit + 1)
        with self.db.session() as session:
            rows = list(session.scalars(query).all())
        more = len(rows) > limit
        return Page(rows[:limit], offset + limit if more else None)

    def events(self, identifier: str, after_id: int = 0, limit: int = 1000) -> list[JobEvent]:
        with self.db.session() as session:
            job = self._find(session, identifier)
            query = (
                select(JobEvent)
                .where(JobEvent.job_id == job.id, JobEvent.id > after_id)
                .order_by(JobEvent.id)
                .limit(limit)
            )
            return list(session.scalars(query).all())

    # -- stop --------------------------------------------------------------------------------

    def stop(self, identifier: str) -> None:
        with self.db.session() as session:
            job = self._find(session, identifier)
            if job.status in TERMINAL:
                raise ConflictException(f"The model customization job {job.name} is {job.status} and cannot be stopped")
            if job.status == "Stopping":
                return
            now = utcnow()
            job.stop_requested = True
            job.updated_at = now
            if job.phase == "queued":
                job.status = "Stopped"
                job.phase = "done"
                job.ended_at = now
                mark_stages(job, "Stopped", only_unfinished=True)
            else:
                job.status = "Stopping"
                mark_stages(job, "Stopping", only_unfinished=True)
            session.add(JobEvent(job_id=job.id, kind="status", data={"status": job.status}))


def mark_stages(job: Job, status: str, *, only_unfinished: bool) -> None:
    now = utcnow().isoformat()
    details = dict(job.status_details or {})
    for stage in STAGES:
        current = details.get(stage, {})
        if only_unfinished and current.get("status") in ("Completed", "Failed", "Stopped", "NotStarted"):
            continue
        details[stage] = {**current, "status": status, "lastModifiedTime": now}
    job.status_details = details
