"""Retrieval inside a worker process, for RagEvaluation jobs: the same embedder, index and prompt as
RetrieveAndGenerate, without the API's query process (the worker may load torch itself)."""

from __future__ import annotations

from typing import Any

from tuneforge.knowledge.embedder import Embedder
from tuneforge.knowledge.index import IndexCache
from tuneforge.services import Services
from tuneforge.serving.retrieval import DEFAULT_RESULTS, RetrievedChunk, rag_prompt


class WorkerRetriever:
    def __init__(self, services: Services, config: dict[str, Any]) -> None:
        self.services = services
        self.knowledge_base_id = str(config["knowledgeBaseId"])
        search = (config.get("retrievalConfiguration") or {}).get("vectorSearchConfiguration") or {}
        self.k = int(search.get("numberOfResults", DEFAULT_RESULTS))
        generation = config.get("generationConfiguration") or {}
        self.template = (generation.get("promptTemplate") or {}).get("textPromptTemplate") or None
        self.embedder = Embedder(services.settings.models_dir)
        self.indexes = IndexCache()

    def retrieve(self, queries: list[str]) -> list[list[RetrievedChunk]]:
        _kb, paths = self.services.knowledge_bases.index_paths(self.knowledge_base_id)
        vectors = self.embedder.embed(queries)
        found = []
        for vector in vectors:
            hits = self.indexes.search(paths, vector, self.k)
            rows = self.services.knowledge_bases.chunks([chunk_id for chunk_id, _ in hits])
            found.append(
                [
                    RetrievedChunk(row.text, row.uri, score, chunk_id, row.data_source_id)
                    for chunk_id, score in hits
                    if (row := rows.get(chunk_id)) is not None
                ]
            )
        return found

    def prompt(self, query: str, chunks: list[RetrievedChunk]) -> str:
        return rag_prompt(self.template, query, chunks)
