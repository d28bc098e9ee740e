"""Data-parallel training: the job worker's ``torchrun`` launch, and one rank's process.

A job whose ``dataParallelProcesses`` is above 1 is validated by its worker as usual; the worker
then writes the recipe's inputs to ``<job>/ranks/inputs.pkl`` and starts
``python -m torch.distributed.run ... -m tuneforge.jobs.ranks JOB_ID``. Each rank runs the same
recipe (:mod:`tuneforge.recipes.distributed` shares each batch out); rank 0 reports through the
job's rows and writes the result the worker carries on with (upload, registration). Other ranks
report nothing.

**Lost ranks.** torchrun watches its ranks: when one dies, it stops the others and starts them all
again, up to ``TUNEFORGE_DATA_PARALLEL_MAX_RESTARTS`` times; every rank resumes from the job's
last checkpoint. Past that, the job fails with a message naming the lost rank and how it ended.

**Several machines.** ``TUNEFORGE_DATA_PARALLEL_NODES`` > 1 makes the launch wait at the c10d
rendezvous (``TUNEFORGE_DATA_PARALLEL_RENDEZVOUS``) for the other machines, each running
:func:`torchrun_command`'s command with the same settings (shared database and data directory),
or started on them by the Ray executor.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from tuneforge.recipes.base import JobReporter, RecipeFailed, RecipeInputs, RecipeResult, Stage, StageStatus
from tuneforge.settings import Settings, available_cpus, child_environment

log = logging.getLogger("tuneforge.ranks")

INPUTS_FILE = "inputs.pkl"
RESULT_FILE = "result.json"
LAUNCH_LOG = "torchrun.log"


def ranks_dir(settings: Settings, job_id: str) -> Path:
    return settings.data_dir / "jobs" / job_id / "ranks"


def torchrun_command(settings: Settings, job_id: str, processes: int, port: int) -> list[str]:
    """The launch of one machine's ranks. On one machine the rendezvous is on 127.0.0.1 at ``port``
    (a free one), and so is every rank's traffic."""
    nodes = settings.data_parallel_nodes
    endpoint = settings.data_parallel_rendezvous or f"127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={nodes}",
        f"--nproc-per-node={processes}",
        f"--max-restarts={settings.data_parallel_max_restarts}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint}",
        f"--rdzv-id={job_id}",
        "--monitor-interval=0.5",
    ]
    if nodes == 1 and endpoint.startswith("127.0.0.1:"):
        command.append("--local-addr=127.0.0.1")
    return [*command, "-m", "tuneforge.jobs.ranks", job_id]


def launch_environment(settings: Settings, threads: int) -> dict[str, str]:
    env = child_environment(settings)
    env["OMP_NUM_THREADS"] = str(max(threads, 1))
    if settings.data_parallel_nodes == 1 and sys.platform == "linux":
        # One machine: gloo binds to the loopback interface rather than the one the host name resolves to.
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return env


