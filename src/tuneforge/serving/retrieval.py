"""Retrieve and RetrieveAndGenerate: the query process client and the RAG prompt. No torch.

The query embedding runs in :mod:`tuneforge.knowledge.query_server`, a child process started on
the first Retrieve and kept for the server's life (loading the embedder costs seconds; a query,
milliseconds). Requests go one at a time over its stdin/stdout, under a lock; a child that died is
started again on the next request.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tuneforge.errors import ServiceError
from tuneforge.jobs.knowledge_bases import KnowledgeBaseService
from tuneforge.settings import Settings, child_environment

DEFAULT_RESULTS = 5
DEFAULT_PROMPT_TEMPLATE = (
    "Answer the question using only the search results below. If they do not contain the answer, say so.\n\n"
    "Search results:\n$search_results$\n\nQuestion: $query$\nAnswer:"
)
"""Bedrock's placeholders: ``$search_results$`` becomes the numbered retrieved chunks, ``$query$``
the user's input; a ``textPromptTemplate`` in the request replaces this one."""


class DependencyFailedException(ServiceError):
    code = "DependencyFailedException"
    status = 424


@dataclass(frozen=True)
class RetrievedChunk:
    text: str
    uri: str
    score: float
    chunk_id: int
    data_source_id: str


class QueryProcess:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None

    def _started(self) -> subprocess.Popen[str]:
        if self._process is not None and self._process.poll() is None:
            return self._process
        log = open(self.settings.logs_dir / "knowledge-query.log", "ab")  # noqa: SIM115 - the child keeps it
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tuneforge.knowledge.query_server"],
            env=child_environment(self.settings),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        log.close()
        self._exchange_line(self._process.stdout)
        return self._process

    @staticmethod
    def _exchange_line(stdout: IO[str] | None) -> dict[str, object]:
        assert stdout is not None
        line = stdout.readline()
        if not line:
            raise DependencyFailedException(
                "The knowledge base query process stopped (see logs/knowledge-query.log); retry"
            )
        reply: dict[str, object] = json.loads(line)
        return reply

    def search(self, query: str, indexes: list[Path], k: int) -> list[tuple[int, float]]:
        with self._lock:
            process = self._started()
            assert process.stdin is not None
            try:
                process.stdin.write(json.dumps({"query": query, "k": k, "indexes": [str(p) for p in indexes]}) + "\n")
                process.stdin.flush()
            except (BrokenPipeError, OSError):
                self._process = None
                raise DependencyFailedException("The knowledge base query process stopped; retry") from None
            reply = self._exchange_line(process.stdout)
        if "error" in reply:
            raise DependencyFailedException(f"The query could not be embedded: {reply['error']}")
        hits = reply["hits"]
        assert isinstance(hits, list)
        return [(int(i), float(s)) for i, s in hits]

    def close(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            assert process.stdin is not None
            process.stdin.close()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class Retriever:
    def __init__(self, knowledge_bases: KnowledgeBaseService, settings: Settings) -> None:
        self.knowledge_bases = knowledge_bases
        self.query_process = QueryProcess(settings)

    def retrieve(self, kb_identifier: str, query: str, k: int) -> list[RetrievedChunk]:
        """The ``k`` chunks most similar to ``query``, best first (none before the first ingestion)."""
        _kb, paths = self.knowledge_bases.index_paths(kb_identifier)
        if not paths:
            return []
        hits = self.query_process.search(query, paths, k)
        rows = self.knowledge_bases.chunks([chunk_id for chunk_id, _ in hits])
        return [
            RetrievedChunk(row.text, row.uri, score, chunk_id, row.data_source_id)
            for chunk_id, score in hits
            if (row := rows.get(chunk_id)) is not None
        ]

    def close(self) -> None:
        self.query_process.close()


def rag_prompt(template: str | None, query: str, chunks: list[RetrievedChunk]) -> str:
    results = "\n".join(f"[{n}] {chunk.text.strip()}" for n, chunk in enumerate(chunks, start=1))
    return (template or DEFAULT_PROMPT_TEMPLATE).replace("$search_results$", results).replace("$query$", query)


def context_hit(reference: str | None, chunks: list[RetrievedChunk]) -> bool | None:
    """Whether a retrieved chunk contains the reference answer (case and spacing ignored): the
    retrieval's share of a right answer (RagEvaluation's context hit rate). None without a reference."""
    if not reference:
        return None
    wanted = _normalized(reference)
    return any(wanted in _normalized(chunk.text) for chunk in chunks)


def _normalized(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()
