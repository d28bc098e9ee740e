"""Judge-model graders: any model tuneforge can invoke scores each answer against a rubric.

The judge is reached through a :data:`Complete` function, so the grader itself stays free of how:
the ``/v1`` grader routes pass one that calls the server's own chat path in process, and a job's
worker passes :func:`http_complete` against the server's ``/v1/chat/completions``. Either way the
reply is constrained to ``{"score": <number>}`` by the JSON schema in the request (the engines'
structured output), so even a small model returns a number the grader can read; the number is then
scaled from the judge's range (default ``[0, 1]``) to ``[0, 1]``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from tuneforge.graders.base import Grade, Sample

DEFAULT_MAX_TOKENS = 32


@dataclass(frozen=True)
class JudgeRequest:
    model: str
    messages: tuple[tuple[str, str], ...]
    schema: dict[str, Any]
    """The JSON schema the judge's reply is held to."""
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float | None = 0.0
    seed: int | None = None


Complete = Callable[[JudgeRequest], str]
"""Ask a model; its reply's text. Raises on failure (the grade then records why)."""


def score_schema(low: float, high: float) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"score": {"type": "number", "minimum": low, "maximum": high}},
        "required": ["score"],
        "additionalProperties": False,
    }


def chat_body(request: JudgeRequest) -> dict[str, Any]:
    """``request`` as an OpenAI chat completions body."""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [{"role": role, "content": text} for role, text in request.messages],
        "max_tokens": request.max_tokens,
        "response_format": {"type": "json_schema", "json_schema": {"name": "score", "schema": request.schema}},
    }
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.seed is not None:
        body["seed"] = request.seed
    return body


def http_complete(base_url: str, api_key: str | None = None, timeout_s: float = 300.0) -> Complete:
    """A :data:`Complete` through a tuneforge server's ``/v1/chat/completions`` (``base_url`` ends in ``/v1``)."""

    def complete(request: JudgeRequest) -> str:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        response = httpx.post(
            f"{base_url.rstrip('/')}/chat/completions", json=chat_body(request), headers=headers, timeout=timeout_s
        )
        if response.status_code != 200:
            raise RuntimeError(f"the judge model answered {response.status_code}: {response.text[:200]}")
        return str(response.json()["choices"][0]["message"]["content"] or "")

    return complete


def read_score(reply: str, low: float, high: float) -> Grade:
    """The judge's ``{"score": n}`` scaled from ``[low, high]`` to ``[0, 1]``."""
    try:
        value = json.loads(reply)["score"]
    except (ValueError, KeyError, TypeError):
        return Grade(None, f"the judge's reply has no score: {reply[:80]!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return Grade(None, f"the judge's score is not a number: {value!r}")
    if not low <= value <= high:
        return Grade(None, f"the judge's score {value!r} is outside its range [{low:g}, {high:g}]")
    return Grade.checked((value - low) / (high - low))


def rubric_messages(rubric: str, sample: Sample, low: float, high: float) -> tuple[tuple[str, str], ...]:
    conversation = "\n".join(f"{role}: {text}" for role, text in sample.messages)
    reference = sample.item.get("reference_answer")
    parts = [f"Conversation:\n{conversation}"]
    if reference is not None:
        parts.append(f"Reference answer:\n{reference if isinstance(reference, str) else json.dumps(reference)}")
    parts.append(f"Response to grade:\n{sample.response}")
    instruction = (
        f"{rubric}\n\nGrade the response by this rubric. Reply with JSON "
        f'{{"score": <number from {low:g} (worst) to {high:g} (best)>}} and nothing else.'
    )
    return (("system", instruction), ("user", "\n\n".join(parts)))


@dataclass(frozen=True)
class ModelJudge:
    """A model scores each answer by a rubric (or by messages the caller renders per sample)."""

    model: str
    complete: Complete = field(repr=False)
    rubric: str = ""
    render: Callable[[Sample], tuple[tuple[str, str], ...]] | None = field(default=None, repr=False)
    """Renders the judge's messages for a sample; default: the rubric, conversation, reference and answer."""
    low: float = 0.0
    high: float = 1.0
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float | None = 0.0
    seed: int | None = None
    name: str = "tuneforge-judge"

    def grade(self, samples: Sequence[Sample]) -> list[Grade]:
        grades = []
        for sample in samples:
            try:
                messages = (
                    self.render(sample)
                    if self.render is not None
                    else rubric_messages(self.rubric, sample, self.low, self.high)
                )
            except ValueError as exc:
                grades.append(Grade(None, str(exc)))
                continue
            try:
                reply = self.complete(
                    JudgeRequest(
                        self.model,
                        messages,
                        score_schema(self.low, self.high),
                        self.max_tokens,
                        self.temperature,
                        self.seed,
                    )
                )
            except Exception as exc:
                grades.append(Grade(None, f"the judge model {self.model!r} failed: {str(exc)[:200]}"))
                continue
            grades.append(read_score(reply, self.low, self.high))
        return grades
