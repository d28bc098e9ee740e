"""Fine-tuning throughput: tuneforge's FINE_TUNING recipe against the stacks users would otherwise pick.

    python benchmarks/train_bench.py                 # CPU: forge-small, 2 threads, 3 repeats
    python benchmarks/train_bench.py --quick --check # CI smoke: fewer steps and variants, lenient floors

Variants, each in its own process, interleaved:
- ``tuneforge``        the recipe a job runs, defaults: LoRA, length-grouped batches, ``precision=auto``
                       (bf16 autocast where the CPU/GPU has native bf16, else fp32);
- ``tuneforge_fp32``   the same with ``precision=fp32`` (what grouping alone buys);
- ``tuneforge_padded`` the same with length grouping off (random batches padded to their max);
- ``tuneforge_full``   the recipe with full fine-tuning;
- ``plain``            a plain PyTorch loop over exactly tuneforge's batches, same precision (framework overhead);
- ``hf_trainer``       HF ``Trainer`` with ordinary per-batch padding (DataCollatorForSeq2Seq), defaults (fp32);
- ``trl_sft``          TRL ``SFTTrainer`` defaults (prompt/completion dataset), when trl is installed;
- ``hf_trainer_bf16``  HF ``Trainer`` with ``bf16=True`` (not run by default; ``--variants`` adds it).

Data: synthetic prompt/completion records whose lengths are spread uniformly over 16-100% of the
context (256 tokens, as in the reference CPU figures), completion ~25% of each record.
Token-counting rule, same on every side: all non-padding tokens a step processes (prompt +
completion + special tokens). MFU = FLOPs/token x tokens/s ÷ the best matmul peak measured in this
run (bf16 where the CPU has it natively, else fp32), with FLOPs/token = 6·N for full fine-tuning
and 4·N for LoRA (frozen weights get no weight gradients), N = model parameters; attention FLOPs
ignored here (the job logs count them).

``--check`` exits 1 when the losses disagree (a broken run), or when an in-run ratio falls below a
lenient floor (``FLOORS``) on a quiet machine: never on an absolute time. A ratio missed while other
processes held the CPU (``common.CpuContention``) exits 3 instead: too noisy to judge.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    CpuContention,
    check_status,
    environment,
    final_json,
    fmt,
    interleave,
    matmul_peak_flops,
    peak_rss_mb,
    run_child,
    stats,
)

CONTEXT = 256
BATCH = 8
LR = 3e-3
SEED = 7
MODEL_CACHE = Path(tempfile.gettempdir()) / "tuneforge-bench-models"


def synthetic_records(count: int, seed: int = SEED) -> list[dict[str, str]]:
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz     "
    records = []
    for _ in range(count):
        total = rng.randint(int(0.16 * CONTEXT), CONTEXT - 2)  # bytes == tokens; +<bos> +<eos>
        completion = max(1, total // 4)
        text = "".join(rng.choice(alphabet) for _ in range(total))
        records.append({"prompt": text[: total - completion], "completion": text[total - completion :]})
    return records


def padding_fraction(records: list[dict[str, str]], batch: int, grouped: bool, seed: int = SEED) -> float:
    """Share of the tokens of an epoch's batches that are padding: the recipe's own batches (as the
    ``tuneforge`` variant builds them, ``grouped``) or random ones (``tuneforge_padded``)."""
    from tuneforge.recipes.batching import length_grouped_batches

    lengths = [len(r["prompt"]) + len(r["completion"]) + 2 for r in records]
    batches = length_grouped_batches(lengths, batch, seed, 0, group_batches=16 if grouped else 1)
    real = sum(lengths)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1 - real / padded


# -- children ------------------------------------------------------------------------------------


class Clock:
    """Step timestamps and token counts after warm-up, the same way for every variant."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.marks: list[tuple[int, float, int]] = []
        self.losses: list[float] = []

    def step(self, step: int, tokens_seen: int, loss: float) -> None:
        self.marks.append((step, time.perf_counter(), tokens_seen))
        self.losses.append(loss)

    def result(self) -> dict[str, Any]:
        measured = [m for m in self.marks if m[0] >= self.warmup]
        (s0, t0, n0), (s1, t1, n1) = measured[0], measured[-1]
        tail = self.losses[-5:]
        return {
            "tokens_per_s": (n1 - n0) / (t1 - t0),
            "steps_timed": s1 - s0,
            "loss": sum(tail) / len(tail),
            "losses": self.losses,
            "peak_rss_mb": peak_rss_mb(),
        }


def base_model_dir(name: str) -> Path:
    from tuneforge.model.builtin import ensure_builtin

    return ensure_builtin(name, MODEL_CACHE)


