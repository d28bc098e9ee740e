"""DDP against FSDP2 on the training loop, run by every rank under ``torchrun`` (2 ranks, gloo).

Not a test module: test_distributed.py starts it with ``torch.distributed.run`` and reads the JSON
rank 0 writes to ``<argv[1]>/figures.json``; the runs' checkpoints go under ``argv[1]`` too, a
folder every rank sees, as a job's checkpoint folder is. For LoRA and for full training, on a tiny
Llama and the same records:

- ``ddp`` and ``fsdp`` each train two epochs from the same initial weights; the plain model's
  trained weights are compared as the ``epoch_end`` hook sees them after the first epoch and after
  ``train`` returns (FSDP must have copied its shards back into it both times);
- ``fsdp`` is stopped after ``STOP_AT`` steps (a checkpoint after every step) and a fresh model
  resumes from that checkpoint to the end: its losses and weights are compared with the
  uninterrupted run's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tuneforge.recipes import distributed
from tuneforge.recipes.loop import TrainingConfig, TrainingOutcome, prepare_for_training, train
from tuneforge.recipes.outputs import MetricsWriter
from tuneforge.recipes.tokenising import Example

STEPS = 6
"""Steps per epoch; two epochs."""
BATCH = 4
STOP_AT = 3
VOCAB = 97


class Reporter:
    """Records each step's loss and the log; asks to stop once ``stop_at`` steps are done."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at = stop_at
        self.losses: list[float] = []
        self.logs: list[str] = []
        self.step = 0
        self.epoch_weights: dict[str, torch.Tensor] = {}

    def stage(self, stage: str, status: str) -> None: ...

    def data_progress(self, **_: Any) -> None: ...

    def log(self, message: str) -> None:
        self.logs.append(message)

    def progress(self, *, step: int, loss: float, **_: Any) -> None:
        self.step = step
        self.losses.append(loss)

    def should_stop(self) -> bool:
        return self.stop_at is not None and self.step >= self.stop_at


def examples() -> list[Example]:
    """Records of different lengths (so shares and padding differ), a prompt part masked out."""
    records = []
    for i in range(BATCH * STEPS):
        length = 6 + (i * 5) % 9
        ids = [(3 * i + 7 * j) % VOCAB for j in range(length)]
        records.append(Example(input_ids=ids, labels=[-100] * 2 + ids[2:]))
    return records


def fresh_model(method: str) -> Any:
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    hyperparameters = {"trainingMethod": method, "loraRank": 4, "loraAlpha": 8.0, "loraDropout": 0.0}
    return prepare_for_training(model, hyperparameters, Reporter())  # type: ignore[arg-type]


def run(
    method: str, strategy: str, folder: Path, reporter: Reporter, checkpoint_every: int
) -> tuple[Any, TrainingOutcome]:
    model = fresh_model(method)

    def epoch_end(epoch: int, plain: Any) -> bool:
        reporter.epoch_weights = trained(plain)
        return False

    config = TrainingConfig(
        epochs=2,
        batch_size=BATCH,
        learning_rate=1e-2,
        warmup_steps=0,
        weight_decay=0.01,
        gradient_accumulation_steps=2,
        seed=3,
        checkpoint_every_steps=checkpoint_every,
        precision="fp32",
        full_training=method == "full",
        data_parallel_strategy=strategy,
    )
    outcome = train(
        model,
        examples(),
        config,
        reporter,  # type: ignore[arg-type]
        MetricsWriter(folder, "probe"),
        folder / "checkpoints",
        pad_id=0,
        epoch_end=epoch_end,
    )
    return model, outcome


def trained(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[n] - b[n]).abs().max()) for n in a)


def main(folder: Path) -> None:
    distributed.init_process_group()
    torch.set_num_threads(1)
    figures: dict[str, Any] = {}
    for method in ("lora", "full"):
        root = folder / method
        ddp_reporter, fsdp_reporter = Reporter(), Reporter()
        # A checkpoint every 4 steps: none at the first epoch's end, where epoch_end needs a gather of its own.
        ddp_model, ddp = run(method, "ddp", root / "ddp", ddp_reporter, checkpoint_every=4)
        fsdp_model, fsdp = run(method, "fsdp", root / "fsdp", fsdp_reporter, checkpoint_every=4)
        first, second = Reporter(stop_at=STOP_AT), Reporter()
        _, stopped = run(method, "fsdp", root / "resumed", first, checkpoint_every=1)
        resumed_model, resumed = run(method, "fsdp", root / "resumed", second, checkpoint_every=1)
        initial = trained(fresh_model(method))
        figures[method] = {
            "ddp_loss": ddp.final_loss,
            "fsdp_loss": fsdp.final_loss,
            "ddp_losses": ddp_reporter.losses,
            "fsdp_losses": fsdp_reporter.losses,
            "weights_moved": largest_difference(trained(ddp_model), initial),
            "fsdp_vs_ddp_weights": largest_difference(trained(fsdp_model), trained(ddp_model)),
            "epoch_weights_moved": largest_difference(ddp_reporter.epoch_weights, initial),
            "fsdp_vs_ddp_epoch_weights": largest_difference(fsdp_reporter.epoch_weights, ddp_reporter.epoch_weights),
            "sharded_log": [m for m in fsdp_reporter.logs if "sharded (FSDP)" in m],
            "stopped_at": stopped.steps if stopped.stopped else None,
            "resumed_log": [m for m in second.logs if m.startswith("resumed from checkpoint")],
            "resumed_losses": first.losses + second.losses,
            "resumed_steps": resumed.steps,
            "resumed_vs_uninterrupted_weights": largest_difference(trained(resumed_model), trained(fsdp_model)),
        }
    if distributed.is_primary():
        (folder / "figures.json").write_text(json.dumps(figures))
    distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
