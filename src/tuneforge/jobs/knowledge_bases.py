"""Knowledge bases, data sources and ingestion jobs: the rules behind bedrock-agent. No HTTP, no torch.

A knowledge base is tuneforge's built-in embedder (all-MiniLM-L6-v2, 384 dimensions) over its
embedded FAISS index; a data source is an ``s3://`` prefix of the object store, confined to the
allowed roots by the same :meth:`~tuneforge.storage.ObjectStore.check` that training data goes
through. StartIngestionJob queues an :class:`~tuneforge.db.tables.IngestionJob`; the supervisor
claims it like any other job and a worker process (:mod:`tuneforge.knowledge.ingestion`) chunks,
embeds and indexes the documents. Everything a job needs is checked here, so a refused request
leaves nothing behind.
"""

from __future__ import annotations

import secrets
import shutil
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from tuneforge.arns import ArnFactory, decode_identifier
from tuneforge.db.listing import Cursor, Page, fetch_page
from tuneforge.db.session import Database
from tuneforge.db.tables import IngestionJob, KnowledgeBase, KnowledgeChunk, KnowledgeDataSource, utcnow
from tuneforge.errors import ConflictException, ResourceNotFoundException, ValidationException
from tuneforge.settings import Settings
from tuneforge.storage import ObjectStore, StorageError

EMBEDDING_MODEL_ID = "amazon.titan-embed-text-v2:0"
"""The embedding model ARN Bedrock users send most; tuneforge accepts it (and its own id) as a name
for its built-in embedder, so an unchanged CreateKnowledgeBase call works."""
BUILTIN_EMBEDDER_ID = "tuneforge.all-minilm-l6-v2"
EMBEDDING_MODELS = (BUILTIN_EMBEDDER_ID, EMBEDDING_MODEL_ID, "amazon.titan-embed-text-v1", "cohere.embed-english-v3")
EMBEDDING_DIMENSIONS = 384
DEFAULT_MAX_TOKENS = 300
DEFAULT_OVERLAP_PERCENTAGE = 20
"""Bedrock's default chunking: about 300 tokens per chunk, 20% overlap."""
LIVE_INGESTION = ("STARTING", "IN_PROGRESS", "STOPPING")
STATISTICS = (
    "numberOfDocumentsScanned",
    "numberOfMetadataDocumentsScanned",
    "numberOfNewDocumentsIndexed",
    "numberOfModifiedDocumentsIndexed",
    "numberOfMetadataDocumentsModified",
    "numberOfDocumentsDeleted",
    "numberOfDocumentsFailed",
    "numberOfDocumentsSkipped",
)
_ID_ALPHABET = string.ascii_uppercase + string.digits


