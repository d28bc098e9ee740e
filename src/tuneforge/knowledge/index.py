"""The embedded vector index: one exact inner-product FAISS index per data source.

Exact search (``IndexFlatIP``) over unit vectors is cosine similarity; at tens of thousands of
384-dimensional chunks a query costs about a millisecond, so no approximate index (and no training
step) is needed. Vector ids are the chunk rows' ids, so a hit maps straight to its text.
"""

from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np

from tuneforge.jobs.knowledge_bases import EMBEDDING_DIMENSIONS


def write_index(path: Path, vectors: np.ndarray, ids: np.ndarray) -> None:
    """Written beside its final name, then renamed: a reader sees the old index or the new one."""
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(EMBEDDING_DIMENSIONS))
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    faiss.write_index(index, str(staging))
    os.replace(staging, path)


class IndexCache:
    """Loaded indexes by path, reloaded when the file changes (a re-ingestion replaced it)."""

    def __init__(self) -> None:
        self._loaded: dict[Path, tuple[int, faiss.Index]] = {}

    def get(self, path: Path) -> faiss.Index | None:
        try:
            stamp = path.stat().st_mtime_ns
        except FileNotFoundError:
            self._loaded.pop(path, None)
            return None
        cached = self._loaded.get(path)
        if cached is None or cached[0] != stamp:
            cached = (stamp, faiss.read_index(str(path)))
            self._loaded[path] = cached
        return cached[1]

    def search(self, paths: list[Path], query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The ``k`` best (chunk id, score) over all ``paths``, best first."""
        hits: list[tuple[int, float]] = []
        for path in paths:
            index = self.get(path)
            if index is None or index.ntotal == 0:
                continue
            scores, ids = index.search(query.reshape(1, -1), min(k, index.ntotal))
            hits.extend((int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0)
        hits.sort(key=lambda hit: -hit[1])
        return hits[:k]
