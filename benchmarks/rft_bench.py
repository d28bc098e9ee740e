"""Reinforcement fine-tuning's sampling: one step's answers through the batched path against sequential ``generate``.

    python benchmarks/rft_bench.py                     # forge-small, 16 prompts x 4 answers x 32 tokens, 3 repeats
    python benchmarks/rft_bench.py --model smollm2     # SmolLM2-135M-Instruct (converted once, see smollm2.py)
    python benchmarks/rft_bench.py --quick --check     # smoke: 1 repeat, 16 tokens

One GRPO step samples ``trainingSamplePerPrompt`` answers to each of ``batchSize`` prompts. Variants,
each repeat in its own process, interleaved, each after a short warm-up:

- ``sequential``  HF ``generate`` once per answer (``do_sample=True``, temperature 1, no top-k/top-p), the
  loop a plain GRPO script would write;
- ``tuneforge``   :func:`tuneforge.engine.offline.sample_answers`, what a REINFORCEMENT_FINE_TUNING job
  calls each step: every answer a row of one continuous batch, seeded per answer.

Both sides sample the same prompts (conversations rendered through the model's chat template, as
served), the same number of answers, from the same distribution (temperature 1, no truncation),
capped at ``--tokens`` new tokens. Token rule, the same on both sides: tokens an answer generated,
its closing end-of-turn token included. Sampled answers differ between the sides (different random
streams), so the answers are not compared; both totals are printed. The ratio the target is stated
in is seconds per step, sequential / batched (target >= 2); tokens/s is printed beside it. With
``--check`` the exit status is 1 when the ratio falls under 1.5 on a quiet machine, 3 when it missed
only while other processes held the CPU. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CpuContention, check_status, environment, final_json, fmt, interleave, peak_rss_mb, run_child, stats

MODEL_CACHE = Path(tempfile.gettempdir()) / "tuneforge-bench-models"
TARGET = 2.0
FLOOR = 1.5
SEED = 5
QUESTIONS = (
    "What is {a} + {b}? Answer with the number only.",
    "Write one sentence about the number {a}.",
    "Give a word that rhymes with 'cat' and explain why in a few words, then add {b}.",
    "List three colours, then say {a} times {b}.",
)


def conversations(count: int) -> list[dict[str, Any]]:
    """Single-turn prompts of a few lengths, the shape of an RFT training file."""
    return [
        {
            "messages": [
                {"role": "user", "content": [{"text": QUESTIONS[i % len(QUESTIONS)].format(a=i + 2, b=3 * i + 1)}]}
            ]
        }
        for i in range(count)
    ]


def load(args: argparse.Namespace) -> tuple[Any, Any]:
    import torch

    from tuneforge.model.builtin import ensure_builtin
    from tuneforge.model.loading import load_model_and_tokenizer

    torch.set_num_threads(args.threads)
    if args.model == "smollm2":
        from smollm2 import smollm2_dir

        folder = smollm2_dir(MODEL_CACHE)
    else:
        folder = ensure_builtin(args.model, MODEL_CACHE)
    model, tokenizer = load_model_and_tokenizer(folder)
    model.eval()
    return model, tokenizer


def rendered(tokenizer: Any, count: int) -> list[tuple[list[int], bool]]:
    from tuneforge.model.prompts import serving_prompt

    prompts = [serving_prompt(tokenizer, conversation=c) for c in conversations(count)]
    return [(p.ids, p.strip_leading_space) for p in prompts]


def child_sequential(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import GenerationConfig

    from tuneforge.engine.batching import stop_token_ids

    model, tokenizer = load(args)
    prompts = rendered(tokenizer, args.prompts)
    stops = sorted(stop_token_ids(model, tokenizer))

    def sample(ids: list[int], tokens: int) -> int:
        config = GenerationConfig(  # type: ignore[no-untyped-call]
            max_new_tokens=tokens,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            eos_token_id=stops,
            pad_token_id=tokenizer.pad_token_id,
        )
        input_ids = torch.tensor([ids])
        with torch.no_grad():
            output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config)
        new = output[0, input_ids.shape[1] :].tolist()
        return next((at + 1 for at, token in enumerate(new) if token in stops), len(new))

    torch.manual_seed(SEED)
    sample(prompts[0][0], 2)  # warm-up
    started = time.perf_counter()
    tokens = sum(sample(ids, args.tokens) for ids, _ in prompts for _ in range(args.samples))
    return outcome(tokens, time.perf_counter() - started)


def child_tuneforge(args: argparse.Namespace) -> dict[str, Any]:
    from tuneforge.engine.offline import offline_batcher, sample_answers

    model, tokenizer = load(args)
    prompts = rendered(tokenizer, args.prompts)
    batcher = offline_batcher(model, tokenizer, max_batch=args.prompts * args.samples)
    sample_answers(batcher, prompts[:1], 1, 2, 1.0, seed=SEED)  # warm-up
    started = time.perf_counter()
    answers = sample_answers(batcher, prompts, args.samples, args.tokens, 1.0, seed=SEED)
    seconds = time.perf_counter() - started
    assert answers is not None
    return outcome(sum(len(a.token_ids) for group in answers for a in group), seconds)


def outcome(tokens: int, seconds: float) -> dict[str, Any]:
    return {"tokens_per_s": tokens / seconds, "tokens": tokens, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child")
    parser.add_argument("--model", default="forge-small", help="forge-small, forge-micro or smollm2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=16, help="batchSize: prompts per step (Bedrock's minimum)")
    parser.add_argument("--samples", type=int, default=4, help="trainingSamplePerPrompt")
    parser.add_argument("--tokens", type=int, default=32, help="inferenceMaxTokens")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke: 16 tokens, 1 repeat")
    parser.add_argument("--check", action="store_true", help="exit 1 when the ratio misses its floor")
    args = parser.parse_args()
    if args.child:
        runners = {"sequential": child_sequential, "tuneforge": child_tuneforge}
        print(json.dumps(runners[args.child](args)))
        return
    if args.quick:
        args.tokens, args.repeats = 16, 1

    _, tokenizer = load(args)  # create or convert the model once, outside any timing
    lengths = [len(ids) for ids, _ in rendered(tokenizer, args.prompts)]
    print(
        f"RFT sampling: {args.model}, {args.prompts} prompts of {min(lengths)}-{max(lengths)} tokens x "
        f"{args.samples} answers x up to {args.tokens} new tokens at temperature 1, {args.threads} threads, "
        f"{args.repeats} repeats"
    )
    script = Path(__file__)
    child_args = ["--model", args.model, "--threads", str(args.threads), "--prompts", str(args.prompts)]
    child_args += ["--samples", str(args.samples), "--tokens", str(args.tokens)]
    with CpuContention(args.threads) as contention:
        results = interleave(
            ["sequential", "tuneforge"], args.repeats, lambda v, _r: run_child(script, ["--child", v, *child_args])
        )
    rows = {
        v: {
            "seconds": stats([r["seconds"] for r in results[v]]),
            "tokens_per_s": stats([r["tokens_per_s"] for r in results[v]]),
            "tokens": [r["tokens"] for r in results[v]],
        }
        for v in ("sequential", "tuneforge")
    }
    speedup = rows["sequential"]["seconds"]["median"] / rows["tuneforge"]["seconds"]["median"]
    throughput = rows["tuneforge"]["tokens_per_s"]["median"] / rows["sequential"]["tokens_per_s"]["median"]
    print(f"\n{'variant':<12}{'seconds per step  median [min, max]':<40}{'tokens/s  median [min, max]':<36}tokens")
    for variant, row in rows.items():
        print(f"{variant:<12}{fmt(row['seconds'], ' s', 2):<40}{fmt(row['tokens_per_s']):<36}{row['tokens']}")
    print(f"sequential / batched seconds per step {speedup:6.2f}x  (target >= {TARGET:g}; fails under {FLOOR:g})")
    print(f"batched / sequential tokens/s         {throughput:6.2f}x")
    print(f"CPU: {contention.describe()}")
    slow = [] if speedup >= FLOOR else [f"sequential/batched {speedup:.2f}x < floor {FLOOR:g}x"]
    final_json(
        {
            "benchmark": "rft_sampling",
            "env": environment(args.threads),
            "cpu_contention": contention.report(),
            "model": args.model,
            "prompts": args.prompts,
            "samples_per_prompt": args.samples,
            "max_new_tokens": args.tokens,
            "repeats": args.repeats,
            "rows": rows,
            "ratios": {"sequential_over_batched_seconds": speedup, "batched_over_sequential_tokens_per_s": throughput},
            "ok": not slow and speedup >= TARGET,
        }
    )
    if args.check:
        sys.exit(check_status([], slow, contention))


if __name__ == "__main__":
    main()
