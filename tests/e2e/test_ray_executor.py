"""TUNEFORGE_EXECUTOR=ray: a job's worker runs in a placement group on a local Ray head (127.0.0.1 only).

Ray resolves "127.0.0.1" to the machine's outward address on Linux unless it is told that the
cluster is local (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``); with it, the head, its raylet and the
server's driver all bind and talk on loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ROLE, STUDENT_MODEL, Server, make_server, wait_for_status, wait_until
from tuneforge.data.tasks import make_classification_task, write_jsonl
from tuneforge.demo import free_port
from tuneforge.services import Services

pytestmark = pytest.mark.e2e

LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``ray start --head --block`` on 127.0.0.1 with 2 CPUs; its address. Stopped by its pid at the end."""
    root = tmp_path_factory.mktemp("ray")
    # Ray's Unix sockets live under --temp-dir, and AF_UNIX paths stop at 107 bytes: pytest's folders
    # (with xdist's popen-gwN) are too deep for them.
    short_tmp = tempfile.mkdtemp(prefix="tf-ray-")
    port = free_port()
    log = root / "head.log"
    with log.open("wb") as handle:
        head = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("ray")),
                "start",
                "--head",
                "--block",
                "--node-ip-address=127.0.0.1",
                f"--port={port}",
                "--num-cpus=2",
                "--num-gpus=0",
                "--include-dashboard=false",
                "--disable-usage-stats",
                f"--temp-dir={short_tmp}",
            ],
            env={**os.environ, **LOOPBACK_ONLY},
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(
            lambda: (head.poll(), log.read_text(errors="replace")),
            lambda state: state[0] is not None or "Ray runtime started" in state[1],
            "the Ray head to start",
        )
        assert head.poll() is None, log.read_text()
        assert "Local node IP: 127.0.0.1" in log.read_text()
        yield f"127.0.0.1:{port}"
    finally:
        # --block: the head's own process stops the raylet and GCS it started when it gets SIGTERM. Its
        # graceful stop can take half a minute on 2 busy cores; past a few seconds the session is killed.
        os.killpg(head.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=60)
        shutil.rmtree(short_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_server(ray_head: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("ray-server")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in LOOPBACK_ONLY.items():
            patch.setenv(name, value)
        server = make_server(root / "data", executor="ray", ray_address=ray_head)
        server.start()
    train, _ = make_classification_task(n_train=32, n_test=1, seed=11)
    write_jsonl(root / "train.jsonl", train)
    services = Services.create(server.settings)
    services.store.upload_file(root / "train.jsonl", "s3://ray-jobs/train.jsonl")
    services.close()
    yield server
    server.stop()


PLACEMENT_GROUP_STATES = """
import json, sys, time
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
name = sys.argv[2]
deadline = time.monotonic() + float(sys.argv[3])
while True:
    states = [g["state"] for g in ray.util.placement_group_table().values() if g["name"] == name]
    removed = bool(states) and all(state == "REMOVED" for state in states)
    # The head's free-resource view trails the group's state by a heartbeat: wait for both.
    free = ray.available_resources().get("CPU", 0.0) >= ray.cluster_resources().get("CPU", 0.0)
    if (removed and free) or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(json.dumps({"states": states, "available_cpus": ray.available_resources().get("CPU", 0.0)}))
"""


def placement_group_after_worker(ray_head: str, arn: str) -> dict[str, object]:
    """The job's placement group states and the head's free CPUs, seen by a separate Ray driver.

    The supervisor removes the group on the poll that sees the worker end, which may be a tick after
    the job's status changes, and Ray's view of free CPUs a heartbeat after that: the driver waits up to
    60 s for REMOVED and every CPU free, then reports what it saw.
    """
    name = f"tuneforge-job-{arn.rsplit('/', 1)[-1]}"
    answer = subprocess.run(
        [sys.executable, "-c", PLACEMENT_GROUP_STATES, ray_head, name, "60"],
        env={**os.environ, **LOOPBACK_ONLY},
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    result: dict[str, object] = json.loads(answer.stdout.strip().splitlines()[-1])
    return result


def test_a_fine_tuning_job_runs_to_completed_on_the_ray_cluster(ray_head: str, ray_server: Server) -> None:
    arn: str = ray_server.bedrock().create_model_customization_job(
        jobName="on-ray",
        customModelName="m-on-ray",
        roleArn=ROLE,
        baseModelIdentifier=STUDENT_MODEL,
        trainingDataConfig={"s3Uri": "s3://ray-jobs/train.jsonl"},
        outputDataConfig={"s3Uri": "s3://ray-jobs/on-ray/"},
        hyperParameters={"epochCount": "1", "batchSize": "8"},
    )["jobArn"]
    job = wait_for_status(ray_server.bedrock(), arn, ("Completed", "Failed", "Stopped"))
    assert job["status"] == "Completed", job.get("failureMessage")
    job_log = (ray_server.settings.logs_dir / f"job-{arn.rsplit('/', 1)[-1]}.log").read_text()
    # The actor that started the worker ran in the job's placement group: one CPU for one process.
    assert "ray executor: worker on node" in job_log and "(CPU 1)" in job_log, job_log[:2000]
    model = ray_server.bedrock().get_custom_model(modelIdentifier=job["outputModelArn"])
    assert model["trainingMetrics"]["trainingLoss"] > 0
    # The job's placement group is released once its worker has ended: its CPU is free again.
    released = placement_group_after_worker(ray_head, arn)
    assert released["states"] == ["REMOVED"] and released["available_cpus"] == 2.0, released


def test_a_job_on_the_ray_cluster_stops(ray_head: str, ray_server: Server) -> None:
    arn: str = ray_server.bedrock().create_model_customization_job(
        jobName="stop-on-ray",
        customModelName="m-stop-on-ray",
        roleArn=ROLE,
        baseModelIdentifier=STUDENT_MODEL,
        trainingDataConfig={"s3Uri": "s3://ray-jobs/train.jsonl"},
        outputDataConfig={"s3Uri": "s3://ray-jobs/stop-on-ray/"},
        hyperParameters={"epochCount": "100", "batchSize": "8"},
    )["jobArn"]
    wait_until(
        lambda: ray_server.bedrock().get_model_customization_job(jobIdentifier=arn),
        lambda job: job.get("statusDetails", {}).get("trainingDetails", {}).get("status") == "InProgress",
        "training to start on the Ray node",
    )
    ray_server.bedrock().stop_model_customization_job(jobIdentifier=arn)
    job = wait_for_status(ray_server.bedrock(), arn, ("Completed", "Failed", "Stopped"))
    assert job["status"] == "Stopped", job.get("failureMessage")
    released = placement_group_after_worker(ray_head, arn)
    assert released["states"] == ["REMOVED"] and released["available_cpus"] == 2.0, released
