"""Custom models: the results of customization jobs. Get, list and delete (with their weights)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from tuneforge.arns import decode_identifier, is_arn
from tuneforge.catalog.models import DISTILLATION
from tuneforge.db.listing import Cursor, Page, created_and_named, fetch_page
from tuneforge.db.session import Database
from tuneforge.db.tables import LIVE_PROVISIONED_STATUSES, CustomModel, CustomModelDeployment, Job, ProvisionedModel
from tuneforge.errors import ConflictException, ResourceNotFoundException


@dataclass(frozen=True)
class CustomModelFilter:
    creation_time_after: datetime | None = None
    creation_time_before: datetime | None = None
    name_contains: str | None = None
    base_model_arn_equals: str | None = None
    foundation_model_arn_equals: str | None = None
    model_status: str | None = None
    sort_descending: bool = True


class CustomModelService:
    def __init__(self, db: Database, models_dir: Path) -> None:
        self.db = db
        self.models_dir = models_dir.resolve()

    def get(self, identifier: str) -> CustomModel:
        with self.db.session() as session:
            return self._find(session, identifier)

    def _find(self, session: Session, identifier: str) -> CustomModel:
        identifier = decode_identifier(identifier)
        if is_arn(identifier):
            model = session.scalar(select(CustomModel).where(CustomModel.arn == identifier))
        else:
            model = session.scalar(select(CustomModel).where(CustomModel.name == identifier))
        if model is None:
            raise ResourceNotFoundException(f"The custom model {identifier} does not exist.")
        return model

    def list_models(self, filters: CustomModelFilter, after: Cursor | None, limit: int) -> Page[CustomModel]:
        query = created_and_named(
            select(CustomModel),
            CustomModel,
            after=filters.creation_time_after,
            before=filters.creation_time_before,
            name_contains=filters.name_contains,
        )
        # Every custom model here derives from a foundation model, so both filters compare the
        # base model ARN (Bedrock distinguishes them only for models customized from custom models).
        for arn in (filters.base_model_arn_equals, filters.foundation_model_arn_equals):
            if arn:
                query = query.where(CustomModel.base_model_arn == arn)
        if filters.model_status:
            query = query.where(CustomModel.status == filters.model_status)
        return fetch_page(self.db, query, CustomModel, descending=filters.sort_descending, after=after, limit=limit)

    @staticmethod
    def _teaching(session: Session, model_arn: str) -> str | None:
        """The name of an unfinished DISTILLATION job whose teacher is ``model_arn``, if any."""
        jobs = session.scalars(
            select(Job).where(Job.customization_type == DISTILLATION, Job.status.in_(("InProgress", "Stopping")))
        )
        for job in jobs:
            config = (job.customization_config or {}).get("distillationConfig") or {}
            teacher = (config.get("teacherModelConfig") or {}).get("teacherModelIdentifier")
            if isinstance(teacher, str) and decode_identifier(teacher) == model_arn:
                return job.name
        return None

    def delete(self, identifier: str) -> None:
        """Remove the record and the weights. The database row goes first, so a crash half-way
        leaves at worst an orphaned folder, never a model whose weights are gone. A model that a
        live provisioned throughput serves (or is switching to), that a custom model deployment serves,
        or that a DISTILLATION job not yet
        finished (queued, running or stopping) uses as its teacher, is refused with ConflictException."""
        with self.db.session() as session:
            model = self._find(session, identifier)
            serving = session.scalar(
                select(ProvisionedModel.name).where(
                    ProvisionedModel.status.in_(LIVE_PROVISIONED_STATUSES),
                    (ProvisionedModel.model_arn == model.arn) | (ProvisionedModel.desired_model_arn == model.arn),
                )
            )
            if serving is not None:
                raise ConflictException(
                    f"The custom model {model.name} is in use by provisioned model throughput {serving}. "
                    "Delete the provisioned throughput (or update it to another model) first."
                )
            deployment = session.scalar(
                select(CustomModelDeployment.name).where(
                    CustomModelDeployment.model_arn == model.arn, CustomModelDeployment.deleted_at.is_(None)
                )
            )
            if deployment is not None:
                raise ConflictException(
                    f"The custom model {model.name} is in use by custom model deployment {deployment}. "
                    "Delete the deployment (or update it to another model) first."
                )
            teaching = self._teaching(session, model.arn)
            if teaching is not None:
                raise ConflictException(
                    f"The custom model {model.name} is the teacher of model customization job {teaching}, "
                    "which has not finished. Wait for the job to end (or stop it) first."
                )
            weights = Path(model.weights_path)
            session.delete(model)
        if weights.exists() and self.models_dir in weights.resolve().parents:
            shutil.rmtree(weights, ignore_errors=True)
