"""Provisioned throughput: the business rules behind Create/Get/List/Update/Delete. No HTTP, no torch.

A deployment's row is its desired state; the :class:`~tuneforge.serving.manager.EngineManager` makes
processes match it and reports back through the ``mark_*`` / ``*_update`` methods here, each of which
checks the status it expects inside one transaction, so a user's Delete racing a replica becoming
ready cannot resurrect a deleted deployment.

Statuses: ``Creating -> InService``; ``InService -> Updating -> InService`` (swap to a sibling
model without downtime); ``Creating -> Failed`` when a replica cannot load its model; and tuneforge's
``Deleted``, kept as history (``ListProvisionedModelThroughputs(statusEquals="Deleted")``).
"""

from __future__ import annotations

import calendar
import threading
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tuneforge.arns import ArnFactory, decode_identifier, is_arn, new_id, resource_type
from tuneforge.catalog.models import FoundationModel
from tuneforge.catalog.service import Catalog
from tuneforge.db.listing import Cursor, Page, created_and_named, fetch_page
from tuneforge.db.session import Database
from tuneforge.db.tables import LIVE_PROVISIONED_STATUSES as LIVE_STATUSES
from tuneforge.db.tables import CustomModel, ProvisionedModel, utcnow
from tuneforge.errors import (
    ConflictException,
    ResourceNotFoundException,
    ServiceQuotaExceededException,
    ValidationException,
)
from tuneforge.idempotency import IdempotentRequest
from tuneforge.serving.usage import close_segments, open_segment
from tuneforge.settings import Settings

STATUSES = (*LIVE_STATUSES, "Failed")
DELETED = "Deleted"
IDLE_TIMEOUT_TAG = "tuneforge:idle-timeout-minutes"
COMMITMENT_MONTHS = {"OneMonth": 1, "SixMonths": 6}
MAX_IDLE_TIMEOUT_MINUTES = 525_600
"""A year: the longest idle timeout a tag or the setting may ask for."""


@dataclass(frozen=True)
class ServedModel:
    """What a deployment (or an on-demand engine) serves, and where its weights are."""

    arn: str
    foundation: FoundationModel
    foundation_arn: str
    source: str
    """``builtin:<name>`` or a local folder, as the engine process expects it."""


@dataclass(frozen=True)
class CreateThroughputRequest(IdempotentRequest):
    name: str
    model_id: str
    model_units: int
    commitment_duration: str | None = None
    tags: tuple[dict[str, str], ...] = ()
    client_request_token: str | None = None


@dataclass(frozen=True)
class ThroughputFilter:
    creation_time_after: datetime | None = None
    creation_time_before: datetime | None = None
    status_equals: str | None = None
    model_arn_equals: str | None = None
    name_contains: str | None = None
    sort_descending: bool = True


def add_months(start: datetime, months: int) -> datetime:
    """Same day and time ``months`` calendar months later (the 31st becomes the month's last day)."""
    month_index = start.month - 1 + months
    year, month = start.year + month_index // 12, month_index % 12 + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    return start.replace(year=year, month=month, day=day)


def idle_timeout_seconds(tags: tuple[dict[str, str], ...], default_minutes: float) -> float | None:
    """The tag's minutes (decimals allowed; ``0`` or ``off`` turns it off), else the setting's.

    Bounded to a year: the manager adds the timeout to timestamps every tick, and ``1e300`` minutes
    overflowed there, on every tick, for every deployment.
    """
    for tag in tags:
        if tag["key"] != IDLE_TIMEOUT_TAG:
            continue
        value = tag["value"].strip().lower()
        if value in ("off", "none"):
            return None
        try:
            minutes = float(value)
        except ValueError:
            minutes = -1.0
        if not 0 <= minutes <= MAX_IDLE_TIMEOUT_MINUTES:
            raise ValidationException(
                f"Tag {IDLE_TIMEOUT_TAG} must be a number of minutes between 0 and {MAX_IDLE_TIMEOUT_MINUTES} "
                f"(0 or 'off' turns it off), got '{tag['value']}'"
            )
        return minutes * 60 if minutes > 0 else None
    return default_minutes * 60 if default_minutes > 0 else None


