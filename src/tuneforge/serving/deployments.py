"""Custom model deployments (Bedrock's on-demand custom models): the rules behind Create/Get/List/
Update/Delete, and where a deployment's requests go. No HTTP, no torch.

A deployment holds no engine of its own, so it costs nothing while nobody calls it and is billed per
token when somebody does:

- a custom model trained with **LoRA** is served by the on-demand engine of its *base* model
  (group ``od:<base model id>``, one multi-adapter engine per base), each request naming the model's
  folder as its ``GenerationRequest.adapter``: ten fine-tunes of one base share one copy of it;
- a custom model trained **in full** (no adapter, e.g. a distillation student) has weights of its
  own: an on-demand engine of that model (group ``od:<custom model arn>``) loads its merged folder.

Either engine starts on the first request and stops after ``on_demand_idle_minutes`` without one.

**Statuses.** Create checks the model's files the way the import checks do (manifest, adapter or
merged weights present, safetensors headers complete; no weights are loaded), within the call, and
stores the deployment ``Active``, or ``Failed`` with the reason: a crash can never leave one
``Creating``, so that status is never seen. Loading happens on the first request (scale to zero), so
``Active`` means "servable", not "loaded"; an engine that then cannot load
the adapter (error code :data:`~tuneforge.serving.protocol.ADAPTER_LOAD_FAILED`) moves it to
``Failed`` too.

**Budget.** The tag ``tuneforge:monthly-budget-usd`` (a tag because boto3 refuses members its model
does not define) sets a monthly budget: once this month's tokens (UTC) cost that much, requests are
refused with ThrottlingException naming the budget. The request that crosses it is answered (its
output length is unknown beforehand).
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from tuneforge.arns import ArnFactory, decode_identifier, is_arn, new_id
from tuneforge.catalog.imports import ImportCheckError, _safetensors_parameters
from tuneforge.catalog.models import FoundationModel
from tuneforge.catalog.service import Catalog
from tuneforge.db.listing import Cursor, Page, created_and_named, fetch_page
from tuneforge.db.session import Database
from tuneforge.db.tables import CustomModel, CustomModelDeployment, UsageSegment, utcnow
from tuneforge.errors import (
    ConflictException,
    ResourceNotFoundException,
    ThrottlingException,
    ValidationException,
)
from tuneforge.idempotency import IdempotentRequest
from tuneforge.serving.manager import on_demand_group
from tuneforge.serving.throughput import ServedModel
from tuneforge.serving.usage import UsageMeter, month_to_date_cost, token_cost
from tuneforge.settings import Settings, TokenPrice

STATUSES = ("Creating", "Active", "Failed")
BUDGET_TAG = "tuneforge:monthly-budget-usd"
MODEL_MANIFEST = "tuneforge-model.json"
"""Written by :func:`tuneforge.model.folders.save_model` (torch side); read here as plain JSON."""


@dataclass(frozen=True)
class CreateDeploymentRequest(IdempotentRequest):
    name: str
    model_arn: str
    description: str | None = None
    tags: tuple[dict[str, str], ...] = ()
    client_request_token: str | None = None


@dataclass(frozen=True)
class DeploymentFilter:
    created_after: datetime | None = None
    created_before: datetime | None = None
    name_contains: str | None = None
    status_equals: str | None = None
    model_arn_equals: str | None = None
    sort_descending: bool = True


@dataclass(frozen=True)
class DeploymentRoute:
    """Where a deployment's requests go (see the module docstring)."""

    deployment_id: str
    deployment_arn: str
    name: str
    model_arn: str
    group: str
    served: ServedModel
    """What the group's engine loads: the base model, or the fully trained custom model."""
    adapter: str | None
    """The custom model's folder, for the multi-adapter engine of its base; None when trained in full."""
    price: TokenPrice


