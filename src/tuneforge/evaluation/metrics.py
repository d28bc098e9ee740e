"""Built-in metrics of automated evaluation jobs: ``Builtin.Accuracy`` and ``Builtin.Robustness``.

Accuracy, per task type (each score is per record, in [0, 1], and the job reports the mean):

* ``Classification``: exact match after normalization (:func:`normalize`): the answer is the label
  or it is not.
* ``QuestionAndAnswer`` and ``Custom``: token F1 with SQuAD's normalization (lower case, no
  punctuation, no articles ``a``/``an``/``the``, single spaces), the score SQuAD v1.1's evaluation
  script computes.
* ``Summarization``: ROUGE-L F-measure from Google's ``rouge-score`` package (with stemming).
* ``Generation``: no accuracy (Bedrock has none for open generation): refused at create time.

Robustness is the score drop under small prompt perturbations: every prompt is perturbed once
(:func:`perturb`, deterministic per record), answered again, and scored again;
``Builtin.Robustness`` = mean score on the original prompts minus mean score on the perturbed ones
(0 means unaffected; higher is worse; it can be negative). For ``Generation``, which has no
reference to score against, the score of a perturbed answer is its ROUGE-L against the model's own
answer to the original prompt, so robustness is 1 minus their mean ROUGE-L.
"""

from __future__ import annotations

import random
import re
import string
from collections import Counter
from collections.abc import Sequence

ACCURACY = "Builtin.Accuracy"
ROBUSTNESS = "Builtin.Robustness"
TOXICITY = "Builtin.Toxicity"
BUILTIN_METRICS = (ACCURACY, ROBUSTNESS, TOXICITY)

TASK_TYPES = ("Summarization", "Classification", "QuestionAndAnswer", "Generation", "Custom")
SUPPORTED: dict[str, tuple[str, ...]] = {
    "Classification": (ACCURACY, ROBUSTNESS),
    "QuestionAndAnswer": (ACCURACY, ROBUSTNESS),
    "Summarization": (ACCURACY, ROBUSTNESS),
    "Generation": (ROBUSTNESS,),
    "Custom": (ACCURACY, ROBUSTNESS),
}
"""The metrics each task type computes here. ``Builtin.Toxicity`` (a toxicity classifier) is not
supported yet, and ``Generation`` has no reference-based accuracy, as in Bedrock."""

PERTURBATION_SEED = 13
"""The seed of :func:`perturb`: the same dataset always gets the same perturbations."""

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def needs_reference(task_type: str, metric_names: Sequence[str]) -> bool:
    """Whether the dataset's records must hold ``referenceResponse``: accuracy scores against it, and
    so does robustness (an accuracy drop) on every task type but ``Generation``."""
    return ACCURACY in metric_names or (ROBUSTNESS in metric_names and task_type != "Generation")


def normalize(text: str) -> str:
    """SQuAD's answer normalization: lower case, punctuation and articles removed, spaces collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD v1.1's F1 over normalized tokens; two empty answers agree."""
    predicted, expected = normalize(prediction).split(), normalize(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure, as ``rouge-score`` computes it (Porter stemming on)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(scorer.score(reference, prediction)["rougeL"].fmeasure)


def accuracy(task_type: str, prediction: str, reference: str) -> float:
    """One record's ``Builtin.Accuracy`` score for ``task_type`` (see the module docstring)."""
    if task_type == "Classification":
        return exact_match(prediction, reference)
    if task_type == "Summarization":
        return rouge_l(prediction, reference)
    if task_type in ("QuestionAndAnswer", "Custom"):
        return token_f1(prediction, reference)
    raise ValueError(f"{ACCURACY} is not defined for task type {task_type}")


def perturb(prompt: str, index: int) -> str:
    """A small, meaning-keeping change to ``prompt``, the same for the same (prompt, index).

    One of three, chosen by a generator seeded with :data:`PERTURBATION_SEED` and the record's
    index: the whole prompt upper-cased; doubled spaces between words (and a trailing space); or
    one typo, two adjacent different letters swapped inside a word of four letters or more.
    """
    rng = random.Random(PERTURBATION_SEED * 1_000_003 + index)
    kind = rng.randrange(3)
    if kind == 0 and prompt.upper() != prompt:
        return prompt.upper()
    words = prompt.split(" ")
    swaps = [
        (i, j)
        for i, word in enumerate(words)
        if len(word) >= 4 and word.isalpha()
        for j in range(len(word) - 1)
        if word[j] != word[j + 1]
    ]
    if kind == 2 and swaps:
        i, j = rng.choice(swaps)
        word = words[i]
        words[i] = word[:j] + word[j + 1] + word[j] + word[j + 2 :]
        return " ".join(words)
    return "  ".join(words) + " "


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by linear interpolation, as numpy's default computes it."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
