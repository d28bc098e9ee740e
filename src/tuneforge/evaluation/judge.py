"""Judge-model metrics ("LLM as a judge"): a local model rates each answer on a fixed scale.

Bedrock's model-as-judge evaluations name the judge in ``evaluationConfig.automated.evaluatorModelConfig``
and ask for built-in judge metrics (``Builtin.Correctness``, ``Builtin.Completeness``,
``Builtin.Helpfulness``) or define their own in ``customMetricConfig`` (instructions and a rating
scale). Here the judge is any model an evaluation job can run (foundation, imported, custom, or one a
provisioned throughput or deployment serves), and judge metrics run on ``Custom`` tasks.

For each record, answer and metric the judge gets one user message, :func:`judge_prompt`: the metric's
instructions, the prompt, the reference answer when the record has one, the response, and the scale.
Its reply is forced into the scale by constrained decoding: the engine's grammar allows only
``{"rating":"<label>"}`` with one of the scale's labels (:func:`response_format`), so every reply
parses and names a rating. A rating's score is its value normalised to 0..1 over the scale (lowest 0,
highest 1), as Bedrock reports judge scores; the job reports each metric's mean.

Pure Python: the worker renders and generates (:mod:`tuneforge.recipes.evaluation`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CORRECTNESS = "Builtin.Correctness"
COMPLETENESS = "Builtin.Completeness"
HELPFULNESS = "Builtin.Helpfulness"
JUDGE_TASK_TYPES = ("Custom",)
MAX_JUDGES = 1
"""Bedrock's ``bedrockEvaluatorModels`` holds one model, and so does a job here."""


@dataclass(frozen=True)
class ScaleItem:
    label: str
    """What the judge writes (a word for the built-ins, the value for a custom metric)."""
    definition: str
    value: float


@dataclass(frozen=True)
class JudgeMetric:
    name: str
    """The name in ``metricNames`` (``Builtin.Correctness``, or a custom metric's name)."""
    instructions: str
    scale: tuple[ScaleItem, ...]

    def score(self, label: str) -> float:
        """The rating's value normalised to 0..1 over the scale (a one-item scale scores 1)."""
        values = [item.value for item in self.scale]
        low, high = min(values), max(values)
        value = next(item.value for item in self.scale if item.label == label)
        return 1.0 if high == low else (value - low) / (high - low)

    def definition(self, label: str) -> str:
        return next(item.definition for item in self.scale if item.label == label)


BUILTIN_JUDGE_METRICS: dict[str, JudgeMetric] = {
    CORRECTNESS: JudgeMetric(
        CORRECTNESS,
        "Judge whether the response answers the prompt correctly. When a reference answer is given, "
        "a correct response agrees with it.",
        (
            ScaleItem("correct", "the response is correct", 2.0),
            ScaleItem("partially correct", "the response is partly correct", 1.0),
            ScaleItem("incorrect", "the response is wrong", 0.0),
        ),
    ),
    COMPLETENESS: JudgeMetric(
        COMPLETENESS,
        "Judge whether the response covers everything the prompt asks for. When a reference answer is "
        "given, a complete response holds everything it holds.",
        (
            ScaleItem("complete", "it covers everything asked", 2.0),
            ScaleItem("partially complete", "it leaves some of it out", 1.0),
            ScaleItem("incomplete", "it covers little or nothing", 0.0),
        ),
    ),
    HELPFULNESS: JudgeMetric(
        HELPFULNESS,
        "Judge how helpful the response is to the person who wrote the prompt.",
        (
            ScaleItem("very helpful", "it does what the person needs", 2.0),
            ScaleItem("somewhat helpful", "it helps in part", 1.0),
            ScaleItem("not helpful", "it does not help", 0.0),
        ),
    ),
}
"""Bedrock's built-in judge metrics that fit a local judge, each on a three-point scale (Bedrock's own
are three- to seven-point; a small judge tells fewer, plainer labels apart)."""


def custom_metric(definition: dict[str, Any]) -> JudgeMetric:
    """A ``customMetricDefinition`` as a metric (already checked: a ``ratingScale`` of ``floatValue`` items)."""
    scale = tuple(
        ScaleItem(_label(item["value"]["floatValue"]), item["definition"], float(item["value"]["floatValue"]))
        for item in definition["ratingScale"]
    )
    return JudgeMetric(definition["name"], definition["instructions"], scale)


def _label(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


TEMPLATE_VARIABLES = ("{{prompt}}", "{{prediction}}", "{{ground_truth}}")
"""Bedrock's variables in a custom metric's instructions: replaced by the prompt, the response and the
reference; instructions without them get the three sections appended, as the built-ins do."""


def judge_prompt(metric: JudgeMetric, prompt: str, response: str, reference: str | None) -> str:
    """The judge's user message for one answer (docs/evaluation.md shows it whole)."""
    instructions = metric.instructions
    if any(variable in instructions for variable in TEMPLATE_VARIABLES):
        body = (
            instructions.replace("{{prompt}}", prompt)
            .replace("{{prediction}}", response)
            .replace("{{ground_truth}}", reference or "")
        )
    else:
        parts = [instructions, f"Prompt:\n{prompt}"]
        if reference is not None:
            parts.append(f"Reference answer:\n{reference}")
        parts.append(f"Response:\n{response}")
        body = "\n\n".join(parts)
    scale = "\n".join(f'- "{item.label}": {item.definition}' for item in metric.scale)
    return f'{body}\n\nRate the response with one of:\n{scale}\nReply with JSON: {{"rating": "<rating>"}}'


def response_format(metric: JudgeMetric) -> dict[str, Any]:
    """The grammar the judge's reply is forced into: ``{"rating":"<one of the scale's labels>"}``."""
    return {
        "type": "json_schema",
        "schema": {
            "type": "object",
            "properties": {"rating": {"enum": [item.label for item in metric.scale]}},
            "required": ["rating"],
            "additionalProperties": False,
        },
    }


def max_reply_tokens(metric: JudgeMetric) -> int:
    """Enough tokens for the longest allowed reply even at one byte per token (plus the end token), so
    no reply is cut short of the closing brace."""
    longest = max(len(json.dumps({"rating": item.label}, separators=(",", ":")).encode()) for item in metric.scale)
    return longest + 4


def parse_rating(metric: JudgeMetric, reply: str) -> str:
    """The label in a constrained reply; ValueError if the grammar was somehow not honoured."""
    label = json.loads(reply)["rating"]
    if label not in {item.label for item in metric.scale}:
        raise ValueError(f"the judge's rating {label!r} is not on the scale of {metric.name}")
    return str(label)


@dataclass(frozen=True)
class Rating:
    metric: str
    label: str
    score: float
    prompt: str
    """The judge prompt the rating answers: what the judge saw (not written to the outputs)."""


def explanation(metric: JudgeMetric, rating: Rating) -> str:
    """The per-record ``evaluatorDetails`` explanation: the rating the judge chose and what it means
    (the judge writes only the rating, see the module docstring)."""
    return f'rated "{rating.label}" ({metric.definition(rating.label)}), {rating.score:g} on 0..1'


def judge_metric_names(metric_names: Sequence[str], custom: dict[str, JudgeMetric]) -> list[str]:
    """The metrics in ``metric_names`` the judge computes, in their order."""
    return [name for name in metric_names if name in BUILTIN_JUDGE_METRICS or name in custom]
