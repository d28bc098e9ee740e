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

Orphaned workers (policy: **adopt**): a server killed hard leaves its workers running, each in
its own session, still heartbeating. The next supervisor on this host adopts every one whose pid
is alive, whose command line is really ``tuneforge.jobs.worker <that job>`` (so a reused pid is
not mistaken for it) and whose heartbeat is fresh: it counts against ``worker_concurrency``, gets
stop enforcement, and is recovered like a worker this supervisor started when it dies. One that is
alive but silent past the heartbeat timeout is hung: it is killed before its job is recovered, so
two workers never train one job.

Several replicas (policy in docs/architecture.md, "Several API replicas"): with a
:class:`~tuneforge.replicas.ReplicaRegistry`, the claim also writes ``owner_replica`` in its
compare-and-set, so a job is claimed by exactly one replica, which spawns its worker, enforces its
stop requests and recovers it. Recovery looks only at this replica's jobs, jobs of no replica (from
a single-process server) and jobs of dead replicas; a dead owner's job is taken over by
compare-and-set on ``owner_replica`` and then handled by the rules above: adopted when its worker
is alive on this host, else resumed from its checkpoint or failed with the reason.

Batch inference jobs (:class:`~tuneforge.db.tables.ModelInvocationJob`) share this queue, the
concurrency limit and the worker command: the oldest queued job of either kind is claimed first. A
batch job whose worker dies is not resumed (its answers are cheap to make again): it ends ``Failed``,
or ``Stopped`` when it was stopping. Evaluation jobs (:class:`~tuneforge.db.tables.EvaluationJob`)
are queued and recovered the same way (Bedrock's status stays ``InProgress`` while one is queued),
and so are knowledge base ingestion jobs (:class:`~tuneforge.db.tables.IngestionJob`, ``STARTING``
while queued), which end ``FAILED`` when their worker dies.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from tuneforge.db.session import first_line
from tuneforge.db.tables import EvaluationJob, IngestionJob, Job, JobEvent, ModelInvocationJob, utcnow
from tuneforge.jobs import evaluations
from tuneforge.jobs.executors import WorkerProcess, start_worker
from tuneforge.jobs.invocations import mark_ended
from tuneforge.jobs.knowledge_bases import mark_ingestion_ended
from tuneforge.jobs.service import mark_stages
from tuneforge.replicas import ReplicaRegistry, pid_alive
from tuneforge.services import Services
from tuneforge.settings import Settings

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
STOP_GRACE_S = 20.0
TICK_S = 0.25


class AdoptedWorker:
    """A worker started by an earlier server on this host: not our child, so watched by pid."""

    def __init__(self, pid: int, job_id: str) -> None:
        self.pid = pid
        self.job_id = job_id

    def poll(self) -> int | None:
        """None while the worker runs; its exit status is not ours to read, so 0 once it is gone."""
        return None if is_worker_process(self.pid, self.job_id) else 0

    def send_signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


@dataclass
class _Running:
    job_id: str
    process: WorkerProcess | AdoptedWorker
    stop_sent_at: float | None = None

    def exit_description(self) -> str | None:
        """None while the worker runs; else how it ended, for the job's status message."""
        code = self.process.poll()
        if code is None:
            return None
        if isinstance(self.process, AdoptedWorker):
            return "the worker process ended unexpectedly"
        if code < 0:
            return f"the worker process was killed by signal {-code}"
        return f"the worker process exited with code {code}"


def checkpoint_dir(services: Services, job_id: str) -> Path:
    return services.settings.data_dir / "jobs" / job_id / "checkpoints"


def remove_job_files(services: Services, job_id: str) -> None:
    """Delete a job's scratch folder (staged outputs, checkpoints) and its unregistered weights.

    Called when a job ends Failed or Stopped: neither is ever resumed, so nothing there is needed,
    and a failed write must not leave gigabytes behind. A job that goes back to the queue keeps
    its checkpoints; a completed job's weights belong to its custom model and are never passed here.
    """
    remove_job_folders(services.settings, job_id)


def remove_job_folders(settings: Settings, job_id: str) -> None:
    """:func:`remove_job_files` for callers that hold the settings alone (the job service)."""
    for folder in (settings.data_dir / "jobs" / job_id, settings.models_dir / "custom" / job_id):
        shutil.rmtree(folder, ignore_errors=True)
        if folder.is_file() or folder.is_symlink():
            folder.unlink(missing_ok=True)


def has_checkpoint(services: Services, job_id: str) -> bool:
    folder = checkpoint_dir(services, job_id)
    return folder.is_dir() and any(folder.iterdir())


def is_worker_process(pid: int, job_id: str) -> bool:
    """True when ``pid`` is alive and is ``python -m tuneforge.jobs.worker job_id``.

    A pid alone is not enough: after a reboot or a long time the number may belong to another
    process. Where there is no ``/proc`` (macOS), a live pid is taken at its word.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        return pid_alive(pid)
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return False
    args = raw.replace(b"\0", b" ").split()  # a forked worker's (tuneforge/launcher.py) is one string
    return args[-2:] == [b"tuneforge.jobs.worker", job_id.encode()]


class Supervisor:
    def __init__(self, services: Services, replicas: ReplicaRegistry | None = None) -> None:
        self.services = services
        self.replicas = replicas
        self.replica_id = replicas.id if replicas is not None else None
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
            self.safe_tick()
            self._stop.wait(TICK_S)

    def safe_tick(self) -> bool:
        """One tick that never raises: False when it failed. A lost database (PostgreSQL restarting,
        a network cut) is one warning line per tick; the queue lives in the database, so nothing is
        lost and the next tick after it returns carries on (the pool replaces dead connections)."""
        try:
            self.tick()
        except OperationalError as exc:
            log.warning("supervisor: the database is unavailable (%s); retrying", first_line(exc))
            return False
        except Exception:
            log.exception("supervisor tick failed")
            return False
        return True

    def tick(self) -> None:
        self._reap()
        self._enforce_stops()
        self.recover()
        self._claim()

    # -- recovery ----------------------------------------------------------------------------

    def recover(self) -> None:
        """Adopt live orphaned workers on this host; recover jobs whose worker is gone or hung.

        Gone: a dead pid here (or a live pid that is no longer our worker). Hung: a heartbeat
        silent past the timeout, or a worker that never reported; a hung worker on this host is
        killed first.
        """
        timeout = timedelta(seconds=self.services.settings.heartbeat_timeout_s)
        live_replicas = self.replicas.live_ids() if self.replicas is not None else set()
        now = utcnow()
        adopt: list[tuple[str, int, str | None]] = []
        orphans: list[tuple[str, int | None]] = []
        with self.services.db.session() as session:
            live = ("InProgress", "Stopping")
            rows: list[Job | ModelInvocationJob | EvaluationJob | IngestionJob] = [
                *session.scalars(select(Job).where(Job.phase == "running", Job.status.in_(live))),
                *session.scalars(
                    select(ModelInvocationJob).where(
                        ModelInvocationJob.phase == "running", ModelInvocationJob.status.in_(live)
                    )
                ),
                *session.scalars(
                    select(EvaluationJob).where(EvaluationJob.phase == "running", EvaluationJob.status.in_(live))
                ),
                *session.scalars(select(IngestionJob).where(IngestionJob.phase == "running")),
            ]
            for job in rows:
                if job.id in self._running:
                    continue
                previous = job.owner_replica
                foreign = self.replicas is not None and previous != self.replica_id
                if foreign and (previous in live_replicas or not self._take_over(session, job)):
                    continue
                here = job.worker_host == self.host
                alive_here = here and job.worker_pid is not None and is_worker_process(job.worker_pid, job.id)
                silent = job.heartbeat_at is not None and now - job.heartbeat_at > timeout
                never_started = job.heartbeat_at is None and now - job.updated_at > timeout
                if alive_here and not (silent or never_started):
                    assert job.worker_pid is not None
                    adopt.append((job.id, job.worker_pid, previous))
                elif (here and not alive_here) or silent or never_started:
                    orphans.append((job.id, job.worker_pid if alive_here else None))
        for job_id, pid, previous in adopt:
            self._adopt(job_id, pid, previous)
        for job_id, hung_pid in orphans:
            if hung_pid is not None:
                AdoptedWorker(hung_pid, job_id).kill()
                log.warning("job %s: killed hung worker pid %d (no heartbeat)", job_id, hung_pid)
            self._handle_lost_worker(job_id, "the worker process ended unexpectedly")

    def _take_over(self, session: Session, job: Job | ModelInvocationJob | EvaluationJob | IngestionJob) -> bool:
        """Make this replica the owner of a running job whose owner is dead (or was never a replica).

        A compare-and-set on the owner seen: of two replicas taking over one job, one wins; the
        other leaves it alone. The winner then recovers it by the usual rules.
        """
        table = type(job)
        previous = job.owner_replica
        seen = table.owner_replica.is_(None) if previous is None else table.owner_replica == previous
        result = session.execute(update(table).where(table.id == job.id, seen).values(owner_replica=self.replica_id))
        if not cast(CursorResult[Any], result).rowcount:
            return False
        job.owner_replica = self.replica_id
        if previous is not None:
            message = f"replica {previous} is gone; replica {self.replica_id} took the job over"
            if table is Job:
                session.add(JobEvent(job_id=job.id, kind="log", data={"message": message}))
            log.warning("job %s: %s", job.id, message)
        return True

    def _adopt(self, job_id: str, pid: int, previous_owner: str | None = None) -> None:
        self._running[job_id] = _Running(job_id, AdoptedWorker(pid, job_id))
        message = (
            f"the server restarted; its worker (pid {pid}) is still running and was adopted"
            if previous_owner is None or previous_owner == self.replica_id
            else f"its replica {previous_owner} is gone; its worker (pid {pid}) is still running and was adopted"
        )
        with self.services.db.session() as session:
            if session.get(Job, job_id) is not None:  # batch inference jobs keep no events
                session.add(JobEvent(job_id=job_id, kind="log", data={"message": message}))
        log.warning("job %s: %s", job_id, message)

    def _handle_lost_worker(self, job_id: str, what: str) -> None:
        with self.services.db.session() as session:
            batch = session.get(ModelInvocationJob, job_id)
            if batch is not None:
                self._end_lost_batch_job(batch, what)
                return
            evaluation = session.get(EvaluationJob, job_id)
            if evaluation is not None:
                self._end_lost_evaluation_job(evaluation, what)
                return
            ingestion = session.get(IngestionJob, job_id)
            if ingestion is not None:
                if ingestion.phase == "running":
                    mark_ingestion_ended(ingestion, "FAILED", f"Job interrupted: {what}. Start the job again to retry.")
                    log.warning("ingestion job %s: %s", job_id, what)
                return
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
            if job.status in ("Failed", "Stopped"):  # before the commit: the final status comes with the files gone
                remove_job_files(self.services, job_id)
        log.warning("job %s: %s", job_id, message)

    def _end_lost_batch_job(self, batch: ModelInvocationJob, what: str) -> None:
        """A batch job whose worker died: Stopped if it was stopping, else Failed; never resumed."""
        if batch.status not in ("InProgress", "Stopping"):
            return
        if batch.status == "Stopping":
            mark_ended(batch, "Stopped", f"{what}; the job was stopping and is now Stopped")
        else:
            mark_ended(
                batch,
                "Failed",
                f"Job interrupted: {what} before the job finished. Create the job again to retry.",
            )
        remove_job_files(self.services, batch.id)
        log.warning("batch job %s: %s", batch.id, batch.message)

    def _end_lost_evaluation_job(self, job: EvaluationJob, what: str) -> None:
        """An evaluation job whose worker died: Stopped if it was stopping, else Failed; never resumed."""
        if job.status not in ("InProgress", "Stopping"):
            return
        if job.status == "Stopping":
            evaluations.mark_ended(job, "Stopped", None)
        else:
            evaluations.mark_ended(
                job, "Failed", f"Job interrupted: {what} before the job finished. Create the job again to retry."
            )
        remove_job_files(self.services, job.id)
        log.warning("evaluation job %s: %s", job.id, what)

    # -- workers -----------------------------------------------------------------------------

    def _claim(self) -> None:
        """The oldest queued job of any kind, customization, batch inference or evaluation, first."""
        limit = self.services.settings.worker_concurrency
        while len(self._running) < limit:
            with self.services.db.session() as session:
                customization = session.execute(
                    select(Job.id, Job.created_at)
                    .where(Job.phase == "queued", Job.status == "InProgress")
                    .order_by(Job.created_at)
                    .limit(1)
                ).first()
                batch = session.execute(
                    select(ModelInvocationJob.id, ModelInvocationJob.created_at)
                    .where(ModelInvocationJob.phase == "queued", ModelInvocationJob.status == "Submitted")
                    .order_by(ModelInvocationJob.created_at)
                    .limit(1)
                ).first()
                evaluation = session.execute(
                    select(EvaluationJob.id, EvaluationJob.created_at)
                    .where(EvaluationJob.phase == "queued", EvaluationJob.status == "InProgress")
                    .order_by(EvaluationJob.created_at)
                    .limit(1)
                ).first()
                ingestion = session.execute(
                    select(IngestionJob.id, IngestionJob.created_at)
                    .where(IngestionJob.phase == "queued", IngestionJob.status == "STARTING")
                    .order_by(IngestionJob.created_at)
                    .limit(1)
                ).first()
                if customization is None and batch is None and evaluation is None and ingestion is None:
                    return
                claim = dict(
                    phase="running",
                    owner_replica=self.replica_id,
                    worker_host=self.host,
                    worker_pid=None,
                    heartbeat_at=None,
                    updated_at=utcnow(),
                )
                oldest = min(
                    (row for row in (customization, batch) if row is not None),
                    key=lambda row: row.created_at,
                    default=None,
                )
                if evaluation is not None and (oldest is None or evaluation.created_at < oldest.created_at):
                    oldest = evaluation
                if ingestion is not None and (oldest is None or ingestion.created_at < oldest.created_at):
                    job_id = ingestion.id
                    result = session.execute(
                        update(IngestionJob)
                        .where(IngestionJob.id == job_id, IngestionJob.phase == "queued")
                        .values(**claim, attempts=IngestionJob.attempts + 1)
                    )
                elif evaluation is not None and oldest is evaluation:
                    job_id = evaluation.id
                    result = session.execute(
                        update(EvaluationJob)
                        .where(EvaluationJob.id == job_id, EvaluationJob.phase == "queued")
                        .values(**claim, attempts=EvaluationJob.attempts + 1)
                    )
                elif batch is not None and (customization is None or batch.created_at < customization.created_at):
                    job_id = batch.id
                    result = session.execute(
                        update(ModelInvocationJob)
                        .where(ModelInvocationJob.id == job_id, ModelInvocationJob.phase == "queued")
                        .values(**claim, status="InProgress", attempts=ModelInvocationJob.attempts + 1)
                    )
                else:
                    assert customization is not None
                    job_id = customization.id
                    result = session.execute(
                        update(Job)
                        .where(Job.id == job_id, Job.phase == "queued")
                        .values(**claim, attempts=Job.attempts + 1)
                    )
                claimed = cast(CursorResult[Any], result).rowcount
            if claimed:
                self._spawn(job_id)

    def _spawn(self, job_id: str) -> None:
        process = start_worker(self.services, job_id)
        if process.pid is not None:
            with self.services.db.session() as session:
                for table in (Job, ModelInvocationJob, EvaluationJob, IngestionJob):
                    session.execute(update(table).where(table.id == job_id).values(worker_pid=process.pid))
        self._running[job_id] = _Running(job_id, process)
        log.info("job %s: started worker pid %s (%s executor)", job_id, process.pid, self.services.settings.executor)

    def _reap(self) -> None:
        self._let_go_of_taken_jobs()
        for job_id, running in list(self._running.items()):
            what = running.exit_description()
            if what is None:
                continue
            del self._running[job_id]
            with self.services.db.session() as session:
                job = (
                    session.get(Job, job_id)
                    or session.get(ModelInvocationJob, job_id)
                    or session.get(EvaluationJob, job_id)
                    or session.get(IngestionJob, job_id)
                )
                unfinished = (
                    job is not None
                    and job.status in ("InProgress", "Stopping", "IN_PROGRESS", "STARTING")
                    and job.phase == "running"
                )
            if unfinished:
                self._handle_lost_worker(job_id, what)

    def _let_go_of_taken_jobs(self) -> None:
        """Stop watching workers of jobs another replica has taken over.

        That happens when this replica stalled past the lease (the others took it for dead): the new
        owner adopted the worker or recovered the job, so this one neither stops nor recovers it.
        """
        if self.replicas is None or not self._running:
            return
        ids = list(self._running)
        with self.services.db.session() as session:
            taken = {
                job_id
                for table in (Job, ModelInvocationJob, EvaluationJob, IngestionJob)
                for job_id, owner in session.execute(select(table.id, table.owner_replica).where(table.id.in_(ids)))
                if owner is not None and owner != self.replica_id
            }
        for job_id in taken:
            del self._running[job_id]
            log.warning("job %s: another replica took it over; no longer watching its worker here", job_id)

    def _enforce_stops(self) -> None:
        """Workers poll for stop requests; one that ignores it past the grace period is killed."""
        now = time.monotonic()
        with self.services.db.session() as session:
            stopping = set(session.scalars(select(Job.id).where(Job.status == "Stopping")).all())
            stopping.update(
                session.scalars(select(ModelInvocationJob.id).where(ModelInvocationJob.status == "Stopping")).all()
            )
            stopping.update(session.scalars(select(EvaluationJob.id).where(EvaluationJob.status == "Stopping")).all())
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