class ThroughputService:
    def __init__(self, db: Database, catalog: Catalog, arns: ArnFactory, settings: Settings) -> None:
        self.db = db
        self.catalog = catalog
        self.arns = arns
        self.settings = settings
        self._create_lock = threading.Lock()

    # -- models ---------------------------------------------------------------------------------

    def resolve_model(self, identifier: str) -> ServedModel:
        """A foundation model (id or ARN) or a custom model (ARN or name) -> what to serve."""
        identifier = decode_identifier(identifier)
        kind = resource_type(identifier) if is_arn(identifier) else ""
        if kind == "custom-model" or (not kind and not self.is_foundation_id(identifier)):
            with self.db.session() as session:
                column = CustomModel.arn if kind else CustomModel.name
                custom = session.scalar(select(CustomModel).where(column == identifier))
            if custom is None:
                raise ResourceNotFoundException(f"The model {identifier} does not exist.")
            if custom.status != "Active":
                raise ValidationException(f"The custom model {custom.name} is {custom.status}, not Active")
            foundation = self.catalog.get(custom.base_model_id)
            return ServedModel(custom.arn, foundation, self.catalog.arn(foundation), custom.weights_path)
        foundation = self.catalog.get(identifier)
        arn = self.catalog.arn(foundation)
        return ServedModel(arn, foundation, arn, self.foundation_source(foundation))

    def foundation_source(self, model: FoundationModel) -> str:
        return model.source if model.builtin else str(self.catalog.local_folder(model))

    def is_foundation_id(self, identifier: str) -> bool:
        return any(m.model_id == identifier for m in self.catalog.all())

    # -- create ---------------------------------------------------------------------------------

    def check(self, request: CreateThroughputRequest) -> ServedModel:
        """What :meth:`create` refuses before it writes anything: a model that does not exist, is not
        Active or does not support Provisioned Throughput, and a bad idle-timeout tag (ignored under a
        commitment). The console runs it before its cost confirmation, so it only prices a request
        that create would accept."""
        served = self.resolve_model(request.model_id)
        if "PROVISIONED" not in served.foundation.inference_types:
            raise ValidationException(f"The model {served.foundation.model_id} does not support Provisioned Throughput")
        if request.commitment_duration is None:
            idle_timeout_seconds(request.tags, self.settings.idle_timeout_minutes)
        return served

    def create(self, request: CreateThroughputRequest) -> ProvisionedModel:
        fingerprint = request.fingerprint()
        if request.client_request_token:
            with self.db.session() as session:
                existing = session.scalar(
                    select(ProvisionedModel).where(
                        ProvisionedModel.client_request_token == request.client_request_token
                    )
                )
            if existing is not None:
                if existing.request_fingerprint != fingerprint:
                    raise ValidationException(
                        f"The clientRequestToken {request.client_request_token} was already used for a different "
                        "CreateProvisionedModelThroughput request"
                    )
                return existing
        served = self.check(request)
        committed = request.commitment_duration is not None
        idle = None if committed else idle_timeout_seconds(request.tags, self.settings.idle_timeout_minutes)
        now = utcnow()
        pid = new_id()
        row = ProvisionedModel(
            id=pid,
            arn=self.arns.provisioned_model(pid),
            name=request.name,
            client_request_token=request.client_request_token,
            request_fingerprint=fingerprint,
            model_units=request.model_units,
            model_arn=served.arn,
            desired_model_arn=served.arn,
            foundation_model_arn=served.foundation_arn,
            status="Creating",
            commitment_duration=request.commitment_duration,
            commitment_expires_at=(
                add_months(now, COMMITMENT_MONTHS[request.commitment_duration]) if request.commitment_duration else None
            ),
            tags=list(request.tags),
            idle_timeout_s=idle,
            price_per_model_unit_hour=self.settings.price_per_model_unit_hour,
            created_at=now,
            updated_at=now,
        )
        with self._create_lock, self.db.session() as session:
            self._check_name_free(session, request.name)
            held = session.scalar(
                select(func.coalesce(func.sum(ProvisionedModel.model_units), 0)).where(
                    ProvisionedModel.status.in_(LIVE_STATUSES)
                )
            )
            if int(held or 0) + request.model_units > self.settings.max_model_units:
                raise ServiceQuotaExceededException(
                    f"Requesting {request.model_units} model units would exceed this server's quota of "
                    f"{self.settings.max_model_units} (in use: {held}). Delete a provisioned throughput or raise "
                    "TUNEFORGE_MAX_MODEL_UNITS."
                )
            session.add(row)
            open_segment(session, row, served.arn, now)
        return row

    def _check_name_free(self, session: Session, name: str, except_id: str | None = None) -> None:
        clash = session.scalar(
            select(ProvisionedModel.id).where(
                ProvisionedModel.name == name,
                ProvisionedModel.status != DELETED,
                ProvisionedModel.id != (except_id or ""),
            )
        )
        if clash:
            raise ValidationException(f"A provisioned model throughput named {name} already exists")

    # -- read -----------------------------------------------------------------------------------

    def get(self, identifier: str) -> ProvisionedModel:
        with self.db.session() as session:
            return self._find(session, identifier)

    def _find(self, session: Session, identifier: str) -> ProvisionedModel:
        identifier = decode_identifier(identifier)
        if is_arn(identifier):
            row = session.scalar(select(ProvisionedModel).where(ProvisionedModel.arn == identifier))
        else:
            row = session.scalar(
                select(ProvisionedModel).where(ProvisionedModel.name == identifier, ProvisionedModel.status != DELETED)
            ) or session.scalar(
                select(ProvisionedModel)
                .where(ProvisionedModel.name == identifier)
                .order_by(ProvisionedModel.deleted_at.desc())
                .limit(1)
            )
        if row is None:
            raise ResourceNotFoundException(f"The provisioned model throughput {identifier} does not exist.")
        if row.status == DELETED:
            deleted = row.deleted_at.isoformat(timespec="seconds") if row.deleted_at else "an unknown time"
            raise ResourceNotFoundException(
                f"The provisioned model throughput {identifier} was deleted at {deleted} ({row.deletion_reason}). "
                'ListProvisionedModelThroughputs with statusEquals "Deleted" shows deleted deployments.'
            )
        return row

    def list_throughputs(self, filters: ThroughputFilter, after: Cursor | None, limit: int) -> Page[ProvisionedModel]:
        query = created_and_named(
            select(ProvisionedModel),
            ProvisionedModel,
            after=filters.creation_time_after,
            before=filters.creation_time_before,
            name_contains=filters.name_contains,
        )
        if filters.status_equals:
            query = query.where(ProvisionedModel.status == filters.status_equals)
        else:
            query = query.where(ProvisionedModel.status != DELETED)
        if filters.model_arn_equals:
            query = query.where(ProvisionedModel.model_arn == filters.model_arn_equals)
        return fetch_page(
            self.db, query, ProvisionedModel, descending=filters.sort_descending, after=after, limit=limit
        )

    def live(self) -> list[ProvisionedModel]:
        with self.db.session() as session:
            return list(
                session.scalars(select(ProvisionedModel).where(ProvisionedModel.status.in_(LIVE_STATUSES))).all()
            )

    # -- update ---------------------------------------------------------------------------------

    def update(self, identifier: str, new_name: str | None, desired_model_id: str | None) -> ProvisionedModel:
        served = self.resolve_model(desired_model_id) if desired_model_id else None
        with self.db.session() as session:
            row = self._find(session, identifier)
            if served is not None and served.arn != row.model_arn:
                if row.status != "InService":
                    raise ValidationException(
                        f"The provisioned model throughput {row.name} is {row.status}; "
                        "its model can change only while it is InService"
                    )
                if row.model_arn == row.foundation_model_arn:
                    raise ValidationException(
                        "desiredModelId can be changed only for a provisioned throughput of a custom model"
                    )
                if served.foundation_arn != row.foundation_model_arn:
                    raise ValidationException(
                        f"desiredModelId {desired_model_id} must be the base model {row.foundation_model_arn} "
                        "or a custom model customized from it"
                    )
                row.desired_model_arn = served.arn
                row.status = "Updating"
                row.failure_message = None
            if new_name is not None and new_name != row.name:
                self._check_name_free(session, new_name, except_id=row.id)
                row.name = new_name
            row.updated_at = utcnow()
            return row

    # -- delete ---------------------------------------------------------------------------------

    def delete(self, identifier: str, reason: str = "deleted by DeleteProvisionedModelThroughput") -> ProvisionedModel:
        now = utcnow()
        with self.db.session() as session:
            row = self._find(session, identifier)
            if row.commitment_expires_at is not None and now < row.commitment_expires_at:
                raise ConflictException(
                    f"The provisioned model throughput {row.name} has a {row.commitment_duration} commitment "
                    f"until {row.commitment_expires_at.isoformat(timespec='seconds')} and cannot be deleted before then"
                )
            self._end(session, row, now)
            row.status = DELETED
            row.deleted_at = now
            row.deletion_reason = reason
            return row

    @staticmethod
    def _end(session: Session, row: ProvisionedModel, at: datetime) -> None:
        if row.billing_ended_at is None:
            row.billing_ended_at = at
            close_segments(session, row.id, at)
        row.updated_at = at

    # -- transitions reported by the engine manager ---------------------------------------------

    def mark_in_service(self, provisioned_model_id: str) -> bool:
        with self.db.session() as session:
            row = session.get(ProvisionedModel, provisioned_model_id)
            if row is None or row.status != "Creating":
                return False
            now = utcnow()
            row.status, row.updated_at = "InService", now
            row.in_service_at = row.in_service_at or now
            return True

    def mark_failed(self, provisioned_model_id: str, message: str) -> bool:
        with self.db.session() as session:
            row = session.get(ProvisionedModel, provisioned_model_id)
            if row is None or row.status not in LIVE_STATUSES:
                return False
            self._end(session, row, utcnow())
            row.status, row.failure_message = "Failed", message[:2048]
            return True

    def complete_update(self, provisioned_model_id: str) -> bool:
        """The new model's replicas are ready: it serves from now on (a new meter segment)."""
        with self.db.session() as session:
            row = session.get(ProvisionedModel, provisioned_model_id)
            if row is None or row.status != "Updating":
                return False
            now = utcnow()
            close_segments(session, row.id, now)
            open_segment(session, row, row.desired_model_arn, now)
            row.model_arn, row.status, row.updated_at = row.desired_model_arn, "InService", now
            return True

    def fail_update(self, provisioned_model_id: str, message: str) -> bool:
        """The new model could not load: keep serving the current one and say why the update failed."""
        with self.db.session() as session:
            row = session.get(ProvisionedModel, provisioned_model_id)
            if row is None or row.status != "Updating":
                return False
            failed = row.desired_model_arn
            row.desired_model_arn, row.status, row.updated_at = row.model_arn, "InService", utcnow()
            row.failure_message = f"Update to {failed} failed: {message}"[:2048]
            return True
