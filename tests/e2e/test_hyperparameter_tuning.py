"""Automatic hyperparameter tuning, driven by boto3 against a real server.

Quality: on the demo classification task, a job that pins a bad learning rate learns nothing, and a
job that searches the learning rate ("auto") with two Optuna trials finds one at least 20 points
of held-out exact match better. The tuned job's trials are in its Get response (the ``tuning``
extension, read raw because botocore drops it), its events and ``tuning_trials.csv``. Stop during a
search ends the job Stopped; bad searches are refused at create time.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from botocore.exceptions import ClientError

from tests.e2e.conftest import HANG_GUARD_S, ROLE, Server, unique, wait_for_status
from tuneforge.data.tasks import make_classification_task
from tuneforge.jobs import layout
from tuneforge.storage import ObjectStore

pytestmark = pytest.mark.e2e

MODEL = "tuneforge.forge-micro-v1:0:512"
BAD_LEARNING_RATE = "1e-5"
"""Far too low for 125 steps: the baseline stays at the random-initialised base model's 0%."""
COMMON = {"trainingMethod": "full", "epochCount": "5", "seed": "7"}
"""forge-micro trained in full learns the task in 125 steps (measured: 88% held-out at lr 1e-3)."""


def create(bedrock: Any, data: dict[str, str], hyperparameters: dict[str, str]) -> str:
    name = unique("tune")
    arn: str = bedrock.create_model_customization_job(
        jobName=name,
        customModelName=f"m-{name}",
        roleArn=ROLE,
        baseModelIdentifier=MODEL,
        customizationType="FINE_TUNING",
        trainingDataConfig={"s3Uri": data["train"]},
        validationDataConfig={"validators": [{"s3Uri": data["validation"]}]},
        outputDataConfig={"s3Uri": f"s3://tests/tune-out/{name}/"},
        hyperParameters=hyperparameters,
    )["jobArn"]
    return arn


@pytest.fixture(scope="module")
def data(server: Server) -> dict[str, Any]:
    """200 training tickets (25 steps an epoch), 40 validation tickets, 60 held-out test tickets."""
    train, test = make_classification_task(n_train=200, n_test=100, seed=11)
    store = ObjectStore.from_settings(server.settings)
    uris = {"train": "s3://tests/tune/train.jsonl", "validation": "s3://tests/tune/validation.jsonl"}
    for name, records in (("train", train), ("validation", test[:40])):
        store.write_bytes(uris[name], "".join(json.dumps(record) + "\n" for record in records).encode())
    return {**uris, "test": test[40:]}


def accuracy(server: Server, model_arn: str, records: list[dict[str, str]]) -> float:
    from tuneforge.engine.generation import exact_match_accuracy
    from tuneforge.model.folders import load_for_inference
    from tuneforge.services import Services

    services = Services.create(server.settings)
    weights = Path(services.custom_models.get(model_arn).weights_path)
    services.close()
    model, tokenizer = load_for_inference(weights, server.settings.models_dir)
    return exact_match_accuracy(model, tokenizer, records)


