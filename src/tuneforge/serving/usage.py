"""Metering: model-unit-hours, tokens and cost per deployment and per model.

A provisioned throughput costs ``model units x hours x price per model-unit-hour`` from creation
until it is deleted or fails, whether or not anyone calls it (as on Bedrock): that is the number a
forgotten deployment runs up, and the one the idle timeout exists to stop. On-demand use (foundation
models, and custom models through a custom model deployment) costs its tokens instead: input and
output tokens at the base model's price per 1,000 (``Settings.token_price``), nothing while idle.
A batch inference job's tokens cost ``Settings.batch_token_price`` (the on-demand price times
``batch_price_fraction``): one closed segment per job, written when the job ends
(:func:`record_batch_job`), whatever it ended as, with the tokens of the records it answered.

The ledger is :class:`~tuneforge.db.tables.UsageSegment` rows; tokens are counted in memory on the
request path (:class:`UsageMeter`) and written to the open segment by the engine manager every tick,
so a request never waits on a database write. An on-demand segment carries the prices its tokens
were metered at and belongs to one calendar month (UTC): a price change or a new month opens a new
one, so a bill never changes after the fact and a deployment's month-to-date cost (its budget's
measure) is a sum of whole segments.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tuneforge.catalog.service import Catalog
from tuneforge.db.session import Database
from tuneforge.db.tables import (
    CustomModel,
    CustomModelDeployment,
    ModelInvocationJob,
    ProvisionedModel,
    UsageSegment,
    utcnow,
)
from tuneforge.settings import TokenPrice


def segment_hours(segment: UsageSegment, now: datetime) -> float:
    """Model-unit-hours of one segment up to ``now`` (or its end)."""
    end = segment.ended_at or now
    return max(0.0, (end - segment.started_at).total_seconds()) / 3600.0 * segment.model_units


def token_cost(segment: UsageSegment) -> float:
    """What the segment's tokens cost on demand (0 for provisioned segments, which bill hours)."""
    return (segment.input_tokens or 0) / 1000 * (segment.price_per_1k_input_tokens or 0.0) + (
        segment.output_tokens or 0
    ) / 1000 * (segment.price_per_1k_output_tokens or 0.0)


def batch_job_cost(job: ModelInvocationJob) -> float:
    """What a batch job's tokens cost so far at its batch price (what its ledger segment will bill)."""
    return (job.input_tokens or 0) / 1000 * (job.price_per_1k_input_tokens or 0.0) + (job.output_tokens or 0) / 1000 * (
        job.price_per_1k_output_tokens or 0.0
    )


def segment_cost(segment: UsageSegment, now: datetime) -> float:
    return segment_hours(segment, now) * segment.price_per_model_unit_hour + token_cost(segment)


def month_start(at: datetime) -> datetime:
    return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def month_to_date_cost(session: Session, deployment_id: str, now: datetime | None = None) -> float:
    """What a custom model deployment's tokens cost since the first of this month (UTC), as flushed."""
    since = month_start(now or utcnow())
    return sum(
        token_cost(segment)
        for segment in session.scalars(
            select(UsageSegment).where(UsageSegment.deployment_id == deployment_id, UsageSegment.started_at >= since)
        )
    )


def open_segment(session: Session, row: ProvisionedModel, model_arn: str, at: datetime) -> None:
    session.add(
        UsageSegment(
            provisioned_model_id=row.id,
            model_arn=model_arn,
            model_units=row.model_units,
            price_per_model_unit_hour=row.price_per_model_unit_hour,
            started_at=at,
        )
    )


def close_segments(session: Session, provisioned_model_id: str, at: datetime) -> None:
    for segment in session.scalars(
        select(UsageSegment).where(
            UsageSegment.provisioned_model_id == provisioned_model_id, UsageSegment.ended_at.is_(None)
        )
    ):
        segment.ended_at = at


def record_batch_job(session: Session, job: ModelInvocationJob, at: datetime) -> None:
    """Bill an ended batch job's tokens at the batch price it was created with (once, however it ended).

    Nothing is written for a job that answered nothing; a job that ended twice (a worker's end racing
    the supervisor's recovery) keeps its first segment, so no token is billed twice.
    """
    if not (job.input_tokens or job.output_tokens):
        return
    if session.scalar(select(UsageSegment.id).where(UsageSegment.invocation_job_id == job.id)) is not None:
        return
    session.add(
        UsageSegment(
            invocation_job_id=job.id,
            model_arn=job.model_arn,
            started_at=job.created_at,
            ended_at=at,
            invocations=job.success_records or 0,
            input_tokens=job.input_tokens,
            output_tokens=job.output_tokens,
            price_per_1k_input_tokens=job.price_per_1k_input_tokens,
            price_per_1k_output_tokens=job.price_per_1k_output_tokens,
        )
    )


@dataclass
class Meter:
    """What a deployment has cost so far: the ``tuneforge`` extension block of Get/List."""

    model_unit_hours: float = 0.0
    cost: float = 0.0
    invocations: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