def child_tuneforge(args: argparse.Namespace, method: str, grouping: bool, precision: str = "auto") -> dict[str, Any]:
    from tuneforge.catalog.hyperparameters import resolve
    from tuneforge.catalog.models import BUILTIN_MODELS, FINE_TUNING
    from tuneforge.data.tasks import write_jsonl
    from tuneforge.recipes.base import RecipeInputs
    from tuneforge.recipes.fine_tuning import FineTuningRecipe

    model = next(m for m in BUILTIN_MODELS if m.source == f"builtin:{args.model}")
    clock = Clock(args.warmup)

    class Reporter:
        def stage(self, stage: str, status: str) -> None: ...

        def log(self, message: str) -> None: ...

        def should_stop(self) -> bool:
            return False

        def progress(self, *, step: int, tokens_seen: int, loss: float, **_: Any) -> None:
            clock.step(step, tokens_seen, loss)

    hyper = resolve(
        model.hyperparameter_specs(FINE_TUNING),
        {
            "epochCount": "1",
            "batchSize": str(BATCH),
            "learningRate": str(LR if method == "lora" else LR / 3),
            "trainingMethod": method,
            "lengthGrouping": str(grouping).lower(),
            "precision": precision,
            "seed": str(SEED),
            "checkpointEverySteps": "1000000",
        },
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_jsonl(work / "train.jsonl", synthetic_records(BATCH * args.steps))
        inputs = RecipeInputs(
            job_id="benchmark000",
            customization_type=FINE_TUNING,
            base_model=model,
            base_model_dir=base_model_dir(args.model),
            training_file=work / "train.jsonl",
            validation_files=(),
            output_dir=work / "out",
            model_dir=work / "model",
            checkpoint_dir=work / "ckpt",
            hyperparameters=hyper,
            num_threads=args.threads,
        )
        FineTuningRecipe().run(inputs, Reporter())  # type: ignore[arg-type]
    return clock.result()


def _lora_model(args: argparse.Namespace) -> tuple[Any, Any]:
    import torch
    from peft import LoraConfig, get_peft_model

    from tuneforge.model.loading import load_model_and_tokenizer, quiet_peft

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model_and_tokenizer(base_model_dir(args.model))
    torch.manual_seed(SEED)
    config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    with quiet_peft():
        model = get_peft_model(model, config)
    return model, tokenizer


def child_plain(args: argparse.Namespace) -> dict[str, Any]:
    """A plain loop over exactly the batches the recipe builds, in the recipe's precision: the
    framework-overhead baseline. Only the batch order and padding come from tuneforge."""
    import contextlib

    import torch
    from transformers import get_cosine_schedule_with_warmup

    from tuneforge.recipes.batching import collate, length_grouped_batches
    from tuneforge.recipes.performance import resolve_precision
    from tuneforge.recipes.tokenising import encode_record

    model, tokenizer = _lora_model(args)
    examples = [encode_record(r, tokenizer, CONTEXT) for r in synthetic_records(BATCH * args.steps)]
    batches = length_grouped_batches([len(e.input_ids) for e in examples], BATCH, SEED, 0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, 5, len(batches))
    bf16 = resolve_precision("auto", torch.device("cpu")) == "bf16"
    clock = Clock(args.warmup)
    model.train()
    tokens = 0
    for step, batch in enumerate(batches, start=1):
        inputs = collate([examples[i] for i in batch], tokenizer.pad_token_id)
        # Right padding under causal attention needs no mask (as in the recipe).
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = model(input_ids=inputs["input_ids"], labels=inputs["labels"], use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(inputs["attention_mask"].sum())
        clock.step(step, tokens, float(loss.detach()))
    return clock.result()


def child_hf_trainer(args: argparse.Namespace, trl: bool, bf16: bool = False) -> dict[str, Any]:
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from tuneforge.recipes.tokenising import encode_record

    model, tokenizer = _lora_model(args)
    records = synthetic_records(BATCH * args.steps)
    clock = Clock(args.warmup)
    counted = {"tokens": 0, "step": 0}

    def count(inputs: dict[str, Any]) -> None:
        counted["tokens"] += int(inputs["attention_mask"].sum())

    def after_step(loss: torch.Tensor) -> None:
        counted["step"] += 1
        clock.step(counted["step"], counted["tokens"], float(loss))

    common = dict(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=BATCH,
        max_steps=args.steps,
        learning_rate=LR,
        warmup_steps=5,
        lr_scheduler_type="cosine",
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1_000_000,
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        seed=SEED,
        use_cpu=not torch.cuda.is_available(),
        bf16=bf16,
        disable_tqdm=True,
    )
    if trl:
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        class TimedSFT(SFTTrainer):  # type: ignore[misc]
            def training_step(self, model: Any, inputs: dict[str, Any], *rest: Any, **kw: Any) -> torch.Tensor:
                count(inputs)
                loss: torch.Tensor = super().training_step(model, inputs, *rest, **kw)
                after_step(loss)
                return loss

        trainer: Trainer = TimedSFT(
            model=model,
            args=SFTConfig(max_length=CONTEXT, **common),  # type: ignore[arg-type]
            train_dataset=Dataset.from_list(records),
            processing_class=tokenizer,
        )
    else:

        class TimedTrainer(Trainer):
            def training_step(self, model: Any, inputs: dict[str, Any], *rest: Any, **kw: Any) -> torch.Tensor:
                count(inputs)
                loss: torch.Tensor = super().training_step(model, inputs, *rest, **kw)
                after_step(loss)
                return loss

        encoded = []
        for record in records:
            example = encode_record(record, tokenizer, CONTEXT)
            encoded.append({"input_ids": example.input_ids, "labels": example.labels})
        trainer = TimedTrainer(
            model=model,
            args=TrainingArguments(**common),  # type: ignore[arg-type]
            train_dataset=encoded,
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        )
    trainer.train()
    return clock.result()


def child(args: argparse.Namespace) -> None:
    runners = {
        "tuneforge": lambda: child_tuneforge(args, "lora", True),
        "tuneforge_fp32": lambda: child_tuneforge(args, "lora", True, "fp32"),
        "tuneforge_padded": lambda: child_tuneforge(args, "lora", False),
        "tuneforge_full": lambda: child_tuneforge(args, "full", True),
        "plain": lambda: child_plain(args),
        "hf_trainer": lambda: child_hf_trainer(args, trl=False),
        "trl_sft": lambda: child_hf_trainer(args, trl=True),
        "hf_trainer_bf16": lambda: child_hf_trainer(args, trl=False, bf16=True),
    }
    print(json.dumps(runners[args.child]()))


# -- parent --------------------------------------------------------------------------------------


FLOORS = {
    # Lenient in-run floors for --check (CI smoke): far below the targets, so only a real
    # regression or a broken variant trips them. Targets: vs HF Trainer >= 1.5x, vs plain >= 0.9x.
    "tuneforge_vs_hf_trainer": 1.1,
    "grouped_vs_padded": 1.1,
    "tuneforge_vs_plain": 0.6,
}
LOSS_PARITY_TOLERANCE = 1e-3
"""|loss(tuneforge) - loss(plain loop)| at the last step: the same batches and precision, so equal
up to the order of floating-point sums."""
MATCHING_LOSS_TOLERANCE = 0.05
"""Relative difference allowed between tuneforge's and HF Trainer's mean loss over the last steps
(different batch order, so close rather than equal)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child")
    parser.add_argument("--model", default="forge-small")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", help="comma-separated subset of the variants to run")
    parser.add_argument("--quick", action="store_true", help="CI smoke: 16 steps, 1 repeat, four variants.")
    parser.add_argument("--check", action="store_true", help="exit 1 when a ratio falls below its floor")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    # The CPU benchmark: every variant on the CPU, even on a GPU host (benchmarks/gpu_bench.py is the GPU one).
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

    variants = ["tuneforge", "hf_trainer", "plain", "tuneforge_padded", "tuneforge_fp32", "tuneforge_full"]
    if args.quick:
        args.steps, args.warmup, args.repeats = 16, 3, 1
        variants = ["tuneforge", "hf_trainer", "plain", "tuneforge_padded"]
    else:
        try:
            import datasets  # noqa: F401
            import trl  # noqa: F401

            variants.append("trl_sft")
        except ImportError:
            print("trl/datasets not installed: skipping the TRL row (pip install -r benchmarks/requirements.txt)")
    if args.variants:
        variants = args.variants.split(",")

    from tuneforge.catalog.models import BUILTIN_MODELS
    from tuneforge.recipes.performance import native_bf16

    model = next(m for m in BUILTIN_MODELS if m.source == f"builtin:{args.model}")
    n_params = model.parameter_count or 0
    base_model_dir(args.model)  # create once, outside any timing
    import torch

    bf16 = native_bf16(torch.device("cpu"))
    peaks = {"fp32": matmul_peak_flops(args.threads, dtype_name="fp32")}
    if bf16:
        peaks["bf16"] = matmul_peak_flops(args.threads, dtype_name="bf16")
    peak = max(peaks.values())
    pad = padding_fraction(synthetic_records(BATCH * args.steps), BATCH, grouped=False)
    grouped_pad = padding_fraction(synthetic_records(BATCH * args.steps), BATCH, grouped=True)
    print(
        f"fine-tuning {args.model} ({n_params / 1e6:.1f}M params), batch {BATCH}, {args.steps} steps "
        f"({args.warmup} warm-up), {args.threads} threads, {args.repeats} repeats; "
        f"precision=auto computes in {'bf16' if bf16 else 'fp32'} here"
    )
    print(
        f"random batches waste {pad:.0%} of their tokens on padding, length-grouped ones {grouped_pad:.0%}; "
        "matmul peaks "
        + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items())
        + " (MFU is against the higher)"
    )

    script = Path(__file__)
    child_args = [
        "--model",
        args.model,
        "--threads",
        str(args.threads),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
    ]
    with CpuContention(args.threads) as contention:
        results = interleave(variants, args.repeats, lambda v, _r: run_child(script, ["--child", v, *child_args]))

    rows: dict[str, Any] = {}
    for variant, runs in results.items():
        tps = stats([r["tokens_per_s"] for r in runs])
        flops_per_token = (6 if variant == "tuneforge_full" else 4) * n_params
        rows[variant] = {
            "tokens_per_s": tps,
            "mfu": tps["median"] * flops_per_token / peak,
            "loss": stats([r["loss"] for r in runs]),
            "peak_rss_mb": stats([r["peak_rss_mb"] for r in runs]),
        }

    def ratio(a: str, b: str) -> float | None:
        if a not in rows or b not in rows:
            return None
        return float(rows[a]["tokens_per_s"]["median"] / rows[b]["tokens_per_s"]["median"])

    ratios = {
        "tuneforge_vs_hf_trainer": ratio("tuneforge", "hf_trainer"),
        "tuneforge_vs_trl_sft": ratio("tuneforge", "trl_sft"),
        "tuneforge_vs_plain": ratio("tuneforge", "plain"),
        "grouped_vs_padded": ratio("tuneforge", "tuneforge_padded"),
        "padding_prediction": (1 - grouped_pad) / (1 - pad),
        "bf16_vs_fp32": ratio("tuneforge", "tuneforge_fp32"),
        "fp32_grouped_vs_hf_trainer": ratio("tuneforge_fp32", "hf_trainer"),
        "tuneforge_vs_hf_trainer_bf16": ratio("tuneforge", "hf_trainer_bf16"),
        "lora_vs_full": ratio("tuneforge", "tuneforge_full"),
    }
    parity = None
    if "tuneforge" in results and "plain" in results:
        parity = abs(results["tuneforge"][0]["losses"][-1] - results["plain"][0]["losses"][-1])
    matching = None
    if "tuneforge" in rows and "hf_trainer" in rows:
        tf_loss, hf_loss = rows["tuneforge"]["loss"]["median"], rows["hf_trainer"]["loss"]["median"]
        matching = abs(tf_loss - hf_loss) / hf_loss

    print(f"\n{'variant':<18}{'real tokens/s  median [min, max]':<36}{'MFU':>7}{'loss':>9}{'peak RSS MB':>13}")
    for variant, row in rows.items():
        print(
            f"{variant:<18}{fmt(row['tokens_per_s']):<36}{row['mfu']:>7.1%}{row['loss']['median']:>9.4f}"
            f"{row['peak_rss_mb']['median']:>13.0f}"
        )
    print()
    for name, value in ratios.items():
        if value is not None:
            floor = FLOORS.get(name)
            print(f"{name:<28}{value:6.2f}x" + (f"   (floor {floor}x)" if floor else ""))
    if parity is not None:
        print(f"loss parity tuneforge vs plain loop (same batches, last step): |diff| = {parity:.2e}")
    if matching is not None:
        print(f"mean loss of the last steps, tuneforge vs HF Trainer: {matching:.1%} apart")

    print(f"CPU: {contention.describe()}")

    slow = [
        f"{name} = {ratios[name]:.2f}x < floor {floor}x"
        for name, floor in FLOORS.items()
        if ratios.get(name) is not None and ratios[name] < floor  # type: ignore[operator]
    ]
    broken = []
    if parity is not None and parity > LOSS_PARITY_TOLERANCE:
        broken.append(f"loss parity with the plain loop {parity:.2e} > {LOSS_PARITY_TOLERANCE}")
    if matching is not None and matching > MATCHING_LOSS_TOLERANCE:
        broken.append(f"loss vs HF Trainer {matching:.1%} apart > {MATCHING_LOSS_TOLERANCE:.0%}")
    final_json(
        {
            "benchmark": "train",
            "env": environment(args.threads),
            "model": args.model,
            "parameters": n_params,
            "steps": args.steps,
            "repeats": args.repeats,
            "padding_fraction": pad,
            "padding_fraction_grouped": grouped_pad,
            "matmul_peak_flops": peaks,
            "rows": rows,
            "ratios": ratios,
            "loss_parity_abs_diff": parity,
            "loss_vs_hf_trainer_rel_diff": matching,
            "check_failures": broken + slow,
            "cpu_contention": contention.report(),
        }
    )
    if args.check:
        sys.exit(check_status(broken, slow, contention))


if __name__ == "__main__":
    main()
