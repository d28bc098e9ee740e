"""Baseline: the schema of the last release without migrations

Revision ID: 0001_baseline
Revises: (none)
Create Date: 2026-12-01 04:16:40.931778
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0001_baseline"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


TABLES = [
    "custom_model_deployments",
    "custom_models",
    "evaluation_jobs",
    "ingestion_jobs",
    "invocation_logging",
    "jobs",
    "knowledge_bases",
    "knowledge_chunks",
    "knowledge_data_sources",
    "model_import_jobs",
    "model_invocation_jobs",
    "provisioned_models",
    "registered_models",
    "usage_segments",
    "job_events",
]
"""In creation order (foreign keys last); dropped in reverse."""


def _create_or_complete(name: str, *elements: Any) -> None:
    """Create the table, or complete the one a release before migrations made with ``create_all``.

    That release added later nullable columns to existing tables at start; a database it left may
    lack any of them. They are added here (nullable, so every existing row stays valid). A unique
    constraint on an added column is not (SQLite cannot add one); the services check names.
    """
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table(name):
        op.create_table(name, *elements)
        return
    present = {column["name"] for column in inspector.get_columns(name)}
    for element in elements:
        if isinstance(element, sa.Column) and element.name not in present:
            if not element.nullable:
                raise RuntimeError(
                    f"the database's table {name} predates column {element.name}, which cannot be added to "
                    "existing rows; use a new database"
                )
            op.add_column(name, element)


def _create_index(index: str, table: str, columns: list[str]) -> None:
    if index not in {found["name"] for found in sa.inspect(op.get_bind()).get_indexes(table)}:
        op.create_index(index, table, columns)


def upgrade() -> None:
    _create_or_complete(
        "custom_model_deployments",
        sa.Column("id", sa.String(length=12), nullable=False),
        sa.Column("arn", sa.String(length=1011), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("model_arn", sa.String(length=1011), nullable=False),
        sa.Column("base_model_id", sa.String(length=256), nullable=False),
        sa.Column("client_request_token", sa.String(length=256), nullable=True),
        sa.Column("request_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("failure_message", sa.Text(), nullable=True),
        sa.Column("update_model_arn", sa.String(length=1011), nullable=True),
        sa.Column("update_status", sa.String(length=16), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("monthly_budget", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("arn"),
        sa.UniqueConstraint("client_request_token"),
    )
    _create_index("ix_custom_model_deployments_name", "custom_model_deployments", ["name"])

    _create_or_complete(
        "custom_models",
        sa.Column("id", sa.String(length=12), nullable=False),
        sa.Column("arn", sa.String(length=1011), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("job_id", sa.String(length=12), nullable=True),
        sa.Column("job_arn", sa.String(length=256), nullable=True),
        sa.Column("job_name", sa.String(length=63), nullable=True),
        sa.Column("base_model_id", sa.String(length=256), nullable=False),
        sa.Column("base_model_arn", sa.String(length=1011), nullable=False),
        sa.Column("customization_type", sa.String(length=32), nullable=False),
        sa.Column("hyperparameters", sa.JSON(), nullable=False),
        sa.Column("training_data", sa.JSON(), nullable=False),
        sa.Column("validation_data", sa.JSON(), nullable=False),
        sa.Column("output_data", sa.JSON(), nullable=False),
        sa.Column("customization_config", sa.JSON(), nullable=True),
        sa.Column("training_loss", sa.Float(), nullable=True),
        sa.Column("validation_losses", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("failure_message", sa.Text(), nullable=True),
        sa.Column("weights_path", sa.String(length=4096), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("kms_key", sa.String(length=2048), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("arn"),
        sa.UniqueConstraint("name"),
    )
    _create_or_complete(
        "evaluation_jobs",
        sa.Column("id", sa.String(length=12), nullable=False),
        sa.Column("arn", sa.String(length=1011), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("client_request_token", sa.String(length=256), nullable=True),
        sa.Column("request_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("role_arn", sa.String(length=2048), nullable=False),
        sa.Column("kms_key_id", sa.String(length=2048), nullable=True),
        sa.Column("application_type", sa.String(length=32), nullable=False),
        sa.Column("evaluation_config", sa.JSON(), nullable=False),
        sa.Column("inference_config", sa.JSON(), nullable=False),
        sa.Column("output_data", sa.JSON(), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("failure_messages", sa.JSON(), nullable=False),
        sa.Column("results", sa.JSON(), nullable=True),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("stop_requested", sa.Boolean(), nullable=False),
        sa.Column("worker_pid", sa.Integer(), nullable=True),
        sa.Column("worker_host", sa.String(length=255), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("arn"),
        sa.UniqueConstraint("client_request_token"),
        sa.UniqueConstraint("name"),
    )
    _create_index("ix_evaluation_jobs_phase_created", "evaluation_jobs", ["phase", "created_at"])

    _create_or_complete(
        "ingestion_jobs",
        sa.Column("id", sa.String(length=10), nullable=False),
        sa.Column("knowledge_base_id", sa.String(length=10), nullable=False),
        sa.Column("data_source_id", sa.String(length=10), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("client_token", sa.String(length=256), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("statistics", sa.JSON(), nullable=False),
        sa.Column("failure_reasons", sa.JSON(), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("stop_requested", sa.Boolean(), nullable=False),
        sa.Column("worker_pid", sa.Integer(), nullable=True),
        sa.Column("worker_host", sa.String(length=255), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("client_token"),
    )
    _create_index("ix_ingestion_jobs_data_source_id", "ingestion_jobs", ["data_source_id"])
    _create_index("ix_ingestion_jobs_knowledge_base_id", "ingestion_jobs", ["knowledge_base_id"])
    _create_index("ix_ingestion_jobs_phase_created", "ingestion_jobs", ["phase", "created_at"])

    _create_or_complete(
        "invocation_logging",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    _create_or_complete(
        "jobs",
        sa.Column("id", sa.String(length=12), nullable=False),
        sa.Column("arn", sa.String(length=256), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("custom_model_name", sa.String(length=63), nullable=False),
        sa.Column("role_arn", sa.String(length=2048), nullable=False),
        sa.Column("client_request_token", sa.String(length=256), nullable=True),
        sa.Column("request_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("base_model_id", sa.String(length=256), nullable=False),
        sa.Column("base_model_arn", sa.String(length=1011), nullable=False),
        sa.Column("customization_type", sa.String(length=32), nullable=False),
        sa.Column("hyperparameters", sa.JSON(), nullable=False),
        sa.Column("training_data", sa.JSON(), nullable=False),
        sa.Column("validation_data", sa.JSON(), nullable=False),
        sa.Column("output_data", sa.JSON(), nullable=False),
        sa.Column("customization_config", sa.JSON(), nullable=True),
        sa.Column("vpc_config", sa.JSON(), nullable=True),
        sa.Column("kms_key", sa.String(length=2048), nullable=True),
        sa.Column("job_tags", sa.JSON(), nullable=False),
        sa.Column("custom_model_tags", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("failure_message", sa.Text(), nullable=True),
        sa.Column("status_details", sa.JSON(), nullable=False),
        sa.Column("training_loss", sa.Float(), nullable=True),
        sa.Column("validation_losses", sa.JSON(), nullable=False),
        sa.Column("output_model_arn", sa.String(length=1011), nullable=True),
        sa.Column("progress", sa.JSON(), nullable=False),
        sa.Column("tuning", sa.JSON(), nullable=True),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("stop_requested", sa.Boolean(), nullable=False),
        sa.Column("worker_pid", sa.Integer(), nullable=True),
        sa.Column("worker_host", sa.String(length=255), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("arn"),
        sa.UniqueConstraint("client_request_token"),
        sa.UniqueConstraint("name"),
    )
    _create_index("ix_jobs_phase_created", "jobs", ["phase", "created_at"])

    _create_or_complete(
        "knowledge_bases",
        sa.Column("id", sa.String(length=10), nullable=False),
        sa.Column("arn", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("role_arn", sa.String(length=2048), nullable=False),
        sa.Column("client_token", sa.String(length=256), nullable=True),
        sa.Column("configuration", sa.JSON(), nullable=False),
        sa.Column("storage", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("arn"),
        sa.UniqueConstraint("client_token"),
        sa.UniqueConstraint("name"),
    )
    _create_or_complete(
        "knowledge_chunks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("knowledge_base_id", sa.String(length=10), nullable=False),
        sa.Column("data_source_id", sa.String(length=10), nullable=False),
        sa.Column("uri", sa.String(length=2048), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    _create_index("ix_knowledge_chunks_data_source_id", "knowledge_chunks", ["data_source_id"])
    _create_index("ix_knowledge_chunks_knowledge_base_id", "knowledge_chunks", ["knowledge_base_id"])

    _create_or_complete(
        "knowledge_data_sources",
        sa.Column("id", sa.String(length=10), nullable=False),
        sa.Column("knowledge_base_id", sa.String(length=10), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("client_token", sa.String(length=256), nullable=True),
        sa.Column("configuration", sa.JSON(), nullable=False),
        sa.Column("uri", sa.String(length=2048), nullable=False),
        sa.Column("ingestion", sa.JSON(), nullable=False),
        sa.Column("deletion_policy", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("client_token"),
    )
    _create_index("ix_knowledge_data_sources_knowledge_base_id", "knowledge_data_sources", ["knowledge_base_id"])

    _create_or_complete(
        "model_import_jobs",
        sa.Column("id", sa.String(length=12), nullable=False),
        sa.Column("arn", sa.String(length=1011), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("imported_model_name", sa.String(length=63), nullable=False),
        sa.Column("imported_model_id", sa.String(length=12), nullable=False),
        sa.Column("imported_model_arn", sa.String(length=1011), nullable=True),
        sa.Column("role_arn", sa.String(length=2048), nullable=False),
        sa.Column("source_uri", sa.String(length=4096), nullable=False),
        sa.Column("source_kind", sa.String(length=16), nullable=False),
        sa.Column("facts", sa.JSON(), nullable=False),
        sa.Column("client_request_token", sa.String(length=256), nullable=True),
        sa.Column("request_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("vpc_config", sa.JSON(), nullable=True),
        sa.Column("kms_key", sa.String(length=2048), nullable=True),
        sa.Column("job_tags", sa.JSON(), nullable=False),
        sa.Column("imported_model_tags", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("failure_message", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("arn"),
        sa.UniqueConstraint("client_request_token"),
        sa.UniqueConstraint("name"),
    )
    _create_or_complete(
        "model_invocation_jobs",
        sa.Column("id", sa.String(length=12), nullable=False),
        sa.Column("arn", sa.String(length=1011), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("client_request_token", sa.String(length=256), nullable=True),
        sa.Column("request_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("role_arn", sa.String(length=2048), nullable=False),
        sa.Column("model_id", sa.String(length=2048), nullable=False),
        sa.Column("model_arn", sa.String(length=1011), nullable=False),
        sa.Column("invocation_type", sa.String(length=16), nullable=False),
        sa.Column("input_data", sa.JSON(), nullable=False),
        sa.Column("output_data", sa.JSON(), nullable=False),
        sa.Column("vpc_config", sa.JSON(), nullable=True),
        sa.Column("timeout_hours", sa.Integer(), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("total_records", sa.Integer(), nullable=True),
        sa.Column("processed_records", sa.Integer(), nullable=True),
        sa.Column("success_records", sa.Integer(), nullable=True),
        sa.Column("error_records", sa.Integer(), nullable=True),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("price_per_1k_input_tokens", sa.Float(), nullable=True),
        sa.Column("price_per_1k_output_tokens", sa.Float(), nullable=True),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("stop_requested", sa.Boolean(), nullable=False),
        sa.Column("worker_pid", sa.Integer(), nullable=True),
        sa.Column("worker_host", sa.String(length=255), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("arn"),
        sa.UniqueConstraint("client_request_token"),
        sa.UniqueConstraint("name"),
    )
    _create_index("ix_model_invocation_jobs_phase_created", "model_invocation_jobs", ["phase", "created_at"])

    _create_or_complete(
        "provisioned_models",
        sa.Column("id", sa.String(length=12), nullable=False),
        sa.Column("arn", sa.String(length=256), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("client_request_token", sa.String(length=256), nullable=True),
        sa.Column("request_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("model_units", sa.Integer(), nullable=False),
        sa.Column("model_arn", sa.String(length=1011), nullable=False),
        sa.Column("desired_model_arn", sa.String(length=1011), nullable=False),
        sa.Column("foundation_model_arn", sa.String(length=1011), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("failure_message", sa.Text(), nullable=True),
        sa.Column("commitment_duration", sa.String(length=16), nullable=True),
        sa.Column("commitment_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("idle_timeout_s", sa.Float(), nullable=True),
        sa.Column("price_per_model_unit_hour", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("in_service_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_invocation_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("billing_ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deletion_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("arn"),
        sa.UniqueConstraint("client_request_token"),
    )
    _create_index("ix_provisioned_models_name", "provisioned_models", ["name"])

    _create_or_complete(
        "registered_models",
        sa.Column("model_id", sa.String(length=140), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=4096), nullable=False),
        sa.Column("family", sa.String(length=64), nullable=False),
        sa.Column("context_length", sa.Integer(), nullable=False),
        sa.Column("parameter_count", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("arn", sa.String(length=1011), nullable=True),
        sa.Column("name", sa.String(length=63), nullable=True),
        sa.Column("weights_path", sa.String(length=4096), nullable=True),
        sa.Column("job_arn", sa.String(length=1011), nullable=True),
        sa.Column("job_name", sa.String(length=63), nullable=True),
        sa.Column("instruct_supported", sa.Boolean(), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=True),
        sa.Column("kms_key", sa.String(length=2048), nullable=True),
        sa.PrimaryKeyConstraint("model_id"),
        sa.UniqueConstraint("arn"),
        sa.UniqueConstraint("name"),
    )
    _create_or_complete(
        "usage_segments",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("provisioned_model_id", sa.String(length=12), nullable=True),
        sa.Column("model_arn", sa.String(length=1011), nullable=False),
        sa.Column("model_units", sa.Integer(), nullable=False),
        sa.Column("price_per_model_unit_hour", sa.Float(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("invocations", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("deployment_id", sa.String(length=12), nullable=True),
        sa.Column("price_per_1k_input_tokens", sa.Float(), nullable=True),
        sa.Column("price_per_1k_output_tokens", sa.Float(), nullable=True),
        sa.Column("invocation_job_id", sa.String(length=12), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    _create_index("ix_usage_segments_deployment_id", "usage_segments", ["deployment_id"])
    _create_index("ix_usage_segments_invocation_job_id", "usage_segments", ["invocation_job_id"])
    _create_index("ix_usage_segments_model_arn", "usage_segments", ["model_arn"])
    _create_index("ix_usage_segments_provisioned_model_id", "usage_segments", ["provisioned_model_id"])

    _create_or_complete(
        "job_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=12), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    _create_index("ix_job_events_job_id", "job_events", ["job_id"])


def downgrade() -> None:
    for name in reversed(TABLES):
        op.drop_table(name)
