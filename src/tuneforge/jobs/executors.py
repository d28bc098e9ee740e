"""Where a job's worker process runs: on this machine (``local``) or on a Ray cluster (``ray``).

The supervisor starts every worker through :func:`start_worker` and then only polls, signals and
kills what it gets back, so both executors look the same to it: a :class:`WorkerProcess`.

**local** (the default): ``python -m tuneforge.jobs.worker JOB_ID`` in its own session, its output
appended to the job's log file, forked by the launcher's fork server once that is ready
(:mod:`tuneforge.launcher`).

**ray** (``TUNEFORGE_EXECUTOR=ray``, ``TUNEFORGE_RAY_ADDRESS``): the same command, started by a
small Ray actor inside a placement group made for the job, with one bundle holding what the job
needs: a CPU per training process (``dataParallelProcesses``; the worker's torchrun ranks run in
the same bundle), a GPU per process when the cluster has GPUs, and ``TUNEFORGE_TRAINING_MEMORY_BYTES``
of memory when set. Ray places the bundle on a node with room for it, or keeps the job waiting
until one has. The actor reports the worker's exit status (negative: killed by that signal) and
forwards stop signals; the placement group is removed once the worker has ended. Every Ray node
needs the job's view of the world: the same database, data directory and object store (shared
storage or S3), and tuneforge installed. ``ray`` is imported only when this executor is selected.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Protocol

from tuneforge.db.tables import Job
from tuneforge.services import Services
from tuneforge.settings import Settings, child_environment

log = logging.getLogger(__name__)


class WorkerProcess(Protocol):
    """What the supervisor needs of a running worker (``subprocess.Popen`` is one)."""

    @property
    def pid(self) -> int | None:
        """The worker's pid where the supervisor knows it (a local child); None on a Ray node."""
        ...

    def poll(self) -> int | None: ...

    def send_signal(self, signum: int) -> None: ...

    def kill(self) -> None: ...


WORKER_MODULE = "tuneforge.jobs.worker"


def worker_command(job_id: str) -> list[str]:
    return [sys.executable, "-m", WORKER_MODULE, job_id]


def start_worker(services: Services, job_id: str) -> WorkerProcess:
    """Start ``job_id``'s worker with the executor the settings name."""
    settings = services.settings
    log_path = settings.logs_dir / f"job-{job_id}.log"
    if settings.executor == "ray":
        return RayWorker.start(services, job_id, log_path)
    return services.launcher.start(WORKER_MODULE, [job_id], log_path)


class WorkerHost:
    """The Ray actor that runs one worker on its node (a plain class; :class:`RayWorker` makes it remote)."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: str, placed: str) -> None:
        import ray

        node = ray.get_runtime_context().get_node_id()
        with open(log_path, "ab") as log_file:
            log_file.write(f"ray executor: worker on node {node} ({placed})\n".encode())
            log_file.flush()
            self.process = subprocess.Popen(
                command,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    def send_signal(self, signum: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)


class RayWorker:
    """A worker on a Ray node, seen from the supervisor: polled and signalled through its actor.

    Nothing here waits for Ray: the actor starts once its placement group has room (until then
    :meth:`poll` says it runs), and each poll collects the answer to the previous one, so a slow
    node never holds up the supervisor's tick. The worker writes its own pid and host when it starts.
    """

    pid: int | None = None

    def __init__(self, actor: Any, group: Any) -> None:
        self.actor = actor
        self.group = group
        self._pending: Any = None
        self._code: int | None = None

    @staticmethod
    def start(services: Services, job_id: str, log_path: Path) -> RayWorker:
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        settings = services.settings
        connect(settings)
        bundle = resources_for(services, job_id, ray.cluster_resources())  # type: ignore[no-untyped-call]
        group = placement_group([bundle], strategy="STRICT_PACK", name=f"tuneforge-job-{job_id}")
        placed = ", ".join(f"{name} {value:g}" for name, value in sorted(bundle.items()))
        host = ray.remote(num_cpus=0)(WorkerHost).options(
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
            ),
            name=f"tuneforge-worker-{job_id}",
        )
        actor = host.remote(worker_command(job_id), child_environment(settings), str(log_path), placed)
        log.info("job %s: worker placed through Ray (%s)", job_id, placed)
        return RayWorker(actor, group)

    def poll(self) -> int | None:
        """The worker's exit status once it has ended; a lost actor or node counts as SIGKILL."""
        if self._code is not None:
            return self._code
        import ray
        from ray.exceptions import RayError

        if self._pending is None:
            self._pending = self.actor.poll.remote()
        ready, _ = ray.wait([self._pending], timeout=0)
        if not ready:
            return None
        answer, self._pending = self._pending, None
        try:
            code: int | None = ray.get(answer)
        except RayError:
            code = -signal.SIGKILL
        if code is not None:
            self._code = code
            ray.kill(self.actor)
            ray.util.remove_placement_group(self.group)
        return code

    def send_signal(self, signum: int) -> None:
        self.actor.send_signal.remote(signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


_connect_lock = threading.Lock()


def connect(settings: Settings) -> None:
    """Join the Ray cluster once per process (the supervisor thread is the only caller)."""
    import ray

    with _connect_lock:
        if not ray.is_initialized():
            ray.init(address=settings.ray_address or "auto", logging_level=logging.WARNING, log_to_driver=False)


def resources_for(services: Services, job_id: str, cluster: dict[str, float]) -> dict[str, float]:
    """The one bundle a job's worker needs: CPUs (one per training process, at least one), GPUs (one
    per process, where the cluster has any) and memory (``TUNEFORGE_TRAINING_MEMORY_BYTES``, if set)."""
    processes = 1
    with services.db.session() as session:
        job = session.get(Job, job_id)
        if job is not None:
            processes = max(int((job.hyperparameters or {}).get("dataParallelProcesses", "1")), 1)
    bundle: dict[str, float] = {"CPU": float(processes)}
    if cluster.get("GPU", 0) > 0:
        bundle["GPU"] = float(processes)
    if services.settings.training_memory_bytes:
        bundle["memory"] = float(services.settings.training_memory_bytes)
    return bundle
