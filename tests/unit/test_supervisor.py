"""Workers left by an earlier server: adopted when they are really ours and alive, recovered otherwise."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from tests.unit.test_jobs_service import request
from tuneforge.db.tables import Job, utcnow
from tuneforge.jobs.supervisor import Supervisor
from tuneforge.services import Services
from tuneforge.settings import Settings

pytestmark = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="workers are told apart via /proc")


@pytest.fixture
def services(fast_tmp: Path, db_url: str | None) -> Iterator[Services]:
    created = Services.create(Settings(data_dir=fast_tmp / "data", heartbeat_timeout_s=30, database_url=db_url))
    yield created
    created.close()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


def sleeper(processes: list[subprocess.Popen[bytes]], *argv: str) -> subprocess.Popen[bytes]:
    """A process that sleeps; with argv ``tuneforge.jobs.worker JOB`` its command line ends as a worker's does."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *argv])
    processes.append(process)
    cmdline = Path(f"/proc/{process.pid}/cmdline")
    deadline = time.monotonic() + 30
    while b"time.sleep(120)" not in cmdline.read_bytes():  # until its command line is the new one
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return process


def running_job(services: Services, pid: int, heartbeat_age_s: float = 0.0) -> str:
    """A job a previous server started on this host, as the database holds it after that server died."""
    job = services.jobs.create(request())
    with services.db.session() as session:
        row = session.get(Job, job.id)
        assert row is not None
        row.phase, row.worker_host, row.worker_pid, row.attempts = "running", socket.gethostname(), pid, 1
        row.heartbeat_at = utcnow() - timedelta(seconds=heartbeat_age_s)
    return job.id


def test_a_live_worker_of_the_job_is_adopted_and_counts_against_concurrency(
    services: Services, processes: list[subprocess.Popen[bytes]]
) -> None:
    worker = sleeper(processes, "tuneforge.jobs.worker", "placeholder")
    job_id = running_job(services, worker.pid)
    processes.remove(worker)
    worker.kill()
    worker.wait()
    worker = sleeper(processes, "tuneforge.jobs.worker", job_id)
    with services.db.session() as session:
        row = session.get(Job, job_id)
        assert row is not None
        row.worker_pid = worker.pid
    supervisor = Supervisor(services)
    supervisor.recover()
    assert supervisor.running_job_ids == [job_id]
    assert services.jobs.get(job_id).status == "InProgress"
    assert any("was adopted" in (event.data.get("message") or "") for event in services.jobs.events(job_id))

    services.jobs.stop(job_id)
    supervisor.tick()  # stop enforcement reaches the adopted worker: SIGTERM
    assert worker.wait(timeout=10) == -signal.SIGTERM
    supervisor.tick()  # and its end is seen
    assert supervisor.running_job_ids == []
    assert services.jobs.get(job_id).status == "Stopped"


def test_a_reused_pid_is_not_taken_for_the_worker(services: Services, processes: list[subprocess.Popen[bytes]]) -> None:
    stranger = sleeper(processes)
    job_id = running_job(services, stranger.pid)
    supervisor = Supervisor(services)
    supervisor.recover()
    assert supervisor.running_job_ids == []
    job = services.jobs.get(job_id)
    assert job.status == "Failed"
    assert "no checkpoint to resume from" in (job.failure_message or "")
    assert stranger.poll() is None, "a process that is not our worker must be left alone"


def test_a_hung_worker_is_killed_before_its_job_is_recovered(
    services: Services, processes: list[subprocess.Popen[bytes]]
) -> None:
    job_id = running_job(services, 0, heartbeat_age_s=120)
    hung = sleeper(processes, "tuneforge.jobs.worker", job_id)
    with services.db.session() as session:
        row = session.get(Job, job_id)
        assert row is not None
        row.worker_pid = hung.pid
    Supervisor(services).recover()
    assert hung.wait(timeout=10) == -signal.SIGKILL
    assert services.jobs.get(job_id).status == "Failed"
