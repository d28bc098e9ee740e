"""Offline generation: a whole list of requests through one in-process :class:`ContinuousBatcher`.

Batch inference jobs (:mod:`tuneforge.recipes.batch_inference`) and distillation's teacher
(:func:`tuneforge.recipes.distillation.teacher_answers`) both answer a known list of prompts with no
client waiting on any one of them. They share this path with the engines: the same batcher, so the
same prompt rendering (:func:`~tuneforge.model.prompts.serving_prompt`, done by the caller), the
same stop rules (end-of-turn tokens, stop sequences, ``max_tokens``) and the same greedy answers an
engine gives to InvokeModel or Converse.

Throughput first: requests are fed to the batcher as rows free up, so the batch stays full at
``max_batch`` rows until the list runs out, and no request waits for the slowest of a static batch.
The list is read lazily, one request per free row, so a file of a million records is never held in
memory at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from tuneforge.engine.batching import ContinuousBatcher, Event, Sequence
from tuneforge.engine.constrained import Matcher
from tuneforge.engine.generation import Completion, length_sorted_batches
from tuneforge.model.prompts import encode_prompt
from tuneforge.serving.protocol import GenerationRequest


@dataclass(frozen=True)
class OfflineRequest:
    """One request, already rendered to token ids (the caller checked it against the context)."""

    request: GenerationRequest
    prompt_ids: list[int]
    strip_leading_space: bool = False
    matcher: Matcher | None = None
    """The grammar the answer is forced into (:meth:`ContinuousBatcher.matcher` of the request's
    ``response_format``), one per request: it keeps the sequence's state."""


def generate_offline(
    batcher: ContinuousBatcher,
    requests: Iterable[tuple[Any, OfflineRequest]],
    on_end: Callable[[Any, Event], None],
    should_stop: Callable[[], bool] = lambda: False,
) -> bool:
    """Answer every ``(key, request)`` pair; ``on_end(key, event)`` gets each one's ``end`` (or ``error``) event.

    Results arrive in completion order, not input order: the key says which request each one
    answers. Returns False when ``should_stop`` turned true first (asked once per decoding step);
    requests still running then are dropped without a result.
    """
    pending = iter(requests)
    finished: list[tuple[Any, Event]] = []
    running = 0
    exhausted = False
    while True:
        while not exhausted and running < batcher.max_batch:
            item = next(pending, None)
            if item is None:
                exhausted = True
                break
            key, offline = item
            sequence = Sequence(
                offline.request,
                offline.prompt_ids,
                lambda _event: None,
                strip_leading_space=offline.strip_leading_space,
                matcher=offline.matcher,
            )
            sequence.sink = _collector(key, sequence, finished)
            batcher.submit(sequence)
            running += 1
        if running == 0:
            return True
        if should_stop():
            return False
        batcher.step()
        for key, event in finished:
            running -= 1
            on_end(key, event)
        finished.clear()


def _collector(key: Any, sequence: Sequence, finished: list[tuple[Any, Event]]) -> Callable[[Event], None]:
    """The sink of one offline request: its ``end`` event also carries ``token_ids``, the answer's
    tokens with the end-of-turn token that closed it (what a trainer computes log-probabilities of)."""

    def sink(event: Event) -> None:
        if event["event"] == "end":
            closing = [] if sequence.stop_token is None else [sequence.stop_token]
            finished.append((key, {**event, "token_ids": [*sequence.generated, *closing]}))
        elif event["event"] == "error":
            finished.append((key, event))

    return sink


def greedy_answers(
    batcher: ContinuousBatcher,
    prompts: Seq[str | list[int]],
    max_tokens: int,
    progress: Callable[[int], None] | None = None,
    progress_every: int = 1,
) -> list[Completion]:
    """Greedy answers to ``prompts`` (raw text, or token ids already rendered), in their order, as
    :func:`generate_offline` makes them.

    Prompts go in longest first (:func:`length_sorted_batches`), so prompts prefilled together are of
    similar length and pad little. ``progress`` gets the number answered so far every
    ``progress_every`` answers and after the last. ``tokens`` counts the closing end-of-sequence
    token, as :func:`tuneforge.engine.generation.complete` counts it.
    """
    ids = [encode_prompt(batcher.tokenizer, p) if isinstance(p, str) else p for p in prompts]
    order = [i for batch in length_sorted_batches([len(p) for p in ids], len(ids) or 1) for i in batch]
    answers: dict[int, Completion] = {}

    def requests() -> Iterator[tuple[int, OfflineRequest]]:
        for index in order:
            yield index, OfflineRequest(GenerationRequest(max_tokens=max_tokens, prompt=""), ids[index])

    def on_end(index: int, event: Event) -> None:
        if event["event"] != "end":
            raise RuntimeError(f"generation failed: {event.get('message')}")
        finished = event["stop_reason"] == "end_turn"
        tokens = int(event["output_tokens"]) + (1 if finished else 0)
        answers[index] = Completion(text=str(event["text"]), finished=finished, tokens=tokens)
        if progress is not None and (len(answers) % progress_every == 0 or len(answers) == len(prompts)):
            progress(len(answers))

    generate_offline(batcher, requests(), on_end)
    return [answers[index] for index in range(len(prompts))]


@dataclass(frozen=True)
class SampledAnswer:
    text: str
    """The answer as a client would get it served (stop rules applied, the template's space stripped)."""
    token_ids: list[int]
    """The tokens the model sampled, the closing end-of-turn token included when the answer ended."""
    finished: bool
    """The model ended the answer itself; False when ``max_tokens`` cut it."""


def sample_answers(
    batcher: ContinuousBatcher,
    prompts: Seq[tuple[list[int], bool]],
    samples: int,
    max_tokens: int,
    temperature: float,
    seed: int,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[list[SampledAnswer]] | None:
    """``samples`` sampled answers to each prompt (``(token ids, strip_leading_space)``, rendered as
    :func:`~tuneforge.model.prompts.serving_prompt` renders them), in prompt order; None when
    ``should_stop`` turned true first.

    Every answer is one row of the continuous batch (a prompt's answers prefill together, the
    longest prompts first), with its own seeded generator (``seed`` + its index), so a run draws the
    same answers whatever else shares the batch.
    """
    order = [i for batch in length_sorted_batches([len(p) for p, _ in prompts], len(prompts) or 1) for i in batch]
    answers: dict[tuple[int, int], SampledAnswer] = {}

    def requests() -> Iterator[tuple[tuple[int, int], OfflineRequest]]:
        for index in order:
            ids, strip = prompts[index]
            for k in range(samples):
                request = GenerationRequest(
                    max_tokens=max_tokens, prompt="", temperature=temperature, seed=seed + index * samples + k
                )
                yield (index, k), OfflineRequest(request, ids, strip_leading_space=strip)

    def on_end(key: tuple[int, int], event: Event) -> None:
        if event["event"] != "end":
            raise RuntimeError(f"generation failed: {event.get('message')}")
        answers[key] = SampledAnswer(
            text=str(event["text"]),
            token_ids=list(event["token_ids"]),
            finished=event["stop_reason"] == "end_turn",
        )

    if not generate_offline(batcher, requests(), on_end, should_stop):
        return None
    return [[answers[(index, k)] for k in range(samples)] for index in range(len(prompts))]


def offline_batcher(
    model: Any, tokenizer: PreTrainedTokenizerBase, max_batch: int, trained_format: str | None = None
) -> ContinuousBatcher:
    """A batcher for offline use: the model in eval mode, as the engines hold it."""
    model.eval()
    return ContinuousBatcher(model, tokenizer, max_batch=max_batch, trained_format=trained_format)
