"""bedrock-agent and bedrock-agent-runtime wire shapes: camelCase out of the rows and results."""

from __future__ import annotations

from typing import Any

from tuneforge.db.tables import IngestionJob, KnowledgeBase, KnowledgeDataSource
from tuneforge.errors import ValidationException, constraint_errors, range_violation
from tuneforge.serving.retrieval import RetrievedChunk


def knowledge_base(kb: KnowledgeBase) -> dict[str, Any]:
    body: dict[str, Any] = {
        "knowledgeBaseId": kb.id,
        "name": kb.name,
        "knowledgeBaseArn": kb.arn,
        "roleArn": kb.role_arn,
        "knowledgeBaseConfiguration": kb.configuration,
        "status": kb.status,
        "createdAt": kb.created_at.isoformat(),
        "updatedAt": kb.updated_at.isoformat(),
    }
    if kb.description:
        body["description"] = kb.description
    if kb.storage:
        body["storageConfiguration"] = kb.storage
    return body


def knowledge_base_summary(kb: KnowledgeBase) -> dict[str, Any]:
    body = {"knowledgeBaseId": kb.id, "name": kb.name, "status": kb.status, "updatedAt": kb.updated_at.isoformat()}
    if kb.description:
        body["description"] = kb.description
    return body


def data_source(ds: KnowledgeDataSource) -> dict[str, Any]:
    body: dict[str, Any] = {
        "knowledgeBaseId": ds.knowledge_base_id,
        "dataSourceId": ds.id,
        "name": ds.name,
        "status": ds.status,
        "dataSourceConfiguration": ds.configuration,
        "vectorIngestionConfiguration": ds.ingestion,
        "dataDeletionPolicy": ds.deletion_policy,
        "createdAt": ds.created_at.isoformat(),
        "updatedAt": ds.updated_at.isoformat(),
    }
    if ds.description:
        body["description"] = ds.description
    return body


def data_source_summary(ds: KnowledgeDataSource) -> dict[str, Any]:
    body = {
        "knowledgeBaseId": ds.knowledge_base_id,
        "dataSourceId": ds.id,
        "name": ds.name,
        "status": ds.status,
        "updatedAt": ds.updated_at.isoformat(),
    }
    if ds.description:
        body["description"] = ds.description
    return body


def ingestion_job(job: IngestionJob) -> dict[str, Any]:
    body: dict[str, Any] = {
        "knowledgeBaseId": job.knowledge_base_id,
        "dataSourceId": job.data_source_id,
        "ingestionJobId": job.id,
        "status": job.status,
        "statistics": job.statistics,
        "startedAt": job.created_at.isoformat(),
        "updatedAt": job.updated_at.isoformat(),
    }
    if job.failure_reasons:
        body["failureReasons"] = job.failure_reasons
    if job.description:
        body["description"] = job.description
    return body


def number_of_results(body: dict[str, Any], member: str) -> int:
    """``vectorSearchConfiguration.numberOfResults`` (Bedrock: 1..100, default 5)."""
    config = (body.get("retrievalConfiguration") or {}).get("vectorSearchConfiguration") or {}
    for unsupported in ("filter", "rerankingConfiguration", "implicitFilterConfiguration"):
        if unsupported in config:
            raise ValidationException(f"{member}.vectorSearchConfiguration.{unsupported} is not supported")
    value = config.get("numberOfResults", 5)
    if not 1 <= value <= 100:
        raise constraint_errors([range_violation(value, f"{member}.vectorSearchConfiguration.numberOfResults", 1, 100)])
    return int(value)


def retrieval_result(chunk: RetrievedChunk, *, score: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "content": {"text": chunk.text, "type": "TEXT"},
        "location": {"type": "S3", "s3Location": {"uri": chunk.uri}},
        "metadata": {
            "x-amz-bedrock-kb-source-uri": chunk.uri,
            "x-amz-bedrock-kb-chunk-id": str(chunk.chunk_id),
            "x-amz-bedrock-kb-data-source-id": chunk.data_source_id,
        },
    }
    if score:
        body["score"] = chunk.score
    return body
