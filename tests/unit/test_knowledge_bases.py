"""Knowledge bases below HTTP: chunking, the refusals (each leaves nothing behind), and an ingestion
run in-process with the real embedder, failing a corrupt and an empty document per file."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.unit.test_evaluation_jobs import BASE_MODEL, body, count_jobs, create, write_dataset
from tuneforge.db.tables import IngestionJob, KnowledgeChunk, KnowledgeDataSource
from tuneforge.errors import ConflictException, ResourceNotFoundException, ValidationException
from tuneforge.jobs.knowledge_bases import index_path
from tuneforge.jobs.supervisor import Supervisor
from tuneforge.knowledge.chunking import fixed_size_chunks
from tuneforge.services import Services
from tuneforge.settings import Settings

EMBEDDER = "arn:aws:bedrock:us-east-1::foundation-model/amazon.titan-embed-text-v2:0"


@pytest.fixture
def services(fast_tmp: Path) -> Iterator[Services]:
    created = Services.create(Settings(data_dir=fast_tmp / "data"))
    yield created
    created.close()


def kb_body(name: str = "facts", model: str = EMBEDDER) -> dict[str, Any]:
    return {
        "name": name,
        "roleArn": "arn:aws:iam::123456789012:role/r",
        "knowledgeBaseConfiguration": {
            "type": "VECTOR",
            "vectorKnowledgeBaseConfiguration": {"embeddingModelArn": model},
        },
    }


def ds_body(prefix: str, chunking: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "docs",
        "dataSourceConfiguration": {
            "type": "S3",
            "s3Configuration": {"bucketArn": "arn:aws:s3:::corpus", "inclusionPrefixes": [prefix]},
        },
    }
    if chunking is not None:
        body["vectorIngestionConfiguration"] = {"chunkingConfiguration": chunking}
    return body


def words(text: str) -> list[tuple[int, int]]:
    spans, start = [], None
    for i, char in enumerate(text + " "):
        if char != " " and start is None:
            start = i
        elif char == " " and start is not None:
            spans.append((start, i))
            start = None
    return spans


def test_fixed_size_chunks_overlap_by_the_percentage_and_slice_the_text_verbatim() -> None:
    text = "a b c d e f g h i j"
    assert fixed_size_chunks(text, words(text), 4, 25) == ["a b c d", "d e f g", "g h i j"]
    assert fixed_size_chunks(text, words(text), 20, 50) == [text]
    assert fixed_size_chunks(text, words(text), 2, 99) == [
        "a b",
        "b c",
        "c d",
        "d e",
        "e f",
        "f g",
        "g h",
        "h i",
        "i j",
    ]
    assert fixed_size_chunks("", [], 10, 20) == []


def test_default_chunking_is_bedrocks_300_tokens_with_20_percent_overlap(services: Services) -> None:
    kb = services.knowledge_bases.create_knowledge_base(kb_body())
    ds = services.knowledge_bases.create_data_source(kb.id, ds_body("docs/"))
    assert ds.ingestion["chunkingConfiguration"] == {
        "chunkingStrategy": "FIXED_SIZE",
        "fixedSizeChunkingConfiguration": {"maxTokens": 300, "overlapPercentage": 20},
    }
    assert ds.uri == "s3://corpus/docs/"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"inclusionPrefixes": ["../../../etc/"]}, "Invalid dataSourceConfiguration.s3Configuration"),
        ({"bucketArn": "corpus"}, "expected arn:aws:s3:::<bucket>"),
        ({"chunking": {"chunkingStrategy": "SEMANTIC"}}, "chunkingStrategy SEMANTIC is not supported"),
        (
            {
                "chunking": {
                    "chunkingStrategy": "FIXED_SIZE",
                    "fixedSizeChunkingConfiguration": {"maxTokens": 9, "overlapPercentage": 100},
                }
            },
            "overlapPercentage' failed to satisfy constraint",
        ),
    ],
)
def test_a_bad_data_source_is_refused_and_leaves_nothing(
    services: Services, change: dict[str, Any], message: str
) -> None:
    kb = services.knowledge_bases.create_knowledge_base(kb_body())
    body = ds_body("docs/", change.pop("chunking", None))
    body["dataSourceConfiguration"]["s3Configuration"].update(change)
    with pytest.raises(ValidationException, match=message):
        services.knowledge_bases.create_data_source(kb.id, body)
    with services.db.session() as session:
        assert session.scalar(select(func.count()).select_from(KnowledgeDataSource)) == 0


def test_unknown_embedder_unknown_resources_and_duplicate_names_are_refused(services: Services) -> None:
    with pytest.raises(ValidationException, match="all-MiniLM-L6-v2"):
        services.knowledge_bases.create_knowledge_base(kb_body(model="arn:aws:bedrock:us-east-1::foundation-model/x"))
    kb = services.knowledge_bases.create_knowledge_base(kb_body())
    with pytest.raises(ConflictException):
        services.knowledge_bases.create_knowledge_base(kb_body())
    with pytest.raises(ResourceNotFoundException, match="NOSUCHKB00"):
        services.knowledge_bases.create_data_source("NOSUCHKB00", ds_body("docs/"))
    with pytest.raises(ResourceNotFoundException):
        services.knowledge_bases.get_data_source(kb.id, "NOSUCHDS00")


def test_a_second_ingestion_while_one_runs_is_a_conflict_and_so_is_deleting(services: Services) -> None:
    kbs = services.knowledge_bases
    kb = kbs.create_knowledge_base(kb_body())
    ds = kbs.create_data_source(kb.id, ds_body("docs/"))
    first = kbs.start_ingestion_job(kb.id, ds.id, {})
    with pytest.raises(ConflictException, match=first.id):
        kbs.start_ingestion_job(kb.id, ds.id, {})
    with pytest.raises(ConflictException):
        kbs.delete_data_source(kb.id, ds.id)
    with pytest.raises(ConflictException):
        kbs.delete_knowledge_base(kb.id)
    with services.db.session() as session:
        assert session.scalar(select(func.count()).select_from(IngestionJob)) == 1


def test_ingestion_reports_corrupt_and_empty_documents_per_file_and_indexes_the_rest(services: Services) -> None:
    from tuneforge.knowledge.ingestion import IngestionRunner  # torch: only this test loads the embedder

    store, kbs = services.store, services.knowledge_bases
    store.write_bytes("s3://corpus/docs/a.txt", b"The capital of France is Paris.")
    store.write_bytes("s3://corpus/docs/b.md", ("Tokyo is the capital of Japan. " * 40).encode())
    store.write_bytes("s3://corpus/docs/bad.txt", b"\x89PNG\r\n\x1a\n\x00\xff")
    store.write_bytes("s3://corpus/docs/blank.txt", b"  \n")
    store.write_bytes("s3://corpus/docs/a.txt.metadata.json", b'{"metadataAttributes": {}}')
    kb = kbs.create_knowledge_base(kb_body())
    ds = kbs.create_data_source(
        kb.id,
        ds_body(
            "docs/",
            {
                "chunkingStrategy": "FIXED_SIZE",
                "fixedSizeChunkingConfiguration": {"maxTokens": 50, "overlapPercentage": 10},
            },
        ),
    )
    job = kbs.start_ingestion_job(kb.id, ds.id, {})
    IngestionRunner(services, job.id, threads=1).run()

    done = kbs.get_ingestion_job(kb.id, ds.id, job.id)
    assert done.status == "COMPLETE", done.failure_reasons
    assert done.statistics["numberOfDocumentsScanned"] == 4
    assert done.statistics["numberOfMetadataDocumentsScanned"] == 1
    assert done.statistics["numberOfNewDocumentsIndexed"] == 2
    assert done.statistics["numberOfDocumentsFailed"] == 2
    assert done.failure_reasons == [
        "s3://corpus/docs/bad.txt: is not UTF-8 text (byte 0); tuneforge ingests plain-text documents",
        "s3://corpus/docs/blank.txt: is empty",
    ]
    with services.db.session() as session:
        per_uri = dict(
            session.execute(select(KnowledgeChunk.uri, func.count()).group_by(KnowledgeChunk.uri)).tuples().all()
        )
    assert per_uri["s3://corpus/docs/a.txt"] == 1
    assert per_uri["s3://corpus/docs/b.md"] > 4  # ~280 tokens in 50-token windows
    assert index_path(services.settings, kb.id, ds.id).is_file()

    kbs.delete_data_source(kb.id, ds.id)
    assert not index_path(services.settings, kb.id, ds.id).exists()
    with services.db.session() as session:
        assert session.scalar(select(func.count()).select_from(KnowledgeChunk)) == 0


def test_an_ingestion_whose_worker_died_ends_failed_and_frees_the_data_source(services: Services) -> None:
    kbs = services.knowledge_bases
    kb = kbs.create_knowledge_base(kb_body())
    ds = kbs.create_data_source(kb.id, ds_body("docs/"))
    job = kbs.start_ingestion_job(kb.id, ds.id, {})
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with services.db.session() as session:
        row = session.get(IngestionJob, job.id)
        assert row is not None
        row.status, row.phase, row.worker_host, row.worker_pid = (
            "IN_PROGRESS",
            "running",
            socket.gethostname(),
            gone.pid,
        )
    Supervisor(services).recover()
    ended = kbs.get_ingestion_job(kb.id, ds.id, job.id)
    assert ended.status == "FAILED"
    assert ended.failure_reasons == [
        "Job interrupted: the worker process ended unexpectedly. Start the job again to retry."
    ]
    assert kbs.start_ingestion_job(kb.id, ds.id, {}).status == "STARTING"


def rag_request(kb_id: str, metrics: tuple[str, ...] = ("Builtin.Accuracy",), **rag: Any) -> dict[str, Any]:
    request = body(task="QuestionAndAnswer", metrics=metrics)
    generate = {
        "type": "KNOWLEDGE_BASE",
        "knowledgeBaseConfiguration": {"knowledgeBaseId": kb_id, "modelArn": BASE_MODEL},
    }
    config = rag or {"knowledgeBaseConfig": {"retrieveAndGenerateConfig": generate}}
    return {**request, "applicationType": "RagEvaluation", "inferenceConfig": {"ragConfigs": [config]}}


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"metrics": ("Builtin.Faithfulness",)}, ValidationException, "needs a judge model"),
        ({"metrics": ("Builtin.Robustness",)}, ValidationException, "not supported for RagEvaluation"),
        (
            {"knowledgeBaseConfig": {"retrieveConfig": {"knowledgeBaseId": "X"}}},
            ValidationException,
            "only knowledgeBaseConfig.retrieveAndGenerateConfig is supported",
        ),
        ({"kb": "NOSUCHKB00"}, ResourceNotFoundException, "Knowledge base with id NOSUCHKB00 does not exist"),
    ],
)
def test_rag_evaluations_refuse_judge_metrics_retrieve_only_configs_and_unknown_knowledge_bases(
    services: Services, change: dict[str, Any], error: type[Exception], message: str
) -> None:
    write_dataset(services)
    kb = services.knowledge_bases.create_knowledge_base(kb_body())
    metrics = change.pop("metrics", ("Builtin.Accuracy",))
    kb_id = change.pop("kb", kb.id)
    with pytest.raises(error, match=message):
        create(services, rag_request(kb_id, metrics, **change))
    assert count_jobs(services) == 0
    assert create(services, rag_request(kb.id)).models[0]["rag"]["knowledgeBaseId"] == kb.id
