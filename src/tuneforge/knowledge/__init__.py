"""Torch side of knowledge bases: the built-in sentence embedder, chunking, the FAISS index,
the ingestion worker and the query process. Never imported by the API process."""
