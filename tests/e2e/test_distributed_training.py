"""Data-parallel jobs through torchrun (dataParallelProcesses=2, gloo on loopback), and lost ranks.

One server for the module; forge-micro, a few steps a job. A rank is found by its command line
(``tuneforge.jobs.ranks <job id>``) and its RANK environment variable, and killed with SIGKILL.
"""

from __future__ import annotations

import csv
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ROLE, STUDENT_MODEL, Server, make_server, wait_for_status, wait_until
from tuneforge.data.tasks import make_classification_task, write_jsonl
from tuneforge.jobs import layout
from tuneforge.services import Services

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def dp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("dp")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    server = make_server(root / "data", worker_threads=2)
    server.start()
    train, _ = make_classification_task(n_train=48, n_test=1, seed=5)
    write_jsonl(root / "train.jsonl", train)
    services = Services.create(server.settings)
    services.store.upload_file(root / "train.jsonl", "s3://dp-jobs/train.jsonl")
    services.close()
    yield server
    server.stop()


def start_job(server: Server, name: str, hyperparameters: dict[str, str]) -> str:
    arn: str = server.bedrock().create_model_customization_job(
        jobName=name,
        customModelName=f"m-{name}",
        roleArn=ROLE,
        baseModelIdentifier=STUDENT_MODEL,
        trainingDataConfig={"s3Uri": "s3://dp-jobs/train.jsonl"},
        outputDataConfig={"s3Uri": f"s3://dp-jobs/{name}/"},
        hyperParameters={"dataParallelProcesses": "2", "batchSize": "8", **hyperparameters},
    )["jobArn"]
    return arn


def events(server: Server, arn: str) -> list[dict[str, Any]]:
    from urllib.parse import quote

    response = httpx.get(f"{server.url}/model-customization-jobs/{quote(arn, safe='')}/events", timeout=10)
    response.raise_for_status()
    found: list[dict[str, Any]] = response.json()["events"]
    return found


def log_messages(server: Server, arn: str) -> list[str]:
    return [e["data"]["message"] for e in events(server, arn) if e["kind"] == "log"]


