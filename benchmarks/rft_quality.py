"""Reinforcement fine-tuning's quality bar: the held-out mean reward of a verifiable task, before and after.

    python benchmarks/rft_quality.py                   # SmolLM2-135M-Instruct, number comparisons, yes or no
    python benchmarks/rft_quality.py --model forge-micro --train 16 --held-out 8 --epochs 1 --samples 2 --tokens 4
                                                       # smoke: the pipeline end to end in seconds (no gain expected)

The task: "Is a greater than b? Answer yes or no.", two-digit numbers, half the answers "yes",
graded by the built-in exact-match grader against ``reference_answer`` with ``inferenceMaxTokens`` 1:
the answer's first token is the verdict. Probed before writing this (SmolLM2, 24 random pairs, two
thirds of them "no"): greedy, the base model answered "No" (right on 2/3, the share of "no"), and its
sampled answers started with the right word a quarter of the time ("yes", "No", "Yes", but also
"To", "0"...), which gives GRPO something to compare. Arithmetic ("What is 3 + 4? Answer with the number
only.") was probed too and dropped: SmolLM2-135M wraps the sum in a sentence or starts by echoing
the question, so neither its greedy nor its sampled answers ever matched exactly, and a group whose
answers all score 0 teaches nothing. Training and held-out prompts use disjoint pairs (a, b),
drawn with ``--seed``.

The run is the REINFORCEMENT_FINE_TUNING recipe itself (:class:`tuneforge.recipes.reinforcement.
ReinforcementFineTuningRecipe`, in this process, LoRA), with the hyperparameters given here. Held-out
reward is measured the way the job's validation measures it: greedy answers through the engines'
batcher, the base model as served and the trained model loaded from its saved folder as served, both
graded by the same grader. Target (issue 15): gain >= 0.3. The last line is one JSON object; with
``--check`` the exit status is 1 when the gain misses the target.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, final_json

MODEL_CACHE = Path(tempfile.gettempdir()) / "tuneforge-bench-models"
EXACT_MATCH = {"lambdaGrader": {"lambdaArn": "arn:aws:lambda:us-east-1:123456789012:function:tuneforge-exact-match"}}
TARGET = 0.3


def parity_records(numbers: list[int]) -> list[dict[str, Any]]:
    return [
        {
            "messages": [{"role": "user", "content": f"Is {n} an even number? Answer yes or no."}],
            "reference_answer": "yes" if n % 2 == 0 else "no",
        }
        for n in numbers
    ]


def balanced_numbers(count: int, rng: random.Random, taken: set[int]) -> list[int]:
    """``count`` distinct numbers from 10 to 999 not in ``taken``, alternately even and odd."""
    numbers: list[int] = []
    while len(numbers) < count:
        n = rng.randint(10, 999)
        if n in taken or (n % 2 == 0) != (len(numbers) % 2 == 0):
            continue
        taken.add(n)
        numbers.append(n)
    return numbers


def records(pairs: list[tuple[int, int]]) -> list[dict[str, Any]]:
    return [
        {
            "messages": [{"role": "user", "content": f"Is {a} greater than {b}? Answer yes or no."}],
            "reference_answer": "yes" if a > b else "no",
        }
        for a, b in pairs
    ]


def balanced_pairs(count: int, rng: random.Random, taken: set[tuple[int, int]]) -> list[tuple[int, int]]:
    """``count`` distinct pairs of two-digit numbers not in ``taken``, alternately a > b and a < b."""
    pairs: list[tuple[int, int]] = []
    while len(pairs) < count:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if a == b or (a, b) in taken or (a > b) != (len(pairs) % 2 == 0):
            continue
        taken.add((a, b))
        pairs.append((a, b))
    return pairs


def held_out_reward(model_dir: Path, models_dir: Path, prompts: list[dict[str, Any]], tokens: int) -> float:
    """Mean exact-match reward of greedy answers, the model loaded and prompted as it is served."""
    from tuneforge.data.formats import parse_rft_prompt
    from tuneforge.engine.offline import offline_batcher, sample_answers
    from tuneforge.graders import Sample, load_grader
    from tuneforge.model.folders import load_for_inference, trained_format
    from tuneforge.model.prompts import serving_prompt
    from tuneforge.recipes.reinforcement import conversation

    model, tokenizer = load_for_inference(model_dir, models_dir)
    fmt = trained_format(model_dir)
    parsed = [parse_rft_prompt(r) for r in prompts]
    rendered = [serving_prompt(tokenizer, conversation=conversation(p), trained_format=fmt) for p in parsed]
    batcher = offline_batcher(model, tokenizer, max_batch=64, trained_format=fmt)
    answers = sample_answers(batcher, [(r.ids, r.strip_leading_space) for r in rendered], 1, tokens, 0.0, seed=0)
    assert answers is not None
    grades = load_grader(EXACT_MATCH).grade(
        [Sample(messages=p.turns, response=a[0].text, item=p.item) for p, a in zip(parsed, answers, strict=True)]
    )
    return statistics.fmean(g.score or 0.0 for g in grades)


class PrintingReporter:
    def stage(self, stage: str, status: str) -> None:
        pass

    def progress(self, *, step: int, total_steps: int, loss: float, extra: Any = None, **_: Any) -> None:
        reward = (extra or {}).get("rewardMean", float("nan"))
        print(f"  step {step}/{total_steps}: reward {reward:.3f}  loss {loss:.4f}", flush=True)

    def data_progress(self, **_: Any) -> None:
        pass

    def log(self, message: str) -> None:
        print(f"  {message}", flush=True)

    def should_stop(self) -> bool:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="smollm2, forge-small or forge-micro")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--task", default="parity", choices=("parity", "compare"))
    parser.add_argument("--train", type=int, default=64, help="training prompts")
    parser.add_argument("--held-out", type=int, default=32, help="held-out prompts")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16, help="batchSize (prompts per step)")
    parser.add_argument("--samples", type=int, default=8, help="trainingSamplePerPrompt")
    parser.add_argument("--tokens", type=int, default=1, help="inferenceMaxTokens (1: the verdict word)")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--kl", type=float, default=0.05, help="klCoefficient")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--check", action="store_true", help=f"exit 1 when the gain is under {TARGET}")
    args = parser.parse_args()

    import torch

    from tuneforge.catalog.hyperparameters import as_strings, reinforcement_specs, resolve
    from tuneforge.catalog.models import BUILTIN_MODELS, REINFORCEMENT_FINE_TUNING, SMOLLM2
    from tuneforge.data.tasks import write_jsonl
    from tuneforge.model.builtin import ensure_builtin
    from tuneforge.recipes.base import RecipeInputs
    from tuneforge.recipes.reinforcement import ReinforcementFineTuningRecipe

    torch.set_num_threads(args.threads)
    if args.model == "smollm2":
        from smollm2 import smollm2_dir

        base_dir, source = smollm2_dir(MODEL_CACHE), f"builtin:{SMOLLM2}"
    else:
        base_dir, source = ensure_builtin(args.model, MODEL_CACHE), f"builtin:{args.model}"
    base = next(m for m in BUILTIN_MODELS if m.source == source)
    rng = random.Random(args.seed)
    if args.task == "parity":
        seen = set[int]()
        train, held_out = (parity_records(balanced_numbers(n, rng, seen)) for n in (args.train, args.held_out))
    else:
        taken = set[tuple[int, int]]()
        train, held_out = (records(balanced_pairs(n, rng, taken)) for n in (args.train, args.held_out))
    values = {
        "epochCount": args.epochs,
        "batchSize": args.batch,
        "trainingSamplePerPrompt": args.samples,
        "inferenceMaxTokens": args.tokens,
        "learningRate": args.learning_rate,
        "klCoefficient": args.kl,
        "seed": args.seed,
    }
    specs = reinforcement_specs(pretrained=args.model == "smollm2")
    hyperparameters = resolve(specs, as_strings(values))
    print(
        f"RFT quality: {base.model_id}, {len(train)} training and {len(held_out)} held-out {args.task} prompts, "
        f"{args.epochs} epochs of batch {args.batch} x {args.samples} answers, {args.threads} threads"
    )

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        started = time.perf_counter()
        before = held_out_reward(base_dir, MODEL_CACHE, held_out, args.tokens)
        print(f"base model: held-out reward {before:.3f}", flush=True)
        inputs = RecipeInputs(
            job_id="rftquality00",
            customization_type=REINFORCEMENT_FINE_TUNING,
            base_model=base,
            base_model_dir=base_dir,
            training_file=write_jsonl(root / "train.jsonl", train),
            validation_files=(),
            output_dir=root / "output",
            model_dir=root / "model",
            checkpoint_dir=root / "checkpoints",
            hyperparameters=hyperparameters,
            num_threads=args.threads,
            grader_config=EXACT_MATCH,
        )
        ReinforcementFineTuningRecipe().run(inputs, PrintingReporter())  # type: ignore[arg-type]
        after = held_out_reward(root / "model", MODEL_CACHE, held_out, args.tokens)
        seconds = time.perf_counter() - started
    gain = after - before
    print(f"trained model: held-out reward {after:.3f}; gain {gain:+.3f} (target >= {TARGET}) in {seconds:.0f} s")
    final_json(
        {
            "benchmark": "rft_quality",
            "env": environment(args.threads),
            "model": base.model_id,
            "hyperparameters": values,
            "train_prompts": len(train),
            "held_out_prompts": len(held_out),
            "held_out_reward": {"base": before, "trained": after, "gain": gain},
            "seconds": seconds,
            "ok": gain >= TARGET,
        }
    )
    if args.check and gain < TARGET:
        sys.exit(1)


if __name__ == "__main__":
    main()
