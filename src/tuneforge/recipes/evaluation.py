"""An evaluation job's generation: every prompt of a dataset answered by one model, timed.

The same path as batch inference (:mod:`tuneforge.recipes.batch_inference`): the model loaded as an
engine loads it, each prompt rendered as InvokeModel renders a native ``{"prompt"}`` body
(:meth:`ContinuousBatcher.render`), and all of them answered greedily through
:func:`~tuneforge.engine.offline.generate_offline`, so a model scores here on the answers it gives
through the runtime API. Scoring is the control plane's (:mod:`tuneforge.evaluation.scoring`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

from tuneforge.engine.batching import ContinuousBatcher, Event
from tuneforge.engine.offline import OfflineRequest, generate_offline
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