def rank_pid(job_id: str, rank: int, restart: int) -> int | None:
    """The pid of ``rank`` of the job's ranks in torchrun's ``restart``-th start, if it runs."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            environ = dict(
                item.split(b"=", 1) for item in (entry / "environ").read_bytes().split(b"\0") if b"=" in item
            )
        except OSError:
            continue
        if b"tuneforge.jobs.ranks" not in command or job_id.encode() not in command:
            continue
        if (
            environ.get(b"RANK") == str(rank).encode()
            and environ.get(b"TORCHELASTIC_RESTART_COUNT") == str(restart).encode()
        ):
            return int(entry.name)
    return None


def rank_starts(history: list[dict[str, Any]]) -> list[int]:
    """Indices of the "data parallel on 2 processes" lines: one each time torchrun starts the ranks."""
    return [i for i, e in enumerate(history) if e["kind"] == "log" and "data parallel on 2" in e["data"]["message"]]


def kill_rank_after_checkpoint(server: Server, arn: str, restart: int) -> None:
    """SIGKILL rank 1 of torchrun's ``restart``-th start once that start has done two steps, each
    followed by a checkpoint (checkpointEverySteps 1)."""
    job_id = arn.rsplit("/", 1)[-1]

    def steps_of_this_start() -> int:
        history = events(server, arn)
        starts = rank_starts(history)
        if len(starts) <= restart:
            return 0
        return sum(1 for e in history[starts[restart] :] if e["kind"] == "progress")

    wait_until(steps_of_this_start, lambda n: n >= 2, f"two steps of start {restart} of the ranks")
    pid = wait_until(lambda: rank_pid(job_id, 1, restart), lambda p: p is not None, "rank 1's process")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)


def test_two_process_job_survives_a_lost_rank_and_writes_its_outputs_once(dp_server: Server) -> None:
    """2 ranks, 48 records, batch 8, 2 epochs = 12 steps; rank 1 is killed after a checkpoint, torchrun
    restarts both ranks from it, and the job completes with rank 0's outputs, written once."""
    arn = start_job(dp_server, "dp-two", {"epochCount": "2", "checkpointEverySteps": "1"})
    kill_rank_after_checkpoint(dp_server, arn, restart=0)
    job = wait_for_status(dp_server.bedrock(), arn, ("Completed", "Failed", "Stopped"))
    assert job["status"] == "Completed", job.get("failureMessage")
    messages = log_messages(dp_server, arn)
    assert any("data parallel on 2 processes: 8 records per optimizer step in all" in m for m in messages), messages
    resumed = [m for m in messages if m.startswith("resumed from checkpoint at step")]
    assert len(resumed) == 1 and int(resumed[0].split("step ")[1].split("/")[0]) >= 2, messages
    # Rank 0 alone reports: progress reaches the last step, and the metrics file has one row per step
    # (the steps after the checkpoint that the lost start had done are not repeated).
    steps = [e["data"]["step"] for e in events(dp_server, arn) if e["kind"] == "progress"]
    assert steps[-1] == 12
    job_id = arn.rsplit("/", 1)[-1]
    output = dp_server.settings.objects_dir / "dp-jobs" / "dp-two" / layout.job_folder(job_id)
    with (output / layout.TRAINING_METRICS).open(newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    assert [int(row[0]) for row in rows] == list(range(12))
    # The job's loss is the last epoch's mean step loss, each step's loss summed over both ranks' shares.
    model = dp_server.bedrock().get_custom_model(modelIdentifier=job["outputModelArn"])
    last_epoch = [float(row[2]) for row in rows if row[1] == "1"]
    assert model["trainingMetrics"]["trainingLoss"] == pytest.approx(sum(last_epoch) / len(last_epoch), abs=1e-5)

    from tuneforge.model.folders import load_for_inference

    folder = dp_server.settings.models_dir / "custom" / job_id
    loaded, tokenizer = load_for_inference(folder, dp_server.settings.models_dir)
    ids = tokenizer("hello", return_tensors="pt")["input_ids"]
    assert loaded.generate(ids, max_new_tokens=2, do_sample=False).shape[1] == ids.shape[1] + 2


def test_a_rank_lost_past_the_restart_budget_fails_the_job_naming_it(dp_server: Server) -> None:
    """TUNEFORGE_DATA_PARALLEL_MAX_RESTARTS is 1: the second loss ends the job, with the rank and its exit."""
    arn = start_job(dp_server, "dp-lost-twice", {"epochCount": "3", "checkpointEverySteps": "1"})
    kill_rank_after_checkpoint(dp_server, arn, restart=0)
    kill_rank_after_checkpoint(dp_server, arn, restart=1)
    job = wait_for_status(dp_server.bedrock(), arn, ("Completed", "Failed", "Stopped"))
    assert job["status"] == "Failed"
    assert "lost rank 1 of 2: it was killed by signal 9" in job["failureMessage"], job["failureMessage"]
    assert "TUNEFORGE_DATA_PARALLEL_MAX_RESTARTS" in job["failureMessage"]


def test_a_sharded_full_training_job_saves_the_gathered_weights_and_they_generate(dp_server: Server) -> None:
    """dataParallelStrategy=fsdp, every weight trained, 6 steps with a (collective) checkpoint every 2:
    the job completes, and the model saved from the weights gathered out of the shards differs from the
    base and generates. (A sharded stop and resume is tested in tests/unit/test_distributed.py; a lost
    rank's restart path is the same as DDP's, tested above.)"""
    hyperparameters = {"dataParallelStrategy": "fsdp", "trainingMethod": "full", "checkpointEverySteps": "2"}
    arn = start_job(dp_server, "dp-fsdp", {"epochCount": "1", **hyperparameters})
    job = wait_for_status(dp_server.bedrock(), arn, ("Completed", "Failed", "Stopped"))
    assert job["status"] == "Completed", job.get("failureMessage")
    messages = log_messages(dp_server, arn)
    assert any("weights and optimizer state sharded (FSDP)" in m for m in messages), messages
    steps = [e["data"]["step"] for e in events(dp_server, arn) if e["kind"] == "progress"]
    assert steps[-1] == 6

    from tuneforge.model.builtin import ensure_builtin
    from tuneforge.model.folders import load_for_inference
    from tuneforge.model.loading import load_model_and_tokenizer

    job_id = arn.rsplit("/", 1)[-1]
    models_dir = dp_server.settings.models_dir
    loaded, tokenizer = load_for_inference(models_dir / "custom" / job_id, models_dir)
    base, _ = load_model_and_tokenizer(ensure_builtin("forge-micro", models_dir))  # STUDENT_MODEL
    trained, original = dict(loaded.named_parameters()), dict(base.named_parameters())
    moved = max(float((trained[n] - original[n]).abs().max()) for n in original)
    assert moved > 1e-4, "the saved weights are the base's: the shards were not gathered back"
    ids = tokenizer("hello", return_tensors="pt")["input_ids"]
    assert loaded.generate(ids, max_new_tokens=2, do_sample=False).shape[1] == ids.shape[1] + 2
