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
from tuneforge.demo import free_port
from tuneforge.services import Services
from tuneforge.settings import Settings

pytestmark = pytest.mark.e2e


def events(server: Server, job_arn: str) -> list[dict[str, Any]]:
    from urllib.parse import quote

    response = httpx.get(f"{server.url}/model-customization-jobs/{quote(job_arn, safe='')}/events", timeout=10)
    response.raise_for_status()
    found: list[dict[str, Any]] = response.json()["events"]
    return found


def start_job(server: Server, tmp_path: Path, name: str, hyperparameters: dict[str, str], records: int = 400) -> str:
    """A fine-tuning job of forge-small on ``records`` demo tickets (batch 8: records / 8 steps an epoch).

    400 records where the worker must outlast a server restart; fewer where the test only needs a
    few steps past its kill point, since every step after a resume is CI time.
    """
    train, _ = make_classification_task(n_train=records, n_test=1, seed=3)
    write_jsonl(tmp_path / f"{name}.jsonl", train)
    services = Services.create(server.settings)
    services.store.upload_file(tmp_path / f"{name}.jsonl", f"s3://recovery/{name}.jsonl")
    services.close()
    arn: str = server.bedrock().create_model_customization_job(
        jobName=name,
        customModelName=f"m-{name}",
        roleArn=ROLE,
        baseModelIdentifier=BASE_MODEL,
        trainingDataConfig={"s3Uri": f"s3://recovery/{name}.jsonl"},
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
        arn = start_job(server, tmp_path, "resume-me", {"epochCount": "2", "checkpointEverySteps": "2"}, records=128)
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


def test_a_corrupt_latest_checkpoint_is_skipped_and_the_job_log_says_so(tmp_path: Path) -> None:
    from tuneforge.recipes.checkpoints import CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE

    server = make_server(tmp_path / "data")
    server.start()
    try:
        arn = start_job(server, tmp_path, "corrupt", {"epochCount": "1", "checkpointEverySteps": "2"}, records=128)
        kill_server_and_worker_mid_training(server, arn, min_step=4)
        checkpoints = server.settings.data_dir / "jobs" / arn.rsplit("/", 1)[-1] / "checkpoints"
        assert (checkpoints / PREVIOUS_CHECKPOINT_FILE).exists()
        (checkpoints / CHECKPOINT_FILE).write_bytes(b"\x80\x04 damaged on disk")
        server.start()
        job = wait_for_status(server.bedrock(), arn, ("Completed", "Failed", "Stopped"))
        assert job["status"] == "Completed", job.get("failureMessage")
        logs = [e["data"]["message"] for e in events(server, arn) if e["kind"] == "log"]
        assert any(m.startswith(f"checkpoint {CHECKPOINT_FILE} is unusable (") for m in logs), logs
        assert any(m.startswith(f"fell back to the previous checkpoint {PREVIOUS_CHECKPOINT_FILE}") for m in logs)
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
        job_id = arn.rsplit("/", 1)[-1]
        assert not (server.settings.data_dir / "jobs" / job_id).exists(), "a failed job's scratch files stay"
        assert not (server.settings.models_dir / "custom" / job_id).exists()
    finally:
        server.stop()


def live_workers(job_ids: set[str]) -> dict[int, str]:
    """pid -> job id of every running ``tuneforge.jobs.worker`` process for ``job_ids`` on this host."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").split()  # forked ones: one string
        except OSError:
            continue
        if len(args) >= 2 and args[-2] == b"tuneforge.jobs.worker" and args[-1].decode() in job_ids:
            found[int(entry.name)] = args[-1].decode()
    return found


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="counts worker processes through /proc")
def test_worker_left_by_a_killed_server_is_adopted_within_the_concurrency_limit(tmp_path: Path) -> None:
    """kill -9 of the server alone: its worker keeps training. The restarted server adopts it and
    starts no second worker beside it (WORKER_CONCURRENCY=1) until it is done."""
    server = Server(Settings(data_dir=tmp_path / "data", port=free_port(), worker_concurrency=1, worker_threads=1))
    server.start()
    try:
        first = start_job(server, tmp_path, "orphan", {"epochCount": "1", "checkpointEverySteps": "0"})
        second = start_job(server, tmp_path, "queued-behind", {"epochCount": "1", "batchSize": "32"}, records=96)
        ids = {first.rsplit("/", 1)[-1], second.rsplit("/", 1)[-1]}
        deadline = time.monotonic() + 120
        while not any(e["kind"] == "progress" for e in events(server, first)):
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.1)
        (orphan_pid,) = live_workers(ids)
        server.kill()
        server.start()

        most_at_once = 0
        bedrock = server.bedrock()
        deadline = time.monotonic() + 300
        while True:
            most_at_once = max(most_at_once, len(live_workers(ids)))
            statuses = [bedrock.get_model_customization_job(jobIdentifier=arn)["status"] for arn in (first, second)]
            if all(status in ("Completed", "Failed", "Stopped") for status in statuses):
                break
            assert time.monotonic() < deadline, statuses
            time.sleep(0.1)
        assert most_at_once == 1
        assert statuses == ["Completed", "Completed"]
        history = events(server, first)
        assert any(
            f"worker (pid {orphan_pid}) is still running and was adopted" in (e["data"].get("message") or "")
            for e in history
        )
        assert not any("resuming" in (e["data"].get("message") or "") for e in history)
    finally:
        server.stop()
