"""An ingestion job in its worker process: read -> chunk -> embed -> index, with its status in its row.

Every document under the data source's prefix is read; one that is empty or is not UTF-8 text is
counted in ``numberOfDocumentsFailed`` with a failure reason naming it, and the rest are ingested.
Bedrock's ``.metadata.json`` sidecars are counted as metadata documents and not indexed. The data
source is re-indexed in full each time: new chunk rows are written, then the index file is replaced
(atomically), then the old rows go, so a concurrent Retrieve always sees a complete index.
Statistics are written while the job runs (every :data:`PROGRESS_EVERY_S`), so GetIngestionJob
shows progress.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import numpy as np
import torch
from sqlalchemy import delete, insert, select

from tuneforge.db.tables import IngestionJob, KnowledgeChunk, KnowledgeDataSource
from tuneforge.jobs.knowledge_bases import chunking_of, index_path, mark_ingestion_ended
from tuneforge.knowledge.chunking import fixed_size_chunks
from tuneforge.knowledge.embedder import Embedder
from tuneforge.knowledge.index import write_index
from tuneforge.services import Services
from tuneforge.storage import StorageError

log = logging.getLogger("tuneforge.ingestion")

PROGRESS_EVERY_S = 0.5
EMBED_GROUP = 512
"""Chunks embedded between two progress updates and stop checks."""
MAX_REASONS = 100
"""Failure reasons kept in the row (Bedrock's list is bounded too); the count stays exact."""


class JobStopped(Exception):
    pass


class IngestionRunner:
    def __init__(self, services: Services, job_id: str, threads: int) -> None:
        self.services = services
        self.job_id = job_id
        self.threads = threads
        self._stop = threading.Event()
        self._last_progress = 0.0

    def request_stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        with self.services.db.session() as session:
            job = session.get(IngestionJob, self.job_id)
            if job is None or job.status not in ("STARTING", "IN_PROGRESS"):
                return
            ds = session.get(KnowledgeDataSource, job.data_source_id)
            if ds is None:
                mark_ingestion_ended(job, "FAILED", "The data source was deleted before the job started")
                return
            job.status = "IN_PROGRESS"
            job.worker_pid, job.worker_host = os.getpid(), socket.gethostname()
            statistics, reasons = dict(job.statistics), list(job.failure_reasons)
            source = {"kb": ds.knowledge_base_id, "ds": ds.id, "uri": ds.uri, "ingestion": ds.ingestion}
        try:
            self._ingest(source, statistics, reasons)
            status, reason = "COMPLETE", None
        except JobStopped:
            status, reason = "STOPPED", None
        except Exception as exc:
            log.exception("ingestion job %s failed", self.job_id)
            status, reason = "FAILED", f"{type(exc).__name__}: {exc}"[:2048]
        with self.services.db.session() as session:
            row = session.get(IngestionJob, self.job_id)
            if row is not None:
                row.statistics, row.failure_reasons = statistics, reasons[:MAX_REASONS]
                mark_ingestion_ended(row, status, reason)

    def _ingest(self, source: dict[str, Any], statistics: dict[str, int], reasons: list[str]) -> None:
        torch.set_num_threads(self.threads)
        store = self.services.store
        embedder = Embedder(self.services.settings.models_dir)
        chunking = chunking_of(source["ingestion"])
        with self.services.db.session() as session:
            previous = set(
                session.scalars(
                    select(KnowledgeChunk.uri).where(KnowledgeChunk.data_source_id == source["ds"]).distinct()
                ).all()
            )
        documents: list[tuple[str, str]] = []
        try:
            uris = sorted(store.list(source["uri"]))
        except (StorageError, OSError) as exc:
            raise RuntimeError(f"Could not list the data source {source['uri']}: {exc}") from None
        for uri in uris:
            if uri.endswith(".metadata.json"):
                statistics["numberOfMetadataDocumentsScanned"] += 1
                continue
            statistics["numberOfDocumentsScanned"] += 1
            text, problem = self._read(uri)
            if problem is not None:
                statistics["numberOfDocumentsFailed"] += 1
                reasons.append(f"{uri}: {problem}")
            else:
                assert text is not None
                documents.append((uri, text))
            self._progress(statistics, reasons)
        chunks: list[tuple[str, str]] = []
        if chunking.strategy == "NONE":
            chunks = [(uri, text) for uri, text in documents]
        else:
            spans = embedder.offsets([text for _, text in documents])
            for (uri, text), offsets in zip(documents, spans, strict=True):
                pieces = fixed_size_chunks(text, offsets, chunking.max_tokens, chunking.overlap_percentage)
                chunks.extend((uri, piece) for piece in pieces)
        vectors = np.zeros((len(chunks), 384), dtype=np.float32)
        for start in range(0, len(chunks), EMBED_GROUP):
            group = chunks[start : start + EMBED_GROUP]
            vectors[start : start + len(group)] = embedder.embed([text for _, text in group])
            self._progress(statistics, reasons, force=True)
        with self.services.db.session() as session:
            ids = (
                list(
                    session.scalars(
                        insert(KnowledgeChunk).returning(KnowledgeChunk.id, sort_by_parameter_order=True),
                        [
                            {"knowledge_base_id": source["kb"], "data_source_id": source["ds"], "uri": u, "text": t}
                            for u, t in chunks
                        ],
                    ).all()
                )
                if chunks
                else []
            )
        write_index(
            index_path(self.services.settings, source["kb"], source["ds"]), vectors, np.array(ids, dtype=np.int64)
        )
        with self.services.db.session() as session:
            stale = delete(KnowledgeChunk).where(KnowledgeChunk.data_source_id == source["ds"])
            session.execute(stale.where(KnowledgeChunk.id.not_in(ids)) if ids else stale)
        indexed = {uri for uri, _ in documents}
        statistics["numberOfNewDocumentsIndexed"] = len(indexed - previous)
        statistics["numberOfModifiedDocumentsIndexed"] = len(indexed & previous)
        statistics["numberOfDocumentsDeleted"] = len(previous - indexed)

    def _read(self, uri: str) -> tuple[str | None, str | None]:
        """(text, None) or (None, why the document cannot be ingested)."""
        try:
            data = self.services.store.read_bytes(uri)
        except (StorageError, OSError) as exc:
            return None, f"could not be read ({exc})"
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, f"is not UTF-8 text (byte {exc.start}); tuneforge ingests plain-text documents"
        if not text.strip():
            return None, "is empty"
        return text, None

    def _progress(self, statistics: dict[str, int], reasons: list[str], *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_progress < PROGRESS_EVERY_S:
            return
        self._last_progress = now
        with self.services.db.session() as session:
            row = session.get(IngestionJob, self.job_id)
            if row is None or row.stop_requested:
                self._stop.set()
            else:
                row.statistics, row.failure_reasons = dict(statistics), reasons[:MAX_REASONS]
        if self._stop.is_set():
            raise JobStopped
