"""Reinforcement fine-tuning's quality bar: the held-out mean reward of a verifiable task, before and after.

    python benchmarks/rft_quality.py --epochs 6 --learning-rate 1e-3   # SmolLM2-135M-Instruct, larger (the bar)
    python benchmarks/rft_quality.py --task animals --epochs 6 --learning-rate 1e-3
    python benchmarks/rft_quality.py --model forge-micro --task parity --train 16 --held-out 8 --epochs 1 --samples 2
                                                       # smoke: the pipeline end to end in seconds (no gain expected)

The default task, ``larger``: "Which number is larger, 417 or 382? Reply with the number only.",
graded by the built-in exact-match grader against the larger number with ``inferenceMaxTokens`` 3
(SmolLM2's tokenizer writes each digit as a token, so the answer is exactly the first three). Half
the prompts name the larger number first; training and held-out prompts never share a number.
SmolLM2-135M-Instruct answers in a sentence ("To solve this...") and so scores 0.08 greedily: the
task is a format constraint (answer with the number alone) on top of a comparison, and a policy that
copied either number would score only 0.5.

The yes-or-no tasks, graded the same way with ``inferenceMaxTokens`` 1 (the answer's first token is
the verdict): ``animals`` ("Is a dog an animal?"), ``capitals`` ("Is Oslo the capital of Spain?"),
``parity`` ("Is 417 an even number?") and ``compare`` ("Is 57 greater than 38?"). On them RFT
learns the answer's form but not the answer: SmolLM2 says "No" greedily to every question (0.5 on
balanced data), and its first-token preference for yes or no does not separate true from false
questions (probed on ``animals``: the yes-minus-no log-probability margin ranks true statements
below false ones, AUC 0.29), so there is nothing for a verdict-only policy to sharpen. Free-form
exact match fails the other way: asked for a word ("Reply with only the word 'apple'", a capital
city), all of SmolLM2's sampled answers are sentences, score 0, and teach GRPO nothing.

The run is the REINFORCEMENT_FINE_TUNING recipe itself (:class:`tuneforge.recipes.reinforcement.
ReinforcementFineTuningRecipe`, in this process, LoRA), with the hyperparameters given here. Held-out
reward is measured twice, the models loaded and prompted as they are served and graded by the same
grader: greedy (what the job's validation reports) and sampled (8 answers a prompt at the training
temperature: the policy's expected reward, which GRPO maximises). Target (issue 15): a greedy gain
>= 0.3; the sampled gain is printed beside it. The last line is one JSON object; with ``--check``
the exit status is 1 when the greedy gain misses the target.
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


CAPITALS = (
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Japan", "Tokyo"),
    ("China", "Beijing"),
    ("Russia", "Moscow"),
    ("Egypt", "Cairo"),
    ("Greece", "Athens"),
    ("Portugal", "Lisbon"),
    ("Austria", "Vienna"),
    ("Poland", "Warsaw"),
    ("Ireland", "Dublin"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"),
    ("Hungary", "Budapest"),
    ("Thailand", "Bangkok"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Argentina", "Buenos Aires"),
    ("Cuba", "Havana"),
    ("Belgium", "Brussels"),
    ("the Netherlands", "Amsterdam"),
    ("India", "New Delhi"),
    ("the United Kingdom", "London"),
    ("Canada", "Ottawa"),
    ("Mexico", "Mexico City"),
    ("South Korea", "Seoul"),
    ("Turkey", "Ankara"),
    ("Iran", "Tehran"),
    ("Australia", "Canberra"),
    ("Brazil", "Brasilia"),
    ("Chile", "Santiago"),
    ("Colombia", "Bogota"),
    ("Switzerland", "Bern"),
    ("the Czech Republic", "Prague"),
    ("Romania", "Bucharest"),
    ("Ukraine", "Kyiv"),
    ("Vietnam", "Hanoi"),
    ("Indonesia", "Jakarta"),
    ("the Philippines", "Manila"),
    ("Pakistan", "Islamabad"),
    ("Saudi Arabia", "Riyadh"),
    ("Nigeria", "Abuja"),
    ("Morocco", "Rabat"),
    ("New Zealand", "Wellington"),
)
"""Countries and their capitals for the ``capitals`` task: a fact SmolLM2 states in a sentence
("The capital of France is Paris"), asked as a yes-or-no question it answers "No" to, greedily, every time."""


ANIMALS = (
    "dog",
    "cat",
    "horse",
    "cow",
    "lion",
    "tiger",
    "elephant",
    "rabbit",
    "sheep",
    "goat",
    "bear",
    "wolf",
    "fox",
    "monkey",
    "zebra",
    "giraffe",
    "camel",
    "deer",
    "mouse",
    "pig",
    "duck",
    "eagle",
    "owl",
    "parrot",
    "shark",
    "whale",
    "dolphin",
    "frog",
    "snake",
    "turtle",
    "chicken",
    "donkey",
)
THINGS = (
    "chair",
    "table",
    "spoon",
    "hammer",
    "pencil",
    "bottle",
    "window",
    "bicycle",
    "laptop",
    "umbrella",
    "candle",
    "carpet",
    "kettle",
    "mirror",
    "wallet",
    "ladder",
    "bucket",
    "blanket",
    "button",
    "helmet",
    "jacket",
    "basket",
    "hat",
    "lamp",
    "book",
    "door",
    "shoe",
    "clock",
    "phone",
    "car",
    "cup",
    "key",
)
"""The ``animals`` task: "Is a dog an animal?" SmolLM2 knows the answer but, asked for yes or no, says
"No" to every question greedily and starts with either word only about a fifth of the time sampled."""


def animal_records(words: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [
        {
            "messages": [{"role": "user", "content": f"Is {article(word)} {word} an animal? Answer yes or no."}],
            "reference_answer": verdict,
        }
        for word, verdict in words
    ]


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def capital_records(countries: list[tuple[str, str]], rng: random.Random) -> list[dict[str, Any]]:
    """Two questions per country: its capital (yes) and another country's (no)."""
    cities = [city for _, city in CAPITALS]
    found = []
    for country, capital in countries:
        wrong = rng.choice([city for city in cities if city != capital])
        for city, verdict in ((capital, "yes"), (wrong, "no")):
            found.append(
                {
                    "messages": [{"role": "user", "content": f"Is {city} the capital of {country}? Answer yes or no."}],
                    "reference_answer": verdict,
                }
            )
    return found


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


