"""Data parallelism for the training loop: one process per rank, started by ``torchrun``.

Every rank holds the whole model and the whole (tokenised) training set, and computes the same
batch order from (seed, epoch) (:func:`tuneforge.recipes.batching.length_grouped_batches`). Each
optimizer batch is split across the ranks by :func:`rank_share`; a rank splits its share again into
``gradientAccumulationSteps`` micro-batches. Every micro-batch's loss is its summed token loss over
the *global* batch's target count, times the world size: DDP averages gradients over the ranks, so
the sum of the shares is exactly the mean token loss of the whole batch, as with one process. The
global batch is ``batchSize`` records whatever the number of processes.

CPU ranks use DDP over gloo, GPU ranks DDP over NCCL (one GPU per rank, by LOCAL_RANK). FSDP2
(sharded weights and optimizer state) is not wired in: every rank holds a full replica. Only
rank 0 writes outputs, metrics, events and checkpoints (:func:`is_primary`); every rank reads the
checkpoint on resume.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import PrefixStore, TCPStore


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, number of ranks); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_primary() -> bool:
    """Whether this process writes: rank 0, or the only process."""
    return rank_and_world()[0] == 0


def init_process_group() -> None:
    """Join the group ``torchrun`` describes in the environment (RANK, WORLD_SIZE, MASTER_ADDR...).

    The group's keys live under the restart count: after a lost rank, torchrun starts the ranks
    again on the same store, where the previous start's addresses are still published (without the
    prefix the new ranks connect to the dead ones' ports and fail). A GPU rank takes the GPU its
    LOCAL_RANK names, so "cuda" means that GPU from here on.
    """
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    base = TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=not agent_store and rank == 0,
        multi_tenant=not agent_store,
    )
    store = PrefixStore(f"tuneforge/start-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", base)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl", store=store, rank=rank, world_size=world)
    else:
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world)


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def parallelize(model: Any) -> Any:
    """The module the loop runs forward passes through: ``model`` itself with one process, else DDP
    around it (``model`` keeps its own parameter names, for checkpoints and saving)."""
    if rank_and_world()[1] == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(model)


def no_sync(forward_model: Any, last: bool) -> Any:
    """Skip the gradient all-reduce on every micro-batch but a rank's last one (accumulation)."""
    if last or not isinstance(forward_model, torch.nn.parallel.DistributedDataParallel):
        return nullcontext()
    return forward_model.no_sync()


def rank_share(batch: Sequence[int], lengths: Sequence[int], rank: int, world: int) -> list[int]:
    """This rank's records of one global batch: longest first, dealt round-robin, so shares differ
    by at most one record and have similar token counts. Empty when the batch has fewer records
    than there are ranks (the rank then contributes a zero gradient)."""
    ordered = sorted(batch, key=lambda i: lengths[i], reverse=True)
    return ordered[rank::world]


def all_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum over the ranks (the step's loss and tokens, for the one rank that reports)."""
    if rank_and_world()[1] == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return [float(v) for v in tensor.cpu()]


def agree(flag: bool) -> bool:
    """Rank 0's answer, on every rank: a stop request is seen by rank 0 and must stop all ranks together."""
    if rank_and_world()[1] == 1:
        return flag
    return all_sum([1.0 if flag and is_primary() else 0.0])[0] > 0


def barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()
