"""Runs queued jobs in worker processes, enforces stops, and recovers interrupted jobs.

The queue is durable: it is the set of jobs in phase ``queued`` in the database. One supervisor
thread per server claims jobs (oldest first) up to ``worker_concurrency`` and starts one
``python -m tuneforge.jobs.worker JOB_ID`` process for each.

Recovery policy (also in docs/architecture.md): when a worker dies without writing a final
status (SIGKILL, OOM, a crash, or the server itself killed), the job is **resumed** from its last
checkpoint if it has one and has been attempted fewer than ``MAX_ATTEMPTS`` times; otherwise it is
**failed** with a message that says what happened. No job stays ``InProgress`` after its worker is
gone: the supervisor checks on start and then every tick, by pid on this host and by heartbeat
age anywhere.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, select, update

from tuneforge.db.tables import Job, JobEvent, utcnow
from tuneforge.jobs.service import mark_stages
from tuneforge.services import Services
from tuneforge.settings import child_environment

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
STOP_GRACE_S = 20.0
TICK_S = 0.25


@dataclass
class _Running:
    job_id: str
    process: subprocess.Popen[bytes]
    stop_sent_at: float | None = None


def checkpoint_dir(services: Services, job_id: str) -> Path:
    return services.settings.data_dir / "jobs" / job_id / "checkpoints"


def has_checkpoint(services: Services, job_id: str) -> bool:
    folder = checkpoint_dir(services, job_id)
    return folder.is_dir() and any(folder.iterdir())


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Supervisor:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.host = socket.gethostname()
        self._running: dict[str, _Running] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="tuneforge-supervisor", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop claiming work. Running workers are left to finish; they write their own status."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("supervisor tick failed")
            self._stop.wait(TICK_S)

    def tick(self) -> None:
        self._reap()
        self._enforce_stops()
        self.recover()
        self._claim()

    # -- recovery ----------------------------------------------------------------------------

    def recover(self) -> None:
        """Handle running jobs whose worker is gone (dead pid here, or silent heartbeat)."""
        timeout = timedelta(seconds=self.services.settings.heartbeat_timeout_s)
        now = utcnow()
        with self.services.db.session() as session:
            rows = session.scalars(
                select(Job).where(Job.phase == "running", Job.status.in_(("InProgress", "Stopping")))
            ).all()
            orphans = []
            for job in rows:
                if job.id in self._running:
                    continue
                dead_here = job.worker_host == self.host and (job.worker_pid is None or not pid_alive(job.worker_pid))
                silent = job.heartbeat_at is not None and now - job.heartbeat_at > timeout
                never_started = job.heartbeat_at is None and now - job.updated_at > timeout
                if dead_here or silent or never_started:
                    orphans.append(job.id)
        for job_id in orphans:
            self._handle_lost_worker(job_id, "the worker process ended unexpectedly")

    def _handle_lost_worker(self, job_id: str, what: str) -> None:
        with self.services.db.session() as session:
            job = session.get(Job, job_id)
            if job is None or job.status not in ("InProgress", "Stopping"):
                return
            now = utcnow()
            job.updated_at = now
            job.worker_pid = None
            if job.status == "Stopping":
                job.status, job.phase, job.ended_at = "Stopped", "done", now
                mark_stages(job, "Stopped", only_unfinished=True)
                message = f"{what}; the job was stopping and is now Stopped"
            elif has_checkpoint(self.services, job_id) and job.attempts < MAX_ATTEMPTS:
                job.phase = "queued"
                message = f"{what}; resuming from the last checkpoint (attempt {job.attempts + 1})"
            else:
                job.status, job.phase, job.ended_at = "Failed", "done", now
                reason = (
                    "no checkpoint to resume from"
                    if job.attempts < MAX_ATTEMPTS
                    else f"gave up after {job.attempts} attempts"
                )
                job.failure_message = (
                    f"Job interrupted: {what} before the job finished ({reason}). Create the job again to retry."
                )
                mark_stages(job, "Failed", only_unfinished=True)
                message = job.failure_message
            session.add(JobEvent(job_id=job_id, kind="status", data={"status": job.status, "message": message}))
        log.warning("job %s: %s", job_id, message)

    # -- workers -----------------------------------------------------------------------------

    def _claim(self) -> None:
        limit = self.services.settings.worker_concurrency
        while len(self._running) < limit:
            with self.services.db.session() as session:
                job_id = session.scalar(
                    select(Job.id)
                    .where(Job.phase == "queued", Job.status == "InProgress")
                    .order_by(Job.created_at)
                    .limit(1)
                )
                if job_id is None:
                    return
                result = session.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.phase == "queued")
                    .values(
                        phase="running",
                        worker_host=self.host,
                        worker_pid=None,
                        heartbeat_at=None,
                        attempts=Job.attempts + 1,
                        updated_at=utcnow(),
                    )
                )
                claimed = cast(CursorResult[Any], result).rowcount
            if claimed:
                self._spawn(job_id)

    def _spawn(self, job_id: str) -> None:
        settings = self.services.settings
        log_path = settings.logs_dir / f"job-{job_id}.log"
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "tuneforge.jobs.worker", job_id],
                env=child_environment(settings),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        with self.services.db.session() as session:
            session.execute(update(Job).where(Job.id == job_id).values(worker_pid=process.pid))
        self._running[job_id] = _Running(job_id, process)
        log.info("job %s: started worker pid %d", job_id, process.pid)

    def _reap(self) -> None:
        for job_id, running in list(self._running.items()):
            code = running.process.poll()
            if code is None:
                continue
            del self._running[job_id]
            with self.services.db.session() as session:
                job = session.get(Job, job_id)
                unfinished = job is not None and job.status in ("InProgress", "Stopping") and job.phase == "running"
            if unfinished:
                what = (
                    f"the worker process was killed by signal {-code}"
                    if code < 0
                    else f"the worker process exited with code {code}"
                )
                self._handle_lost_worker(job_id, what)

    def _enforce_stops(self) -> None:
        """Workers poll for stop requests; one that ignores it past the grace period is killed."""
        now = time.monotonic()
        with self.services.db.session() as session:
            stopping = set(session.scalars(select(Job.id).where(Job.status == "Stopping")).all())
        for job_id, running in self._running.items():
            if job_id not in stopping:
                continue
            if running.stop_sent_at is None:
                running.stop_sent_at = now
                running.process.send_signal(signal.SIGTERM)
            elif now - running.stop_sent_at > STOP_GRACE_S:
                running.process.kill()

    @property
    def running_job_ids(self) -> list[str]:
        return list(self._running)
