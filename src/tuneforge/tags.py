"""TagResource, UntagResource and ListTagsForResource: the tags a resource was created with, and after.

Tags live with their resource (``jobs.job_tags``, ``custom_models.tags``, ``provisioned_models.tags``,
``model_import_jobs.job_tags``, ``model_invocation_jobs.tags``, ``evaluation_jobs.tags``,
``custom_model_deployments.tags``
and an imported model's ``registered_models.tags``) as Bedrock's
``[{"key", "value"}]`` list. A provisioned throughput's
``tuneforge:idle-timeout-minutes`` tag is also its idle timeout, so tagging it changes the timeout
(checked like at create), and untagging it falls back to the server's setting. A custom model
deployment's ``tuneforge:monthly-budget-usd`` tag is its monthly budget in the same way.

An ARN of a resource type tuneforge does not keep is ResourceNotFoundException.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tuneforge.arns import decode_identifier, resource_path, resource_type
from tuneforge.db.session import Database
from tuneforge.db.tables import (
    CustomModel,
    CustomModelDeployment,
    EvaluationJob,
    Job,
    ModelImportJob,
    ModelInvocationJob,
    ProvisionedModel,
    RegisteredModel,
)
from tuneforge.errors import ResourceNotFoundException, TooManyTagsException
from tuneforge.serving.deployments import monthly_budget
from tuneforge.serving.throughput import DELETED, idle_timeout_seconds
from tuneforge.settings import Settings

MAX_TAGS = 200

Tagged = (
    Job
    | CustomModel
    | ProvisionedModel
    | ModelImportJob
    | RegisteredModel
    | CustomModelDeployment
    | ModelInvocationJob
    | EvaluationJob
)


class TagService:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    def list_tags(self, arn: str) -> list[dict[str, str]]:
        with self.db.session() as session:
            return list(self._tags(self._find(session, arn)))

    def tag(self, arn: str, tags: Iterable[dict[str, str]]) -> None:
        """Add or overwrite tags; more than 200 on the resource afterwards is TooManyTagsException."""
        with self.db.session() as session:
            row = self._find(session, arn)
            merged = {tag["key"]: tag["value"] for tag in self._tags(row)}
            merged.update({tag["key"]: tag["value"] for tag in tags})
            if len(merged) > MAX_TAGS:
                raise TooManyTagsException(
                    f"The resource {arn} would have {len(merged)} tags; a resource can have at most {MAX_TAGS}"
                )
            self._store(row, [{"key": k, "value": v} for k, v in merged.items()])

    def untag(self, arn: str, keys: Iterable[str]) -> None:
        """Remove tags by key; keys the resource does not have are ignored, as in AWS."""
        drop = set(keys)
        with self.db.session() as session:
            row = self._find(session, arn)
            self._store(row, [tag for tag in self._tags(row) if tag["key"] not in drop])

    @staticmethod
    def _tags(row: Tagged) -> list[dict[str, str]]:
        return list(row.job_tags if isinstance(row, Job | ModelImportJob) else row.tags or [])

    def _store(self, row: Tagged, tags: list[dict[str, str]]) -> None:
        if isinstance(row, Job | ModelImportJob):
            row.job_tags = tags
            return
        if isinstance(row, ProvisionedModel) and row.commitment_duration is None:
            # Raises ValidationException, naming the tag and its range, before anything is stored.
            row.idle_timeout_s = idle_timeout_seconds(tuple(tags), self.settings.idle_timeout_minutes)
        if isinstance(row, CustomModelDeployment):
            row.monthly_budget = monthly_budget(tags)
        row.tags = tags

    @staticmethod
    def _find(session: Session, raw_arn: str) -> Tagged:
        arn = decode_identifier(raw_arn)
        kind = resource_type(arn)
        row: Any = None
        if kind == "model-customization-job":
            row = session.scalar(select(Job).where(Job.arn == arn))
        elif kind == "custom-model" and not resource_path(arn).startswith("imported/"):
            row = session.scalar(select(CustomModel).where(CustomModel.arn == arn))
        elif kind == "provisioned-model":
            row = session.scalar(
                select(ProvisionedModel).where(ProvisionedModel.arn == arn, ProvisionedModel.status != DELETED)
            )
        elif kind == "model-import-job":
            row = session.scalar(select(ModelImportJob).where(ModelImportJob.arn == arn))
        elif kind == "custom-model-deployment":
            row = session.scalar(
                select(CustomModelDeployment).where(
                    CustomModelDeployment.arn == arn, CustomModelDeployment.deleted_at.is_(None)
                )
            )
        elif kind == "model-invocation-job":
            row = session.scalar(select(ModelInvocationJob).where(ModelInvocationJob.arn == arn))
        elif kind == "evaluation-job":
            row = session.scalar(select(EvaluationJob).where(EvaluationJob.arn == arn))
        elif kind == "imported-model":
            row = session.scalar(select(RegisteredModel).where(RegisteredModel.arn == arn))
        if row is None:
            raise ResourceNotFoundException(f"The resource {arn} does not exist.")
        assert isinstance(row, Tagged)
        return row