def test_tuning_the_learning_rate_beats_a_bad_default_by_20_points(
    bedrock: Any, server: Server, data: dict[str, Any]
) -> None:
    baseline_arn = create(bedrock, data, {**COMMON, "learningRate": BAD_LEARNING_RATE})
    tuned_arn = create(bedrock, data, {**COMMON, "learningRate": "auto", "tuningTrials": "2"})
    baseline = wait_for_status(bedrock, baseline_arn, ("Completed", "Failed", "Stopped"))
    tuned = wait_for_status(bedrock, tuned_arn, ("Completed", "Failed", "Stopped"))
    assert baseline["status"] == "Completed", baseline.get("failureMessage")
    assert tuned["status"] == "Completed", tuned.get("failureMessage")
    assert tuned["hyperParameters"]["learningRate"] == "auto"
    assert tuned["hyperParameters"]["tuningTrials"] == "2"
    assert "tuning" not in tuned  # botocore drops the extension member

    raw = httpx.get(f"{server.url}/model-customization-jobs/{quote(tuned_arn, safe='')}", timeout=10).json()
    tuning = raw["tuning"]
    assert tuning["searchedHyperParameters"] == {"learningRate": "0.0001..0.01 (log)"}
    trials = tuning["trials"]
    assert [t["trialNumber"] for t in trials] == [0, 1]
    assert {t["state"] for t in trials} == {"complete"}  # the median pruner starts after two trials
    best = next(t for t in trials if t["trialNumber"] == tuning["bestTrialNumber"])
    assert best["state"] == "complete"
    assert best["validationLoss"] == min(t["validationLoss"] for t in trials if t["state"] == "complete")

    model = bedrock.get_custom_model(modelIdentifier=tuned["outputModelArn"])
    assert model["hyperParameters"]["learningRate"] == best["hyperParameters"]["learningRate"]

    events = httpx.get(f"{server.url}/model-customization-jobs/{quote(tuned_arn, safe='')}/events", timeout=10).json()
    trial_events = [e for e in events["events"] if e["kind"] == "trial"]
    assert [e["data"]["trialNumber"] for e in trial_events] == [0, 1]

    store = ObjectStore.from_settings(server.settings)
    job_id = tuned_arn.rsplit("/", 1)[-1]
    assert raw["outputArtifacts"]["tuningTrials"].endswith(layout.TUNING_TRIALS)
    rows = list(csv.DictReader(io.StringIO(store.read_bytes(raw["outputArtifacts"]["tuningTrials"]).decode())))
    assert [r["trial_number"] for r in rows] == ["0", "1"]
    assert [r["state"] for r in rows] == [t["state"] for t in trials]
    assert set(rows[0]) == {"trial_number", "params", "validation_loss", "state", "duration_seconds"}
    assert job_id in raw["outputArtifacts"]["tuningTrials"]

    before = accuracy(server, baseline["outputModelArn"], data["test"])
    after = accuracy(server, tuned["outputModelArn"], data["test"])
    assert after - before >= 0.20, (before, after, trials)


def test_stop_during_a_search_stops_the_trial_and_the_job(bedrock: Any, server: Server, data: dict[str, Any]) -> None:
    arn = create(bedrock, data, {**COMMON, "epochCount": "50", "learningRate": "auto", "tuningTrials": "20"})
    url = f"{server.url}/model-customization-jobs/{quote(arn, safe='')}"
    deadline = time.monotonic() + HANG_GUARD_S
    while not any(e["kind"] == "progress" for e in httpx.get(f"{url}/events", timeout=10).json()["events"]):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    bedrock.stop_model_customization_job(jobIdentifier=arn)
    job = wait_for_status(bedrock, arn, ("Stopped", "Completed", "Failed"))
    assert job["status"] == "Stopped"
    assert "outputModelArn" not in job
    trials = httpx.get(url, timeout=10).json()["tuning"]["trials"]
    assert [(t["trialNumber"], t["state"]) for t in trials] == [(0, "stopped")]


@pytest.mark.parametrize(
    ("hyperparameters", "message"),
    [
        ({"seed": "auto"}, "Hyperparameter seed cannot be searched"),
        ({"learningRate": "auto", "tuningTrials": "0"}, "Hyperparameter tuningTrials value 0 is out of range"),
        ({"batchSize": "64..8"}, "Hyperparameter batchSize search range '64..8' is invalid"),
    ],
)
def test_bad_searches_are_refused_at_create_time(
    bedrock: Any, data: dict[str, Any], hyperparameters: dict[str, str], message: str
) -> None:
    before = bedrock.list_model_customization_jobs(maxResults=100)["modelCustomizationJobSummaries"]
    with pytest.raises(ClientError) as exc:
        create(bedrock, data, hyperparameters)
    assert exc.value.response["Error"]["Code"] == "ValidationException"
    assert message in exc.value.response["Error"]["Message"]
    after = bedrock.list_model_customization_jobs(maxResults=100)["modelCustomizationJobSummaries"]
    assert len(after) == len(before)
