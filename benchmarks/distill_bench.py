"""Distillation: the teacher's answers one prompt at a time against tuneforge's batched generation.

    python benchmarks/distill_bench.py            # forge-small teacher, 48 prompts x 48 tokens, 2 threads, 3 repeats
    python benchmarks/distill_bench.py --kd       # and the KD vs SFT step row (what make bench runs)
    python benchmarks/distill_bench.py --quick    # CI smoke: 32 prompts x 32 tokens, 1 repeat

Variants, each repeat in its own process, interleaved, each after a short warm-up:
- ``sequential``  HF ``generate`` one prompt at a time, greedy, the loop a plain script would write;
- ``tuneforge``   :func:`tuneforge.recipes.distillation.teacher_answers`, the function a DISTILLATION job
  calls for its teacher's answers, at the recipe's default ``teacherBatchSize``;
- ``kd_sft`` (with ``--kd``): training steps of a forge-micro student (full, batch 8) on
  cross-entropy alone (SFT) and with logit distillation from the forge-small teacher (KD: the teacher's
  forward pass added), alternating on the same batches, against the prediction
  KD/SFT = 1 + N_teacher / (3 N_student) (a forward pass costs ~2N FLOPs per token, forward + backward ~6N).

Prompts: synthetic single-turn conversations, rendered as a job renders them, whose token lengths are
spread uniformly over 32-256 tokens. Every answer is capped at ``--tokens`` new tokens, as
``maxResponseLengthForInference`` caps a job's. Token rule, the same on both sides: tokens a prompt's
answer generated, its closing EOS included, padding never (``Completion.tokens``; for the baseline, the
output's length minus the prompt's). The random-init teacher seldom ends an answer early, so both sides
write about prompts x tokens. The last line is one JSON object. With ``--check`` the exit status is 1
when the two sides' answers differ, or when batched/sequential falls under 1.5x on a quiet machine (a
broken run, never an absolute time); 3 when the ratio missed only while other processes held the CPU
(``common.CpuContention``: too noisy to judge).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CpuContention, check_status, environment, final_json, fmt, interleave, peak_rss_mb, run_child, stats

SEED = 7
BATCH = 8
"""Training batch of the KD/SFT step row."""
FLOOR = 1.5
"""Exit status 1 below this batched/sequential ratio (a broken batching path), or when answers differ."""
TEACHER, STUDENT = "forge-small", "forge-micro"
MODEL_CACHE = Path(tempfile.gettempdir()) / "tuneforge-bench-models"
LENGTHS = (32, 256)
"""Prompt lengths in tokens (BOS and the 18-token conversation rendering included), uniform over this range."""


def conversation(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": [{"text": text}]}]}


def synthetic_prompts(count: int, seed: int = SEED) -> list[str]:
    """Rendered prompts whose token counts are uniform over LENGTHS (one token per byte, plus BOS)."""
    from tuneforge.model.prompts import render_prompt

    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz     "
    overhead = len(render_prompt(conversation(""))) + 1
    return [
        render_prompt(conversation("".join(rng.choice(alphabet) for _ in range(rng.randint(*LENGTHS) - overhead))))
        for _ in range(count)
    ]


def padding_fraction(lengths: list[int], batches: list[list[int]]) -> float:
    real = sum(lengths)
    padded = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)
    return 1 - real / padded


def default_teacher_batch_size() -> int:
    from tuneforge.catalog.hyperparameters import distillation_specs

    return int(next(spec.default for spec in distillation_specs() if spec.name == "teacherBatchSize"))


def load(name: str, threads: int) -> tuple[Any, Any]:
    """A built-in model loaded the way a job loads its teacher (eval mode)."""
    import torch

    from tuneforge.model.builtin import ensure_builtin
    from tuneforge.model.folders import load_for_inference

    torch.set_num_threads(threads)
    return load_for_inference(ensure_builtin(name, MODEL_CACHE), MODEL_CACHE)


# -- children ------------------------------------------------------------------------------------


def child_sequential(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from tuneforge.model.prompts import encode_prompt

    model, tokenizer = load(TEACHER, args.threads)
    texts = synthetic_prompts(args.prompts)

    def answer(text: str, tokens: int) -> tuple[str, int]:
        input_ids = torch.tensor([encode_prompt(tokenizer, text)])
        output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=tokens)
        new = output[0, input_ids.shape[1] :].tolist()
        ids = new[: new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new
        return str(tokenizer.decode(ids, skip_special_tokens=True)), len(new)

    for text in texts[:2]:  # warm-up
        answer(text, 4)
    started = time.perf_counter()
    results = [answer(text, args.tokens) for text in texts]
    seconds = time.perf_counter() - started
    return outcome([r[0] for r in results], sum(r[1] for r in results), seconds)


def child_tuneforge(args: argparse.Namespace) -> dict[str, Any]:
    from tuneforge.recipes.distillation import teacher_answers

    model, tokenizer = load(TEACHER, args.threads)
    texts = synthetic_prompts(args.prompts)
    teacher_answers(model, tokenizer, texts[:2], 4, args.batch_size)  # warm-up
    started = time.perf_counter()
    answers = teacher_answers(model, tokenizer, texts, args.tokens, args.batch_size)
    seconds = time.perf_counter() - started
    return outcome([a.text for a in answers], sum(a.tokens for a in answers), seconds)


def outcome(answers: list[str], tokens: int, seconds: float) -> dict[str, Any]:
    return {
        "tokens_per_s": tokens / seconds,
        "tokens": tokens,
        "seconds": seconds,
        "answers": answers,
        "peak_rss_mb": peak_rss_mb(),
    }


def child_steps(args: argparse.Namespace) -> dict[str, Any]:
    """Median time of a student training step on cross-entropy alone (SFT) and with logit distillation
    (KD), the two alternating step by step on the same batches, after one warm-up step of each."""
    import torch

    from tuneforge.model.builtin import ensure_builtin
    from tuneforge.model.loading import load_model_and_tokenizer
    from tuneforge.recipes.batching import collate, forward_inputs, target_count
    from tuneforge.recipes.distillation import LogitDistillationLoss
    from tuneforge.recipes.loop import causal_lm_loss
    from tuneforge.recipes.performance import autocast, resolve_precision
    from tuneforge.recipes.tokenising import encode_record

    teacher, _ = load(TEACHER, args.threads)
    student, tokenizer = load_model_and_tokenizer(ensure_builtin(STUDENT, MODEL_CACHE))
    student.train()
    texts = synthetic_prompts(BATCH * args.steps, seed=SEED + 1)
    examples = [encode_record({"prompt": t, "completion": t[-args.tokens :]}, tokenizer, 512) for t in texts]
    losses = {"sft": causal_lm_loss, "kd": LogitDistillationLoss(teacher, 0.5, 2.0)}
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    times: dict[str, list[float]] = {"sft": [], "kd": []}
    cpu = torch.device("cpu")
    precision = resolve_precision("auto", cpu)  # what a job on this machine computes in
    for step in range(args.steps):
        batch = collate(examples[BATCH * step : BATCH * step + BATCH], tokenizer.pad_token_id)
        targets = target_count(batch["labels"])
        inputs = forward_inputs(batch, cpu)  # as train() passes batches: right-padded, no mask
        for name, loss_function in losses.items():
            started = time.perf_counter()
            with autocast(cpu, precision):
                loss = loss_function(student, inputs, targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times[name].append(time.perf_counter() - started)
    return {f"{name}_step_s": statistics.median(t[1:]) for name, t in times.items()} | {"peak_rss_mb": peak_rss_mb()}


# -- parent --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--tokens", type=int, default=48, help="new tokens per answer at most")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the recipe's teacherBatchSize")
    parser.add_argument("--steps", type=int, default=6, help="KD/SFT step pairs per repeat (1 warm-up)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kd", action="store_true", help="also time KD against SFT training steps")
    parser.add_argument("--quick", action="store_true", help="CI smoke: 32 prompts x 32 tokens, 1 repeat")
    parser.add_argument("--check", action="store_true", help="exit 1 when answers differ or the ratio misses its floor")
    args = parser.parse_args()
    default_batch = default_teacher_batch_size()
    args.batch_size = args.batch_size or default_batch
    if args.child:
        runners = {
            "sequential": lambda: child_sequential(args),
            "tuneforge": lambda: child_tuneforge(args),
            "kd_sft": lambda: child_steps(args),
        }
        print(json.dumps(runners[args.child]()))
        return
    if args.quick:
        args.prompts, args.tokens, args.repeats = 32, 32, 1

    from tuneforge.catalog.models import BUILTIN_MODELS
    from tuneforge.engine.generation import length_sorted_batches
    from tuneforge.model.prompts import encode_prompt

    params = {m.source.removeprefix("builtin:"): m.parameter_count or 0 for m in BUILTIN_MODELS}
    load(STUDENT, args.threads)  # create both models once, outside any timing
    _, tokenizer = load(TEACHER, args.threads)
    lengths = [len(encode_prompt(tokenizer, text)) for text in synthetic_prompts(args.prompts)]
    in_order = [list(range(s, min(s + args.batch_size, len(lengths)))) for s in range(0, len(lengths), args.batch_size)]
    padding = {
        "in_file_order": padding_fraction(lengths, in_order),
        "length_sorted": padding_fraction(lengths, length_sorted_batches(lengths, args.batch_size)),
    }
    print(
        f"teacher generation: {TEACHER} ({params[TEACHER] / 1e6:.1f}M params), {args.prompts} prompts of "
        f"{min(lengths)}-{max(lengths)} tokens x up to {args.tokens} new tokens, teacherBatchSize {args.batch_size}"
        f"{' (the recipe default)' if args.batch_size == default_batch else ''}, {args.threads} threads, "
        f"{args.repeats} repeats"
    )
    print(
        f"batches in file order would waste {padding['in_file_order']:.0%} of prompt tokens on padding; "
        f"length-sorted batches waste {padding['length_sorted']:.0%}"
    )

    script = Path(__file__)
    child_args = ["--threads", str(args.threads), "--prompts", str(args.prompts), "--tokens", str(args.tokens)]
    child_args += ["--batch-size", str(args.batch_size), "--steps", str(args.steps)]
    variants = ["sequential", "tuneforge"] + (["kd_sft"] if args.kd else [])
    with CpuContention(args.threads) as contention:
        results = interleave(variants, args.repeats, lambda v, _r: run_child(script, ["--child", v, *child_args]))

    rows = {
        v: {"tokens_per_s": stats([r["tokens_per_s"] for r in results[v]]), "tokens": results[v][0]["tokens"]}
        for v in ("sequential", "tuneforge")
    }
    speedup = rows["tuneforge"]["tokens_per_s"]["median"] / rows["sequential"]["tokens_per_s"]["median"]
    same = sum(
        a == b for a, b in zip(results["sequential"][0]["answers"], results["tuneforge"][0]["answers"], strict=True)
    )
    print(f"\n{'variant':<12}{'generated tokens/s  median [min, max]':<40}{'tokens':>8}")
    for variant, row in rows.items():
        print(f"{variant:<12}{fmt(row['tokens_per_s']):<40}{row['tokens']:>8}")
    print(f"batched / sequential      {speedup:6.2f}x  (target >= 4 on 2 CPU threads; fails under {FLOOR:g})")
    print(f"answers equal to the sequential ones: {same} of {args.prompts}")
    print(f"CPU: {contention.describe()}")

    broken = [] if same == args.prompts else [f"{args.prompts - same} batched answers differ from the sequential ones"]
    slow = [] if speedup >= FLOOR else [f"batched/sequential {speedup:.2f}x < floor {FLOOR:g}x"]
    ok = not broken and not slow
    kd_row: dict[str, Any] | None = None
    if "kd_sft" in results:
        sft, kd = (stats([r[f"{v}_step_s"] for r in results["kd_sft"]]) for v in ("sft", "kd"))
        predicted = 1 + params[TEACHER] / (3 * params[STUDENT])
        kd_row = {"sft_step_s": sft, "kd_step_s": kd, "ratio": kd["median"] / sft["median"], "predicted": predicted}
        print(f"\nstudent {STUDENT} ({params[STUDENT] / 1e6:.2f}M params), batch {BATCH}, teacher {TEACHER}")
        print(f"SFT step {fmt(sft, ' s', 3)}, KD step {fmt(kd, ' s', 3)}")
        print(f"KD / SFT step {kd_row['ratio']:.2f}x, predicted 1 + N_t/(3 N_s) = {predicted:.2f}x")

    final_json(
        {
            "benchmark": "distill",
            "env": environment(args.threads),
            "cpu_contention": contention.report(),
            "teacher": TEACHER,
            "parameters": params,
            "prompts": args.prompts,
            "prompt_tokens": {"min": min(lengths), "max": max(lengths), "mean": sum(lengths) / len(lengths)},
            "max_new_tokens": args.tokens,
            "teacher_batch_size": args.batch_size,
            "padding_fraction": padding,
            "repeats": args.repeats,
            "rows": rows,
            "ratios": {"batched_vs_sequential": speedup},
            "answers_equal": same,
            "kd_vs_sft": kd_row,
            "ok": ok,
        }
    )
    if args.check:
        sys.exit(check_status(broken, slow, contention))


if __name__ == "__main__":
    main()
