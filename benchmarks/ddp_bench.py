"""Data parallel vs one process: the training loop a job runs, on the same data, seed and global batch.

    python benchmarks/ddp_bench.py                 # forge-small LoRA, 24 steps of 8 records, 2 CPU cores
    python benchmarks/ddp_bench.py --quick --check # CI smoke: forge-micro, fewer steps

Two runs of :func:`tuneforge.recipes.loop.train` (LoRA, ``precision=auto``, batches of 8 records):
- ``single``: one process with 2 torch threads;
- ``ddp2``: ``torchrun --nproc-per-node=2`` with 1 thread each, DDP over gloo on 127.0.0.1; each rank
  takes half of every batch (:mod:`tuneforge.recipes.distributed`);
- ``fsdp2``: the same launch with ``dataParallelStrategy=fsdp`` (FSDP2: each rank holds half of the
  adapters, their gradients and optimizer state, and all-gathers each layer's weights per pass).

Both print the mean step loss over the run (rank 0 reports the loss summed over the ranks) and
tokens/s (real tokens of every rank, from the first step after one warm-up step). On 2 CPU cores
expect no speed-up: the cores are the same, and DDP adds an all-reduce of the adapter gradients and
a second copy of the model per step; FSDP adds the gathers. ``--check`` exits 1 when either
2-rank final loss differs from one process's by more than 1% (the sharding or the loss scaling is
broken); the tokens/s ratio is reported, never judged.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, final_json

BATCH = 8
SEED = 7
LOSS_TOLERANCE = 0.01


class StepReporter:
    """The loop's reporter: records each step's (loss, tokens seen, time)."""

    def __init__(self) -> None:
        self.steps: list[tuple[float, int, float]] = []

    def stage(self, stage: str, status: str) -> None: ...

    def log(self, message: str) -> None: ...

    def data_progress(self, *, done: int, total: int, unit: str) -> None: ...

    def should_stop(self) -> bool:
        return False

    def progress(self, *, tokens_seen: int, loss: float, **_: Any) -> None:
        self.steps.append((loss, tokens_seen, time.perf_counter()))


def child(args: argparse.Namespace) -> None:
    """One run (every rank of it, under torchrun): rank 0 writes the figures to ``--out``."""
    import torch

    from tuneforge.catalog.hyperparameters import fine_tuning_specs, resolve
    from tuneforge.model.builtin import ensure_builtin
    from tuneforge.model.loading import load_model_and_tokenizer
    from tuneforge.recipes import distributed
    from tuneforge.recipes.loop import TrainingConfig, prepare_for_training, train
    from tuneforge.recipes.outputs import MetricsWriter
    from tuneforge.recipes.tokenising import encode_record

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_bench import CONTEXT, MODEL_CACHE, synthetic_records

    if "RANK" in os.environ:
        distributed.init_process_group()
    torch.set_num_threads(args.threads)
    hyper = resolve(
        fine_tuning_specs(),
        {
            "epochCount": "1",
            "batchSize": str(BATCH),
            "seed": str(SEED),
            "checkpointEverySteps": "1000000",
            "dataParallelStrategy": args.strategy,
        },
    )
    model, tokenizer = load_model_and_tokenizer(ensure_builtin(args.model, MODEL_CACHE))
    torch.manual_seed(SEED)
    reporter = StepReporter()
    model = prepare_for_training(model, hyper, reporter)
    examples = [encode_record(r, tokenizer, CONTEXT) for r in synthetic_records(BATCH * args.steps, SEED)]
    with tempfile.TemporaryDirectory() as tmp:
        outcome = train(
            model,
            examples,
            TrainingConfig.from_hyperparameters(hyper),
            reporter,
            MetricsWriter(Path(tmp), "bench"),
            Path(tmp) / "checkpoints",
            pad_id=tokenizer.pad_token_id,
        )
    if distributed.is_primary():
        (_, n0, t0), (_, n1, t1) = reporter.steps[0], reporter.steps[-1]
        Path(args.out).write_text(
            json.dumps(
                {
                    "final_loss": outcome.final_loss,
                    "losses": [s[0] for s in reporter.steps],
                    "tokens_per_s": (n1 - n0) / (t1 - t0),
                }
            )
        )
    distributed.destroy_process_group()


def run(args: argparse.Namespace, processes: int, out: Path, strategy: str = "ddp") -> dict[str, Any]:
    script = str(Path(__file__).resolve())
    common = ["--child", "--model", args.model, "--steps", str(args.steps), "--out", str(out), "--strategy", strategy]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    if processes == 1:
        command = [sys.executable, script, *common, "--threads", str(args.threads)]
        env["OMP_NUM_THREADS"] = str(args.threads)
    else:
        from tuneforge.demo import free_port

        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=1",
            f"--nproc-per-node={processes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{free_port()}",
            "--local-addr=127.0.0.1",
            script,
            *common,
            "--threads",
            str(max(args.threads // processes, 1)),
        ]
        env["OMP_NUM_THREADS"] = str(max(args.threads // processes, 1))
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="forge-small")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="forge-micro, 8 steps")
    parser.add_argument("--check", action="store_true", help="exit 1 unless the final losses agree within 1%%")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", default="ddp", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    if args.quick:
        args.model, args.steps = "forge-micro", 8
    with tempfile.TemporaryDirectory() as tmp:
        single = run(args, 1, Path(tmp) / "single.json")
        ddp = run(args, 2, Path(tmp) / "ddp2.json")
        fsdp = run(args, 2, Path(tmp) / "fsdp2.json", "fsdp")
    difference = abs(ddp["final_loss"] - single["final_loss"]) / single["final_loss"]
    fsdp_difference = abs(fsdp["final_loss"] - single["final_loss"]) / single["final_loss"]
    ratio = ddp["tokens_per_s"] / single["tokens_per_s"]
    fsdp_ratio = fsdp["tokens_per_s"] / single["tokens_per_s"]
    print(f"{args.model} LoRA, {args.steps} steps of {BATCH} records, {args.threads} CPU threads in all")
    print(f"  1 process : final loss {single['final_loss']:.5f}, {single['tokens_per_s']:,.0f} tokens/s")
    print(f"  2 ranks   : final loss {ddp['final_loss']:.5f}, {ddp['tokens_per_s']:,.0f} tokens/s (DDP)")
    print(f"  2 ranks   : final loss {fsdp['final_loss']:.5f}, {fsdp['tokens_per_s']:,.0f} tokens/s (FSDP2)")
    print(
        f"  DDP : loss difference {difference:.3%} (limit {LOSS_TOLERANCE:.0%}); "
        f"tokens/s ratio 2 ranks / 1 = {ratio:.2f}"
    )
    print(
        f"  FSDP: loss difference {fsdp_difference:.3%} (limit {LOSS_TOLERANCE:.0%}); "
        f"tokens/s ratio 2 ranks / 1 = {fsdp_ratio:.2f}"
    )
    final_json(
        {
            "benchmark": "ddp",
            "model": args.model,
            "steps": args.steps,
            "single": single,
            "ddp2": ddp,
            "fsdp2": fsdp,
            "loss_difference": difference,
            "fsdp_loss_difference": fsdp_difference,
            "tokens_per_s_ratio": ratio,
            "fsdp_tokens_per_s_ratio": fsdp_ratio,
            "environment": environment(args.threads),
        }
    )
    return 1 if args.check and max(difference, fsdp_difference) > LOSS_TOLERANCE else 0


if __name__ == "__main__":
    sys.exit(main())