def meters(session: Session, provisioned_model_ids: list[str], now: datetime | None = None) -> dict[str, Meter]:
    now = now or utcnow()
    out: dict[str, Meter] = {pid: Meter() for pid in provisioned_model_ids}
    if not provisioned_model_ids:
        return out
    for segment in session.scalars(
        select(UsageSegment).where(UsageSegment.provisioned_model_id.in_(provisioned_model_ids))
    ):
        assert segment.provisioned_model_id is not None
        meter = out[segment.provisioned_model_id]
        meter.model_unit_hours += segment_hours(segment, now)
        meter.cost += segment_cost(segment, now)
        meter.invocations += segment.invocations
        meter.input_tokens += segment.input_tokens
        meter.output_tokens += segment.output_tokens
    return out


@dataclass
class _Counts:
    invocations: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    last_at: datetime | None = None


_Key = tuple[str | None, str | None, str, TokenPrice | None]
"""(provisioned model id, custom model deployment id, model ARN, on-demand price)"""


@dataclass
class UsageMeter:
    """Thread-safe in-memory token counts, flushed into the ledger by :meth:`flush`."""

    db: Database
    _pending: dict[_Key, _Counts] = field(default_factory=lambda: defaultdict(_Counts))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _flush_lock: threading.Lock = field(default_factory=threading.Lock)
    """Held from taking the pending counts to committing them, so :meth:`month_to_date_cost` never
    reads counts that have left memory but not yet reached the ledger."""

    def record(
        self,
        provisioned_model_id: str | None,
        model_arn: str,
        input_tokens: int,
        output_tokens: int,
        deployment_id: str | None = None,
        price: TokenPrice | None = None,
    ) -> None:
        """Count one invocation; ``price`` is the on-demand price (None for provisioned throughput)."""
        with self._lock:
            counts = self._pending[(provisioned_model_id, deployment_id, model_arn, price)]
            counts.invocations += 1
            counts.input_tokens += input_tokens
            counts.output_tokens += output_tokens
            counts.last_at = utcnow()

    def month_to_date_cost(self, deployment_id: str) -> float:
        """What a custom model deployment's tokens cost this month: the ledger plus what is not flushed.

        A budget check that ran between a flush taking the counts and committing them saw neither and
        let a request past a spent budget (the e2e budget test caught it once in a few runs).
        """
        with self._flush_lock:
            with self.db.session() as session:
                flushed = month_to_date_cost(session, deployment_id)
            return flushed + self._pending_cost(deployment_id)

    def _pending_cost(self, deployment_id: str) -> float:
        with self._lock:
            return sum(
                counts.input_tokens / 1000 * price.input + counts.output_tokens / 1000 * price.output
                for (_, deployment, _, price), counts in self._pending.items()
                if deployment == deployment_id and price is not None
            )

    def flush(self) -> None:
        with self._flush_lock:
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, defaultdict(_Counts)
        if not pending:
            return
        now = utcnow()
        with self.db.session() as session:
            for (provisioned_model_id, deployment_id, model_arn, price), counts in pending.items():
                segment = session.scalar(
                    select(UsageSegment)
                    .where(
                        UsageSegment.provisioned_model_id.is_(None)
                        if provisioned_model_id is None
                        else UsageSegment.provisioned_model_id == provisioned_model_id,
                        UsageSegment.deployment_id.is_(None)
                        if deployment_id is None
                        else UsageSegment.deployment_id == deployment_id,
                        UsageSegment.model_arn == model_arn,
                        UsageSegment.invocation_job_id.is_(None),
                    )
                    .order_by(UsageSegment.id.desc())
                    .limit(1)
                )
                if segment is None or (price is not None and not _same_bill(segment, price, now)):
                    segment = UsageSegment(
                        provisioned_model_id=provisioned_model_id,
                        deployment_id=deployment_id,
                        model_arn=model_arn,
                        started_at=now,
                        price_per_1k_input_tokens=None if price is None else price.input,
                        price_per_1k_output_tokens=None if price is None else price.output,
                    )
                    session.add(segment)
                segment.invocations = (segment.invocations or 0) + counts.invocations
                segment.input_tokens = (segment.input_tokens or 0) + counts.input_tokens
                segment.output_tokens = (segment.output_tokens or 0) + counts.output_tokens
                if provisioned_model_id is not None:
                    row = session.get(ProvisionedModel, provisioned_model_id)
                    if row is not None and counts.last_at is not None:
                        row.last_invocation_at = max(row.last_invocation_at or counts.last_at, counts.last_at)


def _same_bill(segment: UsageSegment, price: TokenPrice, now: datetime) -> bool:
    """Whether tokens metered now at ``price`` belong on this on-demand segment."""
    return (
        segment.price_per_1k_input_tokens == price.input
        and segment.price_per_1k_output_tokens == price.output
        and segment.started_at >= month_start(now)
    )