def monthly_budget(tags: tuple[dict[str, str], ...] | list[dict[str, str]]) -> float | None:
    """The budget tag's US dollars, or None without one; anything but a number >= 0 is refused."""
    for tag in tags:
        if tag["key"] != BUDGET_TAG:
            continue
        try:
            value = float(tag["value"])
        except ValueError:
            value = -1.0
        if not (math.isfinite(value) and value >= 0):
            raise ValidationException(
                f"Tag {BUDGET_TAG} must be a number of US dollars of at least 0, got '{tag['value']}'"
            )
        return value
    return None


def check_model_files(folder: Path) -> str | None:
    """Why the custom model in ``folder`` cannot be served, or None. Headers only: nothing is loaded."""
    manifest_path = folder / MODEL_MANIFEST
    if not manifest_path.is_file():
        return f"the model folder {folder} has no {MODEL_MANIFEST}; its files are missing"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        subfolder = folder / str(manifest["adapter_dir"] or manifest["merged_dir"])
    except (ValueError, KeyError, TypeError) as exc:
        return f"{manifest_path} is unreadable: {exc}"
    weights = sorted(subfolder.glob("*.safetensors"))
    if not weights:
        return f"{subfolder} holds no safetensors weights"
    try:
        for path in weights:
            _safetensors_parameters(path)
    except (ImportCheckError, OSError) as exc:
        return f"the weights in {subfolder} are corrupt: {exc}"
    return None


