"""Data parallelism for the training loop: one process per rank, started by ``torchrun``.

Every rank holds the whole model and the whole (tokenised) training set, and computes the same
batch order from (seed, epoch) (:func:`tuneforge.recipes.batching.length_grouped_batches`). Each
optimizer batch is split across the ranks by :func:`rank_share`; a rank splits its share again into
``gradientAccumulationSteps`` micro-batches. Every micro-batch's loss is its summed token loss over
the *global* batch's target count, times the world size: DDP averages gradients over the ranks, so
the sum of the shares is exactly the mean token loss of the whole batch, as with one process. The
global batch is ``batchSize`` records whatever the number of processes.

Two strategies (the hyperparameter ``dataParallelStrategy``), over gloo on CPU ranks and NCCL on
GPU ranks (one GPU per rank, by LOCAL_RANK), both behind :class:`DataParallel`:

- ``ddp``: every rank trains a full replica; DDP averages the gradients.
- ``fsdp``: FSDP2 (``fully_shard``) on a copy of the model, per decoder layer and at the root. Each
  rank keeps 1/world of the trained weights, their gradients and the optimizer state; a layer's
  weights are all-gathered for its forward and backward, and gradients are reduce-scattered
  (averaged, as DDP does, so the loss arithmetic above holds unchanged). The plain model the
  recipe passed in stays unsharded for what follows training (validation after an epoch, early
  stopping's snapshot, the final evaluation and the save): :meth:`DataParallel.gather` copies the
  trained weights back into it, on every rank, before each of those and when training ends.

Only rank 0 writes outputs, metrics, events and checkpoints (:func:`is_primary`); every rank reads
the checkpoint on resume. Under FSDP a checkpoint is a collective step: every rank takes part in
gathering the full trainable weights and optimizer state, and rank 0 writes them, in the same file
layout as DDP's (the optimizer state keyed by parameter name rather than position, so the strategy
is part of the checkpoint's fingerprint). A resume loads the full state into the sharded copy.

The plain model stays on the training device next to the shards, so on GPUs ``fsdp`` divides the
memory of the gradients and optimizer state by the world size (for full training with AdamW, 12 of
DDP's 16 bytes per parameter), not that of the weights: every rank still holds them whole once.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import PrefixStore, TCPStore
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.checkpoint.stateful import Stateful
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

STRATEGIES = ("ddp", "fsdp")


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


class DataParallel:
    """How the training loop runs ``model`` over the ranks (``strategy``: ``ddp`` or ``fsdp``).

    ``module`` runs the forward passes, and its trainable parameters are the ones the optimizer
    steps: ``model`` itself with one process, DDP around it, or a fully sharded copy of it. ``model``
    keeps its parameter names, and is what checkpoints, evaluation and saving read.
    """

    def __init__(self, model: Any, strategy: str = "ddp") -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown data-parallel strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        world = rank_and_world()[1]
        self.model = model
        self.sharded = world > 1 and strategy == "fsdp"
        self.module: Any
        if world == 1:
            self.module = model
        elif self.sharded:
            self.module = _fully_shard(copy.deepcopy(model), world)
        else:
            self.module = torch.nn.parallel.DistributedDataParallel(model)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def fingerprint(self) -> dict[str, str]:
        """What a checkpoint must agree on: sharded training writes optimizer state a replica cannot
        read (keyed by name, not position), so its checkpoints say so."""
        return {"dataParallelStrategy": "fsdp"} if self.sharded else {}

    def no_sync(self, last: bool) -> AbstractContextManager[None]:
        """Skip the gradient all-reduce (reduce-scatter) on every micro-batch but a rank's last one."""
        if last:
            return nullcontext()
        if self.sharded:
            return _without_gradient_sync(self.module)
        if isinstance(self.module, torch.nn.parallel.DistributedDataParallel):
            return self.module.no_sync()
        return nullcontext()

    def gather(self) -> Any:
        """``model``, with the trained weights copied into it on every rank: a collective step under
        FSDP (every rank must call it), nothing to do otherwise. The frozen weights never change, so
        only the trainable ones travel."""
        if not self.sharded:
            return self.model
        plain = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, param in self.module.named_parameters():
                if param.requires_grad:
                    full = param.full_tensor() if isinstance(param, DTensor) else param
                    plain[name].copy_(full)
        return self.model

    def load_trained(self) -> None:
        """The reverse of :meth:`gather`, after a resume loaded a checkpoint into ``model``: each rank
        takes its shard of the trainable weights."""
        if not self.sharded:
            return
        trained = {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}
        set_model_state_dict(self.module, trained, options=StateDictOptions(full_state_dict=True, strict=False))

    def checkpointed(self, optimizer: torch.optim.Optimizer, *, for_saving: bool = False) -> Stateful:
        """The optimizer as checkpoints see it: itself, or under FSDP its full (unsharded) state by
        parameter name, which a resume loads into the shards. ``for_saving`` gathers that state now,
        a collective step every rank takes; rank 0 alone receives it, to write."""
        if not self.sharded:
            return optimizer
        state = _FullOptimizerState(self.module, optimizer)
        if for_saving:
            state.gathered = get_optimizer_state_dict(
                self.module, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        return state


class _FullOptimizerState:
    def __init__(self, module: Any, optimizer: torch.optim.Optimizer) -> None:
        self.module = module
        self.optimizer = optimizer
        self.gathered: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        if self.gathered is None:
            raise RuntimeError("the sharded optimizer state is gathered on every rank first (for_saving=True)")
        return self.gathered

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        options = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(self.module, self.optimizer, state_dict, options=options)


def _fully_shard(model: Any, world: int) -> Any:
    """FSDP2 on each decoder layer (the units transformers will not split: ``_no_split_modules``),
    then on the root for what is left (embeddings, final norm, head)."""
    mesh = init_device_mesh("cuda" if dist.get_backend() == "nccl" else "cpu", (world,))
    units: set[str] = set()
    for module in model.modules():
        units.update(getattr(module, "_no_split_modules", None) or ())
    for module in list(model.modules()):
        if type(module).__name__ in units:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


@contextmanager
def _without_gradient_sync(module: FSDPModule) -> Iterator[None]:
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


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
