"""Scores a model's answers to one dataset: per-record output lines and the summary Get shows.

Pure Python (the worker calls it after generation; tests call it directly). Latency and tokens/s
are tuneforge extensions, per model and dataset:

* ``latencyP50Ms``: the median time from a prompt entering the batch to its last token. Prompts
  are answered in one continuous batch, as a batch inference job answers them, so this is latency
  under that load, not a lone request's.
* ``tokensPerSecond``: output tokens of every answer divided by the wall time of the whole pass.
* ``errorRecords``: records the model gave no answer to (:attr:`Answer.error`), outside the latency.

Both are None for a precomputed inference source: its answers were read, not generated.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tuneforge.evaluation.dataset import EvaluationRecord
from tuneforge.evaluation.judge import JudgeMetric, Rating, explanation
from tuneforge.evaluation.metrics import ACCURACY, ROBUSTNESS, accuracy, mean, percentile, rouge_l


@dataclass(frozen=True)
class Answer:
    text: str
    latency_s: float = 0.0
    output_tokens: int = 0
    error: str | None = None
    """Why the model gave no answer (a prompt too long for its context, a failed generation): the
    record scores as a wrong answer, says why in its output line, and is left out of the latency
    figures (an instant empty answer would read as a fast model)."""


@dataclass(frozen=True)
class Judged:
    """A judge model's ratings of one model's answers to one dataset: per metric, one per record."""

    judge: str
    """The judge's ``modelIdentifier`` as the request gave it."""
    metrics: dict[str, JudgeMetric]
    ratings: dict[str, list[Rating]]


@dataclass(frozen=True)
class Pass:
    """A model's answers to every record of a dataset, in record order, and the pass's wall time."""

    answers: Sequence[Answer]
    seconds: float = 0.0


def _record_score(task_type: str, record: EvaluationRecord, answer: Answer, baseline: Answer | None) -> float:
    """The score robustness compares: accuracy against the reference, or (Generation, which has
    none) the answer's ROUGE-L against the model's own answer to the unperturbed prompt."""
    if task_type == "Generation":
        assert baseline is not None
        return rouge_l(answer.text, baseline.text)
    assert record.reference is not None
    return accuracy(task_type, answer.text, record.reference)


def score(
    task_type: str,
    metric_names: Sequence[str],
    records: Sequence[EvaluationRecord],
    original: Pass,
    perturbed: Pass | None,
    judged: Judged | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(per-record scores, summary) for one model on one dataset.

    Per-record scores are ``[{"metricName", "result"}]`` lists as Bedrock writes them in
    ``automatedEvaluationResult.scores`` (metric names without the ``Builtin.`` prefix); a judge
    metric's also has ``evaluatorDetails``: ``[{"modelIdentifier": <judge>, "explanation"}]``.
    """
    per_record: list[dict[str, Any]] = []
    accuracies: list[float] = []
    drops: list[tuple[float, float]] = []
    by_category: dict[str, list[float]] = defaultdict(list)
    for index, record in enumerate(records):
        answer = original.answers[index]
        scores: list[dict[str, Any]] = []
        if ACCURACY in metric_names:
            value = _record_score(task_type, record, answer, None)
            accuracies.append(value)
            if record.category:
                by_category[record.category].append(value)
            scores.append({"metricName": "Accuracy", "result": value})
        if ROBUSTNESS in metric_names and perturbed is not None:
            before = 1.0 if task_type == "Generation" else _record_score(task_type, record, answer, None)
            after = _record_score(task_type, record, perturbed.answers[index], answer)
            drops.append((before, after))
            scores.append({"metricName": "Robustness", "result": before - after})
        for name, ratings in (judged.ratings if judged else {}).items():
            assert judged is not None
            rating = ratings[index]
            scores.append(
                {
                    "metricName": name.removeprefix("Builtin."),
                    "result": rating.score,
                    "evaluatorDetails": [
                        {"modelIdentifier": judged.judge, "explanation": explanation(judged.metrics[name], rating)}
                    ],
                }
            )
        per_record.append({"scores": scores})
    metrics: dict[str, float | None] = {}
    if ACCURACY in metric_names:
        metrics[ACCURACY] = mean(accuracies)
    if ROBUSTNESS in metric_names:
        before_mean, after_mean = mean([b for b, _ in drops]), mean([a for _, a in drops])
        metrics[ROBUSTNESS] = None if before_mean is None or after_mean is None else before_mean - after_mean
    tokens = sum(a.output_tokens for a in original.answers)
    timed = original.seconds > 0  # a precomputed source's answers were never timed here
    answered = [a.latency_s for a in original.answers if a.error is None]
    summary: dict[str, Any] = {
        "records": len(records),
        "errorRecords": sum(a.error is not None for a in original.answers),
        "metrics": metrics,
        "latencyP50Ms": _ms(percentile(answered, 50)) if timed else None,
        "tokensPerSecond": round(tokens / original.seconds, 2) if timed else None,
        "outputTokens": tokens,
    }
    if judged is not None:
        for name, ratings in judged.ratings.items():
            metrics[name] = mean([rating.score for rating in ratings])
        counts = {
            name: {item.label: sum(r.label == item.label for r in ratings) for item in judged.metrics[name].scale}
            for name, ratings in judged.ratings.items()
        }
        summary["judge"] = {"modelIdentifier": judged.judge, "ratingCounts": counts}
    if by_category:
        summary["categories"] = {name: {ACCURACY: mean(values)} for name, values in sorted(by_category.items())}
    return per_record, summary


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def output_line(record: EvaluationRecord, scores: dict[str, Any], model: str, answer: Answer) -> dict[str, Any]:
    """One line of ``<file>_output.jsonl``, in Bedrock's layout: the scores, the input record as
    given, and the model's response (with ``error``, a tuneforge member, when it gave none)."""
    response: dict[str, Any] = {"response": answer.text, "modelIdentifier": model}
    if answer.error is not None:
        response["error"] = answer.error
    return {
        "automatedEvaluationResult": scores,
        "inputRecord": record.data,
        "modelResponses": [response],
    }
