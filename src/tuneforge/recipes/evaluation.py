"""An evaluation job's generation: every prompt of a dataset answered by one model, timed.

The same path as batch inference (:mod:`tuneforge.recipes.batch_inference`): the model loaded as an
engine loads it, each prompt rendered as InvokeModel renders a native ``{"prompt"}`` body
(:meth:`ContinuousBatcher.render`), and all of them answered greedily through
:func:`~tuneforge.engine.offline.generate_offline`, so a model scores here on the answers it gives
through the runtime API. Scoring is the control plane's (:mod:`tuneforge.evaluation.scoring`).

A judge model rates answers the same way (:func:`judge_answers`): each judge prompt
(:func:`tuneforge.evaluation.judge.judge_prompt`) is one user message rendered by the judge's chat
template, and its reply is constrained to the metric's scale by the engine's grammar, greedily.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from tuneforge.engine.batching import ContinuousBatcher, Event
from tuneforge.engine.offline import OfflineRequest, generate_offline
from tuneforge.evaluation.judge import (
    JudgeMetric,
    Rating,
    judge_prompt,
    max_reply_tokens,
    parse_rating,
    response_format,
)
from tuneforge.evaluation.scoring import Answer, Pass
from tuneforge.serving.protocol import GenerationRequest


def answer_prompts(
    batcher: ContinuousBatcher, prompts: Sequence[str], max_tokens: int, should_stop: Callable[[], bool]
) -> Pass | None:
    """Greedy answers to ``prompts`` in their order, with each one's latency; None when stopped first.

    A prompt too long for the context (with ``max_tokens``) gets an empty answer with its
    :attr:`~Answer.error` rather than failing the job, as batch inference answers such a record: it
    scores as a wrong answer and stays out of the latency figures (it was never generated).
    """
    answers: dict[int, Answer] = {}
    submitted: dict[int, float] = {}
    ready: list[tuple[int, OfflineRequest]] = []
    for index, prompt in enumerate(prompts):
        request = GenerationRequest(max_tokens=max_tokens, prompt=prompt)
        try:
            rendered = batcher.render(request)
        except ValueError as exc:
            answers[index] = Answer("", error=str(exc))
            continue
        ready.append((index, OfflineRequest(request, rendered.ids, rendered.strip_leading_space)))

    def requests() -> Iterator[tuple[int, OfflineRequest]]:
        for index, request in ready:
            submitted[index] = time.perf_counter()
            yield index, request

    def on_end(index: int, event: Event) -> None:
        latency = time.perf_counter() - submitted[index]
        if event["event"] != "end":
            answers[index] = Answer("", latency, error=str(event.get("message", "the model failed")))
            return
        answers[index] = Answer(str(event["text"]), latency, int(event["output_tokens"]))

    started = time.perf_counter()
    if not generate_offline(batcher, requests(), on_end, should_stop):
        return None
    return Pass([answers[index] for index in range(len(prompts))], time.perf_counter() - started)


@dataclass(frozen=True)
class JudgeItem:
    """One answer to rate on one metric."""

    metric: JudgeMetric
    prompt: str
    response: str
    reference: str | None


def judge_answers(
    batcher: ContinuousBatcher, items: Sequence[JudgeItem], should_stop: Callable[[], bool]
) -> list[Rating] | None:
    """The judge's rating of each item, in order; None when stopped first.

    A judge prompt too long for the judge's context fails the job (ValueError, naming the metric):
    the judge must see the whole answer it rates, and a truncated view would rate another one.
    """
    ready: list[tuple[int, OfflineRequest]] = []
    prompts: list[str] = []
    for index, item in enumerate(items):
        text = judge_prompt(item.metric, item.prompt, item.response, item.reference)
        prompts.append(text)
        request = GenerationRequest(
            max_tokens=max_reply_tokens(item.metric),
            conversation={"messages": [{"role": "user", "content": [{"text": text}]}]},
            response_format=response_format(item.metric),
        )
        try:
            rendered = batcher.render(request)
        except ValueError as exc:
            raise ValueError(f"The judge cannot rate {item.metric.name}: {exc}") from None
        matcher = batcher.matcher(request.response_format)
        ready.append((index, OfflineRequest(request, rendered.ids, rendered.strip_leading_space, matcher)))
    replies: dict[int, str] = {}

    def on_end(index: int, event: Event) -> None:
        if event["event"] != "end":
            raise RuntimeError(f"the judge failed: {event.get('message')}")
        replies[index] = str(event["text"])

    if not generate_offline(batcher, ready, on_end, should_stop):
        return None
    ratings = []
    for index, item in enumerate(items):
        label = parse_rating(item.metric, replies[index])
        ratings.append(Rating(item.metric.name, label, item.metric.score(label), prompts[index]))
    return ratings
