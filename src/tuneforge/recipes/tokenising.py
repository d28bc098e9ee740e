"""Records -> token ids with loss labels: prompt/completion, conversations and raw documents."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from tuneforge.catalog.models import FINE_TUNING
from tuneforge.data.formats import (
    FORMAT_CONVERSATION,
    FORMAT_PREFERENCE,
    Conversation,
    Preference,
    RecordError,
    parse_record,
    record_format,
)
from tuneforge.model.prompts import ChatTemplateError, bos_ids, conversation_pieces, encode_prompt, has_chat_template

IGNORE_INDEX = -100
"""Label value the loss skips (PyTorch's and transformers' convention)."""


@dataclass(frozen=True)
class Example:
    """One training sequence; ``labels[i]`` is the target at position ``i`` (the model shifts)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def rows(self) -> tuple[int, ...]:
        """The sequence lengths a batch holds for this example: one row (see ``loop.TrainingItem``)."""
        return (len(self.input_ids),)

    @property
    def targets(self) -> int:
        """Tokens the loss covers (labels after the causal shift that are not ignored)."""
        return sum(label != IGNORE_INDEX for label in self.labels[1:])


def encode_record(
    record: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase, max_length: int, *, close_last: bool = True
) -> Example:
    """Tokenize one prompt/completion or conversation record, loss on answer tokens only.

    Conversations are rendered by :func:`tuneforge.model.prompts.conversation_pieces`: the model's
    chat template when it has one, else the plain template. The loss covers every assistant turn
    with its end-of-turn marker; ``close_last=False`` leaves the last answer open (no end of turn,
    for an answer that was cut before its end).

    Raises ValueError for a record longer than ``max_length``: pre-flight validation rejects those,
    and cutting one silently would train on an answer without its end.
    """
    if "prompt" in record:
        prompt = encode_prompt(tokenizer, str(record["prompt"]))
        answer = tokenizer.encode(str(record["completion"]), add_special_tokens=False)
        if close_last:
            answer.append(tokenizer.eos_token_id)
        input_ids = prompt + answer
        labels = [IGNORE_INDEX] * len(prompt) + answer
    else:
        if not record["messages"] or record["messages"][-1]["role"] != "assistant":
            raise ValueError("a training conversation must end with an assistant message")
        input_ids, labels = [], []
        for piece in conversation_pieces(tokenizer, record, close_last=close_last):
            input_ids += piece.ids
            labels += piece.ids if piece.trained else [IGNORE_INDEX] * len(piece.ids)
    if len(input_ids) > max_length:
        raise ValueError(
            f"record is {len(input_ids)} tokens, above the limit of {max_length} (maxSequenceLength or "
            "the model's context); it should have been rejected by validation"
        )
    return Example(input_ids=input_ids, labels=labels)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of an already validated JSONL file (blank lines skipped).

    ``utf-8-sig`` drops a byte-order mark before the first record, as validation does: a file
    saved by an editor that writes one must not pass validation and then fail here.
    """
    with path.open(encoding="utf-8-sig") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def data_format(path: Path) -> str:
    """:data:`FORMAT_PROMPT_COMPLETION`, :data:`FORMAT_CONVERSATION` or :data:`FORMAT_PREFERENCE`:
    validation lets a fine-tuning file hold one of them, so its first record tells."""
    with path.open(encoding="utf-8-sig") as handle:
        first: dict[str, Any] = next((json.loads(line) for line in handle if line.strip()), {})
    try:
        return record_format(first, FINE_TUNING)
    except RecordError:
        return FORMAT_CONVERSATION


def conversation_rendering(tokenizer: PreTrainedTokenizerBase) -> str:
    """A job log line saying how conversations are rendered for this model."""
    if has_chat_template(tokenizer):
        return "conversations are rendered with the model's chat template, as serving renders them"
    return (
        "the model has no chat template: conversations train through tuneforge's plain template "
        "(System: / User: / Assistant:), the one serving uses for this model"
    )


def encode_file(path: Path, tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[Example]:
    """Encode every record of a JSONL file; errors name the file and line.

    Conversations are read through :func:`tuneforge.data.formats.parse_record`, as validation read
    them, so OpenAI's spelling (string content, a leading system message) trains on its text too.
    """
    examples = []
    for line_number, record in enumerate(read_jsonl(path), start=1):
        try:
            if "messages" in record:
                conversation = parse_record(record, FINE_TUNING, FORMAT_CONVERSATION)
                assert isinstance(conversation, Conversation)
                record = conversation.as_bedrock()
            examples.append(encode_record(record, tokenizer, max_length))
        except ChatTemplateError as exc:
            raise ChatTemplateError(f"{path.name} line {line_number}: {exc}") from exc
        except (ValueError, KeyError) as exc:
            raise ValueError(f"{path.name} line {line_number}: {exc}") from exc
    return examples


def chunk_document(token_ids: Sequence[int], max_length: int, overlap: int) -> list[Example]:
    """Cut one tokenized document into training windows of at most ``max_length`` tokens.

    Continued pre-training must neither cut long documents silently nor count a token twice. Each
    window after the first starts ``overlap`` tokens (or more, for the last one) before the end of
    the previous window: those tokens are context only (label ``IGNORE_INDEX``), so every token is a
    target in exactly one window and, except in the first window, is predicted with at least
    ``overlap`` tokens of context. The last window is aligned to the document's end, so it is full
    length whenever the document is, rather than a short tail.

    The first token of a document is never a target (a causal LM has nothing to predict it from),
    so ``overlap`` must be at least 1: with no overlap, the first token of every later window would
    silently drop out of the loss as well.
    """
    if not 1 <= overlap < max_length:
        raise ValueError(f"overlap must be between 1 and max_length - 1 ({max_length - 1}), got {overlap}")
    ids = list(token_ids)
    windows: list[Example] = []
    target_start = 0
    while target_start < len(ids) or not windows:
        if target_start == 0:
            start, end = 0, min(len(ids), max_length)
        else:
            end = min(len(ids), target_start + max_length - overlap)
            start = max(0, end - max_length)
        window = ids[start:end]
        labels = [IGNORE_INDEX if start + i < target_start else token for i, token in enumerate(window)]
        windows.append(Example(input_ids=window, labels=labels))
        target_start = end
    return windows


def encode_documents(
    path: Path, tokenizer: PreTrainedTokenizerBase, max_length: int, overlap: int
) -> tuple[list[Example], int]:
    """``{"input": ...}`` records -> ``<bos> text <eos>`` cut into windows; also the document count.

    ``<bos>`` is added as :func:`encode_prompt` adds it (when the tokenizer itself starts encodings with one).

    The loss covers every token of every document (see :func:`chunk_document`).
    """
    windows: list[Example] = []
    documents = 0
    for line_number, record in enumerate(read_jsonl(path), start=1):
        try:
            text = str(record["input"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f'{path.name} line {line_number}: not a {{"input": ...}} record') from exc
        # verbose=False: a document longer than the context is expected here (it is chunked next),
        # so transformers' "longer than the maximum sequence length" warning would only mislead.
        body: list[int] = tokenizer.encode(text, add_special_tokens=False, verbose=False)
        windows.extend(chunk_document([*bos_ids(tokenizer), *body, tokenizer.eos_token_id], max_length, overlap))
        documents += 1
    return windows, documents


def loss_token_count(examples: Sequence[Example]) -> int:
    """Tokens the loss covers over ``examples`` (each label after the causal shift that is not ignored)."""
    return sum(label != IGNORE_INDEX for example in examples for label in example.labels[1:])


@dataclass(frozen=True)
class PreferencePair:
    """One DPO training pair: the prompt with the preferred answer, and with the other one.

    Both sequences are rendered as a conversation that ends with its answer, exactly as supervised
    fine-tuning renders one (the model's chat template, loss labels on the answer and its end of
    turn), so the model is served as it was trained. ``reference_margin`` is the reference model's
    ``log p(preferred) - log p(non-preferred)``, filled in before training.
    """

    preferred: Example
    non_preferred: Example
    reference_margin: float = 0.0

    @property
    def rows(self) -> tuple[int, ...]:
        return (len(self.preferred.input_ids), len(self.non_preferred.input_ids))

    @property
    def targets(self) -> int:
        """DPO's loss is a mean over pairs: each pair is one unit of the batch's denominator."""
        return 1

    def with_reference(self, margin: float) -> PreferencePair:
        return replace(self, reference_margin=margin)


def encode_preference(record: Preference, tokenizer: PreTrainedTokenizerBase, max_length: int) -> PreferencePair:
    """Both answers after the prompt, each through :func:`encode_record`'s conversation rendering."""
    return PreferencePair(
        preferred=encode_record(record.conversation(preferred=True), tokenizer, max_length),
        non_preferred=encode_record(record.conversation(preferred=False), tokenizer, max_length),
    )


def encode_preference_file(path: Path, tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[PreferencePair]:
    """Encode every preference record of a validated JSONL file; errors name the file and line.

    Records are read through :func:`tuneforge.data.formats.parse_record`, so OpenAI's spelling and the
    Bedrock-style one train alike.
    """
    pairs = []
    for line_number, raw in enumerate(read_jsonl(path), start=1):
        try:
            record = parse_record(raw, FINE_TUNING, FORMAT_PREFERENCE)
            assert isinstance(record, Preference)
            pairs.append(encode_preference(record, tokenizer, max_length))
        except ChatTemplateError as exc:
            raise ChatTemplateError(f"{path.name} line {line_number}: {exc}") from exc
        except (ValueError, KeyError) as exc:
            raise ValueError(f"{path.name} line {line_number}: {exc}") from exc
    return pairs
