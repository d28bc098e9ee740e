"""SQLAlchemy 2 tables. Internal names are plain Python; wire shapes live in api/bedrock."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Dialect, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
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

    phase: Mapped[str] = mapped_column(String(16), default="queued")
    """queued -> running -> done. The queue is the set of jobs in phase 'queued'."""
    stop_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    worker_host: Mapped[str | None] = mapped_column(String(255), nullable=True)
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
    """A user's own Hugging Face format causal LM, listed beside the built-in family."""

    __tablename__ = "registered_models"

    model_id: Mapped[str] = mapped_column(String(140), primary_key=True)
    provider: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(4096))
    family: Mapped[str] = mapped_column(String(64))
    context_length: Mapped[int] = mapped_column(Integer)
    parameter_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