def run_data_parallel(settings: Settings, inputs: RecipeInputs, processes: int, reporter: JobReporter) -> RecipeResult:
    """Train ``inputs`` on ``processes`` ranks through torchrun; rank 0's result, or RecipeFailed
    saying which rank was lost and how, once torchrun has no restart left."""
    from tuneforge.demo import free_port

    folder = ranks_dir(settings, inputs.job_id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RESULT_FILE).unlink(missing_ok=True)
    threads = max(inputs.num_threads // processes, 1) if inputs.num_threads else 0
    per_rank = replace(inputs, num_threads=threads, on_validation=None)
    (folder / INPUTS_FILE).write_bytes(pickle.dumps(per_rank))
    command = torchrun_command(settings, inputs.job_id, processes, free_port())
    reporter.log(
        f"training data parallel: {processes} processes per machine on {settings.data_parallel_nodes} machine(s), "
        f"up to {settings.data_parallel_max_restarts} restart(s) after a lost rank"
    )
    launch_log = folder / LAUNCH_LOG
    with launch_log.open("ab") as handle:
        code = subprocess.call(
            command,
            env=launch_environment(settings, threads or available_cpus()),
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    text = launch_log.read_text(errors="replace")
    sys.stdout.write(text)
    sys.stdout.flush()
    result_path = folder / RESULT_FILE
    if code == 0 and result_path.exists():
        data = json.loads(result_path.read_text())
        if "failure" in data:
            raise RecipeFailed(data["failure"])
        return RecipeResult(
            training_loss=data["training_loss"],
            validation_losses=list(data["validation_losses"]),
            stopped=bool(data["stopped"]),
            artifacts=dict(data["artifacts"]),
        )
    if result_path.exists() and "failure" in (data := json.loads(result_path.read_text())):
        raise RecipeFailed(data["failure"])
    raise RecipeFailed(
        lost_rank_message(text, code, processes * settings.data_parallel_nodes, settings.data_parallel_max_restarts)
    )


def _die_with_parent() -> None:
    """torchrun gets SIGTERM (and stops its ranks) when the worker dies, even by SIGKILL."""
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


_ROOT_CAUSE = re.compile(r"Root Cause.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", re.DOTALL)


def lost_rank_message(launch_log: str, code: int, world: int, restarts: int) -> str:
    """Why a data-parallel run failed, from torchrun's failure summary: which rank, how it ended."""
    found = _ROOT_CAUSE.search(launch_log)
    if found is None:
        return f"Data-parallel training failed: torchrun exited with code {code} (see the job log)"
    rank, exit_code = int(found.group(1)), int(found.group(2))
    how = f"was killed by signal {-exit_code}" if exit_code < 0 else f"exited with code {exit_code}"
    return (
        f"Data-parallel training lost rank {rank} of {world}: it {how}, and the "
        f"{restarts} restart(s) allowed by TUNEFORGE_DATA_PARALLEL_MAX_RESTARTS were used up "
        "(see the job log); create the job again, or raise the setting"
    )


class RankReporter:
    """A rank other than 0: it trains in step with rank 0 but reports nothing (rank 0 speaks for all)."""

    def stage(self, stage: Stage, status: StageStatus) -> None:
        pass

    def progress(
        self,
        *,
        step: int,
        total_steps: int,
        epoch: int,
        loss: float,
        learning_rate: float,
        tokens_per_second: float,
        tokens_seen: int,
        mfu: float,
        extra: Mapping[str, float] | None = None,
    ) -> None:
        pass

    def data_progress(self, *, done: int, total: int, unit: str) -> None:
        pass

    def log(self, message: str) -> None:
        log.info("%s", message)

    def should_stop(self) -> bool:
        return False


def main(argv: list[str] | None = None) -> int:
    """One rank: join the group, run the recipe; rank 0 writes the result for the worker."""
    from tuneforge.jobs.worker import DatabaseReporter
    from tuneforge.recipes import get_recipe
    from tuneforge.recipes.distributed import destroy_process_group, init_process_group, rank_and_world
    from tuneforge.recipes.memory import steady_allocator
    from tuneforge.services import Services

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: torchrun ... -m tuneforge.jobs.ranks JOB_ID", file=sys.stderr)
        return 2
    job_id = args[0]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s rank %(name)s: %(message)s")
    steady_allocator()
    settings = Settings()
    folder = ranks_dir(settings, job_id)
    inputs: RecipeInputs = pickle.loads((folder / INPUTS_FILE).read_bytes())
    init_process_group()
    rank, _ = rank_and_world()
    services = Services.create(settings) if rank == 0 else None
    reporter: JobReporter = DatabaseReporter(services, job_id) if services is not None else RankReporter()
    try:
        result = get_recipe(inputs.customization_type).run(inputs, reporter)
        outcome: dict[str, object] = {
            "training_loss": result.training_loss,
            "validation_losses": result.validation_losses,
            "stopped": result.stopped,
            "artifacts": result.artifacts,
        }
    except RecipeFailed as exc:
        outcome = {"failure": str(exc)}
    finally:
        if services is not None:
            services.close()
    if rank == 0:
        partial = folder / f".{RESULT_FILE}.partial"
        partial.write_text(json.dumps(outcome))
        partial.replace(folder / RESULT_FILE)
    destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