def usage_report(db: Database, catalog: Catalog, now: datetime | None = None) -> dict[str, Any]:
    """Hours, tokens and cost per provisioned throughput and per custom model deployment (deleted ones
    included), and per model (by name where it still exists: custom model names, foundation model ids).

    ``total`` splits the cost into ``provisionedCost`` (model-unit-hours), ``onDemandCost`` (tokens
    invoked on demand) and ``batchCost`` (tokens of batch inference jobs, listed in ``batchJobs``).
    """
    now = now or utcnow()
    with db.session() as session:
        rows = {row.id: row for row in session.scalars(select(ProvisionedModel).order_by(ProvisionedModel.created_at))}
        on_demand = {
            row.id: row
            for row in session.scalars(select(CustomModelDeployment).order_by(CustomModelDeployment.created_at))
        }
        segments = list(session.scalars(select(UsageSegment).order_by(UsageSegment.id)))
        batch_rows = {
            row.id: row
            for row in session.scalars(
                select(ModelInvocationJob).where(
                    ModelInvocationJob.id.in_([s.invocation_job_id for s in segments if s.invocation_job_id])
                )
            )
        }
        model_names = {arn: name for arn, name in session.execute(select(CustomModel.arn, CustomModel.name))}
    model_names.update({catalog.arn(m): m.model_id for m in catalog.all()})
    deployments: dict[str, dict[str, Any]] = {}
    custom_deployments: dict[str, dict[str, Any]] = {row.id: _deployment_entry(row) for row in on_demand.values()}
    models: dict[str, dict[str, Any]] = {}
    batch_jobs: list[dict[str, Any]] = []
    totals = {**_zero(), "provisionedCost": 0.0, "onDemandCost": 0.0, "batchCost": 0.0}
    for segment in segments:
        hours = segment_hours(segment, now)
        cost = segment_cost(segment, now)
        if segment.provisioned_model_id:
            totals["provisionedCost"] += cost
        elif segment.invocation_job_id:
            totals["batchCost"] += cost
            batch_jobs.append(_batch_entry(segment, batch_rows.get(segment.invocation_job_id), cost))
        else:
            totals["onDemandCost"] += cost
        model = models.setdefault(
            segment.model_arn,
            {
                "modelArn": segment.model_arn,
                "modelName": model_names.get(segment.model_arn, segment.model_arn.rsplit("/", 1)[-1]),
                **_zero(),
            },
        )
        _add(model, hours, cost, segment)
        if segment.deployment_id in custom_deployments:
            entry = custom_deployments[segment.deployment_id]
            _add(entry, hours, cost, segment)
            if segment.started_at >= month_start(now):
                entry["monthToDateCost"] += cost
        if segment.provisioned_model_id is None:
            continue
        row = rows.get(segment.provisioned_model_id)
        if row is None:
            continue
        deployment = deployments.setdefault(
            row.id,
            {
                "provisionedModelName": row.name,
                "provisionedModelArn": row.arn,
                "status": row.status,
                "modelUnits": row.model_units,
                "pricePerModelUnitHour": row.price_per_model_unit_hour,
                "creationTime": _iso(row.created_at),
                "deletionTime": _iso(row.deleted_at),
                "deletionReason": row.deletion_reason,
                **_zero(),
            },
        )
        _add(deployment, hours, cost, segment)
    for model in models.values():
        for key in _zero():
            totals[key] += model[key]
    return {
        "deployments": list(deployments.values()),
        "customModelDeployments": list(custom_deployments.values()),
        "batchJobs": batch_jobs,
        "models": list(models.values()),
        "total": totals,
    }


def _deployment_entry(row: CustomModelDeployment) -> dict[str, Any]:
    return {
        "modelDeploymentName": row.name,
        "customModelDeploymentArn": row.arn,
        "modelArn": row.model_arn,
        "status": "Deleted" if row.deleted_at is not None else row.status,
        "monthlyBudgetUsd": row.monthly_budget,
        "monthToDateCost": 0.0,
        "creationTime": _iso(row.created_at),
        "deletionTime": _iso(row.deleted_at),
        **_zero(),
    }


def _batch_entry(segment: UsageSegment, job: ModelInvocationJob | None, cost: float) -> dict[str, Any]:
    return {
        "jobName": None if job is None else job.name,
        "jobArn": None if job is None else job.arn,
        "modelArn": segment.model_arn,
        "status": None if job is None else job.status,
        "submitTime": _iso(segment.started_at),
        "endTime": _iso(segment.ended_at),
        "records": segment.invocations,
        "inputTokens": segment.input_tokens,
        "outputTokens": segment.output_tokens,
        "pricePer1kInputTokens": segment.price_per_1k_input_tokens,
        "pricePer1kOutputTokens": segment.price_per_1k_output_tokens,
        "cost": cost,
    }


def _zero() -> dict[str, Any]:
    return {"modelUnitHours": 0.0, "cost": 0.0, "invocations": 0, "inputTokens": 0, "outputTokens": 0}


def _add(entry: dict[str, Any], hours: float, cost: float, segment: UsageSegment) -> None:
    entry["modelUnitHours"] += hours
    entry["cost"] += cost
    entry["invocations"] += segment.invocations
    entry["inputTokens"] += segment.input_tokens
    entry["outputTokens"] += segment.output_tokens


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
