"""Two real ``tuneforge serve`` replicas on one database and one object root.

Replica A starts alone and takes a provisioned throughput and a long job; B joins. Jobs created
through both are each claimed once; the throughput answers through B (forwarded to A, streaming
too) and is metered once; A is killed outright: B adopts A's running worker (which it then stops,
as the job's new owner), takes the throughput over and serves it, and finishes A's other jobs.

The database is a real PostgreSQL (``replica_db_url``), as in a deployment of several replicas; the unit
tests of claims and leases (tests/unit/test_replicas.py) run on SQLite.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from tests.e2e.conftest import ROLE, STUDENT_MODEL, Server, make_server, wait_for_status, wait_until
from tests.e2e.test_serving_recovery import converse_when_ready
from tests.postgres import TEMPLATE, PostgresServer
from tuneforge.data.tasks import make_classification_task, write_jsonl
from tuneforge.db.tables import EngineLease, Job, JobEvent, UsageSegment
from tuneforge.storage import ObjectStore

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": [{"text": "hi"}]}]
LEASE_S = 3.0


@pytest.fixture(scope="module")
def replica_db_url(postgres_server: PostgresServer) -> str:
    """A database of its own on the session's PostgreSQL, already at the schema's head."""
    return postgres_server.create_database(template=TEMPLATE)


@dataclass
class Pair:
    a: Server
    b: Server
    db_url: str
    throughput: str
    long_job: str


def replica(root: Path, db_url: str, objects: Path) -> Server:
    return make_server(
        root,
        database_url=db_url,
        object_root=objects,
        replica_lease_s=LEASE_S,
        engine_threads=1,
        worker_concurrency=2,
    )


def create_job(server: Server, name: str, uri: str, epochs: int) -> str:
    arn: str = server.bedrock().create_model_customization_job(
        jobName=name,
        customModelName=f"m-{name}",
        roleArn=ROLE,
        baseModelIdentifier=STUDENT_MODEL,
        trainingDataConfig={"s3Uri": uri},
        outputDataConfig={"s3Uri": f"s3://replicas/out/{name}/"},
        hyperParameters={"epochCount": str(epochs), "batchSize": "8"},
    )["jobArn"]
    return arn


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, replica_db_url: str) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("replicas")
    objects = root / "objects"
    a = replica(root / "a", replica_db_url, objects)
    b = replica(root / "b", replica_db_url, objects)
    train, _ = make_classification_task(n_train=64, n_test=1, seed=5)
    write_jsonl(root / "train.jsonl", train)
    ObjectStore.from_settings(a.settings).upload_file(root / "train.jsonl", "s3://replicas/train.jsonl")
    a.start()
    try:
        throughput = a.bedrock().create_provisioned_model_throughput(
            provisionedModelName="shared", modelId=STUDENT_MODEL, modelUnits=1
        )["provisionedModelArn"]
        long_job = create_job(a, "long", "s3://replicas/train.jsonl", epochs=100)
        wait_until(lambda: job_row(replica_db_url, long_job).phase, lambda p: p == "running", "A to claim the job")
        b.start()
        yield Pair(a, b, replica_db_url, throughput, long_job)
    finally:
        b.stop()
        a.stop()


def session(db_url: str) -> Session:
    return Session(create_engine(db_url))


def job_row(db_url: str, arn: str) -> Job:
    with session(db_url) as s:
        row = s.get(Job, arn.rsplit("/", 1)[-1])
        assert row is not None
        return row


def holder(db_url: str, group: str) -> str | None:
    with session(db_url) as s:
        return s.scalar(select(EngineLease.replica_id).where(EngineLease.group == group))


def metered(db_url: str, provisioned_model_id: str) -> tuple[int, int]:
    """Invocations and output tokens the usage ledger holds for the throughput."""
    with session(db_url) as s:
        invocations, output = s.execute(
            select(
                func.coalesce(func.sum(UsageSegment.invocations), 0),
                func.coalesce(func.sum(UsageSegment.output_tokens), 0),
            ).where(UsageSegment.provisioned_model_id == provisioned_model_id)
        ).one()
        return int(invocations), int(output)


def job_events(db_url: str, arn: str) -> list[JobEvent]:
    with session(db_url) as s:
        return list(s.scalars(select(JobEvent).where(JobEvent.job_id == arn.rsplit("/", 1)[-1]).order_by(JobEvent.id)))


def stream_text(runtime: Any, model_id: str) -> tuple[str, int]:
    response = runtime.converse_stream(modelId=model_id, messages=MESSAGES, inferenceConfig={"maxTokens": 3})
    text, output_tokens = "", 0
    for event in response["stream"]:
        if "contentBlockDelta" in event:
            text += event["contentBlockDelta"]["delta"]["text"]
        if "metadata" in event:
            output_tokens = event["metadata"]["usage"]["outputTokens"]
    return text, output_tokens


def test_two_replicas_claim_jobs_once_forward_inference_and_take_over_a_killed_one(pair: Pair) -> None:
    a, b, db = pair.a, pair.b, pair.db_url
    pt_id = pair.throughput.rsplit("/", 1)[-1]
    group = f"pt:{pt_id}"
    short = [
        create_job(server, f"short-{i}", "s3://replicas/train.jsonl", epochs=1) for i, server in enumerate([a, b, a, b])
    ]

    # Served by A (it held the throughput before B started), answered through B: forwarded, streaming kept.
    a_id = holder(db, group)
    assert a_id is not None
    runtime_b = b.bedrock_runtime()
    answers = [converse_when_ready(runtime_b, pair.throughput)["usage"]["outputTokens"]]
    text, streamed_tokens = stream_text(runtime_b, pair.throughput)
    assert streamed_tokens >= 1 and text
    answers.append(streamed_tokens)
    sdk = openai.OpenAI(base_url=f"{b.url}/v1", api_key="unused", max_retries=0)
    chunks = list(
        sdk.chat.completions.create(
            model="shared",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens >= 1
    answers.append(usage.completion_tokens)
    answers.append(
        a.bedrock_runtime().converse(modelId=pair.throughput, messages=MESSAGES, inferenceConfig={"maxTokens": 2})[
            "usage"
        ]["outputTokens"]
    )
    assert holder(db, group) == a_id
    wait_until(lambda: metered(db, pt_id), lambda got: got[0] >= len(answers), "A to meter the requests")

    # A dies outright while the long job trains: B adopts its worker and, as the owner now, stops it.
    wait_until(
        lambda: [e for e in job_events(db, pair.long_job) if e.kind == "progress"],
        bool,
        "the long job to train",
    )
    assert job_row(db, pair.long_job).owner_replica == a_id
    a.kill()
    b_id = wait_until(
        lambda: job_row(db, pair.long_job).owner_replica, lambda o: o not in (None, a_id), "B to take the job over"
    )
    messages = wait_until(
        lambda: [str(e.data.get("message")) for e in job_events(db, pair.long_job) if e.kind == "log"],
        lambda got: any("was adopted" in m for m in got),
        "B to adopt the worker",
    )
    assert any(f"replica {a_id} is gone" in m for m in messages), messages
    b.bedrock().stop_model_customization_job(jobIdentifier=pair.long_job)
    assert wait_for_status(b.bedrock(), pair.long_job, ("Completed", "Failed", "Stopped"))["status"] == "Stopped"

    # B takes the throughput over, starts its engine and serves it; the meter counts every request once.
    answers.append(converse_when_ready(runtime_b, pair.throughput)["usage"]["outputTokens"])
    assert holder(db, group) == b_id
    statuses = {s["status"] for s in b.bedrock().list_provisioned_model_throughputs()["provisionedModelSummaries"]}
    assert statuses == {"InService"}

    # Every job was claimed exactly once: one attempt, no stage started twice, all completed.
    for arn in short:
        job = wait_for_status(b.bedrock(), arn, ("Completed", "Failed", "Stopped"))
        assert job["status"] == "Completed", job.get("failureMessage")
    for arn in [*short, pair.long_job]:
        row = job_row(db, arn)
        assert row.attempts == 1 and row.owner_replica in (a_id, b_id), (arn, row.attempts, row.owner_replica)
        started = [
            e.data["stage"] for e in job_events(db, arn) if e.kind == "stage" and e.data["status"] == "InProgress"
        ]
        assert len(started) == len(set(started)), (arn, started)
    b.stop()
    assert metered(db, pt_id) == (len(answers), sum(answers))
