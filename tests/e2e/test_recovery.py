"""A killed worker and a killed server never leave a job InProgress."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import BASE_MODEL, HANG_GUARD_S, ROLE, Server, make_server, wait_for_status
from tuneforge.data.tasks import make_classification_task, write_jsonl
from tuneforge.db.tables import Job
from tuneforge.services import Services

pytestmark = pytest.mark.e2e


def events(server: Server, job_arn: str) -> list[dict[str, Any]]:
    from urllib.parse import quote

    response = httpx.get(f"{server.url}/model-customization-jobs/{quote(job_arn, safe='')}/events", timeout=10)
    response.raise_for_status()
    found: list[dict[str, Any]] = response.json()["events"]
    return found


def start_job(server: Server, tmp_path: Path, name: str, hyperparameters: dict[str, str]) -> str:
    train, _ = make_classification_task(n_train=400, n_test=1, seed=3)
    write_jsonl(tmp_path / "train.jsonl", train)
    services = Services.create(server.settings)
    services.store.upload_file(tmp_path / "train.jsonl", "s3://recovery/train.jsonl")
    services.close()
    arn: str = server.bedrock().create_model_customization_job(
        jobName=name,
        customModelName=f"m-{name}",
        roleArn=ROLE,
        baseModelIdentifier=BASE_MODEL,
        trainingDataConfig={"s3Uri": "s3://recovery/train.jsonl"},
        outputDataConfig={"s3Uri": f"s3://recovery/{name}/"},
        hyperParameters=hyperparameters,
    )["jobArn"]
    return arn


def kill_server_and_worker_mid_training(server: Server, arn: str, min_step: int) -> int:
    """SIGKILL the server, then the job's worker, once training has reached ``min_step``."""
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        steps = [e["data"]["step"] for e in events(server, arn) if e["kind"] == "progress"]
        if steps and max(steps) >= min_step:
            break
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.1)
    services = Services.create(server.settings)
    with services.db.session() as session:
        job = session.get(Job, arn.rsplit("/", 1)[-1])
        assert job is not None and job.worker_pid is not None
        pid = job.worker_pid
    services.close()
    server.kill()
    os.kill(pid, signal.SIGKILL)
    return max(steps)


def test_killed_worker_with_checkpoint_is_resumed_to_completed(tmp_path: Path) -> None:
    server = make_server(tmp_path / "data")
    server.start()
    try:
        arn = start_job(server, tmp_path, "resume-me", {"epochCount": "2", "checkpointEverySteps": "2"})
        killed_at = kill_server_and_worker_mid_training(server, arn, min_step=4)
        server.start()
        job = wait_for_status(server.bedrock(), arn, ("Completed", "Failed", "Stopped"))
        assert job["status"] == "Completed", job.get("failureMessage")
        history = events(server, arn)
        messages = [e["data"].get("message") or "" for e in history if e["kind"] == "status"]
        assert any("resuming from the last checkpoint" in m for m in messages), messages
        resume_index = next(i for i, e in enumerate(history) if "resuming" in (e["data"].get("message") or ""))
        steps_after = [e["data"]["step"] for e in history[resume_index:] if e["kind"] == "progress"]
        assert steps_after and min(steps_after) > 1 and min(steps_after) <= killed_at + 2
    finally:
        server.stop()


def test_killed_worker_without_checkpoint_fails_with_a_clear_message(tmp_path: Path) -> None:
    server = make_server(tmp_path / "data")
    server.start()
    try:
        arn = start_job(server, tmp_path, "fail-me", {"epochCount": "5", "checkpointEverySteps": "0"})
        kill_server_and_worker_mid_training(server, arn, min_step=1)
        server.start()
        job = wait_for_status(server.bedrock(), arn, ("Completed", "Failed", "Stopped"))
        assert job["status"] == "Failed"
        assert job["failureMessage"].startswith("Job interrupted: the worker process ended unexpectedly")
        assert "no checkpoint to resume from" in job["failureMessage"]
        assert job["statusDetails"]["trainingDetails"]["status"] == "Failed"
    finally:
        server.stop()