def new_resource_id() -> str:
    """Bedrock agent ids: ten characters of ``[0-9a-zA-Z]``."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(10))


def knowledge_dir(settings: Settings, knowledge_base_id: str) -> Path:
    return settings.data_dir / "knowledge" / knowledge_base_id


def index_path(settings: Settings, knowledge_base_id: str, data_source_id: str) -> Path:
    """One FAISS file per data source: deleting a data source deletes its vectors with one unlink."""
    return knowledge_dir(settings, knowledge_base_id) / f"{data_source_id}.faiss"


@dataclass(frozen=True)
class Chunking:
    strategy: str
    max_tokens: int = DEFAULT_MAX_TOKENS
    overlap_percentage: int = DEFAULT_OVERLAP_PERCENTAGE


def chunking_of(ingestion: dict[str, Any]) -> Chunking:
    config = ingestion.get("chunkingConfiguration") or {}
    fixed = config.get("fixedSizeChunkingConfiguration") or {}
    return Chunking(
        config.get("chunkingStrategy", "FIXED_SIZE"),
        int(fixed.get("maxTokens", DEFAULT_MAX_TOKENS)),
        int(fixed.get("overlapPercentage", DEFAULT_OVERLAP_PERCENTAGE)),
    )


class KnowledgeBaseService:
    def __init__(self, db: Database, store: ObjectStore, arns: ArnFactory, settings: Settings) -> None:
        self.db = db
        self.store = store
        self.arns = arns
        self.settings = settings

    # -- knowledge bases ------------------------------------------------------------------------

    def create_knowledge_base(self, body: dict[str, Any]) -> KnowledgeBase:
        token = body.get("clientToken")
        if token:
            with self.db.session() as session:
                existing = session.scalar(select(KnowledgeBase).where(KnowledgeBase.client_token == token))
            if existing is not None:
                return existing
        configuration = body["knowledgeBaseConfiguration"]
        if configuration.get("type") != "VECTOR":
            raise ValidationException(
                f"knowledgeBaseConfiguration.type {configuration.get('type')} is not supported: tuneforge "
                "knowledge bases are VECTOR knowledge bases"
            )
        vector = configuration.get("vectorKnowledgeBaseConfiguration") or {}
        model_arn = str(vector.get("embeddingModelArn", ""))
        if model_arn.rsplit("/", 1)[-1] not in EMBEDDING_MODELS:
            raise ValidationException(
                f"The embedding model {model_arn} is not available: tuneforge embeds with its built-in "
                f"all-MiniLM-L6-v2 ({self.arns.foundation_model(BUILTIN_EMBEDDER_ID)}); "
                f"{', '.join(EMBEDDING_MODELS[1:])} are accepted as names for it"
            )
        embedding = (vector.get("embeddingModelConfiguration") or {}).get("bedrockEmbeddingModelConfiguration") or {}
        dimensions = embedding.get("dimensions")
        if dimensions is not None and dimensions != EMBEDDING_DIMENSIONS:
            raise ValidationException(
                f"dimensions {dimensions} is not supported: the built-in embedder makes "
                f"{EMBEDDING_DIMENSIONS}-dimensional vectors"
            )
        if embedding.get("embeddingDataType", "FLOAT32") != "FLOAT32":
            raise ValidationException("embeddingDataType BINARY is not supported: tuneforge indexes FLOAT32 vectors")
        kb_id = new_resource_id()
        now = utcnow()
        kb = KnowledgeBase(
            id=kb_id,
            arn=f"arn:aws:bedrock:{self.arns.region}:{self.arns.account_id}:knowledge-base/{kb_id}",
            name=body["name"],
            description=body.get("description"),
            role_arn=body["roleArn"],
            client_token=token,
            configuration=configuration,
            storage=body.get("storageConfiguration"),
            status="ACTIVE",
            created_at=now,
            updated_at=now,
        )
        with self.db.session() as session:
            if session.scalar(select(KnowledgeBase.id).where(KnowledgeBase.name == kb.name)):
                raise ConflictException(f"A knowledge base named {kb.name} already exists")
            session.add(kb)
        return kb

    def get_knowledge_base(self, identifier: str) -> KnowledgeBase:
        with self.db.session() as session:
            return self._kb(session, identifier)

    @staticmethod
    def _kb(session: Session, identifier: str) -> KnowledgeBase:
        kb = session.get(KnowledgeBase, decode_identifier(identifier))
        if kb is None:
            raise ResourceNotFoundException(f"Knowledge base with id {identifier} does not exist")
        return kb

    def list_knowledge_bases(self, after: Cursor | None, limit: int) -> Page[KnowledgeBase]:
        return fetch_page(self.db, select(KnowledgeBase), KnowledgeBase, descending=True, after=after, limit=limit)

    def delete_knowledge_base(self, identifier: str) -> KnowledgeBase:
        """Its data sources, chunks and index files go with it; refused while an ingestion runs."""
        with self.db.session() as session:
            kb = self._kb(session, identifier)
            self._refuse_if_ingesting(session, kb.id, None)
            session.execute(delete(KnowledgeChunk).where(KnowledgeChunk.knowledge_base_id == kb.id))
            session.execute(delete(IngestionJob).where(IngestionJob.knowledge_base_id == kb.id))
            session.execute(delete(KnowledgeDataSource).where(KnowledgeDataSource.knowledge_base_id == kb.id))
            session.delete(kb)
            kb.status = "DELETING"
        shutil.rmtree(knowledge_dir(self.settings, kb.id), ignore_errors=True)
        return kb

    @staticmethod
    def _refuse_if_ingesting(session: Session, kb_id: str, ds_id: str | None) -> None:
        query = select(IngestionJob.id).where(
            IngestionJob.knowledge_base_id == kb_id, IngestionJob.status.in_(LIVE_INGESTION)
        )
        if ds_id is not None:
            query = query.where(IngestionJob.data_source_id == ds_id)
        running = session.scalar(query)
        if running is not None:
            raise ConflictException(
                f"The ingestion job {running} is still running on knowledge base {kb_id}; wait for it to finish"
            )

    # -- data sources ---------------------------------------------------------------------------

    def create_data_source(self, kb_identifier: str, body: dict[str, Any]) -> KnowledgeDataSource:
        token = body.get("clientToken")
        if token:
            with self.db.session() as session:
                existing = session.scalar(select(KnowledgeDataSource).where(KnowledgeDataSource.client_token == token))
            if existing is not None:
                return existing
        kb = self.get_knowledge_base(kb_identifier)
        configuration = body["dataSourceConfiguration"]
        uri = self._s3_uri(configuration)
        ingestion = self._ingestion_configuration(body.get("vectorIngestionConfiguration") or {})
        now = utcnow()
        ds = KnowledgeDataSource(
            id=new_resource_id(),
            knowledge_base_id=kb.id,
            name=body["name"],
            description=body.get("description"),
            client_token=token,
            configuration=configuration,
            uri=uri,
            ingestion=ingestion,
            deletion_policy=body.get("dataDeletionPolicy") or "DELETE",
            status="AVAILABLE",
            created_at=now,
            updated_at=now,
        )
        with self.db.session() as session:
            taken = select(KnowledgeDataSource.id).where(
                KnowledgeDataSource.knowledge_base_id == kb.id, KnowledgeDataSource.name == ds.name
            )
            if session.scalar(taken):
                raise ConflictException(f"A data source named {ds.name} already exists in knowledge base {kb.id}")
            session.add(ds)
        return ds

    def _s3_uri(self, configuration: dict[str, Any]) -> str:
        """``s3://bucket/prefix`` from ``s3Configuration``, inside the allowed roots or refused."""
        if configuration.get("type") != "S3":
            raise ValidationException(
                f"dataSourceConfiguration.type {configuration.get('type')} is not supported: use an S3 data source"
            )
        s3 = configuration.get("s3Configuration") or {}
        bucket_arn = str(s3.get("bucketArn", ""))
        if not bucket_arn.startswith("arn:aws:s3:::") or len(bucket_arn) <= len("arn:aws:s3:::"):
            raise ValidationException(
                f"Invalid dataSourceConfiguration.s3Configuration.bucketArn {bucket_arn!r}: "
                "expected arn:aws:s3:::<bucket>"
            )
        prefixes = s3.get("inclusionPrefixes") or []
        if len(prefixes) > 1:
            raise ValidationException("inclusionPrefixes takes at most one prefix")
        prefix = str(prefixes[0]).lstrip("/") if prefixes else ""
        uri = f"s3://{bucket_arn.removeprefix('arn:aws:s3:::')}/{prefix}"
        try:
            self.store.check(uri)
        except StorageError as exc:
            raise ValidationException(f"Invalid dataSourceConfiguration.s3Configuration {uri}: {exc}") from None
        return uri

    @staticmethod
    def _ingestion_configuration(config: dict[str, Any]) -> dict[str, Any]:
        """Bedrock's default chunking filled in; strategies tuneforge does not run refused by name."""
        for member in ("customTransformationConfiguration", "parsingConfiguration", "contextEnrichmentConfiguration"):
            if member in config:
                raise ValidationException(f"vectorIngestionConfiguration.{member} is not supported")
        chunking = dict(config.get("chunkingConfiguration") or {"chunkingStrategy": "FIXED_SIZE"})
        strategy = chunking.get("chunkingStrategy")
        if strategy not in ("FIXED_SIZE", "NONE"):
            raise ValidationException(
                f"chunkingStrategy {strategy} is not supported: use FIXED_SIZE or NONE "
                "(HIERARCHICAL and SEMANTIC are not available in tuneforge)"
            )
        if strategy == "FIXED_SIZE":
            fixed = chunking.setdefault(
                "fixedSizeChunkingConfiguration",
                {"maxTokens": DEFAULT_MAX_TOKENS, "overlapPercentage": DEFAULT_OVERLAP_PERCENTAGE},
            )
            if not isinstance(fixed.get("maxTokens"), int) or fixed["maxTokens"] < 1:
                raise ValidationException(
                    "Value at 'vectorIngestionConfiguration.chunkingConfiguration.fixedSizeChunkingConfiguration"
                    ".maxTokens' failed to satisfy constraint: Member must be greater than or equal to 1"
                )
            overlap = fixed.get("overlapPercentage")
            if not isinstance(overlap, int) or not 1 <= overlap <= 99:
                raise ValidationException(
                    "Value at 'vectorIngestionConfiguration.chunkingConfiguration.fixedSizeChunkingConfiguration"
                    ".overlapPercentage' failed to satisfy constraint: Member must be between 1 and 99"
                )
        return {**config, "chunkingConfiguration": chunking}

    def get_data_source(self, kb_identifier: str, ds_identifier: str) -> KnowledgeDataSource:
        with self.db.session() as session:
            return self._ds(session, kb_identifier, ds_identifier)

    def _ds(self, session: Session, kb_identifier: str, ds_identifier: str) -> KnowledgeDataSource:
        kb = self._kb(session, kb_identifier)
        ds = session.get(KnowledgeDataSource, decode_identifier(ds_identifier))
        if ds is None or ds.knowledge_base_id != kb.id:
            raise ResourceNotFoundException(
                f"Data source with id {ds_identifier} does not exist in knowledge base {kb.id}"
            )
        return ds

    def list_data_sources(self, kb_identifier: str, after: Cursor | None, limit: int) -> Page[KnowledgeDataSource]:
        kb = self.get_knowledge_base(kb_identifier)
        query = select(KnowledgeDataSource).where(KnowledgeDataSource.knowledge_base_id == kb.id)
        return fetch_page(self.db, query, KnowledgeDataSource, descending=True, after=after, limit=limit)

    def delete_data_source(self, kb_identifier: str, ds_identifier: str) -> KnowledgeDataSource:
        """Its vectors go with it (Bedrock's ``RETAIN`` policy keeps them in the user's vector store;
        here the store is tuneforge's own, so nothing could ever read them again)."""
        with self.db.session() as session:
            ds = self._ds(session, kb_identifier, ds_identifier)
            self._refuse_if_ingesting(session, ds.knowledge_base_id, ds.id)
            session.execute(delete(KnowledgeChunk).where(KnowledgeChunk.data_source_id == ds.id))
            session.execute(delete(IngestionJob).where(IngestionJob.data_source_id == ds.id))
            session.delete(ds)
            ds.status = "DELETING"
        index_path(self.settings, ds.knowledge_base_id, ds.id).unlink(missing_ok=True)
        return ds

    # -- ingestion jobs -------------------------------------------------------------------------

    def start_ingestion_job(self, kb_identifier: str, ds_identifier: str, body: dict[str, Any]) -> IngestionJob:
        token = body.get("clientToken")
        with self.db.session() as session:
            if token:
                existing = session.scalar(select(IngestionJob).where(IngestionJob.client_token == token))
                if existing is not None:
                    return existing
            ds = self._ds(session, kb_identifier, ds_identifier)
            self._refuse_if_ingesting(session, ds.knowledge_base_id, ds.id)
            now = utcnow()
            job = IngestionJob(
                id=new_resource_id(),
                knowledge_base_id=ds.knowledge_base_id,
                data_source_id=ds.id,
                description=body.get("description"),
                client_token=token,
                status="STARTING",
                statistics=dict.fromkeys(STATISTICS, 0),
                failure_reasons=[],
                phase="queued",
                created_at=now,
                updated_at=now,
            )
            session.add(job)
        return job

    def get_ingestion_job(self, kb_identifier: str, ds_identifier: str, job_id: str) -> IngestionJob:
        with self.db.session() as session:
            ds = self._ds(session, kb_identifier, ds_identifier)
            job = session.get(IngestionJob, decode_identifier(job_id))
            if job is None or job.data_source_id != ds.id:
                raise ResourceNotFoundException(f"Ingestion job with id {job_id} does not exist in data source {ds.id}")
            return job

    def list_ingestion_jobs(
        self, kb_identifier: str, ds_identifier: str, after: Cursor | None, limit: int, descending: bool
    ) -> Page[IngestionJob]:
        ds = self.get_data_source(kb_identifier, ds_identifier)
        query = select(IngestionJob).where(IngestionJob.data_source_id == ds.id)
        return fetch_page(self.db, query, IngestionJob, descending=descending, after=after, limit=limit)

    # -- retrieval ------------------------------------------------------------------------------

    def index_paths(self, kb_identifier: str) -> tuple[KnowledgeBase, list[Path]]:
        """The knowledge base and the index files of its data sources that have been ingested."""
        with self.db.session() as session:
            kb = self._kb(session, kb_identifier)
            ids = session.scalars(
                select(KnowledgeDataSource.id).where(KnowledgeDataSource.knowledge_base_id == kb.id)
            ).all()
        paths = [index_path(self.settings, kb.id, ds_id) for ds_id in ids]
        return kb, [path for path in paths if path.exists()]

    def chunks(self, ids: list[int]) -> dict[int, KnowledgeChunk]:
        """Chunk rows by id; an id whose row a concurrent re-ingestion replaced is simply absent."""
        with self.db.session() as session:
            rows = session.scalars(select(KnowledgeChunk).where(KnowledgeChunk.id.in_(ids))).all()
        return {row.id: row for row in rows}


def mark_ingestion_ended(job: IngestionJob, status: str, reason: str | None = None) -> None:
    """The one place an ingestion job's final status is written (worker and supervisor)."""
    job.status, job.phase = status, "done"
    if reason:
        job.failure_reasons = [*job.failure_reasons, reason][-100:]
    job.updated_at = utcnow()
    job.worker_pid = None