def is_adapter(folder: Path) -> bool:
    """Whether the custom model is a LoRA adapter (else it was trained in full)."""
    try:
        manifest = json.loads((folder / MODEL_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and bool(manifest.get("adapter_dir"))


class DeploymentService:
    def __init__(self, db: Database, catalog: Catalog, arns: ArnFactory, settings: Settings, meter: UsageMeter) -> None:
        self.db = db
        self.catalog = catalog
        self.arns = arns
        self.settings = settings
        self.meter = meter
        self._create_lock = threading.Lock()
        self._deleted: set[str] = set()
        """Ids deleted by this process: the runtime ends streams that read them (:meth:`is_deleted`)."""

    # -- the model ------------------------------------------------------------------------------

    def _custom_model(self, session: Session, model_arn: str) -> CustomModel:
        arn = decode_identifier(model_arn)
        custom = session.scalar(select(CustomModel).where(CustomModel.arn == arn))
        if custom is None:
            raise ResourceNotFoundException(f"The custom model {arn} does not exist.")
        return custom

    def _servable_base(self, custom: CustomModel) -> FoundationModel:
        if custom.status != "Active":
            raise ValidationException(f"The custom model {custom.name} is {custom.status}, not Active")
        try:
            base = self.catalog.get(custom.base_model_id)
        except ResourceNotFoundException:
            raise ValidationException(
                f"The custom model {custom.name} cannot be deployed: its base model {custom.base_model_id} "
                "no longer exists"
            ) from None
        if "ON_DEMAND" not in base.inference_types:
            raise ValidationException(
                f"The custom model {custom.name} cannot be deployed on demand: its base model {base.model_id} "
                "is not servable on demand (a registered model supports Provisioned Throughput only). "
                "Use CreateProvisionedModelThroughput instead."
            )
        return base

    def route_for_model(self, row: CustomModelDeployment, custom: CustomModel) -> DeploymentRoute:
        base = self.catalog.get(custom.base_model_id)
        base_arn = self.catalog.arn(base)
        price = self.settings.token_price(base.model_id)
        folder = Path(custom.weights_path)
        if is_adapter(folder):
            source = base.source if base.builtin else str(self.catalog.local_folder(base))
            served = ServedModel(base_arn, base, base_arn, source)
            group = on_demand_group(base.model_id)
            return DeploymentRoute(row.id, row.arn, row.name, custom.arn, group, served, str(folder), price)
        served = ServedModel(custom.arn, base, base_arn, str(folder))
        group = on_demand_group(custom.arn)
        return DeploymentRoute(row.id, row.arn, row.name, custom.arn, group, served, None, price)

    # -- create ---------------------------------------------------------------------------------

    def create(self, request: CreateDeploymentRequest) -> CustomModelDeployment:
        fingerprint = request.fingerprint()
        if request.client_request_token:
            with self.db.session() as session:
                existing = session.scalar(
                    select(CustomModelDeployment).where(
                        CustomModelDeployment.client_request_token == request.client_request_token
                    )
                )
            if existing is not None:
                if existing.request_fingerprint != fingerprint:
                    raise ConflictException(
                        f"The clientRequestToken {request.client_request_token} was already used for a different "
                        "CreateCustomModelDeployment request"
                    )
                return existing
        budget = monthly_budget(request.tags)
        with self.db.session() as session:
            custom = self._custom_model(session, request.model_arn)
        base = self._servable_base(custom)
        problem = check_model_files(Path(custom.weights_path))
        now = utcnow()
        did = new_id()
        row = CustomModelDeployment(
            id=did,
            arn=self.arns.custom_model_deployment(did),
            name=request.name,
            description=request.description,
            model_arn=custom.arn,
            base_model_id=base.model_id,
            client_request_token=request.client_request_token,
            request_fingerprint=fingerprint,
            status="Failed" if problem else "Active",
            failure_message=problem,
            tags=list(request.tags),
            monthly_budget=budget,
            created_at=now,
            updated_at=now,
        )
        with self._create_lock, self.db.session() as session:
            self._check_name_free(session, request.name)
            session.add(row)
        return row

    @staticmethod
    def _check_name_free(session: Session, name: str) -> None:
        clash = session.scalar(
            select(CustomModelDeployment.id).where(
                CustomModelDeployment.name == name, CustomModelDeployment.deleted_at.is_(None)
            )
        )
        if clash:
            raise ConflictException(f"A custom model deployment named {name} already exists")

    # -- read -----------------------------------------------------------------------------------

    def get(self, identifier: str) -> CustomModelDeployment:
        with self.db.session() as session:
            return self._find(session, identifier)

    def find(self, identifier: str) -> CustomModelDeployment | None:
        """The live deployment of this ARN or name, or None."""
        with self.db.session() as session:
            return self._live(session, identifier)

    def _find(self, session: Session, identifier: str) -> CustomModelDeployment:
        row = self._live(session, identifier)
        if row is None:
            raise ResourceNotFoundException(
                f"The custom model deployment {decode_identifier(identifier)} does not exist."
            )
        return row

    @staticmethod
    def _live(session: Session, identifier: str) -> CustomModelDeployment | None:
        identifier = decode_identifier(identifier)
        column = CustomModelDeployment.arn if is_arn(identifier) else CustomModelDeployment.name
        return session.scalar(
            select(CustomModelDeployment).where(column == identifier, CustomModelDeployment.deleted_at.is_(None))
        )

    def list_deployments(
        self, filters: DeploymentFilter, after: Cursor | None, limit: int
    ) -> Page[CustomModelDeployment]:
        query = created_and_named(
            select(CustomModelDeployment).where(CustomModelDeployment.deleted_at.is_(None)),
            CustomModelDeployment,
            after=filters.created_after,
            before=filters.created_before,
            name_contains=filters.name_contains,
        )
        if filters.status_equals:
            query = query.where(CustomModelDeployment.status == filters.status_equals)
        if filters.model_arn_equals:
            query = query.where(CustomModelDeployment.model_arn == decode_identifier(filters.model_arn_equals))
        return fetch_page(
            self.db, query, CustomModelDeployment, descending=filters.sort_descending, after=after, limit=limit
        )

    def live(self) -> list[CustomModelDeployment]:
        with self.db.session() as session:
            return list(
                session.scalars(
                    select(CustomModelDeployment).where(
                        CustomModelDeployment.deleted_at.is_(None), CustomModelDeployment.status == "Active"
                    )
                )
            )

    def extension(self, row: CustomModelDeployment) -> dict[str, object]:
        """The ``tuneforge`` block of Get: how it is served, its budget and what it has cost."""
        with self.db.session() as session:
            custom = session.scalar(select(CustomModel).where(CustomModel.arn == row.model_arn))
            segments = list(session.scalars(select(UsageSegment).where(UsageSegment.deployment_id == row.id)))
            spent = month_to_date_cost(session, row.id)
        route = None if custom is None else self.route_for_model(row, custom)
        return {
            "serving": None if route is None else ("adapter" if route.adapter else "full"),
            "engineGroup": None if route is None else route.group,
            "pricePer1kInputTokens": None if route is None else route.price.input,
            "pricePer1kOutputTokens": None if route is None else route.price.output,
            "monthlyBudgetUsd": row.monthly_budget,
            "monthToDateCost": round(spent, 6),
            "invocations": sum(s.invocations for s in segments),
            "inputTokens": sum(s.input_tokens for s in segments),
            "outputTokens": sum(s.output_tokens for s in segments),
            "cost": round(sum(token_cost(s) for s in segments), 6),
        }

    # -- update / delete ------------------------------------------------------------------------

    def update(self, identifier: str, model_arn: str) -> CustomModelDeployment:
        """Swap the custom model. The new one must be of the same base (the deployment's engine group
        and price stay); its files are checked first, and a model that cannot be served leaves the
        deployment on the old one with ``updateDetails.updateStatus`` ``UpdateFailed``."""
        with self.db.session() as session:
            custom = self._custom_model(session, model_arn)
            row = self._find(session, identifier)
        self._servable_base(custom)
        if custom.base_model_id != row.base_model_id:
            raise ValidationException(
                f"modelArn {custom.arn} must be a custom model of the deployment's base model {row.base_model_id} "
                f"(it was customized from {custom.base_model_id}); create a new deployment for it"
            )
        problem = check_model_files(Path(custom.weights_path))
        with self.db.session() as session:
            stored = self._find(session, identifier)
            stored.update_model_arn = custom.arn
            stored.updated_at = utcnow()
            if problem:
                stored.update_status = "UpdateFailed"
                stored.failure_message = f"Update to {custom.arn} failed: {problem}"[:2048]
            else:
                stored.update_status = "UpdateCompleted"
                stored.model_arn = custom.arn
                stored.status, stored.failure_message = "Active", None
            return stored

    def delete(self, identifier: str) -> CustomModelDeployment:
        with self.db.session() as session:
            row = self._find(session, identifier)
            row.deleted_at = row.updated_at = utcnow()
        self._deleted.add(row.id)
        return row

    def is_deleted(self, deployment_id: str) -> bool:
        return deployment_id in self._deleted

    def mark_failed(self, deployment_id: str, message: str) -> None:
        with self.db.session() as session:
            row = session.get(CustomModelDeployment, deployment_id)
            if row is not None and row.deleted_at is None:
                row.status, row.failure_message, row.updated_at = "Failed", message[:2048], utcnow()

    # -- the request path -----------------------------------------------------------------------

    def route(self, row: CustomModelDeployment) -> DeploymentRoute:
        """Where a request to ``row`` goes; refused when it is not Active or past its monthly budget."""
        if row.status == "Failed":
            raise ValidationException(
                f"The custom model deployment {row.name} is Failed: {row.failure_message}. "
                "Update it to a servable custom model, or delete it."
            )
        if row.status != "Active":
            raise ValidationException(f"The custom model deployment {row.name} is {row.status}, not Active.")
        if row.monthly_budget is not None:
            spent = self.meter.month_to_date_cost(row.id)
            if spent >= row.monthly_budget:
                raise ThrottlingException(
                    f"The custom model deployment {row.name} reached its monthly budget of "
                    f"{row.monthly_budget:g} USD (tag {BUDGET_TAG}; {spent:.6f} USD spent this month). "
                    "Raise the budget with TagResource, or wait for next month."
                )
        with self.db.session() as session:
            custom = self._custom_model(session, row.model_arn)
        return self.route_for_model(row, custom)
