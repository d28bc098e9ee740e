"""Data-parallel pieces: batch shares, the lost-rank message, settings; and DDP against FSDP2 on 2 ranks
(data_parallel_probe.py under torchrun, one launch for the module)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tuneforge.catalog.hyperparameters import HyperParameterError, fine_tuning_specs, resolve
from tuneforge.jobs.ranks import lost_rank_message, torchrun_command
from tuneforge.recipes.distributed import rank_share
from tuneforge.settings import Settings

TORCHRUN_FAILURE = """\
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
tuneforge.jobs.ranks FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-01_04:19:47
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 8639)  (SIGTERM)
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-01_04:19:47
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 8640)
  error_file: <N/A>
============================================================
"""


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_rank_shares_cover_the_batch_once_and_differ_by_at_most_one_record(world: int) -> None:
    batch = [5, 1, 9, 3, 7, 2, 8]
    lengths = [10 + (i * 7) % 13 for i in range(10)]
    shares = [rank_share(batch, lengths, rank, world) for rank in range(world)]
    assert sorted(i for share in shares for i in share) == sorted(batch)
    sizes = [len(share) for share in shares]
    assert max(sizes) - min(sizes) <= 1


def test_the_lost_rank_message_names_the_root_cause_rank_and_its_signal() -> None:
    message = lost_rank_message(TORCHRUN_FAILURE, 1, world=2, restarts=1)
    assert message.startswith("Data-parallel training lost rank 1 of 2: it was killed by signal 9")
    assert "TUNEFORGE_DATA_PARALLEL_MAX_RESTARTS" in message


def test_without_a_failure_summary_the_message_gives_torchruns_exit_code() -> None:
    assert "torchrun exited with code 2" in lost_rank_message("usage: torchrun ...", 2, world=2, restarts=0)


@pytest.mark.parametrize("raw", ["0", "65", "two", "1.5"])
def test_data_parallel_processes_outside_1_to_64_is_refused_with_its_name(raw: str) -> None:
    with pytest.raises(HyperParameterError, match="dataParallelProcesses"):
        resolve(fine_tuning_specs(), {"dataParallelProcesses": raw})


def test_one_machine_rendezvous_and_ranks_stay_on_loopback() -> None:
    command = torchrun_command(Settings(data_dir="/tmp/tf-dist-unit"), "job1", 2, 29511)
    assert "--rdzv-endpoint=127.0.0.1:29511" in command and "--local-addr=127.0.0.1" in command
    assert "--nproc-per-node=2" in command and command[-2:] == ["tuneforge.jobs.ranks", "job1"]


def test_several_machines_meet_at_the_configured_rendezvous() -> None:
    settings = Settings(data_dir="/tmp/tf-dist-unit", data_parallel_nodes=3, data_parallel_rendezvous="10.0.0.5:29400")
    command = torchrun_command(settings, "job1", 4, 29511)
    assert "--nnodes=3" in command and "--rdzv-endpoint=10.0.0.5:29400" in command
    assert not any(part.startswith("--local-addr") for part in command)


@pytest.mark.parametrize(
    "overrides",
    [
        {"data_parallel_nodes": 0},
        {"data_parallel_rendezvous": "no-port"},
        {"data_parallel_max_restarts": -1},
        {"executor": "slurm"},
    ],
)
def test_bad_distributed_settings_are_refused_at_start(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(data_dir="/tmp/tf-dist-unit", **overrides)  # type: ignore[arg-type]


PROBE = Path(__file__).with_name("data_parallel_probe.py")


@pytest.fixture(scope="module")
def ddp_and_fsdp(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """data_parallel_probe.py on 2 ranks (gloo on loopback, a thread each): LoRA and full training."""
    from tuneforge.demo import free_port

    folder = tmp_path_factory.mktemp("fsdp")
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc-per-node=2",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{free_port()}",
        "--local-addr=127.0.0.1",
        str(PROBE),
        str(folder),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    figures: dict[str, Any] = json.loads((folder / "figures.json").read_text())
    return figures


@pytest.mark.parametrize("method", ["lora", "full"])
def test_fsdp_trains_to_ddps_loss_and_weights(ddp_and_fsdp: dict[str, Any], method: str) -> None:
    run = ddp_and_fsdp[method]
    assert run["sharded_log"], "the fsdp run did not shard"
    assert run["fsdp_loss"] == pytest.approx(run["ddp_loss"], rel=0.01)
    assert run["fsdp_losses"] == pytest.approx(run["ddp_losses"], rel=1e-4)
    # The plain model holds the trained weights when epoch_end sees it (validation, early stopping) and
    # once train() returns: the shards were gathered back.
    assert run["epoch_weights_moved"] > 1e-3
    assert run["fsdp_vs_ddp_epoch_weights"] < run["epoch_weights_moved"] / 100
    assert run["weights_moved"] > 1e-3
    assert run["fsdp_vs_ddp_weights"] < run["weights_moved"] / 100


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_stopped_fsdp_run_resumes_from_its_checkpoint_as_if_never_stopped(
    ddp_and_fsdp: dict[str, Any], method: str
) -> None:
    run = ddp_and_fsdp[method]
    assert run["stopped_at"] == 3
    assert run["resumed_log"] == ["resumed from checkpoint at step 3/12"]
    assert run["resumed_steps"] == 12
    assert run["resumed_losses"] == pytest.approx(run["fsdp_losses"], rel=1e-5)
    assert run["resumed_vs_uninterrupted_weights"] < run["weights_moved"] / 1000


def test_data_parallel_strategy_is_ddp_or_fsdp() -> None:
    assert resolve(fine_tuning_specs(), {})["dataParallelStrategy"] == "ddp"
    assert resolve(fine_tuning_specs(), {"dataParallelStrategy": "fsdp"})["dataParallelStrategy"] == "fsdp"
    with pytest.raises(HyperParameterError, match="dataParallelStrategy"):
        resolve(fine_tuning_specs(), {"dataParallelStrategy": "zero3"})