def larger_records(pairs: list[tuple[int, int]]) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"Which number is larger, {a} or {b}? Reply with the number only."}
            ],
            "reference_answer": str(max(a, b)),
        }
        for a, b in pairs
    ]


def three_digit_pairs(count: int, rng: random.Random, taken: set[int]) -> list[tuple[int, int]]:
    """``count`` pairs of distinct three-digit numbers, none in ``taken``; the larger comes first in half."""
    pairs: list[tuple[int, int]] = []
    while len(pairs) < count:
        a, b = rng.sample(range(100, 1000), 2)
        if a in taken or b in taken or (a > b) != (len(pairs) % 2 == 0):
            continue
        taken.update((a, b))
        pairs.append((a, b))
    return pairs


SAMPLED = 8
"""Answers per held-out prompt for the sampled figure (at the training temperature, 1.0)."""


def held_out_rewards(model_dir: Path, models_dir: Path, prompts: list[dict[str, Any]], tokens: int) -> dict[str, float]:
    """Mean exact-match reward on ``prompts``, the model loaded and prompted as it is served: ``greedy``
    (one answer each, temperature 0) and ``sampled`` (:data:`SAMPLED` answers each at temperature 1, the
    policy's expected reward, which is what RFT maximises)."""
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
    grader = load_grader(EXACT_MATCH)
    found = {}
    for name, samples, temperature in (("greedy", 1, 0.0), ("sampled", SAMPLED, 1.0)):
        answers = sample_answers(
            batcher, [(r.ids, r.strip_leading_space) for r in rendered], samples, tokens, temperature, seed=0
        )
        assert answers is not None
        grades = grader.grade(
            [
                Sample(messages=p.turns, response=a.text, item=p.item)
                for p, group in zip(parsed, answers, strict=True)
                for a in group
            ]
        )
        found[name] = statistics.fmean(g.score or 0.0 for g in grades)
    return found


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
    parser.add_argument("--task", default="larger", choices=("larger", "animals", "capitals", "parity", "compare"))
    parser.add_argument("--train", type=int, default=40, help="training prompts")
    parser.add_argument("--held-out", type=int, default=24, help="held-out prompts")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16, help="batchSize (prompts per step)")
    parser.add_argument("--samples", type=int, default=8, help="trainingSamplePerPrompt")
    parser.add_argument(
        "--tokens",
        type=int,
        help="inferenceMaxTokens (default: 3 for larger, the number's digits; 1 for the verdict word)",
    )
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
    if args.task == "animals":
        animals, things = list(ANIMALS), list(THINGS)
        rng.shuffle(animals)
        rng.shuffle(things)
        half, held = args.train // 2, args.held_out // 2
        if half + held > min(len(ANIMALS), len(THINGS)):
            parser.error(f"--train + --held-out may be at most {2 * min(len(ANIMALS), len(THINGS))} for animals")
        pairs = [(w, "yes") for w in animals[:half]] + [(w, "no") for w in things[:half]]
        rng.shuffle(pairs)
        train = animal_records(pairs)
        held_pairs = [(w, "yes") for w in animals[half : half + held]] + [(w, "no") for w in things[half : half + held]]
        held_out = animal_records(held_pairs)
    elif args.task == "capitals":
        countries = list(CAPITALS)
        rng.shuffle(countries)
        cut = min(len(countries) - args.held_out // 2, args.train // 2)
        train = capital_records(countries[:cut], rng)
        held_out = capital_records(countries[cut : cut + args.held_out // 2], rng)
    elif args.task == "larger":
        seen = set[int]()
        train, held_out = (larger_records(three_digit_pairs(n, rng, seen)) for n in (args.train, args.held_out))
    elif args.task == "parity":
        seen = set[int]()
        train, held_out = (parity_records(balanced_numbers(n, rng, seen)) for n in (args.train, args.held_out))
    else:
        taken = set[tuple[int, int]]()
        train, held_out = (records(balanced_pairs(n, rng, taken)) for n in (args.train, args.held_out))
    if args.tokens is None:
        args.tokens = 3 if args.task == "larger" else 1
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
        before = held_out_rewards(base_dir, MODEL_CACHE, held_out, args.tokens)
        print(f"base model: held-out reward {before['greedy']:.3f} greedy, {before['sampled']:.3f} sampled", flush=True)
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
        after = held_out_rewards(root / "model", MODEL_CACHE, held_out, args.tokens)
        seconds = time.perf_counter() - started
    gains = {name: after[name] - before[name] for name in before}
    print(
        f"trained model: held-out reward {after['greedy']:.3f} greedy (gain {gains['greedy']:+.3f}, target >= "
        f"{TARGET}), {after['sampled']:.3f} sampled (gain {gains['sampled']:+.3f}) in {seconds:.0f} s"
    )
    final_json(
        {
            "benchmark": "rft_quality",
            "env": environment(args.threads),
            "model": base.model_id,
            "task": args.task,
            "hyperparameters": values,
            "train_prompts": len(train),
            "held_out_prompts": len(held_out),
            "held_out_reward": {
                name: {"base": before[name], "trained": after[name], "gain": gains[name]} for name in before
            },
            "seconds": seconds,
            "ok": gains["greedy"] >= TARGET,
        }
    )
    if args.check and gains["greedy"] < TARGET:
        sys.exit(1)


if __name__ == "__main__":
    main()
