"""A server on PostgreSQL (``TUNEFORGE_DATABASE_URL``), driven by boto3: the schema set up with
``tuneforge db upgrade``, the control plane's create/get/list/paging/filters/errors, and one job
through a worker to completion, its custom model registered. One server and one short job for the
module (CI time); the same operations' SQLite coverage is in test_bedrock_control_plane.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.e2e.conftest import ROLE, STUDENT_MODEL, Server, cli, make_server, wait_for_status
from tests.postgres import PostgresServer
from tuneforge.data.tasks import make_classification_task
from tuneforge.db import migrate
from tuneforge.storage import ObjectStore

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pg_server(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = make_server(tmp_path_factory.mktemp("pg-server"), database_url=postgres_server.create_database())
    server.settings.ensure_dirs()
    upgraded = cli(server, "db", "upgrade")
    assert f"none -> {migrate.head()}" in upgraded.stdout
    server.start()
    yield server
    server.stop()


def job_request(name: str, training_uri: str, **overrides: Any) -> dict[str, Any]:
    return {
        "jobName": name,
        "customModelName": f"{name}-model",
        "roleArn": ROLE,
        "baseModelIdentifier": STUDENT_MODEL,
        "customizationType": "FINE_TUNING",
        "trainingDataConfig": {"s3Uri": training_uri},
        "outputDataConfig": {"s3Uri": f"s3://tests/out/{name}/"},
        **overrides,
    }


def test_control_plane_and_a_job_on_postgresql(pg_server: Server) -> None:
    bedrock = pg_server.bedrock()
    store = ObjectStore.from_settings(pg_server.settings)
    train, _ = make_classification_task(n_train=24, n_test=1, seed=7)
    store.write_bytes("s3://tests/pg/train.jsonl", "".join(json.dumps(record) + "\n" for record in train).encode())
    uri = "s3://tests/pg/train.jsonl"

    trained = bedrock.create_model_customization_job(
        **job_request("Pg-Trained", uri, hyperParameters={"epochCount": "1", "batchSize": "8"})
    )["jobArn"]
    queued = [bedrock.create_model_customization_job(**job_request(f"pg-page-{i}", uri))["jobArn"] for i in range(3)]
    for arn in queued:
        bedrock.stop_model_customization_job(jobIdentifier=arn)

    # nameContains is case-insensitive on PostgreSQL too (its LIKE is not)
    names = [
        summary["jobName"]
        for page in bedrock.get_paginator("list_model_customization_jobs").paginate(
            nameContains="PG-", sortOrder="Ascending", PaginationConfig={"PageSize": 1}
        )
        for summary in page["modelCustomizationJobSummaries"]
    ]
    assert names == ["Pg-Trained", "pg-page-0", "pg-page-1", "pg-page-2"]
    for arn in queued:
        wait_for_status(bedrock, arn, ("Stopped",))
    stopped = bedrock.list_model_customization_jobs(statusEquals="Stopped", sortOrder="Descending")
    assert [s["jobName"] for s in stopped["modelCustomizationJobSummaries"]] == ["pg-page-2", "pg-page-1", "pg-page-0"]

    with pytest.raises(ClientError) as duplicate:
        bedrock.create_model_customization_job(**job_request("pg-page-0", uri, customModelName="other"))
    assert duplicate.value.response["Error"]["Code"] == "ConflictException"
    with pytest.raises(ClientError) as missing:
        bedrock.get_model_customization_job(jobIdentifier="no-such-job")
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"
    with pytest.raises(ClientError) as bad_token:
        bedrock.list_model_customization_jobs(nextToken="not-a-token")
    assert bad_token.value.response["Error"]["Code"] == "ValidationException"

    job = wait_for_status(bedrock, trained, ("Completed", "Failed"))
    assert job["status"] == "Completed", job.get("failureMessage")
    model = bedrock.get_custom_model(modelIdentifier="Pg-Trained-model")
    assert model["jobArn"] == trained
    assert [m["modelName"] for m in bedrock.list_custom_models(nameContains="pg-TRAINED")["modelSummaries"]] == [
        "Pg-Trained-model"
    ]
